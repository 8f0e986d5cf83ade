//! Who may spend the Azure key: the connector's own client keys, kept as a
//! Secrets Manager secret and checked on every generation and model-list request.

use http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, printable};
use crate::secrets::SecretError;
use crate::spend::{Budget, Period, SpendLimits, micros};

/// The client keys in force: each kept only as its SHA-256.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientKeys(Vec<ClientKey>);

#[derive(PartialEq, Eq)]
struct ClientKey {
    sha256: [u8; 32],
    name: Option<String>,
    /// `None`: every model.
    models: Option<Vec<String>>,
    /// `None`: unlimited, and never counted.
    spend: Option<SpendLimits>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("spend", &self.spend)
            .finish_non_exhaustive()
    }
}

/// A caller whose key matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's `name`, for logs. Never the key.
    pub name: Option<String>,
    models: Option<Vec<String>>,
    /// The key's budget and rate limits; `None` for an unlimited key.
    pub spend: Option<SpendLimits>,
}

impl Caller {
    /// Anyone, when the connector does not check keys (`AUTH_MODE=none`).
    pub fn unchecked() -> Self {
        Self {
            name: None,
            models: None,
            spend: None,
        }
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// 403 for a model outside the key's list: names the model, not the key.
    pub fn check(&self, model: &str, param: &'static str) -> Result<(), ApiError> {
        if self.may_use(model) {
            return Ok(());
        }
        Err(ApiError::model_not_allowed(model, param))
    }
}

/// A key entry as the secret writes it. Unknown fields refuse the entry: a
/// typo such as `model` for `models` must not grant every model.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    budget: Option<BudgetEntry>,
    #[serde(default)]
    limits: Option<LimitsEntry>,
}

/// `"budget": {"usd": 50, "period": "day" | "month"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetEntry {
    usd: f64,
    period: Period,
}

/// `"limits": {"requestsPerMinute": 30, "imagesPerMinute": 10}`, either or both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitsEntry {
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    images_per_minute: Option<u32>,
}

impl ClientKeys {
    /// Reads the secret: a JSON list whose items are a key, `"sha256:<hex>"`,
    /// or `{"key" | "sha256": …, "name": …, "models": [...], "budget": {…},
    /// "limits": {…}}`, where every model is one of `configured`. A budget or
    /// limits need `counted` (a usage table to count in). A problem names the
    /// item's position, never its key.
    pub fn from_secret_value(value: &str, configured: &[String], counted: bool) -> Result<Self, SecretError> {
        const SHAPE: &str = "the client keys secret must be a JSON list of keys, \"sha256:<hex>\" strings or {\"key\"|\"sha256\", \"name\", \"models\", \"budget\", \"limits\"} objects";
        let items: Vec<serde_json::Value> =
            serde_json::from_str(value).map_err(|_| SecretError::Invalid(SHAPE.into()))?;
        let keys = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                client_key(item, configured, counted)
                    .map_err(|why| SecretError::Invalid(format!("item {i}: {why}").into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Keys of one name share one usage item: they must share its limits too.
        for (i, key) in keys.iter().enumerate() {
            let Some(name) = key.name.as_deref() else { continue };
            if let Some(j) = keys[..i]
                .iter()
                .position(|k| k.name.as_deref() == Some(name) && k.spend != key.spend)
            {
                return Err(SecretError::Invalid(
                    format!(
                        "item {i}: the name `{}` is also item {j}'s, with other budget or limits (keys of one name share one budget)",
                        printable(name)
                    )
                    .into(),
                ));
            }
        }
        Ok(Self(keys))
    }

    /// The caller presenting a key in `Authorization: Bearer` (OpenAI SDKs) or
    /// `api-key` (Azure SDKs). Every configured key is compared, in constant
    /// time over hashes, so timing tells nothing about which came close.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let presented = presented_key(headers).ok_or_else(|| {
            invalid_key(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or in the `api-key` header.",
            )
        })?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&ClientKey> = None;
        for key in &self.0 {
            if constant_time_eq(&key.sha256, &digest) && found.is_none() {
                found = Some(key);
            }
        }
        let key = found.ok_or_else(|| invalid_key("Incorrect API key provided."))?;
        Ok(Caller {
            name: key.name.clone(),
            models: key.models.clone(),
            spend: key.spend.clone(),
        })
    }
}

