//! Image edits inside the process: both routes, both request forms, the
//! checks before any upstream call, the multipart body Azure receives, and
//! streamed edits, against the in-process stand-in.

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;

const EDITS: &str = "/v1/images/edits";
const AZURE_EDITS: &str = "/openai/deployments/gpt-image-1/images/edits";

fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn file<'a>(name: &'a str, filename: &'a str, data: &'a [u8]) -> FormPart<'a> {
    // The SDKs declare uploads as octet-stream (or not at all): the bytes decide.
    (name, Some(filename), Some("application/octet-stream"), data)
}

fn text<'a>(name: &'a str, value: &'a str) -> FormPart<'a> {
    (name, None, None, value.as_bytes())
}

/// The upstream form's part named `name`, with its filename and content type.
fn part<'a>(sent: &'a Recorded, name: &str) -> &'a azure_openai_image::multipart::Part {
    sent.form
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no `{name}` part in {:?}", sent.form))
}

fn part_content_type(part: &azure_openai_image::multipart::Part) -> &str {
    part.content_type.as_deref().unwrap_or_default()
}

#[tokio::test]
async fn a_multipart_edit_reaches_azures_edits_route_as_multipart_with_the_image_unchanged() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let image = png(64, 48, false);
    let response = test
        .app
        .handle(post_form(
            EDITS,
            &[
                file("image", "cat.png", &image),
                text("prompt", "add a hat"),
                text("model", "azure-image"),
                text("n", "2"),
                text("size", "1024x1024"),
                text("fallbacks", "azure-image"),
            ],
        ))
        .await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    let body = json(&response);
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["data"][1]["index"], 1);

    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/openai/deployments/gpt-image-1/images/edits");
    assert_eq!(sent.query, "api-version=2025-04-01-preview");
    assert_eq!(sent.headers["api-key"], AZURE_KEY);
    let content_type = sent.headers["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{content_type}"
    );
    assert_eq!(sent.headers["content-length"], sent.raw.len().to_string().as_str());
    assert_eq!(sent.body["model"], "gpt-image-1", "the Azure model, never the alias");
    assert_eq!(sent.body["prompt"], "add a hat");
    assert_eq!(sent.body["n"], 2);
    assert!(
        sent.body.get("fallbacks").is_none(),
        "the connector's own field stays here"
    );
    let uploaded = part(sent, "image");
    assert_eq!(uploaded.data.as_ref(), image.as_slice());
    assert_eq!(part_content_type(uploaded), "image/png");
    assert_eq!(uploaded.filename.as_deref(), Some("image-1.png"));
}

#[tokio::test]
async fn several_images_and_a_mask_go_up_as_image_array_and_mask() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let (first, second, mask) = (png(32, 32, false), jpeg(40, 20), png(32, 32, true));
    let response = test
        .app
        .handle(post_form(
            AZURE_EDITS,
            &[
                file("image[]", "a.png", &first),
                file("image[]", "b.jpg", &second),
                file("mask", "mask.png", &mask),
                text("prompt", "merge them"),
                text("input_fidelity", "high"),
            ],
        ))
        .await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    let sent = &fake.requests()[0];
    let images: Vec<_> = sent.form.iter().filter(|p| p.name == "image[]").collect();
    assert_eq!(images.len(), 2);
    assert_eq!(part_content_type(images[1]), "image/jpeg");
    assert_eq!(images[1].data.as_ref(), second.as_slice());
    assert_eq!(part_content_type(part(sent, "mask")), "image/png");
    assert_eq!(sent.body["input_fidelity"], "high");
}

#[tokio::test]
async fn a_json_edit_with_data_urls_goes_up_as_multipart_with_the_decoded_bytes() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let (image, mask) = (png(16, 16, false), png(16, 16, true));
    let body = serde_json::json!({
        "model": "azure-image",
        "prompt": "paint it blue",
        "images": [{"image_url": data_url("image/png", &image)}],
        "mask": {"image_url": data_url("image/png", &mask)},
        "quality": "low",
    });
    let response = test.app.handle(post(EDITS, &body.to_string())).await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    let sent = &fake.requests()[0];
    assert_eq!(part(sent, "image").data.as_ref(), image.as_slice());
    assert_eq!(part(sent, "mask").data.as_ref(), mask.as_slice());
    assert_eq!(sent.body["quality"], "low");
}

