//! What an image operation is, as the pipeline sees it: a request parsed from
//! the client's body and checked for each model it may go to, the body Azure
//! receives for a model, and the names of its stream events. Each operation
//! is a module beside this one; the pipeline, the attempt loop and the answer
//! shapes are shared.

pub mod edit;
pub mod generation;

use bytes::Bytes;
use http::HeaderMap;
use http::header::HeaderValue;

use crate::config::{ModelEntry, Target};
use crate::error::ApiError;
use crate::models::ModelSpec;

pub use edit::EditRequest;
pub use generation::GenerationRequest;

/// The image operations the connector serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Generation,
    Edit,
}

/// The names of an operation's stream events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventNames {
    pub partial: &'static str,
    pub completed: &'static str,
}

impl Operation {
    /// `extra_fields.request_type` of its errors, and the log's `request_type`.
    pub fn request_type(self) -> &'static str {
        match self {
            Self::Generation => "image_generation",
            Self::Edit => "image_edit",
        }
    }

    pub fn events(self) -> EventNames {
        match self {
            Self::Generation => generation::EVENTS,
            Self::Edit => edit::EVENTS,
        }
    }

    /// The largest body the operation takes.
    pub fn body_limit(self) -> usize {
        match self {
            Self::Generation => generation::MAX_BODY_BYTES,
            Self::Edit => edit::MAX_BODY_BYTES,
        }
    }

    /// The deployment's Azure URL for this operation, built at start-up.
    pub fn url(self, target: &Target) -> &url::Url {
        match self {
            Self::Generation => &target.generations_url,
            Self::Edit => &target.edits_url,
        }
    }

    /// The model the body names, read before anything else is checked, so
    /// that every error can say what the client asked for.
    pub fn model_named(self, headers: &HeaderMap, body: &Bytes) -> Option<String> {
        match self {
            Self::Generation => generation::model_named(body),
            Self::Edit => edit::model_named(headers, body),
        }
    }

    /// Parses the client's body with the checks every model shares.
    pub fn parse(self, headers: &HeaderMap, body: &Bytes) -> Result<Box<dyn OperationRequest>, ApiError> {
        match self {
            Self::Generation => {
                generation::check_content_type(headers)?;
                Ok(Box::new(GenerationRequest::parse(body)?))
            }
            Self::Edit => Ok(Box::new(EditRequest::parse(headers, body)?)),
        }
    }
}

/// `response_format: "url"` on a model that answers base64 only (the
/// gpt-image family) is served by storing the images in the image bucket:
/// without one, the request is refused, saying how to enable it.
pub fn check_url_storage(request: &dyn OperationRequest, spec: &ModelSpec, bucket: bool) -> Result<(), ApiError> {
    if spec.always_b64 && !bucket && request.option("response_format") == Some("url") {
        return Err(ApiError::param(
            crate::error::UNSUPPORTED_VALUE,
            "response_format",
            format!(
                "Invalid 'response_format': {} models return base64-encoded images, and this service answers `url` only by storing them in an image bucket, which it does not have. Omit response_format or use `b64_json`; the operator enables `url` with IMAGE_BUCKET (the ImageBucket parameter of template.yaml).",
                spec.family
            ),
        ));
    }
    Ok(())
}

/// Whether the answer to `request` is stored images and links to them.
pub fn wants_stored_urls(request: &dyn OperationRequest, chain: &[&ModelEntry]) -> bool {
    request.option("response_format") == Some("url") && chain.iter().any(|entry| entry.spec.always_b64)
}

/// A request of one operation, parsed.
pub trait OperationRequest: Send + Sync {
    /// The configured model the client named (`model`), if any.
    fn model(&self) -> Option<&str>;
    fn n(&self) -> u32;
    fn stream(&self) -> bool;
    /// The request's own fallback models, in order.
    fn fallbacks(&self) -> &[String];
    fn prompt_chars(&self) -> usize;
    /// The images the request sends Azure (an edit's images and mask), for its worst-case cost.
    fn input_images(&self) -> usize {
        0
    }
    /// A string option as the client sent it (`size`, `quality`, …).
    fn option(&self, field: &str) -> Option<&str>;
    /// The checks of one model family.
    fn validate_for(&self, spec: &ModelSpec) -> Result<(), ApiError>;
    /// What `target`, a deployment of `entry`, receives: streamed (`stream: true`) or buffered.
    fn upstream(&self, entry: &ModelEntry, target: &Target, stream: bool) -> UpstreamRequest;
}

/// A request body for Azure and its content type. The body is in pieces, so
/// that uploaded images go upstream as slices of the client's body, never
/// copied into a new one.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub body: Vec<Bytes>,
    pub content_type: HeaderValue,
}

impl UpstreamRequest {
    pub fn len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a completed event says when the images response does not.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub size: String,
    pub quality: String,
    pub background: String,
    pub output_format: String,
}

impl Defaults {
    /// The request's own values, else each model family's default.
    pub fn of(request: &dyn OperationRequest, spec: &ModelSpec) -> Self {
        let field = |name: &str, default: &str| request.option(name).unwrap_or(default).to_owned();
        let gpt = spec.always_b64;
        Self {
            size: field("size", "1024x1024"),
            quality: field("quality", if gpt { "auto" } else { "standard" }),
            background: field("background", "opaque"),
            output_format: field("output_format", "png"),
        }
    }
}
