//! Spend control's arithmetic, with no I/O: a key's budget and rate limits,
//! the period and the minute window a moment falls in, the usage item's
//! key, what one reservation asks of it, how a refusal is told from a new
//! minute, and the `x-ratelimit-*` headers. The store that holds the items
//! is `usage.rs`; the time comes from a [`Clock`], so tests move it.
//!
//! Money is counted in whole micro-dollars (µUSD): DynamoDB adds numbers
//! exactly, and whole numbers keep the fake store and the real one equal.
//! A reservation is rounded up, so rounding never lets a budget overspend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::error::ApiError;

/// The length of a rate-limit window: limits are per minute.
pub const WINDOW_SECONDS: u64 = 60;

/// How long an item outlives its period before DynamoDB's TTL removes it:
/// `/v1/usage` can still show the period just ended for a while.
const KEEP_AFTER_PERIOD: u64 = 7 * 86_400;

/// Where the time comes from: the system clock, or a test's.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(ms)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A budget's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    /// The period holding `now` (Unix seconds): its first second and the first of the next.
    pub fn bounds(self, now: u64) -> (u64, u64) {
        let day = now / 86_400;
        match self {
            Self::Day => (day * 86_400, (day + 1) * 86_400),
            Self::Month => {
                let (y, m, _) = civil_from_days(day as i64);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let start = days_from_civil(y, m, 1) as u64 * 86_400;
                let end = days_from_civil(ny, nm, 1) as u64 * 86_400;
                (start, end)
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// A key's budget: at most `micros` µUSD per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub micros: i64,
    pub period: Period,
}

/// What a client key may spend and how fast; from its entry in the client keys secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendLimits {
    /// The key's name: the usage item's key, so it is shared by every key of that name.
    pub name: String,
    pub budget: Option<Budget>,
    pub requests_per_minute: Option<u32>,
    pub images_per_minute: Option<u32>,
}

/// A usage item's primary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemKey {
    pub pk: String,
    pub sk: String,
}

/// A usage item's figures; a missing attribute is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// `spent + reserved`, the one figure the budget's condition reads
    /// (a condition expression compares, it cannot add).
    pub committed: i64,
    pub spent: i64,
    pub reserved: i64,
    pub requests: u64,
    pub images: u64,
    pub window_start: u64,
    pub window_requests: u64,
    pub window_images: u64,
}

/// Which of the two reservations: counting in the window the item holds, or
/// starting the current minute's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Same,
    New,
}

/// One reservation as the store sends it. Every `max_*` is a condition:
/// `None` when the key has no such limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// µUSD reserved (0 for a key without a budget).
    pub cost: i64,
    /// The images asked for (`n`), counted in the window.
    pub images: u64,
    /// The window this request counts in (Unix seconds).
    pub window_start: u64,
    /// `committed` before the request must be at most this.
    pub max_committed: Option<i64>,
    /// `window_requests` before the request must be at most this (the limit − 1).
    pub max_window_requests: Option<u64>,
    /// `window_images` before the request must be at most this (the limit − n).
    pub max_window_images: Option<u64>,
    /// The TTL attribute.
    pub expires_at: u64,
}

impl Ask {
    /// Whether `old` meets this ask's conditions for `window` (the fake store's
    /// evaluation, and the same as the real store's condition expressions).
    pub fn allows(&self, old: Option<&Figures>, window: Window) -> bool {
        let f = old.copied().unwrap_or_default();
        let budget = self.max_committed.is_none_or(|max| f.committed <= max);
        match window {
            Window::Same => {
                old.is_some()
                    && f.window_start == self.window_start
                    && budget
                    && self.max_window_requests.is_none_or(|max| f.window_requests <= max)
                    && self.max_window_images.is_none_or(|max| f.window_images <= max)
            }
            Window::New => (old.is_none() || f.window_start < self.window_start) && budget,
        }
    }

