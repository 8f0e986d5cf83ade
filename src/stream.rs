//! `stream: true`: the answer as server-sent events in OpenAI's image
//! streaming format (`image_generation.partial_image`, one
//! `image_generation.completed` per image, `error`).
//!
//! A gpt-image deployment that streams has its events relayed as they arrive,
//! one event at a time. Otherwise (dall-e-3, a deployment that refuses
//! `stream`, a front door that buffers) one buffered call makes the
//! `completed` events, sent as one chunk. Image data is copied as raw JSON,
//! never parsed or re-encoded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::azure::{AttemptRecord, Budget, Success};
use crate::error::{ApiError, ErrorContext};
use crate::generation::{Plan, run};
use crate::handler::{App, Incoming, Outcome, ResponseBody};
use crate::response::{RawObject, UpstreamError, UpstreamFailure, UpstreamResponse, Usage};

pub const COMPLETED: &str = "image_generation.completed";
pub const PARTIAL: &str = "image_generation.partial_image";

/// One SSE event: `event: {kind}` and its JSON `data` on one line.
pub fn event(kind: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + kind.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// The `error` event: `{"type": "error", "error": {message, type, param, code}, …}`,
/// which the OpenAI SDKs raise as an API error.
pub fn error_event(err: &ApiError, context: &ErrorContext<'_>) -> Vec<u8> {
    let body = err.body(context);
    let mut data = Vec::with_capacity(body.len() + 16);
    data.extend_from_slice(br#"{"type":"error","#);
    data.extend_from_slice(body.get(1..).unwrap_or_default());
    event("error", &data)
}

/// What a completed event says when the images response does not.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub size: String,
    pub quality: String,
    pub background: String,
    pub output_format: String,
}

/// One `image_generation.completed` event per image of an images response
/// body, in one buffer. The usage goes on the last event (zero on the others)
/// so that adding the events' usage counts it once.
pub fn completed_events(body: &[u8], defaults: &Defaults) -> Result<(Vec<u8>, usize), ApiError> {
    let malformed = || ApiError::internal("The images response could not be turned into events.");
    let object: RawObject<'_> = serde_json::from_slice(body).map_err(|_| malformed())?;
    let created = object.get("created").map_or("0", |v| v.get());
    let top = |key: &str, default: &str| {
        object
            .get(key)
            .map(|v| v.get().to_owned())
            .unwrap_or_else(|| serde_json::to_string(default).unwrap_or_default())
    };
    let (size, quality) = (top("size", &defaults.size), top("quality", &defaults.quality));
    let (background, format) = (
        top("background", &defaults.background),
        top("output_format", &defaults.output_format),
    );
    const NO_USAGE: &str = r#"{"total_tokens":0,"input_tokens":0,"output_tokens":0,"input_tokens_details":{"text_tokens":0,"image_tokens":0}}"#;
    let usage = object.get("usage").map_or(NO_USAGE, |v| v.get());
    let images: Vec<RawObject<'_>> = object
        .get("data")
        .and_then(|d| serde_json::from_str(d.get()).ok())
        .ok_or_else(malformed)?;
    let mut out = Vec::with_capacity(body.len() + images.len() * 512);
    for (i, image) in images.iter().enumerate() {
        let b64 = image.get("b64_json").ok_or_else(malformed)?;
        let mut data = Vec::with_capacity(b64.get().len() + 512);
        data.extend_from_slice(format!(r#"{{"type":"{COMPLETED}","b64_json":"#).as_bytes());
        data.extend_from_slice(b64.get().as_bytes());
        let last = i + 1 == images.len();
        let usage = if last { usage } else { NO_USAGE };
        data.extend_from_slice(
            format!(
                r#","created_at":{created},"size":{size},"quality":{quality},"background":{background},"output_format":{format},"usage":{usage}}}"#
            )
            .as_bytes(),
        );
        out.extend_from_slice(&event(COMPLETED, &data));
    }
    Ok((out, images.len()))
}

/// An event read from Azure's stream: its `type` and its JSON data as sent.
#[derive(Debug, PartialEq, Eq)]
pub struct UpstreamEvent {
    pub kind: String,
    pub data: Bytes,
}

/// Splits Azure's SSE bytes into events as they arrive, whatever the chunk
/// boundaries. Holds one event at most.
#[derive(Debug, Default)]
pub struct EventParser {
    pending: Vec<u8>,
}

impl EventParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<UpstreamEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some((end, gap)) = find_boundary(&self.pending) {
            let block: Vec<u8> = self.pending.drain(..end + gap).take(end).collect();
            if let Some(event) = parse_block(&block) {
                events.push(event);
            }
        }
        events
    }

    /// What was left without a closing blank line.
    pub fn finish(&mut self) -> Option<UpstreamEvent> {
        let block = std::mem::take(&mut self.pending);
        parse_block(&block)
    }
}

fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_block(block: &[u8]) -> Option<UpstreamEvent> {
    let text = std::str::from_utf8(block).ok()?;
    let mut name = None;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        } else if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim().to_owned());
        }
    }
    if data.is_empty() || data == "[DONE]" {
        return None;
    }
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let kind = serde_json::from_str::<Kind>(&data).ok()?.kind.or(name)?;
    Some(UpstreamEvent {
        kind,
        data: Bytes::from(data),
    })
}

