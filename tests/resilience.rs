//! Retries within the deadline, fallbacks, and how upstream faults reach the
//! client, against an in-process Azure stand-in that answers each fault.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use azure_openai_image::front::lambda;
use common::*;

const GEN: &str = "/v1/images/generations";
const FAST_429: &str = r#"{"error":{"code":"429","message":"Please retry after 1 second."}}"#;
const UNAVAILABLE: &str = r#"{"error":{"code":"server_error","message":"The service is temporarily unavailable."}}"#;

/// Three gpt-image deployments on the stand-in: `primary` falls back to
/// `third` by configuration; `second` is there for requests to name.
fn three_models(fake: &FakeAzure, settings: &[(&str, &str)]) -> TestApp {
    let models = format!(
        r#"[{{"name":"primary","model":"gpt-image-1","baseURL":"{}","apiVersion":"2025-04-01-preview","fallbacks":["third"]}},
            {{"name":"second","model":"gpt-image-1","baseURL":"{}","apiVersion":"2025-04-01-preview"}},
            {{"name":"third","model":"gpt-image-1","baseURL":"{}","apiVersion":"2025-04-01-preview"}},
            {{"name":"dall-e-3","model":"dall-e-3","baseURL":"{}","apiVersion":"2024-10-21"}}]"#,
        fake.base_url("primary-dep"),
        fake.base_url("second-dep"),
        fake.base_url("third-dep"),
        fake.base_url("dalle-dep"),
    );
    // No `azure-image` here for the team key to name: callers are not checked.
    let mut all = vec![("AUTH_MODE", "none")];
    all.extend_from_slice(settings);
    app_from(config_from(&models, &all), vec![Ok(AZURE_KEY.into())])
}

/// The standard test models with the retry settings under test.
fn retrying(fake: &FakeAzure, settings: &[(&str, &str)]) -> TestApp {
    // No `azure-image` here for the team key to name: callers are not checked.
    let mut all = vec![("AUTH_MODE", "none")];
    all.extend_from_slice(settings);
    app_from(config_with(fake, &all), vec![Ok(AZURE_KEY.into())])
}

fn deployments(fake: &FakeAzure) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|r| r.path.split('/').nth(3).unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_429_is_retried_after_the_wait_azure_asks_for() {
    let fake = FakeAzure::start(|req, n| {
        if n < 2 {
            Canned::json(429, FAST_429)
                .with_header("retry-after-ms", "150")
                .with_header("retry-after", "1")
        } else {
            success_for(req)
        }
    })
    .await;
    let test = retrying(&fake, &[]);
    let (response, log) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.requests().len(), 3, "two retries (the default)");
    assert_eq!(waits(&log), [0, 150, 150], "retry-after-ms wins over retry-after");
    assert_eq!(response.headers()["x-served-model"], "azure-image");
}

#[tokio::test]
async fn retry_after_in_seconds_and_as_a_date_are_honoured() {
    let fake = FakeAzure::start(move |req, n| match n {
        0 => Canned::json(503, UNAVAILABLE).with_header("retry-after", "1"),
        // HTTP dates count whole seconds: this one is 3 to 4 s away.
        1 => Canned::json(503, UNAVAILABLE).with_header(
            "retry-after",
            &httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4)),
        ),
        _ => success_for(req),
    })
    .await;
    let test = retrying(&fake, &[]);
    let (response, log) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    let waits = waits(&log);
    assert_eq!(waits[..2], [0, 1000], "seconds");
    // Backoff after a second failure is at most 1 s: 2 s or more can only be the date.
    assert!((2000..=4000).contains(&waits[2]), "the date: {waits:?}");
}

#[tokio::test]
async fn without_a_retry_after_the_wait_is_exponential_backoff() {
    let fake = FakeAzure::start(|req, n| {
        if n < 2 {
            Canned::json(500, UNAVAILABLE)
        } else {
            success_for(req)
        }
    })
    .await;
    let test = retrying(&fake, &[]);
    let (response, log) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    let waits = waits(&log);
    // 250-500 ms, then 500-1000 ms.
    assert!((250..=500).contains(&waits[1]), "{waits:?}");
    assert!((500..=1000).contains(&waits[2]), "{waits:?}");
}

#[tokio::test]
async fn retries_stop_at_max_retries_and_the_error_lists_the_attempts() {
    let fake = FakeAzure::start(|_, _| Canned::json(503, UNAVAILABLE).with_header("retry-after-ms", "10")).await;
    let test = retrying(&fake, &[("MAX_RETRIES", "3")]);
    let err = openai_error(&test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await, 502);
    assert_eq!(fake.requests().len(), 4);
    let message = err["message"].as_str().unwrap_or_default();
    assert_eq!(
        message.matches("azure-image: 503 upstream_error").count(),
        4,
        "{message}"
    );
}

