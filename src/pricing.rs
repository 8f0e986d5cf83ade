//! What an image request costs, in US dollars, for spend control (issue 17).
//!
//! Budgets need two numbers: before Azure is called, a reservation that may
//! be too high but never too low ([`worst_case`]), and after, the cost Azure's
//! answer says was incurred ([`cost`]). A model whose price is not known costs
//! `None`, never `0.0`, so a missing price can never pass for a free one.
//!
//! The list prices below are OpenAI's public prices for the same models
//! (Azure's global-standard prices follow them); negotiated or regional rates
//! belong in the entry's `"pricing"` (`config.rs`), which replaces them.
//! Looked up on 2026-12-02 in stored copies of public pages (dated where they say):
//! - gpt-image-1: OpenAI's model page
//!   (developers.openai.com/ja-JP/api/docs/models/gpt-image-1): text input $5,
//!   cached $1.25; image input $10, cached $2.50; image output $40 per 1M tokens
//!   (the page marks it retired at OpenAI on 2026-10-23; Azure deployments of it
//!   keep their own lifecycle).
//! - gpt-image-1-mini: OpenAI's model page
//!   (developers.openai.com/de-DE/api/docs/models/gpt-image-1-mini): text input
//!   $2, cached $0.20; image input $2.50, cached $0.25; image output $8.
//! - gpt-image-1.5: no OpenAI page was reachable; secondary sources agree on
//!   text input $5, image input $8, image output $32 (llmreference.com
//!   "GPT Image 1.5 on OpenAI API", refreshed 2026-05-10; docs.apiyi.com's
//!   legacy-versions table), and those match OpenAI's per-image prices for it
//!   ($0.009 / $0.034 / $0.133 at 1024x1024 = 272 / 1056 / 4160 tokens × $32).
//!   No cached price was found in a source that could be checked: none here.
//! - gpt-image-2: no OpenAI page was reachable; tokenmix.ai ("GPT Image 2
//!   Pricing Guide", 2026-04-29) and robotsatlas.com quote OpenAI's pricing
//!   page: text input $5, cached $1.25; image input $8, cached $2; image output
//!   $30. Its per-image estimates there ($0.006 / $0.053 / $0.211 at 1024x1024)
//!   match the output-token formula below × $30.
//! - dall-e-3 (per image): standard 1024x1024 $0.04, standard 1792x1024 or
//!   1024x1792 $0.08, hd 1024x1024 $0.08, hd 1792x1024 or 1024x1792 $0.12
//!   (OpenAI's pricing page, as issue 17 quotes it).
//!
//! Output tokens per image (for [`worst_case`]):
//! - the gpt-image-1 family (1, 1-mini, 1.5): OpenAI's image generation guide
//!   ("Cost and latency"), quoted with gpt-image-1's billed usage in the OpenAI
//!   community thread "Gpt-image-1 collected pricing information" (t/1275254):
//!   1024x1024 low 272, medium 1056, high 4160; 1024x1536 408, 1584, 6240;
//!   1536x1024 400, 1568, 6208. A gpt-image-1-mini log shows the same 4160 for
//!   a square high image (cloudernative.com), though mini's per-image list
//!   prices ($0.005 / $0.011 / $0.036) are above these counts × $8.
//! - gpt-image-2 takes any `WIDTHxHEIGHT`: the formula behind the calculator in
//!   OpenAI's guide, as the community thread "Gpt-image-2 output pricing
//!   calculator" (t/1382699) gives it; it reproduces the guide's 7024 tokens for
//!   1024x1024 high and 5488 for 1536x1024 high.

use std::collections::BTreeMap;

use crate::reshape::Usage;

/// A model's prices, in US dollars.
#[derive(Debug, Clone, PartialEq)]
pub enum Prices {
    /// The gpt-image family: billed by the tokens in Azure's `usage`, USD per 1M tokens.
    PerToken {
        text_input: f64,
        image_input: f64,
        image_output: f64,
        /// Cached input, where the list has it. Azure's `usage` does not report
        /// cached tokens today (`Usage` has no field for them), so [`cost`]
        /// bills every input token at the full rate, which is never too low;
        /// kept for when it does.
        cached_input: Option<CachedInput>,
        /// How many output tokens an image of a size and quality takes, for [`worst_case`].
        sizing: TokenSizing,
    },
    /// dall-e-3: USD per image, by `(quality, size)`, both lower-case.
    PerImage(BTreeMap<(String, String), f64>),
}

