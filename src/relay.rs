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
//!
//! [`stored`] reads a success body the same way for `response_format: "url"`,
//! storing its images as they arrive; that answer is whole, and small.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Body;

use crate::azure::UpstreamBody;
use crate::error::{self, ApiError};
use crate::exchange::{Aborted, Answer, ResponseBody, StreamingBody, ok_json};
use crate::image_store::{self, Base64Image, ImageStore, StoreError};
use crate::json_text::{RawObject, escape_into};
use crate::observe::RequestLog;
use crate::reshape::{ImagePiece, Reshaper};
use crate::upstream::{UpstreamError, upstream_unavailable};

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

/// Azure's images stored in the image bucket as its body arrives, and the
/// answer with a link to each, once every one is stored (`response_format:
/// "url"`).
///
/// One image at a time: an image is decoded as its text arrives, and its
/// upload runs while the next one arrives; that one waits, whole, for the
/// upload before it. So at most two decoded images are held, whatever `n`.
/// An image that cannot be stored fails the answer (never a shorter `data`
/// that looks whole), and, the images being generated and billed, without a
/// retry (`x-should-retry: false`).
pub(crate) async fn stored(
    store: Arc<ImageStore>,
    mut reshaper: Reshaper,
    rest: UpstreamBody,
    request_id: &str,
    output_format: Option<&str>,
    log: &mut RequestLog,
) -> Result<Answer, ApiError> {
    let started = Instant::now();
    let until = rest.until;
    let (content_type, extension) = image_store::media_of(output_format);
    let key = |index: usize| image_store::object_key(request_id, index, extension);
    let storing = store_all(&store, &mut reshaper, rest.body, content_type, &key, until);
    let result = match tokio::time::timeout_at(until.into(), storing).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Upstream(UpstreamError::Timeout)),
    };
    log.images = Some(reshaper.images());
    log.usage = reshaper.usage();
    if let Some(attempt) = log.attempts.last_mut() {
        attempt.ms += started.elapsed().as_millis() as u64;
    }
    let (output, stored) = result.map_err(|failure| failure.into_api_error().billed())?;
    let mut links = Vec::with_capacity(stored.len());
    for index in stored {
        let link = store.link(&key(index)).await.map_err(|e| {
            tracing::error!(error = %e, "a stored image could not be linked");
            ApiError::image_store_failed(&e.to_string())
        })?;
        links.push((index, link));
    }
    let body = with_links(&output, &links).map_err(|e| ApiError::upstream_invalid_response(e).billed())?;
    Ok(ok_json(ResponseBody::from(body)))
}

/// Why storing stopped.
enum Failure {
    Upstream(UpstreamError),
    Malformed(String),
    Store(StoreError),
}

impl Failure {
    fn into_api_error(self) -> ApiError {
        match self {
            Self::Upstream(err) => upstream_unavailable(err),
            Self::Malformed(what) => ApiError::upstream_invalid_response(what),
            Self::Store(err) => {
                tracing::error!(error = %err, "an image could not be stored in the image bucket");
                ApiError::image_store_failed(&err.to_string())
            }
        }
    }
}

/// An upload task, stopped when its answer is no longer wanted.
struct Upload(tokio::task::JoinHandle<Result<(), StoreError>>);

