//! `response_format: "url"` for the gpt-image family: the images stored in
//! the image bucket as Azure's body arrives, and links to them, against the
//! in-process Azure stand-in and an S3 stand-in that records what it receives.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use azure_openai_image::App;
use azure_openai_image::image_store::ImageStore;
use base64::Engine;
use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const GEN: &str = "/v1/images/generations";
const EDITS: &str = "/v1/images/edits";
const BUCKET: &str = "images-bucket";

/// An upload as the S3 stand-in received it.
#[derive(Debug, Clone)]
struct Put {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// S3 on 127.0.0.1: takes PutObject (path-style), answers GETs of what it
/// holds when they carry a query signature, and refuses uploads when told to.
struct FakeS3 {
    addr: SocketAddr,
    puts: Arc<Mutex<Vec<Put>>>,
    /// Uploads past this many are refused with 403.
    refuse_after: Arc<Mutex<usize>>,
    uploaded: Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeS3 {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
        let refuse_after = Arc::new(Mutex::new(usize::MAX));
        let uploaded = Arc::new(tokio::sync::Notify::new());
        let (log, limit, notify) = (puts.clone(), refuse_after.clone(), uploaded.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, limit, notify) = (log.clone(), limit.clone(), notify.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, limit, notify) = (log.clone(), limit.clone(), notify.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let path = parts.uri.path().to_owned();
                            let status = match parts.method {
                                http::Method::PUT => {
                                    let mut puts = log.lock().expect("lock");
                                    let refused = puts.len() >= *limit.lock().expect("lock");
                                    puts.push(Put {
                                        path: path.clone(),
                                        headers: parts.headers.clone(),
                                        body: body.clone(),
                                    });
                                    notify.notify_one();
                                    if refused { 403 } else { 200 }
                                }
                                _ => 405,
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(Bytes::new()))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            puts,
            refuse_after,
            uploaded,
            task: Some(task),
        }
    }

    /// Stops listening; returns once the port is closed.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn puts(&self) -> Vec<Put> {
        self.puts.lock().expect("lock").clone()
    }

    fn refuse_uploads_after(&self, n: usize) {
        *self.refuse_after.lock().expect("lock") = n;
    }