#[tokio::test]
async fn other_4xx_are_not_retried() {
    for (status, body) in [
        (
            400,
            r#"{"error":{"code":"invalid_value","message":"bad","param":"size","type":"invalid_request_error"}}"#,
        ),
        (403, r#"{"error":{"code":"Forbidden","message":"blocked"}}"#),
        (404, r#"{"error":{"code":"DeploymentNotFound","message":"no"}}"#),
    ] {
        let fake = FakeAzure::start(move |_, _| Canned::json(status, body)).await;
        let test = retrying(&fake, &[]);
        let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
        assert!(
            response.status().is_client_error() || response.status() == 502,
            "{status}"
        );
        assert_eq!(fake.requests().len(), 1, "{status} must not be retried");
    }
}

#[tokio::test]
async fn an_attempt_that_timed_out_before_any_answer_is_retried() {
    let fake = FakeAzure::start(|req, n| {
        let answer = success_for(req);
        if n == 0 {
            answer.delayed(Duration::from_secs(5))
        } else {
            answer
        }
    })
    .await;
    let test = retrying(&fake, &[("UPSTREAM_TIMEOUT_SECONDS", "1")]);
    let (response, log) = handle_logged(&test.app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.requests().len(), 2);
    let upstream = log["upstream"].as_str().unwrap_or_default();
    assert!(upstream.contains("azure-image:none:upstream_timeout"), "{upstream}");
}

#[tokio::test]
async fn an_answer_whose_body_stalls_after_the_status_is_a_504_never_retried() {
    // The status came: Azure generated (and billed) the images. Only the body is late.
    let fake = FakeAzure::start(|_, _| {
        Canned::in_parts(vec![
            Part::Data(br#"{"created":1700000000,"data":[{"b64_json":"QUJD"#.to_vec()),
            Part::Pause(Duration::from_secs(5)),
        ])
    })
    .await;
    let test = retrying(&fake, &[("UPSTREAM_TIMEOUT_SECONDS", "1")]);
    let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(openai_error(&response, 504)["code"], "upstream_timeout");
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert_eq!(fake.requests().len(), 1, "no second bill");
}

#[tokio::test]
async fn connection_errors_are_retried_then_502() {
    let fake = FakeAzure::healthy().await;
    let test = retrying(&fake, &[("MAX_RETRIES", "1")]);
    fake.stop().await;
    let err = openai_error(&test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await, 502);
    assert_eq!(err["code"], "upstream_unreachable");
    assert_eq!(
        err["message"].as_str().unwrap_or_default().matches("no answer").count(),
        2
    );
}

#[tokio::test]
async fn a_wait_longer_than_the_deadline_allows_answers_429_at_once() {
    let fake = FakeAzure::start(|_, _| Canned::json(429, FAST_429).with_header("retry-after", "30")).await;
    let test = retrying(&fake, &[]);
    let req = with_deadline(post(GEN, r#"{"prompt":"x"}"#), Duration::from_secs(10));
    let (response, log) = handle_logged(&test.app, req).await;
    openai_error(&response, 429);
    assert_eq!(response.headers()["retry-after"], "30");
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(waits(&log), [0], "no wait began");
}

#[tokio::test]
async fn a_slow_upstream_under_the_lambda_deadline_answers_504_before_it() {
    let fake = FakeAzure::start(|req, _| success_for(req).delayed(Duration::from_secs(30))).await;
    let test = app_for(&fake);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/function-url-generation.json"
    ))
    .expect("event");
    let mut event = lambda_http::request::from_str(&text).expect("event");
    let mut context = lambda_http::Context::default();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    context.deadline = now_ms + 4000;
    context.request_id = "deadline-test".into();
    event.extensions_mut().insert(context);
    let started = Instant::now();
    let response = lambda::respond(&test.app, event).await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["x-request-id"], "deadline-test");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(4000) - Duration::from_millis(500),
        "answered at {elapsed:?}"
    );
}

#[tokio::test]
async fn fallbacks_run_in_order_request_first_then_configured() {
    let fake = FakeAzure::start(|req, _| match req.path.split('/').nth(3) {
        Some("primary-dep") => Canned::json(503, UNAVAILABLE).with_header("retry-after-ms", "10"),
        Some("second-dep") => Canned::json(404, r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#),
        _ => success_for(req),
    })
    .await;
    let test = three_models(&fake, &[]);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"primary","prompt":"x","fallbacks":["second"]}"#))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-model"], "third");
    assert_eq!(
        deployments(&fake),
        ["primary-dep", "primary-dep", "primary-dep", "second-dep", "third-dep"]
    );
    let bodies: Vec<_> = fake.requests().iter().map(|r| r.body.clone()).collect();
    assert!(
        bodies
            .iter()
            .all(|b| b.get("fallbacks").is_none() && b["model"] == "gpt-image-1")
    );
}

