//! The request flow end to end inside the process: routes, validation before
//! any upstream call, the secret cache, the Azure call and its failures, with
//! an in-process Azure stand-in that records what it received.

mod common;

use std::time::{Duration, Instant};

use azure_openai_image::secrets::SecretError;
use common::*;
use http::Method;

const GEN: &str = "/v1/images/generations";

#[tokio::test]
async fn openai_route_calls_the_deployment_with_the_configured_model_and_key() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"a fox","n":3,"size":"1536x1024","quality":"low","fallbacks":[],"new_param":"kept"}"#))
        .await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-request-id"], "req-test-1");

    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/openai/deployments/gpt-image-1/images/generations");
    assert_eq!(sent.query, "api-version=2025-04-01-preview");
    assert_eq!(sent.headers["api-key"], AZURE_KEY);
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(sent.body["model"], "gpt-image-1");
    assert_eq!(sent.body["n"], 3);
    assert_eq!(sent.body["new_param"], "kept", "unknown fields are forwarded");
    assert!(sent.body.get("fallbacks").is_none());

    let body = json(&response);
    assert_eq!(body["created"], 1700000000);
    assert_eq!(body["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["data"][2]["index"], 2);
    assert_eq!(body["usage"]["total_tokens"], 100);
    assert_eq!(body["quality"], "high");
}

#[tokio::test]
async fn a_request_without_model_goes_to_the_first_configured_model() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test.app.handle(post(GEN, r#"{"prompt":"a fox"}"#)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.requests()[0].body["model"], "gpt-image-1");
}

#[tokio::test]
async fn azure_route_selects_by_name_or_deployment_and_ignores_the_body_model() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    for path in [
        "/openai/deployments/dall-e-3/images/generations",
        "/openai/openai/deployments/dall-e-3/images/generations",
    ] {
        let response = test
            .app
            .handle(post(
                path,
                r#"{"model":"azure-image","prompt":"a fox","response_format":"b64_json"}"#,
            ))
            .await;
        assert_eq!(response.status(), 200, "{path}");
        let body = json(&response);
        assert_eq!(body["data"][0]["revised_prompt"], "revised");
        assert!(body["data"][0]["b64_json"].is_string());
    }
    for sent in fake.requests() {
        assert_eq!(sent.path, "/openai/deployments/dall-e-3/images/generations");
        assert_eq!(sent.query, "api-version=2024-10-21");
        assert_eq!(sent.body["model"], "dall-e-3");
        assert_eq!(sent.body["response_format"], "b64_json");
    }
    // A configured name works on the Azure route as well as the deployment segment.
    let response = test
        .app
        .handle(post(
            "/openai/deployments/azure-image/images/generations",
            r#"{"prompt":"x"}"#,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        fake.requests()[2].path,
        "/openai/deployments/gpt-image-1/images/generations"
    );
}

#[tokio::test]
async fn dall_e_3_urls_pass_through() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"dall-e-3","prompt":"a fox"}"#))
        .await;
    let body = json(&response);
    assert!(
        body["data"][0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://dalle.blob"))
    );
    assert_eq!(body["data"][0]["index"], 0);
    assert!(fake.requests()[0].body.get("response_format").is_none());
}

#[tokio::test]
async fn unknown_models_and_deployments_are_404_and_reach_no_upstream() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let err = openai_error(
        &test.app.handle(post(GEN, r#"{"model":"gpt-4o","prompt":"x"}"#)).await,
        404,
    );
    assert_eq!(err["code"], "model_not_found");
    assert_eq!(err["param"], "model");
    for path in [
        "/openai/deployments/other/images/generations",
        "/openai/deployments/../images/generations",
        "/openai/deployments/gpt-image-1%2F..%2F/images/generations",
        "/openai/deployments/%2e%2e/images/generations",
    ] {
        let response = test.app.handle(post(path, r#"{"prompt":"x"}"#)).await;
        assert_eq!(response.status(), 404, "{path}");
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn validation_errors_name_the_param_and_reach_no_upstream() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let cases = [
        (r#"{"model":"dall-e-3","prompt":"x","n":2}"#, "n"),
        (r#"{"model":"dall-e-3","prompt":"x","size":"1536x1024"}"#, "size"),
        (r#"{"model":"azure-image","prompt":"x","style":"vivid"}"#, "style"),
        (
            r#"{"model":"azure-image","prompt":"x","response_format":"url"}"#,
            "response_format",
        ),
        (r#"{"model":"azure-image","prompt":"x","quality":"hd"}"#, "quality"),
        (r#"{"model":"azure-image"}"#, "prompt"),
        (
            r#"{"model":"azure-image","prompt":"x","fallbacks":["nope"]}"#,
            "fallbacks",
        ),
        (r#"{"model":"azure-image","prompt":"x","n":"2"}"#, "n"),
    ];
    for (body, param) in cases {
        let err = openai_error(&test.app.handle(post(GEN, body)).await, 400);
        assert_eq!(err["param"], param, "{body}");
        assert_eq!(err["type"], "invalid_request_error");
    }
    let err = openai_error(&test.app.handle(post(GEN, "{not json")).await, 400);
    assert!(err["param"].is_null());
    assert!(fake.requests().is_empty());
    assert_eq!(test.secret_calls(), 0, "no key is fetched for a bad request");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let big = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(1024 * 1024));
    openai_error(&test.app.handle(post(GEN, &big)).await, 413);
}

#[tokio::test]
async fn many_requests_within_the_ttl_fetch_the_secret_once() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    for _ in 0..10 {
        let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(test.secret_calls(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_again_once_after_a_401() {
    let fake = FakeAzure::start(|req, _| {
        if req.headers["api-key"] == "new-key" {
            success_for(req)
        } else {
            Canned::json(401, r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#)
        }
    })
    .await;
    let test = app_with(&fake, vec![Ok("old-key".into()), Ok("new-key".into())]);
    let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(test.secret_calls(), 2);
    // The new key is cached: the next request makes one call and no fetch.
    assert_eq!(test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await.status(), 200);
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(test.secret_calls(), 2);
}

#[tokio::test]
async fn a_key_azure_refuses_twice_is_502_not_401() {
    let fake =
        FakeAzure::start(|_, _| Canned::json(401, r#"{"error":{"code":"401","message":"Access denied"}}"#)).await;
    let test = app_for(&fake);
    let err = openai_error(&test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await, 502);
    assert_eq!(err["code"], "upstream_auth_failed");
    assert_eq!(fake.requests().len(), 2, "one retry after refetching the key");
}

#[tokio::test]
async fn secrets_manager_down_is_503_and_the_next_request_tries_again() {
    let fake = FakeAzure::healthy().await;
    let test = app_with(
        &fake,
        vec![
            Err(SecretError::Unavailable("could not connect".into())),
            Ok(AZURE_KEY.into()),
        ],
    );
    let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    let err = openai_error(&response, 503);
    assert_eq!(err["code"], "secrets_unavailable");
    assert!(response.headers().contains_key("retry-after"));
    assert!(fake.requests().is_empty());
    assert_eq!(test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await.status(), 200);
}

#[tokio::test]
async fn an_unusable_secret_is_500_naming_no_secret() {
    let fake = FakeAzure::healthy().await;
    let test = app_with(
        &fake,
        vec![Err(SecretError::Unusable("the secret does not exist".into()))],
    );
    let err = openai_error(&test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await, 500);
    assert_eq!(err["code"], "secret_misconfigured");
    assert!(!err["message"].as_str().unwrap_or_default().contains("azure-openai-key"));
}

#[tokio::test]
async fn content_filter_keeps_its_code_and_filter_results() {
    let fake = FakeAzure::start(|_, _| {
        Canned::json(400, r#"{"error":{"code":"content_policy_violation","message":"Your request was rejected as a result of our safety system.","param":"prompt","type":"invalid_request_error","inner_error":{"code":"ResponsibleAIPolicyViolation","content_filter_results":{"violence":{"filtered":true,"severity":"high"}},"revised_prompt":"r"}}}"#)
    })
    .await;
    let test = app_for(&fake);
    let response = test.app.handle(post(GEN, r#"{"model":"dall-e-3","prompt":"x"}"#)).await;
    let err = openai_error(&response, 400);
    assert_eq!(err["code"], "content_policy_violation");
    assert_eq!(
        err["inner_error"]["content_filter_results"]["violence"]["filtered"],
        true
    );
    assert_eq!(json(&response)["extra_fields"]["model_requested"], "dall-e-3");
    assert_eq!(json(&response)["extra_fields"]["request_type"], "image_generation");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let fake = FakeAzure::start(|_, _| {
        Canned::json(
            429,
            r#"{"error":{"code":"429","message":"Please retry after 7 seconds."}}"#,
        )
        .with_header("retry-after", "7")
    })
    .await;
    let test = app_for(&fake);
    let response = test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    let err = openai_error(&response, 429);
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert_eq!(response.headers()["retry-after"], "7");
}

#[tokio::test]
async fn upstream_failures_map_to_gateway_errors() {
    let cases: [(u16, &str, u16, &str); 5] = [
        (
            500,
            r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":"server_error"}}"#,
            502,
            "upstream_error",
        ),
        (
            503,
            r#"{"error":{"code":"server_error","message":"unavailable"}}"#,
            502,
            "upstream_error",
        ),
        (
            404,
            r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#,
            502,
            "upstream_deployment_not_found",
        ),
        (
            403,
            r#"{"error":{"code":"Forbidden","message":"blocked"}}"#,
            502,
            "upstream_forbidden",
        ),
        (200, "<html>proxy error</html>", 502, "upstream_invalid_response"),
    ];
    for (azure_status, azure_body, status, code) in cases {
        let fake = FakeAzure::start(move |_, _| Canned::json(azure_status, azure_body)).await;
        let test = app_for(&fake);
        let err = openai_error(&test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await, status);
        assert_eq!(err["code"], code, "Azure {azure_status}");
    }
}

#[tokio::test]
async fn a_truncated_success_is_502() {
    let fake = FakeAzure::start(|_, _| Canned::json(200, r#"{"created":1,"data":[{"b64_json":"iVBORw0KGgo"#)).await;
    let test = app_for(&fake);
    let err = openai_error(&test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await, 502);
    assert_eq!(err["code"], "upstream_invalid_response");
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    fake.stop().await;
    let err = openai_error(&test.app.handle(post(GEN, r#"{"prompt":"x"}"#)).await, 502);
    assert_eq!(err["code"], "upstream_unreachable");
}

#[tokio::test]
async fn a_slow_upstream_answers_504_before_the_deadline() {
    let fake = FakeAzure::start(|req, _| success_for(req).delayed(Duration::from_secs(20))).await;
    let test = app_for(&fake);
    let started = Instant::now();
    let response = test
        .app
        .handle(with_deadline(post(GEN, r#"{"prompt":"x"}"#), Duration::from_secs(3)))
        .await;
    let err = openai_error(&response, 504);
    assert_eq!(err["code"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after the deadline: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_deadline_too_close_to_call_is_504_without_an_upstream_call() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(with_deadline(
            post(GEN, r#"{"prompt":"x"}"#),
            Duration::from_millis(500),
        ))
        .await;
    openai_error(&response, 504);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn models_lists_every_configured_name() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test.app.handle(request(Method::GET, "/v1/models", "")).await;
    assert_eq!(response.status(), 200);
    let body = json(&response);
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["azure-image", "dall-e-3"]);
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["owned_by"], "azure");
}

#[tokio::test]
async fn health_answers_without_touching_secrets_manager() {
    let fake = FakeAzure::healthy().await;
    let test = app_with(&fake, vec![Err(SecretError::Unavailable("down".into()))]);
    let response = test.app.handle(request(Method::GET, "/health", "")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(test.secret_calls(), 0);
    let head = test.app.handle(request(Method::HEAD, "/health", "")).await;
    assert_eq!(head.status(), 200);
    assert!(head.body().is_empty());
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let err = openai_error(&test.app.handle(post("/v1/chat/completions", "{}")).await, 404);
    assert_eq!(err["code"], "not_found");
    let response = test.app.handle(request(Method::GET, GEN, "")).await;
    openai_error(&response, 405);
    assert_eq!(response.headers()["allow"], "POST");
    let response = test.app.handle(request(Method::DELETE, "/v1/models", "")).await;
    openai_error(&response, 405);
    assert_eq!(response.headers()["allow"], "GET");
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn every_error_names_the_model_the_client_asked_for() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let asked = |response: &http::Response<Vec<u8>>| json(response)["extra_fields"]["model_requested"].clone();

    let too_many = test
        .app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"x","n":50}"#))
        .await;
    assert_eq!(openai_error(&too_many, 400)["param"], "n");
    assert_eq!(asked(&too_many), "azure-image");

    let wrong_key = with_header(
        post(GEN, r#"{"model":"dall-e-3","prompt":"x"}"#),
        "authorization",
        "Bearer not-a-key",
    );
    let refused = test.app.handle(wrong_key).await;
    openai_error(&refused, 401);
    assert_eq!(asked(&refused), "dall-e-3");

    let azure_route = test
        .app
        .handle(post(
            "/openai/deployments/dall-e-3/images/generations",
            r#"{"prompt":""}"#,
        ))
        .await;
    assert_eq!(openai_error(&azure_route, 400)["param"], "prompt");
    assert_eq!(asked(&azure_route), "dall-e-3");

    let not_json = test.app.handle(post(GEN, r#"{"model":"azure-image","prompt":"#)).await;
    openai_error(&not_json, 400);
    assert!(asked(&not_json).is_null(), "a body that does not parse names nothing");
    assert!(fake.requests().is_empty(), "none of these reached Azure");
}

/// Secrets Manager that takes the call and never answers.
struct Silent;

impl azure_openai_image::secrets::SecretSource for Silent {
    fn fetch<'a>(&'a self, secret_id: &'a str) -> azure_openai_image::secrets::SecretFuture<'a> {
        if secret_id == CLIENT_KEYS_SECRET {
            return Box::pin(async { Ok(CLIENT_KEYS.to_owned()) });
        }
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_secret_fetch_is_bounded_by_the_request_deadline() {
    let fake = FakeAzure::healthy().await;
    let app = std::sync::Arc::new(
        azure_openai_image::App::new(
            config_for(&fake),
            std::sync::Arc::new(Silent),
            azure_openai_image::azure::AzureClient::new().expect("client"),
        )
        .with_metrics(azure_openai_image::observe::MetricsSink::new(
            "AzureOpenAIImage",
            |_| {},
        )),
    );
    let req = with_deadline(post(GEN, r#"{"prompt":"x"}"#), Duration::from_secs(3));
    // Only a hang guard: without the bound the fetch would wait for ever.
    let response = tokio::time::timeout(Duration::from_secs(60), app.handle(req))
        .await
        .expect("an answer while the secret fetch still hangs");
    assert_eq!(openai_error(&response, 503)["code"], "secrets_unavailable");
    assert!(response.headers().contains_key("retry-after"));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn client_text_reaches_the_log_line_bounded() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let huge = "9".repeat(300_000);
    let body = format!(r#"{{"model":"{huge}","prompt":"x","size":"{huge}","quality":"{huge}"}}"#);
    let (response, log) = handle_logged(&test.app, post(GEN, &body)).await;
    openai_error(&response, 404);
    let line = log.to_string();
    assert!(line.len() < 4096, "a {} byte log line", line.len());
    assert!(response.body().len() < 4096, "and a small answer");
}

#[test]
fn debug_output_never_carries_prompts_keys_or_upstream_urls() {
    let config = config_from(
        r#"[{"name":"img","model":"gpt-image-1","baseURL":"https://secret-resource.openai.azure.com/openai/deployments/d","apiVersion":"2025-04-01-preview"}]"#,
        &[],
    );
    let printed = format!("{config:?}");
    assert!(!printed.contains("secret-resource"), "{printed}");
    let request =
        azure_openai_image::operation::GenerationRequest::parse(br#"{"prompt":"my private words"}"#).expect("valid");
    assert!(!format!("{request:?}").contains("private"));
    let incoming = with_header(
        post(GEN, r#"{"prompt":"my private words"}"#),
        "api-key",
        "sk-very-secret",
    );
    let printed = format!("{incoming:?}");
    assert!(!printed.contains("private") && !printed.contains("sk-very-secret") && !printed.contains(CLIENT_KEY));
}

#[tokio::test]
async fn every_answer_logs_its_cost_from_what_azure_reported() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let (response, log) = handle_logged(&test.app, post(GEN, r#"{"model":"azure-image","prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200);
    // The stand-in reports 10 text and 40 image tokens in, 50 image tokens out:
    // gpt-image-1's list prices are $5, $10 and $40 per million.
    let cost = log["cost_usd"].as_f64().expect("a cost");
    assert!(
        (cost - (10.0 * 5.0 + 40.0 * 10.0 + 50.0 * 40.0) / 1e6).abs() < 1e-9,
        "{cost}"
    );
    let (_, log) = handle_logged(
        &test.app,
        post(
            GEN,
            r#"{"model":"dall-e-3","prompt":"x","size":"1792x1024","quality":"hd"}"#,
        ),
    )
    .await;
    assert_eq!(log["cost_usd"].as_f64(), Some(0.12), "dall-e-3 by size and quality");
}
