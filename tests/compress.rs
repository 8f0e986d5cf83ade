//! Large relayed answers on a front door that streams go out gzip-compressed
//! when the client takes gzip; everything else goes out as it is.

mod common;

use std::io::Read;

use azure_openai_image::compress::COMPRESS_FROM;
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;

const GEN: &str = "/v1/images/generations";
const REQUEST: &str = r#"{"model":"azure-image","prompt":"a lighthouse"}"#;
/// Past the size from which compressing pays.
const LARGE: usize = COMPRESS_FROM + 1_000_000;

/// An Azure gpt-image body with one image of `len` base64 characters.
fn azure_body(len: usize) -> String {
    format!(
        r#"{{"created":1700000000,"data":[{{"b64_json":"{}"}}],"usage":{{"total_tokens":9,"input_tokens":4,"output_tokens":5,"input_tokens_details":{{"text_tokens":4,"image_tokens":0}}}}}}"#,
        b64_of_len(len)
    )
}

/// Azure's 200 of `len` base64 characters, with its length announced.
fn announced(len: usize) -> Canned {
    let body = azure_body(len);
    let length = body.len().to_string();
    Canned::json(200, &body).with_header("content-length", &length)
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a whole gzip stream");
    out
}

fn assert_images_response(body: &[u8], len: usize) {
    let value: Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(value["created"], 1700000000);
    assert_eq!(value["data"][0]["index"], 0);
    assert_eq!(value["data"][0]["b64_json"].as_str().map(str::len), Some(len));
    assert_eq!(value["usage"]["total_tokens"], 9);
}

fn gzip_please() -> azure_openai_image::exchange::Incoming {
    with_header(post(GEN, REQUEST), "accept-encoding", "gzip, deflate")
}

#[tokio::test]
async fn a_client_that_takes_gzip_gets_a_large_answer_compressed() {
    let fake = FakeAzure::start(|_, _| announced(LARGE)).await;
    let test = app_for(&fake);
    let response = test.app.handle(gzip_please()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["vary"], "accept-encoding");
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.body().len() < LARGE, "smaller than what it decodes to");
    assert_images_response(&gunzip(response.body()), LARGE);
}

#[tokio::test]
async fn a_client_that_does_not_take_gzip_gets_it_plain() {
    let fake = FakeAzure::start(|_, _| announced(LARGE)).await;
    let test = app_for(&fake);
    for req in [
        post(GEN, REQUEST),
        with_header(post(GEN, REQUEST), "accept-encoding", "gzip;q=0, deflate"),
        with_header(post(GEN, REQUEST), "accept-encoding", "br"),
    ] {
        let response = test.app.handle(req).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("content-encoding").is_none());
        assert_images_response(response.body(), LARGE);
    }
}

#[tokio::test]
async fn an_answer_below_the_threshold_goes_out_plain() {
    // Inside the first 6 MB, which Lambda does not slow: compressing would only cost CPU time.
    let fake = FakeAzure::start(|_, _| announced(4_000_000)).await;
    let test = app_for(&fake);
    let response = test.app.handle(gzip_please()).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    assert_images_response(response.body(), 4_000_000);
}

#[tokio::test]
async fn an_answer_of_unannounced_length_goes_out_plain() {
    // Its size is not known when the headers go: never worse than before.
    let fake = FakeAzure::start(|_, _| Canned::json(200, &azure_body(LARGE))).await;
    let test = app_for(&fake);
    let response = test.app.handle(gzip_please()).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    assert_images_response(response.body(), LARGE);
}

#[tokio::test]
async fn a_buffered_front_door_answers_plain() {
    // Its body goes out as text in the proxy JSON: gzip would need base64, which undoes it.
    let fake = FakeAzure::start(|_, _| announced(LARGE)).await;
    let test = app_for(&fake);
    let mut req = gzip_please();
    req.response_limit = Some(usize::MAX);
    let response = test.app.handle(req).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    assert_images_response(response.body(), LARGE);
}

#[tokio::test]
async fn an_error_goes_out_plain() {
    let fake =
        FakeAzure::start(|_, _| Canned::json(400, r#"{"error":{"code":"invalid_request","message":"no"}}"#)).await;
    let test = app_for(&fake);
    let response = test.app.handle(gzip_please()).await;
    assert!(response.headers().get("content-encoding").is_none());
    openai_error(&response, 400);
}

#[tokio::test]
async fn a_compressed_answer_that_breaks_off_stays_broken() {
    let fake = FakeAzure::start(|_, _| {
        let body = azure_body(LARGE);
        let length = body.len().to_string();
        Canned::in_parts(vec![
            Part::Data(body.as_bytes()[..1_000_000].to_vec()),
            Part::Pause(std::time::Duration::from_millis(200)),
            Part::Break,
        ])
        .with_header("content-length", &length)
    })
    .await;
    let test = app_for(&fake);
    let response = test.app.respond(gzip_please()).await;
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let mut body = response.into_body();
    let mut sent = Vec::new();
    let broke = loop {
        match body.frame().await {
            Some(Ok(frame)) => sent.extend_from_slice(&frame.into_data().expect("data")),
            Some(Err(aborted)) => break Some(aborted),
            None => break None,
        }
    };
    assert_eq!(broke.map(|a| a.code), Some("upstream_unreachable"));
    let mut decoded = Vec::new();
    let err = flate2::read::GzDecoder::new(&sent[..])
        .read_to_end(&mut decoded)
        .expect_err("no gzip end after a break");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn the_local_listener_sends_gzip_on_the_wire() {
    let fake = FakeAzure::start(|_, _| announced(LARGE)).await;
    let listener = azure_openai_image::front::local::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(azure_openai_image::front::local::serve(listener, app_for(&fake).app));
    // reqwest without its gzip feature: the body arrives as sent.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{GEN}"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip")
        .body(REQUEST)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.content_length(), None, "relayed, chunked");
    let body = response.bytes().await.expect("whole");
    assert_images_response(&gunzip(&body), LARGE);
}