/// Answers a `stream: true` request.
pub(crate) async fn respond(
    app: &Arc<App>,
    plan: Plan<'_>,
    req: &Incoming,
    mut outcome: Outcome,
) -> Response<ResponseBody> {
    let entry = plan.entry;
    let streams_upstream = entry.spec.always_b64
        // A buffered front door gets everything at once anyway: partial images would only add bytes.
        && req.response_limit.is_none()
        && !app
            .no_upstream_stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&entry.name);
    if streams_upstream {
        match start(app, &plan, req.deadline, &mut outcome).await {
            Started::Events(response) => return relay(app, response, &plan, req, outcome),
            Started::Whole(body) => {
                outcome.served = Some(entry.name.clone());
                return whole(app, &body, &plan, req, outcome);
            }
            Started::Refused => {
                tracing::info!(model = %entry.name, "the deployment does not stream; streams are made from buffered calls");
                app.no_upstream_stream
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(entry.name.clone());
            }
            // Retries and fallbacks are the buffered path's: it takes over.
            Started::Failed(failure) if failure.fallback => {}
            Started::Failed(failure) => {
                return app.finish(
                    app.error_response(&failure.error, &outcome),
                    &outcome,
                    req.response_limit,
                );
            }
        }
    }
    let result = run(app, &plan, req.deadline, None, &mut outcome).await;
    match result {
        Ok((Success { mut reshaper, .. }, served)) => {
            outcome.served = Some(served.name.clone());
            outcome.usage = reshaper.usage();
            // One buffer for the events to borrow from; the pieces go before the events are made.
            let body = crate::response::concat(&reshaper.take_output());
            whole(app, &body, &plan, req, outcome)
        }
        Err(err) => app.finish(app.error_response(&err, &outcome), &outcome, req.response_limit),
    }
}

/// The completed events of a whole images response, as one chunk.
fn whole(app: &Arc<App>, body: &[u8], plan: &Plan<'_>, req: &Incoming, mut outcome: Outcome) -> Response<ResponseBody> {
    match completed_events(body, &plan.defaults()) {
        Ok((events, images)) => {
            outcome.images = Some(images);
            let mut response = Response::new(events);
            set_event_headers(response.headers_mut());
            app.finish(response, &outcome, req.response_limit)
        }
        Err(err) => app.finish(app.error_response(&err, &outcome), &outcome, req.response_limit),
    }
}

fn set_event_headers(headers: &mut http::HeaderMap) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

enum Started {
    Events(reqwest::Response),
    Whole(Bytes),
    Refused,
    Failed(UpstreamFailure),
}

