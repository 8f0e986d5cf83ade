//! Every error the connector answers, and the one place that renders it as
//! the OpenAI error body.
//!
//! The table below is the whole list: each error's status, `type` and `code`
//! in one line. Other modules build errors with the constructors here and
//! never choose a status themselves. Azure's own refusals of a request (a
//! 400 naming a field, a content filter) pass through with Azure's code; they
//! are built by [`ApiError::upstream_rejected`].

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;

/// What `type` an OpenAI error carries.
pub const INVALID_REQUEST: &str = "invalid_request_error";
pub const SERVER_ERROR: &str = "server_error";
const PERMISSION: &str = "permission_error";
/// OpenAI's `type` for a rate limit.
const REQUESTS: &str = "requests";
/// OpenAI's `type` (and `code`) for an exhausted quota.
const QUOTA: &str = "insufficient_quota";

/// One row of the table: the status, `type` and `code` of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
}

macro_rules! errors {
    ($($(#[$doc:meta])* $name:ident = $status:literal $kind:ident $code:literal;)*) => {
        $($(#[$doc])* pub const $name: Spec = Spec { status: $status, kind: $kind, code: $code };)*
        /// Every row, in table order: the codes a client can receive from the connector itself.
        pub const ALL: &[Spec] = &[$($name),*];
    };
}

errors! {
    // The request, before any upstream call.
    INVALID_JSON = 400 INVALID_REQUEST "invalid_json";
    INVALID_CONTENT_TYPE = 400 INVALID_REQUEST "invalid_content_type";
    /// A `multipart/form-data` body that does not parse.
    INVALID_MULTIPART = 400 INVALID_REQUEST "invalid_multipart";
    /// A form field that may come once, sent twice.
    DUPLICATE_PARAMETER = 400 INVALID_REQUEST "duplicate_parameter";
    /// An upload that is not a PNG, JPEG or WEBP image (by its bytes).
    INVALID_IMAGE_FORMAT = 400 INVALID_REQUEST "invalid_image_format";
    /// An image given as a URL the connector does not fetch, or a malformed data URL.
    INVALID_IMAGE_URL = 400 INVALID_REQUEST "invalid_image_url";
    INVALID_BASE64 = 400 INVALID_REQUEST "invalid_base64";
    MISSING_REQUIRED_PARAMETER = 400 INVALID_REQUEST "missing_required_parameter";
    EMPTY_STRING = 400 INVALID_REQUEST "empty_string";
    INVALID_TYPE = 400 INVALID_REQUEST "invalid_type";
    INVALID_VALUE = 400 INVALID_REQUEST "invalid_value";
    INTEGER_BELOW_MIN_VALUE = 400 INVALID_REQUEST "integer_below_min_value";
    INTEGER_ABOVE_MAX_VALUE = 400 INVALID_REQUEST "integer_above_max_value";
    STRING_ABOVE_MAX_LENGTH = 400 INVALID_REQUEST "string_above_max_length";
    UNSUPPORTED_VALUE = 400 INVALID_REQUEST "unsupported_value";
    UNSUPPORTED_PARAMETER = 400 INVALID_REQUEST "unsupported_parameter";
    /// A `fallbacks` item that is not a configured model.
    FALLBACK_NOT_FOUND = 400 INVALID_REQUEST "model_not_found";
    INVALID_API_KEY = 401 INVALID_REQUEST "invalid_api_key";
    MODEL_NOT_ALLOWED = 403 PERMISSION "model_not_allowed";
    MODEL_NOT_FOUND = 404 INVALID_REQUEST "model_not_found";
    NOT_FOUND = 404 INVALID_REQUEST "not_found";
    METHOD_NOT_ALLOWED = 405 INVALID_REQUEST "method_not_allowed";
    REQUEST_TOO_LARGE = 413 INVALID_REQUEST "request_too_large";
    /// More than a buffered front door returns. A 4xx: SDKs do not retry it.
    RESPONSE_TOO_LARGE = 413 INVALID_REQUEST "response_too_large";
    // Azure's answer.
    /// Azure's content filter refused the prompt or an image (passed through as Azure's 400).
    CONTENT_POLICY_VIOLATION = 400 INVALID_REQUEST "content_policy_violation";
    UPSTREAM_RATE_LIMITED = 429 REQUESTS "rate_limit_exceeded";
    UPSTREAM_AUTH_FAILED = 502 SERVER_ERROR "upstream_auth_failed";
    UPSTREAM_FORBIDDEN = 502 SERVER_ERROR "upstream_forbidden";
    UPSTREAM_DEPLOYMENT_NOT_FOUND = 502 SERVER_ERROR "upstream_deployment_not_found";
    UPSTREAM_ERROR = 502 SERVER_ERROR "upstream_error";
    UPSTREAM_UNREACHABLE = 502 SERVER_ERROR "upstream_unreachable";
    UPSTREAM_INVALID_RESPONSE = 502 SERVER_ERROR "upstream_invalid_response";
    UPSTREAM_TIMEOUT = 504 SERVER_ERROR "upstream_timeout";
    // The image bucket (`response_format: "url"`).
    /// An image generated and billed could not be stored or linked: no retry.
    IMAGE_STORE_FAILED = 502 SERVER_ERROR "image_store_failed";
    // The connector's own setup.
    INTERNAL_ERROR = 500 SERVER_ERROR "internal_error";
    SECRET_MISCONFIGURED = 500 SERVER_ERROR "secret_misconfigured";
    SECRETS_UNAVAILABLE = 503 SERVER_ERROR "secrets_unavailable";
    /// Microsoft Entra ID or AWS STS unreachable or throttling.
    CREDENTIALS_UNAVAILABLE = 503 SERVER_ERROR "credentials_unavailable";
    /// Entra ID or STS refused the connector's credentials.
    UPSTREAM_AUTH_MISCONFIGURED = 500 SERVER_ERROR "upstream_auth_misconfigured";
    // Spend control (spend.rs, usage.rs).
    /// The key's budget cannot hold the request until its period ends.
    INSUFFICIENT_QUOTA = 429 QUOTA "insufficient_quota";
    /// The key's requests or images per minute are reached.
    RATE_LIMIT_EXCEEDED = 429 REQUESTS "rate_limit_exceeded";
    /// The usage table (DynamoDB) unreachable or throttling, with SPEND_LIMITS_ON_ERROR=deny.
    USAGE_STORE_UNAVAILABLE = 503 SERVER_ERROR "usage_store_unavailable";
}

/// A failure that reaches the client: the status, the OpenAI error fields and
/// the headers that go with it. Messages never hold a key, a secret value, an
/// upstream URL or a prompt.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: Cow<'static, str>,
    pub code: Option<Cow<'static, str>>,
    pub message: String,
    pub param: Option<Cow<'static, str>>,
    /// Azure's `inner_error` (content filter results), passed through verbatim.
    pub inner_error: Option<Box<RawValue>>,
    /// How long the client should wait, for `Retry-After` on 429 and 503.
    pub retry_after: Option<Duration>,
    /// Sent as `x-should-retry: false`, which the official SDKs honour: Azure
    /// already generated (and billed) the images, so a retry would pay again.
    pub do_not_retry: bool,
}

impl ApiError {
    /// An error of the table with its message.
    pub fn new(spec: Spec, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(spec.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind: Cow::Borrowed(spec.kind),
            code: Some(Cow::Borrowed(spec.code)),
            message: message.into(),
            param: None,
            inner_error: None,
            retry_after: None,
            do_not_retry: false,
        }
    }

    /// An error about one request field.
    pub fn param(spec: Spec, param: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(spec, message).with_param(param)
    }

    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// The images were generated and billed before this failed: no client retry.
    pub fn billed(mut self) -> Self {
        self.do_not_retry = true;
        self
    }

    /// Azure refused the request itself (400, 413, 415, 422): its status, and
    /// its words, which the client can act on.
    pub fn upstream_rejected(
        status: u16,
        kind: Option<String>,
        code: Option<String>,
        message: Option<String>,
        param: Option<String>,
        inner_error: Option<Box<RawValue>>,
    ) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            kind: Cow::Owned(
                kind.filter(|k| !k.is_empty())
                    .unwrap_or_else(|| INVALID_REQUEST.to_owned()),
            ),
            code: code.map(Cow::Owned),
            message: message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("The Azure deployment rejected the request with status {status}.")),
            param: param.map(Cow::Owned),
            inner_error,
            retry_after: None,
            do_not_retry: false,
        }
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(INVALID_JSON, message)
    }

    pub fn invalid_content_type() -> Self {
        Self::new(
            INVALID_CONTENT_TYPE,
            "The request body must be JSON, sent with `Content-Type: application/json`.",
        )
    }

    pub fn request_too_large(limit: usize) -> Self {
        Self::new(
            REQUEST_TOO_LARGE,
            format!("The request body is larger than {limit} bytes."),
        )
    }

    pub fn response_too_large(size: usize, limit: usize) -> Self {
        Self::new(
            RESPONSE_TOO_LARGE,
            format!(
                "The images came to {:.1} MB, more than this endpoint can return ({:.1} MB, a buffered Lambda response). \
                 Ask for fewer images (n), a smaller size or output_format jpeg, or call the streaming endpoint (the Function URL).",
                size as f64 / 1e6,
                limit as f64 / 1e6
            ),
        )
    }

    /// With an image bucket, a large answer has another way out: links instead of images.
    pub fn suggest_urls(mut self) -> Self {
        if self.code.as_deref() == Some(RESPONSE_TOO_LARGE.code) {
            self.message.push_str(
                " Or ask for response_format \"url\" (gpt-image models): the images are stored and the answer carries links to them.",
            );
        }
        self
    }

    /// The images were generated and billed, then could not be stored (`why`
    /// names no bucket, key or credential). A retry would bill them again.
    pub fn image_store_failed(why: &str) -> Self {
        Self::new(
            IMAGE_STORE_FAILED,
            format!(
                "The images were generated (and billed), but the connector could not store them in its image bucket: {why}. \
                 Retrying would generate and bill them again; ask for response_format \"b64_json\" to receive them without the bucket."
            ),
        )
        .with_param("response_format")
        .billed()
    }

    pub fn invalid_api_key(message: &str) -> Self {
        Self::new(INVALID_API_KEY, message)
    }

    /// 403 for a model outside the key's list: names the model, not the key.
    pub fn model_not_allowed(model: &str, param: &'static str) -> Self {
        Self::param(
            MODEL_NOT_ALLOWED,
            param,
            format!("Your API key is not allowed to use the model `{}`.", printable(model)),
        )
    }

    pub fn model_not_found(name: &str, param: &'static str) -> Self {
        Self::param(
            MODEL_NOT_FOUND,
            param,
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                printable(name)
            ),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(NOT_FOUND, format!("Unknown request URL: {}.", printable(path)))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            METHOD_NOT_ALLOWED,
            format!("Method {} is not allowed on {}.", printable(method), printable(path)),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, message)
    }

    /// Secrets Manager is down or throttling: worth a retry shortly.
    pub fn secrets_unavailable(what: &str) -> Self {
        Self::new(
            SECRETS_UNAVAILABLE,
            format!("The connector could not read {what} from AWS Secrets Manager. Please retry shortly."),
        )
        .with_retry_after(Some(Duration::from_secs(1)))
    }

    /// Entra ID or STS is down or throttling: worth a retry shortly.
    pub fn credentials_unavailable(service: &str) -> Self {
        Self::new(
            CREDENTIALS_UNAVAILABLE,
            format!("The connector could not get its Azure credentials from {service}. Please retry shortly."),
        )
        .with_retry_after(Some(Duration::from_secs(1)))
    }

    /// Entra ID or STS refused the credentials configured for `model`.
    pub fn upstream_auth_misconfigured(model: &str) -> Self {
        Self::new(
            UPSTREAM_AUTH_MISCONFIGURED,
            format!(
                "The connector's credentials for model `{model}` were refused by Microsoft Entra ID or AWS STS. The operator must check the entry's auth settings."
            ),
        )
    }

    /// The operator must act: `what` names the secret for people, never its id or value.
    pub fn secret_misconfigured(what: &str) -> Self {
        Self::new(
            SECRET_MISCONFIGURED,
            format!(
                "The connector cannot use {what}. The operator must check the secret and the function's access to it."
            ),
        )
    }

    /// A key's budget is spent: as OpenAI answers an exhausted quota, and no
    /// SDK retry, which would only be refused again until the period ends.
    pub fn insufficient_quota(message: String) -> Self {
        let mut err = Self::new(INSUFFICIENT_QUOTA, message);
        err.do_not_retry = true;
        err
    }

    /// A key's rate limit: worth a retry after `wait`, the window's end.
    pub fn rate_limit_exceeded(message: String, wait: Duration) -> Self {
        Self::new(RATE_LIMIT_EXCEEDED, message).with_retry_after(Some(wait))
    }

    /// The usage table cannot be read or written: worth a retry shortly.
    pub fn usage_store_unavailable() -> Self {
        Self::new(
            USAGE_STORE_UNAVAILABLE,
            "The connector could not check this key's budget and rate limits (its usage table is unavailable). Please retry shortly.",
        )
        .with_retry_after(Some(Duration::from_secs(1)))
    }

    /// 502 for a success body that is not what the operation answers.
    pub fn upstream_invalid_response(what: impl std::fmt::Display) -> Self {
        Self::new(
            UPSTREAM_INVALID_RESPONSE,
            format!("The Azure deployment answered with a body that {what}."),
        )
    }

    /// The OpenAI error body, with the gateway's `status_code` and `extra_fields`.
    pub fn body(&self, context: &ErrorContext<'_>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
            status_code: u16,
            extra_fields: Extra<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            inner_error: Option<&'a RawValue>,
        }
        #[derive(Serialize)]
        struct Extra<'a> {
            provider: &'static str,
            model_requested: Option<&'a str>,
            request_type: &'a str,
        }
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: &self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
                inner_error: self.inner_error.as_deref(),
            },
            status_code: self.status.as_u16(),
            extra_fields: Extra {
                provider: "azure",
                model_requested: context.model_requested,
                request_type: context.request_type,
            },
        };
        // Serializing plain strings and a RawValue cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// What the error body says about the request it answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorContext<'a> {
    pub model_requested: Option<&'a str>,
    pub request_type: &'a str,
}

