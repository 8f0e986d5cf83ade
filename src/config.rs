//! Every environment variable the connector reads, parsed and checked once at
//! start-up. A problem names the variable, so a bad deployment fails with one
//! clear log line instead of an error per request.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::models::ModelSpec;
use crate::pricing::{self, CachedInput, Prices};

pub const IMAGE_MODELS: &str = "IMAGE_MODELS";
pub const AZURE_API_KEY_SECRET_ID: &str = "AZURE_API_KEY_SECRET_ID";
pub const SECRET_CACHE_TTL_SECONDS: &str = "SECRET_CACHE_TTL_SECONDS";
pub const CLIENT_API_KEYS_SECRET_ID: &str = "CLIENT_API_KEYS_SECRET_ID";
pub const AUTH_MODE: &str = "AUTH_MODE";
pub const MAX_RETRIES: &str = "MAX_RETRIES";
pub const UPSTREAM_TIMEOUT_SECONDS: &str = "UPSTREAM_TIMEOUT_SECONDS";
pub const METRICS_NAMESPACE: &str = "METRICS_NAMESPACE";
pub const RESPONSE_MODE: &str = "RESPONSE_MODE";
pub const MAX_RETRY_WAIT_SECONDS: &str = "MAX_RETRY_WAIT_SECONDS";
pub const HTTP_API_TIMEOUT_MS: &str = "HTTP_API_TIMEOUT_MS";
/// As the Azure SDKs name it: where Entra ID's token endpoint lives.
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// How long a request waits for a deployment of a pool whose deployments are all cooling down.
pub const POOL_MAX_WAIT_SECONDS: &str = "POOL_MAX_WAIT_SECONDS";
/// The S3 bucket where `response_format: "url"` stores gpt-image output.
pub const IMAGE_BUCKET: &str = "IMAGE_BUCKET";
pub const IMAGE_URL_TTL_SECONDS: &str = "IMAGE_URL_TTL_SECONDS";
/// The AWS SDKs' own variables for an S3 that is not AWS's (moto, MinIO),
/// S3's first: read as the SDKs read them, never set by the template.
pub const S3_ENDPOINT_VARIABLES: [&str; 2] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"];
pub const USAGE_TABLE: &str = "USAGE_TABLE";
pub const SPEND_LIMITS_ON_ERROR: &str = "SPEND_LIMITS_ON_ERROR";

const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The scope of a token for Azure OpenAI (Cognitive Services).
pub const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// The audience of an AWS web identity token that Entra ID's workload identity federation accepts.
pub const DEFAULT_FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

const DEFAULT_SECRET_TTL: Duration = Duration::from_secs(300);
const DEFAULT_MAX_RETRIES: u32 = 2;
const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_METRICS_NAMESPACE: &str = "AzureOpenAIImage";
const DEFAULT_POOL_MAX_WAIT: Duration = Duration::from_secs(5);
/// The largest weight of a pool's deployment: enough for any split, small enough to sum.
const MAX_WEIGHT: u64 = 1000;
const DEFAULT_IMAGE_URL_TTL: Duration = Duration::from_secs(3600);
/// The longest a link may be asked to live: 12 hours, the longest role
/// session AWS grants. A link signed with the function's role credentials
/// stops working when their session ends, whatever its own expiry says, and
/// Lambda publishes no lifetime for them (README, "Images as URLs").
pub const MAX_IMAGE_URL_TTL_SECONDS: u64 = 12 * 3600;

/// The connector's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// In the order configured: the first serves requests that name no model.
    pub models: Vec<ModelEntry>,
    pub secret_ttl: Duration,
    pub auth: AuthMode,
    pub retry: RetrySettings,
    /// The CloudWatch namespace of the EMF metrics.
    pub metrics_namespace: String,
    pub response_mode: ResponseMode,
    /// The HTTP API's integration timeout: its invocations answer before it,
    /// whatever Lambda's own deadline. `None`: no bound but Lambda's.
    pub http_api_timeout: Option<Duration>,
    /// Where gpt-image output asked for as `url` is stored; `None`: `url` is refused.
    pub image_bucket: Option<ImageBucket>,
    /// Where keys with a budget or limits are counted (issue 17).
    pub spend: SpendSettings,
}

/// The S3 bucket of `response_format: "url"`, and the life of its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBucket {
    pub name: String,
    /// The presigned GET's own expiry; the role session may end it sooner.
    pub url_ttl: Duration,
    /// An S3 that is not AWS's, addressed path-style; `None`: AWS's, virtual-hosted.
    pub endpoint: Option<Url>,
}

/// Spend control's settings: the DynamoDB table, and what a limited key's
/// request gets when the table cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendSettings {
    /// `USAGE_TABLE`; `None`: no key may have a budget or limits.
    pub table: Option<String>,
    /// `SPEND_LIMITS_ON_ERROR`.
    pub on_error: OnUsageStoreError,
}

/// `SPEND_LIMITS_ON_ERROR`: `deny` (the default) or `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUsageStoreError {
    /// 503 `usage_store_unavailable`: no request goes uncounted.
    Deny,
    /// Serve uncounted, with a warning and an EMF `UsageStoreErrors`.
    Allow,
}

/// How the function answers the Lambda Runtime API: streamed (Function URL
/// with RESPONSE_STREAM, REST API with STREAM: 200 MB, 15 minutes) or
/// buffered (HTTP API, buffered REST and Function URLs: 6 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Function URL and REST API invocations stream, HTTP API invocations are
    /// buffered: the front doors `template.yaml` creates.
    Auto,
    Stream,
    Buffered,
}

/// How hard the connector tries one model before it gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries after the first attempt, for 429, 5xx, timeouts and connection errors.
    pub max_retries: u32,
    /// The bound on one attempt; `None`: what the Lambda deadline allows.
    pub attempt_timeout: Option<Duration>,
    /// The longest wait before a retry, whatever Azure's `Retry-After` asks
    /// (a deadline bounds it further).
    pub max_wait: Duration,
    /// The longest wait for the first deployment of a pool of several to free
    /// up when all of them are cooling down; past it the client hears 429 at once.
    pub pool_max_wait: Duration,
}

/// Who checks callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// The connector, against the client keys in this secret. Without a
    /// secret every request that needs a key is refused: secure by default.
    ClientKeys { secret_id: Option<String> },
    /// Something in front of the connector (API Gateway IAM, a Lambda
    /// authorizer, Cognito): set explicitly with `AUTH_MODE=none`.
    None,
}

/// One configured model: a name clients use, and the Azure deployments that serve it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// What clients send as `model` (or as the Azure route's deployment id).
    pub name: String,
    /// The Azure model behind the deployments; decides validation.
    pub model: String,
    pub spec: &'static ModelSpec,
    /// Configured names to try, in order, when this model fails with a retryable error.
    pub fallbacks: Vec<String>,
    /// The entry's `"pricing"`, else the model's list prices; `None`: its cost is unknown.
    pub prices: Option<Prices>,
    /// Its `baseURL` (a pool of one) or its `"deployments"`, in the order
    /// configured: never empty, built here.
    targets: Vec<Target>,
}

/// One Azure deployment an entry sends requests to.
#[derive(Clone)]
pub struct Target {
    /// For logs and metrics: the item's `name`, else its deployment's (with
    /// `#` and the item's index when another item has the same deployment name).
    pub name: String,
    /// Its share of the entry's requests, among the deployments with as much room.
    pub weight: u32,
    /// The deployment's name: the last segment of a deployments `baseURL`,
    /// or the item's `deployment` on the v1 surface.
    pub deployment: String,
    /// `None` on the v1 surface when the entry sets none.
    pub api_version: Option<String>,
    pub surface: Surface,
    /// The full upstream URLs, built once here: nothing from a request goes into them.
    pub generations_url: Url,
    pub edits_url: Url,
    /// How the connector proves itself to Azure.
    pub auth: UpstreamAuth,
}