/// Opens Azure's stream: the first attempt of the request, with one more
/// after a 401 (key rotation).
async fn start(app: &App, plan: &Plan<'_>, deadline: Option<Instant>, outcome: &mut Outcome) -> Started {
    let entry = plan.entry;
    let budget = Budget {
        deadline,
        retry: app.config.retry,
    };
    let mut key = match app.azure_keys.get(&entry.secret_id).await {
        Ok(key) => key,
        Err(e) => return Started::Failed(UpstreamFailure::fatal(e.to_api_error("its Azure key"))),
    };
    let body = Bytes::from(plan.request.upstream_stream_body(entry));
    let mut rotated = false;
    loop {
        let Some(timeout) = budget.attempt(outcome.attempts.is_empty()) else {
            return Started::Failed(UpstreamError::Timeout.into());
        };
        let started = Instant::now();
        let opened = app.azure.open(entry, &key, body.clone(), timeout).await;
        let answer = opened.as_ref().ok().map(|r| (r.status(), r.headers()));
        let mut record = AttemptRecord::new(entry, answer, started, Duration::ZERO);
        let response = match opened {
            Ok(response) => response,
            Err(err) => {
                let failure = UpstreamFailure::from(err);
                record.outcome = failure.error.code.as_deref().unwrap_or("error").to_owned();
                outcome.attempts.push(record);
                return Started::Failed(failure);
            }
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED && !rotated {
            rotated = true;
            record.outcome = "key_rejected".into();
            outcome.attempts.push(record);
            match app.azure_keys.refresh(&entry.secret_id, &key).await {
                Ok(fresh) => key = fresh,
                Err(e) => return Started::Failed(UpstreamFailure::fatal(e.to_api_error("its Azure key"))),
            }
            continue;
        }
        let is_events = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_success() && is_events {
            outcome.attempts.push(record);
            return Started::Events(response);
        }
        let headers = response.headers().clone();
        let whole = match tokio::time::timeout(timeout, response.bytes()).await {
            Ok(Ok(bytes)) => bytes,
            _ => {
                record.outcome = "upstream_timeout".into();
                outcome.attempts.push(record);
                return Started::Failed(UpstreamError::Timeout.into());
            }
        };
        if status.is_success() {
            outcome.attempts.push(record);
            return Started::Whole(whole);
        }
        let upstream = UpstreamResponse {
            status,
            headers,
            body: whole,
        };
        let failure = UpstreamFailure::from_response(&upstream, entry);
        record.outcome = failure.error.code.as_deref().unwrap_or("error").to_owned();
        outcome.attempts.push(record);
        if status == StatusCode::BAD_REQUEST && refuses_streaming(&upstream.body) {
            return Started::Refused;
        }
        return Started::Failed(failure);
    }
}

/// A 400 about `stream` or `partial_images`: the deployment's api-version does not stream.
fn refuses_streaming(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("stream") || text.contains("partial_images")
}

/// Relays Azure's events as they arrive; logs the request when the stream ends.
fn relay(
    app: &Arc<App>,
    mut upstream: reqwest::Response,
    plan: &Plan<'_>,
    req: &Incoming,
    mut outcome: Outcome,
) -> Response<ResponseBody> {
    outcome.served = Some(plan.entry.name.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let mut response = Response::new(ResponseBody::Events(rx));
    set_event_headers(response.headers_mut());
    app.stamp(response.headers_mut(), &outcome);
    let app = app.clone();
    let deadline = req.deadline;
    let entry_name = plan.entry.name.clone();
    tokio::spawn(async move {
        let relay_started = Instant::now();
        let mut parser = EventParser::default();
        let mut sent = 0usize;
        let mut images = 0usize;
        let mut error_code: Option<String> = None;
        let fail = |err: ApiError, outcome: &Outcome| error_event(&err, &app.error_context(outcome));
        'relay: loop {
            let left = deadline.map_or(Duration::from_secs(900), |d| {
                d.saturating_duration_since(Instant::now())
                    .saturating_sub(crate::azure::DEADLINE_MARGIN)
            });
            let (events, last) = match tokio::time::timeout(left, upstream.chunk()).await {
                Ok(Ok(Some(bytes))) => (parser.push(&bytes), None),
                Ok(Ok(None)) => (parser.finish().into_iter().collect(), Some(None)),
                Ok(Err(_)) => (
                    Vec::new(),
                    Some(Some(crate::response::upstream_unavailable(UpstreamError::Transport))),
                ),
                Err(_) => (
                    Vec::new(),
                    Some(Some(crate::response::upstream_unavailable(UpstreamError::Timeout))),
                ),
            };
            for event in events {
                match event.kind.as_str() {
                    COMPLETED => {
                        images += 1;
                        #[derive(Deserialize)]
                        struct WithUsage {
                            usage: Option<Usage>,
                        }
                        if let Ok(WithUsage { usage: Some(usage) }) = serde_json::from_slice(&event.data) {
                            outcome.usage = Some(usage);
                        }
                    }
                    "error" => {
                        error_code = Some(upstream_error_code(&event.data));
                    }
                    _ => {}
                }
                let framed = event_from_upstream(&event);
                sent += framed.len();
                if tx.send(Bytes::from(framed)).await.is_err() {
                    break 'relay;
                }
                if error_code.is_some() {
                    break 'relay;
                }
            }
            match last {
                None => continue,
                Some(None) if images > 0 => break,
                Some(None) => {
                    let err = ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        crate::error::SERVER_ERROR,
                        "upstream_invalid_response",
                        format!("The Azure stream for model `{entry_name}` ended before any image was completed."),
                    );
                    error_code = err.code.as_deref().map(str::to_owned);
                    let framed = fail(err, &outcome);
                    sent += framed.len();
                    let _ = tx.send(Bytes::from(framed)).await;
                    break;
                }
                Some(Some(err)) => {
                    error_code = err.code.as_deref().map(str::to_owned);
                    let framed = fail(err, &outcome);
                    sent += framed.len();
                    let _ = tx.send(Bytes::from(framed)).await;
                    break;
                }
            }
        }
        outcome.images = Some(images);
        // Azure's time is the whole stream, not only the wait for its headers.
        if let Some(attempt) = outcome.attempts.last_mut() {
            attempt.ms += relay_started.elapsed().as_millis() as u64;
        }
        app.record(&outcome, 200, error_code.as_deref(), sent);
    });
    response
}

