//! Spend control through the whole app: keys with a budget or rate limits are
//! reserved before Azure is called and settled after, against the in-memory
//! usage store and a clock the tests move. The end-to-end stage
//! (tests/e2e/test_spend.py) does the same against DynamoDB in moto.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_openai_image::App;
use azure_openai_image::azure::AzureClient;
use azure_openai_image::observe::MetricsSink;
use azure_openai_image::secrets::ScriptedSource;
use azure_openai_image::spend::{Clock, ManualClock, Period};
use azure_openai_image::usage::MemoryStore;
use common::*;
use http::Response;

const GEN: &str = "/v1/images/generations";
/// A dall-e-3 image at a size and quality whose price is known: $0.04, reserved and spent.
const DALLE: &str = r#"{"model":"dall-e-3","prompt":"a fox","size":"1024x1024","quality":"standard"}"#;
/// 2026-12-02T14:30:15Z.
const NOW_MS: u64 = 1_796_221_815_000;

struct Spend {
    app: Arc<App>,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    metrics: Arc<Mutex<Vec<String>>>,
}

impl Spend {
    /// Waits for the settlements the answers started.
    async fn settled(&self) {
        self.app.spend().settles().wait().await;
    }

    /// The key's item in the current period.
    fn item(&self, name: &str, period: Period) -> azure_openai_image::spend::Figures {
        let start = period.bounds(self.clock.now_ms() / 1000).0;
        self.store
            .items()
            .into_iter()
            .find(|(k, _)| k.pk == format!("key#{name}") && k.sk == format!("period#{start}"))
            .map(|(_, f)| f)
            .expect("the key's item")
    }

    fn usage_store_errors(&self) -> usize {
        let lines = self.metrics.lock().expect("metrics");
        lines.iter().filter(|l| l.contains("\"UsageStoreErrors\"")).count()
    }
}

/// The test app with these client keys and the usage table in memory.
fn spend_app(fake: &FakeAzure, keys: &str, settings: &[(&str, &str)]) -> Spend {
    let mut all = vec![
        ("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET),
        ("MAX_RETRIES", "0"),
        ("USAGE_TABLE", "usage"),
    ];
    all.extend_from_slice(settings);
    let source = Arc::new(
        ScriptedSource::new(vec![Ok(AZURE_KEY.to_owned())]).with(CLIENT_KEYS_SECRET, vec![Ok(keys.to_owned())]),
    );
    let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
    let metrics = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let metrics = metrics.clone();
        MetricsSink::new("AzureOpenAIImage", move |line| {
            metrics.lock().expect("metrics").push(line.to_owned())
        })
    };
    let app = App::new(config_with(fake, &all), source, AzureClient::new().expect("client"))
        .with_metrics(sink)
        .with_usage_store(store.clone(), clock.clone());
    Spend {
        app: Arc::new(app),
        store,
        clock,
        metrics,
    }
}

fn as_key(key: &str, body: &str) -> azure_openai_image::exchange::Incoming {
    with_header(post(GEN, body), "authorization", &format!("Bearer {key}"))
}

fn header<'a>(response: &'a Response<Vec<u8>>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn twenty_concurrent_requests_against_a_budget_of_ten_let_exactly_ten_through() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 0.40, "period": "day"}}]"#;
    let test = spend_app(&fake, keys, &[]);
    let answers = futures_join(
        (0..20)
            .map(|_| {
                let app = test.app.clone();
                tokio::spawn(async move { app.handle(as_key("sk-team", DALLE)).await })
            })
            .collect(),
    )
    .await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 10);
    for refused in answers.iter().filter(|r| r.status() != 200) {
        let err = openai_error(refused, 429);
        assert_eq!(
            (err["type"].as_str(), err["code"].as_str()),
            (Some("insufficient_quota"), Some("insufficient_quota"))
        );
        assert!(
            err["message"]
                .as_str()
                .is_some_and(|m| m.contains("2026-12-03T00:00:00Z")),
            "{err}"
        );
        assert_eq!(header(refused, "x-should-retry"), Some("false"));
    }
    assert_eq!(fake.requests().len(), 10, "a refused request never reaches Azure");
    test.settled().await;
    let item = test.item("team", Period::Day);
    assert_eq!((item.spent, item.reserved, item.committed), (400_000, 0, 400_000));
    assert_eq!((item.requests, item.images), (10, 10));
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Response<Vec<u8>>>>) -> Vec<Response<Vec<u8>>> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("request task"));
    }
    out
}

