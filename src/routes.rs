//! The route table, and the one place every answer is finished: the error
//! body, the front door's size limit, the headers every answer carries,
//! `HEAD`, and the request's log line and metrics (at once for a whole body,
//! when the body ends for one still being produced).

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER, VARY};
use http::{HeaderMap, Method, Response};

use crate::app::App;
use crate::auth::Caller;
use crate::compress;
use crate::error::ApiError;
use crate::exchange::{Aborted, Answer, Incoming, ResponseBody, StreamingBody, ok_json};
use crate::json_text::concat;
use crate::observe::{MetricsSink, RequestLog};
use crate::operation::Operation;
use crate::usage::{Outcome, Tab};

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// An image operation; `deployment` is set on the Azure route.
    Image {
        operation: Operation,
        deployment: Option<&'a str>,
    },
    Models,
    /// The calling key's own spend and counts.
    Usage,
    Health,
    WrongMethod {
        allow: &'static str,
    },
    NotFound,
}

impl Route<'_> {
    /// The route's name in the log line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Image {
                operation: Operation::Generation,
                deployment: None,
            } => "openai_generations",
            Self::Image {
                operation: Operation::Generation,
                deployment: Some(_),
            } => "azure_generations",
            Self::Image {
                operation: Operation::Edit,
                deployment: None,
            } => "openai_edits",
            Self::Image {
                operation: Operation::Edit,
                deployment: Some(_),
            } => "azure_edits",
            Self::Models => "models",
            Self::Usage => "usage",
            Self::Health => "health",
            Self::WrongMethod { .. } => "wrong_method",
            Self::NotFound => "not_found",
        }
    }
}

/// The route of a request: OpenAI's paths, and the Azure deployments paths
/// (also under `/openai/openai/`, as the Azure SDKs send them).
pub fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let operation = |name: &str| match name {
        "generations" => Some(Operation::Generation),
        "edits" => Some(Operation::Edit),
        _ => None,
    };
    let image = |name: &str, deployment| operation(name).map(|operation| Route::Image { operation, deployment });
    let segments: Vec<&str> = path.split('/').collect();
    let found = match segments.as_slice() {
        ["", "v1", "images", name] => image(name, None),
        ["", "openai", "deployments", id, "images", name]
        | ["", "openai", "openai", "deployments", id, "images", name] => image(name, Some(*id)),
        ["", "v1", "models"] => Some(Route::Models),
        ["", "v1", "usage"] => Some(Route::Usage),
        ["", "health"] => Some(Route::Health),
        _ => None,
    };
    let Some(found) = found else {
        return Route::NotFound;
    };
    let (allow, allowed) = match found {
        Route::Image { .. } => ("POST", method == Method::POST),
        _ => ("GET", method == Method::GET || method == Method::HEAD),
    };
    if allowed { found } else { Route::WrongMethod { allow } }
}

