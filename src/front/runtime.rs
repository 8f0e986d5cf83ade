//! The Lambda Runtime API loop: the next invocation, the app, the answer.
//!
//! Its own small client rather than `lambda_runtime`'s (which can also pick
//! streamed or buffered per invocation, through `FunctionResponse`), for two
//! reasons:
//! - the connection to the Runtime API runs with TCP_NODELAY. A streamed answer
//!   goes out as several writes (prelude, body); with Nagle's algorithm the
//!   second waits for the Runtime API's delayed ACK, about 40 ms on every
//!   small streamed response;
//! - a buffered answer's proxy JSON is escaped from the body's pieces as they
//!   are, never joined into one string first (`lambda_http` serializes its
//!   response from one `String` body).
//!
//! Events are parsed and turned into requests by `lambda_http`, as under
//! `lambda_http::run`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use lambda_http::request::LambdaRequest;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::app::App;
use crate::config::ResponseMode;
use crate::exchange::{Aborted, Answer, Incoming, ResponseBody};
use crate::json_text::{concat, escape_into, is_utf8};

/// A buffered Lambda response holds at most this many bytes (6 MB).
pub const BUFFERED_LIMIT: usize = 6 * 1024 * 1024;
/// Room kept in a buffered response for its JSON envelope and escaping.
const ENVELOPE: usize = 64 * 1024;
const API_PATH: &str = "/2018-06-01/runtime";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("AWS_LAMBDA_RUNTIME_API is not set: run under Lambda or `cargo lambda watch`, or pass --listen ADDR")]
    NoRuntimeApi,
    #[error("the Lambda Runtime API at {0} failed: {1}")]
    Api(String, String),
}

/// Serves invocations from `AWS_LAMBDA_RUNTIME_API` until the process ends.
pub async fn run(app: Arc<App>) -> Result<(), RuntimeError> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").map_err(|_| RuntimeError::NoRuntimeApi)?;
    serve(&api, app, None).await
}

/// Serves invocations from the Runtime API at `api` (`host:port`), at most
/// `limit` of them (tests), or until the API fails.
pub async fn serve(api: &str, app: Arc<App>, limit: Option<usize>) -> Result<(), RuntimeError> {
    let mut client = RuntimeClient::new(api);
    let env_config = Arc::new(env_config());
    let mut served = 0;
    while limit.is_none_or(|limit| served < limit) {
        let (headers, event) = client.next().await?;
        served += 1;
        let Some(request_id) = header(&headers, "lambda-runtime-aws-request-id") else {
            tracing::error!("an invocation came without a request id");
            continue;
        };
        let payload = match serde_json::from_slice::<LambdaRequest>(&event) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(error = %err, "the event is not an API Gateway or Function URL request");
                let report = serde_json::json!({"errorType": "Runtime.InvalidEvent", "errorMessage": "The event is not an API Gateway or Function URL request."});
                client.post_error(&request_id, report.to_string()).await?;
                continue;
            }
        };
        let streams = streams(app.config().response_mode, &payload);
        let rest_api = matches!(payload, LambdaRequest::ApiGatewayV1(_));
        let http_api_deadline =
            http_api_received(&payload)
                .zip(app.config().http_api_timeout)
                .and_then(|(received, timeout)| {
                    super::lambda::deadline(received.saturating_add(timeout.as_millis() as u64))
                });
        let mut request: lambda_http::Request = payload.into();
        request
            .extensions_mut()
            .insert(context(&request_id, &headers, env_config.clone()));
        let mut incoming = super::lambda::incoming(request);
        incoming.response_limit = (!streams).then_some(BUFFERED_LIMIT - ENVELOPE);
        // API Gateway gives up at its integration timeout: answer before it, not after.
        incoming.deadline = match (incoming.deadline, http_api_deadline) {
            (Some(lambda), Some(api)) => Some(lambda.min(api)),
            (lambda, api) => lambda.or(api),
        };
        let response = respond_or_fail(&app, incoming).await;
        // A refused or failed post is logged: the next invocation still comes.
        let posted = if streams {
            client.post_stream(&request_id, response).await
        } else {
            let (parts, body) = response.into_parts();
            let payload = buffered_payload(parts.status, &parts.headers, &body.collect().await, rest_api);
            client.post_response(&request_id, payload).await
        };
        if let Err(err) = posted {
            tracing::error!(error = %err, "the answer could not be posted");
        }
        // Settled before the next invocation is asked for: the environment may be frozen until then.
        app.spend().settles().wait().await;
    }
    Ok(())
}

