//! What an operator sees: the log line and the EMF record of a success, a
//! validation error and an upstream failure with retries and a fallback.

mod common;

use std::io::Write;
use std::sync::Arc;

use azure_openai_image::Config;
use azure_openai_image::observe::{MetricsSink, log_subscriber};
use common::*;
use serde_json::Value;

const GEN: &str = "/v1/images/generations";
const PROMPT: &str = "a very particular lighthouse at dawn";

/// Runs one request with logs and metrics captured; returns the request's log
/// line, its EMF record, the response status and every line written.
async fn observe(config: Config, req: azure_openai_image::exchange::Incoming) -> (Value, Value, u16, Vec<String>) {
    let logs = Captured::default();
    let metrics = Captured::default();
    let sink = metrics.clone();
    let (app, _) = unshared_app(config, vec![Ok(AZURE_KEY.into())]);
    let app = Arc::new(app.with_metrics(MetricsSink::new("AzureOpenAIImage", move |line| {
        let _ = writeln!(sink.clone(), "{line}");
    })));
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(log_subscriber(move || writer.clone()));
    let status = app.handle(req).await.status().as_u16();
    let lines = logs.lines();
    let line = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("every log line is JSON"))
        .find(|l| l["message"] == "request")
        .expect("one request line");
    let emf = metrics.lines();
    assert_eq!(emf.len(), 1, "one EMF record per generation");
    let mut all = lines.clone();
    all.extend(emf.iter().cloned());
    for text in &all {
        assert!(!text.contains(PROMPT), "a prompt reached the logs: {text}");
        assert!(
            !text.contains(AZURE_KEY) && !text.contains(CLIENT_KEY) && !text.contains(TEAM_A_KEY),
            "a key reached the logs: {text}"
        );
    }
    (line, emf_record(&emf[0]), status, all)
}