    /// The stored objects by path, the ones accepted only.
    fn objects(&self) -> HashMap<String, Put> {
        let limit = *self.refuse_after.lock().expect("lock");
        self.puts()
            .into_iter()
            .take(limit)
            .map(|p| (p.path.clone(), p))
            .collect()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The app on `fake`, with the image bucket on `s3` (or none).
fn app_with_bucket(fake: &FakeAzure, s3: Option<&FakeS3>) -> Arc<App> {
    let endpoint = s3.map(|s3| format!("http://{}", s3.addr));
    let mut settings = vec![("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET), ("MAX_RETRIES", "0")];
    if let Some(endpoint) = &endpoint {
        settings.extend([("IMAGE_BUCKET", BUCKET), ("AWS_ENDPOINT_URL", endpoint.as_str())]);
    }
    let config = config_with(fake, &settings);
    let bucket = config.image_bucket.clone();
    let (app, _) = unshared_app(config, vec![Ok(AZURE_KEY.to_owned())]);
    let app = match bucket {
        Some(bucket) => {
            let credentials = Credentials::new("AKIDTEST", "test-secret", Some("test-token".into()), None, "test");
            let store = ImageStore::new(
                &bucket,
                "us-east-1",
                SharedCredentialsProvider::new(credentials),
                reqwest::Client::new(),
            );
            app.with_image_store(Arc::new(store))
        }
        None => app,
    };
    Arc::new(app)
}

/// Azure's gpt-image answer: `images` as base64, `/` escaped as Azure may write it.
fn azure_answer(images: &[Vec<u8>]) -> String {
    let data: Vec<String> = images
        .iter()
        .map(|image| {
            let b64 = base64::engine::general_purpose::STANDARD
                .encode(image)
                .replace('/', "\\/");
            format!(r#"{{"b64_json":"{b64}","revised_prompt":"r"}}"#)
        })
        .collect();
    format!(
        r#"{{"created":1700000000,"data":[{}],"output_format":"png","usage":{{"total_tokens":9,"input_tokens":4,"output_tokens":5}}}}"#,
        data.join(",")
    )
}

/// Three different "images", with bytes that base64 writes with `/`.
fn three_images() -> Vec<Vec<u8>> {
    (0..3u8)
        .map(|i| {
            let mut image = png(16 + u32::from(i), 16, false);
            image.extend(std::iter::repeat_n(0xFF - i, 3000));
            image
        })
        .collect()
}

#[tokio::test]
async fn n_3_is_answered_with_three_links_to_the_decoded_images() {
    let images = three_images();
    let answer = azure_answer(&images);
    let fake = FakeAzure::start(move |_, _| Canned::json(200, &answer)).await;
    let s3 = FakeS3::start().await;
    let app = app_with_bucket(&fake, Some(&s3));
    let response = app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","n":3,"response_format":"url"}"#,
        ))
        .await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    let body = json(&response);
    assert_eq!(body["created"], 1700000000);
    assert_eq!(body["usage"]["total_tokens"], 9);
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    let objects = s3.objects();
    for (i, item) in data.iter().enumerate() {
        assert!(item.get("b64_json").is_none(), "{item}");
        assert_eq!(item["index"], i);
        assert_eq!(item["revised_prompt"], "r");
        let link = url::Url::parse(item["url"].as_str().expect("a url")).expect("a URL");
        let path = format!("/{BUCKET}/images/req-test-1/{i}.png");
        assert_eq!(link.path(), path);
        assert_eq!(link.host_str(), Some("127.0.0.1"));
        let query: HashMap<_, _> = link.query_pairs().into_owned().collect();
        assert_eq!(query["X-Amz-Expires"], "3600");
        assert_eq!(query["X-Amz-Security-Token"], "test-token");
        assert!(query.contains_key("X-Amz-Signature"));
        let put = &objects[&path];
        assert_eq!(put.body.as_ref(), &images[i][..], "image {i} stored as its bytes");
        assert_eq!(put.headers["content-type"], "image/png");
        assert_eq!(put.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert!(
            put.headers["authorization"]
                .to_str()
                .is_ok_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")),
        );
    }
    let sent = &fake.requests()[0];
    assert!(
        sent.body.get("response_format").is_none(),
        "gpt-image takes no response_format: {}",
        sent.body
    );
}

#[tokio::test]
async fn an_edit_asked_for_as_url_stores_its_image_with_the_output_formats_type() {
    let image = jpeg(32, 32);
    let answer = azure_answer(std::slice::from_ref(&image));
    let fake = FakeAzure::start(move |_, _| Canned::json(200, &answer)).await;
    let s3 = FakeS3::start().await;
    let app = app_with_bucket(&fake, Some(&s3));
    let upload = png(32, 32, true);
    let response = app
        .handle(post_form(
            EDITS,
            &[
                ("image", Some("in.png"), Some("image/png"), upload.as_slice()),
                ("prompt", None, None, b"a hat".as_slice()),
                ("model", None, None, b"azure-image".as_slice()),
                ("response_format", None, None, b"url".as_slice()),
                ("output_format", None, None, b"jpeg".as_slice()),
            ],
        ))
        .await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    let body = json(&response);
    let link = body["data"][0]["url"].as_str().expect("a link");
    assert!(link.contains(&format!("/{BUCKET}/images/req-test-1/0.jpg?")), "{link}");
    let puts = s3.puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].headers["content-type"], "image/jpeg");
    assert_eq!(puts[0].body.as_ref(), &image[..]);
}

#[tokio::test]
async fn without_a_bucket_url_is_refused_saying_how_to_enable_it() {
    let fake = FakeAzure::healthy().await;
    let app = app_with_bucket(&fake, None);
    let response = app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","response_format":"url"}"#,
        ))
        .await;
    let error = openai_error(&response, 400);
    assert_eq!(error["param"], "response_format");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("IMAGE_BUCKET")),
        "{error}"
    );
    assert!(fake.requests().is_empty(), "refused before Azure");
    // dall-e-3 answers its own links: no bucket needed.
    let response = app
        .handle(post(
            GEN,
            r#"{"model":"dall-e-3","prompt":"p","response_format":"url"}"#,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        json(&response)["data"][0]["url"]
            .as_str()
            .is_some_and(|u| u.contains("blob.core.windows.net"))
    );
}

#[tokio::test]
async fn a_stream_asked_for_as_url_stays_a_400_with_a_bucket() {
    let fake = FakeAzure::healthy().await;
    let s3 = FakeS3::start().await;
    let app = app_with_bucket(&fake, Some(&s3));
    let response = app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","stream":true,"response_format":"url"}"#,
        ))
        .await;
    let error = openai_error(&response, 400);
    assert_eq!(error["param"], "response_format");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn an_upload_that_fails_is_a_502_that_says_billed_and_is_not_retried() {
    let answer = azure_answer(&three_images());
    let fake = FakeAzure::start(move |_, _| Canned::json(200, &answer)).await;
    let s3 = FakeS3::start().await;
    s3.refuse_uploads_after(1);
    let app = app_with_bucket(&fake, Some(&s3));
    let response = app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","n":3,"response_format":"url"}"#,
        ))
        .await;
    let error = openai_error(&response, 502);
    assert_eq!(error["code"], "image_store_failed");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("billed") && m.contains("403")),
        "{error}"
    );
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert_eq!(fake.requests().len(), 1, "never asked again: the images are billed");
}

