//! Secrets (the Azure keys, the client keys), read from AWS Secrets Manager on
//! first need and cached per execution environment for a TTL.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// An Azure API key. Its `Debug` is redacted and it has no `Serialize` or
/// `Display`, so it cannot reach a log line or a response by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads a secret's value: the bare key, or JSON `{"apiKey": "…"}`.
    pub fn from_secret_value(value: &str) -> Result<Self, SecretError> {
        let value = value.trim();
        let key = if value.starts_with('{') {
            #[derive(serde::Deserialize)]
            struct Wrapped {
                #[serde(rename = "apiKey")]
                api_key: String,
            }
            serde_json::from_str::<Wrapped>(value)
                .map_err(|_| SecretError::Invalid("a JSON secret must be an object with a string `apiKey`".into()))?
                .api_key
        } else {
            value.to_owned()
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(SecretError::Invalid("the key is empty".into()));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::Invalid(
                "the key has characters an HTTP header cannot carry".into(),
            ));
        }
        Ok(Self(key.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

/// Why a key could not be had. Messages name no secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Secrets Manager could not be reached, throttled, or failed: worth a retry.
    #[error("Secrets Manager is unavailable: {0}")]
    Unavailable(String),
    /// The secret is missing, not readable by this function, or not a key: the operator must act.
    #[error("the secret cannot be used: {0}")]
    Unusable(String),
    #[error("the secret value is not a usable key: {0}")]
    Invalid(std::borrow::Cow<'static, str>),
}

impl SecretError {
    /// The client's view: 503 while Secrets Manager is down (retry), 500 when
    /// the operator must act. `what` names the secret for people, never its id or value.
    pub fn to_api_error(&self, what: &str) -> crate::error::ApiError {
        use crate::error::ApiError;
        tracing::error!(error = %self, "could not read {what}");
        match self {
            SecretError::Unavailable(_) => ApiError::secrets_unavailable(what),
            SecretError::Unusable(_) | SecretError::Invalid(_) => ApiError::secret_misconfigured(what),
        }
    }
}

/// A secret fetch bounded by the request's deadline (less the time kept to
/// answer), not only by the SDK's own timeouts: past it, Secrets Manager
/// counts as unavailable.
pub async fn by_deadline<T, E: From<SecretError>>(
    deadline: Option<std::time::Instant>,
    margin: Duration,
    fetch: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(deadline) = deadline else {
        return fetch.await;
    };
    let until = deadline.checked_sub(margin).unwrap_or(deadline);
    tokio::time::timeout_at(until.into(), fetch)
        .await
        .unwrap_or_else(|_| Err(SecretError::Unavailable("no answer before the request's deadline".into()).into()))
}

pub type SecretFuture<'a> = Pin<Box<dyn Future<Output = Result<String, SecretError>> + Send + 'a>>;

/// Where secret values come from: Secrets Manager in the function, a fake in unit tests.
pub trait SecretSource: Send + Sync {
    fn fetch<'a>(&'a self, secret_id: &'a str) -> SecretFuture<'a>;
}

/// Secrets Manager through the AWS SDK.
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client }
    }
}

impl SecretSource for SecretsManagerSource {
    fn fetch<'a>(&'a self, secret_id: &'a str) -> SecretFuture<'a> {
        Box::pin(async move {
            use aws_sdk_secretsmanager::error::SdkError;
            use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
            let output = self
                .client
                .get_secret_value()
                .secret_id(secret_id)
                .send()
                .await
                .map_err(|e| match &e {
                    SdkError::ServiceError(service) => match service.err() {
                        GetSecretValueError::ResourceNotFoundException(_) => {
                            SecretError::Unusable("the secret does not exist".into())
                        }
                        GetSecretValueError::DecryptionFailure(_) => {
                            SecretError::Unusable("the secret could not be decrypted".into())
                        }
                        GetSecretValueError::InvalidRequestException(_)
                        | GetSecretValueError::InvalidParameterException(_) => {
                            SecretError::Unusable("the secret cannot be read (deleted or disabled)".into())
                        }
                        other => match other.meta().code() {
                            Some("AccessDeniedException") => {
                                SecretError::Unusable("access to the secret is denied".into())
                            }
                            Some(code) => SecretError::Unavailable(code.to_owned()),
                            None => SecretError::Unavailable("service error".into()),
                        },
                    },
                    SdkError::TimeoutError(_) => SecretError::Unavailable("timed out".into()),
                    SdkError::DispatchFailure(_) => SecretError::Unavailable("could not connect".into()),
                    _ => SecretError::Unavailable("unexpected response".into()),
                })?;
            if let Some(value) = output.secret_string() {
                return Ok(value.to_owned());
            }
            output
                .secret_binary()
                .and_then(|blob| std::str::from_utf8(blob.as_ref()).ok())
                .map(str::to_owned)
                .ok_or(SecretError::Invalid("the secret has no text value".into()))
        })
    }
}