fn body(model: &str, extra: &str) -> String {
    format!(r#"{{"model":"{model}","prompt":"{PROMPT}"{extra}}}"#)
}

#[tokio::test]
async fn a_success_logs_who_what_how_long_and_how_much() {
    let fake = FakeAzure::healthy().await;
    let req = with_header(
        post(
            GEN,
            &body("azure-image", r#","n":2,"size":"1024x1024","quality":"low""#),
        ),
        "authorization",
        &format!("Bearer {TEAM_A_KEY}"),
    );
    let (log, emf, status, _) = observe(config_for(&fake), req).await;
    assert_eq!(status, 200);
    assert_eq!(log["level"], "INFO");
    for (field, value) in [
        ("request_id", "req-test-1"),
        ("route", "openai_generations"),
        ("client", "team-a"),
        ("model_requested", "azure-image"),
        ("model", "azure-image"),
        ("served_model", "azure-image"),
        ("azure_model", "gpt-image-1"),
        ("deployment", "gpt-image-1"),
        ("size", "1024x1024"),
        ("quality", "low"),
    ] {
        assert_eq!(log[field], value, "{field} in {log}");
    }
    assert_eq!(log["n"], 2);
    assert_eq!(log["stream"], false);
    assert_eq!(log["status"], 200);
    assert_eq!(log["fallback_used"], false);
    assert_eq!(log["upstream_attempts"], 1);
    assert_eq!(log["images"], 2);
    assert_eq!(
        (
            log["input_tokens"].as_u64(),
            log["output_tokens"].as_u64(),
            log["image_tokens"].as_u64()
        ),
        (Some(50), Some(50), Some(40))
    );
    assert_eq!(log["prompt_chars"], PROMPT.len());
    assert!(log["upstream_ms"].is_u64() && log["total_ms"].is_u64() && log["bytes_out"].as_u64() > Some(100));
    assert!(log.get("error_code").is_none());

    assert_eq!(emf["Model"], "azure-image");
    assert_eq!((emf["Requests"].as_u64(), emf["Images"].as_u64()), (Some(1), Some(2)));
    assert_eq!(
        (emf["InputTokens"].as_u64(), emf["OutputTokens"].as_u64()),
        (Some(50), Some(50))
    );
    assert!(emf["UpstreamLatency"].is_u64() && emf["TotalLatency"].is_u64());
    assert!(emf.get("Errors").is_none());
}

#[tokio::test]
async fn a_validation_error_logs_its_code_and_counts_an_error() {
    let fake = FakeAzure::healthy().await;
    let (log, emf, status, _) = observe(config_for(&fake), post(GEN, &body("dall-e-3", r#","n":4"#))).await;
    assert_eq!(status, 400);
    assert_eq!(log["error_code"], "integer_above_max_value");
    assert_eq!(log["upstream_attempts"], 0);
    assert!(log.get("upstream_ms").is_none());
    assert_eq!(emf["Errors"], 1);
    assert_eq!(emf["ErrorCode"], "integer_above_max_value");
    assert_eq!(emf["Model"], "dall-e-3");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn retries_and_a_fallback_show_every_upstream_status() {
    let fake = FakeAzure::start(|req, _| {
        if req.path.contains("/primary-dep/") {
            Canned::json(503, r#"{"error":{"code":"server_error","message":"busy"}}"#)
                .with_header("retry-after-ms", "5")
        } else {
            success_for(req)
        }
    })
    .await;
    let models = format!(
        r#"[{{"name":"primary","model":"gpt-image-1","baseURL":"{}","apiVersion":"v","fallbacks":["backup"]}},
            {{"name":"backup","model":"gpt-image-1","baseURL":"{}","apiVersion":"v"}}]"#,
        fake.base_url("primary-dep"),
        fake.base_url("backup-dep")
    );
    let config = config_from(&models, &[("AUTH_MODE", "none"), ("MAX_RETRIES", "1")]);
    let (log, emf, status, all) = observe(config, post(GEN, &body("primary", ""))).await;
    assert_eq!(status, 200);
    assert_eq!(log["model"], "primary");
    assert_eq!(log["served_model"], "backup");
    assert_eq!(log["fallback_used"], true);
    assert_eq!(log["upstream_attempts"], 3);
    let upstream = log["upstream"].as_str().unwrap_or_default();
    assert_eq!(upstream.matches("primary:503:upstream_error").count(), 2, "{upstream}");
    assert!(upstream.contains("backup:200:ok"), "{upstream}");
    assert!(all.iter().any(|l| l.contains("trying a fallback model")));
    assert_eq!(emf["Model"], "backup");
}

#[tokio::test]
async fn an_upstream_failure_logs_and_counts_its_code() {
    let fake =
        FakeAzure::start(|_, _| Canned::json(500, r#"{"error":{"code":"server_error","message":"boom"}}"#)).await;
    let (log, emf, status, _) = observe(config_for(&fake), post(GEN, &body("azure-image", ""))).await;
    assert_eq!(status, 502);
    assert_eq!(log["error_code"], "upstream_error");
    assert!(
        log["upstream"]
            .as_str()
            .is_some_and(|u| u.contains("azure-image:500:upstream_error"))
    );
    assert_eq!(emf["ErrorCode"], "upstream_error");
    assert!(emf["UpstreamLatency"].is_u64());
}

#[tokio::test]
async fn an_answer_that_breaks_off_logs_its_code_and_counts_an_error() {
    let fake = FakeAzure::start(|_, _| breaking_success(200_000)).await;
    let (log, emf, status, _) = observe(config_for(&fake), post(GEN, &body("azure-image", ""))).await;
    assert_eq!(status, 200, "the status went out before the break");
    assert_eq!(log["error_code"], "upstream_unreachable");
    assert!(log["bytes_out"].as_u64().is_some_and(|b| b > 64 * 1024), "{log}");
    assert_eq!(emf["Errors"], 1);
    assert_eq!(emf["ErrorCode"], "upstream_unreachable");
}

#[tokio::test]
async fn a_large_answer_is_logged_when_its_last_byte_is_out() {
    let fake = FakeAzure::start(|_, _| {
        let body = format!(
            r#"{{"created":1700000000,"data":[{{"b64_json":"{}"}},{{"b64_json":"QUJD"}}],"usage":{{"total_tokens":9,"input_tokens":4,"output_tokens":5}}}}"#,
            b64_of_len(200_000)
        );
        Canned::json(200, &body)
    })
    .await;
    let (log, emf, status, _) = observe(config_for(&fake), post(GEN, &body("azure-image", ""))).await;
    assert_eq!(status, 200);
    assert_eq!(log["images"], 2);
    assert_eq!(log["output_tokens"], 5);
    assert!(log["bytes_out"].as_u64().is_some_and(|b| b > 200_000), "{log}");
    assert!(log.get("error_code").is_none_or(Value::is_null), "{log}");
    assert_eq!(emf["Images"], 2);
    assert!(emf.get("Errors").is_none());
}

#[tokio::test]
async fn responses_carry_the_request_id_and_azures_request_id() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test.app.handle(post(GEN, &body("azure-image", ""))).await;
    assert_eq!(response.headers()["x-request-id"], "req-test-1");
    assert_eq!(response.headers()["x-upstream-request-id"], "apim-0001");
    let error = test.app.handle(post(GEN, "{")).await;
    assert_eq!(error.headers()["x-request-id"], "req-test-1");
    assert!(error.headers().get("x-upstream-request-id").is_none());
}