#[tokio::test]
async fn no_fallback_after_a_content_filter_or_validation_error() {
    let fake = FakeAzure::start(|_, _| {
        Canned::json(400, r#"{"error":{"code":"content_policy_violation","message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":"prompt"}}"#)
    })
    .await;
    let test = three_models(&fake, &[]);
    let err = openai_error(
        &test
            .app
            .handle(post(GEN, r#"{"model":"primary","prompt":"x","fallbacks":["second"]}"#))
            .await,
        400,
    );
    assert_eq!(err["code"], "content_policy_violation");
    assert_eq!(deployments(&fake), ["primary-dep"]);
}

#[tokio::test]
async fn when_all_fail_the_client_gets_the_primarys_error_with_the_attempts() {
    let fake = FakeAzure::start(|req, _| match req.path.split('/').nth(3) {
        Some("primary-dep") => Canned::json(429, FAST_429).with_header("retry-after-ms", "10"),
        _ => Canned::json(500, UNAVAILABLE).with_header("retry-after-ms", "10"),
    })
    .await;
    let test = three_models(&fake, &[("MAX_RETRIES", "1")]);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"primary","prompt":"x","fallbacks":["second"]}"#))
        .await;
    let err = openai_error(&response, 429);
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(response.headers().contains_key("retry-after"));
    let message = err["message"].as_str().unwrap_or_default();
    for attempt in ["primary: 429", "second: 500", "third: 500"] {
        assert!(message.contains(attempt), "{attempt} missing from: {message}");
    }
    assert_eq!(fake.requests().len(), 6);
}

#[tokio::test]
async fn request_fallbacks_are_checked_for_their_own_model_up_front() {
    let fake = FakeAzure::healthy().await;
    let test = three_models(&fake, &[]);
    let err = openai_error(
        &test
            .app
            .handle(post(
                GEN,
                r#"{"model":"primary","prompt":"x","n":2,"fallbacks":["dall-e-3"]}"#,
            ))
            .await,
        400,
    );
    assert_eq!(err["param"], "n");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("fallback model `dall-e-3`"))
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_configured_fallback_that_cannot_take_the_request_is_reported_not_dropped() {
    let fake = FakeAzure::start(|_, _| Canned::json(503, UNAVAILABLE)).await;
    let models = format!(
        r#"[{{"name":"primary","model":"gpt-image-1","baseURL":"{}","apiVersion":"v","fallbacks":["dall-e-3"]}},
            {{"name":"dall-e-3","model":"dall-e-3","baseURL":"{}","apiVersion":"2024-10-21"}}]"#,
        fake.base_url("primary-dep"),
        fake.base_url("dalle-dep"),
    );
    let test = app_from(
        config_from(&models, &[("AUTH_MODE", "none"), ("MAX_RETRIES", "0")]),
        vec![Ok(AZURE_KEY.into())],
    );
    let err = openai_error(
        &test
            .app
            .handle(post(GEN, r#"{"model":"primary","prompt":"x","n":2}"#))
            .await,
        502,
    );
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("skipped dall-e-3") && message.contains("n=1"),
        "{message}"
    );
    assert_eq!(deployments(&fake), ["primary-dep"]);
}

#[tokio::test]
async fn a_missing_deployment_falls_back_and_names_the_model_when_none_helps() {
    let fake =
        FakeAzure::start(|_, _| Canned::json(404, r#"{"error":{"code":"DeploymentNotFound","message":"missing"}}"#))
            .await;
    let test = three_models(&fake, &[]);
    let err = openai_error(
        &test.app.handle(post(GEN, r#"{"model":"primary","prompt":"x"}"#)).await,
        502,
    );
    assert_eq!(err["code"], "upstream_deployment_not_found");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("`primary`")));
    assert_eq!(deployments(&fake), ["primary-dep", "third-dep"]);
}

#[tokio::test]
async fn a_retry_after_past_any_clock_is_answered_at_once_not_a_panic() {
    let fake =
        FakeAzure::start(|_, _| Canned::json(429, FAST_429).with_header("retry-after", "18446744073709551615")).await;
    let test = retrying(&fake, &[]);
    for req in [
        post(GEN, r#"{"prompt":"x"}"#),
        with_deadline(post(GEN, r#"{"prompt":"x"}"#), Duration::from_secs(30)),
    ] {
        let (response, log) = handle_logged(&test.app, req).await;
        openai_error(&response, 429);
        assert_eq!(response.headers()["retry-after"], "86400", "bounded to a day");
        assert_eq!(waits(&log), [0], "a wait past MAX_RETRY_WAIT_SECONDS is not begun");
    }
}

#[tokio::test]
async fn a_huge_error_body_is_read_only_up_to_a_bound() {
    let fake = FakeAzure::start(|_, _| {
        let mut body = br#"{"error":{"code":"BadRequest","message":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 8 * 1024 * 1024));
        // The rest never comes: a connector that read it all would wait for ever.
        let never = Arc::new(tokio::sync::Notify::new());
        let mut answer = Canned::in_parts(vec![Part::Data(body), Part::Gate(never)]);
        answer.status = 400;
        answer
    })
    .await;
    let test = retrying(&fake, &[]);
    let response = tokio::time::timeout(Duration::from_secs(60), test.app.handle(post(GEN, r#"{"prompt":"x"}"#)))
        .await
        .expect("answered without the end of Azure's body");
    let err = openai_error(&response, 400);
    assert_eq!(
        err["message"],
        "The Azure deployment rejected the request with status 400."
    );
    assert!(
        response.body().len() < 64 * 1024,
        "no megabytes of Azure's text passed on"
    );
}
