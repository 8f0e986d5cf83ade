//! What Azure answered, in OpenAI's words: a success body reshaped (see
//! [`crate::reshape`]) with its base64 image data passed through as raw JSON,
//! or an upstream failure mapped to the status and error the client should see.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::ModelEntry;
use crate::error::{ApiError, INVALID_REQUEST, SERVER_ERROR};
use crate::reshape::{Malformed, Reshaper};

/// What Azure answered, before any interpretation.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
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

/// A JSON object whose values stay unparsed slices of the input: the way
/// megabytes of base64 cross the connector without a copy into a value tree.
pub(crate) struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ObjectVisitor<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push((key, value));
                }
                Ok(RawObject(fields))
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

impl<'a> RawObject<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// A whole success body in OpenAI format, and what the logs want to know of it.
#[derive(Debug)]
pub struct ImagesResponse {
    /// The body in pieces: slices of Azure's, with each image's `index` between them.
    pub body: Vec<Bytes>,
    pub images: usize,
    pub usage: Option<Usage>,
}

impl ImagesResponse {
    /// The body in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        concat(&self.body)
    }
}

/// Chunks in one buffer.
pub fn concat(chunks: &[Bytes]) -> Vec<u8> {
    let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        all.extend_from_slice(chunk);
    }
    all
}

/// Token usage as gpt-image models report it (`ImagesUsage`); dall-e-3 reports none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub input_tokens_details: UsageDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct UsageDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub image_tokens: u64,
}

/// Reshapes a whole Azure 200 body as OpenAI's `ImagesResponse`: every field
/// as Azure wrote it, and each image with its `index` (see [`Reshaper`]).
pub fn images_response(body: Bytes) -> Result<ImagesResponse, ApiError> {
    let mut reshaper = Reshaper::new();
    reshaper
        .feed(body)
        .and_then(|()| reshaper.finish())
        .map_err(malformed)?;
    Ok(ImagesResponse {
        body: reshaper.take_output(),
        images: reshaper.images(),
        usage: reshaper.usage(),
    })
}

/// 502 for a success body that is not an images response.
pub fn malformed(what: Malformed) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        SERVER_ERROR,
        "upstream_invalid_response",
        format!("The Azure deployment answered with a body that {what}."),
    )
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

/// The client's view of an Azure failure (WIRE.md, "Errors").
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
                Some("content_policy_violation".to_owned())
            } else {
                azure_code
            };
            ApiError {
                status,
                kind: Cow::Owned(
                    azure
                        .kind
                        .filter(|k| !k.is_empty())
                        .unwrap_or_else(|| INVALID_REQUEST.to_owned()),
                ),
                code: code.map(Cow::Owned),
                message: azure.message.filter(|m| !m.is_empty()).unwrap_or_else(|| {
                    format!(
                        "The Azure deployment rejected the request with status {}.",
                        status.as_u16()
                    )
                }),
                param: azure.param.map(Cow::Owned),
                inner_error: azure.inner_error,
                retry_after: None,
            }
        }
        401 => ApiError::new(
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            "upstream_auth_failed",
            format!(
                "The Azure deployment for model `{}` rejected the connector's Azure key. The operator must update the key in Secrets Manager.",
                entry.name
            ),
        ),
        403 => ApiError::new(
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            "upstream_forbidden",
            format!(
                "The Azure resource for model `{}` refused the request (403). The operator must check the Azure resource.",
                entry.name
            ),
        ),
        404 => ApiError::new(
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            "upstream_deployment_not_found",
            format!(
                "The Azure deployment configured for model `{}` does not exist. The operator must check IMAGE_MODELS.",
                entry.name
            ),
        ),
        408 => upstream_unavailable(UpstreamError::Timeout),
        429 => {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "rate_limit_exceeded",
                format!(
                    "The Azure deployment for model `{}` is rate limited. Please retry after the time in the Retry-After header.",
                    entry.name
                ),
            );
            err.retry_after = retry_after(&response.headers);
            err
        }
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            "upstream_error",
            format!(
                "The Azure deployment for model `{}` failed with status {}.",
                entry.name,
                status.as_u16()
            ),
        ),
    }
}

/// No answer at all: a timeout is 504, anything else 502.
pub fn upstream_unavailable(err: UpstreamError) -> ApiError {
    match err {
        UpstreamError::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            SERVER_ERROR,
            "upstream_timeout",
            format!("{err}."),
        ),
        UpstreamError::Connect | UpstreamError::Transport => ApiError::new(
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            "upstream_unreachable",
            format!("{err}."),
        ),
    }
}

/// Azure's `retry-after-ms`, else `retry-after` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e12)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = header("retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

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
    fn success_adds_indexes_and_keeps_every_field_in_place() {
        let azure = r#"{"created":1698342300,"data":[{"b64_json":"aGVsbG8=","revised_prompt":"r","content_filter_results":{"hate":{"filtered":false}}},{"b64_json":"d29ybGQ="}],"background":"opaque","output_format":"png","quality":"high","size":"1024x1024","usage":{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40}}}"#;
        let shaped = images_response(Bytes::from_static(azure.as_bytes())).expect("shaped");
        assert_eq!(shaped.images, 2);
        let v: Value = serde_json::from_slice(&shaped.to_vec()).expect("valid JSON");
        assert_eq!(v["created"], 1698342300);
        assert_eq!(v["data"][0]["b64_json"], "aGVsbG8=");
        assert_eq!(v["data"][0]["index"], 0);
        assert_eq!(v["data"][0]["revised_prompt"], "r");
        assert_eq!(v["data"][0]["content_filter_results"]["hate"]["filtered"], false);
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["usage"]["input_tokens_details"]["image_tokens"], 40);
        let usage = shaped.usage.expect("usage");
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.total_tokens),
            (50, 50, 100)
        );
        assert_eq!(usage.input_tokens_details.image_tokens, 40);
        assert_eq!(v["size"], "1024x1024");
    }

    #[test]
    fn base64_bytes_are_copied_verbatim() {
        // Escaped slashes stay as Azure wrote them: no re-encoding on the way through.
        let azure = r#"{"created":1,"data":[{"b64_json":"ab\/cd+=="}]}"#;
        let shaped = images_response(Bytes::from_static(azure.as_bytes())).expect("shaped");
        assert_eq!(
            std::str::from_utf8(&shaped.to_vec()).expect("utf8"),
            r#"{"created":1,"data":[{"b64_json":"ab\/cd+==","index":0}]}"#
        );
    }

    #[test]
    fn malformed_successes_are_bad_gateway() {
        for body in [
            "",
            "not json",
            "[]",
            r#"{"data":[]}"#,
            r#"{"created":"x","data":[]}"#,
            r#"{"created":155555555555555555555555555555,"data":[]}"#,
            r#"{"created":-1,"data":[]}"#,
            r#"{"created":1,"data":{}}"#,
            r#"{"created":1,"data":[{"b64_json":"tru"#,
        ] {
            let err = images_response(Bytes::from_static(body.as_bytes())).expect_err(body);
            assert_eq!(err.status, StatusCode::BAD_GATEWAY, "{body}");
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
}
