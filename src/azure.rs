//! The upstream client and its one attempt loop: the model asked for, with
//! retries bounded by the Lambda deadline, over its deployments when it has
//! several (`pool`), then its fallbacks. Buffered, relayed and streamed
//! answers all come through [`AzureClient::call`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;

use crate::config::{ModelEntry, RetrySettings, Target};
use crate::credentials::{Credential, CredentialError, Credentials};
use crate::error::ApiError;
use crate::observe::AttemptRecord;
use crate::operation::{Operation, OperationRequest, UpstreamRequest};
use crate::pool::{Pick, Pool, Wait, decide_wait, remaining_from};
use crate::reshape::Reshaper;
use crate::secrets::by_deadline;
use crate::upstream::{UpstreamError, UpstreamFailure, UpstreamResponse, pool_busy, upstream_unavailable};

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

    /// Whether the connector waits `wait` before another attempt: not when it
    /// is longer than the configured maximum, nor when it leaves no time for
    /// the attempt before the deadline. The failure is answered at once
    /// instead, with Azure's `Retry-After` passed on.
    pub fn can_wait(&self, wait: Duration) -> bool {
        if wait > self.retry.max_wait {
            return false;
        }
        let Some(deadline) = self.deadline else {
            return true;
        };
        Instant::now()
            .checked_add(wait + MIN_ATTEMPT + DEADLINE_MARGIN)
            .is_some_and(|ready| ready <= deadline)
    }
}

/// Exponential backoff with jitter: between half and all of 0.5 s, 1 s, 2 s,
/// 4 s, 8 s for retries 0, 1, 2, …, so clients retrying together spread out.
pub fn backoff(retry: u32) -> Duration {
    let ceiling = Duration::from_millis(500).saturating_mul(1 << retry.min(4));
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
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
}

/// What the caller wants of a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// An images response, reshaped. With `commit_after`, the call returns as
    /// soon as the body has shown a valid `created` and that many bytes of
    /// output wait: the rest is sent on as it arrives (see `relay`).
    Images { commit_after: Option<usize> },
    /// Azure's own event stream where the deployment streams; an images
    /// response, whole, where it does not.
    Events,
    /// An images response whose images are stored as it arrives
    /// (`response_format: "url"`): the call returns once Azure's 200 is in,
    /// with a reshaper that takes the images out (`relay::stored`).
    Stored,
}

/// Azure's answer to a call, on its way to the client. One per request,
/// moved once: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Delivery {
    Images(Success),
    /// An event stream, still arriving.
    Events(UpstreamBody),
}

/// Azure's images response, reshaped.
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

/// The most of a success body read whole when the front door sets no lower
/// limit: what a streamed Lambda response carries (200 MB).
pub const MAX_WHOLE_BODY: usize = 200 * 1024 * 1024;
/// The most of a failure's body read: Azure's error objects are a few hundred bytes.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// One request's call: the operation, the validated request, and the models
/// to try, the one asked for first.
pub struct Call<'a> {
    pub operation: Operation,
    pub request: &'a dyn OperationRequest,
    pub chain: Vec<&'a ModelEntry>,
    /// Configured fallbacks left out before the call, and why, for the error message.
    pub skipped: Vec<String>,
    pub budget: Budget,
    pub want: Want,
    /// The most of an answer the front door takes whole: past it, reading
    /// stops and the client gets `response_too_large`.
    pub limit: usize,
}

/// Deployments that refused `stream` (an api-version without image
/// streaming): their streams are made from one buffered call, until the mark
/// expires after [`NO_STREAM_FOR`] and the deployment is asked again (its
/// api-version may have been upgraded). Marked per deployment of an entry.
#[derive(Debug, Default)]
pub struct NoStreamMarks(Mutex<HashMap<(String, String), Instant>>);

/// How long a refusal of `stream` is remembered.
pub const NO_STREAM_FOR: Duration = Duration::from_secs(600);

impl NoStreamMarks {
    pub fn is_marked(&self, entry: &ModelEntry, target: &Target) -> bool {
        self.is_marked_at(entry, target, Instant::now())
    }

