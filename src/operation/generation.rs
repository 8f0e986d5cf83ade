//! The image generation request: parsed from the client's JSON, checked for
//! its target model, and turned into the body Azure receives.
//!
//! A generation request is small (a prompt and a few options), so it is held as
//! a JSON map: fields the connector does not know are forwarded unchanged, and
//! each known field is checked where it stands so an error can name it.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value};

use super::{EventNames, OperationRequest, UpstreamRequest};
use crate::config::{ModelEntry, Target};
use crate::error::{self, ApiError};
use crate::models::{GPT_IMAGE_ONLY, ModelSpec, Values};

/// A generation request is a prompt and a few options: bodies above this are
/// refused before parsing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// OpenAI's image generation stream events (`ImageGenStreamEvent`).
pub const EVENTS: EventNames = EventNames {
    partial: "image_generation.partial_image",
    completed: "image_generation.completed",
};

/// The `model` a JSON body names, when it is a string; read without the
/// other checks, so that an error about anything else can still name it.
pub fn model_named(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(default)]
        model: Option<Value>,
    }
    match serde_json::from_slice::<Named>(body).ok()?.model? {
        Value::String(model) => Some(model),
        _ => None,
    }
}

/// JSON only: `application/json`, or any `+json` type. A missing header is
/// let through (the body must still parse as JSON).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
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
    Err(ApiError::invalid_content_type())
}

/// Fields only the connector reads; never sent upstream.
const CONNECTOR_ONLY: [&str; 2] = ["fallbacks", "stream"];

/// A parsed, type-checked generation request.
#[derive(Clone)]
pub struct GenerationRequest {
    /// Every field the client sent, but the nulls (the OpenAI schema makes
    /// optional fields nullable, meaning "the default").
    fields: Map<String, Value>,
    pub model: Option<String>,
    pub n: u32,
    pub stream: bool,
    pub fallbacks: Vec<String>,
    /// For logs: the prompt itself never is.
    pub prompt_chars: usize,
}

/// The prompt is the client's business: never printed, its length only.
impl std::fmt::Debug for GenerationRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationRequest")
            .field("model", &self.model)
            .field("n", &self.n)
            .field("stream", &self.stream)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .field("prompt_chars", &self.prompt_chars)
            .finish()
    }
}

impl OperationRequest for GenerationRequest {
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn n(&self) -> u32 {
        self.n
    }

    fn stream(&self) -> bool {
        self.stream
    }

    fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    fn prompt_chars(&self) -> usize {
        self.prompt_chars
    }

    fn option(&self, field: &str) -> Option<&str> {
        self.get_str(field)
    }

    fn validate_for(&self, spec: &ModelSpec) -> Result<(), ApiError> {
        GenerationRequest::validate_for(self, spec)
    }

    fn upstream(&self, entry: &ModelEntry, target: &Target, stream: bool) -> UpstreamRequest {
        let body = if stream {
            self.upstream_stream_body(entry, target)
        } else {
            self.upstream_body(entry, target)
        };
        UpstreamRequest {
            body: vec![Bytes::from(body)],
            content_type: HeaderValue::from_static("application/json"),
        }
    }
}

