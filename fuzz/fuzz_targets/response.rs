//! Any bytes as an Azure 200 body: reshaping answers a 502, or a JSON body with
//! `created` and one indexed image per input image.
#![no_main]

use azure_openai_image::response::images_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match images_response(data) {
        Err(err) => assert_eq!(err.status.as_u16(), 502),
        Ok(shaped) => {
            let body: serde_json::Value = serde_json::from_slice(&shaped.body).expect("reshaped body is JSON");
            let images = body["data"].as_array().expect("data is a list");
            assert_eq!(images.len(), shaped.images);
            assert!(body["created"].is_u64());
            assert!(images.iter().all(|image| image.get("index").is_some()));
        }
    }
});