    fn is_marked_at(&self, entry: &ModelEntry, target: &Target, now: Instant) -> bool {
        let mut marks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (entry.name.clone(), target.name.clone());
        match marks.get(&key) {
            Some(until) if now < *until => true,
            Some(_) => {
                marks.remove(&key);
                false
            }
            None => false,
        }
    }

    fn mark_at(&self, entry: &ModelEntry, target: &Target, now: Instant) {
        tracing::info!(model = %entry.name, deployment = %target.name, "the deployment does not stream; streams are made from buffered calls for a while");
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((entry.name.clone(), target.name.clone()), now + NO_STREAM_FOR);
    }
}

/// The pools of the entries with several deployments: what the execution
/// environment has learnt of each deployment (cooldowns, remaining capacity).
/// Built once with the configuration; an entry of one deployment has none.
#[derive(Debug, Default)]
pub struct Pools(HashMap<String, Pool>);

impl Pools {
    pub fn new(models: &[ModelEntry]) -> Self {
        let pools = models
            .iter()
            .filter(|entry| entry.targets().len() > 1)
            .filter_map(|entry| {
                let targets = entry.targets().iter().map(|t| (t.name.clone(), t.weight));
                Some((entry.name.clone(), Pool::new(targets)?))
            })
            .collect();
        Self(pools)
    }

    fn of(&self, entry: &ModelEntry) -> Option<&Pool> {
        self.0.get(&entry.name)
    }
}

/// What the attempt loop keeps for the execution environment, beside the HTTP client.
#[derive(Clone, Copy)]
pub struct Learnt<'a> {
    pub credentials: &'a Credentials,
    pub no_stream: &'a NoStreamMarks,
    pub pools: &'a Pools,
}