#[tokio::test]
async fn an_unreachable_bucket_is_the_same_502() {
    let answer = azure_answer(&three_images()[..1]);
    let fake = FakeAzure::start(move |_, _| Canned::json(200, &answer)).await;
    let mut s3 = FakeS3::start().await;
    let app = app_with_bucket(&fake, Some(&s3));
    s3.stop().await;
    let response = app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","response_format":"url"}"#,
        ))
        .await;
    let error = openai_error(&response, 502);
    assert_eq!(error["code"], "image_store_failed");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be reached")),
        "{error}"
    );
    assert_eq!(response.headers()["x-should-retry"], "false");
}

#[tokio::test]
async fn an_image_is_uploaded_while_the_next_one_is_still_arriving() {
    let images = three_images();
    let body = azure_answer(&images[..2]);
    // Cut inside the second image: the first is whole before the cut.
    let cut = body.rfind("b64_json").expect("two images") + 20;
    let rest_may_come = Arc::new(tokio::sync::Notify::new());
    let gate = rest_may_come.clone();
    let fake = FakeAzure::start(move |_, _| {
        Canned::in_parts(vec![
            Part::Data(body.as_bytes()[..cut].to_vec()),
            Part::Gate(gate.clone()),
            Part::Data(body.as_bytes()[cut..].to_vec()),
        ])
    })
    .await;
    let s3 = FakeS3::start().await;
    let app = app_with_bucket(&fake, Some(&s3));
    let uploaded = s3.uploaded.clone();
    let request = tokio::spawn(async move {
        app.handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","n":2,"response_format":"url"}"#,
        ))
        .await
    });
    // Only a hang guard: an upload after Azure's whole body would never come while the gate is shut.
    tokio::time::timeout(Duration::from_secs(60), uploaded.notified())
        .await
        .expect("the first image was uploaded while Azure held the rest");
    assert_eq!(s3.puts().len(), 1);
    assert_eq!(s3.puts()[0].body.as_ref(), &images[0][..]);
    rest_may_come.notify_one();
    let response = request.await.expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(json(&response)["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(s3.puts()[1].body.as_ref(), &images[1][..]);
}

#[tokio::test]
async fn image_data_that_is_not_base64_is_a_502_never_retried() {
    let fake =
        FakeAzure::start(|_, _| Canned::json(200, r#"{"created":1700000000,"data":[{"b64_json":"QUJD!!=="}]}"#)).await;
    let s3 = FakeS3::start().await;
    let app = app_with_bucket(&fake, Some(&s3));
    let response = app
        .handle(post(
            GEN,
            r#"{"model":"azure-image","prompt":"p","response_format":"url"}"#,
        ))
        .await;
    let error = openai_error(&response, 502);
    assert_eq!(error["code"], "upstream_invalid_response");
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert!(s3.puts().is_empty());
}

#[tokio::test]
async fn an_answer_too_large_for_a_buffered_door_suggests_url_when_there_is_a_bucket() {
    let answer = azure_answer(&three_images());
    let fake = FakeAzure::start(move |_, _| Canned::json(200, &answer)).await;
    let s3 = FakeS3::start().await;
    for (bucket, suggested) in [(Some(&s3), true), (None, false)] {
        let app = app_with_bucket(&fake, bucket);
        let mut req = post(GEN, r#"{"model":"azure-image","prompt":"p","n":3}"#);
        req.response_limit = Some(4_000);
        let response = app.handle(req).await;
        let error = openai_error(&response, 413);
        assert_eq!(error["code"], "response_too_large");
        let message = error["message"].as_str().unwrap_or_default();
        assert_eq!(message.contains("response_format \"url\""), suggested, "{message}");
        // The same request as links fits the door.
        if suggested {
            let mut req = post(
                GEN,
                r#"{"model":"azure-image","prompt":"p","n":3,"response_format":"url"}"#,
            );
            req.response_limit = Some(4_000);
            assert_eq!(app.handle(req).await.status(), 200);
        }
    }
}
