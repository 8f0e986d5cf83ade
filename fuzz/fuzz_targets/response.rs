//! Any bytes as an Azure 200 body: reshaping answers a 502, or a JSON body with
//! an integer `created` and one indexed image per input image, only for input
//! serde_json also takes for JSON, and the same whatever pieces the body comes
//! in. Other values pass through as Azure wrote them, so the check reads them
//! as raw JSON (a valid number may be out of `f64`'s range).
#![no_main]

use std::collections::BTreeMap;

use azure_openai_image::reshape::{Malformed, Reshaper};
use azure_openai_image::json_text::concat;
use azure_openai_image::reshape;
use bytes::Bytes;
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

/// The same body fed in pieces cut at `cuts`: the output must not depend on where.
fn in_pieces(data: &[u8], cuts: &[usize]) -> Result<Vec<u8>, Malformed> {
    let body = Bytes::copy_from_slice(data);
    let mut reshaper = Reshaper::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        reshaper.feed(body.slice(start..cut))?;
        for piece in reshaper.take_output() {
            out.extend_from_slice(&piece);
        }
        start = cut;
    }
    reshaper.finish()?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let serde_accepts = serde_json::from_slice::<&RawValue>(data).is_ok();
    let whole = reshape::whole(Bytes::copy_from_slice(data)).map(|mut r| (concat(&r.take_output()), r.images()));
    match &whole {
        Err(_) => {}
        Ok((body, images)) => {
            assert!(serde_accepts, "only JSON is an images response");
            let _: &RawValue = serde_json::from_slice(&body).expect("the reshaped body is JSON");
            let shaped: Shaped<'_> = serde_json::from_slice(&body).expect("created and data are there");
            assert_eq!(shaped.data.len(), *images);
            assert!(shaped.data.iter().all(|image| image.contains_key("index")));
        }
    }
    // Cuts chosen by the input itself: a third and two thirds of the way, and every 7 bytes.
    let len = data.len();
    let mut cuts = vec![len / 3, 2 * len / 3];
    cuts.extend((0..len).step_by(7));
    cuts.sort_unstable();
    let pieces = in_pieces(data, &cuts);
    match (&whole, &pieces) {
        (Ok((whole, _)), Ok(pieces)) => assert_eq!(whole, pieces, "the same output for any cut"),
        (Err(_), Err(_)) => {}
        _ => panic!("accepted whole but not in pieces, or the other way round"),
    }
});
