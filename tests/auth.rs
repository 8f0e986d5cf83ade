//! Client keys: who may spend the Azure key, and that nothing a caller sends
//! reaches Azure but the request body's fields.

mod common;

use std::sync::Arc;

use azure_openai_image::App;
use azure_openai_image::azure::AzureClient;
use azure_openai_image::observe::MetricsSink;
use azure_openai_image::secrets::{ScriptedSource, SecretError};
use common::*;
use http::Method;

fn get(path: &str) -> azure_openai_image::exchange::Incoming {
    request(Method::GET, path, "")
}

const GEN: &str = "/v1/images/generations";
const BODY: &str = r#"{"model":"azure-image","prompt":"a fox"}"#;

#[tokio::test]
async fn a_known_bearer_key_is_served() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    assert_eq!(test.app.handle(post(GEN, BODY)).await.status(), 200);
}

#[tokio::test]
async fn azure_clients_authenticate_with_the_api_key_header() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let req = with_header(
        without_header(
            post("/openai/deployments/gpt-image-1/images/generations", BODY),
            "authorization",
        ),
        "api-key",
        CLIENT_KEY,
    );
    assert_eq!(test.app.handle(req).await.status(), 200);
}

#[tokio::test]
async fn no_key_or_a_wrong_key_is_401_invalid_api_key_and_reaches_nothing() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    for req in [
        without_header(post(GEN, BODY), "authorization"),
        with_header(post(GEN, BODY), "authorization", "Bearer sk-wrong"),
        with_header(without_header(post(GEN, BODY), "authorization"), "api-key", "sk-wrong"),
        with_header(post(GEN, BODY), "authorization", &format!("Basic {CLIENT_KEY}")),
        without_header(request(Method::GET, "/v1/models", ""), "authorization"),
    ] {
        let err = openai_error(&test.app.handle(req).await, 401);
        assert_eq!(err["code"], "invalid_api_key");
    }
    assert!(fake.requests().is_empty());
    assert_eq!(test.secret_calls(), 0, "no Azure key is fetched for a stranger");
}

#[tokio::test]
async fn a_key_restricted_to_some_models_gets_403_naming_the_model() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let team_a = |req| with_header(req, "authorization", &format!("Bearer {TEAM_A_KEY}"));
    assert_eq!(test.app.handle(team_a(post(GEN, BODY))).await.status(), 200);

    let err = openai_error(
        &test
            .app
            .handle(team_a(post(GEN, r#"{"model":"dall-e-3","prompt":"x"}"#)))
            .await,
        403,
    );
    assert_eq!(err["param"], "model");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("dall-e-3") && !m.contains(TEAM_A_KEY))
    );
    let err = openai_error(
        &test
            .app
            .handle(team_a(post(
                "/openai/deployments/dall-e-3/images/generations",
                r#"{"prompt":"x"}"#,
            )))
            .await,
        403,
    );
    assert_eq!(err["param"], "deployment-id");
    let err = openai_error(
        &test
            .app
            .handle(team_a(post(
                GEN,
                r#"{"model":"azure-image","prompt":"x","fallbacks":["dall-e-3"]}"#,
            )))
            .await,
        403,
    );
    assert_eq!(err["param"], "fallbacks");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn the_model_list_shows_only_what_the_key_may_use() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let req = with_header(
        request(Method::GET, "/v1/models", ""),
        "authorization",
        &format!("Bearer {TEAM_A_KEY}"),
    );
    let body = json(&test.app.handle(req).await);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["azure-image"]);
}

