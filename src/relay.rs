//! A success body sent on while Azure's is still arriving: the answer to a
//! generation on a front door that streams (the local server, a streamed
//! Lambda response).
//!
//! Store and forward would add a second transfer of every megabyte to the
//! answer's time; relaying overlaps it with Azure's. The cost is in what a
//! failure can look like. Until the answer is committed (Azure has shown a
//! valid `created` and [`COMMIT_AFTER`] bytes), a broken or malformed body is
//! still a 502 and retried like any other failure. After it, the status is
//! out: the body breaks off ([`Aborted`]) instead of ending, so no client
//! takes a cut body for a whole one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Body;

use crate::azure::UpstreamBody;
use crate::error;
use crate::exchange::{Aborted, Answer, ResponseBody, StreamingBody, ok_json};
use crate::observe::RequestLog;
use crate::reshape::Reshaper;

/// Output held back before the answer is committed to a 200: small answers
/// (URLs, small images) are checked whole before the first byte goes out.
pub const COMMIT_AFTER: usize = 64 * 1024;

/// The rest of a success body, reshaped as Azure's arrives.
pub struct Relay {
    ready: VecDeque<Bytes>,
    reshaper: Reshaper,
    /// `None` once Azure's body has ended.
    upstream: Option<reqwest::Body>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    started: Instant,
}

/// The 200 answer whose body is reshaped so far in `reshaper`, and whose
/// rest is still arriving.
pub(crate) fn answer(mut reshaper: Reshaper, rest: UpstreamBody) -> Answer {
    ok_json(ResponseBody::Streaming(Box::new(Relay {
        ready: reshaper.take_output().into(),
        reshaper,
        upstream: Some(rest.body),
        deadline: Box::pin(tokio::time::sleep_until(rest.until.into())),
        started: Instant::now(),
    })))
}

impl StreamingBody for Relay {
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
                    if let Ok(data) = frame.into_data() {
                        if let Err(malformed) = self.reshaper.feed(data) {
                            tracing::error!(error = %malformed, "Azure's body turned malformed after the answer started");
                            return self.abort(error::UPSTREAM_INVALID_RESPONSE.code);
                        }
                        self.ready.extend(self.reshaper.take_output());
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    tracing::error!(
                        timeout = err.is_timeout(),
                        "Azure's body broke off after the answer started"
                    );
                    return self.abort(error::UPSTREAM_UNREACHABLE.code);
                }
                Poll::Ready(None) => {
                    self.upstream = None;
                    if let Err(malformed) = self.reshaper.finish() {
                        tracing::error!(error = %malformed, "Azure's body ended malformed after the answer started");
                        return self.abort(error::UPSTREAM_INVALID_RESPONSE.code);
                    }
                }
                Poll::Pending => {
                    if self.deadline.as_mut().poll(cx).is_ready() {
                        tracing::error!("Azure's body did not end in time");
                        return self.abort(error::UPSTREAM_TIMEOUT.code);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn fill_log(&mut self, log: &mut RequestLog) {
        log.images = Some(self.reshaper.images());
        log.usage = self.reshaper.usage();
        // Azure's time is its whole body, not only the part before the answer started.
        if let Some(attempt) = log.attempts.last_mut() {
            attempt.ms += self.started.elapsed().as_millis() as u64;
        }
    }

    /// What is ready and what Azure has still to send (each further image's
    /// `index` adds a few bytes more).
    fn remaining_hint(&self) -> Option<usize> {
        let ready: usize = self.ready.iter().map(Bytes::len).sum();
        let rest = match &self.upstream {
            Some(upstream) => usize::try_from(upstream.size_hint().exact()?).ok()?,
            None => 0,
        };
        Some(ready + self.reshaper.pending_len() + rest)
    }
}

impl Relay {
    fn abort(&mut self, code: &'static str) -> Poll<Option<Result<Bytes, Aborted>>> {
        self.upstream = None;
        self.ready.clear();
        Poll::Ready(Some(Err(Aborted { code })))
    }
}
