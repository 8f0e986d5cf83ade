//! Several Azure deployments behind one model name (issue 16): which one an
//! attempt goes to, and what the pool remembers between requests.
//!
//! One deployment's quota is often smaller than the traffic sent to one name.
//! Spreading attempts by weight, preferring the deployment Azure last said has
//! the most room, and sending a 429 on at once to a deployment that is not
//! cooling down makes several quotas serve as one. The state lives in the
//! execution environment's memory: each environment learns on its own, which
//! costs at most a few 429s after a cold start.
//!
//! Nothing here reads a clock or draws entropy on its own: `now` comes in as
//! an argument and the random draws from a [`fastrand::Rng`] the pool is built
//! with, so the tests are deterministic. The caller (the attempt loop) parses
//! Azure's headers and decides which failures are the deployment's fault.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

/// A 429 that says nothing of how long to wait (neither `retry-after-ms` nor
/// `retry-after`): long enough that the next attempts go elsewhere, short
/// enough that a deployment only briefly full is not lost for long.
pub const THROTTLED_FOR: Duration = Duration::from_secs(1);
/// The first failure's cooldown (5xx, a timeout before a status, a connection
/// error); it doubles with each failure in a row.
pub const FIRST_FAILURE_COOLDOWN: Duration = Duration::from_secs(1);
/// The longest failure cooldown: a deployment that keeps failing is still
/// tried again every half minute, so it comes back soon after it recovers.
pub const LONGEST_FAILURE_COOLDOWN: Duration = Duration::from_secs(30);
/// How long Azure's remaining-capacity figures are believed: its quotas are
/// per minute, so an older figure says nothing about the room there is now.
pub const CAPACITY_FRESH_FOR: Duration = Duration::from_secs(60);
/// The longest cooldown a 429 can set, whatever it asks: keeps every
/// `Instant` sum far from overflow.
const LONGEST_COOLDOWN: Duration = Duration::from_secs(86_400);

/// What Azure last said a deployment has left in its current window
/// (`x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens`); `None`
/// where it did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
}

/// The remaining capacity Azure reports in a response's headers. A value that
/// is not a whole number counts as not sent.
pub fn remaining_from(headers: &HeaderMap) -> Remaining {
    let count = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Remaining {
        requests: count("x-ratelimit-remaining-requests"),
        tokens: count("x-ratelimit-remaining-tokens"),
    }
}

/// Where an attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The index of the deployment, in the order configured.
    Target(usize),
    /// Every deployment is cooling down; the first frees up at `until`.
    AllCooling { until: Instant },
    /// Every deployment has had its chance at this request.
    Spent,
}

/// What to do when every deployment is cooling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait this long, then pick again.
    Sleep(Duration),
    /// Answer 429 now, with `Retry-After` set to when the first deployment frees up.
    Refuse { retry_after: Duration },
}

/// Whether a request waits for the first deployment of a cooling pool to free
/// up at `until`: only when that is at most `max_wait` (`POOL_MAX_WAIT_SECONDS`)
/// away and still leaves `reserve` (the time an attempt needs, and the margin
/// kept to answer) before the `deadline`. Otherwise the client hears at once
/// when to come back: a long cooldown is never waited out inside a request.
pub fn decide_wait(
    until: Instant,
    now: Instant,
    max_wait: Duration,
    deadline: Option<Instant>,
    reserve: Duration,
) -> Wait {
    let wait = until.saturating_duration_since(now);
    let in_time = deadline.is_none_or(|deadline| until.checked_add(reserve).is_some_and(|ready| ready <= deadline));
    if wait <= max_wait && in_time {
        Wait::Sleep(wait)
    } else {
        Wait::Refuse { retry_after: wait }
    }
}

/// The deployments of one model and what the execution environment has
/// learnt about each. Shared by the concurrent requests of the environment.
#[derive(Debug)]
pub struct Pool {
    names: Vec<String>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    targets: Vec<TargetState>,
    rng: fastrand::Rng,
}