/// Which of Azure's API surfaces an entry calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `…/openai/deployments/{deployment}/images/…?api-version=`: the body's
    /// `model` is the Azure model.
    Deployments,
    /// `…/openai/v1/images/…`: the deployment is named by the body's `model`.
    V1,
}

impl ModelEntry {
    /// Its deployments, in the order configured: at least one.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Its first deployment: the one of an entry with a single `baseURL`.
    pub fn primary(&self) -> &Target {
        // `from_raw` builds no entry without a deployment.
        &self.targets[0]
    }

    /// What the body's `model` says to `target`: the model on the deployments
    /// surface, the deployment on the v1 surface.
    pub fn upstream_model<'a>(&'a self, target: &'a Target) -> &'a str {
        match target.surface {
            Surface::Deployments => &self.model,
            Surface::V1 => &target.deployment,
        }
    }
}

/// How an entry authenticates to Azure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuth {
    /// An `api-key` from this Secrets Manager secret.
    ApiKey { secret_id: String },
    /// `Authorization: Bearer` with a Microsoft Entra ID token.
    Entra(EntraAuth),
}

/// An Entra ID app (or managed identity) and how the connector proves it is that app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraAuth {
    /// `{authority}/{tenant}/oauth2/v2.0/token`, built once here.
    pub token_url: Url,
    pub tenant_id: String,
    pub client_id: String,
    pub scope: String,
    pub credential: EntraCredential,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntraCredential {
    /// A client secret, kept in this Secrets Manager secret.
    ClientSecret { secret_id: String },
    /// No stored secret: the function's AWS role, federated into Entra with a
    /// web identity token from STS (`GetWebIdentityToken`) for `audience`.
    AwsFederation { audience: String },
}

/// The upstream URL names the Azure resource: kept out of anything printed.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("deployment", &self.deployment)
            .field("api_version", &self.api_version)
            .field("surface", &self.surface)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn problem(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    model: String,
    #[serde(rename = "baseURL", default)]
    base_url: Option<String>,
    /// Several deployments instead of one `baseURL`: read as values first,
    /// so that their problems name the entry and the item.
    #[serde(default)]
    deployments: Option<Vec<serde_json::Value>>,
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(rename = "apiKeySecretId", default)]
    api_key_secret_id: Option<String>,
    /// The deployment's name, on the v1 surface.
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    fallbacks: Vec<String>,
    /// Read as a value first, so that its problems name the entry.
    #[serde(default)]
    pricing: Option<serde_json::Value>,
}

/// One item of an entry's `"deployments"`: the per-deployment fields of an
/// entry, a `weight` (default 1) and a `name` for logs and metrics.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(rename = "baseURL")]
    base_url: String,
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(rename = "apiKeySecretId", default)]
    api_key_secret_id: Option<String>,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    auth: Option<RawAuth>,
    /// Read as a value, so that a bad one is named as such.
    #[serde(default)]
    weight: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
}

/// An entry's `"pricing"`: negotiated or regional rates in place of the
/// model's list prices (`pricing.rs`), in US dollars. One of two shapes:
///
/// - per token, USD per 1M tokens (the gpt-image family):
///   `{"textInputPerMTok": 5, "imageInputPerMTok": 10, "imageOutputPerMTok": 40}`,
///   all three required, with `"cachedTextInputPerMTok"` and
///   `"cachedImageInputPerMTok"` optional but only together;
/// - per image, USD by `"quality/size"` (dall-e-3):
///   `{"perImage": {"standard/1024x1024": 0.04, "hd/1792x1024": 0.12}}`.
///
/// Unknown fields, a mix of the two, negative or non-finite numbers are refused.
/// Zero is a price (a free deployment), unlike a missing one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    #[serde(rename = "textInputPerMTok")]
    text_input: Option<f64>,
    #[serde(rename = "imageInputPerMTok")]
    image_input: Option<f64>,
    #[serde(rename = "imageOutputPerMTok")]
    image_output: Option<f64>,
    #[serde(rename = "cachedTextInputPerMTok")]
    cached_text_input: Option<f64>,
    #[serde(rename = "cachedImageInputPerMTok")]
    cached_image_input: Option<f64>,
    #[serde(rename = "perImage")]
    per_image: Option<std::collections::BTreeMap<String, f64>>,
}

