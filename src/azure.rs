//! The upstream client: one POST to a configured Azure deployment.

use std::time::Duration;

use crate::config::ModelEntry;
use crate::response::{UpstreamError, UpstreamResponse};
use crate::secrets::ApiKey;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP client for Azure, built once per execution environment.
#[derive(Clone)]
pub struct AzureClient {
    http: reqwest::Client,
}

impl AzureClient {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect would carry the api-key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("azure-openai-image/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// POSTs `body` to the entry's generations URL, bounded by `timeout`.
    pub async fn generate(
        &self,
        entry: &ModelEntry,
        key: &ApiKey,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let attempt = async {
            let response = self
                .http
                .post(entry.generations_url.clone())
                .header("api-key", key.expose())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "application/json")
                .body(body)
                .send()
                .await
                .map_err(classify)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(classify)?;
            Ok(UpstreamResponse { status, headers, body })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

fn classify(err: reqwest::Error) -> UpstreamError {
    if err.is_timeout() {
        UpstreamError::Timeout
    } else if err.is_connect() {
        UpstreamError::Connect
    } else {
        UpstreamError::Transport
    }
}
