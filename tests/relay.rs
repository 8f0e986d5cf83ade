//! Large answers on a front door that streams: sent on while Azure's body
//! arrives, and cut off, never ended, when Azure's body breaks after the
//! answer has started. Before that point, and on buffered front doors, a
//! broken body is an ordinary upstream failure: a 502, retried.

mod common;

use std::sync::Arc;
use std::time::Duration;

use azure_openai_image::App;
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;

const GEN: &str = "/v1/images/generations";
const REQUEST: &str = r#"{"model":"azure-image","prompt":"a lighthouse"}"#;
/// Well past the point an answer is committed (64 KiB).
const LARGE: usize = 300_000;

/// An Azure gpt-image body with one image of `len` base64 characters.
fn large_body(len: usize) -> Vec<u8> {
    format!(
        r#"{{"created":1700000000,"data":[{{"b64_json":"{}"}}],"usage":{{"total_tokens":9,"input_tokens":4,"output_tokens":5,"input_tokens_details":{{"text_tokens":4,"image_tokens":0}}}}}}"#,
        b64_of_len(len)
    )
    .into_bytes()
}

/// Serves `app` on a local listener, as `--listen` does; its address.
async fn listen(app: Arc<App>) -> String {
    let listener = azure_openai_image::front::local::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(azure_openai_image::front::local::serve(listener, app));
    format!("http://{addr}{GEN}")
}

async fn post_to(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json")
        .body(REQUEST)
        .send()
        .await
        .expect("an answer")
}

