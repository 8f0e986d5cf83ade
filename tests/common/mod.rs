//! Test parts shared by the integration tests: an in-process Azure stand-in
//! that records what it receives, a scripted secret source, and the app wired
//! to both. The end-to-end stage (tests/e2e) uses the real peers instead.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_openai_image::App;
use azure_openai_image::Config;
use azure_openai_image::azure::AzureClient;
use azure_openai_image::exchange::Incoming;
use azure_openai_image::observe::MetricsSink;
use azure_openai_image::secrets::{ScriptedSource, SecretError};
use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const AZURE_KEY: &str = "azure-test-key-0123456789";
pub const GPT_DEPLOYMENT: &str = "gpt-image-1";
pub const DALLE_DEPLOYMENT: &str = "dall-e-3";
/// The client key every test request carries (also the one in `events/`).
pub const CLIENT_KEY: &str = "sk-example";
/// A key restricted to `azure-image`.
pub const TEAM_A_KEY: &str = "sk-team-a";
pub const CLIENT_KEYS_SECRET: &str = "client-keys";
/// The Azure key's secret id in the test configuration.
pub const AZURE_KEY_SECRET: &str = "azure-openai-key";
pub const CLIENT_KEYS: &str = r#"["sk-example", {"key": "sk-team-a", "name": "team-a", "models": ["azure-image"]}]"#;

/// What the stand-in received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    /// A JSON body; for a multipart body, its text fields as an object
    /// (numbers where the text is one).
    pub body: serde_json::Value,
    /// A multipart body's parts, in order.
    pub form: Vec<azure_openai_image::multipart::Part>,
    pub raw: Bytes,
}

/// What the stand-in answers.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// The body sent in parts instead (chunked), with pauses or a break.
    pub parts: Option<Vec<Part>>,
}

/// A step of a body sent in parts.
#[derive(Debug, Clone)]
pub enum Part {
    Data(Vec<u8>),
    Pause(Duration),
    /// Waits until the test opens the gate.
    Gate(Arc<tokio::sync::Notify>),
    /// The connection breaks: the body never ends.
    Break,
}

impl Canned {
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            parts: None,
        }
    }

    /// A 200 whose body comes in `parts`.
    pub fn in_parts(parts: Vec<Part>) -> Self {
        Self {
            parts: Some(parts),
            ..Self::json(200, "")
        }
    }

    /// A 200 event stream of `events` (`type`, then the rest of the data
    /// object), sent as Azure streams them, each event its own part.
    pub fn events(events: &[(&str, &str)]) -> Self {
        Self::in_parts(
            events
                .iter()
                .map(|(kind, rest)| Part::Data(sse_event(kind, rest)))
                .collect(),
        )
        .with_header("content-type", "text/event-stream")
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Responder = dyn Fn(&Recorded, usize) -> Canned + Send + Sync;

/// An Azure image deployment on 127.0.0.1, answering with `responder`
/// (given the request and its 0-based number).
pub struct FakeAzure {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Recorded>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeAzure {
    pub async fn start(responder: impl Fn(&Recorded, usize) -> Canned + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let responder: Arc<Responder> = Arc::new(responder);
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let responder = responder.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        let responder = responder.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let form = form_of(&parts.headers, &body);
                            let json = if form.is_empty() {
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
                            } else {
                                text_fields(&form)
                            };
                            let recorded = Recorded {
                                path: parts.uri.path().to_owned(),
                                query: parts.uri.query().unwrap_or_default().to_owned(),
                                headers: parts.headers,
                                body: json,
                                form,
                                raw: body,
                            };
                            let number = {
                                let mut log = log.lock().expect("lock");
                                log.push(recorded.clone());
                                log.len() - 1
                            };
                            let canned = responder(&recorded, number);
                            tokio::time::sleep(canned.delay).await;
                            let mut response = hyper::Response::builder()
                                .status(canned.status)
                                .header("apim-request-id", "apim-0001");
                            if !canned
                                .headers
                                .iter()
                                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                            {
                                response = response.header("content-type", "application/json");
                            }
                            for (k, v) in canned.headers {
                                response = response.header(k, v);
                            }
                            let parts = canned.parts.unwrap_or_else(|| vec![Part::Data(canned.body)]);
                            Ok::<_, Infallible>(response.body(PartsBody::send(parts)).expect("response"))
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
            received,
            task: Mutex::new(Some(task)),
        }
    }

    /// Answers every request as a healthy deployment of its model would.
    pub async fn healthy() -> Self {
        Self::start(|req, _| success_for(req)).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().expect("lock").clone()
    }

    pub fn base_url(&self, deployment: &str) -> String {
        format!("http://{}/openai/deployments/{deployment}", self.addr)
    }

    /// Stops listening; returns once the port is closed.
    pub async fn stop(&self) {
        let task = self.task.lock().expect("lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().expect("lock").take() {
            task.abort();
        }
    }
}

/// A multipart body's parts; none for any other body.
fn form_of(headers: &HeaderMap, body: &Bytes) -> Vec<azure_openai_image::multipart::Part> {
    use azure_openai_image::multipart;
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("multipart/form-data") {
        return Vec::new();
    }
    let boundary = multipart::boundary_of(content_type).expect("the connector sends a boundary");
    multipart::parse(body, boundary).expect("the connector sends a well-formed multipart body")
}

/// A form's text fields as a JSON object, numbers as numbers.
fn text_fields(form: &[azure_openai_image::multipart::Part]) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    for part in form.iter().filter(|p| p.filename.is_none()) {
        let text = String::from_utf8_lossy(&part.data).into_owned();
        let value = text
            .parse::<u64>()
            .map(serde_json::Value::from)
            .unwrap_or(serde_json::Value::String(text));
        fields.insert(part.name.clone(), value);
    }
    serde_json::Value::Object(fields)
}

