//! Hostile input: whatever a caller sends, the answer is a success or an
//! OpenAI-format 4xx, never a 5xx, a panic or a request Azure should not see.

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const GEN: &str = "/v1/images/generations";

/// One runtime, one Azure stand-in and one app for every generated case.
/// The app caches no secret, so every request that gets to Azure fetches its
/// key: the counts tell what a refused request set in motion.
struct World {
    runtime: tokio::runtime::Runtime,
    test: TestApp,
    fake: FakeAzure,
    /// One case at a time, so the counts belong to it.
    turn: std::sync::Mutex<()>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let fake = runtime.block_on(FakeAzure::healthy());
        let config = config_with(
            &fake,
            &[
                ("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET),
                ("MAX_RETRIES", "0"),
                ("SECRET_CACHE_TTL_SECONDS", "0"),
            ],
        );
        let test = app_from(config, vec![Ok(AZURE_KEY.to_owned())]);
        World {
            runtime,
            test,
            fake,
            turn: std::sync::Mutex::new(()),
        }
    })
}

/// The answer to `body` on `path`: asserts it is a success or an OpenAI-format
/// 4xx, and that a refused request reached neither Azure nor Secrets Manager.
fn answer(path: &str, body: &[u8]) -> u16 {
    let mut req = post(path, "");
    req.body = bytes::Bytes::copy_from_slice(body);
    handled(req).status().as_u16()
}

fn handled(req: azure_openai_image::exchange::Incoming) -> http::Response<Vec<u8>> {
    let world = world();
    let _turn = world.turn.lock().unwrap_or_else(|p| p.into_inner());
    let (sent, fetched) = (world.fake.requests().len(), world.test.secret_calls());
    let response = world.runtime.block_on(world.test.app.handle(req));
    let status = response.status().as_u16();
    assert!(
        status == 200 || (400..500).contains(&status),
        "status {status}: {}",
        String::from_utf8_lossy(response.body())
    );
    let (sent_now, fetched_now) = (world.fake.requests().len(), world.test.secret_calls());
    if status == 200 {
        assert_eq!(sent_now, sent + 1, "one upstream call for a valid request");
    } else {
        openai_error(&response, status);
        assert_eq!(sent_now, sent, "a refused request reached Azure");
        assert_eq!(fetched_now, fetched, "a refused request fetched the Azure key");
    }
    response
}

fn field_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e20f64..1e20).prop_map(|f| json!(f)),
        prop_oneof![
            Just("1024x1024"),
            Just("1792x1024"),
            Just("auto"),
            Just("hd"),
            Just("low"),
            Just("vivid"),
            Just("url"),
            Just("b64_json"),
            Just("png"),
            Just("azure-image"),
            Just("dall-e-3"),
            Just(""),
        ]
        .prop_map(|s| json!(s)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn request_object() -> impl Strategy<Value = Value> {
    let keys = prop_oneof![
        Just("model"),
        Just("prompt"),
        Just("n"),
        Just("size"),
        Just("quality"),
        Just("style"),
        Just("response_format"),
        Just("user"),
        Just("stream"),
        Just("fallbacks"),
        Just("background"),
        Just("output_format"),
        Just("output_compression"),
        Just("moderation"),
        Just("partial_images"),
        Just("unknown_field"),
    ];
    prop::collection::vec((keys, field_value()), 0..10).prop_map(|fields| {
        let mut map = Map::new();
        for (k, v) in fields {
            map.insert(k.to_owned(), v);
        }
        Value::Object(map)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_a_success_or_an_openai_4xx(body in prop::collection::vec(any::<u8>(), 0..512)) {
        answer(GEN, &body);
    }

    #[test]
    fn any_request_shaped_object_gets_a_success_or_an_openai_4xx(value in request_object()) {
        let body = serde_json::to_vec(&value).expect("json");
        answer(GEN, &body);
        answer("/openai/deployments/dall-e-3/images/generations", &body);
    }

    #[test]
    fn any_deployment_segment_selects_only_configured_models(segment in "[^/]{0,30}") {
        let status = answer(&format!("/openai/deployments/{segment}/images/generations"), br#"{"prompt":"x"}"#);
        let configured = ["azure-image", "dall-e-3", GPT_DEPLOYMENT, DALLE_DEPLOYMENT].contains(&segment.as_str());
        prop_assert_eq!(status == 200, configured);
    }
}

#[test]
fn deeply_nested_junk_is_400_not_a_stack_overflow() {
    let deep = format!(
        r#"{{"prompt":"x","junk":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(answer(GEN, deep.as_bytes()), 400);
}

#[test]
fn non_utf8_empty_and_null_bodies_are_400() {
    for body in [
        &b"{\"prompt\":\"\xff\xfe\"}"[..],
        b"",
        b"null",
        b"{\"prompt\":null,\"n\":null,\"size\":null}",
        b"\x00\x01",
        b"{\"prompt\":\"x\"} trailing",
    ] {
        assert_eq!(answer(GEN, body), 400, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn numbers_out_of_range_are_400_on_their_field() {
    for (body, param) in [
        (r#"{"prompt":"x","n":18446744073709551616}"#, "n"),
        (r#"{"prompt":"x","n":-9223372036854775808}"#, "n"),
        (r#"{"prompt":"x","n":1.0}"#, "n"),
        (r#"{"prompt":"x","n":1e400}"#, ""),
        (r#"{"prompt":"x","output_compression":-1}"#, "output_compression"),
        (r#"{"prompt":"x","partial_images":4}"#, "partial_images"),
    ] {
        let response = handled(post(GEN, body));
        let err = openai_error(&response, 400);
        if !param.is_empty() {
            assert_eq!(err["param"], param, "{body}");
        }
    }
}
