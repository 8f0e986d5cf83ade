//! The routes, thin: a request in, the matching step of the flow, a response
//! out. Front-door adapters (`lambda`, `local`) turn their requests into
//! [`Incoming`] and the answer back.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Response};
use tokio::sync::mpsc;

use crate::auth::{Caller, ClientKeys, no_keys_configured};
use crate::azure::{AttemptRecord, AzureClient};
use crate::config::{AuthMode, Config};
use crate::error::{ApiError, ErrorContext};
use crate::observe::{MetricsSink, RequestRecord};
use crate::relay::Relay;
use crate::response::Usage;
use crate::secrets::{ApiKey, SecretCache, SecretSource};

/// Bodies above this are refused before parsing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A request as every front door delivers it.
#[derive(Debug)]
pub struct Incoming {
    pub method: Method,
    /// The path without any API Gateway stage prefix.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the answer must be out; `None` when unbounded or unknown.
    pub deadline: Option<Instant>,
    pub request_id: String,
    /// The most the front door returns, when it buffers (6 MB for a buffered
    /// Lambda response); `None` when the answer streams.
    pub response_limit: Option<usize>,
}

/// A response body: whole, events sent on as they are produced, or a
/// success body sent on while Azure's is still arriving.
#[derive(Debug)]
pub enum ResponseBody {
    /// A whole body, in pieces.
    Full(VecDeque<Bytes>),
    Events(mpsc::Receiver<Bytes>),
    Relay(Box<Relay>),
}

/// Why a body stopped before its end. The front door must not let the client
/// take it for whole: the local server drops the connection, a streamed Lambda
/// answer ends with the Runtime API's error trailers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the answer broke off: {code}")]
pub struct Aborted {
    /// The error code of the log line.
    pub code: &'static str,
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(VecDeque::from([bytes.into()]))
    }

    /// Bytes in a whole body; `None` for one still being produced.
    pub fn known_len(&self) -> Option<usize> {
        match self {
            Self::Full(chunks) => Some(chunks.iter().map(Bytes::len).sum()),
            Self::Events(_) | Self::Relay(_) => None,
        }
    }

    /// The whole body, once a stream has ended; up to the break when it broke
    /// off (the relay logs why).
    pub async fn collect(mut self) -> Vec<Bytes> {
        use http_body_util::BodyExt;
        let mut chunks = Vec::new();
        while let Some(Ok(frame)) = self.frame().await {
            if let Ok(data) = frame.into_data() {
                chunks.push(data);
            }
        }
        chunks
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(body: Vec<u8>) -> Self {
        Self::full(body)
    }
}

impl From<Vec<Bytes>> for ResponseBody {
    fn from(chunks: Vec<Bytes>) -> Self {
        Self::Full(chunks.into_iter().filter(|c| !c.is_empty()).collect())
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            Self::Full(chunks) => Poll::Ready(chunks.pop_front().map(|b| Ok(http_body::Frame::data(b)))),
            Self::Events(events) => events
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b)))),
            Self::Relay(relay) => relay
                .poll_chunk(cx)
                .map(|next| next.map(|r| r.map(http_body::Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(chunks) if chunks.is_empty())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.known_len() {
            Some(len) => http_body::SizeHint::with_exact(len as u64),
            None => http_body::SizeHint::default(),
        }
    }
}

