//! Where limited keys are counted: the usage store (DynamoDB, or an in-memory
//! fake for tests) behind [`UsageStore`], the reservation before Azure is
//! called, and the settlement after. The arithmetic is `spend.rs`.
//!
//! One item per key and period (`pk = key#<name>`, `sk = period#<start>`)
//! holds the period's money and counts and the current minute's window, so a
//! reservation is one conditional `UpdateItem`: the budget and both rate
//! limits checked and counted in one round trip, atomically for every
//! execution environment. Only the first request of a minute in an execution
//! environment that has not seen the minute may take a second one (its
//! condition tells a new minute from a full one).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::azure::DEADLINE_MARGIN;
use crate::config::OnUsageStoreError;
use crate::error::ApiError;
use crate::observe::MetricsSink;
use crate::spend::{Ask, Clock, Figures, ItemKey, Next, Refusal, Settlement, SpendLimits, Window, micros};

/// The store could not be read or written (unreachable, throttling, refused).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the usage table is unavailable: {0}")]
pub struct StoreError(pub String);

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What a conditional reservation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Counted: the item as it is now.
    Granted(Figures),
    /// The condition failed: the item as it was (`None`: no item).
    Conflict(Option<Figures>),
}

/// The usage items' store.
pub trait UsageStore: Send + Sync {
    /// One conditional update: `ask` counted in `window` if the item meets its conditions.
    fn reserve<'a>(&'a self, key: &'a ItemKey, ask: &'a Ask, window: Window) -> StoreFuture<'a, Reserved>;
    /// The actual cost in, the reservation out; unconditional.
    fn settle<'a>(&'a self, key: &'a ItemKey, settlement: Settlement) -> StoreFuture<'a, ()>;
    /// The item as it is (a strongly consistent read).
    fn read<'a>(&'a self, key: &'a ItemKey) -> StoreFuture<'a, Option<Figures>>;
}

/// Spend control as the app holds it: the store, the clock, what to do when the
/// store fails, and the settlements still running.
pub struct Spend {
    store: Option<Arc<dyn UsageStore>>,
    clock: Arc<dyn Clock>,
    on_error: OnUsageStoreError,
    metrics: MetricsSink,
    /// The last window each key was seen in here: a new minute goes straight to
    /// the reservation that starts it.
    windows: Mutex<HashMap<String, u64>>,
    settles: Settles,
}

/// How a limited key's request was counted, and what its answer carries.
#[derive(Default)]
pub struct Tab {
    /// `x-ratelimit-*`, for every answer to the key.
    pub headers: Vec<(&'static str, String)>,
    reservation: Option<Reservation>,
}

/// A reservation held until the request is settled.
struct Reservation {
    store: Arc<dyn UsageStore>,
    settles: Settles,
    metrics: MetricsSink,
    key: ItemKey,
    reserved: i64,
}

/// What the request turned out to be, for its settlement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// The cost from Azure's answer, when it is known.
    pub cost_usd: Option<f64>,
    /// Whether Azure answered with a success (and so billed).
    pub billed: bool,
    pub images: usize,
}

impl Tab {
    /// Settles off the client's path: the actual cost in, the reservation out.
    /// A success whose cost is unknown keeps the reservation as spent (never
    /// too little); a request Azure did not bill releases it.
    pub fn settle(&mut self, outcome: Outcome) {
        let Some(r) = self.reservation.take() else { return };
        let spent = match outcome.cost_usd {
            Some(usd) => micros(usd),
            None if outcome.billed => r.reserved,
            None => 0,
        };
        let settlement = Settlement {
            spent,
            released: r.reserved,
            images: outcome.images as u64,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a reservation could not be settled: no runtime");
            return;
        };
        let Reservation {
            store,
            settles,
            metrics,
            key,
            ..
        } = r;
        let task = runtime.spawn(async move {
            if let Err(err) = store.settle(&key, settlement).await {
                // The reservation stays counted: the key may be refused early, never overspend.
                tracing::warn!(error = %err, "a request's spend could not be settled");
                metrics.count("UsageStoreErrors");
            }
        });
        settles.push(task);
    }
}

