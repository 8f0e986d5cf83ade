//! What an operator sees in CloudWatch: one JSON log line per request, and
//! one CloudWatch Embedded Metric Format record per generation request.
//! Neither ever holds a prompt (its length only), a key or a secret value.

use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::azure::AttemptRecord;
use crate::response::Usage;

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

    pub fn emit(&self, record: &RequestRecord<'_>) {
        if let Some(line) = record.emf(&self.namespace, now_ms()) {
            (self.write)(&line);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything one request's log line says.
#[derive(Debug, Default)]
pub struct RequestRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    /// The client key's `name`.
    pub client: Option<&'a str>,
    /// What the client named (model or deployment id), as sent.
    pub model_requested: Option<&'a str>,
    /// The configured model it selected.
    pub model: Option<&'a str>,
    pub served_model: Option<&'a str>,
    pub azure_model: Option<&'a str>,
    pub deployment: Option<&'a str>,
    pub fallback_used: bool,
    pub n: Option<u32>,
    pub size: Option<&'a str>,
    pub quality: Option<&'a str>,
    pub stream: Option<bool>,
    pub prompt_chars: Option<usize>,
    pub status: u16,
    pub error_code: Option<&'a str>,
    pub attempts: &'a [AttemptRecord],
    pub total_ms: u64,
    pub bytes_out: usize,
    pub images: Option<usize>,
    pub usage: Option<Usage>,
}

impl RequestRecord<'_> {
    /// Milliseconds spent waiting on Azure, over every attempt.
    pub fn upstream_ms(&self) -> Option<u64> {
        (!self.attempts.is_empty()).then(|| self.attempts.iter().map(|a| a.ms).sum())
    }

    /// The one log line, at info.
    pub fn log(&self) {
        let upstream: Vec<String> = self
            .attempts
            .iter()
            .map(|a| {
                let status = a.status.map_or_else(|| "none".to_owned(), |s| s.to_string());
                format!("{}:{status}:{}:{}ms", a.model, a.outcome, a.ms)
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
            fallback_used = self.fallback_used,
            n = self.n,
            size = self.size,
            quality = self.quality,
            stream = self.stream,
            prompt_chars = self.prompt_chars,
            status = self.status,
            error_code = self.error_code,
            upstream_attempts = self.attempts.len(),
            upstream = ?upstream,
            upstream_ms = self.upstream_ms(),
            total_ms = self.total_ms,
            bytes_out = self.bytes_out,
            images = self.images,
            input_tokens = self.usage.map(|_| usage.input_tokens),
            output_tokens = self.usage.map(|_| usage.output_tokens),
            image_tokens = self.usage.map(|_| usage.input_tokens_details.image_tokens),
            "request"
        );
    }

    /// The EMF record of a generation request; `None` for other routes.
    /// `Model` is always a configured name (or `unknown`), never client text,
    /// so a caller cannot create metric dimensions.
    pub fn emf(&self, namespace: &str, timestamp_ms: u64) -> Option<String> {
        if !matches!(self.route, "openai_generations" | "azure_generations") {
            return None;
        }
        let model = self.served_model.or(self.model).unwrap_or("unknown");
        let mut values = Map::new();
        let mut metrics = Vec::new();
        let mut metric = |name: &str, unit: &str, value: u64| {
            metrics.push(json!({"Name": name, "Unit": unit}));
            values.insert(name.to_owned(), json!(value));
        };
        metric("Requests", "Count", 1);
        metric("TotalLatency", "Milliseconds", self.total_ms);
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
        // A 200 fails too when its body breaks off after the start, or a stream ends in an error event.
        if self.status >= 400 || self.error_code.is_some() {
            let code = self.error_code.filter(|c| !c.is_empty()).unwrap_or("unknown");
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
        values.insert("Status".into(), json!(self.status));
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
            status: Some(status),
            outcome: outcome.into(),
            ms,
            waited_ms: 0,
            upstream_request_id: None,
        }
    }

    fn emf(record: &RequestRecord<'_>) -> Value {
        serde_json::from_str(&record.emf("AzureOpenAIImage", 1).expect("a generation")).expect("EMF is JSON")
    }

    #[test]
    fn a_success_records_requests_latency_images_and_tokens_by_model() {
        let attempts = [attempt(200, "ok", 40)];
        let record = RequestRecord {
            request_id: "r1",
            route: "openai_generations",
            model: Some("azure-image"),
            served_model: Some("azure-image"),
            status: 200,
            attempts: &attempts,
            total_ms: 45,
            images: Some(2),
            usage: Some(Usage {
                input_tokens: 50,
                output_tokens: 100,
                total_tokens: 150,
                ..Usage::default()
            }),
            ..RequestRecord::default()
        };
        let emf = emf(&record);
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
        let record = RequestRecord {
            route: "azure_generations",
            status: 404,
            error_code: Some("model_not_found"),
            model_requested: Some("client-text"),
            ..RequestRecord::default()
        };
        let emf = emf(&record);
        assert_eq!(emf["Errors"], 1);
        assert_eq!(emf["ErrorCode"], "model_not_found");
        assert_eq!(emf["Model"], "unknown", "client text never becomes a dimension");
        assert!(emf.get("UpstreamLatency").is_none());
    }

    #[test]
    fn only_generations_make_metrics() {
        for route in ["models", "health", "not_found"] {
            let record = RequestRecord {
                route,
                status: 200,
                ..RequestRecord::default()
            };
            assert!(record.emf("AzureOpenAIImage", 1).is_none());
        }
    }
}
