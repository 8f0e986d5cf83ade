//! The image edit request: images and an optional mask, as
//! `multipart/form-data` (the SDKs' upload) or as JSON with data URLs
//! (OpenAI's `EditImageBodyJsonParam`); checked for the model; sent to Azure
//! as multipart, the one form its edits route takes.
//!
//! The options (`prompt`, `n`, `size`, …) are a generation's, read into the
//! same [`GenerationRequest`] and checked the same way. The images cross the
//! connector as slices of the client's body (multipart) or as their decoded
//! bytes (data URLs), each read once; their format is decided from their
//! bytes, never from a declared content type or file name.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::generation::{GenerationRequest, describe_json_error};
use super::{EventNames, OperationRequest, UpstreamRequest};
use crate::config::{ModelEntry, Target};
use crate::error::{self, ApiError, printable};
use crate::image::{self, Format, ImageInfo};
use crate::json_text::RawObject;
use crate::models::ModelSpec;
use crate::{data_url, multipart};

/// A synchronous Lambda invocation carries at most 6 MB of request (6,291,456
/// bytes), and the front doors base64-encode uploads into the event: no
/// larger body can reach the function.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// OpenAI's image edit stream events (`ImageEditStreamEvent`).
pub const EVENTS: EventNames = EventNames {
    partial: "image_edit.partial_image",
    completed: "image_edit.completed",
};

/// The most images one edit takes (`CreateImageEditRequest.image`).
pub const MAX_IMAGES: usize = 16;
/// Each image under 50 MB, the mask under 4 MB (`CreateImageEditRequest`).
const MAX_IMAGE_BYTES: usize = 50 * 1024 * 1024;
const MAX_MASK_BYTES: usize = 4 * 1024 * 1024;
/// Form fields sent as numbers and booleans in JSON, as text in a form.
const INTEGERS: [&str; 3] = ["n", "output_compression", "partial_images"];

/// One uploaded image, checked.
#[derive(Clone)]
struct Upload {
    data: Bytes,
    info: ImageInfo,
    /// The field as the client named it, for errors: `image`, `images[2]`, `mask`.
    param: String,
}

/// A parsed edit request.
#[derive(Clone)]
pub struct EditRequest {
    options: GenerationRequest,
    images: Vec<Upload>,
    mask: Option<Upload>,
}

/// Images are bytes and the prompt is the client's: printed by their sizes only.
impl std::fmt::Debug for EditRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditRequest")
            .field("options", &self.options)
            .field("images", &self.images.iter().map(|i| i.data.len()).collect::<Vec<_>>())
            .field("mask", &self.mask.as_ref().map(|m| m.data.len()))
            .finish()
    }
}

/// The body's media type, lowercased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// The `model` the body names, read before anything else is checked.
pub fn model_named(headers: &HeaderMap, body: &Bytes) -> Option<String> {
    match media_type(headers).as_deref() {
        Some("multipart/form-data") => {
            let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
            let parts = multipart::parse(body, multipart::boundary_of(content_type).ok()?).ok()?;
            let model = multipart::all(&parts, "model").next()?;
            model.text().ok().map(str::to_owned)
        }
        _ => super::generation::model_named(body),
    }
}

impl EditRequest {
    /// Parses either form, with the checks every model shares.
    pub fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Self, ApiError> {
        match media_type(headers).as_deref() {
            Some("multipart/form-data") => {
                let content_type = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                Self::from_form(body, multipart::boundary_of(content_type)?)
            }
            None | Some("application/json") => Self::from_json(body),
            Some(media) if media.ends_with("+json") => Self::from_json(body),
            Some(_) => Err(ApiError::new(
                error::INVALID_CONTENT_TYPE,
                "An image edit is sent as `multipart/form-data` (the image files) or as `application/json` (images as base64 data URLs).",
            )),
        }
    }

