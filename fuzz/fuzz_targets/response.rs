//! Any bytes as an Azure 200 body: reshaping answers a 502, or a JSON body with
//! an integer `created` and one indexed image per input image. Other values
//! pass through as Azure wrote them, so the check reads them as raw JSON
//! (a valid number may be out of `f64`'s range).
#![no_main]

use std::collections::BTreeMap;

use azure_openai_image::response::images_response;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Shaped<'a> {
    #[allow(dead_code)] // Read only to check it is a u64.
    created: u64,
    #[serde(borrow)]
    data: Vec<BTreeMap<String, &'a RawValue>>,
}

fuzz_target!(|data: &[u8]| {
    match images_response(data) {
        Err(err) => assert_eq!(err.status.as_u16(), 502),
        Ok(result) => {
            let _: &RawValue = serde_json::from_slice(&result.body).expect("the reshaped body is JSON");
            let shaped: Shaped<'_> = serde_json::from_slice(&result.body).expect("created and data are there");
            assert_eq!(shaped.data.len(), result.images);
            assert!(shaped.data.iter().all(|image| image.contains_key("index")));
        }
    }
});
