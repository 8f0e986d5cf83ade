//! Azure's failures in the client's words: the status and the OpenAI error
//! the client should see, and whether another attempt or model can help.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ModelEntry;
use crate::error::{self, ApiError};

/// What Azure answered, before any interpretation.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Azure's body can echo the prompt: printed by its length only.
impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamResponse {
    /// A 429: the deployment is past its quota for now.
    pub fn is_throttled(&self) -> bool {
        self.status.as_u16() == 429
    }

    /// A 401: the key (or token) was refused, perhaps rotated since it was cached.
    pub fn rejects_key(&self) -> bool {
        self.status.as_u16() == 401
    }

    /// Azure's 400 refusing `stream` or `partial_images` themselves, as an
    /// api-version without image streaming answers: the error names the field
    /// as its `param`, or is exactly Azure's "unrecognized argument" for it.
    /// Never a substring of any message: a client's own unknown field (say
    /// `stream_options`) must not turn streaming off for everyone.
    pub fn refuses_streaming(&self) -> bool {
        const FIELDS: [&str; 2] = ["stream", "partial_images"];
        if self.status.as_u16() != 400 {
            return false;
        }
        let Some(azure) = serde_json::from_slice::<AzureErrorBody>(&self.body)
            .ok()
            .and_then(|b| b.error)
        else {
            return false;
        };
        let by_param = azure.param.as_deref().is_some_and(|p| FIELDS.contains(&p));
        let by_message = azure.message.as_deref().is_some_and(|m| {
            m.trim()
                .strip_prefix("Unrecognized request argument supplied: ")
                .is_some_and(|field| FIELDS.contains(&field))
        });
        by_param || by_message
    }
}

/// Why no answer came. Carries no URL: the HTTP client's errors do, so they stop in `azure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the Azure deployment did not answer in time")]
    Timeout,
    #[error("the Azure deployment could not be reached")]
    Connect,
    #[error("the connection to the Azure deployment failed")]
    Transport,
}

/// Azure's error body, read loosely: every field is optional and `code` may be a number.
#[derive(Deserialize, Default)]
struct AzureErrorBody {
    error: Option<AzureError>,
}

#[derive(Deserialize, Default)]
struct AzureError {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    inner_error: Option<Box<RawValue>>,
}

/// A failed attempt: what the client would see, and what may still help.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    pub error: ApiError,
    /// Worth another attempt on the same deployment: 429, 408, 5xx, timeouts, connection errors.
    pub retryable: bool,
    /// Worth trying a fallback model: retryable failures, and a deployment that does not exist.
    pub fallback: bool,
    /// How long Azure asked to wait (`retry-after-ms`, `retry-after`).
    pub wait: Option<Duration>,
}

impl UpstreamFailure {
    /// A failure nothing can help: the request itself, or the operator's setup.
    pub fn fatal(error: ApiError) -> Self {
        Self {
            error,
            retryable: false,
            fallback: false,
            wait: None,
        }
    }

    /// An Azure answer other than success.
    pub fn from_response(response: &UpstreamResponse, entry: &ModelEntry) -> Self {
        let status = response.status.as_u16();
        let retryable = matches!(status, 408 | 429 | 500 | 502 | 503 | 504);
        Self {
            error: upstream_error(response, entry),
            retryable,
            fallback: retryable || status == 404,
            wait: retry_after(&response.headers),
        }
    }
}

impl From<UpstreamError> for UpstreamFailure {
    fn from(err: UpstreamError) -> Self {
        Self {
            error: upstream_unavailable(err),
            retryable: true,
            fallback: true,
            wait: None,
        }
    }
}