/// An upstream event as the client sees it: its own `type` as the event name;
/// an Azure error reshaped as the OpenAI error object.
fn event_from_upstream(upstream: &UpstreamEvent) -> Vec<u8> {
    if upstream.kind != "error" {
        return event(&upstream.kind, &upstream.data);
    }
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        error: Option<&'a RawValue>,
    }
    match serde_json::from_slice::<Wrapped<'_>>(&upstream.data) {
        Ok(Wrapped { error: Some(error) }) => {
            let mut data = br#"{"type":"error","error":"#.to_vec();
            data.extend_from_slice(error.get().as_bytes());
            data.push(b'}');
            event("error", &data)
        }
        _ => event("error", &upstream.data),
    }
}

fn upstream_error_code(data: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Wrapped {
        error: Option<Inner>,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Wrapped>(data)
        .ok()
        .and_then(|w| w.error)
        .and_then(|e| e.code)
        .map(|c| c.as_str().map(str::to_owned).unwrap_or_else(|| c.to_string()))
        .unwrap_or_else(|| "upstream_stream_error".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn defaults() -> Defaults {
        Defaults {
            size: "1024x1024".into(),
            quality: "standard".into(),
            background: "opaque".into(),
            output_format: "png".into(),
        }
    }

    /// The events of an SSE text, as the OpenAI SDK reads them.
    fn read(text: &[u8]) -> Vec<(String, Value)> {
        let mut parser = EventParser::default();
        parser
            .push(text)
            .into_iter()
            .map(|e| (e.kind, serde_json::from_slice(&e.data).expect("data is JSON")))
            .collect()
    }

    #[test]
    fn completed_events_carry_each_image_and_the_usage_once() {
        let body = br#"{"created":7,"data":[{"b64_json":"QUFB","index":0},{"b64_json":"QkJC","index":1}],"size":"1536x1024","quality":"high","usage":{"total_tokens":9,"input_tokens":4,"output_tokens":5,"input_tokens_details":{"text_tokens":4,"image_tokens":0}}}"#;
        let (events, images) = completed_events(body, &defaults()).expect("events");
        assert_eq!(images, 2);
        let events = read(&events);
        assert_eq!(events.len(), 2);
        for (kind, data) in &events {
            assert_eq!(kind, COMPLETED);
            assert_eq!(data["type"], COMPLETED);
            assert_eq!(data["created_at"], 7);
            assert_eq!(data["size"], "1536x1024");
            assert_eq!(data["background"], "opaque", "filled from the request defaults");
        }
        assert_eq!(events[0].1["b64_json"], "QUFB");
        assert_eq!(events[0].1["usage"]["total_tokens"], 0);
        assert_eq!(events[1].1["usage"]["total_tokens"], 9);
    }

    #[test]
    fn an_image_without_data_cannot_become_an_event() {
        assert!(completed_events(br#"{"created":1,"data":[{"url":"https://x"}]}"#, &defaults()).is_err());
    }

    #[test]
    fn the_parser_reassembles_events_across_any_chunk_boundary() {
        let text = b"event: image_generation.partial_image\ndata: {\"type\":\"image_generation.partial_image\",\"b64_json\":\"QUFB\",\"partial_image_index\":0}\n\nevent: image_generation.completed\r\ndata: {\"type\":\"image_generation.completed\",\"b64_json\":\"QkJC\"}\r\n\r\ndata: [DONE]\n\n";
        for split in 0..text.len() {
            let mut parser = EventParser::default();
            let mut events = parser.push(&text[..split]);
            events.extend(parser.push(&text[split..]));
            events.extend(parser.finish());
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            assert_eq!(kinds, [PARTIAL, COMPLETED], "split at {split}");
        }
    }

    #[test]
    fn error_events_hold_the_openai_error_object() {
        let err = ApiError::invalid_param("prompt", "content_policy_violation", "filtered");
        let framed = error_event(&err, &ErrorContext::default());
        let (kind, data) = read(&framed).remove(0);
        assert_eq!(kind, "error");
        assert_eq!(data["type"], "error");
        assert_eq!(data["error"]["code"], "content_policy_violation");
        let upstream = UpstreamEvent {
            kind: "error".into(),
            data: Bytes::from_static(br#"{"type":"error","error":{"code":"server_error","message":"boom","type":"server_error","param":null}}"#),
        };
        let (_, data) = read(&event_from_upstream(&upstream)).remove(0);
        assert_eq!(data["error"]["code"], "server_error");
        assert_eq!(upstream_error_code(&upstream.data), "server_error");
    }
}