/// Secret values from a script instead of Secrets Manager, for tests: each
/// secret id answers its own script in turn (the last answer repeats); an id
/// without one answers the default script. Counts the fetches of each id.
pub struct ScriptedSource {
    scripts: Mutex<HashMap<String, Vec<Result<String, SecretError>>>>,
    default: Mutex<Vec<Result<String, SecretError>>>,
    calls: Mutex<HashMap<String, usize>>,
}

impl ScriptedSource {
    pub fn new(default: Vec<Result<String, SecretError>>) -> Self {
        Self {
            scripts: Mutex::default(),
            default: Mutex::new(default),
            calls: Mutex::default(),
        }
    }

    /// `secret_id` answers `answers` instead of the default script.
    pub fn with(self, secret_id: &str, answers: Vec<Result<String, SecretError>>) -> Self {
        lock(&self.scripts).insert(secret_id.to_owned(), answers);
        self
    }

    /// How often `secret_id` was fetched.
    pub fn calls(&self, secret_id: &str) -> usize {
        lock(&self.calls).get(secret_id).copied().unwrap_or(0)
    }

    /// How many fetches there were, of any id.
    pub fn total_calls(&self) -> usize {
        lock(&self.calls).values().sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SecretSource for ScriptedSource {
    fn fetch<'a>(&'a self, secret_id: &'a str) -> SecretFuture<'a> {
        *lock(&self.calls).entry(secret_id.to_owned()).or_default() += 1;
        let next = |answers: &mut Vec<Result<String, SecretError>>| match answers.len() {
            0 => Err(SecretError::Unusable("no scripted answer".into())),
            1 => answers[0].clone(),
            _ => answers.remove(0),
        };
        let answer = match lock(&self.scripts).get_mut(secret_id) {
            Some(script) => next(script),
            None => next(&mut lock(&self.default)),
        };
        Box::pin(async move { answer })
    }
}

/// How a cache turns a secret's text into its value.
type Parse<T> = dyn Fn(&str) -> Result<T, SecretError> + Send + Sync;

/// Parsed secret values by secret id, each fetched once per TTL: concurrent
/// requests for the same secret wait on one fetch instead of each making their own.
pub struct SecretCache<T> {
    source: Arc<dyn SecretSource>,
    parse: Box<Parse<T>>,
    ttl: Duration,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot<T>>>>>,
}

struct Slot<T> {
    value: Option<Arc<T>>,
    /// When the cached value stops being fresh.
    fresh_until: Option<Instant>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            value: None,
            fresh_until: None,
        }
    }
}

/// How long a stale value keeps serving, without another fetch, after Secrets
/// Manager failed to refresh it: requests should not each wait on a dead service.
const STALE_GRACE: Duration = Duration::from_secs(30);