#[tokio::test]
async fn without_a_client_keys_secret_every_generation_is_401() {
    let fake = FakeAzure::healthy().await;
    let test = app_from(config_with(&fake, &[]), vec![Ok(AZURE_KEY.into())]);
    let err = openai_error(&test.app.handle(post(GEN, BODY)).await, 401);
    assert_eq!(err["code"], "invalid_api_key");
    assert_eq!(test.app.handle(request(Method::GET, "/health", "")).await.status(), 200);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn auth_mode_none_leaves_callers_to_the_front_door() {
    let fake = FakeAzure::healthy().await;
    let test = app_from(config_with(&fake, &[("AUTH_MODE", "none")]), vec![Ok(AZURE_KEY.into())]);
    let response = test.app.handle(without_header(post(GEN, BODY), "authorization")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn client_headers_never_reach_azure() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let mut req = post(GEN, BODY);
    for (name, value) in [
        ("x-forwarded-host", "evil.example"),
        ("host", "evil.example"),
        ("api-key", "client-supplied"),
        ("x-ms-region", "x"),
    ] {
        req = with_header(req, name, value);
    }
    assert_eq!(test.app.handle(req).await.status(), 200);
    let sent = &fake.requests()[0];
    assert_eq!(sent.headers["api-key"], AZURE_KEY);
    assert!(sent.headers.get("authorization").is_none());
    assert!(sent.headers.get("x-forwarded-host").is_none());
    assert!(sent.headers.get("x-ms-region").is_none());
    assert_eq!(sent.headers["host"], fake.addr.to_string());
}

#[tokio::test]
async fn a_body_that_is_not_json_by_content_type_is_400() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let err = openai_error(
            &test
                .app
                .handle(with_header(post(GEN, BODY), "content-type", content_type))
                .await,
            400,
        );
        assert_eq!(err["code"], "invalid_content_type", "{content_type}");
    }
    assert_eq!(
        test.app
            .handle(with_header(
                post(GEN, BODY),
                "content-type",
                "application/json; charset=utf-8"
            ))
            .await
            .status(),
        200
    );
    assert!(fake.requests().len() == 1);
}

fn app_with_client_keys(fake: &FakeAzure, client_keys: Vec<Result<String, SecretError>>, ttl: &str) -> Arc<App> {
    let config = config_with(
        fake,
        &[
            ("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET),
            ("SECRET_CACHE_TTL_SECONDS", ttl),
        ],
    );
    let source = ScriptedSource::new(vec![Ok(AZURE_KEY.to_owned())]).with(CLIENT_KEYS_SECRET, client_keys);
    Arc::new(
        App::new(config, Arc::new(source), AzureClient::new().expect("client"))
            .with_metrics(MetricsSink::new("AzureOpenAIImage", |_| {})),
    )
}

#[tokio::test]
async fn a_key_entry_with_a_typo_grants_nothing() {
    let fake = FakeAzure::healthy().await;
    let typo = r#"[{"key": "sk-example", "model": ["azure-image"]}]"#;
    let app = app_with_client_keys(&fake, vec![Ok(typo.to_owned())], "300");
    let response = app
        .handle(post("/v1/images/generations", r#"{"model":"dall-e-3","prompt":"x"}"#))
        .await;
    assert_eq!(openai_error(&response, 500)["code"], "secret_misconfigured");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn deleting_the_client_keys_secret_revokes_the_keys_an_outage_does_not() {
    let fake = FakeAzure::healthy().await;
    let gone = Err(SecretError::Unusable("the secret does not exist".into()));
    let revoked = app_with_client_keys(&fake, vec![Ok(CLIENT_KEYS.to_owned()), gone], "0");
    assert_eq!(revoked.handle(get("/v1/models")).await.status(), 200);
    assert_eq!(
        openai_error(&revoked.handle(get("/v1/models")).await, 500)["code"],
        "secret_misconfigured"
    );

    let down = Err(SecretError::Unavailable("could not connect".into()));
    let outage = app_with_client_keys(&fake, vec![Ok(CLIENT_KEYS.to_owned()), down], "0");
    assert_eq!(outage.handle(get("/v1/models")).await.status(), 200);
    assert_eq!(
        outage.handle(get("/v1/models")).await.status(),
        200,
        "a stale key serves through an outage"
    );
}
