//! Any bytes as an image edit upload: the first line is the Content-Type, the
//! rest the body. The boundary is 1 to 70 characters or a 400; the parser
//! answers a short 400 or parts in body order, each a slice of the body no
//! part's content holds a delimiter of; and reading an image header or a data
//! URL out of any part never panics.
#![no_main]

use azure_openai_image::data_url;
use azure_openai_image::error::ApiError;
use azure_openai_image::image;
use azure_openai_image::multipart::{self, MAX_PARTS};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn assert_short_client_error(err: &ApiError) {
    assert_eq!(err.status.as_u16(), 400, "{err:?}");
    assert!(err.message.len() < 1024, "{err:?}");
    assert!(!err.message.chars().any(char::is_control), "{err:?}");
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(content_type) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let boundary = match multipart::boundary_of(content_type) {
        Ok(boundary) => boundary,
        Err(err) => return assert_short_client_error(&err),
    };
    assert!((1..=70).contains(&boundary.len()));
    let body = Bytes::copy_from_slice(data.get(split + 1..).unwrap_or_default());
    let parts = match multipart::parse(&body, boundary) {
        Ok(parts) => parts,
        Err(err) => return assert_short_client_error(&err),
    };
    assert!(parts.len() <= MAX_PARTS);
    let delimiter = [b"\r\n--", boundary.as_bytes()].concat();
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let mut previous_end = start;
    for part in &parts {
        assert!(!part.name.is_empty());
        if !part.data.is_empty() {
            let at = part.data.as_ptr() as usize;
            assert!(
                at >= previous_end && at + part.data.len() <= end,
                "{part:?} is not a slice of the body in order"
            );
            previous_end = at + part.data.len();
        }
        assert!(!part.data.windows(delimiter.len()).any(|w| w == delimiter));
        if let Some(info) = image::identify(&part.data) {
            assert!(info.width > 0 && info.height > 0);
        }
        if let Err(err) = image::check(&part.data, part.name.clone()) {
            assert_eq!(err.param.as_deref(), Some(part.name.as_str()));
        }
        if let Ok(text) = part.text() {
            match data_url::decode(text, "images[0]") {
                Ok(url) => {
                    let _ = image::identify(&url.data);
                }
                Err(err) => assert_short_client_error(&err),
            }
        }
    }
    let _ = multipart::only(&parts, "prompt");
});