/// What lives for the whole execution environment: built once, shared by every request.
pub struct App {
    pub config: Config,
    pub(crate) azure_keys: SecretCache<ApiKey>,
    client_keys: SecretCache<ClientKeys>,
    pub(crate) azure: AzureClient,
    metrics: MetricsSink,
    /// Deployments that refused `stream`: later streams are made from one buffered call.
    pub(crate) no_upstream_stream: Mutex<HashSet<String>>,
    /// Unix time of start-up, the `created` of the model list.
    started: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// `deployment` is set on the Azure route.
    Generations {
        deployment: Option<&'a str>,
    },
    Models,
    Health,
    WrongMethod {
        allow: &'static str,
    },
    NotFound,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let segments: Vec<&str> = path.split('/').collect();
    let (found, allow) = match segments.as_slice() {
        ["", "v1", "images", "generations"] => (Route::Generations { deployment: None }, "POST"),
        ["", "openai", "deployments", id, "images", "generations"]
        | ["", "openai", "openai", "deployments", id, "images", "generations"] => {
            (Route::Generations { deployment: Some(*id) }, "POST")
        }
        ["", "v1", "models"] => (Route::Models, "GET"),
        ["", "health"] => (Route::Health, "GET"),
        _ => return Route::NotFound,
    };
    let allowed = match allow {
        "GET" => method == Method::GET || method == Method::HEAD,
        _ => method == Method::POST,
    };
    if allowed { found } else { Route::WrongMethod { allow } }
}

/// What one request's log line says. Never the prompt, never a key. Owned,
/// so a streamed answer can log it when the stream ends.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub started: Instant,
    pub request_id: String,
    pub method: Method,
    pub route: &'static str,
    pub model_requested: Option<String>,
    /// The configured name asked for.
    pub entry: Option<String>,
    /// The configured name that answered.
    pub served: Option<String>,
    pub n: Option<u32>,
    pub size: Option<String>,
    pub quality: Option<String>,
    pub stream: Option<bool>,
    pub prompt_chars: Option<usize>,
    /// The client key's name.
    pub client: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    pub images: Option<usize>,
    pub usage: Option<Usage>,
}

impl Outcome {
    fn new(req: &Incoming) -> Self {
        Self {
            started: Instant::now(),
            request_id: req.request_id.clone(),
            method: req.method.clone(),
            route: "",
            model_requested: None,
            entry: None,
            served: None,
            n: None,
            size: None,
            quality: None,
            stream: None,
            prompt_chars: None,
            client: None,
            attempts: Vec::new(),
            images: None,
            usage: None,
        }
    }

    fn request_type(&self) -> &'static str {
        match self.route {
            "openai_generations" | "azure_generations" => "image_generation",
            "models" => "list_models",
            _ => "unknown",
        }
    }
}