#[derive(Debug, Clone)]
struct TargetState {
    weight: u64,
    /// Set by a 429; only time lifts it, since Azure said when.
    throttled_until: Option<Instant>,
    /// Set by a failure; a success elsewhere in time lifts it (the deployment works).
    failing_until: Option<Instant>,
    /// Failures in a row since the last success.
    failures: u32,
    remaining: Remaining,
    /// When `remaining` was reported; `None` when there is no figure to believe.
    reported_at: Option<Instant>,
}

/// How much room a deployment has, in the order that decides a pick: any room
/// at all, then remaining requests (every image request takes one, whatever
/// its size), then remaining tokens. A figure Azure did not send, or sent over
/// a minute ago, counts as full: a deployment nobody has heard from lately is
/// worth trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Room {
    some: bool,
    requests: u64,
    tokens: u64,
}

impl TargetState {
    /// When its cooldown ends, if it is cooling down at `now`.
    fn cooling_until(&self, now: Instant) -> Option<Instant> {
        self.throttled_until
            .into_iter()
            .chain(self.failing_until)
            .filter(|until| *until > now)
            .max()
    }

    fn room(&self, now: Instant) -> Room {
        let fresh = self
            .reported_at
            .is_some_and(|at| now.saturating_duration_since(at) < CAPACITY_FRESH_FOR);
        let Remaining { requests, tokens } = if fresh { self.remaining } else { Remaining::default() };
        Room {
            some: requests != Some(0) && tokens != Some(0),
            requests: requests.unwrap_or(u64::MAX),
            tokens: tokens.unwrap_or(u64::MAX),
        }
    }
}

impl Pool {
    /// A pool of the deployments `(name, weight)`, in this order, with its
    /// random draws from entropy. `None` when there is none. A weight of 0
    /// counts as 1 (the configuration refuses it anyway).
    pub fn new(targets: impl IntoIterator<Item = (String, u32)>) -> Option<Self> {
        Self::with_rng(targets, fastrand::Rng::new())
    }

    /// As [`Pool::new`], drawing from `rng`: seeded, for tests and benches.
    pub fn with_rng(targets: impl IntoIterator<Item = (String, u32)>, rng: fastrand::Rng) -> Option<Self> {
        let (names, targets): (Vec<String>, Vec<TargetState>) = targets
            .into_iter()
            .map(|(name, weight)| {
                let state = TargetState {
                    weight: u64::from(weight.max(1)),
                    throttled_until: None,
                    failing_until: None,
                    failures: 0,
                    remaining: Remaining::default(),
                    reported_at: None,
                };
                (name, state)
            })
            .unzip();
        if names.is_empty() {
            return None;
        }
        Some(Self {
            names,
            state: Mutex::new(State { targets, rng }),
        })
    }