/// An attempt on `entry` begun at `started`, at its deployment named
/// `deployment` when it has several: Azure's status and request id when it
/// answered (`outcome` is `ok` until a failure says otherwise).
fn record(
    entry: &ModelEntry,
    deployment: Option<&str>,
    answer: Option<(StatusCode, &HeaderMap)>,
    started: Instant,
    waited: Duration,
) -> AttemptRecord {
    AttemptRecord {
        model: entry.name.clone(),
        deployment: deployment.map(str::to_owned),
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

/// What one request has learnt of one deployment.
struct Tries {
    /// The credential it last sent there.
    key: Option<Credential>,
    /// Whether the credential was fetched again after a 401.
    rotated: bool,
    /// Whether it still asks the deployment for events.
    stream: bool,
    /// Retries there so far.
    retries: u32,
    /// No more attempts there: out of retries, or a failure retrying cannot help.
    spent: bool,
}

/// How one attempt ended.
enum Step {
    /// For good: a success, or a failure no other attempt may follow (billed, no credential).
    Done(Result<Delivery, UpstreamFailure>),
    /// The same deployment again at once: with a fresh credential, or without `stream`.
    Again,
    /// Azure refused, or no answer came; the loop decides what may help.
    Failed(UpstreamFailure),
}

/// One request's call on one model.
struct OnModel<'c, 'e, 'a> {
    learnt: Learnt<'c>,
    call: &'c Call<'a>,
    entry: &'e ModelEntry,
    /// `None` for an entry of one deployment.
    pool: Option<&'c Pool>,
}

impl AzureClient {
    /// The model asked for, then each fallback while the last failure was one
    /// a fallback can help with (retryable after its retries, or a missing
    /// deployment). When all fail, the primary's error, listing the attempts.
    /// Returns the answer, and the model and deployment that gave it.
    pub async fn call<'a>(
        &self,
        learnt: Learnt<'_>,
        mut call: Call<'a>,
        attempts: &mut Vec<AttemptRecord>,
    ) -> Result<(Delivery, &'a ModelEntry, &'a Target), ApiError> {
        let mut primary_error: Option<ApiError> = None;
        // Fallbacks left out count only once the primary failed in a way they could have helped.
        let mut fell_back = false;
        let chain = std::mem::take(&mut call.chain);
        for (i, entry) in chain.into_iter().enumerate() {
            if i > 0 {
                if call.budget.attempt(false).is_none() {
                    call.skipped
                        .push(format!("{}: no time left before the deadline", entry.name));
                    break;
                }
                tracing::warn!(fallback = %entry.name, "trying a fallback model");
            }
            let pool = learnt.pools.of(entry);
            if pool.is_none() && entry.targets().len() > 1 {
                tracing::error!(model = %entry.name, "no pool for the model's deployments; only its first is used");
            }
            let on = OnModel {
                learnt,
                call: &call,
                entry,
                pool,
            };
            match self.on_model(&on, attempts).await {
                Ok((delivery, target)) => return Ok((delivery, entry, target)),
                Err(failure) => {
                    let go_on = failure.fallback;
                    fell_back |= go_on;
                    primary_error.get_or_insert(failure.error);
                    if !go_on {
                        break;
                    }
                }
            }
        }
        let mut err = primary_error.unwrap_or_else(|| upstream_unavailable(UpstreamError::Timeout));
        let skipped: &[String] = if fell_back { &call.skipped } else { &[] };
        if attempts.len() > 1 || !skipped.is_empty() {
            err.message = format!("{} Attempts: {}.", err.message, describe(attempts, skipped));
        }
        Err(err)
    }

    /// One model. Of one deployment: retries 429, 408, 5xx, timeouts and
    /// connection errors up to `max_retries` times, waiting as Azure says or
    /// with backoff. Of several (a pool): each attempt goes to the deployment
    /// the pool picks; a failure a fallback could help with (429, 5xx, no
    /// answer, a missing deployment) cools that one down and the request
    /// moves on at once to another with room; only when all are cooling down
    /// does it wait, within `pool_max_wait` and the deadline, or answer at
    /// once with `Retry-After`. `max_retries` bounds the retries on each
    /// deployment. Either way the credential is fetched again once after a
    /// 401 (rotation), a deployment that refuses `stream` is marked and asked
    /// again without it, and no wait or attempt starts that cannot finish
    /// before the deadline: the last failure is answered instead.
    async fn on_model<'e>(
        &self,
        on: &OnModel<'_, 'e, '_>,
        attempts: &mut Vec<AttemptRecord>,
    ) -> Result<(Delivery, &'e Target), UpstreamFailure> {
        let OnModel {
            learnt,
            call,
            entry,
            pool,
        } = *on;
        let budget = call.budget;
        let targets = entry.targets();
        let wants_events = call.want == Want::Events && entry.spec.always_b64;
        let mut tries: Vec<Tries> = targets
            .iter()
            .map(|target| Tries {
                key: None,
                rotated: false,
                stream: wants_events && !learnt.no_stream.is_marked(entry, target),
                retries: 0,
                spent: false,
            })
            .collect();
        let mut tried: Vec<usize> = Vec::new();
        let mut waited = Duration::ZERO;
        let mut last: Option<UpstreamFailure> = None;
        // A deployment to ask again at once, with a fresh credential or without `stream`.
        let mut again: Option<usize> = None;
        loop {
            let i = match (again.take(), pool) {
                (Some(i), _) => i,
                (None, None) => 0,
                (None, Some(pool)) => {
                    let spent: Vec<usize> = (0..tries.len()).filter(|&j| tries[j].spent).collect();
                    let now = pool_now();
                    match pool.pick(now, &tried, &spent) {
                        Pick::Target(i) => i,
                        Pick::Spent => return Err(last.unwrap_or_else(|| UpstreamError::Timeout.into())),
                        Pick::AllCooling { until } => {
                            let reserve = MIN_ATTEMPT + DEADLINE_MARGIN;
                            match decide_wait(until, now, budget.retry.pool_max_wait, budget.deadline, reserve) {
                                Wait::Sleep(wait) => {
                                    tokio::time::sleep(wait).await;
                                    waited += wait;
                                    continue;
                                }
                                Wait::Refuse { retry_after } => return Err(all_cooling(entry, last, retry_after)),
                            }
                        }
                    }
                }
            };
            let (Some(target), Some(these)) = (targets.get(i), tries.get_mut(i)) else {
                return Err(last.unwrap_or_else(|| UpstreamError::Timeout.into()));
            };
            let Some(timeout) = budget.attempt(attempts.is_empty()) else {
                return Err(last.unwrap_or_else(|| UpstreamError::Timeout.into()));
            };
            let failure = match self.attempt(on, i, target, these, timeout, waited, attempts).await {
                Step::Done(result) => return result.map(|delivery| (delivery, target)),
                Step::Again => {
                    waited = Duration::ZERO;
                    again = Some(i);
                    continue;
                }
                Step::Failed(failure) => failure,
            };
            waited = Duration::ZERO;
            if !tried.contains(&i) {
                tried.push(i);
            }
            if pool.is_none() {
                if !failure.retryable || these.retries >= budget.retry.max_retries {
                    return Err(failure);
                }
                let wait = failure.wait.unwrap_or_else(|| backoff(these.retries));
                if !budget.can_wait(wait) {
                    return Err(failure);
                }
                tokio::time::sleep(wait).await;
                waited = wait;
                these.retries += 1;
            } else {
                // The request's fault (a content filter, a validation error) or the operator's: no
                // other deployment would answer otherwise.
                if !failure.fallback {
                    return Err(failure);
                }
                if !failure.retryable || these.retries >= budget.retry.max_retries {
                    these.spent = true;
                } else {
                    these.retries += 1;
                }
            }
            last = Some(failure);
        }
    }

    /// One attempt on `target`, deployment `i` of the entry, reported to the
    /// pool: a 2xx as a success with Azure's remaining capacity, a 429 as a
    /// throttle, another failure a fallback could help with as a failure.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        on: &OnModel<'_, '_, '_>,
        i: usize,
        target: &Target,
        tries: &mut Tries,
        timeout: Duration,
        waited: Duration,
        attempts: &mut Vec<AttemptRecord>,
    ) -> Step {
        let OnModel {
            learnt,
            call,
            entry,
            pool,
        } = *on;
        let budget = call.budget;
        let unusable = |e: CredentialError| UpstreamFailure::fatal(e.to_api_error(&entry.name));
        let key = match &tries.key {
            Some(key) => key.clone(),
            None => match by_deadline(budget.deadline, DEADLINE_MARGIN, learnt.credentials.get(&target.auth)).await {
                Ok(key) => {
                    tries.key = Some(key.clone());
                    key
                }
                Err(e) => return Step::Done(Err(unusable(e))),
            },
        };
        let upstream = call.request.upstream(entry, target, tries.stream);
        let url = call.operation.url(target);
        let started = Instant::now();
        let until = started + timeout;
        let accept = if tries.stream { EVENTS_OR_JSON } else { JSON };
        let result = self.send(url, &key, &upstream, accept, until).await;
        let answer = match &result {
            Ok(Ok(response)) => Some((response.status(), response.headers())),
            Ok(Err(failed)) => Some((failed.status, &failed.headers)),
            Err(_) => None,
        };
        let deployment = pool.map(|_| target.name.as_str());
        let mut record = record(entry, deployment, answer, started, waited);
        let failure = match result {
            Ok(Err(response)) if response.rejects_key() && !tries.rotated => {
                tries.rotated = true;
                record.outcome = "key_rejected".into();
                attempts.push(record);
                tracing::warn!(model = %entry.name, deployment = %target.name, "Azure refused the cached key or token; fetching it again");
                let refresh = learnt.credentials.refresh(&target.auth, &key);
                match by_deadline(budget.deadline, DEADLINE_MARGIN, refresh).await {
                    Ok(key) => tries.key = Some(key),
                    Err(e) => return Step::Done(Err(unusable(e))),
                }
                return Step::Again;
            }
            Ok(Ok(response)) => {
                if let Some(pool) = pool {
                    pool.report_success(i, pool_now(), remaining_from(response.headers()));
                }
                if tries.stream && is_event_stream(response.headers()) {
                    attempts.push(record);
                    let body = http::Response::from(response).into_body();
                    return Step::Done(Ok(Delivery::Events(UpstreamBody { body, until })));
                }
                if call.want == Want::Stored {
                    attempts.push(record);
                    let body = http::Response::from(response).into_body();
                    return Step::Done(Ok(Delivery::Images(Success {
                        reshaper: Reshaper::taking_images(),
                        rest: Some(UpstreamBody { body, until }),
                    })));
                }
                let commit_after = match call.want {
                    Want::Images { commit_after } => commit_after,
                    Want::Events | Want::Stored => None,
                };
                let reshaped = reshape(response, until, commit_after, call.limit).await;
                // The time to Azure's whole body, or to the point its rest is relayed from.
                record.ms = started.elapsed().as_millis() as u64;
                return match reshaped {
                    Ok(success) => {
                        attempts.push(record);
                        Step::Done(Ok(Delivery::Images(success)))
                    }
                    // Azure answered 2xx: the images are generated and billed. Another
                    // attempt, deployment or model would bill them again, so this failure is final.
                    Err(error) => {
                        record.outcome = error.code.as_deref().unwrap_or("error").to_owned();
                        attempts.push(record);
                        Step::Done(Err(UpstreamFailure::fatal(error.billed())))
                    }
                };
            }
            Ok(Err(response)) if tries.stream && response.refuses_streaming() => {
                record.outcome = "stream_refused".into();
                attempts.push(record);
                learnt.no_stream.mark_at(entry, target, Instant::now());
                tries.stream = false;
                return Step::Again;
            }
            Ok(Err(response)) => {
                let failure = UpstreamFailure::from_response(&response, entry);
                if let Some(pool) = pool {
                    if response.is_throttled() {
                        pool.report_throttled(i, pool_now(), failure.wait);
                    } else if failure.fallback {
                        pool.report_failure(i, pool_now());
                    }
                }
                failure
            }
            Err(err) => {
                if let Some(pool) = pool {
                    pool.report_failure(i, pool_now());
                }
                UpstreamFailure::from(err)
            }
        };
        record.outcome = failure.error.code.as_deref().unwrap_or("error").to_owned();
        attempts.push(record);
        Step::Failed(failure)
    }

    /// POSTs the upstream request. Returns once Azure's headers are in, by
    /// `until`; a failure's body is read whole, a success's is left to the caller.
    async fn send(
        &self,
        url: &url::Url,
        credential: &Credential,
        upstream: &UpstreamRequest,
        accept: HeaderValue,
        until: Instant,
    ) -> Result<Result<reqwest::Response, UpstreamResponse>, UpstreamError> {
        let attempt = async {
            let mut request = self.http.post(url.clone());
            if let Some((name, value)) = credential.header() {
                request = request.header(name, value);
            }
            let response = request
                .header(CONTENT_TYPE, upstream.content_type.clone())
                .header(ACCEPT, accept)
                .body(upstream_body(upstream))
                .send()
                .await
                .map_err(classify)?;
            if response.status().is_success() {
                return Ok(Ok(response));
            }
            let status = response.status();
            let headers = response.headers().clone();
            let body = read_at_most(response, MAX_ERROR_BODY).await?;
            Ok(Err(UpstreamResponse { status, headers, body }))
        };
        tokio::time::timeout_at(until.into(), attempt)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

/// The request body for one attempt: its pieces (slices of the client's
/// body, for uploads) sent one after another, with their length announced.
fn upstream_body(upstream: &UpstreamRequest) -> reqwest::Body {
    match upstream.body.as_slice() {
        [one] => reqwest::Body::from(one.clone()),
        _ => reqwest::Body::wrap(Pieces(upstream.body.iter().cloned().collect())),
    }
}

/// A body of ready pieces.
struct Pieces(std::collections::VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|piece| Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|p| p.len() as u64).sum())
    }
}

