//! Server-sent events, both ways: framing the events the connector sends, and
//! splitting Azure's event stream into events as its bytes arrive.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::error::{ApiError, ErrorContext};

/// The most one upstream event may hold: a gpt-image image at the largest
/// size and quality is well under it. A longer event fails the stream
/// instead of growing without bound.
pub const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

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

/// An event read from Azure's stream: its `type` and its JSON data as sent.
#[derive(Debug, PartialEq, Eq)]
pub struct UpstreamEvent {
    pub kind: String,
    pub data: Bytes,
}

/// An event longer than [`MAX_EVENT_BYTES`] (or the parser's own limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an event of Azure's stream is larger than {0} bytes")]
pub struct EventTooLarge(pub usize);

/// Splits Azure's SSE bytes into events as they arrive, whatever the chunk
/// boundaries. Each byte is looked at once: the search for the blank line
/// that ends an event resumes where the last one stopped. Holds one event at
/// most, and hands each one on without a copy.
#[derive(Debug)]
pub struct EventParser {
    pending: BytesMut,
    /// How far `pending` has been searched for an event's end.
    scanned: usize,
    limit: usize,
}

impl Default for EventParser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl EventParser {
    pub fn with_limit(limit: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            scanned: 0,
            limit,
        }
    }

    /// The events `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<UpstreamEvent>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some((end, gap)) = self.boundary() {
            let block = self.pending.split_to(end + gap).freeze().slice(..end);
            self.scanned = 0;
            if let Some(event) = parse_block(block) {
                events.push(event);
            }
        }
        if self.pending.len() > self.limit {
            return Err(EventTooLarge(self.limit));
        }
        Ok(events)
    }

    /// What was left without a closing blank line.
    pub fn finish(&mut self) -> Option<UpstreamEvent> {
        self.scanned = 0;
        parse_block(std::mem::take(&mut self.pending).freeze())
    }

    /// The end of the first event in `pending` and the length of the blank
    /// line after it (`\n\n` or `\r\n\r\n`), searching on from `scanned`.
    fn boundary(&mut self) -> Option<(usize, usize)> {
        let buf = &self.pending[..];
        let mut at = self.scanned;
        while let Some(offset) = buf.get(at..)?.iter().position(|&b| b == b'\n') {
            let newline = at + offset;
            match (buf.get(newline + 1), newline.checked_sub(1).map(|i| buf[i])) {
                (Some(b'\n'), _) => return Some((newline, 2)),
                (Some(b'\r'), Some(b'\r')) if buf.get(newline + 2) == Some(&b'\n') => {
                    return Some((newline - 1, 4));
                }
                // Not enough bytes yet to tell: look at this newline again next time.
                (None, _) | (Some(b'\r'), _) if buf.len() < newline + 3 => {
                    self.scanned = newline;
                    return None;
                }
                _ => at = newline + 1,
            }
        }
        self.scanned = buf.len();
        None
    }
}

/// One event's lines: its `data` (a single line handed on as a slice of the
/// block), and its `type` from the data, else from `event:`. An empty type
/// (`event: ` alone, `"type": ""`) is no type: such an event is not handed on.
fn parse_block(block: Bytes) -> Option<UpstreamEvent> {
    let text = std::str::from_utf8(&block).ok()?;
    let mut name = None;
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("data:") {
            lines.push(value.strip_prefix(' ').unwrap_or(value));
        } else if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim().to_owned()).filter(|name| !name.is_empty());
        }
    }
    let data = match lines.as_slice() {
        [] => return None,
        [one] => block.slice_ref(one.as_bytes()),
        many => Bytes::from(many.join("\n")),
    };
    if data.is_empty() || &data[..] == b"[DONE]" {
        return None;
    }
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let kind = serde_json::from_slice::<Kind>(&data)
        .ok()?
        .kind
        .filter(|kind| !kind.is_empty())
        .or(name)?;
    Some(UpstreamEvent { kind, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(events: &[UpstreamEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn the_parser_reassembles_events_across_any_chunk_boundary() {
        let text = b"event: image_generation.partial_image\ndata: {\"type\":\"image_generation.partial_image\",\"b64_json\":\"QUFB\",\"partial_image_index\":0}\n\nevent: image_generation.completed\r\ndata: {\"type\":\"image_generation.completed\",\"b64_json\":\"QkJC\"}\r\n\r\ndata: [DONE]\n\n";
        for split in 0..text.len() {
            let mut parser = EventParser::default();
            let mut events = parser.push(&text[..split]).expect("small");
            events.extend(parser.push(&text[split..]).expect("small"));
            events.extend(parser.finish());
            assert_eq!(
                kinds(&events),
                ["image_generation.partial_image", "image_generation.completed"],
                "split at {split}"
            );
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events_as_one_piece() {
        let text = b"data: {\"type\":\"a\",\"x\":1}\n\ndata: {\"type\":\"b\"}\r\n\r\n: comment\n\nevent: c\ndata: {\"y\":\"two\"}\ndata: {\"z\":3}\n\n";
        let mut whole = EventParser::default();
        let expected = whole.push(text).expect("small");
        let mut parser = EventParser::default();
        let mut events = Vec::new();
        for byte in text {
            events.extend(parser.push(&[*byte]).expect("small"));
        }
        assert_eq!(events, expected);
        assert_eq!(kinds(&events), ["a", "b"], "a multi-line data is not one JSON value");
    }

    #[test]
    fn an_empty_type_is_no_type() {
        // Found by the sse fuzz target: `event: ` named the event "" when its data had no type.
        let text =
            b"event: \ndata:  {\"typeex\":0}\n\nevent: named\ndata: {\"type\":\"\"}\n\ndata: {\"type\":\"\"}\n\n";
        let events = EventParser::default().push(text).expect("small");
        assert_eq!(kinds(&events), ["named"]);
    }

    #[test]
    fn an_event_past_the_limit_fails_instead_of_growing() {
        let mut parser = EventParser::with_limit(1024);
        assert!(parser.push(&[b'x'; 1000]).expect("under").is_empty());
        assert_eq!(parser.push(&[b'x'; 100]), Err(EventTooLarge(1024)));
        let mut parser = EventParser::with_limit(1024);
        let event = format!("data: {{\"type\":\"a\",\"p\":\"{}\"}}\n\n", "y".repeat(900));
        assert_eq!(parser.push(event.repeat(3).as_bytes()).expect("each under").len(), 3);
    }

    #[test]
    fn a_single_data_line_is_handed_on_without_a_copy() {
        let mut parser = EventParser::default();
        let events = parser.push(b"data: {\"type\":\"a\"}\n\n").expect("small");
        assert_eq!(&events[0].data[..], b"{\"type\":\"a\"}");
    }

    #[test]
    fn error_events_hold_the_openai_error_object() {
        let err = ApiError::param(crate::error::CONTENT_POLICY_VIOLATION, "prompt", "filtered");
        let framed = error_event(&err, &ErrorContext::default());
        let mut parser = EventParser::default();
        let events = parser.push(&framed).expect("small");
        assert_eq!(events[0].kind, "error");
        let data: serde_json::Value = serde_json::from_slice(&events[0].data).expect("JSON");
        assert_eq!(data["type"], "error");
        assert_eq!(data["error"]["code"], "content_policy_violation");
    }
}
