//! An AWS Lambda function that serves the OpenAI image API on Azure OpenAI
//! image deployments, with its secrets in AWS Secrets Manager.
//!
//! The data flows through the modules in this order (ARCHITECTURE.md says
//! more): a front door ([`front`]) → [`routes`] (the route, and the one place
//! every answer is finished) → [`pipeline`] (the caller from [`auth`], the
//! request parsed and checked by its [`operation`] for the model in
//! [`models`]) → [`secrets`] (the key) → [`azure`] (the one attempt loop) →
//! [`upstream`] (Azure's failures in OpenAI's words) or [`reshape`] (Azure's
//! success in OpenAI's format), whole, [`relay`]ed or as a [`stream`] of
//! events → out, with the request's log line from [`observe`]. Every failure
//! is an [`error`]; [`exchange`] holds the request and body types they share.
#![forbid(unsafe_code)]

pub mod config;
pub mod data_url;
pub mod error;
pub mod image;
pub mod json_text;
pub mod models;
pub mod multipart;
pub mod operation;
pub mod pool;
pub mod pricing;
pub mod reshape;
pub mod spend;
pub mod sse;

#[cfg(feature = "runtime")]
pub mod app;
#[cfg(feature = "runtime")]
pub mod auth;
#[cfg(feature = "runtime")]
pub mod aws_http;
#[cfg(feature = "runtime")]
pub mod azure;
#[cfg(feature = "runtime")]
pub mod compress;
#[cfg(feature = "runtime")]
pub mod credentials;
#[cfg(feature = "runtime")]
pub mod exchange;
#[cfg(feature = "runtime")]
pub mod front;
#[cfg(feature = "runtime")]
pub mod image_store;
#[cfg(feature = "runtime")]
pub mod observe;
#[cfg(feature = "runtime")]
mod pipeline;
#[cfg(feature = "runtime")]
pub mod relay;
#[cfg(feature = "runtime")]
pub mod routes;
#[cfg(feature = "runtime")]
pub mod secrets;
#[cfg(feature = "runtime")]
pub mod stream;
#[cfg(feature = "runtime")]
pub mod upstream;
#[cfg(feature = "runtime")]
pub mod usage;

#[cfg(feature = "runtime")]
pub use app::App;
pub use config::Config;

/// Builds the app's long-lived parts from a configuration: the HTTP client,
/// and the Secrets Manager (and, with `USAGE_TABLE`, DynamoDB) client over it (region, credentials and endpoint
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
    let sts = credentials::StsWebIdentity::new(aws_sdk_sts::Client::new(&aws));
    // The image bucket signs with the same credential chain as the SDK's clients.
    let store = match (&config.image_bucket, aws.region(), aws.credentials_provider()) {
        (None, _, _) => None,
        (Some(bucket), Some(region), Some(provider)) => Some(std::sync::Arc::new(image_store::ImageStore::new(
            bucket,
            region.as_ref(),
            provider,
            azure.http().clone(),
        ))),
        (Some(_), None, _) => return Err("IMAGE_BUCKET is set but no AWS region is (AWS_REGION)".into()),
        (Some(_), _, None) => return Err("IMAGE_BUCKET is set but the AWS SDK found no credentials provider".into()),
    };
    let usage_table = config.spend.table.clone();
    let app = App::new(config, std::sync::Arc::new(source), azure).with_web_identity(std::sync::Arc::new(sts));
    let app = match store {
        Some(store) => app.with_image_store(store),
        None => app,
    };
    Ok(match usage_table {
        Some(table) => app.with_usage_store(
            std::sync::Arc::new(usage::DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table)),
            std::sync::Arc::new(spend::SystemClock),
        ),
        None => app,
    })
}