    /// The item after this reservation, for the fake store.
    pub fn apply(&self, old: Option<&Figures>, window: Window) -> Figures {
        let mut f = old.copied().unwrap_or_default();
        f.committed += self.cost;
        f.reserved += self.cost;
        f.requests += 1;
        match window {
            Window::Same => {
                f.window_requests += 1;
                f.window_images += self.images;
            }
            Window::New => {
                f.window_start = self.window_start;
                f.window_requests = 1;
                f.window_images = self.images;
            }
        }
        f
    }
}

/// What settling adds to the item: the actual cost in, the reservation out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub spent: i64,
    pub released: i64,
    pub images: u64,
}

impl Settlement {
    pub fn apply(&self, f: &mut Figures) {
        f.committed += self.spent - self.released;
        f.spent += self.spent;
        f.reserved -= self.released;
        f.images += self.images;
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The budget cannot hold the request until the period ends (Unix seconds).
    Budget { period_end: u64 },
    /// A rate limit is reached until the window ends (Unix seconds).
    Rate { window_end: u64 },
    /// The request alone is more than the key may ever take at once.
    TooLarge,
}

/// After a conditional reservation failed: what the item (as it was) says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Try(Window, u64),
    Refuse(Refusal),
}

/// µUSD of a USD amount, rounded up.
pub fn micros(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    let m = (usd * 1e6).ceil();
    if m >= i64::MAX as f64 { i64::MAX } else { m as i64 }
}

/// USD of µUSD, for answers and logs.
pub fn usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

impl SpendLimits {
    /// The period the item counts in: the budget's, or a month for a key with limits only.
    pub fn period(&self) -> Period {
        self.budget.map_or(Period::Month, |b| b.period)
    }

    /// The usage item of the period holding `now` (Unix seconds).
    pub fn item_key(&self, now: u64) -> ItemKey {
        let (start, _) = self.period().bounds(now);
        ItemKey {
            pk: format!("key#{}", self.name),
            sk: format!("period#{start}"),
        }
    }

    /// The reservation of a request of `images` images costing at most `cost`
    /// µUSD, at `now` (Unix seconds); a refusal when the request alone can never fit.
    pub fn ask(&self, cost: i64, images: u64, now: u64) -> Result<Ask, Refusal> {
        let window_start = now - now % WINDOW_SECONDS;
        let (_, period_end) = self.period().bounds(now);
        let max_committed = match self.budget {
            Some(b) if cost > b.micros => return Err(Refusal::Budget { period_end }),
            Some(b) => Some(b.micros - cost),
            None => None,
        };
        let max_window_images = match self.images_per_minute {
            Some(limit) if images > u64::from(limit) => return Err(Refusal::TooLarge),
            Some(limit) => Some(u64::from(limit) - images),
            None => None,
        };
        Ok(Ask {
            cost: if self.budget.is_some() { cost } else { 0 },
            images,
            window_start,
            max_committed,
            max_window_requests: self.requests_per_minute.map(|l| u64::from(l).saturating_sub(1)),
            max_window_images,
            expires_at: period_end + KEEP_AFTER_PERIOD,
        })
    }

    /// What to do after a reservation failed its condition, from the item as it
    /// was (`None`: there was no item). A window older than the ask's is a new
    /// minute; a newer one (another execution environment's clock is ahead) is
    /// counted in, so clocks a little apart still share one window.
    pub fn after_conflict(&self, ask: &Ask, old: Option<&Figures>) -> Next {
        let Some(f) = old else {
            return Next::Try(Window::New, ask.window_start);
        };
        if f.window_start < ask.window_start {
            if ask.max_committed.is_some_and(|max| f.committed > max) {
                return Next::Refuse(Refusal::Budget {
                    period_end: self.period().bounds(ask.window_start).1,
                });
            }
            return Next::Try(Window::New, ask.window_start);
        }
        let window_start = f.window_start;
        if ask.max_committed.is_some_and(|max| f.committed > max) {
            return Next::Refuse(Refusal::Budget {
                period_end: self.period().bounds(ask.window_start).1,
            });
        }
        let requests_full = ask.max_window_requests.is_some_and(|max| f.window_requests > max);
        let images_full = ask.max_window_images.is_some_and(|max| f.window_images > max);
        if requests_full || images_full {
            return Next::Refuse(Refusal::Rate {
                window_end: window_start + WINDOW_SECONDS,
            });
        }
        Next::Try(Window::Same, window_start)
    }