impl Drop for Tab {
    /// A request dropped before its answer was finished: Azure's bill is unknown, so the reservation stays.
    fn drop(&mut self) {
        self.settle(Outcome {
            cost_usd: None,
            billed: true,
            images: 0,
        });
    }
}

/// Settlements still running: the Lambda loop waits for them before it asks
/// for the next invocation, when the execution environment may be frozen.
#[derive(Clone, Default)]
pub struct Settles(Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl Settles {
    fn push(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Waits for every settlement started so far.
    pub async fn wait(&self) {
        let tasks = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// A refusal, or a store failure under `deny`, with the headers the answer still carries.
pub struct Refused {
    pub error: ApiError,
    pub headers: Vec<(&'static str, String)>,
}

impl Spend {
    pub fn new(
        store: Option<Arc<dyn UsageStore>>,
        clock: Arc<dyn Clock>,
        on_error: OnUsageStoreError,
        metrics: MetricsSink,
    ) -> Self {
        Self {
            store,
            clock,
            on_error,
            metrics,
            windows: Mutex::default(),
            settles: Settles::default(),
        }
    }

    pub fn set_store(&mut self, store: Arc<dyn UsageStore>, clock: Arc<dyn Clock>) {
        self.store = Some(store);
        self.clock = clock;
    }

    pub fn set_metrics(&mut self, metrics: MetricsSink) {
        self.metrics = metrics;
    }

    pub fn settles(&self) -> &Settles {
        &self.settles
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Reserves a request of `images` images costing at most `cost_usd` for a
    /// limited key. `cost_usd` is `None` when it cannot be bounded: a key with a
    /// budget is then refused, since the budget could not hold.
    /// [`Spend::reserve`] bounded by the request's `deadline` (less the time kept to
    /// answer): a store that does not answer in time is a store failure. A
    /// reservation cut off after DynamoDB applied it stays counted: early
    /// refusals at worst, never overspending.
    pub async fn reserve_by(
        &self,
        deadline: Option<Instant>,
        limits: &SpendLimits,
        cost_usd: Option<f64>,
        images: u64,
    ) -> Result<Tab, Refused> {
        let Some(deadline) = deadline else {
            return self.reserve(limits, cost_usd, images).await;
        };
        let until = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
        match tokio::time::timeout_at(until.into(), self.reserve(limits, cost_usd, images)).await {
            Ok(reserved) => reserved,
            Err(_) => self.store_failed(limits, StoreError("no answer before the request's deadline".into())),
        }
    }

    pub async fn reserve(&self, limits: &SpendLimits, cost_usd: Option<f64>, images: u64) -> Result<Tab, Refused> {
        let now_ms = self.clock.now_ms();
        let now = now_ms / 1000;
        let cost = match (limits.budget, cost_usd) {
            (Some(_), None) => {
                return Err(Refused {
                    error: ApiError::insufficient_quota(
                        "This key has a budget, and the cost of this request cannot be bounded: its model has no price (or the size or quality has none). The operator can give the model's entry a \"pricing\".".into(),
                    ),
                    headers: Vec::new(),
                });
            }
            (_, usd) => usd.map_or(0, micros),
        };
        let unavailable = |err: StoreError| self.store_failed(limits, err);
        let Some(store) = self.store.clone() else {
            return unavailable(StoreError("no usage store is configured".into()));
        };
        let mut ask = match limits.ask(cost, images, now) {
            Ok(ask) => ask,
            Err(refusal) => return Err(self.refused(limits, refusal, images, None, now_ms)),
        };
        let key = limits.item_key(now);
        let seen = self.lock_windows().get(&limits.name).copied();
        let mut window = match seen {
            Some(ws) if ws >= ask.window_start => Window::Same,
            _ => Window::New,
        };
        // Same, New, Same covers a window another environment started meanwhile; a
        // fourth try means the item changes faster than this can read it.
        for _ in 0..4 {
            match store.reserve(&key, &ask, window).await {
                Err(err) => return unavailable(err),
                Ok(Reserved::Granted(figures)) => {
                    self.lock_windows().insert(limits.name.clone(), figures.window_start);
                    return Ok(Tab {
                        headers: limits.headers(&figures, now_ms),
                        reservation: Some(Reservation {
                            store,
                            settles: self.settles.clone(),
                            metrics: self.metrics.clone(),
                            key,
                            reserved: ask.cost,
                        }),
                    });
                }
                Ok(Reserved::Conflict(old)) => match limits.after_conflict(&ask, old.as_ref()) {
                    Next::Try(next, window_start) => {
                        window = next;
                        ask.window_start = window_start;
                    }
                    Next::Refuse(refusal) => {
                        return Err(self.refused(limits, refusal, images, old.as_ref(), now_ms));
                    }
                },
            }
        }
        unavailable(StoreError("the usage item changed on every try".into()))
    }

    /// `GET /v1/usage`: the calling key's own figures in its current period
    /// (every figure `null` for an unlimited key, which is never counted), and
    /// the `x-ratelimit-*` headers of a limited one.
    pub async fn report(
        &self,
        name: Option<&str>,
        limits: Option<&SpendLimits>,
    ) -> Result<(Vec<u8>, Vec<(&'static str, String)>), ApiError> {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            object: &'static str,
            key: Option<&'a str>,
            period: Option<PeriodOut>,
            budget_usd: Option<f64>,
            spent_usd: Option<f64>,
            reserved_usd: Option<f64>,
            remaining_usd: Option<f64>,
            requests: Option<u64>,
            images: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            window: Option<WindowOut>,
        }
        #[derive(serde::Serialize)]
        struct PeriodOut {
            #[serde(rename = "type")]
            kind: &'static str,
            start: u64,
            end: u64,
        }
        #[derive(serde::Serialize)]
        struct WindowOut {
            start: u64,
            end: u64,
            requests: u64,
            images: u64,
            limit_requests: Option<u32>,
            limit_images: Option<u32>,
        }
        let Some(limits) = limits else {
            let report = Report {
                object: "usage",
                key: name,
                period: None,
                budget_usd: None,
                spent_usd: None,
                reserved_usd: None,
                remaining_usd: None,
                requests: None,
                images: None,
                window: None,
            };
            return Ok((serde_json::to_vec(&report).unwrap_or_default(), Vec::new()));
        };
        let now_ms = self.clock.now_ms();
        let now = now_ms / 1000;
        let Some(store) = &self.store else {
            return Err(ApiError::usage_store_unavailable());
        };
        let f = match store.read(&limits.item_key(now)).await {
            Ok(item) => item.unwrap_or_default(),
            Err(err) => {
                tracing::warn!(error = %err, "the usage table could not be read");
                self.metrics.count("UsageStoreErrors");
                return Err(ApiError::usage_store_unavailable());
            }
        };
        let period = limits.period();
        let (start, end) = period.bounds(now);
        let budget = limits.budget.map(|b| b.micros);
        // A window that is over counts nothing any more.
        let current = f.window_start + crate::spend::WINDOW_SECONDS > now;
        let window_start = if current {
            f.window_start
        } else {
            now - now % crate::spend::WINDOW_SECONDS
        };
        let report = Report {
            object: "usage",
            key: Some(&limits.name),
            period: Some(PeriodOut {
                kind: period.name(),
                start,
                end,
            }),
            budget_usd: budget.map(crate::spend::usd),
            spent_usd: Some(crate::spend::usd(f.spent)),
            reserved_usd: Some(crate::spend::usd(f.reserved)),
            remaining_usd: budget.map(|b| crate::spend::usd((b - f.committed).max(0))),
            requests: Some(f.requests),
            images: Some(f.images),
            window: limits.has_rate_limits().then(|| WindowOut {
                start: window_start,
                end: window_start + crate::spend::WINDOW_SECONDS,
                requests: if current { f.window_requests } else { 0 },
                images: if current { f.window_images } else { 0 },
                limit_requests: limits.requests_per_minute,
                limit_images: limits.images_per_minute,
            }),
        };
        Ok((
            serde_json::to_vec(&report).unwrap_or_default(),
            limits.headers(&f, now_ms),
        ))
    }

    fn refused(
        &self,
        limits: &SpendLimits,
        refusal: Refusal,
        images: u64,
        old: Option<&Figures>,
        now_ms: u64,
    ) -> Refused {
        Refused {
            error: limits.refusal_error(refusal, images, now_ms),
            // Refused before the item was read (the request alone can never fit): no figures to tell.
            headers: old.map(|f| limits.headers(f, now_ms)).unwrap_or_default(),
        }
    }

    /// `deny`: 503; `allow`: served uncounted, with a warning and a metric.
    fn store_failed(&self, limits: &SpendLimits, err: StoreError) -> Result<Tab, Refused> {
        tracing::warn!(error = %err, client = %limits.name, on_error = ?self.on_error, "the usage table failed a reservation");
        self.metrics.count("UsageStoreErrors");
        match self.on_error {
            OnUsageStoreError::Deny => Err(Refused {
                error: ApiError::usage_store_unavailable(),
                headers: Vec::new(),
            }),
            OnUsageStoreError::Allow => Ok(Tab::default()),
        }
    }

    fn lock_windows(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The usage items in memory, for tests: the same conditions as DynamoDB's,
/// evaluated under one lock, and a switch that makes it fail.
#[derive(Default)]
pub struct MemoryStore {
    items: Mutex<HashMap<ItemKey, Figures>>,
    down: std::sync::atomic::AtomicBool,
    calls: std::sync::atomic::AtomicUsize,
}

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes every later call fail (`true`) or work again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn item(&self, key: &ItemKey) -> Option<Figures> {
        self.lock().get(key).copied()
    }

    /// Every item, for tests.
    pub fn items(&self) -> Vec<(ItemKey, Figures)> {
        self.lock().iter().map(|(k, f)| (k.clone(), *f)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ItemKey, Figures>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn call(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError("the test store is down".into()));
        }
        Ok(())
    }
}

impl UsageStore for MemoryStore {
    fn reserve<'a>(&'a self, key: &'a ItemKey, ask: &'a Ask, window: Window) -> StoreFuture<'a, Reserved> {
        Box::pin(async move {
            self.call()?;
            let mut items = self.lock();
            let old = items.get(key).copied();
            if !ask.allows(old.as_ref(), window) {
                return Ok(Reserved::Conflict(old));
            }
            let new = ask.apply(old.as_ref(), window);
            items.insert(key.clone(), new);
            Ok(Reserved::Granted(new))
        })
    }

    fn settle<'a>(&'a self, key: &'a ItemKey, settlement: Settlement) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.call()?;
            settlement.apply(self.lock().entry(key.clone()).or_default());
            Ok(())
        })
    }

    fn read<'a>(&'a self, key: &'a ItemKey) -> StoreFuture<'a, Option<Figures>> {
        Box::pin(async move {
            self.call()?;
            Ok(self.lock().get(key).copied())
        })
    }
}

/// The usage items in DynamoDB (`USAGE_TABLE`).
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }
}