/// A PNG's header, an image data chunk and its end: enough for any reader
/// of PNG headers, `width`x`height`, RGBA or RGB.
pub fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(kind);
        png.extend(data);
        png.extend([0u8; 4]);
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, if alpha { 6 } else { 2 }, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A JPEG's start and frame header, `width`x`height`.
pub fn jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    jpeg.extend(height.to_be_bytes());
    jpeg.extend(width.to_be_bytes());
    jpeg.extend([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
    jpeg
}

/// A form part: name, file name, content type, data.
pub type FormPart<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A `multipart/form-data` body of `(name, filename, content type, data)`
/// parts, and its content type, as the SDKs send one.
pub fn form(parts: &[FormPart<'_>]) -> (String, Vec<u8>) {
    let boundary = "----test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, filename, content_type, data) in parts {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(filename) = filename {
            body.extend(format!("; filename=\"{filename}\"").as_bytes());
        }
        body.extend(b"\r\n");
        if let Some(content_type) = content_type {
            body.extend(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend(b"\r\n");
        body.extend(*data);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A POST of a multipart body.
pub fn post_form(path: &str, parts: &[FormPart<'_>]) -> Incoming {
    let (content_type, body) = form(parts);
    let mut req = post(path, "");
    req.headers
        .insert("content-type", content_type.parse().expect("header"));
    req.body = Bytes::from(body);
    req
}

/// A body that plays its parts from a task of its own.
pub struct PartsBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl PartsBody {
    pub fn send(parts: Vec<Part>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for part in parts {
                match part {
                    Part::Data(data) => {
                        if tx.send(Ok(Bytes::from(data))).await.is_err() {
                            return;
                        }
                    }
                    Part::Pause(pause) => tokio::time::sleep(pause).await,
                    Part::Gate(gate) => gate.notified().await,
                    Part::Break => {
                        let _ = tx.send(Err(std::io::Error::other("the stand-in breaks off"))).await;
                        return;
                    }
                }
            }
        });
        Self(rx)
    }
}

impl http_body::Body for PartsBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|part| part.map(|r| r.map(http_body::Frame::data)))
    }
}

/// A 200 whose body breaks off inside its first image, after `b64_len`
/// characters of it. The break comes after a pause: a connection reset can
/// overtake data the connector has not read yet.
pub fn breaking_success(b64_len: usize) -> Canned {
    let head = format!(
        r#"{{"created":1700000000,"data":[{{"b64_json":"{}"#,
        b64_of_len(b64_len)
    );
    Canned::in_parts(vec![
        Part::Data(head.into_bytes()),
        Part::Pause(Duration::from_millis(200)),
        Part::Break,
    ])
}

/// One SSE event as Azure sends it: `event:` and the data object with its `type`.
pub fn sse_event(kind: &str, rest: &str) -> Vec<u8> {
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!(",{rest}")
    };
    format!("event: {kind}\ndata: {{\"type\":\"{kind}\"{rest}}}\n\n").into_bytes()
}

