//! An AWS Lambda function that serves the OpenAI image generation API on
//! Azure OpenAI image deployments, with the Azure key in AWS Secrets Manager.
//!
//! The data flows through the modules in this order: a front door
//! ([`lambda`] or [`local`]) → [`handler`] (route) → [`auth`] (the caller)
//! → `generation` (the flow of one request: [`request`] validated for the
//! model in [`models`], then the model and its fallbacks) → [`secrets`] (the
//! key) → [`azure`] (the call, with retries) → [`response`] (OpenAI format)
//! → out, with [`error`] the one shape every failure takes.

pub mod config;
pub mod data_url;
pub mod error;
pub mod image;
pub mod models;
pub mod multipart;
pub mod request;
pub mod reshape;
pub mod response;

#[cfg(feature = "runtime")]
pub mod auth;
#[cfg(feature = "runtime")]
pub mod aws_http;
#[cfg(feature = "runtime")]
pub mod azure;
#[cfg(feature = "runtime")]
mod generation;
#[cfg(feature = "runtime")]
pub mod handler;
#[cfg(feature = "runtime")]
pub mod lambda;
#[cfg(feature = "runtime")]
pub mod local;
#[cfg(feature = "runtime")]
pub mod observe;
#[cfg(feature = "runtime")]
pub mod relay;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "runtime")]
pub mod secrets;
#[cfg(feature = "runtime")]
pub mod stream;

pub use config::Config;
#[cfg(feature = "runtime")]
pub use handler::App;

/// Builds the app's long-lived parts from a configuration: the HTTP client,
/// and the Secrets Manager client over it (region, credentials and endpoint
/// from the environment, as AWS SDKs read them). No network call happens here.
#[cfg(feature = "runtime")]
pub async fn build_app(config: Config) -> Result<App, String> {
    use aws_config::timeout::TimeoutConfig;
    use std::time::Duration;
    let azure = azure::AzureClient::new().map_err(|e| format!("could not build the HTTP client: {e}"))?;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(aws_http::sdk_client(azure.http().clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(4))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    let source = secrets::SecretsManagerSource::new(aws_sdk_secretsmanager::Client::new(&aws));
    Ok(App::new(config, std::sync::Arc::new(source), azure))
}
