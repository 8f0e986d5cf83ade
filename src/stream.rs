//! `stream: true`: the answer as server-sent events in OpenAI's image
//! streaming format (each operation's `partial_image` and `completed` events,
//! `error`).
//!
//! A gpt-image deployment that streams has its events relayed as they arrive,
//! one event at a time. Otherwise (dall-e-3, a deployment that refuses
//! `stream`, a front door that buffers) one buffered call makes the
//! `completed` events, sent as one chunk. Image data is copied as raw JSON,
//! never parsed or re-encoded.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http_body::Body;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::App;
use crate::azure::{Call, Delivery, Success, UpstreamBody};
use crate::error::{self, ApiError, ErrorContext};
use crate::exchange::{Aborted, Answer, ResponseBody, StreamingBody};
use crate::json_text::{RawObject, join};
use crate::observe::RequestLog;
use crate::operation::{Defaults, EventNames};
use crate::reshape::Usage;
use crate::sse::{EventParser, UpstreamEvent, error_event, event};
use crate::upstream::{UpstreamError, upstream_unavailable};

/// Answers a `stream: true` request.
pub(crate) async fn answer(app: &App, call: Call<'_>, log: &mut RequestLog) -> Result<Answer, ApiError> {
    let (operation, request) = (call.operation, call.request);
    let (delivery, served, target) = app.azure().call(app.learnt(), call, &mut log.attempts).await?;
    log.served_by(served, target);
    let names = operation.events();
    let body = match delivery {
        Delivery::Events(upstream) => {
            ResponseBody::Streaming(Box::new(EventRelay::new(upstream, names, request.n(), log)))
        }
        Delivery::Images(Success { mut reshaper, .. }) => {
            log.usage = reshaper.usage();
            // One buffer for the events to take their images from, without a copy.
            let body = Bytes::from(join(reshaper.take_output()));
            drop(reshaper);
            let defaults = Defaults::of(request, served.spec);
            let (events, images) = completed_events(&body, &defaults, names.completed)?;
            log.images = Some(images);
            ResponseBody::from(events)
        }
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// One `completed` event per image of an images response body, as pieces:
/// each image's base64 is a slice of `body`, never copied. The usage goes on
/// the last event (zero on the others) so that adding the events' usage
/// counts it once.
pub fn completed_events(body: &Bytes, defaults: &Defaults, completed: &str) -> Result<(Vec<Bytes>, usize), ApiError> {
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
    let mut out = Vec::with_capacity(images.len() * 3);
    for (i, image) in images.iter().enumerate() {
        let b64 = image.get("b64_json").ok_or_else(malformed)?;
        let last = i + 1 == images.len();
        let usage = if last { usage } else { NO_USAGE };
        out.push(Bytes::from(format!(
            r#"event: {completed}
data: {{"type":"{completed}","b64_json":"#
        )));
        out.push(body.slice_ref(b64.get().as_bytes()));
        out.push(Bytes::from(format!(
            r#","created_at":{created},"size":{size},"quality":{quality},"background":{background},"output_format":{format},"usage":{usage}}}

"#
        )));
    }
    Ok((out, images.len()))
}

/// Azure's events relayed as they arrive, each reframed for the client; a
/// failure ends the stream with an `error` event.
struct EventRelay {
    /// `None` once Azure's stream has ended or failed.
    upstream: Option<reqwest::Body>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    parser: EventParser,
    ready: VecDeque<Bytes>,
    names: EventNames,
    /// The images asked for: a stream that ends with fewer is not whole.
    expected: u32,
    images: usize,
    usage: Option<Usage>,
    /// The code of the `error` event that ended the stream.
    error_code: Option<String>,
    /// What an `error` event of the connector's own says about the request.
    model_requested: Option<String>,
    request_type: &'static str,
    started: Instant,
}

impl EventRelay {
    fn new(upstream: UpstreamBody, names: EventNames, expected: u32, log: &RequestLog) -> Self {
        Self {
            upstream: Some(upstream.body),
            deadline: Box::pin(tokio::time::sleep_until(upstream.until.into())),
            parser: EventParser::default(),
            ready: VecDeque::new(),
            names,
            expected,
            images: 0,
            usage: None,
            error_code: None,
            model_requested: log.model_requested.clone(),
            request_type: log.request_type,
            started: Instant::now(),
        }
    }

    /// An upstream event on its way to the client; an `error` event ends the stream.
    fn pass(&mut self, event: UpstreamEvent) {
        if self.upstream.is_none() {
            return;
        }
        if event.kind == self.names.completed {
            self.images += 1;
            #[derive(Deserialize)]
            struct WithUsage {
                usage: Option<Usage>,
            }
            if let Ok(WithUsage { usage: Some(usage) }) = serde_json::from_slice(&event.data) {
                self.usage = Some(usage);
            }
        } else if event.kind == "error" {
            self.error_code = Some(upstream_error_code(&event.data));
            self.upstream = None;
        }
        self.ready.push_back(Bytes::from(event_from_upstream(&event)));
    }

    /// Ends the stream with the connector's own `error` event.
    fn fail(&mut self, err: ApiError) {
        self.upstream = None;
        self.error_code = err.code.as_deref().map(str::to_owned);
        let context = ErrorContext {
            model_requested: self.model_requested.as_deref(),
            request_type: self.request_type,
        };
        self.ready.push_back(Bytes::from(error_event(&err, &context)));
    }
}

impl StreamingBody for EventRelay {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            let Some(upstream) = self.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    match self.parser.push(&data) {
                        Ok(events) => events.into_iter().for_each(|e| self.pass(e)),
                        Err(too_large) => {
                            tracing::error!(error = %too_large, "Azure's stream sent an event too large to relay");
                            self.fail(ApiError::upstream_invalid_response(
                                "has an event larger than the connector relays",
                            ));
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => self.fail(upstream_unavailable(UpstreamError::Transport)),
                Poll::Ready(None) => {
                    if let Some(last) = self.parser.finish() {
                        self.pass(last);
                    }
                    if self.upstream.is_some() && self.images < self.expected as usize {
                        self.fail(ApiError::new(
                            error::UPSTREAM_INVALID_RESPONSE,
                            format!(
                                "The Azure stream ended after {} of {} images.",
                                self.images, self.expected
                            ),
                        ));
                    }
                    self.upstream = None;
                }
                Poll::Pending => {
                    if self.deadline.as_mut().poll(cx).is_ready() {
                        self.fail(upstream_unavailable(UpstreamError::Timeout));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn fill_log(&mut self, log: &mut RequestLog) {
        log.images = Some(self.images);
        log.usage = self.usage;
        log.late_error = self.error_code.clone();
        // Azure's time is the whole stream, not only the wait for its headers.
        if let Some(attempt) = log.attempts.last_mut() {
            attempt.ms += self.started.elapsed().as_millis() as u64;
        }
    }
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

    const COMPLETED: &str = "image_generation.completed";

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
            .expect("small")
            .into_iter()
            .map(|e| (e.kind, serde_json::from_slice(&e.data).expect("data is JSON")))
            .collect()
    }

    #[test]
    fn completed_events_carry_each_image_and_the_usage_once() {
        let body = br#"{"created":7,"data":[{"b64_json":"QUFB","index":0},{"b64_json":"QkJC","index":1}],"size":"1536x1024","quality":"high","usage":{"total_tokens":9,"input_tokens":4,"output_tokens":5,"input_tokens_details":{"text_tokens":4,"image_tokens":0}}}"#;
        let body = Bytes::from_static(body);
        let (events, images) = completed_events(&body, &defaults(), COMPLETED).expect("events");
        assert_eq!(images, 2);
        let image = events
            .iter()
            .find(|piece| &piece[..] == b"\"QUFB\"")
            .expect("the image on its own");
        let (start, at) = (body.as_ptr() as usize, image.as_ptr() as usize);
        assert!(
            at >= start && at + image.len() <= start + body.len(),
            "a slice of the body, not a copy"
        );
        let events = read(&crate::json_text::concat(&events));
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
        let body = Bytes::from_static(br#"{"created":1,"data":[{"url":"https://x"}]}"#);
        assert!(completed_events(&body, &defaults(), COMPLETED).is_err());
    }

    #[test]
    fn azure_error_events_become_the_openai_error_object() {
        let upstream = UpstreamEvent {
            kind: "error".into(),
            data: Bytes::from_static(br#"{"type":"error","error":{"code":"server_error","message":"boom","type":"server_error","param":null}}"#),
        };
        let (_, data) = read(&event_from_upstream(&upstream)).remove(0);
        assert_eq!(data["error"]["code"], "server_error");
        assert_eq!(upstream_error_code(&upstream.data), "server_error");
    }
}