/// Cached-input prices, USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachedInput {
    pub text: f64,
    pub image: f64,
}

/// Which documented output-token counts a token-priced model's images follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSizing {
    /// gpt-image-1, gpt-image-1-mini, gpt-image-1.5: the guide's table of three sizes.
    GptImage1,
    /// gpt-image-2: the formula over any `WIDTHxHEIGHT`.
    GptImage2,
    /// A model priced only by its entry's `"pricing"`: the larger of both.
    Unknown,
}

/// The most a prompt's text can add to an image's input beyond its own
/// tokens (the request's framing; the community measured 32 per edit image).
/// Not an OpenAI figure: a margin so the reservation is not too low.
const TEXT_OVERHEAD_TOKENS: u64 = 64;
const EDIT_TEXT_OVERHEAD_TOKENS: u64 = 32;

/// The most tokens one input image of an edit is taken to cost. OpenAI
/// documents no per-image figure; measured: gpt-image-1 bills 65 + 129 per
/// 512-pixel tile at low fidelity and about 6,200 more at high fidelity
/// ($0.062 at $10); gpt-image-2 takes every input at high fidelity. This
/// bound lies above both, and above gpt-image-2's largest output image (15,358).
pub const INPUT_IMAGE_TOKENS_BOUND: u64 = 16_384;

/// The gpt-image-1 family's output tokens: `(size, [low, medium, high])`.
const GPT_IMAGE_1_TOKENS: [(&str, [u64; 3]); 3] = [
    ("1024x1024", [272, 1056, 4160]),
    ("1024x1536", [408, 1584, 6240]),
    ("1536x1024", [400, 1568, 6208]),
];

/// gpt-image-2's most output tokens for one image of any allowed size
/// (`models::GPT_IMAGE_2`'s limits), `[low, medium, high]`: found by trying
/// every size (a test does it again).
const GPT_IMAGE_2_MAX_TOKENS: [u64; 3] = [436, 3860, 15_358];

/// gpt-image-2's per-quality factors in its token formula, `[low, medium, high]`.
const GPT_IMAGE_2_QUALITY: [u64; 3] = [16, 48, 96];

/// gpt-image-2 bills an image smaller than this many pixels as this many
/// (the calculator's `min_pixels`): counting it so only raises a bound.
const GPT_IMAGE_2_MIN_PIXELS: u64 = 655_360;

/// Per-image prices when the request names no quality or size: OpenAI's and
/// Azure's defaults for dall-e-3, the one per-image model.
const DEFAULT_IMAGE_QUALITY: &str = "standard";
const DEFAULT_IMAGE_SIZE: &str = "1024x1024";

/// The list prices of an Azure model name (`IMAGE_MODELS[].model`), or `None`
/// when the model has none here. Case does not matter, and a dated snapshot
/// (`gpt-image-2-2026-04-21`) costs what its family costs.
pub fn list_prices(model: &str) -> Option<Prices> {
    let per_token = |text_input, image_input, image_output, cached_input, sizing| Prices::PerToken {
        text_input,
        image_input,
        image_output,
        cached_input,
        sizing,
    };
    let cached = |text, image| Some(CachedInput { text, image });
    match family(model).as_str() {
        "gpt-image-1" => Some(per_token(5.0, 10.0, 40.0, cached(1.25, 2.5), TokenSizing::GptImage1)),
        "gpt-image-1-mini" => Some(per_token(2.0, 2.5, 8.0, cached(0.2, 0.25), TokenSizing::GptImage1)),
        "gpt-image-1.5" => Some(per_token(5.0, 8.0, 32.0, None, TokenSizing::GptImage1)),
        "gpt-image-2" => Some(per_token(5.0, 8.0, 30.0, cached(1.25, 2.0), TokenSizing::GptImage2)),
        "dall-e-3" => Some(Prices::PerImage(
            [
                ("standard", "1024x1024", 0.04),
                ("standard", "1792x1024", 0.08),
                ("standard", "1024x1792", 0.08),
                ("hd", "1024x1024", 0.08),
                ("hd", "1792x1024", 0.12),
                ("hd", "1024x1792", 0.12),
            ]
            .into_iter()
            .map(|(q, s, usd)| ((q.to_owned(), s.to_owned()), usd))
            .collect(),
        )),
        _ => None,
    }
}