/// A 400 on `param`, with no upstream call.
async fn refused(test: &TestApp, fake: &FakeAzure, req: azure_openai_image::exchange::Incoming, param: &str) -> Value {
    let response = test.app.handle(req).await;
    let err = openai_error(&response, 400);
    assert_eq!(err["param"], param, "{err}");
    assert!(fake.requests().is_empty(), "nothing reached Azure");
    err
}

#[tokio::test]
async fn the_connector_never_fetches_an_image_url_or_a_file_id() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let by_url = serde_json::json!({"prompt": "p", "images": [{"image_url": data_url("image/png", &png(8, 8, false))}, {"image_url": "https://169.254.169.254/latest"}]});
    let err = refused(&test, &fake, post(EDITS, &by_url.to_string()), "images[1]").await;
    assert_eq!(err["code"], "invalid_image_url");
    assert!(
        !err["message"].as_str().unwrap_or_default().contains("169.254"),
        "the URL is not echoed"
    );
    let by_id = serde_json::json!({"prompt": "p", "images": [{"file_id": "file-123"}]});
    refused(&test, &fake, post(EDITS, &by_id.to_string()), "images[0]").await;
}

#[tokio::test]
async fn dall_e_3_does_not_edit_and_is_refused_before_azure() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let image = png(8, 8, false);
    let req = post_form(
        EDITS,
        &[
            file("image", "x.png", &image),
            text("prompt", "p"),
            text("model", "dall-e-3"),
        ],
    );
    let err = refused(&test, &fake, req, "model").await;
    assert!(err["message"].as_str().unwrap_or_default().contains("dall-e-3"));
}

#[tokio::test]
async fn uploads_are_judged_by_their_bytes() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let text_file = b"this is not an image".to_vec();
    let err = refused(
        &test,
        &fake,
        post_form(EDITS, &[file("image", "cat.png", &text_file), text("prompt", "p")]),
        "image",
    )
    .await;
    assert_eq!(err["code"], "invalid_image_format");
}

#[tokio::test]
async fn a_mask_must_be_a_png_with_alpha_the_size_of_the_first_image() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let image = png(32, 32, false);
    for mask in [png(32, 16, true), png(32, 32, false), jpeg(32, 32)] {
        refused(
            &test,
            &fake,
            post_form(
                EDITS,
                &[
                    file("image", "i.png", &image),
                    file("mask", "m.png", &mask),
                    text("prompt", "p"),
                ],
            ),
            "mask",
        )
        .await;
    }
}

#[tokio::test]
async fn options_are_checked_as_the_spec_says() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let image = png(8, 8, false);
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("input_fidelity", "medium")], "input_fidelity"),
        (
            &[("background", "transparent"), ("output_format", "jpeg")],
            "background",
        ),
        (&[("n", "11")], "n"),
        (&[("n", "two")], "n"),
        (&[("partial_images", "4")], "partial_images"),
        (&[("size", "256x256")], "size"),
        (&[("stream", "maybe")], "stream"),
    ];
    for (fields, param) in cases {
        let mut parts = vec![file("image", "i.png", &image), text("prompt", "p")];
        parts.extend(fields.iter().map(|(k, v)| text(k, v)));
        refused(&test, &fake, post_form(EDITS, &parts), param).await;
    }
    let no_prompt = post_form(EDITS, &[file("image", "i.png", &image)]);
    refused(&test, &fake, no_prompt, "prompt").await;
    let no_image = post_form(EDITS, &[text("prompt", "p")]);
    refused(&test, &fake, no_image, "image").await;
    let many: Vec<_> = (0..17)
        .map(|_| file("image[]", "i.png", &image))
        .chain([text("prompt", "p")])
        .collect();
    refused(&test, &fake, post_form(EDITS, &many), "image[]").await;
    let twice = post_form(
        EDITS,
        &[file("image", "i.png", &image), text("prompt", "p"), text("prompt", "q")],
    );
    assert_eq!(
        refused(&test, &fake, twice, "prompt").await["code"],
        "duplicate_parameter"
    );
}

#[tokio::test]
async fn input_fidelity_is_refused_for_gpt_image_1_mini() {
    let fake = FakeAzure::healthy().await;
    let models = format!(
        r#"[{{"name":"mini","model":"gpt-image-1-mini","baseURL":"{}","apiVersion":"2025-04-01-preview"}}]"#,
        fake.base_url("mini-dep")
    );
    let test = app_from(
        config_from(&models, &[("AUTH_MODE", "none")]),
        vec![Ok(AZURE_KEY.into())],
    );
    let image = png(8, 8, false);
    let req = post_form(
        EDITS,
        &[
            file("image", "i.png", &image),
            text("prompt", "p"),
            text("input_fidelity", "high"),
        ],
    );
    assert_eq!(
        refused(&test, &fake, req, "input_fidelity").await["code"],
        "unsupported_parameter"
    );
}

