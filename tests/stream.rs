//! `stream: true` inside the process: Azure's events relayed, a deployment
//! that refuses `stream`, a key rotated under a stream, a stream breaking
//! midway, and Azure's own `error` event, against the in-process stand-in.

mod common;

use common::*;
use http::Response;
use serde_json::Value;

const GEN: &str = "/v1/images/generations";
const PARTIAL: &str = "image_generation.partial_image";
const COMPLETED: &str = "image_generation.completed";
const USAGE: &str = r#""usage":{"total_tokens":30,"input_tokens":10,"output_tokens":20,"input_tokens_details":{"text_tokens":10,"image_tokens":0}}"#;

/// The events of an answer, as the OpenAI SDK reads them: name and data.
fn events(response: &Response<Vec<u8>>) -> Vec<(String, Value)> {
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    String::from_utf8_lossy(response.body())
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).expect("event data is JSON");
                }
            }
            (name, data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

/// A streaming deployment's answer: one partial image, then the image.
fn streamed_image() -> Canned {
    Canned::events(&[
        (PARTIAL, r#""b64_json":"UEFS","partial_image_index":0"#),
        (COMPLETED, &format!(r#""b64_json":"RklO",{USAGE}"#)),
    ])
}

/// Azure's 400 for a `stream` its api-version does not know.
fn stream_refused() -> Canned {
    Canned::json(
        400,
        r#"{"error":{"code":"invalid_request_error","message":"Unrecognized request argument supplied: stream","param":"stream","type":"invalid_request_error"}}"#,
    )
}

#[tokio::test]
async fn azure_events_are_relayed_under_the_openai_names() {
    let fake = FakeAzure::start(|_, _| streamed_image()).await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","stream":true,"partial_images":1}"#,
        ))
        .await;
    assert_eq!(response.status(), 200);
    let events = events(&response);
    assert_eq!(names(&events), [PARTIAL, COMPLETED]);
    assert_eq!(events[0].1["b64_json"], "UEFS");
    assert_eq!(events[1].1["usage"]["total_tokens"], 30);

    let sent = &fake.requests()[0];
    assert_eq!(sent.body["stream"], true, "Azure is asked to stream");
    assert_eq!(sent.body["partial_images"], 1);
    let accept = sent.headers["accept"].to_str().expect("ascii");
    assert!(accept.contains("text/event-stream"), "{accept}");
}

#[tokio::test]
async fn a_deployment_that_refuses_stream_is_asked_again_without_it_and_remembered() {
    let fake = FakeAzure::start(|req, _| {
        if req.body.get("stream").is_some() {
            stream_refused()
        } else {
            success_for(req)
        }
    })
    .await;
    let test = app_for(&fake);
    let body = r#"{"model":"azure-image","prompt":"p","n":2,"stream":true}"#;
    let first = test.app.handle(post(GEN, body)).await;
    assert_eq!(names(&events(&first)), [COMPLETED, COMPLETED]);
    let second = test.app.handle(post(GEN, body)).await;
    assert_eq!(names(&events(&second)), [COMPLETED, COMPLETED]);

    let streamed: Vec<bool> = fake.requests().iter().map(|r| r.body.get("stream").is_some()).collect();
    assert_eq!(streamed, [true, false, false], "one refusal, then buffered calls only");
    assert!(fake.requests()[1].body.get("partial_images").is_none());
}

#[tokio::test]
async fn a_rejected_key_is_fetched_again_once_before_the_stream_opens() {
    let fake = FakeAzure::start(|req, _| {
        if req.headers["api-key"] == "rotated-key" {
            streamed_image()
        } else {
            Canned::json(
                401,
                r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key."}}"#,
            )
        }
    })
    .await;
    let test = app_with(&fake, vec![Ok(AZURE_KEY.into()), Ok("rotated-key".into())]);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"p","stream":true}"#))
        .await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    assert_eq!(names(&events(&response)), [PARTIAL, COMPLETED]);
    assert_eq!(test.secret_calls(), 2);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_stream_breaking_midway_ends_with_an_error_event() {
    let fake = FakeAzure::start(|_, _| {
        Canned::in_parts(vec![
            Part::Data(sse_event(PARTIAL, r#""b64_json":"UEFS","partial_image_index":0"#)),
            Part::Pause(std::time::Duration::from_millis(50)),
            Part::Break,
        ])
        .with_header("content-type", "text/event-stream")
    })
    .await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","stream":true,"partial_images":1}"#,
        ))
        .await;
    assert_eq!(response.status(), 200, "the stream had started");
    let events = events(&response);
    assert_eq!(names(&events), [PARTIAL, "error"]);
    assert_eq!(events[1].1["error"]["code"], "upstream_unreachable");
    assert_eq!(events[1].1["extra_fields"]["model_requested"], "azure-image");
    assert_eq!(fake.requests().len(), 1, "a started stream is never retried");
}

#[tokio::test]
async fn a_stream_that_ends_before_any_image_ends_with_an_error_event() {
    let fake =
        FakeAzure::start(|_, _| Canned::events(&[(PARTIAL, r#""b64_json":"UEFS","partial_image_index":0"#)])).await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"p","stream":true}"#))
        .await;
    let events = events(&response);
    assert_eq!(names(&events), [PARTIAL, "error"]);
    assert_eq!(events[1].1["error"]["code"], "upstream_invalid_response");
}

#[tokio::test]
async fn an_azure_error_event_reaches_the_client_as_the_openai_error_object() {
    let fake = FakeAzure::start(|_, _| {
        Canned::events(&[
            (PARTIAL, r#""b64_json":"UEFS","partial_image_index":0"#),
            (
                "error",
                r#""error":{"code":"content_policy_violation","message":"Your request was rejected by the safety system.","param":null,"type":"invalid_request_error"}"#,
            ),
            (COMPLETED, r#""b64_json":"RklO""#),
        ])
    })
    .await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"p","stream":true}"#))
        .await;
    let events = events(&response);
    assert_eq!(names(&events), [PARTIAL, "error"], "nothing after the error");
    assert_eq!(events[1].1["type"], "error");
    assert_eq!(events[1].1["error"]["code"], "content_policy_violation");
}

#[tokio::test]
async fn dall_e_3_streams_completed_events_made_from_one_buffered_call() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"dall-e-3","prompt":"p","stream":true}"#))
        .await;
    let events = events(&response);
    assert_eq!(names(&events), [COMPLETED]);
    let sent = &fake.requests()[0];
    assert!(sent.body.get("stream").is_none(), "dall-e-3 is never asked to stream");
    assert_eq!(
        sent.body["response_format"], "b64_json",
        "events carry the image itself"
    );
}

#[tokio::test]
async fn a_stream_that_ends_short_of_n_images_ends_with_an_error_event() {
    let fake = FakeAzure::start(|_, _| {
        Canned::events(&[
            (COMPLETED, r#""b64_json":"T05F""#),
            (COMPLETED, &format!(r#""b64_json":"VFdP",{USAGE}"#)),
        ])
    })
    .await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"p","n":3,"stream":true}"#))
        .await;
    let events = events(&response);
    assert_eq!(
        names(&events),
        [COMPLETED, COMPLETED, "error"],
        "two of three is not whole"
    );
    assert_eq!(events[2].1["error"]["code"], "upstream_invalid_response");
}

#[tokio::test]
async fn a_stream_makes_exactly_the_attempts_a_buffered_request_makes() {
    let fake = FakeAzure::start(|_, _| {
        Canned::json(503, r#"{"error":{"code":"503","message":"busy"}}"#).with_header("retry-after-ms", "120")
    })
    .await;
    for (retries, attempts) in [("0", 1), ("2", 3)] {
        let config = config_with(
            &fake,
            &[
                ("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET),
                ("MAX_RETRIES", retries),
            ],
        );
        let test = app_from(config, vec![Ok(AZURE_KEY.to_owned())]);
        let before = fake.requests().len();
        let (response, log) = handle_logged(
            &test.app,
            post(GEN, r#"{"model":"azure-image","prompt":"p","stream":true}"#),
        )
        .await;
        openai_error(&response, 502);
        assert_eq!(fake.requests().len() - before, attempts, "MAX_RETRIES={retries}");
        let expected: Vec<u64> = (0..attempts).map(|i| if i == 0 { 0 } else { 120 }).collect();
        assert_eq!(
            waits(&log),
            expected,
            "Azure's retry-after-ms, as for buffered requests"
        );
    }
}

#[tokio::test]
async fn a_callers_unknown_field_does_not_turn_streaming_off_for_others() {
    // Azure refuses `stream_options` (forwarded as an unknown field), not `stream`.
    let fake = FakeAzure::start(|req, _| {
        if req.body.get("stream_options").is_some() {
            Canned::json(
                400,
                r#"{"error":{"code":"invalid_request_error","param":"stream_options","message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error"}}"#,
            )
        } else {
            streamed_image()
        }
    })
    .await;
    let test = app_for(&fake);
    let hostile = test
        .app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","stream":true,"stream_options":{}}"#,
        ))
        .await;
    assert_eq!(openai_error(&hostile, 400)["param"], "stream_options");
    let next = test
        .app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"p","stream":true}"#))
        .await;
    assert_eq!(
        names(&events(&next)),
        [PARTIAL, COMPLETED],
        "still relayed from Azure's stream"
    );
    assert_eq!(fake.requests()[1].body["stream"], true);
}

#[tokio::test]
async fn a_stream_that_stalls_ends_with_an_error_event_before_the_deadline() {
    // Azure opens the stream, sends one partial image, then nothing: the whole
    // attempt (headers and events) is bounded by the request's deadline.
    let fake = FakeAzure::start(|_, _| {
        Canned::in_parts(vec![
            Part::Data(sse_event(PARTIAL, r#""b64_json":"UEFS","partial_image_index":0"#)),
            Part::Gate(std::sync::Arc::new(tokio::sync::Notify::new())),
        ])
        .with_header("content-type", "text/event-stream")
    })
    .await;
    let test = app_for(&fake);
    let req = with_deadline(
        post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","stream":true,"partial_images":1}"#,
        ),
        std::time::Duration::from_secs(4),
    );
    // Only a hang guard: an unbounded relay would wait for Azure for ever.
    let response = tokio::time::timeout(std::time::Duration::from_secs(60), test.app.handle(req))
        .await
        .expect("the stream ended while Azure still held it open");
    let events = events(&response);
    assert_eq!(names(&events), [PARTIAL, "error"]);
    assert_eq!(events[1].1["error"]["code"], "upstream_timeout");
}
