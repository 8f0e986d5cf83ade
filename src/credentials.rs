//! What the connector presents to Azure: an API key from Secrets Manager, or
//! a Microsoft Entra ID token, got with a client secret from Secrets Manager
//! or with no stored secret at all, by federating the function's AWS role
//! into Entra (a web identity token from STS as the client assertion).
//!
//! Tokens are cached per (token endpoint, client, scope) until five minutes
//! before they expire, fetched once for concurrent requests that need the
//! same one, and fetched again once when Azure refuses one (a revoked token).
//! The STS token is asked for only when an Entra token is needed. No key,
//! secret, assertion or token appears in a log line, a response or `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::{EntraAuth, EntraCredential, UpstreamAuth};
use crate::error::ApiError;
use crate::secrets::{ApiKey, SecretCache, SecretError, SecretSource};

/// A token is fetched again this long before it expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// How long the web identity token asked of STS lives: it is used at once.
const ASSERTION_SECONDS: i32 = 300;
/// The most of Entra's answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// What goes on one Azure request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey(Arc<ApiKey>),
    Token(Arc<AccessToken>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("Credential::ApiKey([REDACTED])"),
            Self::Token(_) => f.write_str("Credential::Token([REDACTED])"),
        }
    }
}

impl Credential {
    /// The header that carries it: `api-key`, or `Authorization: Bearer`.
    pub fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            Self::ApiKey(key) => {
                let mut value = HeaderValue::from_str(key.expose()).ok()?;
                value.set_sensitive(true);
                Some((HeaderName::from_static("api-key"), value))
            }
            Self::Token(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.0)).ok()?;
                value.set_sensitive(true);
                Some((AUTHORIZATION, value))
            }
        }
    }
}

/// An Entra ID access token. Its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([REDACTED])")
    }
}

/// A client secret for Entra ID: the bare secret, or `{"clientSecret": "…"}`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([REDACTED])")
    }
}

impl ClientSecret {
    pub fn from_secret_value(value: &str) -> Result<Self, SecretError> {
        let value = value.trim();
        let secret = if value.starts_with('{') {
            #[derive(Deserialize)]
            struct Wrapped {
                #[serde(rename = "clientSecret")]
                client_secret: String,
            }
            serde_json::from_str::<Wrapped>(value)
                .map_err(|_| {
                    SecretError::Invalid("a JSON secret must be an object with a string `clientSecret`".into())
                })?
                .client_secret
        } else {
            value.to_owned()
        };
        if secret.trim().is_empty() {
            return Err(SecretError::Invalid("the client secret is empty".into()));
        }
        Ok(Self(secret.trim().to_owned()))
    }
}

/// Why no credential could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Entra ID or STS unreachable, throttling or failing: worth a retry.
    #[error("{service} is unavailable: {why}")]
    Unavailable { service: &'static str, why: String },
    /// Entra ID or STS refused: the operator must act. `code` is Entra's
    /// AADSTS code or STS's error code, never a secret.
    #[error("{service} refused the credentials: {code}")]
    Refused { service: &'static str, code: String },
}

impl CredentialError {
    /// The client's view: 503 to retry shortly, 500 when the operator must act.
    pub fn to_api_error(&self, model: &str) -> ApiError {
        match self {
            Self::Secret(err) => err.to_api_error("its Azure credentials"),
            Self::Unavailable { service, why } => {
                tracing::error!(model, service, why = %why, "could not get a token for Azure");
                ApiError::credentials_unavailable(service)
            }
            Self::Refused { service, code } => {
                tracing::error!(model, service, code = %code, "the credentials for Azure were refused");
                ApiError::upstream_auth_misconfigured(model)
            }
        }
    }
}

/// Where AWS web identity tokens come from: STS in the function, a stand-in in tests.
pub trait WebIdentity: Send + Sync {
    fn token<'a>(
        &'a self,
        audience: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, CredentialError>> + Send + 'a>>;
}

/// STS `GetWebIdentityToken` through the AWS SDK (IAM outbound identity federation).
pub struct StsWebIdentity {
    client: aws_sdk_sts::Client,
}

impl StsWebIdentity {
    pub fn new(client: aws_sdk_sts::Client) -> Self {
        Self { client }
    }
}

impl WebIdentity for StsWebIdentity {
    fn token<'a>(
        &'a self,
        audience: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, CredentialError>> + Send + 'a>> {
        Box::pin(async move {
            use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
            let unavailable = |why: &str| CredentialError::Unavailable {
                service: "AWS STS",
                why: why.to_owned(),
            };
            let output = self
                .client
                .get_web_identity_token()
                .audience(audience)
                .duration_seconds(ASSERTION_SECONDS)
                .signing_algorithm("RS256")
                .send()
                .await
                .map_err(|err| match &err {
                    SdkError::ServiceError(service) => {
                        let code = service.err().code().unwrap_or("unknown").to_owned();
                        let transient = service.raw().status().is_server_error()
                            || matches!(
                                code.as_str(),
                                "Throttling" | "ThrottlingException" | "RequestLimitExceeded"
                            );
                        if transient {
                            unavailable(&code)
                        } else {
                            CredentialError::Refused {
                                service: "AWS STS",
                                code,
                            }
                        }
                    }
                    SdkError::TimeoutError(_) => unavailable("timed out"),
                    SdkError::DispatchFailure(_) => unavailable("could not connect"),
                    _ => unavailable("unexpected response"),
                })?;
            output
                .web_identity_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| unavailable("no token in the answer"))
        })
    }
}