#[tokio::test]
async fn a_large_answer_starts_before_azure_has_sent_all_of_it() {
    // The stand-in holds the rest of its body until the client has the first piece.
    let rest_may_come = Arc::new(tokio::sync::Notify::new());
    let gate = rest_may_come.clone();
    let fake = FakeAzure::start(move |_, _| {
        let body = large_body(LARGE);
        Canned::in_parts(vec![
            Part::Data(body[..200_000].to_vec()),
            Part::Gate(gate.clone()),
            Part::Data(body[200_000..].to_vec()),
        ])
    })
    .await;
    let test = app_for(&fake);
    let response = test.app.respond(post(GEN, REQUEST)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-served-model"], "azure-image");
    let mut body = response.into_body();
    // Only a hang guard: a relay that waited for the whole body would never give a first piece.
    let first = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("the first piece came while Azure still held the rest")
        .expect("a first piece")
        .expect("not broken")
        .into_data()
        .expect("data");
    assert!(first.starts_with(br#"{"created":1700000000"#));
    rest_may_come.notify_one();
    let mut all = first.to_vec();
    while let Some(frame) = body.frame().await {
        all.extend_from_slice(&frame.expect("not broken").into_data().expect("data"));
    }
    let value: Value = serde_json::from_slice(&all).expect("the whole answer is JSON");
    assert_eq!(value["data"][0]["index"], 0);
    assert_eq!(value["data"][0]["b64_json"].as_str().map(str::len), Some(LARGE));
    assert_eq!(value["usage"]["total_tokens"], 9);
}

#[tokio::test]
async fn the_local_listener_relays_a_large_answer_whole() {
    let fake = FakeAzure::start(|_, _| Canned::json(200, &String::from_utf8_lossy(&large_body(4_000_000)))).await;
    let url = listen(app_for(&fake).app).await;
    let response = post_to(&url).await;
    assert_eq!(response.status(), 200);
    let value: Value = serde_json::from_slice(&response.bytes().await.expect("whole")).expect("JSON");
    assert_eq!(value["created"], 1700000000);
    assert_eq!(value["data"][0]["b64_json"].as_str().map(str::len), Some(4_000_000));
    assert_eq!(value["data"][0]["index"], 0);
}

#[tokio::test]
async fn a_body_that_breaks_after_the_answer_started_is_cut_off_not_ended() {
    let fake = FakeAzure::start(|_, _| breaking_success(200_000)).await;
    let url = listen(app_for(&fake).app).await;
    let response = post_to(&url).await;
    assert_eq!(response.status(), 200, "the status went out before the break");
    assert!(
        response.bytes().await.is_err(),
        "the client must see a broken body, not a short one"
    );
}

#[tokio::test]
async fn a_body_that_turns_malformed_after_the_answer_started_is_cut_off() {
    let fake = FakeAzure::start(|_, _| {
        let mut body = large_body(LARGE)[..200_000].to_vec();
        body.extend_from_slice(b"\"}]}}}");
        Canned::in_parts(vec![Part::Data(body)])
    })
    .await;
    let test = app_for(&fake);
    let response = test.app.respond(post(GEN, REQUEST)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut broke = false;
    while let Some(frame) = body.frame().await {
        if let Err(aborted) = frame {
            assert_eq!(aborted.code, "upstream_invalid_response");
            broke = true;
            break;
        }
    }
    assert!(broke, "the body must break off");
}

#[tokio::test]
async fn a_body_that_breaks_before_the_answer_started_is_a_502() {
    let fake = FakeAzure::start(|_, _| breaking_success(30_000)).await;
    let test = app_for(&fake);
    let response = test.app.handle(post(GEN, REQUEST)).await;
    let error = openai_error(&response, 502);
    assert_eq!(error["code"], "upstream_unreachable");
}

#[tokio::test]
async fn a_body_that_breaks_before_the_answer_started_is_a_502_never_retried() {
    // Azure's 200 comes after the images were generated and billed: another attempt bills again.
    let fake = FakeAzure::start(|req, n| {
        if n == 0 {
            breaking_success(30_000)
        } else {
            success_for(req)
        }
    })
    .await;
    let config = config_with(
        &fake,
        &[("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET), ("MAX_RETRIES", "1")],
    );
    let test = app_from(config, vec![Ok(AZURE_KEY.to_owned())]);
    let response = test.app.handle(post(GEN, REQUEST)).await;
    assert_eq!(openai_error(&response, 502)["code"], "upstream_unreachable");
    assert_eq!(
        response.headers()["x-should-retry"],
        "false",
        "the SDKs must not retry it either"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_buffered_front_door_gets_the_whole_answer_or_an_error_never_a_retry() {
    // HTTP API: the answer is buffered anyway, so nothing is sent before Azure's body is whole.
    let fake = FakeAzure::start(|_, n| {
        if n == 0 {
            breaking_success(200_000)
        } else {
            Canned::json(200, &String::from_utf8_lossy(&large_body(LARGE)))
        }
    })
    .await;
    let config = config_with(
        &fake,
        &[("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET), ("MAX_RETRIES", "1")],
    );
    let test = app_from(config, vec![Ok(AZURE_KEY.to_owned())]);
    let buffered = || {
        let mut req = post(GEN, REQUEST);
        req.response_limit = Some(6_000_000);
        req
    };
    let broken = test.app.handle(buffered()).await;
    openai_error(&broken, 502);
    assert_eq!(broken.headers()["x-should-retry"], "false");
    assert_eq!(fake.requests().len(), 1, "no second bill");
    let whole = test.app.handle(buffered()).await;
    assert_eq!(whole.status(), 200);
    let value = json(&whole);
    assert_eq!(value["data"][0]["b64_json"].as_str().map(str::len), Some(LARGE));
}

#[tokio::test]
async fn the_local_listener_answers_whole_with_response_mode_buffered() {
    let fake = FakeAzure::start(|_, _| Canned::json(200, &String::from_utf8_lossy(&large_body(LARGE)))).await;
    let config = config_with(
        &fake,
        &[
            ("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET),
            ("MAX_RETRIES", "0"),
            ("RESPONSE_MODE", "buffered"),
        ],
    );
    let url = listen(app_from(config, vec![Ok(AZURE_KEY.to_owned())]).app).await;
    let response = post_to(&url).await;
    assert_eq!(response.status(), 200);
    let announced = response.content_length().expect("a whole answer announces its length");
    let body = response.bytes().await.expect("whole");
    assert_eq!(announced, body.len() as u64);
    let streamed = post_to(&listen(app_for(&fake).app).await).await;
    assert_eq!(streamed.content_length(), None, "a relayed answer is chunked");
}

#[tokio::test]
async fn a_buffered_front_door_stops_reading_at_its_limit() {
    // 7 MB of image data, and then Azure never finishes: the 413 cannot wait for the end.
    let fake = FakeAzure::start(|_, _| {
        let head = format!(
            r#"{{"created":1700000000,"data":[{{"b64_json":"{}"#,
            b64_of_len(7_000_000)
        );
        Canned::in_parts(vec![
            Part::Data(head.into_bytes()),
            Part::Gate(Arc::new(tokio::sync::Notify::new())),
        ])
    })
    .await;
    let test = app_for(&fake);
    let mut req = post(GEN, REQUEST);
    req.response_limit = Some(6_000_000);
    let response = tokio::time::timeout(Duration::from_secs(60), test.app.handle(req))
        .await
        .expect("answered before Azure's body ended");
    assert_eq!(openai_error(&response, 413)["code"], "response_too_large");
    assert_eq!(response.headers()["x-should-retry"], "false", "the images are billed");
}
