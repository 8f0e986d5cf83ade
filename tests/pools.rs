//! Several Azure deployments behind one model name (a pool), against the
//! in-process stand-in serving each deployment on its own path: the split by
//! weight, a 429 sent on at once, the wait (or the 429) when every deployment
//! is cooling down, failures that move on and those that do not, fallbacks
//! after the whole pool, and what the log line and the metrics say.

mod common;

use std::sync::Arc;

use common::*;

const GEN: &str = "/v1/images/generations";
const THROTTLED: &str = r#"{"error":{"code":"429","message":"Requests to the ImageGenerations_Create Operation under Azure OpenAI API version 2025-04-01-preview have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after 55 seconds."}}"#;
const UNAVAILABLE: &str = r#"{"error":{"code":"server_error","message":"The service is temporarily unavailable."}}"#;
const FILTERED: &str = r#"{"error":{"code":"contentFilter","message":"Your request was rejected as a result of our safety system.","param":"prompt","type":"invalid_request_error"}}"#;

/// The deployment a request reached: the path segment after `deployments`.
fn deployment_of(req: &Recorded) -> String {
    req.path.split('/').nth(3).unwrap_or_default().to_owned()
}

fn reached(fake: &FakeAzure) -> Vec<String> {
    fake.requests().iter().map(deployment_of).collect()
}

fn count(reached: &[String], deployment: &str) -> usize {
    reached.iter().filter(|d| *d == deployment).count()
}

/// One `deployments` item on the stand-in: `deployment` with `extra` fields.
fn item(fake: &FakeAzure, deployment: &str, extra: &str) -> String {
    format!(
        r#"{{"baseURL":"{}","apiVersion":"2025-04-01-preview","name":"{deployment}"{extra}}}"#,
        fake.base_url(deployment)
    )
}

/// `azure-image`, a pool of `items`, falling back to `spare` (a deployment of its own).
fn pool_app(fake: &FakeAzure, items: &[String], settings: &[(&str, &str)]) -> TestApp {
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","deployments":[{}],"fallbacks":["spare"]}},
            {{"name":"spare","model":"gpt-image-1","baseURL":"{}","apiVersion":"2025-04-01-preview"}}]"#,
        items.join(","),
        fake.base_url("spare"),
    );
    let mut all = vec![("AUTH_MODE", "none")];
    all.extend_from_slice(settings);
    app_from(config_from(&models, &all), vec![Ok(AZURE_KEY.into())])
}

