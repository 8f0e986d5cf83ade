//! The Lambda Runtime API loop against a stand-in Runtime API: events from
//! `events/` in, buffered or streamed answers out, as each front door needs.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use azure_openai_image::front::runtime;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// What the function posted for one invocation.
#[derive(Debug, Clone)]
struct Posted {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

/// A Runtime API that hands out `events` once each and records the answers.
async fn runtime_api(events: Vec<(&'static str, String)>) -> (String, Arc<Mutex<Vec<Posted>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let queue = Arc::new(Mutex::new(VecDeque::from(events)));
    let posted: Arc<Mutex<Vec<Posted>>> = Arc::default();
    let log = posted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let queue = queue.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let queue = queue.clone();
                    let log = log.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        if path.ends_with("/invocation/next") {
                            let next = queue.lock().expect("lock").pop_front();
                            let Some((id, event)) = next else {
                                // No more events: hold the poll, as Lambda does between invocations.
                                std::future::pending::<()>().await;
                                unreachable!()
                            };
                            let response = hyper::Response::builder()
                                .header("lambda-runtime-aws-request-id", id)
                                .header("lambda-runtime-deadline-ms", "600000")
                                .header(
                                    "lambda-runtime-invoked-function-arn",
                                    "arn:aws:lambda:us-east-1:123456789012:function:f",
                                )
                                .body(Full::new(Bytes::from(event)))
                                .expect("response");
                            return Ok::<_, Infallible>(response);
                        }
                        let (parts, body) = req.into_parts();
                        let (body, trailers) = match body.collect().await {
                            Ok(collected) => {
                                let trailers = collected.trailers().cloned();
                                (collected.to_bytes(), trailers)
                            }
                            Err(_) => (Bytes::new(), None),
                        };
                        log.lock().expect("lock").push(Posted {
                            path,
                            headers: parts.headers,
                            body,
                            trailers,
                        });
                        Ok(hyper::Response::builder()
                            .status(202)
                            .body(Full::new(Bytes::new()))
                            .expect("response"))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, posted)
}

fn event(file: &str) -> String {
    std::fs::read_to_string(format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"))).expect("event file")
}

async fn serve(test: &TestApp, events: Vec<(&'static str, String)>) -> Vec<Posted> {
    let count = events.len();
    let (api, posted) = runtime_api(events).await;
    runtime::serve(&api, test.app.clone(), Some(count))
        .await
        .expect("the loop serves every event");
    posted.lock().expect("lock").clone()
}

/// A streamed answer's prelude (JSON), then its body after the eight NULs.
fn split_stream(body: &[u8]) -> (Value, &[u8]) {
    let end = body
        .windows(8)
        .position(|w| w == [0u8; 8])
        .expect("the prelude ends in eight NULs");
    (
        serde_json::from_slice(&body[..end]).expect("JSON prelude"),
        &body[end + 8..],
    )
}

#[tokio::test]
async fn function_url_invocations_stream_with_a_prelude() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let answers = serve(&test, vec![("inv-1", event("function-url-generation.json"))]).await;
    let answer = &answers[0];
    assert_eq!(answer.path, "/2018-06-01/runtime/invocation/inv-1/response");
    assert_eq!(answer.headers["lambda-runtime-function-response-mode"], "streaming");
    assert_eq!(
        answer.headers["content-type"],
        "application/vnd.awslambda.http-integration-response"
    );
    let (prelude, body) = split_stream(&answer.body);
    assert_eq!(prelude["statusCode"], 200);
    assert_eq!(prelude["headers"]["x-request-id"], "inv-1");
    let images: Value = serde_json::from_slice(body).expect("the JSON answer");
    assert_eq!(images["data"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn http_api_invocations_are_buffered_proxy_responses() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let answers = serve(
        &test,
        vec![
            ("inv-2", event("http-api-generation.json")),
            ("inv-3", event("rest-api-models.json")),
        ],
    )
    .await;
    let http_api: Value = serde_json::from_slice(&answers[0].body).expect("proxy response");
    assert!(
        answers[0]
            .headers
            .get("lambda-runtime-function-response-mode")
            .is_none()
    );
    assert_eq!(http_api["statusCode"], 200);
    assert_eq!(http_api["cookies"], serde_json::json!([]));
    let images: Value = serde_json::from_str(http_api["body"].as_str().expect("body")).expect("JSON body");
    assert_eq!(images["data"][1]["index"], 1);
    // REST APIs stream (the template's STREAM integration).
    let (prelude, body) = split_stream(&answers[1].body);
    assert_eq!(prelude["statusCode"], 200);
    assert!(std::str::from_utf8(body).is_ok_and(|b| b.contains("azure-image")));
}

#[tokio::test]
async fn a_buffered_answer_past_6_mb_becomes_a_413() {
    let big = b64_of_len(3_500_000);
    let fake = FakeAzure::start(move |_, _| {
        Canned::json(
            200,
            &format!(r#"{{"created":1,"data":[{{"b64_json":"{big}"}},{{"b64_json":"{big}"}}]}}"#),
        )
    })
    .await;
    let test = app_for(&fake);
    let answers = serve(
        &test,
        vec![
            ("inv-4", event("http-api-generation.json")),
            ("inv-5", event("function-url-generation.json")),
        ],
    )
    .await;
    let buffered: Value = serde_json::from_slice(&answers[0].body).expect("proxy response");
    assert_eq!(buffered["statusCode"], 413);
    let error: Value = serde_json::from_str(buffered["body"].as_str().expect("body")).expect("JSON body");
    assert_eq!(error["error"]["code"], "response_too_large");
    assert!(answers[0].body.len() < 2048);
    // The same answer streams whole through a Function URL.
    let (prelude, body) = split_stream(&answers[1].body);
    assert_eq!(prelude["statusCode"], 200);
    assert!(body.len() > 7_000_000);
    let images: Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(images["data"][1]["b64_json"].as_str().map(str::len), Some(3_500_000));
}

#[tokio::test]
async fn an_event_that_is_not_http_is_reported_as_an_invocation_error() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let answers = serve(
        &test,
        vec![
            ("inv-6", r#"{"Records":[]}"#.to_owned()),
            ("inv-7", event("function-url-health.json")),
        ],
    )
    .await;
    assert_eq!(answers[0].path, "/2018-06-01/runtime/invocation/inv-6/error");
    let report: Value = serde_json::from_slice(&answers[0].body).expect("error report");
    assert_eq!(report["errorType"], "Runtime.InvalidEvent");
    assert_eq!(
        answers[1].path, "/2018-06-01/runtime/invocation/inv-7/response",
        "the loop goes on"
    );
}

#[tokio::test]
async fn a_streamed_answer_that_breaks_off_ends_with_the_error_trailers() {
    let fake = FakeAzure::start(|_, _| breaking_success(200_000)).await;
    let test = app_for(&fake);
    let answers = serve(
        &test,
        vec![
            ("inv-1", event("function-url-generation.json")),
            ("inv-2", event("function-url-generation.json")),
        ],
    )
    .await;
    assert_eq!(answers.len(), 2, "the loop goes on after a broken answer");
    let answer = &answers[0];
    assert!(
        answer.headers["trailer"]
            .to_str()
            .is_ok_and(|t| t.contains("Lambda-Runtime-Function-Error-Type"))
    );
    let (prelude, body) = split_stream(&answer.body);
    assert_eq!(prelude["statusCode"], 200);
    assert!(body.len() > 64 * 1024, "the part before the break went out");
    let trailers = answer.trailers.as_ref().expect("trailers after the body");
    assert_eq!(
        trailers["lambda-runtime-function-error-type"],
        "Connector.AnswerBrokeOff"
    );
    use base64::Engine;
    let report = base64::engine::general_purpose::STANDARD
        .decode(trailers["lambda-runtime-function-error-body"].as_bytes())
        .expect("base64");
    let report: Value = serde_json::from_slice(&report).expect("a JSON report");
    assert_eq!(report["errorType"], "Connector.AnswerBrokeOff");
    assert!(
        report["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("upstream_unreachable"))
    );
}

/// Client keys as usual; the Azure key's fetch panics, as a bug deep in a
/// dependency would.
struct PanicsOnAzureKey;

impl azure_openai_image::secrets::SecretSource for PanicsOnAzureKey {
    fn fetch<'a>(&'a self, secret_id: &'a str) -> azure_openai_image::secrets::SecretFuture<'a> {
        let id = secret_id.to_owned();
        Box::pin(async move {
            if id == CLIENT_KEYS_SECRET {
                return Ok(CLIENT_KEYS.to_owned());
            }
            panic!("a bug while fetching {id}")
        })
    }
}

#[tokio::test]
async fn a_panic_in_one_invocation_is_answered_500_and_the_loop_goes_on() {
    let fake = FakeAzure::healthy().await;
    let app = azure_openai_image::App::new(
        config_for(&fake),
        Arc::new(PanicsOnAzureKey),
        azure_openai_image::azure::AzureClient::new().expect("client"),
    )
    .with_metrics(azure_openai_image::observe::MetricsSink::new(
        "AzureOpenAIImage",
        |_| {},
    ));
    let test = TestApp {
        app: Arc::new(app),
        secrets: Arc::new(azure_openai_image::secrets::ScriptedSource::new(Vec::new())),
    };
    let answers = serve(
        &test,
        vec![
            ("inv-panic", event("function-url-generation.json")),
            ("inv-after", event("function-url-health.json")),
        ],
    )
    .await;
    assert_eq!(answers.len(), 2, "the loop went on after the panic");
    assert_eq!(answers[0].path, "/2018-06-01/runtime/invocation/inv-panic/response");
    let (prelude, body) = split_stream(&answers[0].body);
    assert_eq!(prelude["statusCode"], 500);
    let error: Value = serde_json::from_slice(body).expect("an OpenAI error body");
    assert_eq!(error["error"]["code"], "internal_error");
    assert!(
        !String::from_utf8_lossy(body).contains("a bug while"),
        "panic text stays in the log"
    );
    let (prelude, _) = split_stream(&answers[1].body);
    assert_eq!(prelude["statusCode"], 200);
}

#[tokio::test]
async fn an_http_api_invocation_answers_before_the_integration_timeout() {
    let fake = FakeAzure::start(|req, _| success_for(req).delayed(std::time::Duration::from_secs(30))).await;
    let config = config_with(
        &fake,
        &[
            ("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET),
            ("HTTP_API_TIMEOUT_MS", "2500"),
        ],
    );
    let test = app_from(config, vec![Ok(AZURE_KEY.to_owned())]);
    // API Gateway received the request just now; Lambda's own deadline (cargo lambda's) is far off.
    let mut received: Value = serde_json::from_str(&event("http-api-generation.json")).expect("event");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    received["requestContext"]["timeEpoch"] = now_ms.into();
    let answers = serve(&test, vec![("inv-slow", received.to_string())]).await;
    let proxy: Value = serde_json::from_slice(&answers[0].body).expect("proxy response");
    assert_eq!(proxy["statusCode"], 504, "the connector's own 504, not API Gateway's");
    let body: Value = serde_json::from_str(proxy["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(body["error"]["code"], "upstream_timeout");
}
