//! Any bytes as Azure's event stream, cut anywhere: the parser gives the same
//! events for every cut, never panics, and every event it gives has a `type`
//! and JSON data.
#![no_main]

use azure_openai_image::sse::{EventParser, UpstreamEvent};
use libfuzzer_sys::fuzz_target;

fn parse(data: &[u8], cuts: &[usize]) -> Result<Vec<UpstreamEvent>, ()> {
    let mut parser = EventParser::with_limit(4096);
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        events.extend(parser.push(&data[start..cut]).map_err(|_| ())?);
        start = cut;
    }
    events.extend(parser.finish());
    Ok(events)
}

fuzz_target!(|data: &[u8]| {
    let whole = parse(data, &[]);
    let len = data.len();
    let mut cuts = vec![len / 3, 2 * len / 3];
    cuts.extend((0..len).step_by(5));
    cuts.sort_unstable();
    let pieces = parse(data, &cuts);
    let bytewise = parse(data, &(0..len).collect::<Vec<_>>());
    match (&whole, &pieces, &bytewise) {
        (Ok(whole), Ok(pieces), Ok(bytewise)) => {
            assert_eq!(whole, pieces, "the same events for any cut");
            assert_eq!(whole, bytewise, "the same events byte by byte");
            for event in whole {
                assert!(!event.kind.is_empty(), "every event has a type");
                let _: &serde_json::value::RawValue =
                    serde_json::from_slice(&event.data).expect("an event's data is JSON");
            }
        }
        // Only an event past the limit fails; where it fails depends on the cut.
        (Err(()), _, _) | (_, Err(()), _) | (_, _, Err(())) => assert!(len > 4096),
    }
});