/// The client's view of an Azure failure (Azure's `dalle_error_response` /
/// `image_generation_error` schemas in the 2025-04-01-preview inference spec).
pub fn upstream_error(response: &UpstreamResponse, entry: &ModelEntry) -> ApiError {
    let status = response.status;
    let azure = serde_json::from_slice::<AzureErrorBody>(&response.body)
        .ok()
        .and_then(|b| b.error)
        .unwrap_or_default();
    let azure_code = match &azure.code {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match status.as_u16() {
        // The request itself was refused: the client can act on Azure's words.
        400 | 413 | 415 | 422 => {
            let content_filter = matches!(azure_code.as_deref(), Some("contentFilter" | "content_filter"));
            let code = if content_filter {
                Some(error::CONTENT_POLICY_VIOLATION.code.to_owned())
            } else {
                azure_code
            };
            ApiError::upstream_rejected(
                status.as_u16(),
                azure.kind,
                code,
                azure.message,
                azure.param,
                azure.inner_error,
            )
        }
        401 => ApiError::new(
            error::UPSTREAM_AUTH_FAILED,
            format!(
                "The Azure deployment for model `{}` rejected the connector's Azure key. The operator must update the key in Secrets Manager.",
                entry.name
            ),
        ),
        403 => ApiError::new(
            error::UPSTREAM_FORBIDDEN,
            format!(
                "The Azure resource for model `{}` refused the request (403). The operator must check the Azure resource.",
                entry.name
            ),
        ),
        404 => ApiError::new(
            error::UPSTREAM_DEPLOYMENT_NOT_FOUND,
            format!(
                "The Azure deployment configured for model `{}` does not exist. The operator must check IMAGE_MODELS.",
                entry.name
            ),
        ),
        408 => upstream_unavailable(UpstreamError::Timeout),
        429 => ApiError::new(
            error::UPSTREAM_RATE_LIMITED,
            format!(
                "The Azure deployment for model `{}` is rate limited. Please retry after the time in the Retry-After header.",
                entry.name
            ),
        )
        .with_retry_after(retry_after(&response.headers)),
        _ => ApiError::new(
            error::UPSTREAM_ERROR,
            format!(
                "The Azure deployment for model `{}` failed with status {}.",
                entry.name,
                status.as_u16()
            ),
        ),
    }
}

/// Every deployment of a pool is cooling down after 429s or failures, and
/// none frees up soon enough to wait for (the caller sets `Retry-After`).
pub fn pool_busy(entry: &ModelEntry) -> ApiError {
    ApiError::new(
        error::UPSTREAM_RATE_LIMITED,
        format!(
            "Every Azure deployment for model `{}` is rate limited or failing. Please retry after the time in the Retry-After header.",
            entry.name
        ),
    )
}

/// No answer at all: a timeout is 504, anything else 502.
pub fn upstream_unavailable(err: UpstreamError) -> ApiError {
    let spec = match err {
        UpstreamError::Timeout => error::UPSTREAM_TIMEOUT,
        UpstreamError::Connect | UpstreamError::Transport => error::UPSTREAM_UNREACHABLE,
    };
    ApiError::new(spec, format!("{err}."))
}

/// Azure's `retry-after-ms`, else `retry-after` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let asked = if let Some(ms) = header("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        Duration::from_secs_f64(ms.min(LONGEST_RETRY_AFTER.as_secs_f64() * 1000.0) / 1000.0)
    } else {
        let value = header("retry-after")?;
        match value.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds.min(LONGEST_RETRY_AFTER.as_secs())),
            Err(_) => httpdate::parse_http_date(value)
                .ok()?
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO),
        }
    };
    Some(asked.min(LONGEST_RETRY_AFTER))
}