#[tokio::test]
async fn a_rate_limit_refuses_with_retry_after_and_every_answer_carries_the_headers() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "limits": {"requestsPerMinute": 2, "imagesPerMinute": 10}}]"#;
    let test = spend_app(&fake, keys, &[]);
    for remaining in ["1", "0"] {
        let ok = test.app.handle(as_key("sk-team", DALLE)).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(header(&ok, "x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(header(&ok, "x-ratelimit-remaining-requests"), Some(remaining));
        assert_eq!(header(&ok, "x-ratelimit-reset-requests"), Some("45s"));
        assert_eq!(header(&ok, "x-ratelimit-limit-images"), Some("10"));
    }
    let refused = test.app.handle(as_key("sk-team", DALLE)).await;
    let err = openai_error(&refused, 429);
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("requests"), Some("rate_limit_exceeded"))
    );
    assert_eq!(header(&refused, "retry-after"), Some("45"));
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(header(&refused, "x-ratelimit-remaining-images"), Some("8"));
    assert_eq!(
        header(&refused, "x-should-retry"),
        None,
        "a retry after the wait is served"
    );
    assert_eq!(fake.requests().len(), 2);
    // The next minute is a new window.
    test.clock.advance(Duration::from_secs(45));
    let ok = test.app.handle(as_key("sk-team", DALLE)).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(header(&ok, "x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(header(&ok, "x-ratelimit-reset-requests"), Some("1m0s"));
}

#[tokio::test]
async fn an_invalid_request_of_a_limited_key_is_refused_before_it_is_counted_and_carries_no_headers() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "limits": {"requestsPerMinute": 1}}]"#;
    let test = spend_app(&fake, keys, &[]);
    let bad = test
        .app
        .handle(as_key("sk-team", r#"{"model":"dall-e-3","prompt":"a fox","n":0}"#))
        .await;
    openai_error(&bad, 400);
    assert!(bad.headers().keys().all(|k| !k.as_str().starts_with("x-ratelimit-")));
    assert_eq!(test.store.calls(), 0);
    assert_eq!(test.app.handle(as_key("sk-team", DALLE)).await.status(), 200);
}

#[tokio::test]
async fn unlimited_keys_never_touch_the_usage_store() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"["sk-free", {"key": "sk-named", "name": "named"}]"#;
    let test = spend_app(&fake, keys, &[]);
    for key in ["sk-free", "sk-named"] {
        let ok = test.app.handle(as_key(key, DALLE)).await;
        assert_eq!(ok.status(), 200);
        assert!(ok.headers().keys().all(|k| !k.as_str().starts_with("x-ratelimit-")));
    }
    test.settled().await;
    assert_eq!(test.store.calls(), 0);
}

#[tokio::test]
async fn a_failed_request_releases_its_reservation() {
    let fake =
        FakeAzure::start(|_, _| Canned::json(500, r#"{"error":{"code":"InternalServerError","message":"boom"}}"#))
            .await;
    let keys = r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 0.04, "period": "month"}, "limits": {"requestsPerMinute": 5}}]"#;
    let test = spend_app(&fake, keys, &[]);
    for _ in 0..3 {
        let failed = test.app.handle(as_key("sk-team", DALLE)).await;
        openai_error(&failed, 502);
        assert!(
            header(&failed, "x-ratelimit-remaining-requests").is_some(),
            "errors carry the headers too"
        );
        test.settled().await;
    }
    let item = test.item("team", Period::Month);
    assert_eq!((item.spent, item.reserved, item.committed, item.requests), (0, 0, 0, 3));
}

#[tokio::test]
async fn a_gpt_image_answer_is_settled_at_the_cost_of_its_usage() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 5, "period": "day"}}]"#;
    let test = spend_app(&fake, keys, &[]);
    let body = r#"{"model":"azure-image","prompt":"a fox","size":"1024x1024","quality":"high"}"#;
    assert_eq!(test.app.handle(as_key("sk-team", body)).await.status(), 200);
    test.settled().await;
    // The stand-in's usage: 10 text tokens at $5, 40 image tokens at $10, 50 output tokens at $40 per 1M.
    let item = test.item("team", Period::Day);
    assert_eq!((item.spent, item.reserved), (2_450, 0));
}

#[tokio::test]
async fn a_streamed_answer_is_settled_when_its_body_ends() {
    let usage = r#""usage":{"total_tokens":30,"input_tokens":10,"output_tokens":20,"input_tokens_details":{"text_tokens":10,"image_tokens":0}}"#;
    let completed = format!(r#""b64_json":"RklO",{usage}"#);
    let fake = FakeAzure::start(move |_, _| Canned::events(&[("image_generation.completed", &completed)])).await;
    let keys = r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 5, "period": "day"}}]"#;
    let test = spend_app(&fake, keys, &[]);
    let body = r#"{"model":"azure-image","prompt":"a fox","size":"1024x1024","quality":"high","stream":true}"#;
    let answer = test.app.respond(as_key("sk-team", body)).await;
    assert_eq!(answer.status(), 200);
    test.settled().await;
    assert!(
        test.item("team", Period::Day).reserved > 0,
        "held while the body is still to come"
    );
    let (_, body) = answer.into_parts();
    drop(body.collect().await);
    test.settled().await;
    // 10 text tokens at $5, 20 output tokens at $40 per 1M.
    let item = test.item("team", Period::Day);
    assert_eq!((item.spent, item.reserved), (850, 0));
}

#[tokio::test]
async fn a_store_outage_is_503_under_deny() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "limits": {"requestsPerMinute": 5}}]"#;
    let test = spend_app(&fake, keys, &[]);
    test.store.set_down(true);
    let denied = test.app.handle(as_key("sk-team", DALLE)).await;
    let err = openai_error(&denied, 503);
    assert_eq!(err["code"], "usage_store_unavailable");
    assert!(header(&denied, "retry-after").is_some());
    assert!(fake.requests().is_empty());
    assert_eq!(test.usage_store_errors(), 1);
}