impl App {
    /// Answers one request: JSON, or server-sent events for `stream: true`.
    /// Never fails: every failure is an OpenAI error response.
    pub async fn respond(self: &Arc<Self>, req: Incoming) -> Answer {
        let mut log = RequestLog::new(&req.request_id, req.method.as_str());
        let route = route(&req.method, &req.path);
        log.route = route.name();
        let mut tab = Tab::default();
        let result = match route {
            Route::Image { operation, deployment } => {
                log.request_type = operation.request_type();
                log.metered = true;
                crate::pipeline::serve(self, &req, operation, deployment, &mut log, &mut tab).await
            }
            Route::Models => {
                log.request_type = "list_models";
                match self.authenticate(&req.headers, req.deadline).await {
                    Ok(caller) => {
                        log.client = caller.name.clone();
                        Ok(ok_json(ResponseBody::from(model_list(self, &caller))))
                    }
                    Err(err) => Err(err),
                }
            }
            Route::Usage => {
                log.request_type = "usage";
                match self.authenticate(&req.headers, req.deadline).await {
                    Ok(caller) => {
                        log.client = caller.name.clone();
                        match self.spend().report(caller.name.as_deref(), caller.spend.as_ref()).await {
                            Ok((body, headers)) => {
                                tab.headers = headers;
                                Ok(ok_json(ResponseBody::from(body)))
                            }
                            Err(err) => Err(err),
                        }
                    }
                    Err(err) => Err(err),
                }
            }
            Route::Health => Ok(ok_json(ResponseBody::whole(Bytes::from_static(br#"{"status":"ok"}"#)))),
            Route::WrongMethod { .. } => Err(ApiError::method_not_allowed(req.method.as_str(), &req.path)),
            Route::NotFound => Err(ApiError::not_found(&req.path)),
        };
        let mut answer = finish(self.metrics(), result, log, &req, self.image_store().is_some(), tab);
        if let Route::WrongMethod { allow } = route {
            answer.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        }
        answer
    }

    /// The answer to a request whose handling failed without an answer of its
    /// own (it panicked): a 500 with an OpenAI body, logged like any other.
    pub fn failed(&self, request_id: &str, method: Method, response_limit: Option<usize>) -> Answer {
        let mut log = RequestLog::new(request_id, method.as_str());
        log.route = "failed";
        let req = Incoming {
            method,
            path: String::new(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            deadline: None,
            request_id: request_id.to_owned(),
            response_limit,
        };
        let err = ApiError::internal("The connector failed while answering this request. Please retry.");
        finish(self.metrics(), Err(err), log, &req, false, Tab::default())
    }

    /// The same, whole: what a buffered front door sends, and what tests read.
    pub async fn handle(self: &Arc<Self>, req: Incoming) -> Response<Vec<u8>> {
        let (parts, body) = self.respond(req).await.into_parts();
        Response::from_parts(parts, concat(&body.collect().await))
    }
}

/// Every answer on its way out: an error as the OpenAI body, the front door's
/// size limit, the headers every answer carries, `HEAD`, and the log line and
/// metrics, written once; a limited key's request settled once its cost is
/// known (off the client's path). With an image bucket (`urls`), an answer
/// too large for the front door suggests `response_format: "url"`.
fn finish(
    metrics: &MetricsSink,
    result: Result<Answer, ApiError>,
    log: RequestLog,
    req: &Incoming,
    urls: bool,
    mut tab: Tab,
) -> Answer {
    let hint = |err: ApiError| if urls { err.suggest_urls() } else { err };
    let (mut answer, mut code) = match result {
        Ok(answer) => (answer, None),
        Err(err) => {
            let err = hint(err);
            (error_response(&err, &log), err.code)
        }
    };
    let len = answer.body().known_len().unwrap_or(0);
    if let Some(limit) = req.response_limit.filter(|limit| len > *limit) {
        // The images exist and are billed: a retry would pay for them again.
        let err = hint(ApiError::response_too_large(len, limit).billed());
        answer = error_response(&err, &log);
        code = err.code;
    }
    stamp(answer.headers_mut(), &log);
    for (name, value) in &tab.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            answer.headers_mut().insert(*name, value);
        }
    }
    if req.method == Method::HEAD {
        *answer.body_mut() = ResponseBody::empty();
    }
    compress_if_it_pays(&mut answer, req);
    let status = answer.status().as_u16();
    let (parts, body) = answer.into_parts();
    // `bytes_out` counts the bytes as sent: compressed when the answer is gzip.
    let body = match body {
        ResponseBody::Whole(chunks) => {
            let len = chunks.iter().map(Bytes::len).sum();
            tab.settle(outcome(&log));
            log.write(metrics, status, code.as_deref(), len);
            ResponseBody::Whole(chunks)
        }
        ResponseBody::Streaming(inner) => ResponseBody::Streaming(Box::new(Logged {
            inner,
            log: Some(log),
            metrics: metrics.clone(),
            status,
            sent: 0,
            tab,
        })),
    };
    Response::from_parts(parts, body)
}

/// What settles a request: its cost, and whether Azure billed it.
fn outcome(log: &RequestLog) -> Outcome {
    let images = log.images.unwrap_or(0);
    Outcome {
        cost_usd: log.cost_usd(),
        billed: images > 0
            || log
                .attempts
                .iter()
                .any(|a| a.status.is_some_and(|s| (200..300).contains(&s))),
        images,
    }
}

/// Gzip for a large relayed images answer on a front door that streams, when
/// the client takes it: past Lambda's first 6 MB each megabyte costs half a
/// second, and compressed base64 is a quarter smaller (compress.rs).
///
/// Buffered front doors are left alone: their body travels as text in the
/// proxy JSON, so gzip would have to go out as base64 (`isBase64Encoded`, a
/// third larger: 75% × 4/3 is all of it again), and the 6 MB limit is on that
/// JSON. Event streams are left alone too, until measured: their point is
/// each event arriving when made, and a proxy that decodes gzip may hold them.
fn compress_if_it_pays(answer: &mut Answer, req: &Incoming) {
    let worth_it = req.response_limit.is_none()
        && answer.status().is_success()
        && answer
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
        && matches!(answer.body(), ResponseBody::Streaming(body)
            if body.remaining_hint().is_some_and(|len| len >= compress::COMPRESS_FROM))
        && compress::accepts_gzip(&req.headers);
    if !worth_it {
        return;
    }
    let body = std::mem::replace(answer.body_mut(), ResponseBody::empty());
    if let ResponseBody::Streaming(inner) = body {
        *answer.body_mut() = ResponseBody::Streaming(Box::new(compress::Gzip::new(inner)));
        let headers = answer.headers_mut();
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// `x-request-id` on every answer; Azure's request id when Azure answered;
/// the model that served.
fn stamp(headers: &mut HeaderMap, log: &RequestLog) {
    if let Ok(id) = HeaderValue::from_str(&log.request_id) {
        headers.insert("x-request-id", id);
    }
    if let Some(id) = log.upstream_request_id().and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert("x-upstream-request-id", id);
    }
    if let Some(served) = log.served_model.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert("x-served-model", served);
    }
}

fn error_response(err: &ApiError, log: &RequestLog) -> Answer {
    let mut response = Response::new(ResponseBody::from(err.body(&log.error_context())));
    *response.status_mut() = err.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(wait) = err.retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        headers.insert("retry-after-ms", HeaderValue::from(wait.as_millis() as u64));
    }
    if err.do_not_retry {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    response
}

/// A body still being produced, with the request's log line and metrics
/// written when it ends, breaks off, or is dropped (the client went away).
struct Logged {
    inner: Box<dyn StreamingBody>,
    log: Option<RequestLog>,
    metrics: MetricsSink,
    status: u16,
    sent: usize,
    tab: Tab,
}

impl Logged {
    fn write(&mut self, code: Option<&str>) {
        if let Some(mut log) = self.log.take() {
            self.inner.fill_log(&mut log);
            self.tab.settle(outcome(&log));
            log.write(&self.metrics, self.status, code, self.sent);
        }
    }
}

impl StreamingBody for Logged {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>> {
        let next = self.inner.poll_chunk(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => self.sent += chunk.len(),
            Poll::Ready(Some(Err(aborted))) => self.write(Some(aborted.code)),
            Poll::Ready(None) => self.write(None),
            Poll::Pending => {}
        }
        next
    }

    fn fill_log(&mut self, log: &mut RequestLog) {
        self.inner.fill_log(log);
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.write(Some("client_disconnected"));
    }
}

/// The configured models the caller may use.
fn model_list(app: &App, caller: &Caller) -> Vec<u8> {
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
        data: app
            .config()
            .models
            .iter()
            .filter(|m| caller.may_use(&m.name))
            .map(|m| Model {
                id: &m.name,
                object: "model",
                created: app.started(),
                owned_by: "azure",
            })
            .collect(),
    };
    serde_json::to_vec(&list).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generations(deployment: Option<&str>) -> Route<'_> {
        Route::Image {
            operation: Operation::Generation,
            deployment,
        }
    }

    #[test]
    fn routes_match_the_generation_and_edit_paths_and_nothing_else() {
        let post = Method::POST;
        assert_eq!(route(&post, "/v1/images/generations"), generations(None));
        assert_eq!(
            route(&post, "/openai/deployments/img/images/generations"),
            generations(Some("img"))
        );
        assert_eq!(
            route(&post, "/openai/openai/deployments/img/images/generations"),
            generations(Some("img"))
        );
        let edits = |deployment| Route::Image {
            operation: Operation::Edit,
            deployment,
        };
        assert_eq!(route(&post, "/v1/images/edits"), edits(None));
        assert_eq!(route(&post, "/openai/deployments/img/images/edits"), edits(Some("img")));
        assert_eq!(
            route(&post, "/openai/openai/deployments/img/images/edits"),
            edits(Some("img"))
        );
        assert_eq!(route(&Method::GET, "/v1/models"), Route::Models);
        assert_eq!(route(&Method::GET, "/v1/usage"), Route::Usage);
        assert_eq!(route(&post, "/v1/usage"), Route::WrongMethod { allow: "GET" });
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
            "/v1/images/variations",
            "/openai/deployments/a/b/images/generations",
            "/openai/deployments/images/generations",
            "//v1/images/generations",
        ] {
            assert_eq!(route(&post, path), Route::NotFound, "{path}");
        }
    }
}
