//! Every file in `events/` goes through the same parsing the Lambda runtime
//! uses and through the handler, so the `cargo lambda invoke --data-file` and
//! `sam local invoke -e` examples stay valid.

mod common;

use std::path::Path;

use azure_openai_image::front::lambda;
use common::*;

/// The status each event's case must produce, from its file name.
fn expected_status(name: &str) -> u16 {
    match name {
        n if n.contains("bad-request") => 400,
        n if n.contains("unknown-model") || n.contains("unknown-path") => 404,
        n if n.contains("generation") || n.contains("edit") || n.contains("models") || n.contains("health") => 200,
        other => panic!("events/{other}: name its case so this test knows the expected status"),
    }
}

#[tokio::test]
async fn every_event_file_is_answered_as_its_case_expects() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("events/ exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 12,
        "events/ should hold every front door x route: {names:?}"
    );

    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).expect("readable");
        let event =
            lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{name}: not a Lambda HTTP event: {e}"));
        let before = fake.requests().len();
        let response = lambda::respond(&test.app, event).await;
        let status = response.status().as_u16();
        let body = match response.body() {
            lambda_http::Body::Text(text) => text.clone(),
            lambda_http::Body::Empty => String::new(),
            other => panic!("{name}: JSON must go out as text, not {other:?}"),
        };
        assert_eq!(status, expected_status(name), "{name}: {body}");
        assert!(response.headers().contains_key("x-request-id"), "{name}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let operation = if name.contains("edit") { "edits" } else { "generations" };
        if name.contains("generation") || name.contains("edit") {
            assert!(
                value["data"].as_array().is_some_and(|d| !d.is_empty()),
                "{name}: {value}"
            );
            let upstream = &fake.requests()[before];
            assert_eq!(
                upstream.path,
                format!("/openai/deployments/{GPT_DEPLOYMENT}/images/{operation}"),
                "{name}"
            );
            assert_eq!(upstream.query, "api-version=2025-04-01-preview", "{name}");
            assert_eq!(upstream.body["model"], "gpt-image-1", "{name}");
        } else {
            assert_eq!(fake.requests().len(), before, "{name} must not reach Azure");
        }
        if status >= 400 {
            openai_error_text(&body, status);
        }
    }
}

fn openai_error_text(body: &str, status: u16) {
    let response = http::Response::builder()
        .status(status)
        .body(body.as_bytes().to_vec())
        .expect("response");
    openai_error(&response, status);
}
