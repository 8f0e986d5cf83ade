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
    /// The listed values, or any `WIDTHxHEIGHT` within the limits (gpt-image-2's sizes).
    OneOfOrSize(&'static [&'static str], SizeLimits),
    NotAccepted,
}

/// Free sizes as gpt-image-2 takes them (OpenAI's `CreateImageRequest.size`):
/// both sides divisible by `multiple_of`, the aspect ratio within
/// `max_ratio`:1 either way, the long side at most `max_long`, the short side
/// at most `max_short` (3840x2160 at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    pub multiple_of: u32,
    pub max_ratio: u32,
    pub max_long: u32,
    pub max_short: u32,
}

impl SizeLimits {
    /// Whether `value` is a `WIDTHxHEIGHT` within the limits.
    pub fn allows(&self, value: &str) -> bool {
        let Some((w, h)) = value.split_once('x') else {
            return false;
        };
        let digits = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(w) || !digits(h) {
            return false;
        }
        let (Ok(w), Ok(h)) = (w.parse::<u32>(), h.parse::<u32>()) else {
            return false;
        };
        let (long, short) = (w.max(h), w.min(h));
        short > 0
            && w % self.multiple_of == 0
            && h % self.multiple_of == 0
            && long <= short * self.max_ratio
            && long <= self.max_long
            && short <= self.max_short
    }
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
    /// Whether Azure serves image edits for it (dall-e-3 has none).
    pub edits: bool,
    /// Whether edits take `input_fidelity` (not gpt-image-1-mini).
    pub input_fidelity: bool,
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
    edits: false,
    input_fidelity: false,
};

const GPT_SIZES: &[&str] = &["1024x1024", "1536x1024", "1024x1536", "auto"];

pub static GPT_IMAGE: ModelSpec = ModelSpec {
    family: "gpt-image",
    max_prompt_chars: Some(32000),
    max_n: 10,
    size: Values::OneOf(GPT_SIZES),
    quality: Values::OneOf(&["low", "medium", "high", "auto"]),
    style: Values::NotAccepted,
    response_format: Values::NotAccepted,
    background: Values::OneOf(&["transparent", "opaque", "auto"]),
    output_format: Values::OneOf(&["png", "jpeg"]),
    output_compression: true,
    moderation: Values::OneOf(&["low", "auto"]),
    max_partial_images: Some(3),
    always_b64: true,
    edits: true,
    input_fidelity: true,
};

/// gpt-image-1-mini: gpt-image-1's fields, without `input_fidelity` on edits.
pub static GPT_IMAGE_MINI: ModelSpec = ModelSpec {
    family: "gpt-image-1-mini",
    input_fidelity: false,
    ..GPT_IMAGE
};

/// gpt-image-2: the gpt-image fields, and sizes of any `WIDTHxHEIGHT` within its limits.
pub static GPT_IMAGE_2: ModelSpec = ModelSpec {
    family: "gpt-image-2",
    size: Values::OneOfOrSize(
        GPT_SIZES,
        SizeLimits {
            multiple_of: 16,
            max_ratio: 3,
            max_long: 3840,
            max_short: 2160,
        },
    ),
    ..GPT_IMAGE
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
    edits: true,
    input_fidelity: true,
};

impl ModelSpec {
    /// The spec for an Azure model name, as configured in `IMAGE_MODELS[].model`.
    pub fn for_model(model: &str) -> &'static ModelSpec {
        match model.to_ascii_lowercase().as_str() {
            "dall-e-3" => &DALL_E_3,
            "gpt-image-1" | "gpt-image-1.5" => &GPT_IMAGE,
            "gpt-image-1-mini" => &GPT_IMAGE_MINI,
            "gpt-image-2" | "gpt-image-2-2026-04-21" => &GPT_IMAGE_2,
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
        for m in ["gpt-image-1", "gpt-image-1.5", "GPT-IMAGE-1"] {
            assert_eq!(ModelSpec::for_model(m), &GPT_IMAGE, "{m}");
        }
        assert_eq!(ModelSpec::for_model("gpt-image-1-mini"), &GPT_IMAGE_MINI);
        assert_eq!(ModelSpec::for_model("gpt-image-2"), &GPT_IMAGE_2);
        assert_eq!(ModelSpec::for_model("gpt-image-3"), &GENERIC);
    }

    #[test]
    fn dall_e_3_takes_one_image_and_gpt_image_ten() {
        assert_eq!(DALL_E_3.max_n, 1);
        assert_eq!(GPT_IMAGE.max_n, 10);
    }

    #[test]
    fn gpt_image_2_takes_free_sizes_within_its_limits() {
        let Values::OneOfOrSize(_, limits) = GPT_IMAGE_2.size else {
            panic!("gpt-image-2 takes free sizes");
        };
        for ok in ["1536x864", "3840x2160", "2160x3840", "1024x3072", "16x16", "2560x1440"] {
            assert!(limits.allows(ok), "{ok}");
        }
        for bad in [
            "1000x1000", // not divisible by 16
            "4096x2160", // long side past 3840
            "2176x2176", // short side past 2160
            "1024x3088", // ratio past 3:1
            "0x1024",
            "1024",
            "x1024",
            "1024x",
            "1024x1024x1",
            "+1024x1024",
            "99999999999x16",
            "１０２４x1024",
        ] {
            assert!(!limits.allows(bad), "{bad}");
        }
    }

    #[test]
    fn edits_are_for_the_gpt_image_family_and_input_fidelity_not_for_mini() {
        assert!(!DALL_E_3.edits);
        assert!(GPT_IMAGE.edits && GPT_IMAGE_2.edits && GPT_IMAGE_MINI.edits);
        assert!(GPT_IMAGE.input_fidelity && !GPT_IMAGE_MINI.input_fidelity);
    }
}