/// One cached token and when to fetch it again.
#[derive(Default)]
struct TokenSlot {
    token: Option<Arc<AccessToken>>,
    refresh_at: Option<Instant>,
}

/// The cache key: one token per endpoint (authority and tenant), client and scope.
type TokenKey = (String, String, String);

/// The credentials of every entry, cached per execution environment.
pub struct Credentials {
    keys: SecretCache<ApiKey>,
    client_secrets: SecretCache<ClientSecret>,
    tokens: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<TokenSlot>>>>,
    http: reqwest::Client,
    web_identity: Option<Arc<dyn WebIdentity>>,
}

impl Credentials {
    pub fn new(secrets: Arc<dyn SecretSource>, ttl: Duration, http: reqwest::Client) -> Self {
        Self {
            keys: SecretCache::new(secrets.clone(), ApiKey::from_secret_value, ttl),
            client_secrets: SecretCache::new(secrets, ClientSecret::from_secret_value, ttl),
            tokens: Mutex::default(),
            http,
            web_identity: None,
        }
    }

    /// Where AWS web identity tokens come from, for federated entries.
    pub fn with_web_identity(mut self, source: Arc<dyn WebIdentity>) -> Self {
        self.web_identity = Some(source);
        self
    }

    /// The credential for `auth`, cached.
    pub async fn get(&self, auth: &UpstreamAuth) -> Result<Credential, CredentialError> {
        match auth {
            UpstreamAuth::ApiKey { secret_id } => Ok(Credential::ApiKey(self.keys.get(secret_id).await?)),
            UpstreamAuth::Entra(entra) => self.token(entra, None).await.map(Credential::Token),
        }
    }

    /// A fresh credential after Azure refused `rejected` (a rotated key, a
    /// revoked token). When another request already replaced it, that one.
    pub async fn refresh(&self, auth: &UpstreamAuth, rejected: &Credential) -> Result<Credential, CredentialError> {
        match (auth, rejected) {
            (UpstreamAuth::ApiKey { secret_id }, Credential::ApiKey(key)) => {
                Ok(Credential::ApiKey(self.keys.refresh(secret_id, key).await?))
            }
            (UpstreamAuth::Entra(entra), Credential::Token(token)) => {
                self.token(entra, Some(token)).await.map(Credential::Token)
            }
            _ => self.get(auth).await,
        }
    }

    fn slot(&self, entra: &EntraAuth) -> Arc<tokio::sync::Mutex<TokenSlot>> {
        let key = (
            entra.token_url.as_str().to_owned(),
            entra.client_id.clone(),
            entra.scope.clone(),
        );
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.entry(key).or_default().clone()
    }

