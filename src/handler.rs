//! The routes, thin: a request in, the matching step of the flow, a response
//! out. Front-door adapters (`lambda`, `local`) turn their requests into
//! [`Incoming`] and the answer back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Response, StatusCode};

use std::sync::Arc;

use crate::auth::{Caller, ClientKeys, no_keys_configured};
use crate::azure::AzureClient;
use crate::config::{AuthMode, Config, ModelEntry};
use crate::error::{ApiError, ErrorContext, INVALID_REQUEST, SERVER_ERROR};
use crate::request::ImageRequest;
use crate::response::{UpstreamError, images_response, upstream_error, upstream_unavailable};
use crate::secrets::{ApiKey, SecretCache, SecretError, SecretSource};

/// Bodies above this are refused before parsing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Time kept back from the Lambda deadline to send the answer.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);
/// One upstream attempt's bound when no deadline is known (the local server).
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(600);

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
    azure_keys: SecretCache<ApiKey>,
    client_keys: SecretCache<ClientKeys>,
    azure: AzureClient,
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
struct Outcome<'a> {
    route: &'static str,
    model_requested: Option<String>,
    entry: Option<&'a ModelEntry>,
    n: Option<u32>,
    prompt_chars: Option<usize>,
    /// The client key's name.
    client: Option<String>,
    upstream_status: Option<u16>,
    upstream_attempts: u32,
    upstream_ms: Option<u128>,
    images: Option<usize>,
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
            config,
            azure,
            started,
        }
    }

    /// The caller behind the request's key, as `AUTH_MODE` says to check it.
    async fn authenticate(&self, req: &Incoming) -> Result<Caller, ApiError> {
        match &self.config.auth {
            AuthMode::None => Ok(Caller::unchecked()),
            AuthMode::ClientKeys { secret_id: None } => Err(no_keys_configured()),
            AuthMode::ClientKeys { secret_id: Some(id) } => {
                let keys = self
                    .client_keys
                    .get(id)
                    .await
                    .map_err(|e| secret_error(e, "its client keys"))?;
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
                self.generate(&req, deployment, &mut outcome).await
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
        if req.method == Method::HEAD {
            response.body_mut().clear();
        }
        log_request(&req, &outcome, &response, start.elapsed());
        response
    }

    async fn generate<'a>(
        &'a self,
        req: &'a Incoming,
        deployment: Option<&'a str>,
        outcome: &mut Outcome<'a>,
    ) -> Result<Response<Vec<u8>>, Response<Vec<u8>>> {
        let caller = self
            .authenticate(req)
            .await
            .map_err(|e| self.error_response(&e, outcome))?;
        outcome.client = caller.name.clone();
        if req.body.len() > MAX_BODY_BYTES {
            let err = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                crate::error::INVALID_REQUEST,
                "request_too_large",
                format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
            );
            return Err(self.error_response(&err, outcome));
        }
        check_content_type(&req.headers).map_err(|e| self.error_response(&e, outcome))?;
        let image_request = ImageRequest::parse(&req.body).map_err(|e| self.error_response(&e, outcome))?;
        outcome.n = Some(image_request.n);
        outcome.prompt_chars = Some(image_request.prompt_chars);
        let entry = match deployment {
            Some(id) => {
                outcome.model_requested = Some(id.to_owned());
                self.config
                    .model_by_deployment(id)
                    .ok_or_else(|| ApiError::model_not_found(id, "deployment-id"))
            }
            None => {
                outcome.model_requested = req_model(&image_request, &self.config).map(str::to_owned);
                let name = image_request.model.as_deref();
                self.config
                    .model_by_name(name)
                    .ok_or_else(|| ApiError::model_not_found(name.unwrap_or_default(), "model"))
            }
        }
        .map_err(|e| self.error_response(&e, outcome))?;
        outcome.entry = Some(entry);
        let model_param = if deployment.is_some() { "deployment-id" } else { "model" };
        self.check(&image_request, entry, &caller, model_param)
            .map_err(|e| self.error_response(&e, outcome))?;

        let body = image_request.upstream_body(entry);
        match self.call_azure(entry, body, req.deadline, outcome).await {
            Ok(shaped) => {
                outcome.images = Some(shaped.images);
                Ok(ok_json(shaped.body))
            }
            Err(err) => Err(self.error_response(&err, outcome)),
        }
    }

    /// The checks of the entry's model, and that fallbacks name configured models.
    /// The caller may use the model (and its fallbacks), the request passes the
    /// checks of the entry's model, and fallbacks name configured models.
    fn check(
        &self,
        image_request: &ImageRequest,
        entry: &ModelEntry,
        caller: &Caller,
        model_param: &'static str,
    ) -> Result<(), ApiError> {
        caller.check(&entry.name, model_param)?;
        image_request.validate_for(entry.spec)?;
        if let Some(unknown) = image_request
            .fallbacks
            .iter()
            .find(|f| self.config.model_by_name(Some(f)).is_none())
        {
            return Err(ApiError::invalid_param(
                "fallbacks",
                "model_not_found",
                format!(
                    "Invalid 'fallbacks': the model `{}` is not configured.",
                    crate::error::printable(unknown)
                ),
            ));
        }
        for fallback in &image_request.fallbacks {
            caller.check(fallback, "fallbacks")?;
        }
        Ok(())
    }

    /// One generation on Azure; on a 401 the key is fetched again and the call
    /// made once more, for a key rotated since it was cached.
    async fn call_azure(
        &self,
        entry: &ModelEntry,
        body: Vec<u8>,
        deadline: Option<Instant>,
        outcome: &mut Outcome<'_>,
    ) -> Result<crate::response::ImagesResponse, ApiError> {
        let mut key = self
            .azure_keys
            .get(&entry.secret_id)
            .await
            .map_err(|e| secret_error(e, "its Azure key"))?;
        let started = Instant::now();
        let mut rotated = false;
        let result = loop {
            let timeout = match deadline {
                None => DEFAULT_UPSTREAM_TIMEOUT,
                Some(deadline) => match deadline
                    .checked_duration_since(Instant::now())
                    .and_then(|left| left.checked_sub(DEADLINE_MARGIN))
                {
                    Some(left) if !left.is_zero() => left,
                    _ => break Err(upstream_unavailable(UpstreamError::Timeout)),
                },
            };
            outcome.upstream_attempts += 1;
            let response = match self.azure.generate(entry, &key, body.clone(), timeout).await {
                Ok(response) => response,
                Err(err) => break Err(upstream_unavailable(err)),
            };
            outcome.upstream_status = Some(response.status.as_u16());
            if response.status == StatusCode::UNAUTHORIZED && !rotated {
                rotated = true;
                tracing::warn!(model = %entry.name, "Azure refused the cached key; fetching it again");
                key = self
                    .azure_keys
                    .refresh(&entry.secret_id, &key)
                    .await
                    .map_err(|e| secret_error(e, "its Azure key"))?;
                continue;
            }
            break if response.status.is_success() {
                images_response(&response.body)
            } else {
                Err(upstream_error(&response, entry))
            };
        };
        outcome.upstream_ms = Some(started.elapsed().as_millis());
        result
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

    fn error_response(&self, err: &ApiError, outcome: &Outcome<'_>) -> Response<Vec<u8>> {
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

/// The model a request names, when it names a configured one or none (then the default).
fn req_model<'a>(image_request: &'a ImageRequest, config: &'a Config) -> Option<&'a str> {
    match image_request.model.as_deref() {
        Some(name) => Some(name),
        None => config.models.first().map(|m| m.name.as_str()),
    }
}

/// The error code of a response, for its log line.
#[derive(Clone)]
struct ErrorCode(String);

fn ok_json(body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A secret that could not be had: `what` names it for the client, never its id or value.
fn secret_error(err: SecretError, what: &str) -> ApiError {
    tracing::error!(error = %err, "could not read {what}");
    match err {
        SecretError::Unavailable(_) => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "secrets_unavailable",
                format!("The connector could not read {what} from AWS Secrets Manager. Please retry shortly."),
            );
            e.retry_after = Some(Duration::from_secs(1));
            e
        }
        SecretError::Unusable(_) | SecretError::Invalid(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER_ERROR,
            "secret_misconfigured",
            format!(
                "The connector cannot use {what}. The operator must check the secret and the function's access to it."
            ),
        ),
    }
}

/// JSON only: `application/json`, or any `+json` type. A missing header is
/// let through (the body must still parse as JSON).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
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
        StatusCode::BAD_REQUEST,
        INVALID_REQUEST,
        "invalid_content_type",
        "The request body must be JSON, sent with `Content-Type: application/json`.",
    ))
}

fn log_request(req: &Incoming, outcome: &Outcome<'_>, response: &Response<Vec<u8>>, elapsed: Duration) {
    let status = response.status().as_u16();
    let error_code = response.extensions().get::<ErrorCode>().map(|c| c.0.as_str());
    tracing::info!(
        request_id = %req.request_id,
        method = %req.method,
        route = outcome.route,
        client = outcome.client.as_deref(),
        model_requested = outcome.model_requested.as_deref(),
        model = outcome.entry.map(|e| e.name.as_str()),
        azure_model = outcome.entry.map(|e| e.model.as_str()),
        deployment = outcome.entry.map(|e| e.deployment.as_str()),
        n = outcome.n,
        prompt_chars = outcome.prompt_chars,
        status,
        error_code,
        upstream_status = outcome.upstream_status,
        upstream_attempts = outcome.upstream_attempts,
        upstream_ms = outcome.upstream_ms.map(|v| v as u64),
        total_ms = elapsed.as_millis() as u64,
        images = outcome.images,
        bytes_out = response.body().len(),
        "request"
    );
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
