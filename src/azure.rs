//! The upstream client: POSTs to a configured Azure deployment, with retries
//! bounded by the Lambda deadline.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;

use crate::config::{ModelEntry, RetrySettings};
use crate::reshape::Reshaper;
use crate::response::{UpstreamError, UpstreamFailure, UpstreamResponse, malformed};
use crate::secrets::{ApiKey, SecretCache};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time kept back from the Lambda deadline to send the answer.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);
/// A retry or a fallback starts only with at least this much time left for it.
pub const MIN_ATTEMPT: Duration = Duration::from_secs(2);
/// One attempt's bound when neither a deadline nor `UPSTREAM_TIMEOUT_SECONDS` sets one.
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// The time a request may spend upstream.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The Lambda deadline; `None` when unknown (the local server, cargo lambda watch).
    pub deadline: Option<Instant>,
    pub retry: RetrySettings,
}

impl Budget {
    /// The bound for an attempt started now, or `None` when it could not finish
    /// before the deadline. The request's first attempt takes whatever is left;
    /// a retry or a fallback needs at least `MIN_ATTEMPT`.
    pub fn attempt(&self, first: bool) -> Option<Duration> {
        let cap = self.retry.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT);
        let Some(deadline) = self.deadline else {
            return Some(cap);
        };
        let left = deadline
            .checked_duration_since(Instant::now())?
            .checked_sub(DEADLINE_MARGIN)?;
        let needed = if first { Duration::from_millis(1) } else { MIN_ATTEMPT };
        (left >= needed).then(|| left.min(cap))
    }

    /// Whether a wait of `wait` still leaves time for another attempt.
    pub fn can_wait(&self, wait: Duration) -> bool {
        self.deadline
            .is_none_or(|deadline| Instant::now() + wait + MIN_ATTEMPT + DEADLINE_MARGIN <= deadline)
    }
}

/// Exponential backoff with jitter: between half and all of 0.5 s, 1 s, 2 s,
/// 4 s, 8 s for retries 0, 1, 2, …, so clients retrying together spread out.
pub fn backoff(retry: u32) -> Duration {
    let ceiling = Duration::from_millis(500).saturating_mul(1 << retry.min(4));
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// One upstream attempt, for the error message and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub model: String,
    /// Azure's status; `None` when no answer came.
    pub status: Option<u16>,
    /// What became of it: `ok`, or the error code the client would see.
    pub outcome: String,
    pub ms: u64,
    /// How long the connector waited before it.
    pub waited_ms: u64,
    /// Azure's `apim-request-id`, for support cases.
    pub upstream_request_id: Option<String>,
}

