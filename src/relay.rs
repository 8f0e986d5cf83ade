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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body::Body;

use crate::azure::UpstreamBody;
use crate::handler::{Aborted, App, Outcome, ResponseBody, ok_json};
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
    /// Taken when the request is logged.
    log: Option<(Arc<App>, Outcome)>,
    sent: usize,
    started: Instant,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("ready", &self.ready.len())
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// The 200 answer whose body is reshaped so far in `reshaper`, and whose
/// rest is still arriving. Logs the request when the body ends (or breaks off).
pub(crate) fn respond(
    app: &Arc<App>,
    mut reshaper: Reshaper,
    rest: UpstreamBody,
    outcome: Outcome,
) -> Response<ResponseBody> {
    let mut headers = http::HeaderMap::new();
    app.stamp(&mut headers, &outcome);
    let mut response = ok_json(ResponseBody::Relay(Box::new(Relay {
        ready: reshaper.take_output().into(),
        reshaper,
        upstream: Some(rest.body),
        deadline: Box::pin(tokio::time::sleep_until(rest.until.into())),
        log: Some((app.clone(), outcome)),
        sent: 0,
        started: Instant::now(),
    })));
    response.headers_mut().extend(headers);
    response
}

impl Relay {
    /// The next piece of the body, `None` at its end, or why it broke off.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                self.sent += chunk.len();
                return Poll::Ready(Some(Ok(chunk)));
            }
            let Some(upstream) = self.upstream.as_mut() else {
                self.log(None);
                return Poll::Ready(None);
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if let Err(malformed) = self.reshaper.feed(data) {
                            tracing::error!(error = %malformed, "Azure's body turned malformed after the answer started");
                            return self.abort("upstream_invalid_response");
                        }
                        self.ready.extend(self.reshaper.take_output());
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    tracing::error!(
                        timeout = err.is_timeout(),
                        "Azure's body broke off after the answer started"
                    );
                    return self.abort("upstream_unreachable");
                }
                Poll::Ready(None) => {
                    self.upstream = None;
                    if let Err(malformed) = self.reshaper.finish() {
                        tracing::error!(error = %malformed, "Azure's body ended malformed after the answer started");
                        return self.abort("upstream_invalid_response");
                    }
                }
                Poll::Pending => {
                    if self.deadline.as_mut().poll(cx).is_ready() {
                        tracing::error!("Azure's body did not end in time");
                        return self.abort("upstream_timeout");
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn abort(&mut self, code: &'static str) -> Poll<Option<Result<Bytes, Aborted>>> {
        self.upstream = None;
        self.ready.clear();
        self.log(Some(code));
        Poll::Ready(Some(Err(Aborted { code })))
    }

    /// The request's log line and metrics, once.
    fn log(&mut self, error_code: Option<&str>) {
        let Some((app, mut outcome)) = self.log.take() else {
            return;
        };
        outcome.images = Some(self.reshaper.images());
        outcome.usage = self.reshaper.usage();
        // Azure's time is its whole body, not only the part before the answer started.
        if let Some(attempt) = outcome.attempts.last_mut() {
            attempt.ms += self.started.elapsed().as_millis() as u64;
        }
        app.record(&outcome, 200, error_code, self.sent);
    }
}

impl Drop for Relay {
    /// A body dropped before its end: the client went away.
    fn drop(&mut self) {
        if self.log.is_some() {
            self.log(Some("client_disconnected"));
        }
    }
}
