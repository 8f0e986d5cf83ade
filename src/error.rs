//! The one error type every failure becomes, and the one place that renders it
//! as the OpenAI error body.

use std::borrow::Cow;

use http::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;

/// What `type` an OpenAI error carries.
pub const INVALID_REQUEST: &str = "invalid_request_error";
pub const SERVER_ERROR: &str = "server_error";

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
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: Cow::Borrowed(kind),
            code: Some(Cow::Borrowed(code)),
            message: message.into(),
            param: None,
            inner_error: None,
            retry_after: None,
        }
    }

    /// A 400 on one request field.
    pub fn invalid_param(param: impl Into<Cow<'static, str>>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, code, message)
        }
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_json", message)
    }

    pub fn model_not_found(name: &str, param: &'static str) -> Self {
        Self {
            param: Some(Cow::Borrowed(param)),
            ..Self::new(
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "model_not_found",
                format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    printable(name)
                ),
            )
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "not_found",
            format!("Unknown request URL: {}.", printable(path)),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            "method_not_allowed",
            format!("Method {} is not allowed on {}.", printable(method), printable(path)),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER_ERROR,
            "internal_error",
            message,
        )
    }

    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
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

/// A client-supplied string made safe to echo in a message: bounded length,
/// control characters replaced.
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
        let body = render(&ApiError::invalid_param("size", "invalid_value", "bad size"));
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
        let mut err = ApiError::invalid_param("prompt", "content_policy_violation", "filtered");
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
}