    /// `image` (or `image[]`, repeated), `mask`, and text fields.
    fn from_form(body: &Bytes, boundary: &str) -> Result<Self, ApiError> {
        let parts = multipart::parse(body, boundary)?;
        let mut fields = Map::new();
        let mut fallbacks = Vec::new();
        let mut images = Vec::new();
        let mut mask = None;
        for part in &parts {
            match part.name.as_str() {
                "image" | "image[]" => images.push(upload(part.data.clone(), &part.name)?),
                "mask" if mask.is_some() => return Err(duplicate("mask")),
                "mask" => mask = Some(upload(part.data.clone(), "mask")?),
                "fallbacks" | "fallbacks[]" => fallbacks.push(Value::String(part.text()?.to_owned())),
                name => {
                    if part.filename.is_some() {
                        return Err(ApiError::param(
                            error::UNSUPPORTED_PARAMETER,
                            name.to_owned(),
                            format!("Invalid '{}': only `image` and `mask` take files.", printable(name)),
                        ));
                    }
                    let text = part.text()?;
                    let value = if INTEGERS.contains(&name) {
                        text.trim()
                            .parse::<i64>()
                            .map(Value::from)
                            .unwrap_or_else(|_| Value::String(text.to_owned()))
                    } else if name == "stream" {
                        match text.trim().to_ascii_lowercase().as_str() {
                            "true" => Value::Bool(true),
                            "false" => Value::Bool(false),
                            _ => Value::String(text.to_owned()),
                        }
                    } else {
                        Value::String(text.to_owned())
                    };
                    if fields.insert(name.to_owned(), value).is_some() {
                        return Err(duplicate(name));
                    }
                }
            }
        }
        if !fallbacks.is_empty() {
            fields.insert("fallbacks".into(), Value::Array(fallbacks));
        }
        // Errors about the images name the field as the client sent it.
        let images_param = if images.first().is_some_and(|i: &Upload| i.param == "image[]") {
            "image[]"
        } else {
            "image"
        };
        Self::new(fields, images, mask, images_param)
    }