impl<T: Send + Sync + 'static> SecretCache<T> {
    pub fn new(
        source: Arc<dyn SecretSource>,
        parse: impl Fn(&str) -> Result<T, SecretError> + Send + Sync + 'static,
        ttl: Duration,
    ) -> Self {
        Self {
            source,
            parse: Box::new(parse),
            ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, secret_id: &str) -> Arc<tokio::sync::Mutex<Slot<T>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(secret_id.to_owned()).or_default().clone()
    }

    /// The value, from the cache while fresh; a stale value keeps serving when
    /// a refresh fails.
    pub async fn get(&self, secret_id: &str) -> Result<Arc<T>, SecretError> {
        let slot = self.slot(secret_id);
        let mut slot = slot.lock().await;
        let now = Instant::now();
        if let (Some(value), Some(until)) = (&slot.value, slot.fresh_until)
            && now < until
        {
            return Ok(value.clone());
        }
        match self.fetch(secret_id).await {
            Ok(value) => {
                slot.value = Some(value.clone());
                slot.fresh_until = Some(now + self.ttl);
                Ok(value)
            }
            // Only an outage keeps the old value serving. A secret deleted, made
            // unreadable or rewritten into something unusable is a decision:
            // the old value (revoked client keys, say) stops at once.
            Err(err @ SecretError::Unavailable(_)) => match slot.value.clone() {
                Some(stale) => {
                    tracing::warn!(secret_id, error = %err, "refreshing a secret failed; serving the cached value");
                    slot.fresh_until = Some(now + STALE_GRACE.min(self.ttl.max(Duration::from_secs(1))));
                    Ok(stale)
                }
                None => Err(err),
            },
            Err(err) => {
                slot.value = None;
                slot.fresh_until = None;
                Err(err)
            }
        }
    }

    /// A fresh value after `rejected` was refused (an Azure key rotated since it
    /// was cached). When another request already replaced it, that value is
    /// returned without a fetch.
    pub async fn refresh(&self, secret_id: &str, rejected: &T) -> Result<Arc<T>, SecretError>
    where
        T: PartialEq,
    {
        let slot = self.slot(secret_id);
        let mut slot = slot.lock().await;
        if let Some(current) = &slot.value
            && current.as_ref() != rejected
        {
            return Ok(current.clone());
        }
        let value = self.fetch(secret_id).await?;
        slot.value = Some(value.clone());
        slot.fresh_until = Some(Instant::now() + self.ttl);
        Ok(value)
    }

    async fn fetch(&self, secret_id: &str) -> Result<Arc<T>, SecretError> {
        let raw = self.source.fetch(secret_id).await?;
        tracing::debug!(secret_id, "fetched a secret from Secrets Manager");
        Ok(Arc::new((self.parse)(&raw)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(answers: Vec<Result<String, SecretError>>, ttl: u64) -> (SecretCache<ApiKey>, Arc<ScriptedSource>) {
        let source = Arc::new(ScriptedSource::new(answers));
        let cache = SecretCache::new(source.clone(), ApiKey::from_secret_value, Duration::from_secs(ttl));
        (cache, source)
    }

    fn down() -> Result<String, SecretError> {
        Err(SecretError::Unavailable("could not connect".into()))
    }

    #[test]
    fn secret_values_are_bare_keys_or_json_with_api_key() {
        assert_eq!(ApiKey::from_secret_value(" abc \n").expect("bare").expose(), "abc");
        assert_eq!(
            ApiKey::from_secret_value(r#"{"apiKey":"k1"}"#).expect("json").expose(),
            "k1"
        );
        assert!(ApiKey::from_secret_value(r#"{"key":"k1"}"#).is_err());
        assert!(ApiKey::from_secret_value("").is_err());
        assert!(ApiKey::from_secret_value("a b").is_err());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ApiKey::from_secret_value("super-secret-value").expect("key");
        assert!(!format!("{key:?}").contains("super-secret"));
    }

    #[tokio::test(start_paused = true)]
    async fn many_requests_within_the_ttl_make_one_fetch() {
        let (cache, calls) = cache(vec![Ok("k".into())], 300);
        for _ in 0..20 {
            assert_eq!(cache.get("s").await.expect("key").expose(), "k");
        }
        assert_eq!(calls.total_calls(), 1);
        tokio::time::advance(Duration::from_secs(301)).await;
        cache.get("s").await.expect("key");
        assert_eq!(calls.total_calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_requests_share_one_fetch() {
        let (cache, calls) = cache(vec![Ok("k".into())], 300);
        let cache = Arc::new(cache);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get("s").await })
            })
            .collect();
        for t in tasks {
            t.await.expect("join").expect("key");
        }
        assert_eq!(calls.total_calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_fetch_is_not_cached() {
        let (cache, calls) = cache(vec![down(), Ok("k".into())], 300);
        assert!(matches!(cache.get("s").await, Err(SecretError::Unavailable(_))));
        assert_eq!(cache.get("s").await.expect("recovered").expose(), "k");
        assert_eq!(calls.total_calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_key_keeps_serving_when_the_refresh_fails() {
        let (cache, calls) = cache(vec![Ok("k".into()), down(), Ok("k2".into())], 60);
        cache.get("s").await.expect("key");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cache.get("s").await.expect("stale").expose(), "k");
        // Within the grace period no request waits on another fetch.
        assert_eq!(cache.get("s").await.expect("stale").expose(), "k");
        assert_eq!(calls.total_calls(), 2);
        tokio::time::advance(STALE_GRACE).await;
        assert_eq!(cache.get("s").await.expect("fresh").expose(), "k2");
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_fetches_once_for_a_rejected_key() {
        let (cache, calls) = cache(vec![Ok("old".into()), Ok("new".into())], 300);
        let old = cache.get("s").await.expect("key");
        assert_eq!(cache.refresh("s", &old).await.expect("new").expose(), "new");
        // A second request that also saw `old` rejected gets `new` without a fetch.
        assert_eq!(cache.refresh("s", &old).await.expect("new").expose(), "new");
        assert_eq!(calls.total_calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_or_unusable_secret_stops_the_old_value_an_outage_does_not() {
        for (failure, stale_serves) in [
            (down(), true),
            (Err(SecretError::Unusable("the secret does not exist".into())), false),
            (
                Err(SecretError::Unusable("access to the secret is denied".into())),
                false,
            ),
            (Ok("".to_owned()), false),
        ] {
            let (cache, _) = cache(vec![Ok("k".into()), failure.clone()], 60);
            assert_eq!(cache.get("s").await.expect("first").expose(), "k");
            tokio::time::advance(Duration::from_secs(61)).await;
            assert_eq!(cache.get("s").await.is_ok(), stale_serves, "{failure:?}");
        }
    }
}
