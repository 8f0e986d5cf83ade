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

const DEFAULT_SECRET_TTL: Duration = Duration::from_secs(300);
const DEFAULT_MAX_RETRIES: u32 = 2;
const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_METRICS_NAMESPACE: &str = "AzureOpenAIImage";

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

/// One configured Azure image deployment.
#[derive(Clone)]
pub struct ModelEntry {
    /// What clients send as `model` (or as the Azure route's deployment id).
    pub name: String,
    /// The Azure model behind the deployment; decides validation.
    pub model: String,
    /// The deployment segment of `baseURL`.
    pub deployment: String,
    pub api_version: String,
    /// The full upstream URLs, built once here: nothing from a request goes into them.
    pub generations_url: Url,
    pub edits_url: Url,
    pub secret_id: String,
    pub spec: &'static ModelSpec,
    /// Configured names to try, in order, when this model fails with a retryable error.
    pub fallbacks: Vec<String>,
    /// The entry's `"pricing"`, else the model's list prices; `None`: its cost is unknown.
    pub prices: Option<Prices>,
}

/// The upstream URL names the Azure resource: kept out of anything printed.
impl fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelEntry")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("deployment", &self.deployment)
            .field("api_version", &self.api_version)
            .field("spec", &self.spec.family)
            .field("fallbacks", &self.fallbacks)
            .field("prices", &self.prices)
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
    #[serde(rename = "baseURL")]
    base_url: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    #[serde(rename = "apiKeySecretId", default)]
    api_key_secret_id: Option<String>,
    #[serde(default)]
    fallbacks: Vec<String>,
    /// Read as a value first, so that its problems name the entry.
    #[serde(default)]
    pricing: Option<serde_json::Value>,
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
        };
        let http_api_timeout = whole_number(&lookup, HTTP_API_TIMEOUT_MS, 50..=30_000)?.map(Duration::from_millis);
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
            let entry = ModelEntry::from_raw(raw, default_secret.as_deref())
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
        Ok(Self {
            models,
            secret_ttl,
            auth,
            retry,
            metrics_namespace,
            response_mode,
            http_api_timeout,
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
        self.models
            .iter()
            .find(|m| m.name == id)
            .or_else(|| self.models.iter().find(|m| m.deployment == id))
    }
}

/// An optional whole-number variable within `range`.
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
    fn from_raw(raw: RawEntry, default_secret: Option<&str>) -> Result<Self, String> {
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
        let api_version = raw.api_version.trim().to_owned();
        if api_version.is_empty()
            || !api_version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!(
                "`{name}`: apiVersion `{}` is not an Azure api-version",
                raw.api_version
            ));
        }
        let (generations_url, deployment) =
            operation_url(&raw.base_url, "generations", &api_version).map_err(|p| format!("`{name}`: baseURL {p}"))?;
        let (edits_url, _) =
            operation_url(&raw.base_url, "edits", &api_version).map_err(|p| format!("`{name}`: baseURL {p}"))?;
        let secret_id = raw
            .api_key_secret_id
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| default_secret.map(str::to_owned))
            .ok_or_else(|| format!("`{name}`: has no apiKeySecretId and {AZURE_API_KEY_SECRET_ID} is not set"))?;
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
            deployment,
            api_version,
            generations_url,
            edits_url,
            secret_id,
            spec,
            fallbacks: raw.fallbacks,
            prices,
        })
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// `{baseURL}/images/{operation}?api-version={v}`, after checking that
/// `baseURL` is an Azure deployment URL (`…/openai/deployments/<deployment>`).
fn operation_url(base_url: &str, operation: &str, api_version: &str) -> Result<(Url, String), String> {
    let url = Url::parse(base_url.trim()).map_err(|e| format!("is not a URL: {e}"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => {}
        // Plain HTTP only to this machine: a local Azure stand-in in tests and the run command.
        "http" if loopback => {}
        other => return Err(format!("must use https, not {other}")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a query, a fragment or credentials".into());
    }
    let segments: Vec<&str> = url.path().trim_end_matches('/').split('/').skip(1).collect();
    let deployment = match segments.as_slice() {
        [.., "openai", "deployments", deployment] if deployment.chars().all(is_id_char) && !deployment.is_empty() => {
            (*deployment).to_owned()
        }
        _ => return Err("must end in /openai/deployments/<deployment>".into()),
    };
    let mut target = url.clone();
    target.set_path(&format!("{}/images/{operation}", url.path().trim_end_matches('/')));
    target.query_pairs_mut().append_pair("api-version", api_version);
    Ok((target, deployment))
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
        let m = &cfg.models[0];
        assert_eq!(
            m.generations_url.as_str(),
            "https://res.openai.azure.com/openai/deployments/img1/images/generations?api-version=2025-04-01-preview"
        );
        assert_eq!(
            m.edits_url.as_str(),
            "https://res.openai.azure.com/openai/deployments/img1/images/edits?api-version=2025-04-01-preview"
        );
        assert_eq!(m.deployment, "img1");
        assert_eq!(m.secret_id, "azure-key");
        assert_eq!(cfg.secret_ttl, Duration::from_secs(300));
    }

    #[test]
    fn an_entry_secret_overrides_the_default() {
        let models = r#"[{"name":"a","model":"dall-e-3","baseURL":"https://r.openai.azure.com/openai/deployments/d3","apiVersion":"2024-10-21","apiKeySecretId":"other"}]"#;
        let cfg = config(&[(IMAGE_MODELS, models)]).expect("valid");
        assert_eq!(cfg.models[0].secret_id, "other");
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

    #[test]
    fn base_urls_must_be_azure_deployment_urls_over_https() {
        for bad in [
            "http://res.openai.azure.com/openai/deployments/d",
            "https://res.openai.azure.com/openai/d",
            "https://res.openai.azure.com/openai/deployments/d?x=1",
            "https://user:pw@res.openai.azure.com/openai/deployments/d",
            "not a url",
        ] {
            assert!(operation_url(bad, "generations", "2024-10-21").is_err(), "{bad}");
        }
        assert!(operation_url("http://127.0.0.1:8000/openai/deployments/d", "generations", "v").is_ok());
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
                attempt_timeout: None
            }
        );
        let cfg = config(&[base[0], base[1], (MAX_RETRIES, "0"), (UPSTREAM_TIMEOUT_SECONDS, "45")]).expect("valid");
        assert_eq!(
            cfg.retry,
            RetrySettings {
                max_retries: 0,
                attempt_timeout: Some(Duration::from_secs(45)),
                max_wait: Duration::from_secs(60),
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
}