    /// Whether the key has a rate limit (and so its answers carry `x-ratelimit-*`).
    pub fn has_rate_limits(&self) -> bool {
        self.requests_per_minute.is_some() || self.images_per_minute.is_some()
    }

    /// OpenAI's `x-ratelimit-*` headers, from the item's window as the
    /// reservation left it (or as it was, for a refusal), at `now_ms`.
    pub fn headers(&self, f: &Figures, now_ms: u64) -> Vec<(&'static str, String)> {
        let now = now_ms / 1000;
        // A window that is over counts nothing any more (one ahead, from another clock, still counts).
        let (requests, images, reset_at) = if f.window_start + WINDOW_SECONDS > now {
            (f.window_requests, f.window_images, f.window_start + WINDOW_SECONDS)
        } else {
            (0, 0, now - now % WINDOW_SECONDS + WINDOW_SECONDS)
        };
        let reset = Duration::from_millis((reset_at * 1000).saturating_sub(now_ms));
        let mut headers = Vec::new();
        for (limit, used, names) in [
            (
                self.requests_per_minute,
                requests,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                self.images_per_minute,
                images,
                [
                    "x-ratelimit-limit-images",
                    "x-ratelimit-remaining-images",
                    "x-ratelimit-reset-images",
                ],
            ),
        ] {
            if let Some(limit) = limit {
                headers.push((names[0], limit.to_string()));
                headers.push((names[1], u64::from(limit).saturating_sub(used).to_string()));
                headers.push((names[2], openai_duration(reset)));
            }
        }
        headers
    }

    /// The 429 for a refusal at `now_ms`.
    pub fn refusal_error(&self, refusal: Refusal, images: u64, now_ms: u64) -> ApiError {
        match refusal {
            Refusal::Budget { period_end } => {
                let budget = self.budget.map_or(0, |b| b.micros);
                ApiError::insufficient_quota(format!(
                    "You exceeded your current quota: this key's budget of ${:.2} per {} cannot hold this request until the period ends at {} (UTC).",
                    usd(budget),
                    self.period().name(),
                    rfc3339(period_end)
                ))
            }
            Refusal::Rate { window_end } => {
                let wait = Duration::from_millis((window_end * 1000).saturating_sub(now_ms));
                ApiError::rate_limit_exceeded(
                    format!(
                        "Rate limit reached for this key: {}. Please try again in {}.",
                        self.limits_text(),
                        openai_duration(wait)
                    ),
                    wait,
                )
            }
            Refusal::TooLarge => {
                // No wait helps: the same request is refused in every window.
                let mut err = ApiError::rate_limit_exceeded(
                    format!(
                        "This request asks for {images} images; this key may have at most {} per minute.",
                        self.images_per_minute.unwrap_or(0)
                    ),
                    Duration::ZERO,
                )
                .with_param("n")
                .with_retry_after(None);
                err.do_not_retry = true;
                err
            }
        }
    }

    fn limits_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.requests_per_minute {
            parts.push(format!("{r} requests per minute"));
        }
        if let Some(i) = self.images_per_minute {
            parts.push(format!("{i} images per minute"));
        }
        parts.join(", ")
    }
}