impl App {
    /// `secrets` serves both the Azure keys and the client keys, each cached for the TTL.
    pub fn new(config: Config, secrets: Arc<dyn SecretSource>, azure: AzureClient) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            azure_keys: SecretCache::new(secrets.clone(), ApiKey::from_secret_value, config.secret_ttl),
            client_keys: SecretCache::new(secrets, ClientKeys::from_secret_value, config.secret_ttl),
            metrics: MetricsSink::stdout(config.metrics_namespace.clone()),
            no_upstream_stream: Mutex::default(),
            config,
            azure,
            started,
        }
    }

    /// Sends the EMF records somewhere else than stdout (tests).
    pub fn with_metrics(mut self, metrics: MetricsSink) -> Self {
        self.metrics = metrics;
        self
    }

    /// The caller behind the request's key, as `AUTH_MODE` says to check it.
    pub(crate) async fn authenticate(&self, req: &Incoming) -> Result<Caller, ApiError> {
        match &self.config.auth {
            AuthMode::None => Ok(Caller::unchecked()),
            AuthMode::ClientKeys { secret_id: None } => Err(no_keys_configured()),
            AuthMode::ClientKeys { secret_id: Some(id) } => {
                let keys = self
                    .client_keys
                    .get(id)
                    .await
                    .map_err(|e| e.to_api_error("its client keys"))?;
                keys.authenticate(&req.headers)
            }
        }
    }

    /// Answers one request: JSON, or server-sent events for `stream: true`.
    /// Never fails: every failure is an OpenAI error response.
    pub async fn respond(self: &Arc<Self>, req: Incoming) -> Response<ResponseBody> {
        let mut outcome = Outcome::new(&req);
        let response = match route(&req.method, &req.path) {
            Route::Generations { deployment } => {
                outcome.route = if deployment.is_some() {
                    "azure_generations"
                } else {
                    "openai_generations"
                };
                // Finishes (and logs) on its own: a stream logs when it ends.
                return crate::generation::generate(self, &req, deployment, outcome).await;
            }
            Route::Models => {
                outcome.route = "models";
                match self.authenticate(&req).await {
                    Ok(caller) => {
                        outcome.client = caller.name.clone();
                        ok_json(self.model_list(&caller))
                    }
                    Err(err) => self.error_response(&err, &outcome),
                }
            }
            Route::Health => {
                outcome.route = "health";
                ok_json(br#"{"status":"ok"}"#.to_vec())
            }
            Route::WrongMethod { allow } => {
                outcome.route = "wrong_method";
                let err = ApiError::method_not_allowed(req.method.as_str(), &req.path);
                let mut response = self.error_response(&err, &outcome);
                response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
                response
            }
            Route::NotFound => {
                outcome.route = "not_found";
                self.error_response(&ApiError::not_found(&req.path), &outcome)
            }
        };
        self.finish(response, &outcome, req.response_limit)
    }

    /// The same, whole: what a buffered front door sends, and what tests read.
    pub async fn handle(self: &Arc<Self>, req: Incoming) -> Response<Vec<u8>> {
        let (parts, body) = self.respond(req).await.into_parts();
        Response::from_parts(parts, crate::response::concat(&body.collect().await))
    }

    /// A whole answer on its way out: the headers every answer carries, the
    /// front door's size limit, the log line and the metrics.
    pub(crate) fn finish(
        &self,
        response: Response<impl Into<ResponseBody>>,
        outcome: &Outcome,
        limit: Option<usize>,
    ) -> Response<ResponseBody> {
        let mut response = response.map(Into::into);
        let len = response.body().known_len().unwrap_or(0);
        if let Some(limit) = limit.filter(|limit| len > *limit) {
            response = self
                .error_response(&response_too_large(len, limit), outcome)
                .map(Into::into);
        }
        self.stamp(response.headers_mut(), outcome);
        if outcome.method == Method::HEAD {
            *response.body_mut() = ResponseBody::Full(VecDeque::new());
        }
        let code = response.extensions().get::<ErrorCode>().map(|c| c.0.clone());
        self.record(
            outcome,
            response.status().as_u16(),
            code.as_deref(),
            response.body().known_len().unwrap_or(0),
        );
        response
    }

    /// `x-request-id` on every answer; Azure's request id when Azure answered.
    pub(crate) fn stamp(&self, headers: &mut HeaderMap, outcome: &Outcome) {
        if let Ok(id) = HeaderValue::from_str(&outcome.request_id) {
            headers.insert("x-request-id", id);
        }
        let upstream_id = outcome
            .attempts
            .iter()
            .rev()
            .find_map(|a| a.upstream_request_id.as_deref());
        if let Some(id) = upstream_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert("x-upstream-request-id", id);
        }
        if let Some(served) = outcome.served.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert("x-served-model", served);
        }
    }

    /// The log line and the EMF record of a finished request.
    pub(crate) fn record(&self, outcome: &Outcome, status: u16, error_code: Option<&str>, bytes_out: usize) {
        let by_name = |name: &Option<String>| name.as_deref().and_then(|n| self.config.model_by_name(Some(n)));
        let asked = by_name(&outcome.entry);
        let answered = by_name(&outcome.served).or(asked);
        let record = RequestRecord {
            request_id: &outcome.request_id,
            method: outcome.method.as_str(),
            route: outcome.route,
            client: outcome.client.as_deref(),
            model_requested: outcome.model_requested.as_deref(),
            model: outcome.entry.as_deref(),
            served_model: outcome.served.as_deref(),
            azure_model: answered.map(|e| e.model.as_str()),
            deployment: answered.map(|e| e.deployment.as_str()),
            fallback_used: outcome.served.is_some() && outcome.served != outcome.entry,
            n: outcome.n,
            size: outcome.size.as_deref(),
            quality: outcome.quality.as_deref(),
            stream: outcome.stream,
            prompt_chars: outcome.prompt_chars,
            status,
            error_code,
            attempts: &outcome.attempts,
            total_ms: outcome.started.elapsed().as_millis() as u64,
            bytes_out,
            images: outcome.images,
            usage: outcome.usage,
        };
        record.log();
        self.metrics.emit(&record);
    }

    /// The configured models the caller may use.
    fn model_list(&self, caller: &Caller) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Model<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            owned_by: &'static str,
        }
        #[derive(serde::Serialize)]
        struct List<'a> {
            object: &'static str,
            data: Vec<Model<'a>>,
        }
        let list = List {
            object: "list",
            data: self
                .config
                .models
                .iter()
                .filter(|m| caller.may_use(&m.name))
                .map(|m| Model {
                    id: &m.name,
                    object: "model",
                    created: self.started,
                    owned_by: "azure",
                })
                .collect(),
        };
        serde_json::to_vec(&list).unwrap_or_default()
    }

    pub(crate) fn error_context<'o>(&self, outcome: &'o Outcome) -> ErrorContext<'o> {
        ErrorContext {
            model_requested: outcome.model_requested.as_deref(),
            request_type: outcome.request_type(),
        }
    }

    pub(crate) fn error_response(&self, err: &ApiError, outcome: &Outcome) -> Response<Vec<u8>> {
        let mut response = Response::new(err.body(&self.error_context(outcome)));
        *response.status_mut() = err.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(wait) = err.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            response
                .headers_mut()
                .insert("retry-after-ms", HeaderValue::from(wait.as_millis() as u64));
        }
        response
            .extensions_mut()
            .insert(ErrorCode(err.code.as_deref().unwrap_or_default().to_owned()));
        response
    }
}