/// East, west and north, of weight 1 unless `weights` say otherwise.
fn three(fake: &FakeAzure, weights: [u32; 3], settings: &[(&str, &str)]) -> TestApp {
    let items: Vec<String> = ["east", "west", "north"]
        .iter()
        .zip(weights)
        .map(|(d, w)| item(fake, d, &format!(r#","weight":{w}"#)))
        .collect();
    pool_app(fake, &items, settings)
}

fn throttled(retry_after: &str) -> Canned {
    Canned::json(429, THROTTLED)
        .with_header("retry-after", retry_after)
        .with_header("x-ratelimit-remaining-requests", "0")
}

/// The `upstream` list of a log line.
fn upstream(line: &serde_json::Value) -> Vec<String> {
    let text = line["upstream"].as_str().expect("upstream");
    serde_json::from_str(text).expect("a list of strings")
}

#[tokio::test]
async fn requests_split_by_weight() {
    let fake = FakeAzure::healthy().await;
    let items = [item(&fake, "east", r#","weight":3"#), item(&fake, "west", "")];
    let test = pool_app(&fake, &items, &[]);
    for _ in 0..200 {
        assert_eq!(test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await.status(), 200);
    }
    let reached = reached(&fake);
    assert_eq!(reached.len(), 200, "one attempt each");
    // 3:1 is 150:50; 30 either way is about five standard deviations.
    let east = count(&reached, "east");
    assert!((120..=180).contains(&east), "east {east} of 200");
    assert_eq!(east + count(&reached, "west"), 200);
}

#[tokio::test]
async fn a_429_goes_on_at_once_to_another_deployment_and_cools_the_first_down() {
    // East takes almost every first pick by weight; it is full for the next 55 s.
    let fake = FakeAzure::start(|req, _| match deployment_of(req).as_str() {
        "east" => throttled("55"),
        _ => success_for(req),
    })
    .await;
    let test = three(&fake, [1000, 1, 1], &[]);
    let mut lines = Vec::new();
    for _ in 0..10 {
        let (response, line) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
        assert_eq!(response.status(), 200);
        assert!(
            waits(&line).iter().all(|w| *w == 0),
            "no wait while one has room: {line}"
        );
        lines.push(line);
    }
    let reached = reached(&fake);
    assert_eq!(count(&reached, "east"), 1, "cooling down after its 429: {reached:?}");
    assert_eq!(reached.len(), 11);
    let spilled = lines
        .iter()
        .find(|l| l["upstream_attempts"] == 2)
        .expect("the request east refused");
    let attempts = upstream(spilled);
    assert!(
        attempts[0].starts_with("azure-image@east:429:rate_limit_exceeded:"),
        "{attempts:?}"
    );
    assert!(
        attempts[1].starts_with("azure-image@west:200:ok:") || attempts[1].starts_with("azure-image@north:200:ok:")
    );
    assert_ne!(spilled["pool_deployment"], "east");
    assert_eq!(
        spilled["served_model"], "azure-image",
        "no fallback while the pool has room"
    );
}

#[tokio::test]
async fn when_every_deployment_cools_down_briefly_the_request_waits_for_the_first() {
    // retry-after-ms wins over retry-after, as in Azure's own SDKs.
    let fake = FakeAzure::start(|req, n| {
        if n < 3 {
            throttled("3").with_header("retry-after-ms", "2000")
        } else {
            success_for(req)
        }
    })
    .await;
    let test = three(&fake, [1, 1, 1], &[]);
    let (response, line) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    let reached = reached(&fake);
    let mut first_three = reached[..3].to_vec();
    first_three.sort();
    assert_eq!(first_three, ["east", "north", "west"], "each once before any wait");
    // Until the first frees up: 2 s after its 429, less the time the other two attempts took.
    let waits = waits(&line);
    assert_eq!(waits[..3], [0, 0, 0], "no wait while one has room");
    assert!(
        (1..=2000).contains(&waits[3]),
        "2 s is within POOL_MAX_WAIT_SECONDS (5): {waits:?}"
    );
    assert_eq!(waits.len(), 4);
}

#[tokio::test]
async fn when_every_deployment_cools_down_for_long_the_client_hears_429_with_retry_after_at_once() {
    let fake = FakeAzure::start(|_, _| throttled("55")).await;
    let test = three(
        &fake,
        [1, 1, 1],
        &[("MAX_RETRIES", "5"), ("MAX_RETRY_WAIT_SECONDS", "1")],
    );
    let (response, line) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    let err = openai_error(&response, 429);
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert_eq!(response.headers()["retry-after"], "55");
    assert_eq!(waits(&line), [0, 0, 0, 0], "a 55 s cooldown is never waited out");
    // The configured fallback is tried only after every deployment had its chance.
    let first = reached(&fake);
    assert_eq!(count(&first, "spare"), 1);
    assert_eq!(first.last().map(String::as_str), Some("spare"), "{first:?}");
    assert_eq!(first.len(), 4);

    // The next request learns from the pool: no deployment is asked again while it cools down.
    let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    openai_error(&response, 429);
    assert_eq!(
        response.headers()["retry-after"],
        "55",
        "what is left of 55 s, rounded up"
    );
    let second = reached(&fake);
    assert_eq!(
        second[4..],
        ["spare"],
        "no deployment of the pool was asked again: {second:?}"
    );
}

#[tokio::test]
async fn a_deployment_that_refuses_connections_is_left_for_the_others() {
    let fake = FakeAzure::healthy().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let down = format!("http://{}/openai/deployments/down", closed.local_addr().expect("addr"));
    drop(closed);
    let items = [
        format!(r#"{{"baseURL":"{down}","apiVersion":"2025-04-01-preview","name":"down","weight":1000}}"#),
        item(&fake, "west", ""),
        item(&fake, "north", ""),
    ];
    let test = pool_app(&fake, &items, &[]);
    let mut lines = Vec::new();
    for _ in 0..10 {
        let (response, line) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
        assert_eq!(response.status(), 200);
        assert!(waits(&line).iter().all(|w| *w == 0), "{line}");
        lines.push(line);
    }
    let tries_down: usize = lines
        .iter()
        .flat_map(upstream)
        .filter(|a| a.starts_with("azure-image@down:none:upstream_unreachable"))
        .count();
    assert_eq!(tries_down, 1, "cooling down after its failure");
    assert_eq!(reached(&fake).len(), 10, "the others served every request");
}

#[tokio::test]
async fn a_content_filter_tries_no_other_deployment() {
    let fake = FakeAzure::start(|_, _| Canned::json(400, FILTERED)).await;
    let test = three(&fake, [1, 1, 1], &[("MAX_RETRIES", "2")]);
    let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    let err = openai_error(&response, 400);
    assert_eq!(err["code"], "content_policy_violation");
    assert_eq!(reached(&fake).len(), 1, "the request's fault: one attempt");
}

#[tokio::test]
async fn a_success_that_breaks_off_is_never_tried_again() {
    let fake = FakeAzure::start(|_, _| breaking_success(10_000)).await;
    let test = three(&fake, [1, 1, 1], &[]);
    let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    assert!(response.status().as_u16() >= 500);
    assert_eq!(reached(&fake).len(), 1, "billed: no other deployment, no fallback");
    assert_eq!(response.headers()["x-should-retry"], "false");
}

#[tokio::test]
async fn failures_move_on_through_the_pool_before_any_fallback() {
    let fake = FakeAzure::start(|req, _| match deployment_of(req).as_str() {
        "spare" => success_for(req),
        _ => Canned::json(503, UNAVAILABLE),
    })
    .await;
    let test = three(&fake, [1, 1, 1], &[("MAX_RETRIES", "0")]);
    let (response, line) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-model"], "spare");
    let reached = reached(&fake);
    let mut pool_part = reached[..3].to_vec();
    pool_part.sort();
    assert_eq!(pool_part, ["east", "north", "west"]);
    assert_eq!(reached[3], "spare");
    assert_eq!(waits(&line), [0, 0, 0, 0], "503s move on at once");
    assert_eq!(line["fallback_used"], true);
}

#[tokio::test]
async fn max_retries_bounds_the_attempts_on_each_deployment() {
    let fake = FakeAzure::start(|_, _| Canned::json(500, UNAVAILABLE)).await;
    let items = [item(&fake, "east", ""), item(&fake, "west", "")];
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","deployments":[{}]}}]"#,
        items.join(",")
    );
    let test = app_from(
        config_from(&models, &[("AUTH_MODE", "none"), ("MAX_RETRIES", "1")]),
        vec![Ok(AZURE_KEY.into())],
    );
    let (response, line) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    openai_error(&response, 502);
    let reached = reached(&fake);
    assert_eq!(
        (count(&reached, "east"), count(&reached, "west")),
        (2, 2),
        "{reached:?}"
    );
    // Each failed once and cooled down for 1 s: the request waited for the first to free up.
    let waits = waits(&line);
    assert_eq!(waits[..2], [0, 0]);
    assert!((1..=1000).contains(&waits[2]), "{waits:?}");
    assert_eq!(waits.len(), 4);
}

#[tokio::test]
async fn the_deployment_azure_says_has_most_room_is_preferred() {
    let fake = FakeAzure::start(|req, _| {
        let left = if deployment_of(req) == "east" { "2" } else { "40" };
        success_for(req).with_header("x-ratelimit-remaining-requests", left)
    })
    .await;
    let items = [item(&fake, "east", r#","weight":1000"#), item(&fake, "west", "")];
    let test = pool_app(&fake, &items, &[]);
    // A deployment not heard from counts as full: the first two requests reach one each. From
    // then on the pool knows west has more room, whatever the weights.
    for _ in 0..2 {
        assert_eq!(test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await.status(), 200);
    }
    let mut first_two = reached(&fake);
    first_two.sort();
    assert_eq!(first_two, ["east", "west"]);
    let before = reached(&fake).len();
    for _ in 0..10 {
        test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    }
    assert_eq!(count(&reached(&fake)[before..], "west"), 10);
}

#[tokio::test]
async fn each_deployment_gets_its_own_body_url_and_key() {
    let fake = FakeAzure::healthy().await;
    let v1 = format!("http://{}/openai/v1", fake.addr);
    let items = [
        format!(r#"{{"baseURL":"{v1}","deployment":"img-east","name":"east","apiKeySecretId":"east-key"}}"#),
        format!(
            r#"{{"baseURL":"{v1}","deployment":"img-west","name":"west","auth":{{"type":"api-key","secretId":"west-key"}}}}"#
        ),
    ];
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","deployments":[{}]}}]"#,
        items.join(",")
    );
    let config = config_from(&models, &[("AUTH_MODE", "none")]);
    let source = azure_openai_image::secrets::ScriptedSource::new(Vec::new())
        .with("east-key", vec![Ok("key-of-east".to_owned())])
        .with("west-key", vec![Ok("key-of-west".to_owned())]);
    let app = azure_openai_image::App::new(
        config,
        Arc::new(source),
        azure_openai_image::azure::AzureClient::new().expect("client"),
    );
    let app = Arc::new(app);
    // Equal weights: 40 requests reach both (each misses with odds of 2^-40).
    for _ in 0..40 {
        assert_eq!(app.handle(post(GEN, r#"{"prompt":"x"}"#)).await.status(), 200);
    }
    let mut models: Vec<String> = fake.requests().iter().map(|r| r.body["model"].to_string()).collect();
    models.sort();
    models.dedup();
    assert_eq!(models, [r#""img-east""#, r#""img-west""#]);
    for req in fake.requests() {
        assert_eq!(req.path, "/openai/v1/images/generations");
        let key = req.headers["api-key"].to_str().expect("key");
        match req.body["model"].as_str() {
            Some("img-east") => assert_eq!(key, "key-of-east"),
            Some("img-west") => assert_eq!(key, "key-of-west"),
            other => panic!("the body names its deployment: {other:?}"),
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_throttles_and_errors_by_deployment() {
    use std::io::Write;
    let fake = FakeAzure::start(|req, _| match deployment_of(req).as_str() {
        "east" => throttled("55"),
        "west" => Canned::json(503, UNAVAILABLE),
        _ => success_for(req),
    })
    .await;
    let items = [
        item(&fake, "east", r#","weight":1000"#),
        item(&fake, "west", r#","weight":1000"#),
        item(&fake, "north", ""),
    ];
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","deployments":[{}]}}]"#,
        items.join(",")
    );
    let (app, _) = unshared_app(
        config_from(&models, &[("AUTH_MODE", "none"), ("MAX_RETRIES", "0")]),
        vec![Ok(AZURE_KEY.into())],
    );
    let metrics = Captured::default();
    let sink = metrics.clone();
    let app = Arc::new(app.with_metrics(azure_openai_image::observe::MetricsSink::new(
        "AzureOpenAIImage",
        move |line| {
            let _ = writeln!(sink.clone(), "{line}");
        },
    )));
    let (response, line) = handle_logged(&app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        line["pool_deployment"], "north",
        "the log line names the deployment that served"
    );
    assert_eq!(line["deployment"], "north");
    let records: Vec<serde_json::Value> = metrics.lines().iter().map(|l| emf_record(l)).collect();
    let by = |deployment: &str| {
        records
            .iter()
            .find(|r| r["Deployment"] == deployment)
            .unwrap_or_else(|| panic!("no record for {deployment}: {records:?}"))
    };
    for (deployment, throttles, errors) in [("east", 1, 0), ("west", 0, 1), ("north", 0, 0)] {
        let record = by(deployment);
        assert_eq!(record["Model"], "azure-image");
        assert_eq!(
            (
                record["Requests"].as_u64(),
                record["Throttles"].as_u64(),
                record["Errors"].as_u64()
            ),
            (Some(1), Some(throttles), Some(errors)),
            "{deployment}"
        );
        assert!(record["UpstreamLatency"].is_u64());
        assert_eq!(
            record["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["Model", "Deployment"]])
        );
    }
    assert_eq!(records.len(), 4, "the request's record, and one per deployment tried");
}

#[tokio::test]
async fn a_refused_key_is_fetched_again_and_the_same_deployment_asked_at_once() {
    let fake = FakeAzure::start(|req, _| {
        let key = req.headers.get("api-key").and_then(|k| k.to_str().ok()).unwrap_or_default();
        match (deployment_of(req).as_str(), key) {
            ("east", "rotated-east-key") => success_for(req),
            ("east", _) => Canned::json(401, r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#),
            _ => Canned::json(503, UNAVAILABLE),
        }
    })
    .await;
    let items = [
        item(&fake, "east", r#","weight":1000,"apiKeySecretId":"east-key""#),
        item(&fake, "west", ""),
    ];
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","deployments":[{}]}}]"#,
        items.join(",")
    );
    let source = azure_openai_image::secrets::ScriptedSource::new(vec![Ok(AZURE_KEY.into())]).with(
        "east-key",
        vec![Ok("old-east-key".to_owned()), Ok("rotated-east-key".to_owned())],
    );
    let app = Arc::new(azure_openai_image::App::new(
        config_from(&models, &[("AUTH_MODE", "none"), ("MAX_RETRIES", "0")]),
        Arc::new(source),
        azure_openai_image::azure::AzureClient::new().expect("client"),
    ));
    let (response, line) = handle_logged(&app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    let reached = reached(&fake);
    assert_eq!(reached[reached.len() - 2..], ["east", "east"], "{reached:?}");
    let attempts = upstream(&line);
    let n = attempts.len();
    assert!(
        attempts[n - 2].starts_with("azure-image@east:401:key_rejected:"),
        "{attempts:?}"
    );
    assert!(attempts[n - 1].starts_with("azure-image@east:200:ok:"), "{attempts:?}");
}