#[tokio::test]
async fn a_store_outage_is_served_uncounted_under_allow() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 0.04, "period": "day"}}]"#;
    let test = spend_app(&fake, keys, &[("SPEND_LIMITS_ON_ERROR", "allow")]);
    test.store.set_down(true);
    for _ in 0..2 {
        assert_eq!(test.app.handle(as_key("sk-team", DALLE)).await.status(), 200);
    }
    test.settled().await;
    assert_eq!(test.usage_store_errors(), 2);
    for line in test
        .metrics
        .lock()
        .expect("metrics")
        .iter()
        .filter(|l| l.contains("UsageStoreErrors"))
    {
        emf_record(line);
    }
}

#[tokio::test]
async fn a_budget_needs_a_usage_table() {
    let fake = FakeAzure::healthy().await;
    let source = Arc::new(ScriptedSource::new(vec![Ok(AZURE_KEY.to_owned())]).with(
        CLIENT_KEYS_SECRET,
        vec![Ok(
            r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 1, "period": "day"}}]"#.to_owned(),
        )],
    ));
    let app = Arc::new(
        App::new(config_for(&fake), source, AzureClient::new().expect("client"))
            .with_metrics(MetricsSink::new("AzureOpenAIImage", |_| {})),
    );
    let err = openai_error(&app.handle(as_key("sk-team", DALLE)).await, 500);
    assert_eq!(err["code"], "secret_misconfigured");
}

fn usage_of(key: &str) -> azure_openai_image::exchange::Incoming {
    with_header(
        request(http::Method::GET, "/v1/usage", ""),
        "authorization",
        &format!("Bearer {key}"),
    )
}

#[tokio::test]
async fn usage_answers_the_calling_keys_own_figures() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 1, "period": "day"}, "limits": {"requestsPerMinute": 5, "imagesPerMinute": 4}},
                   {"key": "sk-other", "name": "other", "budget": {"usd": 2, "period": "month"}}]"#;
    let test = spend_app(&fake, keys, &[]);
    for _ in 0..2 {
        assert_eq!(test.app.handle(as_key("sk-team", DALLE)).await.status(), 200);
    }
    assert_eq!(test.app.handle(as_key("sk-other", DALLE)).await.status(), 200);
    test.settled().await;
    let answer = test.app.handle(usage_of("sk-team")).await;
    assert_eq!(answer.status(), 200);
    let (start, end) = Period::Day.bounds(NOW_MS / 1000);
    let window = NOW_MS / 1000 / 60 * 60;
    assert_eq!(
        json(&answer),
        serde_json::json!({
            "object": "usage", "key": "team",
            "period": {"type": "day", "start": start, "end": end},
            "budget_usd": 1.0, "spent_usd": 0.08, "reserved_usd": 0.0, "remaining_usd": 0.92,
            "requests": 2, "images": 2,
            "window": {"start": window, "end": window + 60, "requests": 2, "images": 2, "limit_requests": 5, "limit_images": 4},
        })
    );
    assert_eq!(header(&answer, "x-ratelimit-remaining-requests"), Some("3"));
    // The other key sees its own month, without a window; the first key's figures never.
    let other = json(&test.app.handle(usage_of("sk-other")).await);
    assert_eq!(
        (other["key"].as_str(), other["spent_usd"].as_f64()),
        (Some("other"), Some(0.04))
    );
    assert_eq!(other["period"]["type"], "month");
    assert!(other.get("window").is_none());
    // A minute later the window counts nothing.
    test.clock.advance(Duration::from_secs(60));
    let later = json(&test.app.handle(usage_of("sk-team")).await);
    assert_eq!(
        (later["window"]["requests"].as_u64(), later["requests"].as_u64()),
        (Some(0), Some(2))
    );
}

#[tokio::test]
async fn usage_of_an_unlimited_key_is_all_null_and_reads_nothing() {
    let fake = FakeAzure::healthy().await;
    let test = spend_app(&fake, r#"[{"key": "sk-free", "name": "free"}]"#, &[]);
    let body = json(&test.app.handle(usage_of("sk-free")).await);
    assert_eq!(body["object"], "usage");
    assert_eq!(body["key"], "free");
    assert!(body["budget_usd"].is_null() && body["spent_usd"].is_null() && body["period"].is_null());
    assert_eq!(test.store.calls(), 0);
    openai_error(&test.app.handle(usage_of("sk-wrong")).await, 401);
}

#[tokio::test]
async fn usage_is_503_while_the_store_is_down() {
    let fake = FakeAzure::healthy().await;
    let keys = r#"[{"key": "sk-team", "name": "team", "budget": {"usd": 1, "period": "day"}}]"#;
    let test = spend_app(&fake, keys, &[("SPEND_LIMITS_ON_ERROR", "allow")]);
    test.store.set_down(true);
    let err = openai_error(&test.app.handle(usage_of("sk-team")).await, 503);
    assert_eq!(err["code"], "usage_store_unavailable");
}