/// A failure's body, up to `limit` bytes: what lies past it is not read.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Result<Bytes, UpstreamError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == limit {
            break;
        }
    }
    Ok(Bytes::from(body))
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENTS_OR_JSON: HeaderValue = HeaderValue::from_static("text/event-stream, application/json");

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Reads a success body into a reshaper, by `until`. Returns when it has all
/// of it, or, with `commit_after`, as soon as the body has shown a valid
/// `created` and that many bytes of output wait. Stops reading past `limit`.
async fn reshape(
    response: reqwest::Response,
    until: Instant,
    commit_after: Option<usize>,
    limit: usize,
) -> Result<Success, ApiError> {
    let announced = response.content_length().map(|len| len as usize);
    let mut body = http::Response::from(response).into_body();
    let mut reshaper = Reshaper::new();
    let reading = async {
        loop {
            let Some(frame) = body.frame().await else {
                reshaper.finish().map_err(ApiError::upstream_invalid_response)?;
                return Ok::<bool, ApiError>(false);
            };
            let Ok(data) = frame.map_err(|e| upstream_unavailable(classify(e)))?.into_data() else {
                continue;
            };
            reshaper.feed(data).map_err(ApiError::upstream_invalid_response)?;
            if reshaper.pending_len() > limit {
                let size = announced.unwrap_or(0).max(reshaper.pending_len());
                return Err(ApiError::response_too_large(size, limit));
            }
            if commit_after.is_some_and(|after| reshaper.created().is_some() && reshaper.pending_len() >= after) {
                return Ok(true);
            }
        }
    };
    let more = tokio::time::timeout_at(until.into(), reading)
        .await
        .unwrap_or_else(|_| Err(upstream_unavailable(UpstreamError::Timeout)))?;
    Ok(Success {
        reshaper,
        rest: more.then_some(UpstreamBody { body, until }),
    })
}