/// 413 for an answer larger than a buffered front door returns. A 4xx: SDKs
/// do not retry it (a retry would generate, and pay for, the images again).
pub(crate) fn response_too_large(size: usize, limit: usize) -> ApiError {
    ApiError::new(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        crate::error::INVALID_REQUEST,
        "response_too_large",
        format!(
            "The images came to {:.1} MB, more than this endpoint can return ({:.1} MB, a buffered Lambda response). \
             Ask for fewer images (n), a smaller size or output_format jpeg, or call the streaming endpoint (the Function URL).",
            size as f64 / 1e6,
            limit as f64 / 1e6
        ),
    )
}

/// The error code of a response, for its log line.
#[derive(Clone)]
struct ErrorCode(String);

pub(crate) fn ok_json<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// JSON only: `application/json`, or any `+json` type. A missing header is
/// let through (the body must still parse as JSON).
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/json" || media.ends_with("+json") {
        return Ok(());
    }
    Err(ApiError::new(
        http::StatusCode::BAD_REQUEST,
        crate::error::INVALID_REQUEST,
        "invalid_content_type",
        "The request body must be JSON, sent with `Content-Type: application/json`.",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_both_generation_paths_and_nothing_else() {
        let post = Method::POST;
        assert_eq!(
            route(&post, "/v1/images/generations"),
            Route::Generations { deployment: None }
        );
        assert_eq!(
            route(&post, "/openai/deployments/img/images/generations"),
            Route::Generations {
                deployment: Some("img")
            }
        );
        assert_eq!(
            route(&post, "/openai/openai/deployments/img/images/generations"),
            Route::Generations {
                deployment: Some("img")
            }
        );
        assert_eq!(route(&Method::GET, "/v1/models"), Route::Models);
        assert_eq!(route(&Method::GET, "/health"), Route::Health);
        assert_eq!(
            route(&Method::GET, "/v1/images/generations"),
            Route::WrongMethod { allow: "POST" }
        );
        assert_eq!(route(&post, "/v1/models"), Route::WrongMethod { allow: "GET" });
        for path in [
            "/",
            "",
            "/v1/images/generations/",
            "/v1/images/edits",
            "/openai/deployments/a/b/images/generations",
            "/openai/deployments/images/generations",
            "//v1/images/generations",
        ] {
            assert_eq!(route(&post, path), Route::NotFound, "{path}");
        }
    }
}