impl GenerationRequest {
    /// Parses a body and applies the checks every model shares: JSON object,
    /// `prompt` present, each known field of its schema type.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_body(
                "The request body is empty. Send a JSON object with at least `prompt`.",
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_body(format!(
                "We could not parse the JSON body of your request ({}). The body must be a JSON object.",
                describe_json_error(&e)
            ))
        })?;
        let Value::Object(fields) = value else {
            return Err(ApiError::invalid_body("The request body must be a JSON object."));
        };
        Self::from_fields(fields)
    }

    /// The checks every model shares, on fields already read (from JSON, or
    /// from an edit's form): `prompt` present, each known field of its schema type.
    pub fn from_fields(mut fields: Map<String, Value>) -> Result<Self, ApiError> {
        fields.retain(|k, v| !v.is_null() || k == "prompt");

        let prompt = match fields.get("prompt") {
            None | Some(Value::Null) => {
                return Err(ApiError::param(
                    error::MISSING_REQUIRED_PARAMETER,
                    "prompt",
                    "Missing required parameter: 'prompt'.",
                ));
            }
            Some(Value::String(p)) if p.is_empty() => {
                return Err(ApiError::param(
                    error::EMPTY_STRING,
                    "prompt",
                    "Invalid 'prompt': empty string. Expected a string with minimum length 1.",
                ));
            }
            Some(Value::String(p)) => p.chars().count(),
            Some(other) => return Err(wrong_type("prompt", "a string", other)),
        };
        for field in [
            "model",
            "size",
            "quality",
            "style",
            "response_format",
            "user",
            "background",
            "output_format",
            "moderation",
        ] {
            if let Some(v) = fields.get(field)
                && !v.is_string()
            {
                return Err(wrong_type(field, "a string", v));
            }
        }
        let n = integer(&fields, "n", 1, 10)?.unwrap_or(1);
        integer(&fields, "output_compression", 0, 100)?;
        integer(&fields, "partial_images", 0, 3)?;
        let stream = match fields.get("stream") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(wrong_type("stream", "a boolean", other)),
        };
        let fallbacks = match fields.get("fallbacks") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong_type("fallbacks", "an array of model names", other)),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(wrong_type("fallbacks", "an array of model names", other)),
        };
        let model = fields.get("model").and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            fields,
            model,
            n: n as u32,
            stream,
            fallbacks,
            prompt_chars: prompt,
        })
    }

    /// Whether the client sent `field` (as anything but null).
    pub fn has(&self, field: &str) -> bool {
        self.fields.contains_key(field)
    }

    /// The text values of the fields, for a check that they hold no given string.
    pub fn field_texts(&self) -> impl Iterator<Item = &str> {
        self.fields.values().filter_map(Value::as_str)
    }

    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }

    /// The checks of one model family (the `models` table).
    pub fn validate_for(&self, spec: &ModelSpec) -> Result<(), ApiError> {
        if let Some(max) = spec.max_prompt_chars
            && self.prompt_chars > max
        {
            return Err(ApiError::param(
                error::STRING_ABOVE_MAX_LENGTH,
                "prompt",
                format!(
                    "Invalid 'prompt': string too long. Expected a string with maximum length {max} for {}, but got a string with length {}.",
                    spec.family, self.prompt_chars
                ),
            ));
        }
        if self.n > spec.max_n {
            let message = if spec.max_n == 1 {
                format!("Invalid 'n': {} only supports n=1.", spec.family)
            } else {
                format!("Invalid 'n': {} supports at most n={}.", spec.family, spec.max_n)
            };
            return Err(ApiError::param(error::INTEGER_ABOVE_MAX_VALUE, "n", message));
        }
        let checks: [(&'static str, Values); 7] = [
            ("size", spec.size),
            ("quality", spec.quality),
            ("style", spec.style),
            (
                "response_format",
                // gpt-image answers base64 only: `url` is the connector's, when it has
                // an image bucket (`super::check_url_storage`).
                if spec.always_b64 {
                    Values::OneOf(&["b64_json", "url"])
                } else {
                    spec.response_format
                },
            ),
            ("background", spec.background),
            ("output_format", spec.output_format),
            ("moderation", spec.moderation),
        ];
        for (field, accepted) in checks {
            let Some(value) = self.get_str(field) else { continue };
            match accepted {
                Values::Any => {}
                Values::OneOf(values) if values.contains(&value) => {}
                Values::OneOfOrSize(values, limits) if values.contains(&value) || limits.allows(value) => {}
                Values::OneOfOrSize(values, limits) => {
                    return Err(ApiError::param(
                        error::INVALID_VALUE,
                        field,
                        format!(
                            "Invalid value for '{field}': '{}'. Supported values for {} are: {}, or WIDTHxHEIGHT with both sides divisible by {}, an aspect ratio from 1:{max} to {max}:1, and at most {}x{}.",
                            crate::error::printable(value),
                            spec.family,
                            quoted(values),
                            limits.multiple_of,
                            limits.max_long,
                            limits.max_short,
                            max = limits.max_ratio,
                        ),
                    ));
                }
                Values::OneOf(values) => {
                    return Err(ApiError::param(
                        error::INVALID_VALUE,
                        field,
                        format!(
                            "Invalid value for '{field}': '{}'. Supported values for {} are: {}.",
                            crate::error::printable(value),
                            spec.family,
                            quoted(values)
                        ),
                    ));
                }
                Values::NotAccepted => return Err(not_accepted(field, spec)),
            }
        }
        if !spec.output_compression && self.fields.contains_key("output_compression") {
            return Err(not_accepted("output_compression", spec));
        }
        if let Some(partial) = self.fields.get("partial_images").and_then(Value::as_u64) {
            match spec.max_partial_images {
                None => return Err(not_accepted("partial_images", spec)),
                Some(max) if partial > u64::from(max) => {
                    return Err(ApiError::param(
                        error::INTEGER_ABOVE_MAX_VALUE,
                        "partial_images",
                        format!("Invalid 'partial_images': at most {max}."),
                    ));
                }
                Some(_) => {}
            }
        }
        if self.stream && self.get_str("response_format") == Some("url") {
            return Err(ApiError::param(
                error::UNSUPPORTED_VALUE,
                "response_format",
                "Invalid 'response_format': a stream carries the images themselves (b64_json); `url` cannot stream.",
            ));
        }
        Ok(())
    }

    /// The JSON body of one buffered Azure call: the client's fields, less the
    /// connector's own and those the model does not take silently, with
    /// `model` set to the Azure model, never the client's alias. A client's
    /// stream made from a buffered call asks dall-e-3 for b64_json: events carry images.
    pub fn upstream_body(&self, entry: &ModelEntry, target: &Target) -> Vec<u8> {
        let mut body = self.forwarded_fields(entry, target);
        body.remove("partial_images");
        if self.stream && !entry.spec.always_b64 {
            body.insert("response_format".into(), Value::String("b64_json".into()));
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The JSON body of a streamed Azure call: `stream: true`, with the
    /// client's `partial_images`.
    pub fn upstream_stream_body(&self, entry: &ModelEntry, target: &Target) -> Vec<u8> {
        let mut body = self.forwarded_fields(entry, target);
        body.insert("stream".into(), Value::Bool(true));
        serde_json::to_vec(&body).unwrap_or_default()
    }

    pub(crate) fn forwarded_fields(&self, entry: &ModelEntry, target: &Target) -> Map<String, Value> {
        let mut body = Map::with_capacity(self.fields.len() + 1);
        for (key, value) in &self.fields {
            let skip = CONNECTOR_ONLY.contains(&key.as_str())
                || key == "model"
                // gpt-image always answers b64_json and rejects the field.
                || (key == "response_format" && entry.spec.always_b64);
            if !skip {
                body.insert(key.clone(), value.clone());
            }
        }
        body.insert("model".into(), Value::String(entry.upstream_model(target).to_owned()));
        body
    }
}

fn integer(fields: &Map<String, Value>, field: &'static str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
    let Some(value) = fields.get(field) else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(wrong_type(field, "an integer", value));
    };
    if let Some(v) = number.as_u64() {
        if v < min {
            return Err(ApiError::param(
                error::INTEGER_BELOW_MIN_VALUE,
                field,
                format!(
                    "Invalid '{field}': integer below minimum value. Expected a value >= {min}, but got {v} instead."
                ),
            ));
        }
        if v > max {
            return Err(ApiError::param(
                error::INTEGER_ABOVE_MAX_VALUE,
                field,
                format!(
                    "Invalid '{field}': integer above maximum value. Expected a value <= {max}, but got {v} instead."
                ),
            ));
        }
        return Ok(Some(v));
    }
    if number.is_i64() {
        return Err(ApiError::param(
            error::INTEGER_BELOW_MIN_VALUE,
            field,
            format!(
                "Invalid '{field}': integer below minimum value. Expected a value >= {min}, but got {number} instead."
            ),
        ));
    }
    Err(wrong_type(field, "an integer", value))
}

fn wrong_type(field: &'static str, expected: &str, got: &Value) -> ApiError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::param(
        error::INVALID_TYPE,
        field,
        format!("Invalid type for '{field}': expected {expected}, but got {got} instead."),
    )
}