/// A duration as OpenAI's headers write it (Go's format): `17ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{frac:03}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T14:30:15Z.
    const NOW: u64 = 1_796_221_815;

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

    #[test]
    fn days_and_months_start_at_midnight_utc() {
        assert_eq!(rfc3339(NOW), "2026-12-02T14:30:15Z");
        let (start, end) = Period::Day.bounds(NOW);
        assert_eq!(
            (rfc3339(start), rfc3339(end)),
            ("2026-12-02T00:00:00Z".into(), "2026-12-03T00:00:00Z".into())
        );
        let (start, end) = Period::Month.bounds(NOW);
        assert_eq!(
            (rfc3339(start), rfc3339(end)),
            ("2026-12-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        // February of a leap year, and the last second of a month.
        let feb = days_from_civil(2028, 2, 10) as u64 * 86_400;
        let (start, end) = Period::Month.bounds(feb);
        assert_eq!(
            (rfc3339(start), rfc3339(end)),
            ("2028-02-01T00:00:00Z".into(), "2028-03-01T00:00:00Z".into())
        );
        assert_eq!(Period::Month.bounds(end - 1).0, start);
        assert_eq!(Period::Month.bounds(end).0, end);
    }

    #[test]
    fn the_dates_match_the_calendar_over_centuries() {
        for day in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
        }
    }

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        for (ms, text) in [
            (17, "17ms"),
            (0, "0ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (59_250, "59.25s"),
            (360_000, "6m0s"),
            (61_000, "1m1s"),
            (3_600_000, "1h0m0s"),
        ] {
            assert_eq!(openai_duration(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn money_rounds_up_to_a_micro_dollar() {
        assert_eq!(micros(0.04), 40_000);
        assert_eq!(micros(0.000_000_1), 1);
        assert_eq!(micros(0.0), 0);
        assert_eq!(micros(f64::NAN), 0);
    }

    #[test]
    fn the_item_is_per_key_and_period_and_rolls_over_at_the_period_end() {
        let l = limits(Some(1.0), None, None);
        let key = l.item_key(NOW);
        assert_eq!(key.pk, "key#team-a");
        assert_eq!(key.sk, format!("period#{}", Period::Day.bounds(NOW).0));
        let (_, end) = Period::Day.bounds(NOW);
        assert_eq!(l.item_key(end - 1), key);
        assert_ne!(l.item_key(end), key);
        // Limits only: a month's item.
        let l = limits(None, Some(5), None);
        assert_eq!(l.item_key(NOW).sk, format!("period#{}", Period::Month.bounds(NOW).0));
    }

    #[test]
    fn an_ask_holds_the_conditions_of_the_key() {
        let l = limits(Some(1.0), Some(3), Some(4));
        let ask = l.ask(400_000, 2, NOW).expect("fits");
        assert_eq!(ask.max_committed, Some(600_000));
        assert_eq!(ask.max_window_requests, Some(2));
        assert_eq!(ask.max_window_images, Some(2));
        assert_eq!(ask.window_start % 60, 0);
        assert!(ask.window_start <= NOW && NOW < ask.window_start + 60);
        let unlimited_budget = limits(None, Some(3), None).ask(400_000, 2, NOW).expect("fits");
        assert_eq!((unlimited_budget.cost, unlimited_budget.max_committed), (0, None));
        assert!(matches!(l.ask(1_000_001, 1, NOW), Err(Refusal::Budget { .. })));
        assert_eq!(l.ask(1, 5, NOW), Err(Refusal::TooLarge));
    }

    #[test]
    fn a_conflict_is_a_new_minute_a_full_window_or_a_spent_budget() {
        let l = limits(Some(1.0), Some(2), None);
        let ask = l.ask(100_000, 1, NOW).expect("fits");
        let ws = ask.window_start;
        assert_eq!(l.after_conflict(&ask, None), Next::Try(Window::New, ws));
        let old = |committed, window_start, window_requests| Figures {
            committed,
            window_start,
            window_requests,
            ..Figures::default()
        };
        assert_eq!(
            l.after_conflict(&ask, Some(&old(0, ws - 60, 2))),
            Next::Try(Window::New, ws)
        );
        assert_eq!(
            l.after_conflict(&ask, Some(&old(0, ws, 2))),
            Next::Refuse(Refusal::Rate { window_end: ws + 60 })
        );
        let end = Period::Day.bounds(NOW).1;
        assert_eq!(
            l.after_conflict(&ask, Some(&old(950_000, ws, 0))),
            Next::Refuse(Refusal::Budget { period_end: end })
        );
        assert_eq!(
            l.after_conflict(&ask, Some(&old(950_000, ws - 60, 0))),
            Next::Refuse(Refusal::Budget { period_end: end })
        );
        // Another environment reset the window first: count in it.
        assert_eq!(
            l.after_conflict(&ask, Some(&old(0, ws, 1))),
            Next::Try(Window::Same, ws)
        );
        // Its clock is ahead: its window is the one.
        assert_eq!(
            l.after_conflict(&ask, Some(&old(0, ws + 60, 0))),
            Next::Try(Window::Same, ws + 60)
        );
    }

    #[test]
    fn the_conditions_admit_exactly_what_the_budget_holds() {
        let l = limits(Some(0.1), None, None);
        let ask = l.ask(40_000, 1, NOW).expect("fits");
        let mut item: Option<Figures> = None;
        let mut admitted = 0;
        for _ in 0..5 {
            let window = if item.is_none() { Window::New } else { Window::Same };
            if ask.allows(item.as_ref(), window) {
                item = Some(ask.apply(item.as_ref(), window));
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2);
        let mut f = item.expect("reserved");
        Settlement {
            spent: 10_000,
            released: 40_000,
            images: 1,
        }
        .apply(&mut f);
        assert_eq!(
            (f.committed, f.spent, f.reserved, f.images),
            (50_000, 10_000, 40_000, 1)
        );
        assert!(ask.allows(Some(&f), Window::Same));
    }

    #[test]
    fn headers_count_the_current_window_and_reset_at_its_end() {
        let l = limits(None, Some(10), Some(4));
        let now_ms = NOW * 1000 + 250;
        let ws = NOW - NOW % 60;
        let f = Figures {
            window_start: ws,
            window_requests: 3,
            window_images: 4,
            ..Figures::default()
        };
        let h = l.headers(&f, now_ms);
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        assert_eq!(get("x-ratelimit-limit-requests").as_deref(), Some("10"));
        assert_eq!(get("x-ratelimit-remaining-requests").as_deref(), Some("7"));
        assert_eq!(get("x-ratelimit-remaining-images").as_deref(), Some("0"));
        assert_eq!(get("x-ratelimit-reset-requests").as_deref(), Some("44.75s"));
        assert_eq!(get("x-ratelimit-reset-images").as_deref(), Some("44.75s"));
        // A minute later the old window counts nothing.
        let h = l.headers(&f, now_ms + 60_000);
        assert!(h.contains(&("x-ratelimit-remaining-requests", "10".into())));
        // A budget-only key has no rate-limit headers.
        assert!(limits(Some(1.0), None, None).headers(&f, now_ms).is_empty());
    }

    #[test]
    fn refusals_name_the_period_end_or_the_wait() {
        let l = limits(Some(5.0), Some(1), None);
        let end = Period::Day.bounds(NOW).1;
        let err = l.refusal_error(Refusal::Budget { period_end: end }, 1, NOW * 1000);
        assert_eq!(err.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(err.kind, "insufficient_quota");
        assert!(err.do_not_retry);
        assert!(err.message.contains("2026-12-03T00:00:00Z") && err.message.contains("$5.00 per day"));
        let err = l.refusal_error(Refusal::Rate { window_end: NOW + 5 }, 1, NOW * 1000);
        assert_eq!(err.code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(err.retry_after, Some(Duration::from_secs(5)));
        assert!(!err.do_not_retry);
    }
}