    /// The configured name of deployment `i`, for logs and attempt records.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names.get(i).map(String::as_str)
    }

    /// Where the next attempt of a request goes. Among the deployments not
    /// cooling down at `now`: one this request has not `tried` yet if there is
    /// one; of those, the one with the most room; of equals, one at random in
    /// proportion to the weights. A tried deployment is picked again only when
    /// it is the only kind left not cooling down. The `spent` ones (out of
    /// retries for this request, or refusing it) are never picked.
    pub fn pick(&self, now: Instant, tried: &[usize], spent: &[usize]) -> Pick {
        let mut state = self.lock();
        let State { targets, rng } = &mut *state;
        let mut best: Option<(bool, Room)> = None;
        let mut chosen = 0;
        // The weight of the deployments as good as `best` so far.
        let mut equal_weight = 0;
        let mut soonest: Option<Instant> = None;
        for (i, target) in targets.iter().enumerate() {
            if spent.contains(&i) {
                continue;
            }
            if let Some(until) = target.cooling_until(now) {
                soonest = Some(soonest.map_or(until, |s| s.min(until)));
                continue;
            }
            let key = (!tried.contains(&i), target.room(now));
            if best.is_none_or(|best| key > best) {
                best = Some(key);
                chosen = i;
                equal_weight = target.weight;
            } else if best == Some(key) {
                // A weighted draw in one pass: each equal so far keeps its share.
                equal_weight += target.weight;
                if rng.u64(0..equal_weight) < target.weight {
                    chosen = i;
                }
            }
        }
        if best.is_none() {
            return match soonest {
                Some(until) => Pick::AllCooling { until },
                None => Pick::Spent,
            };
        }
        // Azure's counter will be one lower once this request reaches it: concurrent
        // requests spread before the next figure comes back.
        let target = &mut targets[chosen];
        if let Some(requests) = &mut target.remaining.requests {
            *requests = requests.saturating_sub(1);
        }
        Pick::Target(chosen)
    }

    /// Deployment `i` answered: its failure streak ends, a failure cooldown
    /// lifts, and `remaining` (from [`remaining_from`]) is its latest figure.
    pub fn report_success(&self, i: usize, now: Instant, remaining: Remaining) {
        let mut state = self.lock();
        let Some(target) = state.targets.get_mut(i) else {
            return;
        };
        target.failures = 0;
        target.failing_until = None;
        target.remaining = remaining;
        target.reported_at = Some(now);
    }

    /// Deployment `i` answered 429: it cools down for what Azure asked
    /// (`retry-after-ms`, else `retry-after`, as the caller parsed it), or
    /// [`THROTTLED_FOR`] when it asked nothing. Returns the cooldown.
    pub fn report_throttled(&self, i: usize, now: Instant, asked: Option<Duration>) -> Duration {
        let wait = asked.unwrap_or(THROTTLED_FOR).min(LONGEST_COOLDOWN);
        let mut state = self.lock();
        if let Some(target) = state.targets.get_mut(i) {
            let until = now + wait;
            target.throttled_until = Some(target.throttled_until.map_or(until, |t| t.max(until)));
            // Its last figure said there was room; the 429 says otherwise.
            target.reported_at = None;
        }
        wait
    }

    /// Deployment `i` failed (5xx, a timeout before a status, a connection
    /// error): it cools down for [`FIRST_FAILURE_COOLDOWN`], doubled for each
    /// earlier failure in a row, at most [`LONGEST_FAILURE_COOLDOWN`].
    /// Returns the cooldown.
    pub fn report_failure(&self, i: usize, now: Instant) -> Duration {
        let mut state = self.lock();
        let Some(target) = state.targets.get_mut(i) else {
            return Duration::ZERO;
        };
        target.failures = target.failures.saturating_add(1);
        let doublings = (target.failures - 1).min(5);
        let cooldown = (FIRST_FAILURE_COOLDOWN * (1 << doublings)).min(LONGEST_FAILURE_COOLDOWN);
        target.failing_until = Some(now + cooldown);
        cooldown
    }

    /// The state, even after a panic elsewhere while it was held: every
    /// update leaves it whole, so it is still good.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A pool of `weights`, named `t0`, `t1`, …, with a fixed seed.
    fn pool(weights: &[u32]) -> Pool {
        let targets = weights.iter().enumerate().map(|(i, w)| (format!("t{i}"), *w));
        Pool::with_rng(targets, fastrand::Rng::with_seed(16)).expect("not empty")
    }

    fn picked(pick: Pick) -> usize {
        match pick {
            Pick::Target(i) => i,
            Pick::AllCooling { .. } | Pick::Spent => panic!("expected a deployment, got {pick:?}"),
        }
    }

    fn room(requests: u64, tokens: u64) -> Remaining {
        Remaining {
            requests: Some(requests),
            tokens: Some(tokens),
        }
    }

    #[test]
    fn choice_follows_the_weights() {
        let pool = pool(&[3, 1]);
        let now = Instant::now();
        let mut counts = [0; 2];
        for _ in 0..4000 {
            counts[picked(pool.pick(now, &[], &[]))] += 1;
        }
        assert!((2850..=3150).contains(&counts[0]), "3:1 over 4000: {counts:?}");
    }

    #[test]
    fn equal_weights_share_evenly_among_many() {
        let pool = pool(&[1; 10]);
        let now = Instant::now();
        let mut counts = [0; 10];
        for _ in 0..10_000 {
            counts[picked(pool.pick(now, &[], &[]))] += 1;
        }
        assert!(counts.iter().all(|c| (850..=1150).contains(c)), "{counts:?}");
    }

    #[test]
    fn the_deployment_with_the_most_room_is_preferred_whatever_its_weight() {
        let pool = pool(&[100, 1]);
        let now = Instant::now();
        pool.report_success(0, now, room(10, 50_000));
        pool.report_success(1, now, room(40, 50_000));
        assert_eq!(pool.pick(now, &[], &[]), Pick::Target(1));
    }

    #[test]
    fn remaining_requests_decide_before_tokens() {
        let pool = pool(&[1, 1, 1]);
        let now = Instant::now();
        pool.report_success(0, now, room(9, 90_000));
        pool.report_success(1, now, room(10, 1_000));
        pool.report_success(2, now, room(10, 2_000));
        assert_eq!(pool.pick(now, &[], &[]), Pick::Target(2), "equal requests: more tokens");
    }

    #[test]
    fn a_deployment_out_of_tokens_comes_last() {
        let pool = pool(&[1, 1]);
        let now = Instant::now();
        pool.report_success(0, now, room(50, 0));
        pool.report_success(1, now, room(1, 10));
        assert_eq!(pool.pick(now, &[], &[]), Pick::Target(1));
    }

    #[test]
    fn a_deployment_azure_said_nothing_about_counts_as_full() {
        let pool = pool(&[1, 1]);
        let now = Instant::now();
        pool.report_success(0, now, room(500, 500_000));
        assert_eq!(pool.pick(now, &[], &[]), Pick::Target(1), "never reported");
        pool.report_success(1, now, Remaining::default());
        assert_eq!(
            pool.pick(now, &[], &[]),
            Pick::Target(1),
            "answered without the headers"
        );
    }

    #[test]
    fn a_figure_older_than_a_minute_is_forgotten() {
        let pool = pool(&[1, 1]);
        let now = Instant::now();
        pool.report_success(0, now, room(1, 100));
        pool.report_success(1, now, room(2, 100));
        let later = now + CAPACITY_FRESH_FOR;
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[picked(pool.pick(later, &[], &[]))] += 1;
        }
        assert!(counts[0] > 400 && counts[1] > 400, "by weight again: {counts:?}");
    }

    #[test]
    fn picks_count_down_the_last_figure_so_concurrent_requests_spread() {
        let pool = pool(&[1, 1]);
        let now = Instant::now();
        pool.report_success(0, now, room(3, 100));
        pool.report_success(1, now, room(2, 100));
        // 3 and 2: the first pick takes the 3, leaving 2 and 2; the next two take one each.
        let picks: Vec<usize> = (0..3).map(|_| picked(pool.pick(now, &[], &[]))).collect();
        assert_eq!(picks[0], 0);
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 1, "{picks:?}");
    }

    #[test]
    fn a_429_cools_the_deployment_down_for_what_azure_asked() {
        let now = Instant::now();
        // retry-after-ms: 1500, retry-after: 7, neither.
        for (asked, expected) in [
            (Some(Duration::from_millis(1500)), Duration::from_millis(1500)),
            (Some(7 * SECOND), 7 * SECOND),
            (None, THROTTLED_FOR),
            (Some(Duration::MAX), LONGEST_COOLDOWN),
        ] {
            let pool = pool(&[1]);
            assert_eq!(pool.report_throttled(0, now, asked), expected);
            assert_eq!(
                pool.pick(now + expected - Duration::from_millis(1), &[], &[]),
                Pick::AllCooling { until: now + expected }
            );
            assert_eq!(pool.pick(now + expected, &[], &[]), Pick::Target(0), "{asked:?}");
        }
    }

    #[test]
    fn a_429_spills_over_to_another_deployment_at_once() {
        let pool = pool(&[1, 1, 1]);
        let now = Instant::now();
        let first = picked(pool.pick(now, &[], &[]));
        pool.report_throttled(first, now, Some(55 * SECOND));
        let second = picked(pool.pick(now, &[first], &[]));
        assert_ne!(second, first);
        for _ in 0..100 {
            assert_ne!(picked(pool.pick(now, &[], &[])), first, "cooling down for everyone");
        }
    }

    #[test]
    fn all_cooling_down_names_when_the_first_frees_up() {
        let pool = pool(&[1, 1, 1]);
        let now = Instant::now();
        pool.report_throttled(0, now, Some(55 * SECOND));
        pool.report_throttled(1, now, Some(3 * SECOND));
        pool.report_failure(2, now);
        assert_eq!(pool.pick(now, &[], &[]), Pick::AllCooling { until: now + SECOND });
        assert_eq!(pool.pick(now + SECOND, &[], &[]), Pick::Target(2));
    }

    #[test]
    fn a_short_cooldown_is_waited_out() {
        let now = Instant::now();
        let until = now + 3 * SECOND;
        let max = 5 * SECOND;
        assert_eq!(decide_wait(until, now, max, None, 2 * SECOND), Wait::Sleep(3 * SECOND));
        let deadline = Some(now + 10 * SECOND);
        assert_eq!(
            decide_wait(until, now, max, deadline, 2 * SECOND),
            Wait::Sleep(3 * SECOND)
        );
        let over = now + SECOND;
        assert_eq!(
            decide_wait(now, over, max, deadline, 2 * SECOND),
            Wait::Sleep(Duration::ZERO)
        );
    }

    #[test]
    fn a_cooldown_longer_than_the_pool_wait_is_refused_at_once() {
        let now = Instant::now();
        assert_eq!(
            decide_wait(now + 55 * SECOND, now, 5 * SECOND, None, 2 * SECOND),
            Wait::Refuse {
                retry_after: 55 * SECOND
            }
        );
        assert_eq!(
            decide_wait(now + SECOND, now, Duration::ZERO, None, Duration::ZERO),
            Wait::Refuse { retry_after: SECOND },
            "POOL_MAX_WAIT_SECONDS=0 never waits"
        );
    }

    #[test]
    fn a_cooldown_that_leaves_no_time_before_the_deadline_is_refused() {
        let now = Instant::now();
        let deadline = Some(now + 4 * SECOND);
        assert_eq!(
            decide_wait(now + 3 * SECOND, now, 5 * SECOND, deadline, 2 * SECOND),
            Wait::Refuse {
                retry_after: 3 * SECOND
            }
        );
        assert_eq!(
            decide_wait(now + 2 * SECOND, now, 5 * SECOND, deadline, 2 * SECOND),
            Wait::Sleep(2 * SECOND),
            "ends just in time"
        );
        assert!(matches!(
            decide_wait(now, now, 5 * SECOND, deadline, Duration::MAX),
            Wait::Refuse { .. }
        ));
    }

    #[test]
    fn failures_back_off_doubling_up_to_30_s() {
        let pool = pool(&[1]);
        let now = Instant::now();
        let cooldowns: Vec<u64> = (0..8).map(|_| pool.report_failure(0, now).as_secs()).collect();
        assert_eq!(cooldowns, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            pool.pick(now + 29 * SECOND, &[], &[]),
            Pick::AllCooling {
                until: now + 30 * SECOND
            }
        );
    }

    #[test]
    fn a_success_resets_the_failure_back_off_and_lifts_its_cooldown() {
        let pool = pool(&[1]);
        let now = Instant::now();
        for _ in 0..4 {
            pool.report_failure(0, now);
        }
        // An attempt begun before the failures answers well: the deployment works.
        pool.report_success(0, now, Remaining::default());
        assert_eq!(pool.pick(now, &[], &[]), Pick::Target(0));
        assert_eq!(pool.report_failure(0, now), FIRST_FAILURE_COOLDOWN);
    }

    #[test]
    fn a_success_does_not_lift_a_429_cooldown() {
        let pool = pool(&[1]);
        let now = Instant::now();
        pool.report_throttled(0, now, Some(10 * SECOND));
        pool.report_success(0, now, room(5, 100));
        assert_eq!(
            pool.pick(now, &[], &[]),
            Pick::AllCooling {
                until: now + 10 * SECOND
            }
        );
    }

    #[test]
    fn deployments_this_request_tried_are_skipped_while_others_have_room() {
        let pool = pool(&[1000, 1, 1]);
        let now = Instant::now();
        for _ in 0..200 {
            assert_eq!(pool.pick(now, &[0, 2], &[]), Pick::Target(1));
        }
        pool.report_success(1, now, room(0, 0));
        assert_eq!(
            pool.pick(now, &[0, 2], &[]),
            Pick::Target(1),
            "untried first, even when full"
        );
    }

    #[test]
    fn a_tried_deployment_is_picked_again_when_no_other_is_free() {
        let pool = pool(&[1, 1]);
        let now = Instant::now();
        pool.report_failure(1, now);
        assert_eq!(pool.pick(now, &[0], &[]), Pick::Target(0));
        assert_eq!(pool.pick(now, &[0, 1], &[]), Pick::Target(0));
    }

    #[test]
    fn spent_deployments_are_never_picked_and_none_left_says_so() {
        let pool = pool(&[1000, 1, 1]);
        let now = Instant::now();
        for _ in 0..100 {
            assert_ne!(pool.pick(now, &[], &[0]), Pick::Target(0));
        }
        pool.report_throttled(2, now, Some(3 * SECOND));
        assert_eq!(
            pool.pick(now, &[], &[0, 1]),
            Pick::AllCooling {
                until: now + 3 * SECOND
            },
            "a spent deployment's room does not count"
        );
        assert_eq!(pool.pick(now, &[0, 1, 2], &[0, 1, 2]), Pick::Spent);
    }

    #[test]
    fn remaining_capacity_is_read_from_azure_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(remaining_from(&headers), Remaining::default());
        headers.insert("x-ratelimit-remaining-requests", http::HeaderValue::from_static(" 19 "));
        headers.insert("x-ratelimit-remaining-tokens", http::HeaderValue::from_static("8000"));
        assert_eq!(remaining_from(&headers), room(19, 8000));
        headers.insert("x-ratelimit-remaining-tokens", http::HeaderValue::from_static("-3"));
        headers.insert("x-ratelimit-remaining-requests", http::HeaderValue::from_static("1.5"));
        assert_eq!(remaining_from(&headers), Remaining::default());
    }

    #[test]
    fn a_pool_needs_a_deployment_and_counts_a_zero_weight_as_one() {
        assert!(Pool::new(Vec::new()).is_none());
        let pool = pool(&[0, 1]);
        let now = Instant::now();
        let zeros = (0..1000)
            .filter(|_| pool.pick(now, &[], &[]) == Pick::Target(0))
            .count();
        assert!((400..=600).contains(&zeros), "{zeros}");
        assert_eq!(pool.name(1), Some("t1"));
        assert_eq!(pool.name(2), None);
        assert_eq!(
            pool.report_failure(2, now),
            Duration::ZERO,
            "an unknown index changes nothing"
        );
    }

    #[test]
    fn a_pool_is_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Pool>();
    }
}