fn not_accepted(field: &'static str, spec: &ModelSpec) -> ApiError {
    let hint = if GPT_IMAGE_ONLY.contains(&field) {
        " It is only supported by gpt-image models."
    } else {
        ""
    };
    ApiError::param(
        error::UNSUPPORTED_PARAMETER,
        field,
        format!(
            "Unsupported parameter: '{field}' is not supported by {} models.{hint}",
            spec.family
        ),
    )
}

fn quoted(values: &[&str]) -> String {
    values.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ")
}

/// A JSON error without the input it came from: where, and what kind.
pub(crate) fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io | Category::Syntax => "invalid JSON",
        Category::Data => "unexpected data",
        Category::Eof => "unexpected end of input",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::models::{DALL_E_3, GENERIC, GPT_IMAGE};

    fn parse(body: &str) -> Result<GenerationRequest, ApiError> {
        GenerationRequest::parse(body.as_bytes())
    }

    fn param_of(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let err = result.expect_err("expected a 400");
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST, "{err:?}");
        err.param.map(|p| p.into_owned()).unwrap_or_default()
    }

    fn validate(body: &str, spec: &ModelSpec) -> Result<(), ApiError> {
        parse(body)?.validate_for(spec)
    }

    /// The body for an entry of `model` and its one deployment.
    fn body(req: &GenerationRequest, model: &str, stream: bool) -> Value {
        let entry = entry(model);
        let bytes = if stream {
            req.upstream_stream_body(&entry, entry.primary())
        } else {
            req.upstream_body(&entry, entry.primary())
        };
        serde_json::from_slice(&bytes).expect("json")
    }

    fn entry(model: &str) -> ModelEntry {
        let models = format!(
            r#"[{{"name":"alias","model":"{model}","baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"2025-04-01-preview"}}]"#
        );
        let cfg = Config::from_lookup(|k| match k {
            "IMAGE_MODELS" => Some(models.clone()),
            "AZURE_API_KEY_SECRET_ID" => Some("s".into()),
            _ => None,
        })
        .expect("valid config");
        cfg.models[0].clone()
    }

    #[test]
    fn prompt_is_required_and_a_non_empty_string() {
        assert_eq!(param_of(parse(r#"{"n":1}"#)), "prompt");
        assert_eq!(param_of(parse(r#"{"prompt":null}"#)), "prompt");
        assert_eq!(param_of(parse(r#"{"prompt":""}"#)), "prompt");
        assert_eq!(param_of(parse(r#"{"prompt":42}"#)), "prompt");
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_rejected_without_a_param() {
        for body in ["", "  ", "{", "[1]", "\"x\"", "nul"] {
            let err = parse(body).expect_err(body);
            assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
            assert!(err.param.is_none());
        }
        assert!(GenerationRequest::parse(b"{\"prompt\":\"\xff\"}").is_err());
    }

    #[test]
    fn wrong_types_name_their_field() {
        assert_eq!(param_of(parse(r#"{"prompt":"p","n":"2"}"#)), "n");
        assert_eq!(param_of(parse(r#"{"prompt":"p","n":1.5}"#)), "n");
        assert_eq!(param_of(parse(r#"{"prompt":"p","n":-1}"#)), "n");
        assert_eq!(param_of(parse(r#"{"prompt":"p","n":0}"#)), "n");
        assert_eq!(param_of(parse(r#"{"prompt":"p","n":11}"#)), "n");
        assert_eq!(param_of(parse(r#"{"prompt":"p","n":1e30}"#)), "n");
        assert_eq!(param_of(parse(r#"{"prompt":"p","size":1024}"#)), "size");
        assert_eq!(param_of(parse(r#"{"prompt":"p","stream":"yes"}"#)), "stream");
        assert_eq!(param_of(parse(r#"{"prompt":"p","fallbacks":"m"}"#)), "fallbacks");
        assert_eq!(param_of(parse(r#"{"prompt":"p","fallbacks":[1]}"#)), "fallbacks");
        assert_eq!(
            param_of(parse(r#"{"prompt":"p","output_compression":101}"#)),
            "output_compression"
        );
        assert_eq!(param_of(parse(r#"{"prompt":"p","model":{"a":1}}"#)), "model");
    }

    #[test]
    fn nulls_mean_the_default() {
        let req = parse(r#"{"prompt":"p","n":null,"size":null,"model":null}"#).expect("valid");
        assert_eq!(req.n, 1);
        assert!(req.model.is_none());
        assert!(req.validate_for(&DALL_E_3).is_ok());
    }

    #[test]
    fn dall_e_3_takes_only_n_1_its_sizes_qualities_and_styles() {
        assert_eq!(param_of(validate(r#"{"prompt":"p","n":2}"#, &DALL_E_3)), "n");
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","size":"1536x1024"}"#, &DALL_E_3)),
            "size"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","size":"256x256"}"#, &DALL_E_3)),
            "size"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","quality":"high"}"#, &DALL_E_3)),
            "quality"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","style":"pastel"}"#, &DALL_E_3)),
            "style"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","background":"opaque"}"#, &DALL_E_3)),
            "background"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","output_compression":50}"#, &DALL_E_3)),
            "output_compression"
        );
        assert!(validate(
            r#"{"prompt":"p","n":1,"size":"1792x1024","quality":"hd","style":"natural","response_format":"b64_json"}"#,
            &DALL_E_3
        )
        .is_ok());
    }

    #[test]
    fn gpt_image_takes_up_to_ten_its_sizes_and_no_style() {
        assert!(validate(
            r#"{"prompt":"p","n":10,"size":"1536x1024","quality":"low","background":"transparent","output_format":"jpeg","output_compression":80,"moderation":"low"}"#,
            &GPT_IMAGE
        )
        .is_ok());
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","style":"vivid"}"#, &GPT_IMAGE)),
            "style"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","size":"1792x1024"}"#, &GPT_IMAGE)),
            "size"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","quality":"hd"}"#, &GPT_IMAGE)),
            "quality"
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","output_format":"webp"}"#, &GPT_IMAGE)),
            "output_format"
        );
    }

    #[test]
    fn gpt_image_takes_url_or_b64_json_as_response_format_and_url_never_streams() {
        assert!(validate(r#"{"prompt":"p","response_format":"url"}"#, &GPT_IMAGE).is_ok());
        assert!(validate(r#"{"prompt":"p","response_format":"b64_json"}"#, &GPT_IMAGE).is_ok());
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","response_format":"gif"}"#, &GPT_IMAGE)),
            "response_format"
        );
        let err =
            validate(r#"{"prompt":"p","stream":true,"response_format":"url"}"#, &GPT_IMAGE).expect_err("url stream");
        assert_eq!(err.param.as_deref(), Some("response_format"));
        assert!(err.message.contains("cannot stream"), "{}", err.message);
    }

    #[test]
    fn prompt_length_limits_follow_the_model() {
        let long = format!(r#"{{"prompt":"{}"}}"#, "é".repeat(4001));
        assert_eq!(param_of(validate(&long, &DALL_E_3)), "prompt");
        assert!(validate(&long, &GPT_IMAGE).is_ok());
        let longer = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(32001));
        assert_eq!(param_of(validate(&longer, &GPT_IMAGE)), "prompt");
        assert!(validate(&longer, &GENERIC).is_ok());
    }

    #[test]
    fn unknown_models_get_only_the_generic_checks() {
        assert!(
            validate(
                r#"{"prompt":"p","size":"3840x2160","quality":"ultra","style":"x"}"#,
                &GENERIC
            )
            .is_ok()
        );
        assert_eq!(
            param_of(validate(r#"{"prompt":"p","response_format":"gif"}"#, &GENERIC)),
            "response_format"
        );
    }

    #[test]
    fn streams_carry_images_not_urls() {
        assert!(validate(r#"{"prompt":"p","stream":true,"partial_images":2}"#, &GPT_IMAGE).is_ok());
        assert!(validate(r#"{"prompt":"p","stream":true}"#, &DALL_E_3).is_ok());
        let err = validate(r#"{"prompt":"p","stream":true,"response_format":"url"}"#, &DALL_E_3).expect_err("url");
        assert_eq!(err.param.as_deref(), Some("response_format"));
    }

    #[test]
    fn stream_bodies_ask_azure_to_stream_and_buffered_ones_do_not() {
        let req = parse(r#"{"prompt":"p","stream":true,"partial_images":2,"fallbacks":[]}"#).expect("valid");
        let streamed = body(&req, "gpt-image-1", true);
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["partial_images"], 2);
        assert!(streamed.get("fallbacks").is_none());
        let buffered = body(&req, "gpt-image-1", false);
        assert!(buffered.get("stream").is_none() && buffered.get("partial_images").is_none());
        let dalle = body(&req, "dall-e-3", false);
        assert_eq!(
            dalle["response_format"], "b64_json",
            "a dall-e-3 stream needs the image data"
        );
    }

    #[test]
    fn upstream_body_uses_the_azure_model_and_drops_connector_fields() {
        let req = parse(r#"{"model":"alias","prompt":"p","n":2,"stream":false,"fallbacks":["b"],"response_format":"b64_json","partial_images":2,"new_azure_param":{"x":1},"size":null}"#).expect("valid");
        let sent = body(&req, "gpt-image-1", false);
        assert_eq!(sent["model"], "gpt-image-1");
        assert_eq!(sent["prompt"], "p");
        assert_eq!(sent["n"], 2);
        assert_eq!(sent["new_azure_param"]["x"], 1);
        for gone in ["stream", "fallbacks", "response_format", "partial_images", "size"] {
            assert!(sent.get(gone).is_none(), "{gone} must not go upstream");
        }
        let sent = body(&req, "dall-e-3", false);
        assert_eq!(sent["model"], "dall-e-3");
        assert_eq!(sent["response_format"], "b64_json");
    }
}