/// The output-token sizing of an Azure model name, for an entry that brings
/// its own token prices.
pub fn token_sizing(model: &str) -> TokenSizing {
    match list_prices(model) {
        Some(Prices::PerToken { sizing, .. }) => sizing,
        _ => TokenSizing::Unknown,
    }
}

/// The lower-cased model name without a snapshot's `-YYYY-MM-DD`.
fn family(model: &str) -> String {
    let model = model.trim().to_ascii_lowercase();
    let dated = model.len() > 11 && {
        let (head, date) = model.split_at(model.len() - 11);
        !head.is_empty()
            && date.bytes().enumerate().all(|(i, b)| {
                if matches!(i, 0 | 5 | 8) {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
    };
    if dated {
        model[..model.len() - 11].to_owned()
    } else {
        model
    }
}

/// What Azure's answer cost, in USD; `None` when it cannot be known: a
/// token-priced model without `usage`, or a per-image model asked for a
/// quality or size its table lacks. `images` is the number of images Azure
/// returned (per-image prices); for token prices `usage` already counts them
/// (for a stream, the `completed` events' usage, added up).
pub fn cost(
    prices: &Prices,
    usage: Option<&Usage>,
    images: usize,
    size: Option<&str>,
    quality: Option<&str>,
) -> Option<f64> {
    match prices {
        Prices::PerToken {
            text_input,
            image_input,
            image_output,
            ..
        } => {
            let usage = usage?;
            let details = usage.input_tokens_details;
            // Input tokens Azure did not attribute to text or images are billed
            // at the dearer of the two, so the cost is never too low.
            let unattributed = usage
                .input_tokens
                .saturating_sub(details.text_tokens.saturating_add(details.image_tokens));
            let usd = details.text_tokens as f64 * text_input
                + details.image_tokens as f64 * image_input
                + unattributed as f64 * text_input.max(*image_input)
                + usage.output_tokens as f64 * image_output;
            Some(usd / 1e6)
        }
        Prices::PerImage(table) => {
            let key = (
                quality.unwrap_or(DEFAULT_IMAGE_QUALITY).to_ascii_lowercase(),
                size.unwrap_or(DEFAULT_IMAGE_SIZE).to_ascii_lowercase(),
            );
            table.get(&key).map(|usd| usd * images as f64)
        }
    }
}

/// The most a request can cost, in USD, before Azure is called: what the
/// connector reserves. `auto` (or no value, where Azure's default is `auto`)
/// is costed at the dearest size or quality, never at zero. `prompt_bytes` is
/// the prompt's length in UTF-8 bytes: a token is at least one byte, so it
/// bounds the prompt's tokens (a character can be several tokens).
/// `input_images` is the number of images an edit sends. Every image of `n` is
/// taken to bill the whole input again, as gpt-image-2 was seen to do.
/// `None` when no bound can be given: a size or quality the model's sizing
/// does not know.
pub fn worst_case(
    prices: &Prices,
    n: u32,
    size: Option<&str>,
    quality: Option<&str>,
    input_images: usize,
    prompt_bytes: usize,
) -> Option<f64> {
    let n = u64::from(n.max(1));
    match prices {
        Prices::PerToken {
            text_input,
            image_input,
            image_output,
            sizing,
            ..
        } => {
            let output = output_tokens_bound(*sizing, size, quality)?;
            let images = input_images as u64;
            let text = (prompt_bytes as u64)
                .saturating_add(TEXT_OVERHEAD_TOKENS)
                .saturating_add(images.saturating_mul(EDIT_TEXT_OVERHEAD_TOKENS));
            let image = images.saturating_mul(INPUT_IMAGE_TOKENS_BOUND);
            let per_image = text as f64 * text_input + image as f64 * image_input + output as f64 * image_output;
            Some(per_image * n as f64 / 1e6)
        }
        Prices::PerImage(table) => {
            let matches = |want: Option<&str>, have: &str| match want {
                None => true,
                Some(w) if w.eq_ignore_ascii_case("auto") => true,
                Some(w) => w.eq_ignore_ascii_case(have),
            };
            table
                .iter()
                .filter(|((q, s), _)| matches(quality, q) && matches(size, s))
                .map(|(_, usd)| *usd)
                .reduce(f64::max)
                .map(|usd| usd * n as f64)
        }
    }
}

/// The most output tokens one image of `size` and `quality` can take.
fn output_tokens_bound(sizing: TokenSizing, size: Option<&str>, quality: Option<&str>) -> Option<u64> {
    let q = match quality.map(str::to_ascii_lowercase).as_deref() {
        Some("low") => 0,
        Some("medium") => 1,
        None | Some("high") | Some("auto") => 2,
        Some(_) => return None,
    };
    let size = size.map(str::to_ascii_lowercase);
    let auto = matches!(size.as_deref(), None | Some("auto"));
    let table = || -> Option<u64> {
        if auto {
            GPT_IMAGE_1_TOKENS.iter().map(|(_, t)| t[q]).max()
        } else {
            GPT_IMAGE_1_TOKENS
                .iter()
                .find(|(s, _)| Some(*s) == size.as_deref())
                .map(|(_, t)| t[q])
        }
    };
    let formula = || -> Option<u64> {
        if auto {
            Some(GPT_IMAGE_2_MAX_TOKENS[q])
        } else {
            let (w, h) = parse_size(size.as_deref()?)?;
            Some(gpt_image_2_tokens(GPT_IMAGE_2_QUALITY[q], w, h))
        }
    };
    match sizing {
        TokenSizing::GptImage1 => table(),
        TokenSizing::GptImage2 => formula(),
        TokenSizing::Unknown => match (table(), formula()) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        },
    }
}

/// `WIDTHxHEIGHT` as two positive numbers of at most five digits.
fn parse_size(size: &str) -> Option<(u64, u64)> {
    let (w, h) = size.split_once('x')?;
    let side = |s: &str| {
        (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
            .filter(|&v| v > 0)
    };
    Some((side(w)?, side(h)?))
}

/// gpt-image-2's output tokens for one image (the calculator's formula, see the top).
fn gpt_image_2_tokens(quality_factor: u64, w: u64, h: u64) -> u64 {
    let (long, short) = (w.max(h), w.min(h));
    let short_factor = (2 * quality_factor * short + long) / (2 * long);
    let area = (w * h).max(GPT_IMAGE_2_MIN_PIXELS);
    (quality_factor * short_factor * (2_000_000 + area)).div_ceil(4_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{GPT_IMAGE_2, Values};
    use crate::reshape::UsageDetails;

    fn usage(text: u64, image: u64, output: u64) -> Usage {
        Usage {
            input_tokens: text + image,
            output_tokens: output,
            total_tokens: text + image + output,
            input_tokens_details: UsageDetails {
                text_tokens: text,
                image_tokens: image,
            },
        }
    }

    fn token_prices(model: &str) -> (f64, f64, f64) {
        match list_prices(model) {
            Some(Prices::PerToken {
                text_input,
                image_input,
                image_output,
                ..
            }) => (text_input, image_input, image_output),
            other => panic!("{model}: {other:?}"),
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn the_issue_list_prices_per_million_tokens() {
        assert_eq!(token_prices("gpt-image-1"), (5.0, 10.0, 40.0));
        assert_eq!(token_prices("gpt-image-1-mini"), (2.0, 2.5, 8.0));
    }

    #[test]
    fn the_looked_up_prices_of_gpt_image_1_5_and_2() {
        assert_eq!(token_prices("gpt-image-1.5"), (5.0, 8.0, 32.0));
        assert_eq!(token_prices("gpt-image-2"), (5.0, 8.0, 30.0));
    }

    #[test]
    fn the_issue_dall_e_3_prices_per_image() {
        let prices = list_prices("dall-e-3").expect("priced");
        for (quality, size, usd) in [
            ("standard", "1024x1024", 0.04),
            ("hd", "1024x1024", 0.08),
            ("standard", "1792x1024", 0.08),
            ("standard", "1024x1792", 0.08),
            ("hd", "1792x1024", 0.12),
            ("hd", "1024x1792", 0.12),
        ] {
            assert!(
                close(cost(&prices, None, 1, Some(size), Some(quality)), usd),
                "{quality}/{size}"
            );
        }
    }

    #[test]
    fn dall_e_3_costs_each_image_and_defaults_to_standard_square() {
        let prices = list_prices("dall-e-3").expect("priced");
        assert!(close(cost(&prices, None, 1, None, None), 0.04));
        assert!(close(cost(&prices, None, 2, Some("1792x1024"), Some("HD")), 0.24));
        assert!(close(cost(&prices, None, 0, None, None), 0.0));
    }

    #[test]
    fn snapshots_and_case_map_to_their_family() {
        assert_eq!(list_prices("gpt-image-2-2026-04-21"), list_prices("gpt-image-2"));
        assert_eq!(list_prices("GPT-Image-1"), list_prices("gpt-image-1"));
        assert_eq!(
            list_prices("gpt-image-1-mini-2025-10-06"),
            list_prices("gpt-image-1-mini")
        );
        assert_eq!(list_prices("gpt-image-1.5-2025-12-16"), list_prices("gpt-image-1.5"));
        assert_eq!(family("gpt-image-2-2026-4-21"), "gpt-image-2-2026-4-21");
        assert_eq!(family("-2026-04-21"), "-2026-04-21");
    }

    #[test]
    fn a_gpt_image_answer_costs_its_usage() {
        let prices = list_prices("gpt-image-1").expect("priced");
        // 50 text tokens at $5, 194 image tokens at $10, 4160 output tokens at $40.
        let u = usage(50, 194, 4160);
        let want = (50.0 * 5.0 + 194.0 * 10.0 + 4160.0 * 40.0) / 1e6;
        assert!(close(cost(&prices, Some(&u), 1, Some("1024x1024"), Some("high")), want));
    }

    #[test]
    fn input_tokens_azure_does_not_split_are_billed_at_the_dearer_rate() {
        let prices = list_prices("gpt-image-1").expect("priced");
        let u = Usage {
            input_tokens: 100,
            output_tokens: 0,
            total_tokens: 100,
            input_tokens_details: UsageDetails::default(),
        };
        assert!(close(cost(&prices, Some(&u), 1, None, None), 100.0 * 10.0 / 1e6));
    }

    #[test]
    fn unknown_stays_unknown() {
        assert_eq!(list_prices("gpt-image-3"), None);
        assert_eq!(list_prices("dall-e-2"), None);
        let tokens = list_prices("gpt-image-1").expect("priced");
        assert_eq!(cost(&tokens, None, 1, Some("1024x1024"), Some("high")), None);
        let images = list_prices("dall-e-3").expect("priced");
        assert_eq!(cost(&images, None, 1, Some("512x512"), None), None);
        assert_eq!(cost(&images, None, 1, None, Some("auto")), None);
        assert_eq!(worst_case(&images, 1, Some("512x512"), None, 0, 10), None);
        assert_eq!(worst_case(&tokens, 1, Some("1792x1024"), None, 0, 10), None);
        assert_eq!(worst_case(&tokens, 1, None, Some("hd"), 0, 10), None);
    }

    #[test]
    fn worst_case_is_at_least_the_cost_of_every_documented_size_and_quality() {
        for model in ["gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"] {
            let prices = list_prices(model).expect("priced");
            for (size, tokens) in GPT_IMAGE_1_TOKENS {
                for (q, quality) in ["low", "medium", "high"].into_iter().enumerate() {
                    for (n, input_images, prompt) in [(1u32, 0usize, 0usize), (3, 2, 4000)] {
                        // The whole prompt as text tokens, each input image at a high-fidelity count, per image.
                        let text = prompt as u64 + 2 * input_images as u64;
                        let u = usage(
                            text * u64::from(n),
                            6_240 * input_images as u64 * u64::from(n),
                            tokens[q] * u64::from(n),
                        );
                        let actual = cost(&prices, Some(&u), n as usize, Some(size), Some(quality)).expect("known");
                        for (s, qq) in [
                            (Some(size), Some(quality)),
                            (Some("auto"), Some(quality)),
                            (Some(size), Some("auto")),
                            (None, None),
                        ] {
                            let bound = worst_case(&prices, n, s, qq, input_images, prompt).expect("bounded");
                            assert!(
                                bound >= actual,
                                "{model} {size} {quality} as {s:?}/{qq:?}: {bound} < {actual}"
                            );
                        }
                    }
                }
            }
        }
        let prices = list_prices("dall-e-3").expect("priced");
        for (quality, size) in [("standard", "1024x1024"), ("hd", "1792x1024"), ("hd", "1024x1792")] {
            let actual = cost(&prices, None, 1, Some(size), Some(quality)).expect("known");
            for (s, q) in [(Some(size), Some(quality)), (None, None), (Some("auto"), Some("auto"))] {
                assert!(worst_case(&prices, 1, s, q, 0, 0).expect("bounded") >= actual);
            }
        }
    }

    #[test]
    fn worst_case_of_gpt_image_2_follows_the_formula_and_auto_takes_the_largest_size() {
        let prices = list_prices("gpt-image-2").expect("priced");
        // The guide's calculator: 1024x1024 high is 7024 tokens, 1536x1024 high 5488.
        assert_eq!(
            output_tokens_bound(TokenSizing::GptImage2, Some("1024x1024"), Some("high")),
            Some(7024)
        );
        assert_eq!(
            output_tokens_bound(TokenSizing::GptImage2, Some("1536x1024"), Some("high")),
            Some(5488)
        );
        assert_eq!(
            output_tokens_bound(TokenSizing::GptImage2, Some("1024x1024"), Some("medium")),
            Some(1756)
        );
        assert_eq!(
            output_tokens_bound(TokenSizing::GptImage2, Some("1024x1024"), Some("low")),
            Some(196)
        );
        let auto = worst_case(&prices, 1, Some("auto"), Some("auto"), 0, 0).expect("bounded");
        let square = worst_case(&prices, 1, Some("1024x1024"), Some("high"), 0, 0).expect("bounded");
        assert!(auto > square);
    }

    #[test]
    fn gpt_image_2_auto_bound_is_the_largest_of_every_allowed_size() {
        let Values::OneOfOrSize(_, limits) = GPT_IMAGE_2.size else {
            panic!("gpt-image-2 takes free sizes");
        };
        let mut most = [0u64; 3];
        for w in (16..=3840).step_by(16) {
            for h in (16..=3840).step_by(16) {
                if limits.allows(&format!("{w}x{h}")) {
                    for (q, factor) in GPT_IMAGE_2_QUALITY.into_iter().enumerate() {
                        most[q] = most[q].max(gpt_image_2_tokens(factor, w, h));
                    }
                }
            }
        }
        assert_eq!(most, GPT_IMAGE_2_MAX_TOKENS);
    }

    #[test]
    fn auto_never_costs_zero() {
        for model in [
            "gpt-image-1",
            "gpt-image-1-mini",
            "gpt-image-1.5",
            "gpt-image-2",
            "dall-e-3",
        ] {
            let prices = list_prices(model).expect("priced");
            for (size, quality) in [
                (Some("auto"), Some("auto")),
                (None, None),
                (Some("auto"), None),
                (None, Some("auto")),
            ] {
                let bound = worst_case(&prices, 1, size, quality, 0, 0).expect("bounded");
                assert!(bound > 0.0, "{model} {size:?}/{quality:?}");
            }
        }
    }

    #[test]
    fn worst_case_grows_with_n_input_images_and_prompt() {
        let prices = list_prices("gpt-image-1").expect("priced");
        let one = worst_case(&prices, 1, Some("1024x1024"), Some("low"), 0, 10).expect("bounded");
        assert!(worst_case(&prices, 2, Some("1024x1024"), Some("low"), 0, 10).expect("bounded") > one);
        assert!(worst_case(&prices, 1, Some("1024x1024"), Some("low"), 1, 10).expect("bounded") > one);
        assert!(worst_case(&prices, 1, Some("1024x1024"), Some("low"), 0, 11).expect("bounded") > one);
    }

    #[test]
    fn an_unknown_sizing_bounds_by_the_larger_of_both() {
        assert_eq!(
            output_tokens_bound(TokenSizing::Unknown, Some("1024x1536"), Some("high")),
            Some(6240)
        );
        assert_eq!(
            output_tokens_bound(TokenSizing::Unknown, Some("1024x1024"), Some("high")),
            Some(7024)
        );
        assert_eq!(
            output_tokens_bound(TokenSizing::Unknown, Some("2048x2048"), None),
            Some(14_272)
        );
        assert_eq!(output_tokens_bound(TokenSizing::Unknown, None, None), Some(15_358));
        assert_eq!(output_tokens_bound(TokenSizing::Unknown, Some("big"), None), None);
        assert_eq!(token_sizing("my-own-model"), TokenSizing::Unknown);
        assert_eq!(token_sizing("gpt-image-2-2026-04-21"), TokenSizing::GptImage2);
    }
}
