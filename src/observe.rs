//! What an operator sees in CloudWatch: one JSON log line per request, and
//! one CloudWatch Embedded Metric Format record per image request.
//! Neither ever holds a prompt (its length only), a key or a secret value.

use std::io::Write;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::config::{ModelEntry, Target};
use crate::error::ErrorContext;
use crate::pricing::Prices;
use crate::reshape::Usage;

/// The JSON log format of `main`, writing to `writer`, filtered by `RUST_LOG`
/// (default `info`): a level, or `target=level` directives such as
/// `warn,azure_openai_image=debug`. A value that does not parse means `info`.
pub fn log_subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_writer(writer)
        .finish()
        .with(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
}

/// `RUST_LOG`'s directives. `Targets` rather than `EnvFilter`: the same
/// `target=level` syntax without span and field filters, and without a regex engine.
fn log_filter(directives: Option<&str>) -> Targets {
    directives
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

/// Where EMF records go: stdout in the function (CloudWatch Logs extracts the
/// metrics from the log stream), a buffer in tests.
#[derive(Clone)]
pub struct MetricsSink {
    namespace: String,
    write: Arc<dyn Fn(&str) + Send + Sync>,
}

impl MetricsSink {
    pub fn stdout(namespace: impl Into<String>) -> Self {
        Self::new(namespace, |line| {
            let mut out = std::io::stdout().lock();
            // A closed stdout loses a metric, never the request.
            let _ = writeln!(out, "{line}");
        })
    }

    pub fn new(namespace: impl Into<String>, write: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self {
            namespace: namespace.into(),
            write: Arc::new(write),
        }
    }

    /// One count of `metric`, without dimensions (such as `UsageStoreErrors`).
    pub fn count(&self, metric: &str) {
        let record = json!({
            metric: 1,
            "_aws": {
                "Timestamp": now_ms(),
                "CloudWatchMetrics": [{"Namespace": self.namespace, "Dimensions": [[]], "Metrics": [{"Name": metric, "Unit": "Count"}]}],
            },
        });
        (self.write)(&record.to_string());
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One upstream attempt, for the error message and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub model: String,
    /// The configured name of the deployment it went to, when its model has
    /// several (a pool); `None` for a model of one deployment.
    pub deployment: Option<String>,
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

/// What one request's log line says, filled as the request goes and written
/// once, when its answer is finished (for a streamed body, when it ends).
/// Never the prompt (its length only), never a key; client text only as
/// [`printable`] makes it.
#[derive(Debug)]
pub struct RequestLog {
    pub started: Instant,
    pub request_id: String,
    pub method: String,
    /// The route's name (`openai_generations`, `models`, …).
    pub route: &'static str,
    /// What the error body's `extra_fields.request_type` says.
    pub request_type: &'static str,
    /// Whether the request makes an EMF record (image operations do).
    pub metered: bool,
    /// The client key's `name`.
    pub client: Option<String>,
    /// What the client named (model or deployment id), as sent.
    pub model_requested: Option<String>,
    /// The configured model it selected, and the one that answered.
    pub model: Option<String>,
    pub served_model: Option<String>,
    pub azure_model: Option<String>,
    pub deployment: Option<String>,
    /// The configured name of the pool's deployment that answered (models of several only).
    pub pool_deployment: Option<String>,
    pub n: Option<u32>,
    pub size: Option<String>,
    pub quality: Option<String>,
    pub stream: Option<bool>,
    pub prompt_chars: Option<usize>,
    pub attempts: Vec<AttemptRecord>,
    pub images: Option<usize>,
    pub usage: Option<Usage>,
    /// The error code of an answer that failed after its status went out
    /// (an `error` event, a body that broke off).
    pub late_error: Option<String>,
    /// The prices of the model that answered, for the request's cost.
    pub prices: Option<Prices>,
}

impl RequestLog {
    pub fn new(request_id: &str, method: &str) -> Self {
        Self {
            started: Instant::now(),
            request_id: request_id.to_owned(),
            method: method.to_owned(),
            route: "",
            request_type: "unknown",
            metered: false,
            client: None,
            model_requested: None,
            model: None,
            served_model: None,
            azure_model: None,
            deployment: None,
            pool_deployment: None,
            n: None,
            size: None,
            quality: None,
            stream: None,
            prompt_chars: None,
            attempts: Vec::new(),
            images: None,
            usage: None,
            late_error: None,
            prices: None,
        }
    }

    /// The configured model the request selected.
    pub fn selected(&mut self, entry: &ModelEntry) {
        self.model = Some(entry.name.clone());
        self.set_azure(entry, entry.primary());
    }

    /// The configured model that answered, and its deployment that did.
    pub fn served_by(&mut self, entry: &ModelEntry, target: &Target) {
        self.served_model = Some(entry.name.clone());
        self.prices = entry.prices.clone();
        self.set_azure(entry, target);
        if entry.targets().len() > 1 {
            self.pool_deployment = Some(target.name.clone());
        }
    }

    /// What the request cost in US dollars, from what Azure reported (its
    /// usage, the images it returned); `None` when unknown: no price for the
    /// model, or a token-priced answer without usage. Never a guessed zero.
    pub fn cost_usd(&self) -> Option<f64> {
        let prices = self.prices.as_ref()?;
        let images = self.images?;
        crate::pricing::cost(
            prices,
            self.usage.as_ref(),
            images,
            self.size.as_deref(),
            self.quality.as_deref(),
        )
    }

    fn set_azure(&mut self, entry: &ModelEntry, target: &Target) {
        self.azure_model = Some(entry.model.clone());
        self.deployment = Some(target.deployment.clone());
    }

    /// What the error body says about this request.
    pub fn error_context(&self) -> ErrorContext<'_> {
        ErrorContext {
            model_requested: self.model_requested.as_deref(),
            request_type: self.request_type,
        }
    }

    /// Azure's request id of the last attempt that had one.
    pub fn upstream_request_id(&self) -> Option<&str> {
        self.attempts
            .iter()
            .rev()
            .find_map(|a| a.upstream_request_id.as_deref())
    }

    /// Milliseconds spent waiting on Azure, over every attempt.
    pub fn upstream_ms(&self) -> Option<u64> {
        (!self.attempts.is_empty()).then(|| self.attempts.iter().map(|a| a.ms).sum())
    }

    fn fallback_used(&self) -> bool {
        self.served_model.is_some() && self.served_model != self.model
    }

    /// The log line and the EMF record, once: the log is consumed.
    pub fn write(self, metrics: &MetricsSink, status: u16, error_code: Option<&str>, bytes_out: usize) {
        let error_code = error_code.or(self.late_error.as_deref());
        let total_ms = self.started.elapsed().as_millis() as u64;
        self.log(status, error_code, bytes_out, total_ms);
        let now = now_ms();
        if let Some(line) = self.emf(&metrics.namespace, now, status, error_code, total_ms) {
            (metrics.write)(&line);
        }
        for line in self.deployment_emf(&metrics.namespace, now) {
            (metrics.write)(&line);
        }
    }

    /// One EMF record per deployment of a pool this request's attempts went
    /// to, by `Model` and `Deployment` (configured names only): its attempts
    /// (`Requests`), its 429s (`Throttles`), its other failures (`Errors`),
    /// and the time spent on it (`UpstreamLatency`).
    fn deployment_emf(&self, namespace: &str, timestamp_ms: u64) -> Vec<String> {
        if !self.metered {
            return Vec::new();
        }
        let mut per: Vec<(&str, &str, [u64; 4])> = Vec::new();
        for attempt in &self.attempts {
            let Some(deployment) = attempt.deployment.as_deref() else {
                continue;
            };
            let i = match per.iter().position(|(m, d, _)| *m == attempt.model && *d == deployment) {
                Some(i) => i,
                None => {
                    per.push((&attempt.model, deployment, [0; 4]));
                    per.len() - 1
                }
            };
            let counts = &mut per[i].2;
            let throttled = attempt.status == Some(429);
            // A refused key or stream is asked again at once: neither is the deployment failing.
            let failed = !throttled && !matches!(attempt.outcome.as_str(), "ok" | "key_rejected" | "stream_refused");
            counts[0] += 1;
            counts[1] += u64::from(throttled);
            counts[2] += u64::from(failed);
            counts[3] += attempt.ms;
        }
        let metrics = json!([
            {"Name": "Requests", "Unit": "Count"},
            {"Name": "Throttles", "Unit": "Count"},
            {"Name": "Errors", "Unit": "Count"},
            {"Name": "UpstreamLatency", "Unit": "Milliseconds"},
        ]);
        per.into_iter()
            .filter_map(|(model, deployment, [requests, throttles, errors, ms])| {
                let record = json!({
                    "Model": model,
                    "Deployment": deployment,
                    "RequestId": self.request_id,
                    "Requests": requests,
                    "Throttles": throttles,
                    "Errors": errors,
                    "UpstreamLatency": ms,
                    "_aws": {
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": [["Model", "Deployment"]],
                            "Metrics": metrics,
                        }],
                    },
                });
                serde_json::to_string(&record).ok()
            })
            .collect()
    }

    /// The one log line, at info.
    fn log(&self, status: u16, error_code: Option<&str>, bytes_out: usize, total_ms: u64) {
        let upstream: Vec<String> = self
            .attempts
            .iter()
            .map(|a| {
                let status = a.status.map_or_else(|| "none".to_owned(), |s| s.to_string());
                match &a.deployment {
                    Some(deployment) => format!("{}@{deployment}:{status}:{}:{}ms", a.model, a.outcome, a.ms),
                    None => format!("{}:{status}:{}:{}ms", a.model, a.outcome, a.ms),
                }
            })
            .collect();
        let usage = self.usage.unwrap_or_default();
        tracing::info!(
            request_id = self.request_id,
            method = self.method,
            route = self.route,
            client = self.client,
            model_requested = self.model_requested,
            model = self.model,
            served_model = self.served_model,
            azure_model = self.azure_model,
            deployment = self.deployment,
            pool_deployment = self.pool_deployment,
            fallback_used = self.fallback_used(),
            n = self.n,
            size = self.size,
            quality = self.quality,
            stream = self.stream,
            prompt_chars = self.prompt_chars,
            status,
            error_code,
            upstream_attempts = self.attempts.len(),
            upstream = ?upstream,
            upstream_waits_ms = ?self.attempts.iter().map(|a| a.waited_ms).collect::<Vec<_>>(),
            upstream_ms = self.upstream_ms(),
            total_ms,
            bytes_out,
            images = self.images,
            input_tokens = self.usage.map(|_| usage.input_tokens),
            output_tokens = self.usage.map(|_| usage.output_tokens),
            image_tokens = self.usage.map(|_| usage.input_tokens_details.image_tokens),
            cost_usd = self.cost_usd(),
            cost_unknown = (self.metered && self.images.is_some_and(|n| n > 0) && self.cost_usd().is_none()).then_some(true),
            "request"
        );
    }

    /// The EMF record of an image operation; `None` for other routes.
    /// `Model` is always a configured name (or `unknown`), never client text,
    /// so a caller cannot create metric dimensions.
    fn emf(
        &self,
        namespace: &str,
        timestamp_ms: u64,
        status: u16,
        error_code: Option<&str>,
        total_ms: u64,
    ) -> Option<String> {
        if !self.metered {
            return None;
        }
        let model = self
            .served_model
            .as_deref()
            .or(self.model.as_deref())
            .unwrap_or("unknown");
        let mut values = Map::new();
        let mut metrics = Vec::new();
        let mut metric = |name: &str, unit: &str, value: u64| {
            metrics.push(json!({"Name": name, "Unit": unit}));
            values.insert(name.to_owned(), json!(value));
        };
        metric("Requests", "Count", 1);
        metric("TotalLatency", "Milliseconds", total_ms);
        if let Some(ms) = self.upstream_ms() {
            metric("UpstreamLatency", "Milliseconds", ms);
        }
        if let Some(images) = self.images {
            metric("Images", "Count", images as u64);
        }
        if let Some(usage) = self.usage {
            metric("InputTokens", "Count", usage.input_tokens);
            metric("OutputTokens", "Count", usage.output_tokens);
        }
        let mut directives = vec![json!({"Namespace": namespace, "Dimensions": [["Model"]], "Metrics": metrics})];
        if let Some(cost) = self.cost_usd() {
            values.insert("CostUSD".into(), json!(cost));
            let cost_metric = json!([{"Name": "CostUSD", "Unit": "None"}]);
            directives.push(json!({"Namespace": namespace, "Dimensions": [["Model"]], "Metrics": cost_metric}));
            // Client names come from the client keys secret: configured, never caller text.
            if let Some(client) = &self.client {
                values.insert("Client".into(), json!(client));
                directives.push(json!({"Namespace": namespace, "Dimensions": [["Client"]], "Metrics": cost_metric}));
            }
        }
        // A 200 fails too when its body breaks off after the start, or a stream ends in an error event.
        if status >= 400 || error_code.is_some() {
            let code = error_code.filter(|c| !c.is_empty()).unwrap_or("unknown");
            directives.push(json!({
                "Namespace": namespace,
                "Dimensions": [["Model", "ErrorCode"]],
                "Metrics": [{"Name": "Errors", "Unit": "Count"}],
            }));
            values.insert("Errors".into(), json!(1));
            values.insert("ErrorCode".into(), json!(code));
        }
        values.insert("Model".into(), json!(model));
        values.insert("RequestId".into(), json!(self.request_id));
        values.insert("Status".into(), json!(status));
        values.insert(
            "_aws".into(),
            json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
        );
        serde_json::to_string(&Value::Object(values)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_is_a_level_or_target_directives_and_anything_else_means_info() {
        use tracing::Level;
        let warn = log_filter(Some("warn"));
        assert!(warn.would_enable("azure_openai_image", &Level::WARN));
        assert!(!warn.would_enable("azure_openai_image", &Level::INFO));
        let targeted = log_filter(Some("warn,azure_openai_image=debug"));
        assert!(targeted.would_enable("azure_openai_image::azure", &Level::DEBUG));
        assert!(!targeted.would_enable("hyper", &Level::INFO));
        for unusable in [None, Some(""), Some("  "), Some("hyper=loud")] {
            let info = log_filter(unusable);
            assert!(info.would_enable("azure_openai_image", &Level::INFO), "{unusable:?}");
            assert!(!info.would_enable("azure_openai_image", &Level::DEBUG), "{unusable:?}");
        }
    }

    fn attempt(status: u16, outcome: &str, ms: u64) -> AttemptRecord {
        AttemptRecord {
            model: "azure-image".into(),
            deployment: None,
            status: Some(status),
            outcome: outcome.into(),
            ms,
            waited_ms: 0,
            upstream_request_id: None,
        }
    }

    fn log(route: &'static str) -> RequestLog {
        let mut log = RequestLog::new("r1", "POST");
        log.route = route;
        log.metered = route.ends_with("generations");
        log
    }

    fn emf(log: &RequestLog, status: u16, error_code: Option<&str>, total_ms: u64) -> Value {
        let line = log
            .emf("AzureOpenAIImage", 1, status, error_code, total_ms)
            .expect("an image request");
        serde_json::from_str(&line).expect("EMF is JSON")
    }

    #[test]
    fn a_success_records_requests_latency_images_and_tokens_by_model() {
        let mut log = log("openai_generations");
        log.model = Some("azure-image".into());
        log.served_model = Some("azure-image".into());
        log.attempts = vec![attempt(200, "ok", 40)];
        log.images = Some(2);
        log.usage = Some(Usage {
            input_tokens: 50,
            output_tokens: 100,
            total_tokens: 150,
            ..Usage::default()
        });
        let emf = emf(&log, 200, None, 45);
        assert_eq!(emf["Model"], "azure-image");
        assert_eq!((emf["Requests"].as_u64(), emf["Images"].as_u64()), (Some(1), Some(2)));
        assert_eq!(
            (emf["InputTokens"].as_u64(), emf["OutputTokens"].as_u64()),
            (Some(50), Some(100))
        );
        assert_eq!(
            (emf["UpstreamLatency"].as_u64(), emf["TotalLatency"].as_u64()),
            (Some(40), Some(45))
        );
        assert!(emf.get("Errors").is_none());
    }

    #[test]
    fn an_error_records_errors_by_model_and_code() {
        let mut log = log("azure_generations");
        log.model_requested = Some("client-text".into());
        let emf = emf(&log, 404, Some("model_not_found"), 1);
        assert_eq!(emf["Errors"], 1);
        assert_eq!(emf["ErrorCode"], "model_not_found");
        assert_eq!(emf["Model"], "unknown", "client text never becomes a dimension");
        assert!(emf.get("UpstreamLatency").is_none());
    }

    #[test]
    fn only_image_operations_make_metrics() {
        for route in ["models", "health", "not_found"] {
            assert!(log(route).emf("AzureOpenAIImage", 1, 200, None, 1).is_none());
        }
    }

    #[test]
    fn cost_goes_to_the_log_and_a_metric_by_model_and_client_and_unknown_is_never_zero() {
        let mut log = log("openai_generations");
        log.model = Some("azure-image".into());
        log.served_model = Some("azure-image".into());
        log.client = Some("team-a".into());
        log.images = Some(1);
        log.usage = Some(Usage {
            input_tokens: 50,
            output_tokens: 1000,
            total_tokens: 1050,
            input_tokens_details: crate::reshape::UsageDetails {
                text_tokens: 50,
                image_tokens: 0,
            },
        });
        log.prices = crate::pricing::list_prices("gpt-image-1");
        let cost = log.cost_usd().expect("priced");
        // $5 per 1M text tokens in, $40 per 1M image tokens out.
        assert!((cost - (50.0 * 5.0 + 1000.0 * 40.0) / 1e6).abs() < 1e-9, "{cost}");
        let record = emf(&log, 200, None, 10);
        assert_eq!(record["CostUSD"].as_f64(), Some(cost));
        assert_eq!(record["Client"], "team-a");
        let directives = record["_aws"]["CloudWatchMetrics"].as_array().expect("directives");
        assert!(directives.iter().any(|d| d["Dimensions"] == json!([["Client"]])));

        log.prices = None;
        assert_eq!(log.cost_usd(), None, "no price: unknown");
        assert!(emf(&log, 200, None, 10).get("CostUSD").is_none());
    }

    #[test]
    fn attempts_on_a_pool_make_a_record_per_deployment_and_name_it_in_the_log() {
        let mut log = log("openai_generations");
        let at = |deployment: &str, status: u16, outcome: &str, ms: u64| AttemptRecord {
            deployment: Some(deployment.into()),
            ..attempt(status, outcome, ms)
        };
        log.attempts = vec![
            at("east", 429, "rate_limit_exceeded", 5),
            at("west", 503, "upstream_error", 7),
            at("east", 429, "rate_limit_exceeded", 3),
            at("west", 200, "ok", 40),
            attempt(200, "ok", 9),
        ];
        let records: Vec<Value> = log
            .deployment_emf("AzureOpenAIImage", 1)
            .iter()
            .map(|l| serde_json::from_str(l).expect("EMF is JSON"))
            .collect();
        assert_eq!(records.len(), 2, "attempts without a deployment make none");
        let figures = |r: &Value| {
            (
                r["Deployment"].as_str().map(str::to_owned),
                r["Requests"].as_u64(),
                r["Throttles"].as_u64(),
                r["Errors"].as_u64(),
                r["UpstreamLatency"].as_u64(),
            )
        };
        assert_eq!(
            figures(&records[0]),
            (Some("east".into()), Some(2), Some(2), Some(0), Some(8))
        );
        assert_eq!(
            figures(&records[1]),
            (Some("west".into()), Some(2), Some(0), Some(1), Some(47))
        );
        assert_eq!(records[0]["Model"], "azure-image");
        assert_eq!(
            records[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Model", "Deployment"]])
        );
        log.metered = false;
        assert!(log.deployment_emf("AzureOpenAIImage", 1).is_empty());
    }
}