impl AttemptRecord {
    /// An attempt on `entry` begun at `started`: Azure's status and request id
    /// when it answered (`outcome` is `ok` until a failure says otherwise).
    pub fn new(
        entry: &ModelEntry,
        answer: Option<(StatusCode, &http::HeaderMap)>,
        started: Instant,
        waited: Duration,
    ) -> Self {
        Self {
            model: entry.name.clone(),
            status: answer.map(|(status, _)| status.as_u16()),
            outcome: "ok".into(),
            ms: started.elapsed().as_millis() as u64,
            waited_ms: waited.as_millis() as u64,
            upstream_request_id: answer
                .and_then(|(_, headers)| headers.get("apim-request-id"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// The HTTP client for Azure, built once per execution environment.
#[derive(Clone)]
pub struct AzureClient {
    http: reqwest::Client,
}

impl AzureClient {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect would carry the api-key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("azure-openai-image/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// The underlying client, to share its pool and TLS setup.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs `body` to the entry's generations URL. Returns once Azure's
    /// headers are in, by `until`; a failure's body is read whole, a
    /// success's is left to [`AzureClient::reshape`].
    async fn send(
        &self,
        entry: &ModelEntry,
        key: &ApiKey,
        body: Bytes,
        until: Instant,
    ) -> Result<Result<reqwest::Response, UpstreamResponse>, UpstreamError> {
        let attempt = async {
            let response = self
                .post(entry, key, body, "application/json")
                .send()
                .await
                .map_err(classify)?;
            if response.status().is_success() {
                return Ok(Ok(response));
            }
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(classify)?;
            Ok(Err(UpstreamResponse { status, headers, body }))
        };
        tokio::time::timeout_at(until.into(), attempt)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    /// Reads a success body into a reshaper, by `until`. Returns when it has
    /// all of it, or, with `commit_after`, as soon as the body has shown a
    /// valid `created` and that many bytes of output wait: the rest is sent
    /// on as it arrives (see [`crate::relay`]).
    async fn reshape(
        response: reqwest::Response,
        until: Instant,
        commit_after: Option<usize>,
    ) -> Result<Success, UpstreamFailure> {
        let mut body = http::Response::from(response).into_body();
        let mut reshaper = Reshaper::new();
        let reading = async {
            loop {
                let Some(frame) = body.frame().await else {
                    reshaper.finish().map_err(|m| UpstreamFailure::fatal(malformed(m)))?;
                    return Ok::<bool, UpstreamFailure>(false);
                };
                let Ok(data) = frame.map_err(|e| UpstreamFailure::from(classify(e)))?.into_data() else {
                    continue;
                };
                reshaper.feed(data).map_err(|m| UpstreamFailure::fatal(malformed(m)))?;
                if commit_after.is_some_and(|after| reshaper.created().is_some() && reshaper.pending_len() >= after) {
                    return Ok(true);
                }
            }
        };
        let more = tokio::time::timeout_at(until.into(), reading)
            .await
            .unwrap_or_else(|_| Err(UpstreamError::Timeout.into()))?;
        Ok(Success {
            reshaper,
            rest: more.then_some(UpstreamBody { body, until }),
        })
    }
}

/// Azure's answer to a generation, on its way to the client.
pub struct Success {
    /// The body read so far, reshaped; all of it when `rest` is `None`.
    pub reshaper: Reshaper,
    /// The rest of Azure's body, still arriving.
    pub rest: Option<UpstreamBody>,
}

/// The part of a success body not yet read, and when reading it must end.
pub struct UpstreamBody {
    pub body: reqwest::Body,
    pub until: Instant,
}

impl AzureClient {
    /// The one request the connector makes: the configured URL, the key, JSON.
    fn post(&self, entry: &ModelEntry, key: &ApiKey, body: Bytes, accept: &'static str) -> reqwest::RequestBuilder {
        self.http
            .post(entry.generations_url.clone())
            .header("api-key", key.expose())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, accept)
            .body(body)
    }

    /// POSTs a streamed request and returns once Azure's headers are in: the
    /// body is read as it arrives. `timeout` bounds the wait for the headers.
    pub async fn open(
        &self,
        entry: &ModelEntry,
        key: &ApiKey,
        body: Bytes,
        timeout: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        let request = self
            .post(entry, key, body, "text/event-stream, application/json")
            .send();
        match tokio::time::timeout(timeout, request).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// Generates on one model: retries 429, 408, 5xx, timeouts and connection
    /// errors up to `max_retries` times, waiting as Azure says or with backoff,
    /// and fetches the key again once after a 401 (rotation). Never starts a
    /// wait or an attempt that cannot finish before the deadline: it answers
    /// with the last failure instead. With `commit_after`, a success returns
    /// as soon as that much of it is ready, the rest still arriving.
    pub async fn generate_with_retries(
        &self,
        entry: &ModelEntry,
        keys: &SecretCache<ApiKey>,
        body: Bytes,
        budget: Budget,
        commit_after: Option<usize>,
        attempts: &mut Vec<AttemptRecord>,
    ) -> Result<Success, UpstreamFailure> {
        let mut key = keys
            .get(&entry.secret_id)
            .await
            .map_err(|e| UpstreamFailure::fatal(e.to_api_error("its Azure key")))?;
        let mut retries = 0;
        let mut rotated = false;
        let mut waited = Duration::ZERO;
        let mut last: Option<UpstreamFailure> = None;
        loop {
            let Some(timeout) = budget.attempt(attempts.is_empty()) else {
                return Err(last.unwrap_or_else(|| UpstreamError::Timeout.into()));
            };
            let started = Instant::now();
            let until = started + timeout;
            let result = self.send(entry, &key, body.clone(), until).await;
            let answer = match &result {
                Ok(Ok(response)) => Some((response.status(), response.headers())),
                Ok(Err(failed)) => Some((failed.status, &failed.headers)),
                Err(_) => None,
            };
            let mut record = AttemptRecord::new(entry, answer, started, waited);
            let failure = match result {
                Ok(Err(response)) if response.status == StatusCode::UNAUTHORIZED && !rotated => {
                    rotated = true;
                    record.outcome = "key_rejected".into();
                    attempts.push(record);
                    tracing::warn!(model = %entry.name, "Azure refused the cached key; fetching it again");
                    key = keys
                        .refresh(&entry.secret_id, &key)
                        .await
                        .map_err(|e| UpstreamFailure::fatal(e.to_api_error("its Azure key")))?;
                    waited = Duration::ZERO;
                    continue;
                }
                Ok(Ok(response)) => match Self::reshape(response, until, commit_after).await {
                    Ok(success) => {
                        // The time to Azure's whole body, or to the point its rest is relayed from.
                        record.ms = started.elapsed().as_millis() as u64;
                        attempts.push(record);
                        return Ok(success);
                    }
                    Err(failure) => failure,
                },
                Ok(Err(response)) => UpstreamFailure::from_response(&response, entry),
                Err(err) => UpstreamFailure::from(err),
            };
            record.outcome = failure.error.code.as_deref().unwrap_or("error").to_owned();
            attempts.push(record);
            if !failure.retryable || retries >= budget.retry.max_retries {
                return Err(failure);
            }
            let wait = failure.wait.unwrap_or_else(|| backoff(retries));
            if !budget.can_wait(wait) {
                return Err(failure);
            }
            tokio::time::sleep(wait).await;
            waited = wait;
            retries += 1;
            last = Some(failure);
        }
    }
}

fn classify(err: reqwest::Error) -> UpstreamError {
    if err.is_timeout() {
        UpstreamError::Timeout
    } else if err.is_connect() {
        UpstreamError::Connect
    } else {
        UpstreamError::Transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(deadline_in: Option<Duration>, attempt_timeout: Option<Duration>) -> Budget {
        Budget {
            deadline: deadline_in.map(|d| Instant::now() + d),
            retry: RetrySettings {
                max_retries: 2,
                attempt_timeout,
            },
        }
    }

    #[test]
    fn without_a_deadline_an_attempt_gets_the_configured_bound() {
        assert_eq!(budget(None, None).attempt(false), Some(DEFAULT_ATTEMPT_TIMEOUT));
        assert_eq!(
            budget(None, Some(Duration::from_secs(40))).attempt(true),
            Some(Duration::from_secs(40))
        );
        assert!(budget(None, None).can_wait(Duration::from_secs(3600)));
    }

    #[test]
    fn the_deadline_bounds_attempts_and_waits() {
        let b = budget(Some(Duration::from_secs(30)), None);
        let first = b.attempt(true).expect("time for one");
        assert!(first <= Duration::from_secs(30) - DEADLINE_MARGIN && first > Duration::from_secs(27));
        assert!(b.can_wait(Duration::from_secs(10)));
        assert!(!b.can_wait(Duration::from_secs(28)));
        let short = budget(Some(Duration::from_millis(2500)), None);
        assert!(short.attempt(true).is_some(), "a first attempt takes what is left");
        assert!(short.attempt(false).is_none(), "a retry needs MIN_ATTEMPT");
        assert!(budget(Some(Duration::from_millis(1000)), None).attempt(true).is_none());
        let capped = budget(Some(Duration::from_secs(300)), Some(Duration::from_secs(20)));
        assert_eq!(capped.attempt(true), Some(Duration::from_secs(20)));
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for retry in 0..8 {
            let ceiling = Duration::from_millis(500) * (1 << retry.min(4));
            let wait = backoff(retry);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{retry}: {wait:?}");
        }
    }
}