    /// The cached token while it has five minutes left, else a new one;
    /// `rejected`: a new one unless the cache already moved past it.
    async fn token(
        &self,
        entra: &EntraAuth,
        rejected: Option<&Arc<AccessToken>>,
    ) -> Result<Arc<AccessToken>, CredentialError> {
        let slot = self.slot(entra);
        let mut slot = slot.lock().await;
        let now = Instant::now();
        if let (Some(token), Some(refresh_at)) = (&slot.token, slot.refresh_at) {
            let refused = rejected.is_some_and(|r| r.as_ref() == token.as_ref());
            if !refused && now < refresh_at {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = self.fetch_token(entra).await?;
        let token = Arc::new(token);
        slot.token = Some(token.clone());
        slot.refresh_at = Some(now + lifetime.saturating_sub(REFRESH_BEFORE));
        Ok(token)
    }

    /// The OAuth 2.0 client-credentials grant at the entry's token endpoint.
    async fn fetch_token(&self, entra: &EntraAuth) -> Result<(AccessToken, Duration), CredentialError> {
        // The proof first (its fetches await); the form is built after, in one go.
        let proof = match &entra.credential {
            EntraCredential::ClientSecret { secret_id } => {
                let secret = self.client_secrets.get(secret_id).await?;
                [("client_secret", secret.0.clone()), ("", String::new())]
            }
            EntraCredential::AwsFederation { audience } => {
                let source = self.web_identity.as_ref().ok_or_else(|| CredentialError::Unavailable {
                    service: "AWS STS",
                    why: "no STS client".into(),
                })?;
                let assertion = source.token(audience).await?;
                [
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                    ),
                    ("client_assertion", assertion),
                ]
            }
        };
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("client_id", &entra.client_id)
                .append_pair("scope", &entra.scope)
                .append_pair("grant_type", "client_credentials");
            for (name, value) in proof.iter().filter(|(name, _)| !name.is_empty()) {
                form.append_pair(name, value);
            }
            form.finish()
        };
        let unavailable = |why: String| CredentialError::Unavailable {
            service: "Microsoft Entra ID",
            why,
        };
        let response = self
            .http
            .post(entra.token_url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                unavailable(
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "could not connect"
                    }
                    .into(),
                )
            })?;
        let status = response.status();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| unavailable("the answer broke off".into()))?
        {
            if body.len() + chunk.len() > MAX_TOKEN_ANSWER {
                return Err(unavailable("the answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return parse_token(&body).ok_or_else(|| unavailable("the answer holds no access token".into()));
        }
        let code = entra_error_code(&body);
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(unavailable(format!("{} {code}", status.as_u16())));
        }
        Err(CredentialError::Refused {
            service: "Microsoft Entra ID",
            code,
        })
    }
}

/// `{"access_token": …, "expires_in": …}`: the token and how long it lives.
fn parse_token(body: &[u8]) -> Option<(AccessToken, Duration)> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: serde_json::Value,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    let seconds = match &answer.expires_in {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    if answer.access_token.is_empty() || !answer.access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((
        AccessToken(answer.access_token),
        Duration::from_secs(seconds.min(86_400)),
    ))
}

/// Entra's error code: `error` and the AADSTS number of `error_description`,
/// such as `invalid_client AADSTS7000215`. Never the description's text.
fn entra_error_code(body: &[u8]) -> String {
    #[derive(Deserialize, Default)]
    struct Error {
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        error_description: Option<String>,
        #[serde(default)]
        error_codes: Option<Vec<u64>>,
    }
    let error: Error = serde_json::from_slice(body).unwrap_or_default();
    let aadsts = error
        .error_codes
        .and_then(|codes| codes.first().map(|c| format!("AADSTS{c}")))
        .or_else(|| {
            let description = error.error_description?;
            let rest = description.split("AADSTS").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
        });
    let kind: String = error
        .error
        .unwrap_or_else(|| "unknown".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    match aadsts {
        Some(code) => format!("{kind} {code}"),
        None => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_secrets_are_bare_or_json() {
        assert_eq!(ClientSecret::from_secret_value(" s3cret ").expect("bare").0, "s3cret");
        assert_eq!(
            ClientSecret::from_secret_value(r#"{"clientSecret":"s3cret"}"#)
                .expect("json")
                .0,
            "s3cret"
        );
        assert!(ClientSecret::from_secret_value(r#"{"secret":"x"}"#).is_err());
        assert!(ClientSecret::from_secret_value("").is_err());
    }

    #[test]
    fn debug_never_shows_a_secret_or_a_token() {
        let secret = ClientSecret::from_secret_value("very-secret-value").expect("secret");
        let token = AccessToken("eyJ-the-token".into());
        let printed = format!("{secret:?} {token:?} {:?}", Credential::Token(Arc::new(token.clone())));
        assert!(
            !printed.contains("very-secret") && !printed.contains("eyJ"),
            "{printed}"
        );
    }

    #[test]
    fn entra_answers_are_read_strictly() {
        let (token, life) =
            parse_token(br#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc.def"}"#).expect("a token");
        assert_eq!((token.0.as_str(), life), ("abc.def", Duration::from_secs(3599)));
        assert!(parse_token(br#"{"expires_in":"3599","access_token":"abc"}"#).is_some());
        assert!(parse_token(br#"{"expires_in":3599}"#).is_none());
        assert!(parse_token(br#"{"expires_in":3599,"access_token":"a b"}"#).is_none());
    }

    #[test]
    fn entra_errors_give_their_code_never_their_text() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent is 'abc'.","error_codes":[7000215]}"#;
        assert_eq!(entra_error_code(body), "invalid_client AADSTS7000215");
        let body = br#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application not found"}"#;
        assert_eq!(entra_error_code(body), "unauthorized_client AADSTS700016");
        assert_eq!(entra_error_code(b"<html>"), "unknown");
    }
}