mod dynamo {
    use std::collections::HashMap;

    use aws_sdk_dynamodb::types::AttributeValue;

    use crate::spend::{Ask, Figures, Window};

    pub fn n(value: impl ToString) -> AttributeValue {
        AttributeValue::N(value.to_string())
    }

    /// The update and condition expressions of a reservation, and their values.
    pub fn reservation(ask: &Ask, window: Window) -> (String, String, HashMap<String, AttributeValue>) {
        let mut values = HashMap::from([
            (":c".to_owned(), n(ask.cost)),
            (":one".to_owned(), n(1)),
            (":n".to_owned(), n(ask.images)),
            (":ws".to_owned(), n(ask.window_start)),
            (":exp".to_owned(), n(ask.expires_at)),
        ]);
        let mut conditions = Vec::new();
        let update = match window {
            Window::Same => {
                conditions.push("window_start = :ws".to_owned());
                if let Some(max) = ask.max_window_requests {
                    values.insert(":maxr".into(), n(max));
                    conditions.push("window_requests <= :maxr".into());
                }
                if let Some(max) = ask.max_window_images {
                    values.insert(":maxi".into(), n(max));
                    conditions.push("window_images <= :maxi".into());
                }
                "SET expires_at = :exp ADD committed :c, reserved :c, requests :one, window_requests :one, window_images :n"
            }
            Window::New => {
                conditions.push("(attribute_not_exists(window_start) OR window_start < :ws)".into());
                "SET window_start = :ws, window_requests = :one, window_images = :n, expires_at = :exp ADD committed :c, reserved :c, requests :one"
            }
        };
        if let Some(max) = ask.max_committed {
            values.insert(":maxc".into(), n(max));
            conditions.push("(attribute_not_exists(committed) OR committed <= :maxc)".into());
        }
        (update.to_owned(), conditions.join(" AND "), values)
    }

