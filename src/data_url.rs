//! The images of a JSON edit request (`images[].image_url`, `mask.image_url`)
//! as `data:` URLs (RFC 2397), decoded to their bytes.
//!
//! Only data URLs: the connector never fetches a URL on a client's behalf (no
//! server-side request forgery, no waiting on a third party inside a Lambda
//! invocation), so a `https://` image is refused with a 400 asking for the
//! image itself.
//!
//! Base64 only, the standard alphabet, as RFC 2397 and every browser's
//! `FileReader.readAsDataURL` write it. Padding may be left off (its absence
//! is unambiguous and some encoders strip it); whitespace, line breaks and
//! the URL-safe alphabet are refused, with the position of the first bad
//! character, so a wrapped or URL-safe encoding is found rather than guessed.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;

use crate::error::{self, ApiError, Spec, printable};

/// A decoded data URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataUrl {
    /// The declared media type, lowercased (`image/png`), when there is one.
    /// Informational: the image's format is read from its bytes.
    pub media_type: Option<String>,
    pub data: Bytes,
}

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes `data:[<media type>][;<parameter>]*;base64,<data>`; any other URL
/// is a 400 on `param` (`images[2]`, `mask`).
pub fn decode(url: &str, param: impl Into<Cow<'static, str>>) -> Result<DataUrl, ApiError> {
    let param = param.into();
    let fail = |spec: Spec, why: String| {
        let message = format!("Invalid '{}': {why}", printable(&param));
        ApiError::param(spec, param.clone(), message)
    };
    let (scheme, rest) = url.split_once(':').unwrap_or(("", url));
    if !scheme.eq_ignore_ascii_case("data") {
        let why = if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") {
            "this service does not fetch image URLs. Send the image itself, as a base64 data URL (`data:image/png;base64,...`) or as a multipart/form-data upload."
        } else {
            "expected a base64 data URL (`data:image/png;base64,...`)."
        };
        return Err(fail(error::INVALID_IMAGE_URL, why.to_owned()));
    }
    let Some((meta, encoded)) = rest.split_once(',') else {
        return Err(fail(
            error::INVALID_IMAGE_URL,
            "the data URL has no `,` before its data.".to_owned(),
        ));
    };
    let mut attributes = meta.split(';');
    let media_type = attributes.next().unwrap_or_default().trim();
    if !attributes
        .next_back()
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("base64"))
    {
        return Err(fail(
            error::INVALID_IMAGE_URL,
            "the data URL must be base64-encoded (`data:image/png;base64,...`).".to_owned(),
        ));
    }
    let media_type = match media_type {
        "" => None,
        m if is_media_type(m) => Some(m.to_ascii_lowercase()),
        m => {
            return Err(fail(
                error::INVALID_IMAGE_URL,
                format!("`{}` is not a media type like image/png.", printable(m)),
            ));
        }
    };
    if encoded.is_empty() {
        return Err(fail(error::INVALID_IMAGE_URL, "the data URL holds no data.".to_owned()));
    }
    let data = BASE64.decode(encoded).map_err(|e| {
        let why = match e {
            base64::DecodeError::InvalidByte(at, _) => format!(
                "the data URL's base64 has a character outside the standard alphabet at position {at} (no whitespace, line breaks or URL-safe `-`/`_`)."
            ),
            base64::DecodeError::InvalidLength(_) => "the data URL's base64 has an impossible length.".to_owned(),
            base64::DecodeError::InvalidLastSymbol(at, _) => {
                format!("the data URL's base64 has a malformed last character at position {at}.")
            }
            base64::DecodeError::InvalidPadding => "the data URL's base64 has malformed padding.".to_owned(),
        };
        fail(error::INVALID_BASE64, why)
    })?;
    Ok(DataUrl {
        media_type,
        data: Bytes::from(data),
    })
}