    /// `images` as `[{"image_url": "data:…"}]`, `mask` as `{"image_url": "data:…"}`,
    /// and the options as for a generation. Image data is read from the
    /// body's own text, never copied into a JSON value tree.
    fn from_json(body: &Bytes) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_body(
                "The request body is empty. Send a JSON object with `images` and `prompt`, or a multipart/form-data upload.",
            ));
        }
        let object: RawObject<'_> = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_body(format!(
                "We could not parse the JSON body of your request ({}). The body must be a JSON object.",
                describe_json_error(&e)
            ))
        })?;
        let mut fields = Map::new();
        let mut images = Vec::new();
        let mut mask = None;
        for (key, raw) in object.iter() {
            match key {
                "images" => {
                    let refs: Vec<ImageRef<'_>> = serde_json::from_str(raw.get())
                        .map_err(|_| wrong_shape("images", "an array of {\"image_url\": \"data:…\"} objects"))?;
                    for (i, image) in refs.into_iter().enumerate() {
                        let param = format!("images[{i}]");
                        images.push(image.fetch_free(&param)?);
                    }
                }
                "mask" if raw.get() == "null" => {}
                "mask" => {
                    let image: ImageRef<'_> = serde_json::from_str(raw.get())
                        .map_err(|_| wrong_shape("mask", "an {\"image_url\": \"data:…\"} object"))?;
                    mask = Some(image.fetch_free("mask")?);
                }
                "image" => {
                    return Err(ApiError::param(
                        error::UNSUPPORTED_PARAMETER,
                        "image",
                        "Unsupported parameter: 'image'. A JSON edit sends `images`, a list of {\"image_url\": \"data:…\"} objects; `image` is the multipart upload's field.",
                    ));
                }
                other => {
                    let value: Value = serde_json::from_str(raw.get())
                        .map_err(|_| ApiError::invalid_body("The request body must be a JSON object."))?;
                    fields.insert(other.to_owned(), value);
                }
            }
        }
        let images = images
            .into_iter()
            .map(|(data, param)| upload(data, &param))
            .collect::<Result<Vec<_>, _>>()?;
        let mask = mask.map(|(data, param)| upload(data, &param)).transpose()?;
        Self::new(fields, images, mask, "images")
    }

    /// The checks that need no model: the options, the images' count and
    /// sizes, the mask's format and dimensions.
    fn new(
        fields: Map<String, Value>,
        images: Vec<Upload>,
        mask: Option<Upload>,
        images_param: &'static str,
    ) -> Result<Self, ApiError> {
        if let Some(name) = fields.keys().find(|name| !is_field_name(name)) {
            return Err(ApiError::param(
                error::UNSUPPORTED_PARAMETER,
                printable(name),
                format!("Unsupported parameter: '{}'.", printable(name)),
            ));
        }
        let options = GenerationRequest::from_fields(fields)?;
        let Some(first) = images.first() else {
            return Err(ApiError::param(
                error::MISSING_REQUIRED_PARAMETER,
                images_param,
                format!("Missing required parameter: '{images_param}'. Send at least one image to edit."),
            ));
        };
        if images.len() > MAX_IMAGES {
            return Err(ApiError::param(
                error::INTEGER_ABOVE_MAX_VALUE,
                images_param,
                format!(
                    "Invalid '{images_param}': at most {MAX_IMAGES} images, but got {}.",
                    images.len()
                ),
            ));
        }
        if let Some(large) = images.iter().find(|i| i.data.len() > MAX_IMAGE_BYTES) {
            return Err(ApiError::param(
                error::INVALID_VALUE,
                large.param.clone(),
                format!("Invalid '{}': each image must be under 50 MB.", large.param),
            ));
        }
        if let Some(mask) = &mask {
            let problem = if mask.info.format != Format::Png {
                Some("the mask must be a PNG".to_owned())
            } else if !mask.info.has_alpha {
                Some("the mask must have an alpha channel: its fully transparent areas are what is edited".to_owned())
            } else if (mask.info.width, mask.info.height) != (first.info.width, first.info.height) {
                Some(format!(
                    "the mask is {}x{} but the first image is {}x{}; they must be the same size",
                    mask.info.width, mask.info.height, first.info.width, first.info.height
                ))
            } else if mask.data.len() > MAX_MASK_BYTES {
                Some("the mask must be under 4 MB".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(ApiError::param(
                    error::INVALID_VALUE,
                    mask.param.clone(),
                    format!("Invalid '{}': {problem}.", mask.param),
                ));
            }
        }
        match options.get_str("input_fidelity") {
            None | Some("high" | "low") => {}
            Some(other) => {
                return Err(ApiError::param(
                    error::INVALID_VALUE,
                    "input_fidelity",
                    format!(
                        "Invalid value for 'input_fidelity': '{}'. Supported values are: 'high', 'low'.",
                        printable(other)
                    ),
                ));
            }
        }
        if options.has("input_fidelity") && options.get_str("input_fidelity").is_none() {
            return Err(ApiError::param(
                error::INVALID_TYPE,
                "input_fidelity",
                "Invalid type for 'input_fidelity': expected a string.",
            ));
        }
        Ok(Self { options, images, mask })
    }

    /// The checks of one model family: it edits at all, the options fit it.
    pub fn validate_for(&self, spec: &ModelSpec) -> Result<(), ApiError> {
        if !spec.edits {
            return Err(ApiError::param(
                error::UNSUPPORTED_VALUE,
                "model",
                format!(
                    "Invalid 'model': {} models do not edit images on Azure. Use a gpt-image model.",
                    spec.family
                ),
            ));
        }
        self.options.validate_for(spec)?;
        if !spec.input_fidelity && self.options.get_str("input_fidelity").is_some() {
            return Err(ApiError::param(
                error::UNSUPPORTED_PARAMETER,
                "input_fidelity",
                format!(
                    "Unsupported parameter: 'input_fidelity' is not supported by {} models.",
                    spec.family
                ),
            ));
        }
        let format = self.options.get_str("output_format").unwrap_or("png");
        if self.options.get_str("background") == Some("transparent") && !matches!(format, "png" | "webp") {
            return Err(ApiError::param(
                error::INVALID_VALUE,
                "background",
                format!(
                    "Invalid 'background': 'transparent' needs an output format with an alpha channel (png or webp), not '{}'.",
                    printable(format)
                ),
            ));
        }
        Ok(())
    }

    /// The multipart body Azure's edits route takes: the options as text
    /// fields (the Azure model as `model`), then each image as a file with
    /// its real content type, then the mask.
    fn upstream_form(&self, entry: &ModelEntry, target: &Target, stream: bool) -> UpstreamRequest {
        let mut fields = self.options.forwarded_fields(entry, target);
        if stream {
            fields.insert("stream".into(), Value::Bool(true));
        } else {
            fields.remove("partial_images");
            if self.options.stream && !entry.spec.always_b64 {
                fields.insert("response_format".into(), Value::String("b64_json".into()));
            }
        }
        let boundary = self.boundary();
        let mut body = Vec::with_capacity(fields.len() + 2 * self.images.len() + 3);
        for (name, value) in &fields {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            body.push(Bytes::from(format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{text}\r\n"
            )));
        }
        let name = if self.images.len() == 1 { "image" } else { "image[]" };
        for (i, image) in self.images.iter().enumerate() {
            body.push(file_head(
                &boundary,
                name,
                &format!("image-{}", i + 1),
                image.info.format,
            ));
            body.push(image.data.clone());
            body.push(Bytes::from_static(b"\r\n"));
        }
        if let Some(mask) = &self.mask {
            body.push(file_head(&boundary, "mask", "mask", mask.info.format));
            body.push(mask.data.clone());
            body.push(Bytes::from_static(b"\r\n"));
        }
        body.push(Bytes::from(format!("--{boundary}--\r\n")));
        let content_type = HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
            .unwrap_or_else(|_| HeaderValue::from_static("multipart/form-data"));
        UpstreamRequest { body, content_type }
    }

    /// A boundary found in none of the parts: random, and checked.
    fn boundary(&self) -> String {
        loop {
            let boundary = format!(
                "azure-openai-image-{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            );
            let found = |data: &[u8]| memchr::memmem::find(data, boundary.as_bytes()).is_some();
            let in_text = self.options.field_texts().any(|text| found(text.as_bytes()));
            let in_files = self.images.iter().chain(&self.mask).any(|image| found(&image.data));
            if !in_text && !in_files {
                return boundary;
            }
        }
    }
}