impl RawPricing {
    /// The prices of an entry for `model`, or what is wrong with them.
    fn prices(self, model: &str) -> Result<Prices, String> {
        let rate = |field: &str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(value)
            } else {
                Err(format!("`{field}` must be a non-negative number, not {value}"))
            }
        };
        let tokens = [self.text_input, self.image_input, self.image_output];
        let cached = [self.cached_text_input, self.cached_image_input];
        match (tokens, cached, self.per_image) {
            ([Some(text), Some(image), Some(output)], [cached_text, cached_image], None) => {
                let cached_input = match (cached_text, cached_image) {
                    (None, None) => None,
                    (Some(text), Some(image)) => Some(CachedInput {
                        text: rate("cachedTextInputPerMTok", text)?,
                        image: rate("cachedImageInputPerMTok", image)?,
                    }),
                    _ => return Err("`cachedTextInputPerMTok` and `cachedImageInputPerMTok` go together".into()),
                };
                Ok(Prices::PerToken {
                    text_input: rate("textInputPerMTok", text)?,
                    image_input: rate("imageInputPerMTok", image)?,
                    image_output: rate("imageOutputPerMTok", output)?,
                    cached_input,
                    sizing: pricing::token_sizing(model),
                })
            }
            ([None, None, None], [None, None], Some(table)) => {
                if table.is_empty() {
                    return Err("`perImage` lists no prices".into());
                }
                let mut prices = std::collections::BTreeMap::new();
                for (key, usd) in table {
                    let Some((quality, size)) = key
                        .split_once('/')
                        .map(|(q, s)| (q.trim().to_ascii_lowercase(), s.trim().to_ascii_lowercase()))
                        .filter(|(q, s)| !q.is_empty() && !s.is_empty() && !s.contains('/'))
                    else {
                        return Err(format!("`perImage` key `{key}` is not `quality/size`"));
                    };
                    let usd = rate(&format!("perImage.{key}"), usd)?;
                    if prices.insert((quality, size), usd).is_some() {
                        return Err(format!("`perImage` key `{key}` is given twice"));
                    }
                }
                Ok(Prices::PerImage(prices))
            }
            _ => Err(
                "must be either all of `textInputPerMTok`, `imageInputPerMTok` and `imageOutputPerMTok`, or `perImage`"
                    .into(),
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawAuth {
    #[serde(rename = "api-key")]
    ApiKey {
        #[serde(rename = "secretId")]
        secret_id: String,
    },
    #[serde(rename = "entra")]
    Entra {
        #[serde(rename = "tenantId")]
        tenant_id: String,
        #[serde(rename = "clientId")]
        client_id: String,
        #[serde(rename = "clientSecretSecretId", default)]
        client_secret_secret_id: Option<String>,
        #[serde(default)]
        federation: Option<String>,
        #[serde(default)]
        audience: Option<String>,
        #[serde(default)]
        scope: Option<String>,
    },
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let default_secret = lookup(AZURE_API_KEY_SECRET_ID)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        // Every duration is bounded here, so no arithmetic on it can overflow later.
        let secret_ttl = whole_number(&lookup, SECRET_CACHE_TTL_SECONDS, 0..=86_400)?
            .map_or(DEFAULT_SECRET_TTL, Duration::from_secs);
        let retry = RetrySettings {
            max_retries: whole_number(&lookup, MAX_RETRIES, 0..=10)?.map_or(DEFAULT_MAX_RETRIES, |n| n as u32),
            attempt_timeout: whole_number(&lookup, UPSTREAM_TIMEOUT_SECONDS, 1..=900)?.map(Duration::from_secs),
            max_wait: whole_number(&lookup, MAX_RETRY_WAIT_SECONDS, 1..=900)?
                .map_or(DEFAULT_MAX_RETRY_WAIT, Duration::from_secs),
            pool_max_wait: whole_number(&lookup, POOL_MAX_WAIT_SECONDS, 0..=900)?
                .map_or(DEFAULT_POOL_MAX_WAIT, Duration::from_secs),
        };
        let http_api_timeout = whole_number(&lookup, HTTP_API_TIMEOUT_MS, 50..=30_000)?.map(Duration::from_millis);
        let authority = lookup(AZURE_AUTHORITY_HOST)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned());
        let authority = checked_url(&authority)
            .ok()
            .filter(|url| url.query().is_none() && url.fragment().is_none())
            .ok_or_else(|| {
                problem(
                    AZURE_AUTHORITY_HOST,
                    format!("`{authority}` is not an https URL (http only for this machine)"),
                )
            })?;
        let metrics_namespace = match lookup(METRICS_NAMESPACE).map(|v| v.trim().to_owned()) {
            None => DEFAULT_METRICS_NAMESPACE.to_owned(),
            Some(ns)
                if !ns.is_empty()
                    && ns.len() <= 255
                    && !ns.starts_with(':')
                    && ns.chars().all(|c| c.is_ascii_alphanumeric() || "._-/#:".contains(c)) =>
            {
                ns
            }
            Some(ns) => {
                return Err(problem(
                    METRICS_NAMESPACE,
                    format!("`{ns}` is not a CloudWatch namespace (1-255 of letters, digits and . _ - / # :)"),
                ));
            }
        };
        let response_mode = match lookup(RESPONSE_MODE).as_deref().map(str::trim) {
            None | Some("") | Some("auto") => ResponseMode::Auto,
            Some("stream") => ResponseMode::Stream,
            Some("buffered") => ResponseMode::Buffered,
            Some(other) => {
                return Err(problem(
                    RESPONSE_MODE,
                    format!("`{other}` is not `auto`, `stream` or `buffered`"),
                ));
            }
        };
        let client_keys = lookup(CLIENT_API_KEYS_SECRET_ID)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        let auth = match lookup(AUTH_MODE).as_deref().map(str::trim) {
            None | Some("") | Some("client-keys") => AuthMode::ClientKeys { secret_id: client_keys },
            Some("none") if client_keys.is_some() => {
                return Err(problem(
                    AUTH_MODE,
                    format!("is `none` but {CLIENT_API_KEYS_SECRET_ID} is set; unset one of them"),
                ));
            }
            Some("none") => AuthMode::None,
            Some(other) => return Err(problem(AUTH_MODE, format!("`{other}` is not `client-keys` or `none`"))),
        };
        let image_bucket = image_bucket(&lookup)?;
        let raw_models = lookup(IMAGE_MODELS)
            .ok_or_else(|| problem(IMAGE_MODELS, "is not set; it must be a JSON array of model entries"))?;
        let entries: Vec<RawEntry> = serde_json::from_str(&raw_models)
            .map_err(|e| problem(IMAGE_MODELS, format!("is not a JSON array of model entries: {e}")))?;
        if entries.is_empty() {
            return Err(problem(IMAGE_MODELS, "lists no models"));
        }
        let mut names = HashSet::new();
        let mut models = Vec::with_capacity(entries.len());
        for (i, raw) in entries.into_iter().enumerate() {
            let entry = ModelEntry::from_raw(raw, default_secret.as_deref(), &authority)
                .map_err(|p| problem(IMAGE_MODELS, format!("entry {i}: {p}")))?;
            if !names.insert(entry.name.clone()) {
                return Err(problem(
                    IMAGE_MODELS,
                    format!("entry {i}: the name `{}` is used twice", entry.name),
                ));
            }
            models.push(entry);
        }
        for (i, entry) in models.iter().enumerate() {
            for fallback in &entry.fallbacks {
                if fallback == &entry.name || !names.contains(fallback) {
                    return Err(problem(
                        IMAGE_MODELS,
                        format!("entry {i}: fallback `{fallback}` is not another configured name"),
                    ));
                }
            }
        }
        let spend = SpendSettings {
            table: lookup(USAGE_TABLE)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            on_error: match lookup(SPEND_LIMITS_ON_ERROR).as_deref().map(str::trim) {
                None | Some("") | Some("deny") => OnUsageStoreError::Deny,
                Some("allow") => OnUsageStoreError::Allow,
                Some(other) => {
                    return Err(problem(
                        SPEND_LIMITS_ON_ERROR,
                        format!("`{other}` is not `deny` or `allow`"),
                    ));
                }
            },
        };
        Ok(Self {
            models,
            secret_ttl,
            auth,
            retry,
            metrics_namespace,
            response_mode,
            http_api_timeout,
            image_bucket,
            spend,
        })
    }

    /// The entry a client names as `model` on the OpenAI route; the first when it names none.
    pub fn model_by_name(&self, name: Option<&str>) -> Option<&ModelEntry> {
        match name {
            None => self.models.first(),
            Some(name) => self.models.iter().find(|m| m.name == name),
        }
    }

    /// The entry an Azure-route path names: a configured name, or a deployment segment.
    pub fn model_by_deployment(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == id).or_else(|| {
            self.models
                .iter()
                .find(|m| m.targets.iter().any(|t| t.deployment == id))
        })
    }
}

/// An optional whole-number variable within `range`.
/// `IMAGE_BUCKET` and what goes with it: the links' life, and the S3 endpoint
/// the AWS SDKs would use.
fn image_bucket(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<ImageBucket>, ConfigError> {
    let url_ttl = whole_number(lookup, IMAGE_URL_TTL_SECONDS, 60..=MAX_IMAGE_URL_TTL_SECONDS)?
        .map_or(DEFAULT_IMAGE_URL_TTL, Duration::from_secs);
    let Some(name) = lookup(IMAGE_BUCKET)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if !is_bucket_name(&name) {
        return Err(problem(
            IMAGE_BUCKET,
            format!(
                "`{name}` is not an S3 bucket name (3-63 of a-z, 0-9, `.` and `-`, starting and ending with a letter or digit)"
            ),
        ));
    }
    let mut endpoint = None;
    for variable in S3_ENDPOINT_VARIABLES {
        if let Some(raw) = lookup(variable).filter(|v| !v.trim().is_empty()) {
            let url = checked_url(&raw).map_err(|p| problem(variable, p))?;
            endpoint = Some(url);
            break;
        }
    }
    Ok(Some(ImageBucket {
        name,
        url_ttl,
        endpoint,
    }))
}

/// S3's rules for a bucket name (general purpose buckets).
fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
}