/// A base64 string of `len` characters (a stand-in for image data).
pub fn b64_of_len(len: usize) -> String {
    "QUJD".repeat(len / 4 + 1)[..len].to_owned()
}

/// Azure's 200 for the request's model and `n`.
pub fn success_for(req: &Recorded) -> Canned {
    let n = req.body.get("n").and_then(|n| n.as_u64()).unwrap_or(1);
    let images: Vec<String> = (0..n)
        .map(|i| {
            if req.body["model"] == "dall-e-3" {
                if req.body.get("response_format").and_then(|f| f.as_str()) == Some("b64_json") {
                    format!(r#"{{"b64_json":"{}","revised_prompt":"revised","content_filter_results":{{}}}}"#, b64_of_len(64))
                } else {
                    r#"{"url":"https://dalle.blob.core.windows.net/private/images/x.png?se=1","revised_prompt":"revised"}"#.to_owned()
                }
            } else {
                format!(r#"{{"b64_json":"{}"}}"#, b64_of_len(64 + i as usize))
            }
        })
        .collect();
    let extra = if req.body["model"] == "dall-e-3" {
        String::new()
    } else {
        r#","background":"opaque","output_format":"png","quality":"high","size":"1024x1024","usage":{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40}}"#.to_owned()
    };
    Canned::json(
        200,
        &format!(r#"{{"created":1700000000,"data":[{}]{extra}}}"#, images.join(",")),
    )
}

/// The configuration the events and tests use: `azure-image` (gpt-image-1)
/// first, `dall-e-3` second, both on the stand-in.
/// No retries unless a test asks for them: mapping tests should not wait on backoff.
pub fn config_for(fake: &FakeAzure) -> Config {
    config_with(
        fake,
        &[("CLIENT_API_KEYS_SECRET_ID", CLIENT_KEYS_SECRET), ("MAX_RETRIES", "0")],
    )
}

/// The test models with other auth settings: `settings` replaces the client keys secret.
pub fn config_with(fake: &FakeAzure, settings: &[(&str, &str)]) -> Config {
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","baseURL":"{}","apiVersion":"2025-04-01-preview"}},
            {{"name":"dall-e-3","model":"dall-e-3","baseURL":"{}","apiVersion":"2024-10-21"}}]"#,
        fake.base_url(GPT_DEPLOYMENT),
        fake.base_url(DALLE_DEPLOYMENT)
    );
    config_from(&models, settings)
}

/// A configuration of `models` (IMAGE_MODELS JSON) with `settings`.
pub fn config_from(models: &str, settings: &[(&str, &str)]) -> Config {
    let models = models.to_owned();
    Config::from_lookup(|k| match k {
        "IMAGE_MODELS" => Some(models.clone()),
        "AZURE_API_KEY_SECRET_ID" => Some(AZURE_KEY_SECRET.into()),
        other => settings.iter().find(|(k, _)| *k == other).map(|(_, v)| (*v).to_owned()),
    })
    .expect("valid test configuration")
}

pub struct TestApp {
    pub app: Arc<App>,
    pub secrets: Arc<ScriptedSource>,
}

impl TestApp {
    /// Fetches of the Azure key secret.
    pub fn secret_calls(&self) -> usize {
        self.secrets.calls(AZURE_KEY_SECRET)
    }
}

pub fn app_with(fake: &FakeAzure, answers: Vec<Result<String, SecretError>>) -> TestApp {
    app_from(config_for(fake), answers)
}

pub fn app_from(config: Config, answers: Vec<Result<String, SecretError>>) -> TestApp {
    let (app, secrets) = unshared_app(config, answers);
    TestApp {
        app: Arc::new(app),
        secrets,
    }
}

/// The app before it is shared, for tests that configure it further: the
/// Azure key secret answers `answers`, the client keys secret `CLIENT_KEYS`,
/// and metrics go to a sink nobody reads (tests that read them set their own).
pub fn unshared_app(config: Config, answers: Vec<Result<String, SecretError>>) -> (App, Arc<ScriptedSource>) {
    let source = Arc::new(ScriptedSource::new(answers).with(CLIENT_KEYS_SECRET, vec![Ok(CLIENT_KEYS.to_owned())]));
    let app = App::new(config, source.clone(), AzureClient::new().expect("client"))
        .with_metrics(MetricsSink::new("AzureOpenAIImage", |_| {}));
    (app, source)
}

pub fn app_for(fake: &FakeAzure) -> TestApp {
    app_with(fake, vec![Ok(AZURE_KEY.to_owned())])
}

/// A request carrying `CLIENT_KEY` as a bearer token, as the OpenAI SDKs send it.
pub fn request(method: Method, path: &str, body: &str) -> Incoming {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer {CLIENT_KEY}").parse().expect("header"));
    headers.insert("content-type", "application/json".parse().expect("header"));
    Incoming {
        method,
        path: path.to_owned(),
        headers,
        body: Bytes::copy_from_slice(body.as_bytes()),
        deadline: None,
        request_id: "req-test-1".to_owned(),
        response_limit: None,
    }
}

pub fn post(path: &str, body: &str) -> Incoming {
    request(Method::POST, path, body)
}

pub fn with_header(mut req: Incoming, name: &'static str, value: &str) -> Incoming {
    req.headers.insert(name, value.parse().expect("header"));
    req
}

pub fn without_header(mut req: Incoming, name: &'static str) -> Incoming {
    req.headers.remove(name);
    req
}

pub fn with_deadline(mut req: Incoming, left: Duration) -> Incoming {
    req.deadline = Some(Instant::now() + left);
    req
}

pub fn json(response: &Response<Vec<u8>>) -> serde_json::Value {
    serde_json::from_slice(response.body()).expect("response body is JSON")
}

/// Asserts the OpenAI error shape and returns the error object.
pub fn openai_error(response: &Response<Vec<u8>>, status: u16) -> serde_json::Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(response.body())
    );
    let body = json(response);
    let error = body["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "error.{key} missing in {body}");
    }
    assert_eq!(body["status_code"], status);
    assert_eq!(body["extra_fields"]["provider"], "azure");
    let text = String::from_utf8_lossy(response.body());
    assert!(!text.contains(AZURE_KEY), "the key leaked: {text}");
    assert!(!text.contains("127.0.0.1"), "the upstream URL leaked: {text}");
    error
}