fn file_head(boundary: &str, name: &str, stem: &str, format: Format) -> Bytes {
    Bytes::from(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{stem}.{}\"\r\nContent-Type: {}\r\n\r\n",
        format.extension(),
        format.mime()
    ))
}

/// A field name safe to write into the multipart headers Azure reads.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'))
}

fn duplicate(name: &str) -> ApiError {
    ApiError::param(
        error::DUPLICATE_PARAMETER,
        printable(name),
        format!("Duplicate parameter: '{}' was sent more than once.", printable(name)),
    )
}

fn wrong_shape(param: &'static str, expected: &str) -> ApiError {
    ApiError::param(
        error::INVALID_TYPE,
        param,
        format!("Invalid type for '{param}': expected {expected}."),
    )
}

/// An image checked by its bytes.
fn upload(data: Bytes, param: &str) -> Result<Upload, ApiError> {
    let info = image::check(&data, param.to_owned())?;
    Ok(Upload {
        data,
        info,
        param: param.to_owned(),
    })
}

/// `ImageRefParam`: an image by data URL (taken), by `https://` URL or by
/// file id (refused: the connector never fetches).
#[derive(Deserialize)]
struct ImageRef<'a> {
    #[serde(default, borrow)]
    image_url: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    file_id: Option<serde::de::IgnoredAny>,
}

impl ImageRef<'_> {
    /// The image's bytes, decoded from its data URL.
    fn fetch_free(self, param: &str) -> Result<(Bytes, String), ApiError> {
        match (self.image_url, self.file_id) {
            (Some(url), None) => Ok((data_url::decode(&url, param.to_owned())?.data, param.to_owned())),
            (None, Some(_)) => Err(ApiError::param(
                error::INVALID_IMAGE_URL,
                param.to_owned(),
                format!(
                    "Invalid '{param}': this service does not read uploaded files by id. Send the image itself, as a base64 data URL or as a multipart/form-data upload."
                ),
            )),
            _ => Err(ApiError::param(
                error::INVALID_TYPE,
                param.to_owned(),
                format!("Invalid '{param}': expected an object with `image_url`, a base64 data URL."),
            )),
        }
    }
}

impl OperationRequest for EditRequest {
    fn model(&self) -> Option<&str> {
        self.options.model.as_deref()
    }

    fn n(&self) -> u32 {
        self.options.n
    }

    fn stream(&self) -> bool {
        self.options.stream
    }

    fn fallbacks(&self) -> &[String] {
        &self.options.fallbacks
    }

    fn prompt_chars(&self) -> usize {
        self.options.prompt_chars
    }

    fn input_images(&self) -> usize {
        self.images.len() + usize::from(self.mask.is_some())
    }

    fn option(&self, field: &str) -> Option<&str> {
        self.options.get_str(field)
    }

    fn validate_for(&self, spec: &ModelSpec) -> Result<(), ApiError> {
        EditRequest::validate_for(self, spec)
    }

    fn upstream(&self, entry: &ModelEntry, target: &Target, stream: bool) -> UpstreamRequest {
        self.upstream_form(entry, target, stream)
    }
}
