//! What every step shares: the request as the front doors deliver it, and the
//! answer's body, whole or still being produced.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Response};

use crate::observe::RequestLog;

/// The largest request body any route takes (an edit's uploads: what a
/// Lambda invocation can carry); each operation sets its own limit at or below it.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// A request as every front door delivers it.
pub struct Incoming {
    pub method: Method,
    /// The path without any API Gateway stage prefix.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the answer must be out; `None` when unbounded or unknown.
    pub deadline: Option<Instant>,
    pub request_id: String,
    /// The most the front door returns, when it buffers (6 MB for a buffered
    /// Lambda response); `None` when the answer streams.
    pub response_limit: Option<usize>,
}

/// Headers carry client keys and bodies carry prompts: neither is printed.
impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("method", &self.method)
            .field("path_len", &self.path.len())
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .field("request_id", &self.request_id)
            .field("response_limit", &self.response_limit)
            .finish_non_exhaustive()
    }
}

/// An answer on its way out.
pub type Answer = Response<ResponseBody>;

/// A response body: whole, or produced while it is sent (a success relayed as
/// Azure's arrives, a stream of events).
pub enum ResponseBody {
    /// A whole body, in pieces.
    Whole(VecDeque<Bytes>),
    Streaming(Box<dyn StreamingBody>),
}

/// A body produced while it is sent.
pub trait StreamingBody: Send {
    /// The next piece, `None` at the end, or why the body broke off.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>>;

    /// What the request's log line says of the body, once it has ended or
    /// broken off: images, usage, Azure's time, an error after the start.
    fn fill_log(&mut self, log: &mut RequestLog);

    /// How many bytes are still to come, when known ahead (Azure announced
    /// its body's length): what decides whether the answer is worth compressing.
    fn remaining_hint(&self) -> Option<usize> {
        None
    }
}

/// Why a body stopped before its end. The front door must not let the client
/// take it for whole: the local server drops the connection, a streamed Lambda
/// answer ends with the Runtime API's error trailers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the answer broke off: {code}")]
pub struct Aborted {
    /// The error code of the log line.
    pub code: &'static str,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole(chunks) => f.debug_tuple("Whole").field(&chunks.len()).finish(),
            Self::Streaming(_) => f.write_str("Streaming"),
        }
    }
}

impl ResponseBody {
    pub fn whole(bytes: impl Into<Bytes>) -> Self {
        Self::Whole(VecDeque::from([bytes.into()]))
    }

    pub fn empty() -> Self {
        Self::Whole(VecDeque::new())
    }

    /// Bytes in a whole body; `None` for one still being produced.
    pub fn known_len(&self) -> Option<usize> {
        match self {
            Self::Whole(chunks) => Some(chunks.iter().map(Bytes::len).sum()),
            Self::Streaming(_) => None,
        }
    }

    /// The whole body, once a stream has ended; up to the break when it broke
    /// off (the log says why).
    pub async fn collect(mut self) -> Vec<Bytes> {
        use http_body_util::BodyExt;
        let mut chunks = Vec::new();
        while let Some(Ok(frame)) = self.frame().await {
            if let Ok(data) = frame.into_data() {
                chunks.push(data);
            }
        }
        chunks
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(body: Vec<u8>) -> Self {
        Self::whole(body)
    }
}

impl From<Vec<Bytes>> for ResponseBody {
    fn from(chunks: Vec<Bytes>) -> Self {
        Self::Whole(chunks.into_iter().filter(|c| !c.is_empty()).collect())
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            Self::Whole(chunks) => Poll::Ready(chunks.pop_front().map(|b| Ok(http_body::Frame::data(b)))),
            Self::Streaming(body) => body
                .poll_chunk(cx)
                .map(|next| next.map(|r| r.map(http_body::Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Whole(chunks) if chunks.is_empty())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.known_len() {
            Some(len) => http_body::SizeHint::with_exact(len as u64),
            None => http_body::SizeHint::default(),
        }
    }
}

/// A JSON answer with status 200.
pub fn ok_json<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