    pub fn figures(item: &HashMap<String, AttributeValue>) -> Figures {
        let int = |name: &str| -> i64 {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let count = |name: &str| int(name).max(0) as u64;
        Figures {
            committed: int("committed"),
            spent: int("spent"),
            reserved: int("reserved"),
            requests: count("requests"),
            images: count("images"),
            window_start: count("window_start"),
            window_requests: count("window_requests"),
            window_images: count("window_images"),
        }
    }
}

impl UsageStore for DynamoStore {
    fn reserve<'a>(&'a self, key: &'a ItemKey, ask: &'a Ask, window: Window) -> StoreFuture<'a, Reserved> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
        Box::pin(async move {
            let (update, condition, values) = dynamo::reservation(ask, window);
            let sent = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(key.pk.clone()))
                .key("sk", AttributeValue::S(key.sk.clone()))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_values(Some(values))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match sent {
                Ok(out) => Ok(Reserved::Granted(
                    out.attributes().map(dynamo::figures).unwrap_or_default(),
                )),
                Err(err) => match err.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                        Ok(Reserved::Conflict(failed.item().map(dynamo::figures)))
                    }
                    _ => Err(store_error(&err)),
                },
            }
        })
    }

    fn settle<'a>(&'a self, key: &'a ItemKey, settlement: Settlement) -> StoreFuture<'a, ()> {
        use aws_sdk_dynamodb::types::AttributeValue;
        Box::pin(async move {
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(key.pk.clone()))
                .key("sk", AttributeValue::S(key.sk.clone()))
                .update_expression("ADD committed :d, spent :s, reserved :r, images :i")
                .expression_attribute_values(":d", dynamo::n(settlement.spent - settlement.released))
                .expression_attribute_values(":s", dynamo::n(settlement.spent))
                .expression_attribute_values(":r", dynamo::n(-settlement.released))
                .expression_attribute_values(":i", dynamo::n(settlement.images))
                .send()
                .await
                .map(|_| ())
                .map_err(|err| store_error(&err))
        })
    }

    fn read<'a>(&'a self, key: &'a ItemKey) -> StoreFuture<'a, Option<Figures>> {
        use aws_sdk_dynamodb::types::AttributeValue;
        Box::pin(async move {
            self.client
                .get_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(key.pk.clone()))
                .key("sk", AttributeValue::S(key.sk.clone()))
                .consistent_read(true)
                .send()
                .await
                .map(|out| out.item().map(dynamo::figures))
                .map_err(|err| store_error(&err))
        })
    }
}