/// The app's answer; a panic inside it becomes a 500 with an OpenAI body for
/// this invocation, and the loop goes on with the next one.
async fn respond_or_fail(app: &Arc<App>, incoming: Incoming) -> Answer {
    let (request_id, method, response_limit) = (
        incoming.request_id.clone(),
        incoming.method.clone(),
        incoming.response_limit,
    );
    let mut answer = Box::pin(app.respond(incoming));
    let caught = std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer.as_mut().poll(cx))) {
            Ok(Poll::Ready(answer)) => Poll::Ready(Ok(answer)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await;
    match caught {
        Ok(answer) => answer,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(request_id, panic = %what, "the request panicked");
            app.failed(&request_id, method, response_limit)
        }
    }
}

/// When API Gateway's HTTP API received the request (epoch milliseconds);
/// `None` for other front doors.
fn http_api_received(payload: &LambdaRequest) -> Option<u64> {
    match payload {
        LambdaRequest::ApiGatewayV2(event) if !is_function_url(event) => {
            u64::try_from(event.request_context.time_epoch).ok().filter(|t| *t > 0)
        }
        _ => None,
    }
}

fn is_function_url(event: &lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest) -> bool {
    event
        .request_context
        .domain_name
        .as_deref()
        .is_some_and(|domain| domain.contains(".lambda-url."))
}