/// A client-supplied string made safe to echo in a message or a log line:
/// bounded length, control characters replaced.
pub fn printable(s: &str) -> String {
    const LIMIT: usize = 64;
    let mut out: String = s
        .chars()
        .take(LIMIT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(LIMIT).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(err: &ApiError) -> serde_json::Value {
        let ctx = ErrorContext {
            model_requested: Some("azure-image"),
            request_type: "image_generation",
        };
        serde_json::from_slice(&err.body(&ctx)).expect("error body is JSON")
    }

    #[test]
    fn error_body_has_the_four_openai_keys_and_the_gateway_fields() {
        let body = render(&ApiError::param(INVALID_VALUE, "size", "bad size"));
        assert_eq!(body["error"]["message"], "bad size");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "size");
        assert_eq!(body["error"]["code"], "invalid_value");
        assert_eq!(body["status_code"], 400);
        assert_eq!(body["extra_fields"]["provider"], "azure");
        assert_eq!(body["extra_fields"]["model_requested"], "azure-image");
        assert_eq!(body["extra_fields"]["request_type"], "image_generation");
    }

    #[test]
    fn null_param_and_code_are_present_as_null() {
        let mut err = ApiError::internal("boom");
        err.code = None;
        let body = render(&err);
        let inner = body["error"].as_object().expect("error object");
        assert!(inner.contains_key("param") && inner["param"].is_null());
        assert!(inner.contains_key("code") && inner["code"].is_null());
        assert!(!inner.contains_key("inner_error"));
    }

    #[test]
    fn inner_error_passes_through_verbatim() {
        let mut err = ApiError::param(CONTENT_POLICY_VIOLATION, "prompt", "filtered");
        err.inner_error = RawValue::from_string(r#"{"code":"ResponsibleAIPolicyViolation"}"#.into()).ok();
        let body = render(&err);
        assert_eq!(body["error"]["inner_error"]["code"], "ResponsibleAIPolicyViolation");
    }

    #[test]
    fn echoed_input_is_bounded_and_has_no_control_characters() {
        let echoed = printable(&format!("a\nb{}", "x".repeat(500)));
        assert!(echoed.starts_with("a?b"));
        assert!(echoed.chars().count() <= 65);
    }

    #[test]
    fn a_failed_store_says_the_images_are_billed_and_is_not_retried() {
        let err = ApiError::image_store_failed("S3 refused the upload with status 403");
        assert_eq!(err.status, StatusCode::BAD_GATEWAY);
        assert!(err.do_not_retry);
        let body = render(&err);
        assert_eq!(body["error"]["code"], "image_store_failed");
        assert_eq!(body["error"]["param"], "response_format");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("billed") && m.contains("403"))
        );
    }

    #[test]
    fn only_a_response_too_large_suggests_urls() {
        let large = ApiError::response_too_large(7_000_000, 6_000_000).suggest_urls();
        assert!(large.message.contains("response_format \"url\""), "{}", large.message);
        let other = ApiError::internal("boom").suggest_urls();
        assert_eq!(other.message, "boom");
    }

    #[test]
    fn every_row_has_a_real_status_and_a_known_type() {
        for spec in ALL {
            assert!(StatusCode::from_u16(spec.status).is_ok(), "{spec:?}");
            assert!((400..600).contains(&spec.status), "{spec:?}");
            assert!(
                [INVALID_REQUEST, SERVER_ERROR, PERMISSION, REQUESTS, QUOTA].contains(&spec.kind),
                "{spec:?}"
            );
            let err = ApiError::new(*spec, "m");
            assert_eq!(err.status.as_u16(), spec.status);
        }
    }
}