/// An EMF record checked the way CloudWatch reads it: a `_aws` block with a
/// timestamp and directives, every metric a directive names with a numeric
/// value, every dimension with a string value.
pub fn emf_record(line: &str) -> serde_json::Value {
    let record: serde_json::Value = serde_json::from_str(line).expect("EMF is JSON");
    let aws = &record["_aws"];
    assert!(aws["Timestamp"].is_u64(), "{line}");
    let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
    assert!(!directives.is_empty());
    for directive in directives {
        assert!(directive["Namespace"].as_str().is_some_and(|ns| !ns.is_empty()));
        for set in directive["Dimensions"].as_array().expect("dimension sets") {
            for dimension in set.as_array().expect("dimension set") {
                let key = dimension.as_str().expect("dimension name");
                assert!(record[key].is_string(), "dimension {key} has no string value: {line}");
            }
        }
        for metric in directive["Metrics"].as_array().expect("metrics") {
            let name = metric["Name"].as_str().expect("metric name");
            assert!(record[name].is_number(), "metric {name} has no value: {line}");
            assert!(matches!(
                metric["Unit"].as_str(),
                Some("Count" | "Milliseconds" | "None")
            ));
        }
    }
    record
}

/// A writer that keeps what the log subscriber writes.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("lock"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURE: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's capture, if any.
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(captured) = c.borrow_mut().as_mut() {
                captured.0.lock().expect("lock").extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Handles `req` with the logs captured: the answer, and the request's log
/// line. One global subscriber writes each thread's lines to that thread's
/// capture: a scoped one per test loses events to the callsite cache when
/// tests run in parallel.
pub async fn handle_logged(app: &Arc<App>, req: Incoming) -> (Response<Vec<u8>>, serde_json::Value) {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let subscriber = azure_openai_image::observe::log_subscriber(|| ThreadCapture);
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    });
    let logs = Captured::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(logs.clone()));
    let response = app.handle(req).await;
    CAPTURE.with(|c| *c.borrow_mut() = None);
    let line = logs
        .lines()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every log line is JSON"))
        .find(|l| l["message"] == "request")
        .unwrap_or_else(|| panic!("no request line in {:?}", logs.lines()));
    (response, line)
}

/// The waits before each upstream attempt, in milliseconds, from a log line.
pub fn waits(line: &serde_json::Value) -> Vec<u64> {
    let text = line["upstream_waits_ms"].as_str().expect("upstream_waits_ms");
    serde_json::from_str(text).expect("a list of numbers")
}