/// Whether this invocation's answer streams: `auto` streams Function URL and
/// REST API invocations and buffers HTTP API ones (v2 events not from a
/// `*.lambda-url.*` domain).
pub fn streams(mode: ResponseMode, payload: &LambdaRequest) -> bool {
    match mode {
        ResponseMode::Stream => true,
        ResponseMode::Buffered => false,
        ResponseMode::Auto => match payload {
            LambdaRequest::ApiGatewayV2(event) => is_function_url(event),
            _ => true,
        },
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The function's settings as Lambda sets them; defaults where a local
/// emulator leaves one out.
fn env_config() -> lambda_http::lambda_runtime::Config {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    lambda_http::lambda_runtime::Config {
        function_name: var("AWS_LAMBDA_FUNCTION_NAME"),
        memory: var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").parse().unwrap_or(0),
        version: var("AWS_LAMBDA_FUNCTION_VERSION"),
        log_stream: var("AWS_LAMBDA_LOG_STREAM_NAME"),
        log_group: var("AWS_LAMBDA_LOG_GROUP_NAME"),
    }
}

/// The invocation context from the `next` response's headers.
fn context(
    request_id: &str,
    headers: &HeaderMap,
    env_config: Arc<lambda_http::lambda_runtime::Config>,
) -> lambda_http::Context {
    let mut context = lambda_http::Context::default();
    context.request_id = request_id.to_owned();
    context.deadline = header(headers, "lambda-runtime-deadline-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    context.invoked_function_arn = header(headers, "lambda-runtime-invoked-function-arn").unwrap_or_default();
    context.xray_trace_id = header(headers, "lambda-runtime-trace-id");
    context.env_config = env_config;
    context
}

/// The JSON a buffered front door expects: API Gateway's proxy response
/// (REST and HTTP API, Function URLs read the same fields). The body's pieces
/// are escaped into it one by one, never joined first.
pub fn buffered_payload(status: StatusCode, headers: &HeaderMap, body: &[Bytes], rest_api: bool) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Proxy<'a> {
        status_code: u16,
        headers: BTreeMap<&'a str, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        multi_value_headers: Option<BTreeMap<&'a str, Vec<&'a str>>>,
        is_base64_encoded: bool,
        /// v2 (HTTP API, Function URL) responses carry it, even empty: strict readers require it.
        #[serde(skip_serializing_if = "Option::is_none")]
        cookies: Option<[&'a str; 0]>,
    }
    let proxy = Proxy {
        status_code: status.as_u16(),
        headers: single_values(headers),
        multi_value_headers: rest_api.then(|| {
            let mut all: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (name, value) in headers {
                all.entry(name.as_str())
                    .or_default()
                    .push(value.to_str().unwrap_or_default());
            }
            all
        }),
        is_base64_encoded: false,
        cookies: (!rest_api).then_some([]),
    };
    let mut payload = serde_json::to_vec(&proxy).unwrap_or_else(|_| b"{}".to_vec());
    let size: usize = body.iter().map(Bytes::len).sum();
    payload.reserve(size + size / 64 + 16);
    // The object's closing brace makes way for the body.
    payload.pop();
    payload.extend_from_slice(b",\"body\":\"");
    if is_utf8(body) {
        for chunk in body {
            escape_into(&mut payload, chunk);
        }
    } else {
        escape_into(&mut payload, String::from_utf8_lossy(&concat(body)).as_bytes());
    }
    payload.extend_from_slice(b"\"}");
    payload
}

fn single_values(headers: &HeaderMap) -> BTreeMap<&str, String> {
    let mut single: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = value.to_str().unwrap_or_default();
        single
            .entry(name.as_str())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    single
}

/// What separates a streamed answer's prelude from its body.
const PRELUDE_END: &[u8; 8] = &[0; 8];

/// The prelude of a streamed answer: status and headers as JSON (the eight
/// NUL bytes that end it follow as a chunk of their own, as `cargo lambda`
/// reads them).
pub fn stream_prelude(status: StatusCode, headers: &HeaderMap) -> Bytes {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Prelude<'a> {
        status_code: u16,
        headers: BTreeMap<&'a str, String>,
        cookies: [&'a str; 0],
    }
    let prelude = serde_json::to_vec(&Prelude {
        status_code: status.as_u16(),
        headers: single_values(headers),
        cookies: [],
    })
    .unwrap_or_default();
    Bytes::from(prelude)
}

/// A streamed answer as the Runtime API takes it: the prelude, its end, then
/// the body as the app produces it. Frames that are ready together go out in
/// one write. A body that breaks off ends with the error trailers, which tell
/// Lambda the answer is not whole.
struct StreamedAnswer {
    prelude: Option<Bytes>,
    prelude_end: bool,
    body: ResponseBody,
    ended: bool,
}

/// The trailers a streamed answer declares, to report a failure after its start.
const ERROR_TYPE: &str = "lambda-runtime-function-error-type";
const ERROR_BODY: &str = "lambda-runtime-function-error-body";

/// The trailers for an answer that broke off: the error's type, and its
/// report as base64 JSON.
fn error_trailers(aborted: &Aborted) -> HeaderMap {
    use base64::Engine;
    let report = serde_json::json!({
        "errorType": "Connector.AnswerBrokeOff",
        "errorMessage": aborted.to_string(),
    });
    let encoded = base64::engine::general_purpose::STANDARD.encode(report.to_string());
    let mut trailers = HeaderMap::new();
    trailers.insert(ERROR_TYPE, http::HeaderValue::from_static("Connector.AnswerBrokeOff"));
    if let Ok(value) = http::HeaderValue::from_str(&encoded) {
        trailers.insert(ERROR_BODY, value);
    }
    trailers
}

/// What the client posts: a whole payload, or a streamed answer.
enum Outgoing {
    Whole(Option<Bytes>),
    Streamed(StreamedAnswer),
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Streamed(answer) => {
                if let Some(prelude) = answer.prelude.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prelude))));
                }
                if !answer.prelude_end {
                    answer.prelude_end = true;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PRELUDE_END)))));
                }
                if answer.ended {
                    return Poll::Ready(None);
                }
                // A panic while the body is produced breaks the answer off; the loop goes on.
                let body = &mut answer.body;
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(body).poll_frame(cx)))
                    .unwrap_or_else(|_| {
                        tracing::error!("producing a streamed answer panicked");
                        Poll::Ready(Some(Err(Aborted { code: "internal_error" })))
                    });
                polled.map(|frame| match frame {
                    Some(Err(aborted)) => {
                        answer.ended = true;
                        Some(Ok(Frame::trailers(error_trailers(&aborted))))
                    }
                    Some(Ok(frame)) => Some(Ok(frame)),
                    None => None,
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Whole(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Whole(bytes) => http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Streamed(_) => http_body::SizeHint::default(),
        }
    }
}