/// The most of a `Retry-After` the connector believes: a day. Whatever Azure
/// (or something posing as it) sends, the waits it leads to stay small
/// enough for any clock arithmetic.
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(86_400);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn entry() -> ModelEntry {
        let cfg = crate::config::Config::from_lookup(|k| match k {
            "IMAGE_MODELS" => Some(r#"[{"name":"azure-image","model":"gpt-image-1","baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"2025-04-01-preview"}]"#.into()),
            "AZURE_API_KEY_SECRET_ID" => Some("s".into()),
            _ => None,
        })
        .expect("valid");
        cfg.models[0].clone()
    }

    fn upstream(status: u16, body: &str, headers: &[(&'static str, &str)]) -> UpstreamResponse {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().expect("header"));
        }
        UpstreamResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn content_filter_keeps_code_and_inner_error() {
        let body = r#"{"error":{"code":"content_policy_violation","message":"Your request was rejected as a result of our safety system.","param":"prompt","type":"invalid_request_error","inner_error":{"code":"ResponsibleAIPolicyViolation","content_filter_results":{"violence":{"filtered":true,"severity":"high"}},"revised_prompt":"x"}}}"#;
        let err = upstream_error(&upstream(400, body, &[]), &entry());
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code.as_deref(), Some("content_policy_violation"));
        let inner: Value = serde_json::from_str(err.inner_error.as_deref().expect("inner").get()).expect("json");
        assert_eq!(inner["content_filter_results"]["violence"]["filtered"], true);
    }

    #[test]
    fn docs_variant_content_filter_becomes_content_policy_violation() {
        let err = upstream_error(
            &upstream(
                400,
                r#"{"error":{"code":"contentFilter","message":"Your task failed as a result of our safety system."}}"#,
                &[],
            ),
            &entry(),
        );
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code.as_deref(), Some("content_policy_violation"));
        assert_eq!(err.kind, "invalid_request_error");
    }

    #[test]
    fn upstream_statuses_map_as_the_wire_table_says() {
        let cases = [
            (401, 502, "upstream_auth_failed"),
            (403, 502, "upstream_forbidden"),
            (404, 502, "upstream_deployment_not_found"),
            (408, 504, "upstream_timeout"),
            (500, 502, "upstream_error"),
            (503, 502, "upstream_error"),
        ];
        for (azure, ours, code) in cases {
            let err = upstream_error(
                &upstream(
                    azure,
                    r#"{"error":{"code":"x","message":"https://secret.openai.azure.com"}}"#,
                    &[],
                ),
                &entry(),
            );
            assert_eq!(err.status.as_u16(), ours, "{azure}");
            assert_eq!(err.code.as_deref(), Some(code), "{azure}");
            assert!(!err.message.contains("azure.com"), "{azure}: {}", err.message);
        }
    }

    #[test]
    fn rate_limits_carry_retry_after() {
        let err = upstream_error(
            &upstream(
                429,
                r#"{"error":{"code":"429","message":"retry after 7 seconds"}}"#,
                &[("retry-after", "7")],
            ),
            &entry(),
        );
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        let err = upstream_error(
            &upstream(429, "", &[("retry-after", "7"), ("retry-after-ms", "1500")]),
            &entry(),
        );
        assert_eq!(err.retry_after, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn retry_after_may_be_an_http_date() {
        let in_ten = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(10));
        let wait = retry_after(&upstream(429, "", &[("retry-after", &in_ten)]).headers).expect("a date");
        assert!(
            wait > Duration::from_secs(8) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        for huge in ["18446744073709551615", "99999999999999999999999"] {
            let wait = retry_after(&upstream(429, "", &[("retry-after", huge)]).headers);
            assert!(wait.is_none_or(|w| w <= LONGEST_RETRY_AFTER), "{huge}: {wait:?}");
        }
        let huge_ms = retry_after(&upstream(429, "", &[("retry-after-ms", "1e300")]).headers);
        assert_eq!(huge_ms, Some(LONGEST_RETRY_AFTER));
        let past = retry_after(&upstream(429, "", &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]).headers);
        assert_eq!(past, Some(Duration::ZERO));
        assert_eq!(
            retry_after(&upstream(429, "", &[("retry-after", "soon")]).headers),
            None
        );
    }

    #[test]
    fn failures_say_whether_a_retry_or_a_fallback_can_help() {
        let cases = [
            (429, true, true),
            (408, true, true),
            (500, true, true),
            (503, true, true),
            (504, true, true),
            (404, false, true),
            (400, false, false),
            (401, false, false),
            (403, false, false),
        ];
        for (status, retryable, fallback) in cases {
            let failure = UpstreamFailure::from_response(&upstream(status, "{}", &[]), &entry());
            assert_eq!((failure.retryable, failure.fallback), (retryable, fallback), "{status}");
        }
        let failure = UpstreamFailure::from(UpstreamError::Connect);
        assert!(failure.retryable && failure.fallback);
    }

    #[test]
    fn only_a_refusal_of_stream_itself_says_the_deployment_does_not_stream() {
        let refusal = |body: &str| upstream(400, body, &[]).refuses_streaming();
        assert!(refusal(
            r#"{"error":{"code":"invalid_value","param":"stream","message":"Unrecognized request argument supplied: stream"}}"#
        ));
        assert!(refusal(r#"{"error":{"param":"partial_images","message":"x"}}"#));
        assert!(refusal(
            r#"{"error":{"message":"Unrecognized request argument supplied: stream"}}"#
        ));
        for body in [
            r#"{"error":{"param":"stream_options","message":"Unrecognized request argument supplied: stream_options"}}"#,
            r#"{"error":{"message":"Invalid 'stream_options': streaming is great"}}"#,
            r#"{"error":{"param":"prompt","message":"the stream of consciousness is filtered"}}"#,
            "stream",
        ] {
            assert!(!refusal(body), "{body}");
        }
        assert!(!upstream(500, r#"{"error":{"param":"stream"}}"#, &[]).refuses_streaming());
    }
}