impl Upload {
    async fn done(mut self) -> Result<(), StoreError> {
        (&mut self.0).await.unwrap_or(Err(StoreError::Unreachable))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads Azure's body to its end, storing each image; the reshaped output
/// (each image's text taken out) and the positions of the stored images.
async fn store_all(
    store: &Arc<ImageStore>,
    reshaper: &mut Reshaper,
    mut body: reqwest::Body,
    content_type: &'static str,
    key: &impl Fn(usize) -> String,
    until: Instant,
) -> Result<(Vec<u8>, Vec<usize>), Failure> {
    use http_body_util::BodyExt;
    let malformed = |e: &dyn std::fmt::Display| Failure::Malformed(e.to_string());
    let mut output = Vec::new();
    let mut stored: Vec<usize> = Vec::new();
    let mut image = Base64Image::default();
    let mut upload: Option<Upload> = None;
    loop {
        let frame = match body.frame().await {
            None => {
                reshaper.finish().map_err(|e| malformed(&e))?;
                break;
            }
            Some(Err(err)) => {
                let err = if err.is_timeout() {
                    UpstreamError::Timeout
                } else {
                    UpstreamError::Transport
                };
                return Err(Failure::Upstream(err));
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        reshaper.feed(data).map_err(|e| malformed(&e))?;
        for piece in reshaper.take_output() {
            output.extend_from_slice(&piece);
        }
        for piece in reshaper.take_images() {
            match piece {
                ImagePiece::Data(text) => image.push(&text).map_err(|e| malformed(&e))?,
                ImagePiece::End { index } => {
                    let decoded = std::mem::take(&mut image).finish().map_err(|e| malformed(&e))?;
                    if stored.contains(&index) {
                        return Err(Failure::Malformed("has an image with two `b64_json`".into()));
                    }
                    if let Some(previous) = upload.take() {
                        previous.done().await.map_err(Failure::Store)?;
                    }
                    let store = store.clone();
                    let key = key(index);
                    upload = Some(Upload(tokio::spawn(async move {
                        store.put(&key, content_type, Bytes::from(decoded), until).await
                    })));
                    stored.push(index);
                }
            }
        }
    }
    if let Some(last) = upload.take() {
        last.done().await.map_err(Failure::Store)?;
    }
    Ok((output, stored))
}

/// The images response with each stored image's `b64_json` replaced by its
/// `url`, every other member as Azure wrote it, in its place.
fn with_links(output: &[u8], links: &[(usize, String)]) -> Result<Vec<u8>, String> {
    let not_json = |_| "could not be read back".to_owned();
    let body: RawObject<'_> = serde_json::from_slice(output).map_err(not_json)?;
    let mut out = Vec::with_capacity(output.len() + links.iter().map(|(_, l)| l.len() + 16).sum::<usize>());
    let key = |out: &mut Vec<u8>, key: &str| {
        out.push(b'"');
        escape_into(out, key.as_bytes());
        out.extend_from_slice(b"\":");
    };
    out.push(b'{');
    for (i, (name, value)) in body.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        key(&mut out, name);
        if name != "data" {
            out.extend_from_slice(value.get().as_bytes());
            continue;
        }
        let images: Vec<RawObject<'_>> = serde_json::from_str(value.get()).map_err(not_json)?;
        out.push(b'[');
        for (position, image) in images.iter().enumerate() {
            if position > 0 {
                out.push(b',');
            }
            let link = links.iter().find(|(index, _)| *index == position).map(|(_, l)| l);
            out.push(b'{');
            let mut first = true;
            for (member, value) in image.iter() {
                if member == "b64_json" && link.is_some() {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                key(&mut out, member);
                out.extend_from_slice(value.get().as_bytes());
            }
            if let Some(link) = link {
                if !first {
                    out.push(b',');
                }
                key(&mut out, "url");
                out.push(b'"');
                escape_into(&mut out, link.as_bytes());
                out.push(b'"');
            }
            out.push(b'}');
        }
        out.push(b']');
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_replace_the_stored_images_data_and_everything_else_stays_in_place() {
        let output = br#"{"created":1,"data":[{"b64_json":"","revised_prompt":"r","index":0},{"url":"https://azure/x","index":1},{"index":2,"b64_json" : ""}],"usage":{"total_tokens":3},"size":"1024x1024"}"#;
        let links = [
            (0, "https://s3/a?X=1&Y=\"2\"".to_owned()),
            (2, "https://s3/c".to_owned()),
        ];
        let body = with_links(output, &links).expect("valid");
        assert_eq!(
            String::from_utf8(body).expect("utf8"),
            r#"{"created":1,"data":[{"revised_prompt":"r","index":0,"url":"https://s3/a?X=1&Y=\"2\""},{"url":"https://azure/x","index":1},{"index":2,"url":"https://s3/c"}],"usage":{"total_tokens":3},"size":"1024x1024"}"#
        );
    }
}