/// One keep-alive HTTP/1.1 connection to the Runtime API, with TCP_NODELAY.
struct RuntimeClient {
    /// `host:port`.
    api: String,
    /// Before `/2018-06-01/runtime`: empty under Lambda; `cargo lambda watch`
    /// gives a URL with a path of its own (`http://127.0.0.1:9000/.rt/_`).
    prefix: String,
    sender: Option<SendRequest<Outgoing>>,
}

impl RuntimeClient {
    fn new(api: &str) -> Self {
        let address = api.strip_prefix("http://").unwrap_or(api);
        let (host, prefix) = match address.find('/') {
            Some(slash) => (&address[..slash], address[slash..].trim_end_matches('/')),
            None => (address, ""),
        };
        Self {
            api: host.to_owned(),
            prefix: prefix.to_owned(),
            sender: None,
        }
    }

    fn failed(&self, what: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Api(self.api.clone(), what.to_string())
    }

    async fn send(&mut self, request: Request<Outgoing>) -> Result<Response<hyper::body::Incoming>, RuntimeError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.api).await.map_err(|e| self.failed(e))?;
            stream.set_nodelay(true).map_err(|e| self.failed(e))?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.failed(e))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "the Runtime API connection closed");
                }
            });
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(self.failed("no connection"));
        };
        let sent = async {
            sender.ready().await?;
            sender.send_request(request).await
        }
        .await;
        sent.map_err(|e| {
            self.sender = None;
            self.failed(e)
        })
    }

    fn request(&self, method: Method, path: &str, body: Outgoing) -> Result<Request<Outgoing>, RuntimeError> {
        Request::builder()
            .method(method)
            .uri(format!("{}{API_PATH}{path}", self.prefix))
            .header(http::header::HOST, self.api.as_str())
            .body(body)
            .map_err(|e| self.failed(e))
    }

    /// Waits for the next invocation: its headers and its event. A dropped
    /// connection is opened again once.
    async fn next(&mut self) -> Result<(HeaderMap, Bytes), RuntimeError> {
        match self.next_once().await {
            Ok(next) => Ok(next),
            Err(err) => {
                tracing::warn!(error = %err, "asking the Runtime API again for the next invocation");
                self.sender = None;
                self.next_once().await
            }
        }
    }

    async fn next_once(&mut self) -> Result<(HeaderMap, Bytes), RuntimeError> {
        let request = self.request(Method::GET, "/invocation/next", Outgoing::Whole(None))?;
        let response = self.send(request).await?;
        let (parts, body) = response.into_parts();
        let event = body.collect().await.map_err(|e| self.failed(e))?.to_bytes();
        if !parts.status.is_success() {
            return Err(self.failed(format!("next invocation: {}", parts.status)));
        }
        Ok((parts.headers, event))
    }

    async fn post_response(&mut self, request_id: &str, payload: Vec<u8>) -> Result<(), RuntimeError> {
        let path = format!("/invocation/{request_id}/response");
        let mut request = self.request(Method::POST, &path, Outgoing::Whole(Some(Bytes::from(payload))))?;
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.finish(request).await
    }

    async fn post_stream(&mut self, request_id: &str, response: Response<ResponseBody>) -> Result<(), RuntimeError> {
        let (parts, body) = response.into_parts();
        let mut headers = parts.headers;
        headers
            .entry(http::header::CONTENT_TYPE)
            .or_insert(http::HeaderValue::from_static("application/octet-stream"));
        let answer = StreamedAnswer {
            prelude: Some(stream_prelude(parts.status, &headers)),
            prelude_end: false,
            body,
            ended: false,
        };
        let path = format!("/invocation/{request_id}/response");
        let mut request = self.request(Method::POST, &path, Outgoing::Streamed(answer))?;
        let h = request.headers_mut();
        h.insert(
            "lambda-runtime-function-response-mode",
            http::HeaderValue::from_static("streaming"),
        );
        h.insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
        h.insert(
            http::header::TRAILER,
            http::HeaderValue::from_static("Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body"),
        );
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/vnd.awslambda.http-integration-response"),
        );
        self.finish(request).await
    }

    async fn post_error(&mut self, request_id: &str, report: String) -> Result<(), RuntimeError> {
        let path = format!("/invocation/{request_id}/error");
        let mut request = self.request(Method::POST, &path, Outgoing::Whole(Some(Bytes::from(report))))?;
        request.headers_mut().insert(
            "lambda-runtime-function-error-type",
            http::HeaderValue::from_static("Runtime.InvalidEvent"),
        );
        self.finish(request).await
    }

    /// Sends an answer; a refusal is logged, not fatal: the next invocation still comes.
    async fn finish(&mut self, request: Request<Outgoing>) -> Result<(), RuntimeError> {
        let response = self.send(request).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !status.is_success() {
            tracing::error!(%status, answer = %String::from_utf8_lossy(&body), "the Runtime API refused the answer");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_streams_function_urls_and_rest_apis_and_buffers_http_apis() {
        let event = |file: &str| -> LambdaRequest {
            let path = format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).expect("event")).expect("a Lambda HTTP event")
        };
        assert!(streams(ResponseMode::Auto, &event("function-url-generation.json")));
        assert!(streams(ResponseMode::Auto, &event("rest-api-generation.json")));
        assert!(!streams(ResponseMode::Auto, &event("http-api-generation.json")));
        assert!(streams(ResponseMode::Stream, &event("http-api-generation.json")));
        assert!(!streams(ResponseMode::Buffered, &event("function-url-generation.json")));
    }

    #[test]
    fn the_runtime_api_is_host_port_or_a_url_with_a_path() {
        let lambda = RuntimeClient::new("127.0.0.1:9001");
        assert_eq!((lambda.api.as_str(), lambda.prefix.as_str()), ("127.0.0.1:9001", ""));
        let watch = RuntimeClient::new("http://127.0.0.1:9000/.rt/_");
        assert_eq!(
            (watch.api.as_str(), watch.prefix.as_str()),
            ("127.0.0.1:9000", "/.rt/_")
        );
    }

    #[test]
    fn the_prelude_is_json() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/event-stream".parse().expect("header"));
        let prelude = stream_prelude(StatusCode::OK, &headers);
        let value: serde_json::Value = serde_json::from_slice(&prelude).expect("JSON prelude");
        assert_eq!(value["statusCode"], 200);
        assert_eq!(value["headers"]["content-type"], "text/event-stream");
    }

    #[test]
    fn buffered_payloads_are_proxy_responses() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().expect("header"));
        let body = [Bytes::from_static(br#"{"a":"#), Bytes::from_static(br#""b\u00e9\n"}"#)];
        let payload = buffered_payload(StatusCode::CREATED, &headers, &body, true);
        let value: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(value["statusCode"], 201);
        assert_eq!(value["body"], r#"{"a":"b\u00e9\n"}"#);
        assert_eq!(value["isBase64Encoded"], false);
        assert_eq!(value["multiValueHeaders"]["content-type"][0], "application/json");
        let v2: serde_json::Value = serde_json::from_slice(&buffered_payload(
            StatusCode::OK,
            &headers,
            &[Bytes::from_static(b"{}")],
            false,
        ))
        .expect("JSON");
        assert_eq!(v2["cookies"], serde_json::json!([]));
        assert!(v2.get("multiValueHeaders").is_none());
    }
}