fn whole_number(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigError> {
    let Some(raw) = lookup(variable).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(problem(
            variable,
            format!(
                "`{raw}` is not a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

impl ModelEntry {
    fn from_raw(raw: RawEntry, default_secret: Option<&str>, authority: &Url) -> Result<Self, String> {
        let name = raw.name.trim().to_owned();
        if name.is_empty() || !name.chars().all(is_id_char) {
            return Err(format!(
                "name `{}` must be non-empty and use only letters, digits, '-', '_', '.' or ':'",
                raw.name
            ));
        }
        let model = raw.model.trim().to_owned();
        if model.is_empty() {
            return Err(format!("`{name}`: model must not be empty"));
        }
        let targets = match (raw.base_url, raw.deployments) {
            (Some(base_url), None) => {
                let one = RawTarget {
                    base_url,
                    api_version: raw.api_version,
                    api_key_secret_id: raw.api_key_secret_id,
                    deployment: raw.deployment,
                    auth: raw.auth,
                    weight: None,
                    name: None,
                };
                vec![Target::from_raw(one, default_secret, authority).map_err(|p| format!("`{name}`: {p}"))?]
            }
            (None, Some(items)) => {
                if raw.api_version.is_some()
                    || raw.api_key_secret_id.is_some()
                    || raw.deployment.is_some()
                    || raw.auth.is_some()
                {
                    return Err(format!(
                        "`{name}`: with `deployments`, `apiVersion`, `deployment`, `auth` and `apiKeySecretId` go in each item"
                    ));
                }
                targets_from_raw(items, default_secret, authority).map_err(|p| format!("`{name}`: {p}"))?
            }
            (Some(_), Some(_)) => return Err(format!("`{name}`: set `baseURL` or `deployments`, not both")),
            (None, None) => return Err(format!("`{name}`: needs `baseURL` or `deployments`")),
        };
        let spec = ModelSpec::for_model(&model);
        let prices = match raw.pricing {
            None => pricing::list_prices(&model),
            Some(value) => Some(
                serde_json::from_value::<RawPricing>(value)
                    .map_err(|e| e.to_string())
                    .and_then(|raw| raw.prices(&model))
                    .map_err(|p| format!("`{name}`: pricing: {p}"))?,
            ),
        };
        Ok(Self {
            name,
            model,
            spec,
            fallbacks: raw.fallbacks,
            prices,
            targets,
        })
    }
}

/// An entry's `"deployments"`: not empty, each item valid, no deployment twice, no name twice.
fn targets_from_raw(
    items: Vec<serde_json::Value>,
    default_secret: Option<&str>,
    authority: &Url,
) -> Result<Vec<Target>, String> {
    if items.is_empty() {
        return Err("`deployments` lists no deployment".into());
    }
    let mut parsed: Vec<(Target, bool)> = Vec::with_capacity(items.len());
    for (j, item) in items.into_iter().enumerate() {
        let raw = serde_json::from_value::<RawTarget>(item).map_err(|e| format!("deployments[{j}]: {e}"))?;
        let named = raw.name.is_some();
        let target = Target::from_raw(raw, default_secret, authority).map_err(|p| format!("deployments[{j}]: {p}"))?;
        parsed.push((target, named));
    }
    // A default name is the deployment's, numbered by the item when another has the same (the
    // same deployment name in two resources is the usual pool). Never the host: names reach logs
    // and error messages, upstream URLs do not.
    let deployments: Vec<String> = parsed.iter().map(|(t, _)| t.deployment.clone()).collect();
    let mut targets: Vec<Target> = Vec::with_capacity(parsed.len());
    for (j, (mut target, named)) in parsed.into_iter().enumerate() {
        if !named && deployments.iter().filter(|d| **d == target.deployment).count() > 1 {
            target.name = format!("{}#{j}", target.deployment);
        }
        for (k, other) in targets.iter().enumerate() {
            if other.same_deployment(&target) {
                return Err(format!(
                    "deployments[{j}]: the same deployment as deployments[{k}] (`{}`)",
                    other.name
                ));
            }
            if other.name == target.name {
                return Err(format!(
                    "deployments[{j}]: the name `{}` is used by deployments[{k}] too",
                    target.name
                ));
            }
        }
        targets.push(target);
    }
    Ok(targets)
}

impl Target {
    fn from_raw(raw: RawTarget, default_secret: Option<&str>, authority: &Url) -> Result<Self, String> {
        let api_version = raw.api_version.map(|v| v.trim().to_owned());
        if let Some(version) = &api_version
            && (version.is_empty()
                || !version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            return Err(format!("apiVersion `{version}` is not an Azure api-version"));
        }
        let base = checked_url(&raw.base_url).map_err(|p| format!("baseURL {p}"))?;
        let segments: Vec<&str> = base.path().trim_end_matches('/').split('/').skip(1).collect();
        let (surface, deployment) = match segments.as_slice() {
            [.., "openai", "deployments", deployment]
                if !deployment.is_empty() && deployment.chars().all(is_id_char) =>
            {
                if raw.deployment.is_some() {
                    return Err("`deployment` is for the v1 surface; a deployments baseURL names it already".into());
                }
                if api_version.is_none() {
                    return Err("apiVersion is required with a deployments baseURL".into());
                }
                (Surface::Deployments, (*deployment).to_owned())
            }
            [.., "openai", "v1"] => {
                let deployment = raw
                    .deployment
                    .map(|d| d.trim().to_owned())
                    .filter(|d| !d.is_empty() && d.chars().all(is_id_char))
                    .ok_or_else(|| {
                        "a v1 baseURL needs `deployment`, the deployment's name (sent as the body's model)".to_owned()
                    })?;
                (Surface::V1, deployment)
            }
            _ => {
                return Err("baseURL must end in /openai/deployments/<deployment> or /openai/v1".into());
            }
        };
        let url_for = |operation: &str| {
            let mut target = base.clone();
            target.set_path(&format!("{}/images/{operation}", base.path().trim_end_matches('/')));
            if let Some(version) = &api_version {
                target.query_pairs_mut().append_pair("api-version", version);
            }
            target
        };
        let auth = upstream_auth(raw.auth, raw.api_key_secret_id, default_secret, authority)?;
        let weight = match raw.weight {
            None => 1,
            Some(value) => value
                .as_u64()
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .map(|w| w as u32)
                .ok_or_else(|| format!("weight `{value}` is not a whole number from 1 to {MAX_WEIGHT}"))?,
        };
        let name = match raw.name.map(|n| n.trim().to_owned()) {
            None => deployment.clone(),
            Some(name)
                if !name.is_empty()
                    && name.len() <= 100
                    && name.chars().all(|c| is_id_char(c) || c == '/' || c == '#') =>
            {
                name
            }
            Some(name) => {
                return Err(format!(
                    "name `{name}` must be 1 to 100 of letters, digits, '-', '_', '.', ':', '/' or '#'"
                ));
            }
        };
        let (generations_url, edits_url) = (url_for("generations"), url_for("edits"));
        Ok(Self {
            name,
            weight,
            deployment,
            api_version,
            surface,
            generations_url,
            edits_url,
            auth,
        })
    }

    /// Whether both name one Azure deployment (one quota), whatever their api-versions.
    fn same_deployment(&self, other: &Self) -> bool {
        let place = |t: &Self| {
            let url = &t.generations_url;
            (
                url.host_str().map(str::to_ascii_lowercase),
                url.port_or_known_default(),
                url.path().to_owned(),
                t.deployment.clone(),
            )
        };
        place(self) == place(other)
    }
}

/// An entry's `auth`, or its `apiKeySecretId`, or the default key secret.
fn upstream_auth(
    auth: Option<RawAuth>,
    api_key_secret_id: Option<String>,
    default_secret: Option<&str>,
    authority: &Url,
) -> Result<UpstreamAuth, String> {
    let trimmed = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    if auth.is_some() && api_key_secret_id.is_some() {
        return Err("set `auth` or `apiKeySecretId`, not both".into());
    }
    match auth {
        Some(RawAuth::ApiKey { secret_id }) => trimmed(secret_id)
            .map(|secret_id| UpstreamAuth::ApiKey { secret_id })
            .ok_or_else(|| "auth.secretId must not be empty".into()),
        Some(RawAuth::Entra {
            tenant_id,
            client_id,
            client_secret_secret_id,
            federation,
            audience,
            scope,
        }) => {
            let tenant_id = tenant_id.trim().to_owned();
            if tenant_id.is_empty()
                || !tenant_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(format!("auth.tenantId `{tenant_id}` is not a tenant id or domain"));
            }
            let client_id = trimmed(client_id).ok_or("auth.clientId must not be empty")?;
            let credential = match (client_secret_secret_id.and_then(trimmed), federation.as_deref()) {
                (Some(secret_id), None) => {
                    if audience.is_some() {
                        return Err("auth.audience is for `federation`".into());
                    }
                    EntraCredential::ClientSecret { secret_id }
                }
                (None, Some("aws")) => EntraCredential::AwsFederation {
                    audience: audience
                        .and_then(trimmed)
                        .unwrap_or_else(|| DEFAULT_FEDERATION_AUDIENCE.to_owned()),
                },
                (None, Some(other)) => return Err(format!("auth.federation `{other}` is not `aws`")),
                (Some(_), Some(_)) | (None, None) => {
                    return Err("an entra auth needs exactly one of `clientSecretSecretId` and `federation`".into());
                }
            };
            let mut token_url = authority.clone();
            token_url.set_path(&format!(
                "{}/{tenant_id}/oauth2/v2.0/token",
                authority.path().trim_end_matches('/')
            ));
            Ok(UpstreamAuth::Entra(EntraAuth {
                token_url,
                tenant_id,
                client_id,
                scope: scope.and_then(trimmed).unwrap_or_else(|| DEFAULT_SCOPE.to_owned()),
                credential,
            }))
        }
        None => api_key_secret_id
            .and_then(trimmed)
            .or_else(|| default_secret.map(str::to_owned))
            .map(|secret_id| UpstreamAuth::ApiKey { secret_id })
            .ok_or_else(|| format!("has no apiKeySecretId and {AZURE_API_KEY_SECRET_ID} is not set")),
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// An https URL (http only to this machine: the stand-ins of tests and the
/// run command) without query, fragment or credentials.
fn checked_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("is not a URL: {e}"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        other => return Err(format!("must use https, not {other}")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a query, a fragment or credentials".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    const ONE: &str = r#"[{"name":"azure-image","model":"gpt-image-1","baseURL":"https://res.openai.azure.com/openai/deployments/img1/","apiVersion":"2025-04-01-preview"}]"#;

    #[test]
    fn an_entry_becomes_the_upstream_url_and_deployment() {
        let cfg = config(&[(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "azure-key")]).expect("valid");
        let m = cfg.models[0].primary();
        assert_eq!(
            m.generations_url.as_str(),
            "https://res.openai.azure.com/openai/deployments/img1/images/generations?api-version=2025-04-01-preview"
        );
        assert_eq!(
            m.edits_url.as_str(),
            "https://res.openai.azure.com/openai/deployments/img1/images/edits?api-version=2025-04-01-preview"
        );
        assert_eq!(m.deployment, "img1");
        assert_eq!(
            m.auth,
            UpstreamAuth::ApiKey {
                secret_id: "azure-key".into()
            }
        );
        assert_eq!(cfg.secret_ttl, Duration::from_secs(300));
    }

    #[test]
    fn spend_control_is_off_without_a_table_and_denies_on_store_errors_by_default() {
        let key = (AZURE_API_KEY_SECRET_ID, "azure-key");
        let cfg = config(&[(IMAGE_MODELS, ONE), key]).expect("valid");
        assert_eq!(
            cfg.spend,
            SpendSettings {
                table: None,
                on_error: OnUsageStoreError::Deny
            }
        );
        let cfg = config(&[
            (IMAGE_MODELS, ONE),
            key,
            (USAGE_TABLE, " usage "),
            (SPEND_LIMITS_ON_ERROR, "allow"),
        ])
        .expect("valid");
        assert_eq!(cfg.spend.table.as_deref(), Some("usage"));
        assert_eq!(cfg.spend.on_error, OnUsageStoreError::Allow);
        let err = config(&[(IMAGE_MODELS, ONE), key, (SPEND_LIMITS_ON_ERROR, "open")]).expect_err("unknown");
        assert_eq!(err.variable, SPEND_LIMITS_ON_ERROR);
    }

    #[test]
    fn an_entry_secret_overrides_the_default() {
        let models = r#"[{"name":"a","model":"dall-e-3","baseURL":"https://r.openai.azure.com/openai/deployments/d3","apiVersion":"2024-10-21","apiKeySecretId":"other"}]"#;
        let cfg = config(&[(IMAGE_MODELS, models)]).expect("valid");
        assert_eq!(
            cfg.models[0].primary().auth,
            UpstreamAuth::ApiKey {
                secret_id: "other".into()
            }
        );
    }

    #[test]
    fn the_image_bucket_is_optional_and_its_links_live_an_hour_by_default() {
        let base = [(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "k")];
        assert_eq!(config(&base).expect("valid").image_bucket, None);
        let cfg = config(&[base[0], base[1], (IMAGE_BUCKET, " my-images ")]).expect("valid");
        assert_eq!(
            cfg.image_bucket,
            Some(ImageBucket {
                name: "my-images".into(),
                url_ttl: Duration::from_secs(3600),
                endpoint: None,
            })
        );
        let cfg = config(&[
            base[0],
            base[1],
            (IMAGE_BUCKET, "b.images"),
            (IMAGE_URL_TTL_SECONDS, "43200"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ])
        .expect("valid");
        let bucket = cfg.image_bucket.expect("a bucket");
        assert_eq!(bucket.url_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(
            bucket.endpoint.map(String::from).as_deref(),
            Some("http://127.0.0.1:5000/")
        );
        let s3_first = config(&[
            base[0],
            base[1],
            (IMAGE_BUCKET, "bkt"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000"),
        ])
        .expect("valid");
        assert_eq!(
            s3_first
                .image_bucket
                .and_then(|b| b.endpoint)
                .map(String::from)
                .as_deref(),
            Some("http://127.0.0.1:9000/")
        );
    }

    #[test]
    fn bad_image_bucket_settings_name_their_variable() {
        let base = [(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "k")];
        for (var, bad) in [
            (IMAGE_BUCKET, "My_Images"),
            (IMAGE_BUCKET, "ab"),
            (IMAGE_BUCKET, "-images"),
            (IMAGE_BUCKET, "a..b"),
            (IMAGE_URL_TTL_SECONDS, "59"),
            (IMAGE_URL_TTL_SECONDS, "43201"),
            ("AWS_ENDPOINT_URL", "http://s3.example.com"),
        ] {
            let err = config(&[base[0], base[1], (IMAGE_BUCKET, "images"), (var, bad)]).expect_err(bad);
            assert_eq!(err.variable, var, "{bad}");
        }
    }

    #[test]
    fn missing_models_names_the_variable() {
        let err = config(&[(AZURE_API_KEY_SECRET_ID, "k")]).expect_err("invalid");
        assert_eq!(err.variable, IMAGE_MODELS);
    }

    #[test]
    fn an_entry_without_any_secret_is_rejected() {
        let err = config(&[(IMAGE_MODELS, ONE)]).expect_err("invalid");
        assert!(err.to_string().contains(AZURE_API_KEY_SECRET_ID), "{err}");
    }

    #[test]
    fn bad_ttl_names_the_variable() {
        let err = config(&[
            (IMAGE_MODELS, ONE),
            (AZURE_API_KEY_SECRET_ID, "k"),
            (SECRET_CACHE_TTL_SECONDS, "soon"),
        ])
        .expect_err("invalid");
        assert_eq!(err.variable, SECRET_CACHE_TTL_SECONDS);
    }

    fn entry(fields: &str) -> Result<ModelEntry, ConfigError> {
        let models = format!(r#"[{{"name":"img","model":"gpt-image-1",{fields}}}]"#);
        config(&[(IMAGE_MODELS, &models), (AZURE_API_KEY_SECRET_ID, "k")]).map(|c| c.models[0].clone())
    }

    /// The one deployment of an entry of `fields`.
    fn target(fields: &str) -> Result<Target, ConfigError> {
        entry(fields).map(|e| e.primary().clone())
    }

    #[test]
    fn base_urls_must_be_azure_deployment_urls_over_https() {
        for bad in [
            "http://res.openai.azure.com/openai/deployments/d",
            "https://res.openai.azure.com/openai/d",
            "https://res.openai.azure.com/openai/deployments/d?x=1",
            "https://user:pw@res.openai.azure.com/openai/deployments/d",
            "not a url",
        ] {
            assert!(
                entry(&format!(r#""baseURL":"{bad}","apiVersion":"2024-10-21""#)).is_err(),
                "{bad}"
            );
        }
        assert!(entry(r#""baseURL":"http://127.0.0.1:8000/openai/deployments/d","apiVersion":"v""#).is_ok());
        assert!(
            entry(r#""baseURL":"https://r.openai.azure.com/openai/deployments/d""#).is_err(),
            "the deployments surface needs an api-version"
        );
    }

    #[test]
    fn the_v1_surface_names_the_deployment_in_the_body_and_sends_an_api_version_only_when_set() {
        let v1_entry =
            entry(r#""baseURL":"https://r.openai.azure.com/openai/v1","deployment":"img-prod""#).expect("valid");
        let v1 = v1_entry.primary();
        assert_eq!(v1.surface, Surface::V1);
        assert_eq!(
            v1.generations_url.as_str(),
            "https://r.openai.azure.com/openai/v1/images/generations"
        );
        assert_eq!(
            v1.edits_url.as_str(),
            "https://r.openai.azure.com/openai/v1/images/edits"
        );
        assert_eq!(v1_entry.upstream_model(v1), "img-prod");
        let preview =
            target(r#""baseURL":"https://r.services.ai.azure.com/openai/v1/","deployment":"d","apiVersion":"preview""#)
                .expect("valid");
        assert_eq!(
            preview.generations_url.as_str(),
            "https://r.services.ai.azure.com/openai/v1/images/generations?api-version=preview"
        );
        assert!(
            entry(r#""baseURL":"https://r.openai.azure.com/openai/v1""#).is_err(),
            "needs deployment"
        );
        let deployments =
            entry(r#""baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"v""#).expect("valid");
        assert_eq!(deployments.upstream_model(deployments.primary()), "gpt-image-1");
        assert!(
            entry(r#""baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"v","deployment":"x""#)
                .is_err()
        );
    }

    #[test]
    fn each_entry_chooses_how_it_authenticates() {
        const BASE: &str = r#""baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"v""#;
        let key = target(&format!(r#"{BASE},"auth":{{"type":"api-key","secretId":"mine"}}"#)).expect("valid");
        assert_eq!(
            key.auth,
            UpstreamAuth::ApiKey {
                secret_id: "mine".into()
            }
        );
        let secret = target(&format!(
            r#"{BASE},"auth":{{"type":"entra","tenantId":"contoso.onmicrosoft.com","clientId":"c1","clientSecretSecretId":"cs"}}"#
        ))
        .expect("valid");
        let UpstreamAuth::Entra(entra) = secret.auth else {
            panic!("entra")
        };
        assert_eq!(
            entra.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(entra.scope, DEFAULT_SCOPE);
        assert_eq!(
            entra.credential,
            EntraCredential::ClientSecret { secret_id: "cs".into() }
        );
        let federated = target(&format!(
            r#"{BASE},"auth":{{"type":"entra","tenantId":"t","clientId":"c","federation":"aws","scope":"api://x/.default"}}"#
        ))
        .expect("valid");
        let UpstreamAuth::Entra(entra) = federated.auth else {
            panic!("entra")
        };
        assert_eq!(
            entra.credential,
            EntraCredential::AwsFederation {
                audience: DEFAULT_FEDERATION_AUDIENCE.into()
            }
        );
        assert_eq!(entra.scope, "api://x/.default");
        for bad in [
            r#""auth":{"type":"entra","tenantId":"t","clientId":"c"}"#,
            r#""auth":{"type":"entra","tenantId":"t","clientId":"c","federation":"gcp"}"#,
            r#""auth":{"type":"entra","tenantId":"t","clientId":"c","clientSecretSecretId":"s","federation":"aws"}"#,
            r#""auth":{"type":"entra","tenantId":"t/../x","clientId":"c","federation":"aws"}"#,
            r#""auth":{"type":"entra","tenantId":"t","clientId":"c","federation":"aws","secret":"x"}"#,
            r#""auth":{"type":"oauth"}"#,
            r#""auth":{"type":"api-key","secretId":"a"},"apiKeySecretId":"b""#,
        ] {
            assert!(entry(&format!("{BASE},{bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_authority_host_is_https_or_this_machine() {
        let models = r#"[{"name":"img","model":"gpt-image-1","baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"v","auth":{"type":"entra","tenantId":"t","clientId":"c","federation":"aws"}}]"#;
        let with = |host: &str| config(&[(IMAGE_MODELS, models), (AZURE_AUTHORITY_HOST, host)]);
        let local = with("http://127.0.0.1:7001").expect("loopback");
        let UpstreamAuth::Entra(entra) = &local.models[0].primary().auth else {
            panic!("entra")
        };
        assert_eq!(entra.token_url.as_str(), "http://127.0.0.1:7001/t/oauth2/v2.0/token");
        assert_eq!(
            with("http://login.example.com").expect_err("plain http").variable,
            AZURE_AUTHORITY_HOST
        );
    }

    #[test]
    fn duplicate_names_and_unknown_keys_are_rejected() {
        let dup = format!("[{0},{0}]", &ONE[1..ONE.len() - 1]);
        assert!(config(&[(IMAGE_MODELS, &dup), (AZURE_API_KEY_SECRET_ID, "k")]).is_err());
        let typo = ONE.replace("apiVersion", "api_version");
        assert!(config(&[(IMAGE_MODELS, &typo), (AZURE_API_KEY_SECRET_ID, "k")]).is_err());
    }

    #[test]
    fn retry_settings_have_defaults_and_bounds() {
        let base = [(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "k")];
        let cfg = config(&base).expect("valid");
        assert_eq!(
            cfg.retry,
            RetrySettings {
                max_wait: Duration::from_secs(60),
                max_retries: 2,
                attempt_timeout: None,
                pool_max_wait: Duration::from_secs(5),
            }
        );
        let cfg = config(&[base[0], base[1], (MAX_RETRIES, "0"), (UPSTREAM_TIMEOUT_SECONDS, "45")]).expect("valid");
        assert_eq!(
            cfg.retry,
            RetrySettings {
                max_retries: 0,
                attempt_timeout: Some(Duration::from_secs(45)),
                max_wait: Duration::from_secs(60),
                pool_max_wait: Duration::from_secs(5),
            }
        );
        for (var, bad) in [
            (MAX_RETRIES, "11"),
            (MAX_RETRIES, "-1"),
            (SECRET_CACHE_TTL_SECONDS, "18446744073709551615"),
            (SECRET_CACHE_TTL_SECONDS, "86401"),
            (MAX_RETRY_WAIT_SECONDS, "0"),
            (MAX_RETRY_WAIT_SECONDS, "901"),
            (HTTP_API_TIMEOUT_MS, "49"),
            (HTTP_API_TIMEOUT_MS, "30001"),
            (UPSTREAM_TIMEOUT_SECONDS, "0"),
            (UPSTREAM_TIMEOUT_SECONDS, "1.5"),
            (POOL_MAX_WAIT_SECONDS, "901"),
            (POOL_MAX_WAIT_SECONDS, "-1"),
        ] {
            assert_eq!(config(&[base[0], base[1], (var, bad)]).expect_err(bad).variable, var);
        }
    }

    #[test]
    fn entry_fallbacks_must_name_other_configured_models() {
        let two = |fallback: &str| {
            format!(
                r#"[{{"name":"a","model":"gpt-image-1","baseURL":"https://r.openai.azure.com/openai/deployments/a","apiVersion":"v","fallbacks":["{fallback}"]}},
                    {{"name":"b","model":"gpt-image-1","baseURL":"https://r.openai.azure.com/openai/deployments/b","apiVersion":"v"}}]"#
            )
        };
        let cfg = config(&[(IMAGE_MODELS, &two("b")), (AZURE_API_KEY_SECRET_ID, "k")]).expect("valid");
        assert_eq!(cfg.models[0].fallbacks, ["b"]);
        for bad in ["a", "c"] {
            assert!(
                config(&[(IMAGE_MODELS, &two(bad)), (AZURE_API_KEY_SECRET_ID, "k")]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn auth_is_client_keys_unless_none_is_said_explicitly() {
        let base = [(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "k")];
        assert_eq!(
            config(&base).expect("valid").auth,
            AuthMode::ClientKeys { secret_id: None }
        );
        let with_keys = config(&[base[0], base[1], (CLIENT_API_KEYS_SECRET_ID, "clients")]).expect("valid");
        assert_eq!(
            with_keys.auth,
            AuthMode::ClientKeys {
                secret_id: Some("clients".into())
            }
        );
        assert_eq!(
            config(&[base[0], base[1], (AUTH_MODE, "none")]).expect("valid").auth,
            AuthMode::None
        );
        let err = config(&[base[0], base[1], (AUTH_MODE, "off")]).expect_err("unknown mode");
        assert_eq!(err.variable, AUTH_MODE);
        let err =
            config(&[base[0], base[1], (AUTH_MODE, "none"), (CLIENT_API_KEYS_SECRET_ID, "c")]).expect_err("conflict");
        assert_eq!(err.variable, AUTH_MODE);
    }

    #[test]
    fn lookups_by_name_and_by_deployment() {
        let cfg = config(&[(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "k")]).expect("valid");
        assert_eq!(cfg.model_by_name(None).map(|m| m.name.as_str()), Some("azure-image"));
        assert!(cfg.model_by_name(Some("img1")).is_none());
        assert_eq!(
            cfg.model_by_deployment("img1").map(|m| m.name.as_str()),
            Some("azure-image")
        );
        assert_eq!(
            cfg.model_by_deployment("azure-image").map(|m| m.name.as_str()),
            Some("azure-image")
        );
        assert!(cfg.model_by_deployment("..").is_none());
    }

    fn with_pricing(model: &str, pricing: &str) -> Result<Config, ConfigError> {
        let models = format!(
            r#"[{{"name":"a","model":"{model}","baseURL":"https://r.openai.azure.com/openai/deployments/a","apiVersion":"v","pricing":{pricing}}}]"#
        );
        config(&[(IMAGE_MODELS, &models), (AZURE_API_KEY_SECRET_ID, "k")])
    }

    #[test]
    fn an_entry_without_pricing_gets_its_list_prices_or_none() {
        let cfg = config(&[(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "k")]).expect("valid");
        assert_eq!(cfg.models[0].prices, pricing::list_prices("gpt-image-1"));
        assert!(cfg.models[0].prices.is_some());
        let unknown = ONE.replace("gpt-image-1", "my-image-model");
        let cfg = config(&[(IMAGE_MODELS, &unknown), (AZURE_API_KEY_SECRET_ID, "k")]).expect("valid");
        assert_eq!(cfg.models[0].prices, None);
    }

    #[test]
    fn an_entry_overrides_its_token_prices() {
        let cfg = with_pricing(
            "gpt-image-2-2026-04-21",
            r#"{"textInputPerMTok":4,"imageInputPerMTok":6.5,"imageOutputPerMTok":0,"cachedTextInputPerMTok":1,"cachedImageInputPerMTok":2}"#,
        )
        .expect("valid");
        assert_eq!(
            cfg.models[0].prices,
            Some(Prices::PerToken {
                text_input: 4.0,
                image_input: 6.5,
                image_output: 0.0,
                cached_input: Some(CachedInput { text: 1.0, image: 2.0 }),
                sizing: pricing::TokenSizing::GptImage2,
            })
        );
        let cfg = with_pricing(
            "my-image-model",
            r#"{"textInputPerMTok":1,"imageInputPerMTok":2,"imageOutputPerMTok":3}"#,
        )
        .expect("valid");
        assert!(matches!(
            cfg.models[0].prices,
            Some(Prices::PerToken {
                sizing: pricing::TokenSizing::Unknown,
                cached_input: None,
                ..
            })
        ));
    }

    #[test]
    fn an_entry_overrides_its_per_image_prices() {
        let cfg = with_pricing(
            "dall-e-3",
            r#"{"perImage":{"Standard/1024x1024":0.03,"hd/1792x1024":0.1}}"#,
        )
        .expect("valid");
        let Some(Prices::PerImage(table)) = &cfg.models[0].prices else {
            panic!("per image: {:?}", cfg.models[0].prices);
        };
        assert_eq!(table.get(&("standard".into(), "1024x1024".into())), Some(&0.03));
        assert_eq!(table.get(&("hd".into(), "1792x1024".into())), Some(&0.1));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn bad_pricing_is_refused_naming_the_entry() {
        for bad in [
            r#"{"textInputPerMTok":5,"imageInputPerMTok":10}"#,
            r#"{"textInputPerMTok":5,"imageInputPerMTok":10,"imageOutputPerMTok":-1}"#,
            r#"{"textInputPerMTok":5,"imageInputPerMTok":10,"imageOutputPerMTok":40,"cachedTextInputPerMTok":1}"#,
            r#"{"textInputPerMTok":5,"imageInputPerMTok":10,"imageOutputPerMTok":40,"outputPerMTok":40}"#,
            r#"{"textInputPerMTok":5,"imageInputPerMTok":10,"imageOutputPerMTok":40,"perImage":{"hd/1024x1024":1}}"#,
            r#"{"textInputPerMTok":"5","imageInputPerMTok":10,"imageOutputPerMTok":40}"#,
            r#"{"perImage":{}}"#,
            r#"{"perImage":{"1024x1024":0.04}}"#,
            r#"{"perImage":{"/1024x1024":0.04}}"#,
            r#"{"perImage":{"hd/1024x1024/x":0.04}}"#,
            r#"{"perImage":{"hd/1024x1024":-0.04}}"#,
            r#"{"perImage":{"hd/1024x1024":0.04,"HD/1024x1024":0.05}}"#,
            r#"{}"#,
            r#"5"#,
        ] {
            let err = with_pricing("dall-e-3", bad).expect_err(bad);
            assert_eq!(err.variable, IMAGE_MODELS, "{bad}");
            assert!(err.problem.contains("entry 0: `a`: pricing: "), "{bad}: {err}");
        }
        // Numbers JSON cannot hold are refused by the parser, for the whole variable.
        assert!(with_pricing("dall-e-3", r#"{"perImage":{"hd/1024x1024":1e999}}"#).is_err());
    }

    fn pool(deployments: &str) -> Result<Config, ConfigError> {
        let models = format!(r#"[{{"name":"img","model":"gpt-image-1","deployments":{deployments}}}]"#);
        config(&[(IMAGE_MODELS, &models), (AZURE_API_KEY_SECRET_ID, "k")])
    }

    #[test]
    fn an_entry_lists_several_deployments_each_with_its_own_url_auth_and_weight() {
        let cfg = pool(
            r#"[{"baseURL":"https://east.openai.azure.com/openai/deployments/img","apiVersion":"2025-04-01-preview","weight":3,"name":"east"},
                {"baseURL":"https://west.openai.azure.com/openai/v1","deployment":"img-west","apiKeySecretId":"west-key"},
                {"baseURL":"http://127.0.0.1:4010/openai/deployments/img","apiVersion":"v","auth":{"type":"api-key","secretId":"local"}}]"#,
        )
        .expect("valid");
        let entry = &cfg.models[0];
        let targets = entry.targets();
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["east", "img-west", "img#2"],
            "the default name: the deployment's, never the host"
        );
        assert_eq!(targets.iter().map(|t| t.weight).collect::<Vec<_>>(), [3, 1, 1]);
        assert_eq!(
            targets[0].generations_url.as_str(),
            "https://east.openai.azure.com/openai/deployments/img/images/generations?api-version=2025-04-01-preview"
        );
        assert_eq!(targets[0].auth, UpstreamAuth::ApiKey { secret_id: "k".into() });
        assert_eq!(targets[1].surface, Surface::V1);
        assert_eq!(entry.upstream_model(&targets[1]), "img-west");
        assert_eq!(entry.upstream_model(&targets[0]), "gpt-image-1");
        assert_eq!(
            targets[1].auth,
            UpstreamAuth::ApiKey {
                secret_id: "west-key".into()
            }
        );
        assert_eq!(
            targets[2].auth,
            UpstreamAuth::ApiKey {
                secret_id: "local".into()
            }
        );
        assert_eq!(
            cfg.model_by_deployment("img-west").map(|m| m.name.as_str()),
            Some("img"),
            "the Azure route finds a pool by any of its deployments"
        );
        let one = config(&[(IMAGE_MODELS, ONE), (AZURE_API_KEY_SECRET_ID, "k")]).expect("valid");
        assert_eq!(one.models[0].targets().len(), 1, "a single baseURL is a pool of one");
        assert_eq!(one.models[0].primary().name, "img1");
        let twins = pool(
            r#"[{"baseURL":"https://a.openai.azure.com/openai/deployments/img","apiVersion":"v"},
                {"baseURL":"https://b.openai.azure.com/openai/deployments/img","apiVersion":"v"},
                {"baseURL":"https://c.openai.azure.com/openai/deployments/other","apiVersion":"v"}]"#,
        )
        .expect("valid");
        let names: Vec<&str> = twins.models[0].targets().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["img#0", "img#1", "other"],
            "numbered when two share a deployment name"
        );
    }

    #[test]
    fn a_bad_pool_is_refused_naming_the_entry_and_the_item() {
        const A: &str = r#"{"baseURL":"https://a.openai.azure.com/openai/deployments/img","apiVersion":"v"}"#;
        const B: &str = r#"{"baseURL":"https://b.openai.azure.com/openai/deployments/img","apiVersion":"v"}"#;
        for (deployments, expected) in [
            ("[]".to_owned(), "entry 0: `img`: `deployments` lists no deployment"),
            (
                format!("[{A},{}]", A.replace(r#""v""#, r#""2024-10-21""#)),
                "entry 0: `img`: deployments[1]: the same deployment as deployments[0]",
            ),
            (
                format!(r#"[{A},{}]"#, B.replace('}', r#","name":"img#0"}"#)),
                "entry 0: `img`: deployments[1]: the name `img#0` is used by deployments[0] too",
            ),
            (
                format!(r#"[{A},{}]"#, B.replace('}', r#","weight":0}"#)),
                "entry 0: `img`: deployments[1]: weight `0` is not a whole number from 1 to 1000",
            ),
            (
                format!(r#"[{}]"#, A.replace('}', r#","weight":1.5}"#)),
                "deployments[0]: weight `1.5` is not",
            ),
            (
                format!(r#"[{}]"#, A.replace('}', r#","weight":-2}"#)),
                "deployments[0]: weight `-2` is not",
            ),
            (
                format!(r#"[{A},{}]"#, B.replace('}', r#","weight":1001}"#)),
                "deployments[1]: weight `1001` is not",
            ),
            (
                format!(r#"[{A},{}]"#, B.replace(r#","apiVersion":"v""#, "")),
                "deployments[1]: apiVersion is required",
            ),
            (
                format!(r#"[{A},{}]"#, B.replace('}', r#","region":"west"}"#)),
                "deployments[1]: unknown field `region`",
            ),
            (
                format!(r#"[{A},{}]"#, B.replace('}', r#","name":"a b"}"#)),
                "deployments[1]: name `a b` must be",
            ),
        ] {
            let err = pool(&deployments).expect_err(&deployments);
            assert_eq!(err.variable, IMAGE_MODELS);
            assert!(err.problem.contains(expected), "{deployments}: {err}");
        }
        let both = format!(
            r#"[{{"name":"img","model":"gpt-image-1","baseURL":"https://a.openai.azure.com/openai/deployments/img","apiVersion":"v","deployments":[{B}]}}]"#
        );
        let err = config(&[(IMAGE_MODELS, &both), (AZURE_API_KEY_SECRET_ID, "k")]).expect_err("both");
        assert!(
            err.problem.contains("set `baseURL` or `deployments`, not both"),
            "{err}"
        );
        let shared = format!(r#"[{{"name":"img","model":"gpt-image-1","apiVersion":"v","deployments":[{B}]}}]"#);
        let err = config(&[(IMAGE_MODELS, &shared), (AZURE_API_KEY_SECRET_ID, "k")]).expect_err("per item");
        assert!(err.problem.contains("go in each item"), "{err}");
        let neither = r#"[{"name":"img","model":"gpt-image-1"}]"#;
        let err = config(&[(IMAGE_MODELS, neither), (AZURE_API_KEY_SECRET_ID, "k")]).expect_err("neither");
        assert!(err.problem.contains("needs `baseURL` or `deployments`"), "{err}");
        let keyless = format!(r#"[{{"name":"img","model":"gpt-image-1","deployments":[{B}]}}]"#);
        let err = config(&[(IMAGE_MODELS, &keyless)]).expect_err("no key");
        assert!(err.problem.contains("deployments[0]: has no apiKeySecretId"), "{err}");
    }
}
