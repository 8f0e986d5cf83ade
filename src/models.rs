//! What each Azure image model accepts, as one table. Sources: Azure's
//! inference spec (azure-rest-api-specs,
//! `specification/cognitiveservices/data-plane/AzureOpenAI/inference/preview/2025-04-01-preview/inference.yaml`:
//! `imageGenerationsRequest`, `imageSize`, `imageQuality`, `imageBackground`,
//! `imagesOutputFormat`) and OpenAI's (openai-openapi `openapi.yaml`:
//! `CreateImageRequest`, whose per-model notes give the prompt lengths and `n`).

/// The accepted values of a field: `Any` where the model is unknown and Azure
/// decides, `None` where the model rejects the field outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    Any,
    OneOf(&'static [&'static str]),
    NotAccepted,
}

/// The limits of one model family.
#[derive(Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// The family's name in messages.
    pub family: &'static str,
    pub max_prompt_chars: Option<usize>,
    pub max_n: u32,
    pub size: Values,
    pub quality: Values,
    pub style: Values,
    pub response_format: Values,
    pub background: Values,
    pub output_format: Values,
    /// `output_compression`: accepted (0..=100) or not.
    pub output_compression: bool,
    pub moderation: Values,
    /// `partial_images`: the highest accepted, or `None` when not accepted.
    pub max_partial_images: Option<u32>,
    /// True for the gpt-image family: they always answer b64_json and take no `response_format`.
    pub always_b64: bool,
}

/// The fields only the gpt-image family takes, in request order.
pub const GPT_IMAGE_ONLY: [&str; 5] = [
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "partial_images",
];

const RESPONSE_FORMATS: &[&str] = &["url", "b64_json"];

pub static DALL_E_3: ModelSpec = ModelSpec {
    family: "dall-e-3",
    max_prompt_chars: Some(4000),
    max_n: 1,
    size: Values::OneOf(&["1024x1024", "1792x1024", "1024x1792"]),
    quality: Values::OneOf(&["standard", "hd"]),
    style: Values::OneOf(&["vivid", "natural"]),
    response_format: Values::OneOf(RESPONSE_FORMATS),
    background: Values::NotAccepted,
    output_format: Values::NotAccepted,
    output_compression: false,
    moderation: Values::NotAccepted,
    max_partial_images: None,
    always_b64: false,
};

pub static GPT_IMAGE: ModelSpec = ModelSpec {
    family: "gpt-image",
    max_prompt_chars: Some(32000),
    max_n: 10,
    size: Values::OneOf(&["1024x1024", "1536x1024", "1024x1536", "auto"]),
    quality: Values::OneOf(&["low", "medium", "high", "auto"]),
    style: Values::NotAccepted,
    response_format: Values::NotAccepted,
    background: Values::OneOf(&["transparent", "opaque", "auto"]),
    output_format: Values::OneOf(&["png", "jpeg"]),
    output_compression: true,
    moderation: Values::OneOf(&["low", "auto"]),
    max_partial_images: Some(3),
    always_b64: true,
};

/// A model the specs above do not describe: only the generic checks (types, and the
/// request schema's own bounds on `n`); Azure decides the rest.
pub static GENERIC: ModelSpec = ModelSpec {
    family: "generic",
    max_prompt_chars: None,
    max_n: 10,
    size: Values::Any,
    quality: Values::Any,
    style: Values::Any,
    response_format: Values::OneOf(RESPONSE_FORMATS),
    background: Values::Any,
    output_format: Values::Any,
    output_compression: true,
    moderation: Values::Any,
    max_partial_images: Some(3),
    always_b64: false,
};

impl ModelSpec {
    /// The spec for an Azure model name, as configured in `IMAGE_MODELS[].model`.
    pub fn for_model(model: &str) -> &'static ModelSpec {
        match model.to_ascii_lowercase().as_str() {
            "dall-e-3" => &DALL_E_3,
            "gpt-image-1" | "gpt-image-1-mini" | "gpt-image-1.5" => &GPT_IMAGE,
            _ => &GENERIC,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_get_their_family() {
        assert_eq!(ModelSpec::for_model("dall-e-3"), &DALL_E_3);
        for m in ["gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "GPT-IMAGE-1"] {
            assert_eq!(ModelSpec::for_model(m), &GPT_IMAGE, "{m}");
        }
        assert_eq!(ModelSpec::for_model("gpt-image-2"), &GENERIC);
    }

    #[test]
    fn dall_e_3_takes_one_image_and_gpt_image_ten() {
        assert_eq!(DALL_E_3.max_n, 1);
        assert_eq!(GPT_IMAGE.max_n, 10);
    }
}