/// 401 before any key is known, for deployments without a client keys secret.
pub fn no_keys_configured() -> ApiError {
    invalid_key("Incorrect API key provided. This connector has no client keys configured (CLIENT_API_KEYS_SECRET_ID).")
}

fn invalid_key(message: &str) -> ApiError {
    ApiError::invalid_api_key(message)
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    bearer
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()).map(str::trim))
        .filter(|k| !k.is_empty())
}

/// One item of the secret.
fn client_key(item: serde_json::Value, configured: &[String], counted: bool) -> Result<ClientKey, String> {
    let entry = match item {
        serde_json::Value::String(text) => {
            return Ok(ClientKey {
                sha256: match text.strip_prefix("sha256:") {
                    Some(hex) => hex_digest(hex)?,
                    None => plain_digest(&text)?,
                },
                name: None,
                models: None,
                spend: None,
            });
        }
        object @ serde_json::Value::Object(_) => serde_json::from_value::<KeyEntry>(object).map_err(|e| {
            // serde's message names the unknown field and the expected ones, never a value.
            format!(
                "not a key entry ({})",
                e.to_string().split(" at line").next().unwrap_or_default()
            )
        })?,
        _ => return Err("not a key string or a key object".into()),
    };
    let sha256 = match (entry.key, entry.sha256) {
        (Some(key), None) => plain_digest(&key)?,
        (None, Some(hex)) => hex_digest(&hex)?,
        _ => return Err("needs exactly one of `key` and `sha256`".into()),
    };
    if let Some(unknown) = entry
        .models
        .iter()
        .flatten()
        .find(|m| !configured.iter().any(|c| c == *m))
    {
        return Err(format!(
            "`models` names `{}`, which is not a configured model",
            printable(unknown)
        ));
    }
    let spend = spend_limits(entry.name.as_deref(), entry.budget, entry.limits, counted)?;
    Ok(ClientKey {
        sha256,
        name: entry.name,
        models: entry.models,
        spend,
    })
}

/// An entry's budget and limits, checked: a limited key needs a name (its usage
/// item's key) and a usage table; amounts are positive.
fn spend_limits(
    name: Option<&str>,
    budget: Option<BudgetEntry>,
    limits: Option<LimitsEntry>,
    counted: bool,
) -> Result<Option<SpendLimits>, String> {
    if budget.is_none() && limits.is_none() {
        return Ok(None);
    }
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or("a key with `budget` or `limits` needs a `name`: its usage is counted under it")?;
    if !counted {
        return Err("has `budget` or `limits`, but the connector has no usage table (USAGE_TABLE)".into());
    }
    let budget = match budget {
        None => None,
        Some(b) if b.usd.is_finite() && b.usd > 0.0 && b.usd <= 1e9 => Some(Budget {
            micros: micros(b.usd),
            period: b.period,
        }),
        Some(_) => return Err("`budget.usd` must be a positive number of US dollars".into()),
    };
    let (requests_per_minute, images_per_minute) = match limits {
        None => (None, None),
        Some(l) => {
            if l.requests_per_minute.is_none() && l.images_per_minute.is_none() {
                return Err("`limits` names neither `requestsPerMinute` nor `imagesPerMinute`".into());
            }
            if l.requests_per_minute == Some(0) || l.images_per_minute == Some(0) {
                return Err("a limit of 0 per minute would refuse every request; remove the key instead".into());
            }
            (l.requests_per_minute, l.images_per_minute)
        }
    };
    Ok(Some(SpendLimits {
        name: name.to_owned(),
        budget,
        requests_per_minute,
        images_per_minute,
    }))
}

fn plain_digest(key: &str) -> Result<[u8; 32], String> {
    if key.trim().is_empty() {
        return Err("a client key is empty".into());
    }
    Ok(Sha256::digest(key.trim().as_bytes()).into())
}

