//! What lives for the whole execution environment: the configuration and the
//! clients, built once and shared by every request.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::auth::{Caller, ClientKeys};
use crate::azure::{AzureClient, DEADLINE_MARGIN, Learnt, NoStreamMarks, Pools};
use crate::config::{AuthMode, Config};
use crate::credentials::{Credentials, WebIdentity};
use crate::error::ApiError;
use crate::image_store::ImageStore;
use crate::observe::MetricsSink;
use crate::secrets::{SecretCache, SecretSource, by_deadline};
use crate::spend::{Clock, SystemClock};
use crate::usage::{Spend, UsageStore};

pub struct App {
    config: Config,
    credentials: Credentials,
    client_keys: SecretCache<ClientKeys>,
    azure: AzureClient,
    metrics: MetricsSink,
    /// Where limited keys are counted.
    spend: Spend,
    /// Deployments that refused `stream`: their streams are made from one buffered call.
    no_stream: NoStreamMarks,
    /// The cooldowns and remaining capacity of the deployments of models that have several.
    pools: Pools,
    /// Unix time of start-up, the `created` of the model list.
    started: u64,
    /// Where `response_format: "url"` stores gpt-image output; `None` without `IMAGE_BUCKET`.
    image_store: Option<Arc<ImageStore>>,
}

impl App {
    /// `secrets` serves both the Azure keys and the client keys, each cached for the TTL.
    pub fn new(config: Config, secrets: Arc<dyn SecretSource>, azure: AzureClient) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let counted = config.spend.table.is_some();
        let metrics = MetricsSink::stdout(config.metrics_namespace.clone());
        Self {
            credentials: Credentials::new(secrets.clone(), config.secret_ttl, azure.http().clone()),
            client_keys: SecretCache::new(
                secrets,
                move |value| ClientKeys::from_secret_value(value, &models, counted),
                config.secret_ttl,
            ),
            spend: Spend::new(None, Arc::new(SystemClock), config.spend.on_error, metrics.clone()),
            metrics,
            no_stream: NoStreamMarks::default(),
            pools: Pools::new(&config.models),
            config,
            azure,
            started,
            image_store: None,
        }
    }

    /// Stores gpt-image output asked for as `url` in this bucket.
    pub fn with_image_store(mut self, store: Arc<ImageStore>) -> Self {
        self.image_store = Some(store);
        self
    }

    pub fn image_store(&self) -> Option<&Arc<ImageStore>> {
        self.image_store.as_ref()
    }

    /// Sends the EMF records somewhere else than stdout (tests).
    pub fn with_metrics(mut self, metrics: MetricsSink) -> Self {
        self.spend.set_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// Counts limited keys in `store` (with `USAGE_TABLE` set), on `clock`'s time.
    pub fn with_usage_store(mut self, store: Arc<dyn UsageStore>, clock: Arc<dyn Clock>) -> Self {
        self.spend.set_store(store, clock);
        self
    }

    pub fn spend(&self) -> &Spend {
        &self.spend
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn azure(&self) -> &AzureClient {
        &self.azure
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Where AWS web identity tokens come from, for entries federated into Entra ID.
    pub fn with_web_identity(mut self, source: Arc<dyn WebIdentity>) -> Self {
        self.credentials = self.credentials.with_web_identity(source);
        self
    }

    pub fn metrics(&self) -> &MetricsSink {
        &self.metrics
    }

    /// What the attempt loop learns and keeps between requests.
    pub fn learnt(&self) -> Learnt<'_> {
        Learnt {
            credentials: &self.credentials,
            no_stream: &self.no_stream,
            pools: &self.pools,
        }
    }

    /// Unix time of start-up.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// The caller behind the request's key, as `AUTH_MODE` says to check it;
    /// the keys' fetch bounded by the request's `deadline`.
    pub async fn authenticate(&self, headers: &HeaderMap, deadline: Option<Instant>) -> Result<Caller, ApiError> {
        match &self.config.auth {
            AuthMode::None => Ok(Caller::unchecked()),
            AuthMode::ClientKeys { secret_id: None } => Err(crate::auth::no_keys_configured()),
            AuthMode::ClientKeys { secret_id: Some(id) } => {
                let keys = by_deadline(deadline, DEADLINE_MARGIN, self.client_keys.get(id))
                    .await
                    .map_err(|e| e.to_api_error("its client keys"))?;
                keys.authenticate(headers)
            }
        }
    }
}