/// The SDK's error in a log line: its kind and code, never a request.
fn store_error<E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    err: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> StoreError {
    use aws_sdk_dynamodb::error::SdkError;
    let kind = match err {
        SdkError::ConstructionFailure(_) => "construction failure",
        SdkError::TimeoutError(_) => "timeout",
        SdkError::DispatchFailure(_) => "unreachable",
        SdkError::ResponseError(_) => "unreadable response",
        SdkError::ServiceError(_) => "service error",
        _ => "error",
    };
    StoreError(match err.as_service_error().and_then(|e| e.code()) {
        Some(code) => format!("{kind}: {code}"),
        None => kind.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::{Budget, ManualClock, Period};
    use std::time::Duration;

    /// 2026-12-02T14:30:15Z.
    const NOW_MS: u64 = 1_796_221_815_000;

    fn limits(budget_usd: Option<f64>, rpm: Option<u32>, ipm: Option<u32>) -> SpendLimits {
        SpendLimits {
            name: "team-a".into(),
            budget: budget_usd.map(|usd| Budget {
                micros: micros(usd),
                period: Period::Day,
            }),
            requests_per_minute: rpm,
            images_per_minute: ipm,
        }
    }

    fn spend(store: &Arc<MemoryStore>, clock: &Arc<ManualClock>, on_error: OnUsageStoreError) -> Spend {
        Spend::new(
            Some(store.clone() as Arc<dyn UsageStore>),
            clock.clone(),
            on_error,
            MetricsSink::new("test", |_| {}),
        )
    }

    fn success(cost_usd: f64) -> Outcome {
        Outcome {
            cost_usd: Some(cost_usd),
            billed: true,
            images: 1,
        }
    }

    #[tokio::test]
    async fn a_budget_admits_what_it_holds_then_refuses_until_the_period_rolls_over() {
        let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
        let spend = spend(&store, &clock, OnUsageStoreError::Deny);
        let l = limits(Some(0.1), None, None);
        let mut tabs = Vec::new();
        for _ in 0..2 {
            tabs.push(spend.reserve(&l, Some(0.05), 1).await.ok().expect("admitted"));
        }
        let refused = spend.reserve(&l, Some(0.05), 1).await.err().expect("refused");
        assert_eq!(refused.error.code.as_deref(), Some("insufficient_quota"));
        assert!(refused.error.message.contains("2026-12-03T00:00:00Z"));
        // Settling at the actual cost frees what was reserved above it.
        for mut tab in tabs {
            tab.settle(success(0.01));
        }
        spend.settles().wait().await;
        let key = l.item_key(NOW_MS / 1000);
        let item = store.item(&key).expect("item");
        assert_eq!(
            (item.spent, item.reserved, item.committed, item.images),
            (20_000, 0, 20_000, 2)
        );
        assert!(spend.reserve(&l, Some(0.05), 1).await.is_ok());
        // The next day is a new period, with a new item.
        clock.advance(Duration::from_secs(86_400));
        for _ in 0..2 {
            assert!(spend.reserve(&l, Some(0.05), 1).await.is_ok());
        }
        assert_ne!(l.item_key(clock.now_ms() / 1000), key);
        assert_eq!(store.items().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_request_releases_its_reservation_and_an_unknown_success_keeps_it() {
        let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
        let spend = spend(&store, &clock, OnUsageStoreError::Deny);
        let l = limits(Some(1.0), None, None);
        let key = l.item_key(NOW_MS / 1000);
        let mut failed = spend.reserve(&l, Some(0.3), 1).await.ok().expect("admitted");
        failed.settle(Outcome::default());
        spend.settles().wait().await;
        assert_eq!(store.item(&key).expect("item").committed, 0);
        let mut unknown = spend.reserve(&l, Some(0.3), 1).await.ok().expect("admitted");
        unknown.settle(Outcome {
            cost_usd: None,
            billed: true,
            images: 1,
        });
        spend.settles().wait().await;
        let item = store.item(&key).expect("item");
        assert_eq!((item.spent, item.reserved), (300_000, 0));
        // Dropped before it was settled: kept, never released.
        drop(spend.reserve(&l, Some(0.3), 1).await.ok().expect("admitted"));
        spend.settles().wait().await;
        assert_eq!(store.item(&key).expect("item").spent, 600_000);
    }

    #[tokio::test]
    async fn the_rate_limit_refuses_until_the_next_minute_with_its_headers() {
        let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
        let spend = spend(&store, &clock, OnUsageStoreError::Deny);
        let l = limits(None, Some(2), Some(3));
        let first = spend.reserve(&l, None, 2).await.ok().expect("admitted");
        assert!(first.headers.contains(&("x-ratelimit-remaining-requests", "1".into())));
        assert!(first.headers.contains(&("x-ratelimit-remaining-images", "1".into())));
        assert!(first.headers.contains(&("x-ratelimit-reset-requests", "45s".into())));
        // Two images would pass the requests limit, not the images one.
        let refused = spend.reserve(&l, None, 2).await.err().expect("images full");
        assert_eq!(refused.error.code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(refused.error.retry_after, Some(Duration::from_secs(45)));
        assert!(refused.headers.contains(&("x-ratelimit-remaining-images", "1".into())));
        assert!(spend.reserve(&l, None, 1).await.is_ok());
        let refused = spend.reserve(&l, None, 1).await.err().expect("requests full");
        assert!(
            refused
                .headers
                .contains(&("x-ratelimit-remaining-requests", "0".into()))
        );
        clock.advance(Duration::from_secs(45));
        let next = spend.reserve(&l, None, 3).await.ok().expect("a new minute");
        assert!(next.headers.contains(&("x-ratelimit-remaining-images", "0".into())));
        assert!(next.headers.contains(&("x-ratelimit-reset-images", "1m0s".into())));
        let never = spend.reserve(&l, None, 4).await.err().expect("never fits");
        assert!(never.error.do_not_retry && never.headers.is_empty());
    }

    #[tokio::test]
    async fn one_round_trip_per_request_once_the_minute_is_known() {
        let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
        let spend = spend(&store, &clock, OnUsageStoreError::Deny);
        let l = limits(Some(10.0), Some(100), None);
        for _ in 0..5 {
            assert!(spend.reserve(&l, Some(0.01), 1).await.is_ok());
        }
        assert_eq!(store.calls(), 5);
        // Another environment started this minute's window: one more round trip to learn it.
        let other = self::spend(&store, &clock, OnUsageStoreError::Deny);
        assert!(other.reserve(&l, Some(0.01), 1).await.is_ok());
        assert_eq!(store.calls(), 7);
        assert_eq!(store.item(&l.item_key(NOW_MS / 1000)).expect("item").window_requests, 6);
    }

    #[tokio::test]
    async fn concurrent_reservations_from_many_environments_never_overspend() {
        let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
        let envs: Vec<Arc<Spend>> = (0..4)
            .map(|_| Arc::new(spend(&store, &clock, OnUsageStoreError::Deny)))
            .collect();
        let l = limits(Some(0.4), None, None);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (env, l) = (envs[i % 4].clone(), l.clone());
                tokio::spawn(async move { env.reserve(&l, Some(0.04), 1).await.is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.expect("task"));
        }
        assert_eq!(admitted, 10);
    }

    #[tokio::test]
    async fn a_store_outage_denies_with_503_or_serves_uncounted() {
        let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
        store.set_down(true);
        let l = limits(Some(1.0), Some(5), None);
        let denied = spend(&store, &clock, OnUsageStoreError::Deny)
            .reserve(&l, Some(0.1), 1)
            .await
            .err()
            .expect("denied");
        assert_eq!(denied.error.code.as_deref(), Some("usage_store_unavailable"));
        assert!(denied.error.retry_after.is_some());
        let allowed = spend(&store, &clock, OnUsageStoreError::Allow)
            .reserve(&l, Some(0.1), 1)
            .await
            .ok()
            .expect("allowed");
        assert!(allowed.headers.is_empty());
    }

    #[tokio::test]
    async fn a_budgeted_key_refuses_a_request_whose_cost_cannot_be_bounded() {
        let (store, clock) = (MemoryStore::new(), ManualClock::at(NOW_MS));
        let spend = spend(&store, &clock, OnUsageStoreError::Deny);
        let refused = spend
            .reserve(&limits(Some(1.0), None, None), None, 1)
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.error.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(store.calls(), 0);
        assert!(spend.reserve(&limits(None, Some(5), None), None, 1).await.is_ok());
    }

    /// A store whose settlements wait for the test to let them through.
    struct GatedStore {
        inner: Arc<MemoryStore>,
        gate: tokio::sync::Semaphore,
    }

    impl UsageStore for GatedStore {
        fn reserve<'a>(&'a self, key: &'a ItemKey, ask: &'a Ask, window: Window) -> StoreFuture<'a, Reserved> {
            self.inner.reserve(key, ask, window)
        }
        fn settle<'a>(&'a self, key: &'a ItemKey, settlement: Settlement) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                let _pass = self.gate.acquire().await.map_err(|_| StoreError("closed".into()))?;
                self.inner.settle(key, settlement).await
            })
        }
        fn read<'a>(&'a self, key: &'a ItemKey) -> StoreFuture<'a, Option<Figures>> {
            self.inner.read(key)
        }
    }

    #[tokio::test]
    async fn waiting_for_settlements_returns_only_once_they_are_written() {
        let inner = MemoryStore::new();
        let gated = Arc::new(GatedStore {
            inner: inner.clone(),
            gate: tokio::sync::Semaphore::new(0),
        });
        let spend = Arc::new(Spend::new(
            Some(gated.clone() as Arc<dyn UsageStore>),
            ManualClock::at(NOW_MS),
            OnUsageStoreError::Deny,
            MetricsSink::new("test", |_| {}),
        ));
        let l = limits(Some(1.0), None, None);
        spend
            .reserve(&l, Some(0.5), 1)
            .await
            .ok()
            .expect("admitted")
            .settle(success(0.1));
        let waiter = tokio::spawn({
            let spend = spend.clone();
            async move { spend.settles().wait().await }
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiter.is_finished(),
            "the wait ended before the settlement was written"
        );
        gated.gate.add_permits(1);
        waiter.await.expect("waiter");
        let item = inner.item(&l.item_key(NOW_MS / 1000)).expect("item");
        assert_eq!((item.spent, item.reserved), (100_000, 0));
    }

    /// A store that never answers a reservation.
    struct SilentStore;

    impl UsageStore for SilentStore {
        fn reserve<'a>(&'a self, _: &'a ItemKey, _: &'a Ask, _: Window) -> StoreFuture<'a, Reserved> {
            Box::pin(std::future::pending())
        }
        fn settle<'a>(&'a self, _: &'a ItemKey, _: Settlement) -> StoreFuture<'a, ()> {
            Box::pin(std::future::pending())
        }
        fn read<'a>(&'a self, _: &'a ItemKey) -> StoreFuture<'a, Option<Figures>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_before_the_deadline_is_a_store_failure() {
        let spend = Spend::new(
            Some(Arc::new(SilentStore)),
            ManualClock::at(NOW_MS),
            OnUsageStoreError::Deny,
            MetricsSink::new("test", |_| {}),
        );
        let started = tokio::time::Instant::now();
        let deadline = Instant::now() + Duration::from_secs(30);
        let refused = spend
            .reserve_by(Some(deadline), &limits(Some(1.0), None, None), Some(0.1), 1)
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.error.code.as_deref(), Some("usage_store_unavailable"));
        // The time kept to answer is left.
        assert!(started.elapsed() <= Duration::from_secs(30) - DEADLINE_MARGIN + Duration::from_millis(10));
    }

    #[test]
    fn the_dynamodb_expressions_hold_only_the_keys_conditions() {
        let l = limits(Some(1.0), Some(5), None);
        let ask = l.ask(100, 1, NOW_MS / 1000).expect("fits");
        let (update, condition, values) = dynamo::reservation(&ask, Window::Same);
        assert!(update.contains("ADD committed :c, reserved :c"));
        assert_eq!(
            condition,
            "window_start = :ws AND window_requests <= :maxr AND (attribute_not_exists(committed) OR committed <= :maxc)"
        );
        assert!(!values.contains_key(":maxi"));
        let (update, condition, _) = dynamo::reservation(&ask, Window::New);
        assert!(update.starts_with("SET window_start = :ws, window_requests = :one"));
        assert!(condition.starts_with("(attribute_not_exists(window_start) OR window_start < :ws)"));
        // Every placeholder used is given, and every one given is used.
        for window in [Window::Same, Window::New] {
            let (update, condition, values) = dynamo::reservation(&ask, window);
            let text = format!("{update} {condition}");
            for name in values.keys() {
                if name != ":maxi" {
                    assert!(text.contains(name.as_str()), "{name} unused in {text}");
                }
            }
        }
    }
}