fn hex_digest(hex: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut out).map_err(|_| "a client key sha256 is not 64 hex digits".to_owned())?;
    Ok(out)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().expect("header"));
        }
        map
    }

    fn configured() -> Vec<String> {
        vec!["azure-image".into(), "dall-e-3".into()]
    }

    fn sha(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    #[test]
    fn every_item_form_is_read() {
        let secret = format!(
            r#"["plain-key", "sha256:{}", {{"key": "team-key", "name": "team-a", "models": ["azure-image"]}}, {{"sha256": "{}", "name": "team-b"}}]"#,
            sha("hashed-key"),
            sha("team-b-key")
        );
        let keys = ClientKeys::from_secret_value(&secret, &configured(), false).expect("valid");
        let bearer = |k: &str| keys.authenticate(&headers(&[("authorization", &format!("Bearer {k}"))]));
        assert_eq!(bearer("plain-key").expect("plain").name, None);
        assert!(bearer("hashed-key").is_ok());
        let team_a = bearer("team-key").expect("team a");
        assert_eq!(team_a.name.as_deref(), Some("team-a"));
        assert!(team_a.may_use("azure-image") && !team_a.may_use("dall-e-3"));
        assert_eq!(bearer("team-b-key").expect("team b").name.as_deref(), Some("team-b"));
    }

    #[test]
    fn azure_sdks_send_the_key_as_api_key() {
        let keys = ClientKeys::from_secret_value(r#"["k1"]"#, &configured(), false).expect("valid");
        assert!(keys.authenticate(&headers(&[("api-key", "k1")])).is_ok());
    }

    #[test]
    fn missing_and_wrong_keys_are_401_invalid_api_key() {
        let keys = ClientKeys::from_secret_value(r#"["k1"]"#, &configured(), false).expect("valid");
        for h in [
            headers(&[]),
            headers(&[("authorization", "Bearer k2")]),
            headers(&[("authorization", "Basic k1")]),
            headers(&[("api-key", " ")]),
        ] {
            let err = keys.authenticate(&h).expect_err("refused");
            assert_eq!(err.status, StatusCode::UNAUTHORIZED);
            assert_eq!(err.code.as_deref(), Some("invalid_api_key"));
        }
    }

    #[test]
    fn a_restricted_key_gets_403_naming_the_model() {
        let keys = ClientKeys::from_secret_value(
            r#"[{"key":"k1","name":"team-a","models":["azure-image"]}]"#,
            &configured(),
            false,
        )
        .expect("valid");
        let caller = keys
            .authenticate(&headers(&[("authorization", "Bearer k1")]))
            .expect("known");
        let err = caller.check("dall-e-3", "model").expect_err("restricted");
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(err.message.contains("dall-e-3") && !err.message.contains("k1"));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for bad in [
            "",
            "k1",
            "{}",
            r#"[1]"#,
            r#"["sha256:zz"]"#,
            r#"[{"name":"x"}]"#,
            r#"[{"key":"a","sha256":"b"}]"#,
            r#"[""]"#,
        ] {
            assert!(
                ClientKeys::from_secret_value(bad, &configured(), false).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let keys = ClientKeys::from_secret_value(r#"[{"key":"very-secret","name":"n"}]"#, &configured(), false)
            .expect("valid");
        let shown = format!("{keys:?}");
        assert!(!shown.contains("very-secret") && !shown.contains(&sha("very-secret")[..16]));
    }

    #[test]
    fn a_typo_or_an_unknown_model_refuses_the_secret_naming_the_item_never_the_key() {
        for (secret, why) in [
            (r#"["ok-key", {"key": "typo-key", "model": ["azure-image"]}]"#, "model"),
            (r#"["ok-key", {"key": "typo-key", "models": ["gpt-4o"]}]"#, "gpt-4o"),
            (r#"["ok-key", {"key": "typo-key", "sha256": "00"}]"#, "exactly one"),
            (r#"["ok-key", 7]"#, "not a key"),
        ] {
            let err = ClientKeys::from_secret_value(secret, &configured(), false).expect_err(secret);
            let text = err.to_string();
            assert!(text.contains("item 1") && text.contains(why), "{text}");
            assert!(!text.contains("typo-key") && !text.contains("ok-key"), "{text}");
        }
    }

    #[test]
    fn a_key_with_a_budget_and_limits_carries_them_to_its_caller() {
        let keys = ClientKeys::from_secret_value(
            r#"["free", {"key": "k1", "name": "team-a", "budget": {"usd": 50, "period": "day"}, "limits": {"requestsPerMinute": 30, "imagesPerMinute": 10}},
                {"key": "k2", "name": "team-b", "limits": {"imagesPerMinute": 2}}]"#,
            &configured(),
            true,
        )
        .expect("valid");
        let caller = |k: &str| {
            keys.authenticate(&headers(&[("authorization", &format!("Bearer {k}"))]))
                .expect("known")
        };
        assert_eq!(caller("free").spend, None);
        assert_eq!(
            caller("k1").spend,
            Some(SpendLimits {
                name: "team-a".into(),
                budget: Some(Budget {
                    micros: 50_000_000,
                    period: Period::Day
                }),
                requests_per_minute: Some(30),
                images_per_minute: Some(10),
            })
        );
        let b = caller("k2").spend.expect("limited");
        assert_eq!(
            (b.budget, b.requests_per_minute, b.images_per_minute),
            (None, None, Some(2))
        );
    }

    #[test]
    fn budgets_and_limits_are_read_strictly() {
        for (entry, why) in [
            (
                r#"{"key": "k", "budget": {"usd": 5, "period": "day"}}"#,
                "needs a `name`",
            ),
            (
                r#"{"key": "k", "name": "a", "budget": {"usd": 5, "period": "week"}}"#,
                "week",
            ),
            (
                r#"{"key": "k", "name": "a", "budget": {"usd": 5, "period": "day", "hard": true}}"#,
                "hard",
            ),
            (r#"{"key": "k", "name": "a", "budget": {"usd": 5}}"#, "period"),
            (
                r#"{"key": "k", "name": "a", "budget": {"usd": -1, "period": "day"}}"#,
                "positive",
            ),
            (
                r#"{"key": "k", "name": "a", "budget": {"usd": "5", "period": "day"}}"#,
                "not a key entry",
            ),
            (
                r#"{"key": "k", "name": "a", "limits": {"requestsPerMinute": 5, "rpm": 1}}"#,
                "rpm",
            ),
            (
                r#"{"key": "k", "name": "a", "limits": {"requests_per_minute": 5}}"#,
                "requests_per_minute",
            ),
            (r#"{"key": "k", "name": "a", "limits": {}}"#, "neither"),
            (
                r#"{"key": "k", "name": "a", "limits": {"imagesPerMinute": 0}}"#,
                "0 per minute",
            ),
            (
                r#"{"key": "k", "name": "a", "limits": {"imagesPerMinute": -1}}"#,
                "not a key entry",
            ),
            (
                r#"{"key": "k", "name": "a", "budgets": {"usd": 5, "period": "day"}}"#,
                "budgets",
            ),
        ] {
            let secret = format!(r#"["ok-key", {entry}]"#);
            let err = ClientKeys::from_secret_value(&secret, &configured(), true).expect_err(entry);
            let text = err.to_string();
            assert!(text.contains("item 1") && text.contains(why), "{entry}: {text}");
        }
    }

    #[test]
    fn a_limited_key_needs_a_usage_table() {
        let secret = r#"[{"key": "k", "name": "a", "limits": {"requestsPerMinute": 5}}]"#;
        let err = ClientKeys::from_secret_value(secret, &configured(), false).expect_err("no table");
        assert!(err.to_string().contains("USAGE_TABLE"), "{err}");
        assert!(ClientKeys::from_secret_value(r#"["k"]"#, &configured(), false).is_ok());
    }

    #[test]
    fn keys_of_one_name_share_their_limits_or_are_refused() {
        let same = r#"[{"key": "old", "name": "a", "limits": {"requestsPerMinute": 5}}, {"key": "new", "name": "a", "limits": {"requestsPerMinute": 5}}]"#;
        assert!(ClientKeys::from_secret_value(same, &configured(), true).is_ok());
        let other = r#"[{"key": "old", "name": "a", "limits": {"requestsPerMinute": 5}}, {"key": "new", "name": "a", "limits": {"requestsPerMinute": 6}}]"#;
        let err = ClientKeys::from_secret_value(other, &configured(), true).expect_err("differs");
        assert!(
            err.to_string().contains("item 1") && err.to_string().contains("item 0"),
            "{err}"
        );
        let unlimited =
            r#"[{"key": "old", "name": "a"}, {"key": "new", "name": "a", "limits": {"requestsPerMinute": 6}}]"#;
        assert!(ClientKeys::from_secret_value(unlimited, &configured(), true).is_err());
    }
}
