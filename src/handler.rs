//! The routes, thin: a request in, the matching step of the flow, a response
//! out. Front-door adapters (`lambda`, `local`) turn their requests into
//! [`Incoming`] and the answer back.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Response};

use crate::auth::{Caller, ClientKeys, no_keys_configured};
use crate::azure::{AttemptRecord, AzureClient};
use crate::config::{AuthMode, Config, ModelEntry};
use crate::error::{ApiError, ErrorContext};
use crate::observe::{MetricsSink, RequestRecord};
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
}

/// What lives for the whole execution environment: built once, shared by every request.
pub struct App {
    pub config: Config,
    pub(crate) azure_keys: SecretCache<ApiKey>,
    client_keys: SecretCache<ClientKeys>,
    pub(crate) azure: AzureClient,
    metrics: MetricsSink,
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

/// What one request's log line says. Never the prompt, never a key.
#[derive(Default)]
pub(crate) struct Outcome<'a> {
    pub route: &'static str,
    pub model_requested: Option<String>,
    /// The model asked for.
    pub entry: Option<&'a ModelEntry>,
    /// The model that answered, when it was a fallback or the primary.
    pub served: Option<&'a ModelEntry>,
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

    /// Answers one request. Never fails: every failure is an OpenAI error response.
    pub async fn handle(&self, req: Incoming) -> Response<Vec<u8>> {
        let start = Instant::now();
        let mut outcome = Outcome::default();
        let result = match route(&req.method, &req.path) {
            Route::Generations { deployment } => {
                outcome.route = if deployment.is_some() {
                    "azure_generations"
                } else {
                    "openai_generations"
                };
                crate::generation::generate(self, &req, deployment, &mut outcome).await
            }
            Route::Models => {
                outcome.route = "models";
                match self.authenticate(&req).await {
                    Ok(caller) => {
                        outcome.client = caller.name.clone();
                        Ok(ok_json(self.model_list(&caller)))
                    }
                    Err(err) => Err(self.error_response(&err, &outcome)),
                }
            }
            Route::Health => {
                outcome.route = "health";
                Ok(ok_json(br#"{"status":"ok"}"#.to_vec()))
            }
            Route::WrongMethod { allow } => {
                outcome.route = "wrong_method";
                let mut response =
                    self.error_response(&ApiError::method_not_allowed(req.method.as_str(), &req.path), &outcome);
                response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
                Err(response)
            }
            Route::NotFound => {
                outcome.route = "not_found";
                Err(self.error_response(&ApiError::not_found(&req.path), &outcome))
            }
        };
        let mut response = result.unwrap_or_else(|r| r);
        if let Ok(id) = HeaderValue::from_str(&req.request_id) {
            response.headers_mut().insert("x-request-id", id);
        }
        let upstream_id = outcome
            .attempts
            .iter()
            .rev()
            .find_map(|a| a.upstream_request_id.as_deref());
        if let Some(id) = upstream_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            response.headers_mut().insert("x-upstream-request-id", id);
        }
        if req.method == Method::HEAD {
            response.body_mut().clear();
        }
        let record = request_record(&req, &outcome, &response, start.elapsed());
        record.log();
        self.metrics.emit(&record);
        response
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

    pub(crate) fn error_response(&self, err: &ApiError, outcome: &Outcome<'_>) -> Response<Vec<u8>> {
        let request_type = match outcome.route {
            "openai_generations" | "azure_generations" => "image_generation",
            "models" => "list_models",
            _ => "unknown",
        };
        let context = ErrorContext {
            model_requested: outcome.model_requested.as_deref(),
            request_type,
        };
        let mut response = Response::new(err.body(&context));
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

/// The error code of a response, for its log line.
#[derive(Clone)]
struct ErrorCode(String);

pub(crate) fn ok_json(body: Vec<u8>) -> Response<Vec<u8>> {
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

fn request_record<'r>(
    req: &'r Incoming,
    outcome: &'r Outcome<'_>,
    response: &'r Response<Vec<u8>>,
    elapsed: Duration,
) -> RequestRecord<'r> {
    let asked = outcome.entry;
    let answered = outcome.served.or(asked);
    RequestRecord {
        request_id: &req.request_id,
        method: req.method.as_str(),
        route: outcome.route,
        client: outcome.client.as_deref(),
        model_requested: outcome.model_requested.as_deref(),
        model: asked.map(|e| e.name.as_str()),
        served_model: outcome.served.map(|e| e.name.as_str()),
        azure_model: answered.map(|e| e.model.as_str()),
        deployment: answered.map(|e| e.deployment.as_str()),
        fallback_used: outcome.served.zip(asked).is_some_and(|(s, a)| s.name != a.name),
        n: outcome.n,
        size: outcome.size.as_deref(),
        quality: outcome.quality.as_deref(),
        stream: outcome.stream,
        prompt_chars: outcome.prompt_chars,
        status: response.status().as_u16(),
        error_code: response.extensions().get::<ErrorCode>().map(|c| c.0.as_str()),
        attempts: &outcome.attempts,
        total_ms: elapsed.as_millis() as u64,
        bytes_out: response.body().len(),
        images: outcome.images,
        usage: outcome.usage,
    }
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