#[tokio::test]
async fn a_body_past_what_lambda_carries_is_413_with_the_way_out() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let big = vec![0u8; 6 * 1024 * 1024 + 1];
    let response = test
        .app
        .handle(post_form(EDITS, &[file("image", "i.png", &big), text("prompt", "p")]))
        .await;
    let err = openai_error(&response, 413);
    assert_eq!(err["code"], "request_too_large");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn errors_name_the_model_asked_for_and_say_image_edit() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let response = test
        .app
        .handle(post_form(EDITS, &[text("model", "azure-image"), text("prompt", "p")]))
        .await;
    openai_error(&response, 400);
    let body = json(&response);
    assert_eq!(body["extra_fields"]["model_requested"], "azure-image");
    assert_eq!(body["extra_fields"]["request_type"], "image_edit");
}

#[tokio::test]
async fn azures_refusal_of_an_edit_keeps_its_param_and_content_filter_detail() {
    let fake = FakeAzure::start(|_, _| {
        Canned::json(
            400,
            r#"{"error":{"code":"content_policy_violation","message":"The input image was filtered.","param":"image","type":"invalid_request_error","inner_error":{"code":"ResponsibleAIPolicyViolation","content_filter_results":{"sexual":{"filtered":true,"severity":"high"}}}}}"#,
        )
    })
    .await;
    let test = app_for(&fake);
    let image = png(8, 8, false);
    let response = test
        .app
        .handle(post_form(EDITS, &[file("image", "i.png", &image), text("prompt", "p")]))
        .await;
    let err = openai_error(&response, 400);
    assert_eq!(err["code"], "content_policy_violation");
    assert_eq!(err["param"], "image");
    assert_eq!(err["inner_error"]["content_filter_results"]["sexual"]["filtered"], true);
    assert_eq!(fake.requests().len(), 1, "a content filter is not retried");
}

#[tokio::test]
async fn a_streamed_edit_relays_image_edit_events() {
    let fake = FakeAzure::start(|_, _| {
        Canned::events(&[
            (
                "image_edit.partial_image",
                r#""b64_json":"UEFS","partial_image_index":0"#,
            ),
            ("image_edit.completed", r#""b64_json":"RklO""#),
        ])
    })
    .await;
    let test = app_for(&fake);
    let image = png(8, 8, false);
    let response = test
        .app
        .handle(post_form(
            EDITS,
            &[
                file("image", "i.png", &image),
                text("prompt", "p"),
                text("stream", "true"),
                text("partial_images", "1"),
            ],
        ))
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8_lossy(response.body()).into_owned();
    assert!(text.contains("event: image_edit.partial_image"), "{text}");
    assert!(text.contains("event: image_edit.completed"), "{text}");
    let sent = &fake.requests()[0];
    assert_eq!(sent.body["stream"], "true");
    assert_eq!(sent.body["partial_images"], 1);
}

#[tokio::test]
async fn a_streamed_edit_from_a_deployment_that_does_not_stream_gets_image_edit_completed() {
    let fake = FakeAzure::start(|req, _| {
        if req.body.get("stream").is_some() {
            Canned::json(400, r#"{"error":{"code":"invalid_value","param":"stream","message":"Unrecognized request argument supplied: stream"}}"#)
        } else {
            success_for(req)
        }
    })
    .await;
    let test = app_for(&fake);
    let image = png(8, 8, false);
    let response = test
        .app
        .handle(post_form(
            EDITS,
            &[
                file("image", "i.png", &image),
                text("prompt", "p"),
                text("stream", "true"),
            ],
        ))
        .await;
    let text = String::from_utf8_lossy(response.body()).into_owned();
    assert!(text.starts_with("event: image_edit.completed\n"), "{text}");
    assert!(!text.contains("image_generation"), "{text}");
}

#[tokio::test]
async fn edits_are_logged_and_metered_as_image_edit() {
    let fake = FakeAzure::healthy().await;
    let test = app_for(&fake);
    let image = png(8, 8, false);
    let (response, log) = handle_logged(
        &test.app,
        post_form(EDITS, &[file("image", "i.png", &image), text("prompt", "p")]),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(log["route"], "openai_edits");
    assert_eq!(log["images"], 1);
}