/// `type/subtype`, both RFC 7230 tokens.
fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    s.split_once('/').is_some_and(|(kind, sub)| token(kind) && token(sub))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn code_of(result: Result<DataUrl, ApiError>, param: &str) -> String {
        let err = result.expect_err("expected a 400");
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST, "{err:?}");
        assert_eq!(err.param.as_deref(), Some(param));
        err.code.map(|c| c.into_owned()).unwrap_or_default()
    }

    #[test]
    fn base64_data_urls_decode_with_or_without_a_media_type() {
        let url = decode("data:image/png;base64,iVBORw0KGgo=", "images[0]").expect("valid");
        assert_eq!(url.media_type.as_deref(), Some("image/png"));
        assert_eq!(&url.data[..], b"\x89PNG\r\n\x1a\n");
        let bare = decode("data:;base64,aGk=", "mask").expect("valid");
        assert_eq!((bare.media_type, &bare.data[..]), (None, &b"hi"[..]));
        let shouted = decode("DATA:Image/JPEG;name=x.jpg;BASE64,aGk=", "mask").expect("valid");
        assert_eq!(shouted.media_type.as_deref(), Some("image/jpeg"));
    }

    #[test]
    fn padding_may_be_left_off() {
        for url in ["data:image/png;base64,aGk", "data:image/png;base64,aGk="] {
            assert_eq!(&decode(url, "mask").expect(url).data[..], b"hi");
        }
        assert_eq!(code_of(decode("data:;base64,aGk==", "mask"), "mask"), "invalid_base64");
    }

    #[test]
    fn urls_to_fetch_are_refused_with_a_request_for_the_image_itself() {
        for url in ["https://example.com/cat.png", "HTTP://10.0.0.1/latest/meta-data"] {
            let err = decode(url, "images[2]").expect_err(url);
            assert_eq!(err.param.as_deref(), Some("images[2]"));
            assert_eq!(err.code.as_deref(), Some("invalid_image_url"));
            assert!(err.message.contains("does not fetch") && err.message.contains("data:image/png;base64"));
            assert!(!err.message.contains("example.com") && !err.message.contains("10.0.0.1"));
        }
        for url in [
            "file:///etc/passwd",
            "cat.png",
            "",
            " data:image/png;base64,aGk=",
            "file-abc123",
        ] {
            assert_eq!(code_of(decode(url, "mask"), "mask"), "invalid_image_url", "{url}");
        }
    }

    #[test]
    fn data_urls_must_be_base64_of_something() {
        for url in [
            "data:image/png,%89PNG",
            "data:image/png;base64",
            "data:image/png;base64;charset=x,aGk=",
            "data:base64,aGk=",
            "data:image/png;base64,",
            "data:image png;base64,aGk=",
            "data:image/;base64,aGk=",
        ] {
            assert_eq!(code_of(decode(url, "mask"), "mask"), "invalid_image_url", "{url}");
        }
    }

    #[test]
    fn malformed_base64_is_refused_with_where() {
        for (url, at) in [
            ("data:;base64,aGk\n=", "position 3"),
            ("data:;base64,a-_k", "position 1"),
            ("data:;base64,aG k", "position 2"),
        ] {
            let err = decode(url, "mask").expect_err(url);
            assert_eq!(err.code.as_deref(), Some("invalid_base64"));
            assert!(err.message.contains(at), "{url}: {}", err.message);
        }
        for url in ["data:;base64,a", "data:;base64,aGj=", "data:;base64,=aGk"] {
            assert_eq!(code_of(decode(url, "mask"), "mask"), "invalid_base64", "{url}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip_through_a_data_url(
            bytes in proptest::collection::vec(any::<u8>(), 1..300),
            padded in any::<bool>(),
        ) {
            let engine = if padded { base64::engine::general_purpose::STANDARD } else { base64::engine::general_purpose::STANDARD_NO_PAD };
            let url = format!("data:image/webp;base64,{}", engine.encode(&bytes));
            let decoded = decode(&url, "images[0]").expect("valid");
            prop_assert_eq!(&decoded.data[..], &bytes[..]);
        }

        #[test]
        fn arbitrary_strings_never_panic(url in "(data:)?.{0,80}") {
            if let Err(err) = decode(&url, "mask") {
                prop_assert_eq!(err.param.as_deref(), Some("mask"));
            }
        }
    }
}
