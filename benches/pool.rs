//! The cost of choosing a deployment (issue 16 asks that it be nothing
//! measurable: at most 1 µs for a pool of 10). Every attempt pays it once,
//! and reports back once.
//!
//!     cargo bench --no-default-features --bench pool

use std::hint::black_box;
use std::time::{Duration, Instant};

use azure_openai_image::pool::{Pick, Pool, Remaining};
use criterion::{Criterion, criterion_group, criterion_main};

fn pool_of_10() -> Pool {
    let targets = (0..10).map(|i| (format!("deployment-{i}"), 1 + i % 3));
    Pool::with_rng(targets, fastrand::Rng::with_seed(16)).expect("ten deployments")
}

fn pick(c: &mut Criterion) {
    let now = Instant::now();
    // No figures from Azure: every deployment ties and the weighted draw decides.
    let pool = pool_of_10();
    c.bench_function("pick_and_report_success/10_unreported", |b| {
        b.iter(|| {
            if let Pick::Target(i) = pool.pick(black_box(now), black_box(&[]), black_box(&[])) {
                pool.report_success(i, now, Remaining::default());
            }
        })
    });

    // Figures from Azure, two deployments cooling down, one already tried.
    let pool = pool_of_10();
    pool.report_throttled(3, now, Some(Duration::from_secs(3600)));
    pool.report_failure(7, now);
    let mut figure = 0u64;
    c.bench_function("pick_and_report_success/10_reported_2_cooling", |b| {
        b.iter(|| {
            figure = (figure + 7) % 100;
            if let Pick::Target(i) = pool.pick(black_box(now), black_box(&[5]), black_box(&[])) {
                let remaining = Remaining {
                    requests: Some(figure),
                    tokens: Some(figure * 1000),
                };
                pool.report_success(i, now, remaining);
            }
        })
    });
}

criterion_group!(benches, pick);
criterion_main!(benches);