/// The pools' clock: tokio's, so that tests with paused time see cooldowns
/// pass as their waits do; the same as `Instant::now()` otherwise.
fn pool_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Every deployment of a pool cooling down for longer than a request waits:
/// the last failure (or, before any attempt, a 429 saying so) with
/// `Retry-After` set to when the first deployment frees up. A fallback may help.
fn all_cooling(entry: &ModelEntry, last: Option<UpstreamFailure>, retry_after: Duration) -> UpstreamFailure {
    let mut failure = last.unwrap_or_else(|| UpstreamFailure {
        error: pool_busy(entry),
        retryable: true,
        fallback: true,
        wait: None,
    });
    failure.error = failure.error.with_retry_after(Some(retry_after));
    failure.wait = Some(retry_after);
    failure.fallback = true;
    failure
}

/// `azure-image: 503 upstream_error; azure-image: 503 upstream_error; skipped dall-e-3: …`.
fn describe(attempts: &[AttemptRecord], skipped: &[String]) -> String {
    attempts
        .iter()
        .map(|a| {
            let at = a.deployment.as_ref().map(|d| format!("@{d}")).unwrap_or_default();
            match a.status {
                Some(status) => format!("{}{at}: {} {}", a.model, status, a.outcome),
                None => format!("{}{at}: no answer ({})", a.model, a.outcome),
            }
        })
        .chain(skipped.iter().map(|s| format!("skipped {s}")))
        .collect::<Vec<_>>()
        .join("; ")
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
                max_wait: Duration::from_secs(60),
                pool_max_wait: Duration::from_secs(5),
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
        assert!(budget(None, None).can_wait(Duration::from_secs(60)));
        assert!(
            !budget(None, None).can_wait(Duration::from_secs(61)),
            "past the configured maximum"
        );
        assert!(
            !budget(Some(Duration::from_secs(30)), None).can_wait(Duration::MAX),
            "never overflows"
        );
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

    #[test]
    fn a_refusal_of_stream_is_remembered_for_a_while_not_for_ever() {
        let config = crate::config::Config::from_lookup(|k| match k {
            "IMAGE_MODELS" => Some(r#"[{"name":"img","model":"gpt-image-1","baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"2024-10-21"}]"#.into()),
            "AZURE_API_KEY_SECRET_ID" => Some("s".into()),
            _ => None,
        })
        .expect("valid");
        let entry = &config.models[0];
        let target = entry.primary();
        let marks = NoStreamMarks::default();
        let now = Instant::now();
        assert!(!marks.is_marked_at(entry, target, now));
        marks.mark_at(entry, target, now);
        assert!(marks.is_marked_at(entry, target, now + NO_STREAM_FOR - Duration::from_secs(1)));
        assert!(
            !marks.is_marked_at(entry, target, now + NO_STREAM_FOR),
            "asked again after the mark expires"
        );
    }
}
