//! The AWS SDK's HTTP transport: the connector's own reqwest client.
//!
//! The SDK's default HTTPS client is a second HTTP stack beside reqwest, with
//! its own rustls connector and its own root store, which it loads from disk
//! at start-up (so does reqwest: twice the file reads on every cold start).
//! Secrets Manager is one small POST, so the SDK gets the client the Azure
//! calls use: one TLS stack in the binary, one root store, one pool.

use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response as SdkResponse;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body_util::BodyExt;

/// The SDK's HTTP client, over `http`.
pub fn sdk_client(http: reqwest::Client) -> SharedHttpClient {
    SharedHttpClient::new(ReqwestClient { http })
}

#[derive(Debug, Clone)]
struct ReqwestClient {
    http: reqwest::Client,
}

impl HttpClient for ReqwestClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(ReqwestConnector {
            http: self.http.clone(),
            // The SDK's attempt and operation timeouts bound the whole call; this bounds each request.
            timeout: settings.read_timeout(),
        })
    }
}

#[derive(Debug, Clone)]
struct ReqwestConnector {
    http: reqwest::Client,
    timeout: Option<Duration>,
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let http = self.http.clone();
        let timeout = self.timeout;
        HttpConnectorFuture::new(async move {
            let request = request.try_into_http1x().map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            // The SDK's requests here (GetSecretValue, credentials) are small and in memory.
            let body = body
                .bytes()
                .map(Bytes::copy_from_slice)
                .ok_or_else(|| ConnectorError::user("a streaming request body".into()))?;
            let mut request = reqwest::Request::try_from(http::Request::from_parts(parts, body))
                .map_err(|e| ConnectorError::user(e.into()))?;
            if let Some(timeout) = timeout {
                *request.timeout_mut() = Some(timeout);
            }
            let response = http.execute(request).await.map_err(connector_error)?;
            let (parts, body) = http::Response::from(response).into_parts();
            let body = body.collect().await.map_err(connector_error)?.to_bytes();
            SdkResponse::try_from(http::Response::from_parts(parts, SdkBody::from(body)))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The SDK retries timeouts and I/O errors; anything else is final.
fn connector_error(err: reqwest::Error) -> ConnectorError {
    if err.is_timeout() {
        ConnectorError::timeout(err.into())
    } else if err.is_connect() || err.is_request() || err.is_body() {
        ConnectorError::io(err.into())
    } else {
        ConnectorError::other(err.into(), None)
    }
}
