//! Limiter benchmarks: the local check with one and three limits, the GCRA step alone, and
//! the Redis round trip (skipped with a note when Redis is unreachable).
//!
//! A fake clock moves 1 ms per iteration, so the limits stay in their allowing, counting path
//! (the one every admitted request takes). Run: `cargo bench -p keygate-limits`.

use std::hint::black_box;
use std::num::NonZeroU64;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keygate_core::limit::{gcra, Limit, Window};
use keygate_core::Timestamp;
use keygate_limits::{Check, LimitKey, LocalLimiter, RedisLimiter};

const T0: i64 = 1_790_000_000_000;

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

fn checks(subject: &str, n: usize) -> Vec<Check> {
    let limits = [
        Limit::per_second(nz(1_000_000)),
        Limit::per_minute(nz(100_000_000)),
        Limit::quota(Window::Day, nz(u64::MAX)),
    ];
    limits[..n]
        .iter()
        .enumerate()
        .map(|(slot, limit)| Check::new(LimitKey::new(subject, slot as u32), *limit))
        .collect()
}

/// A fake clock: `T0` plus one millisecond per call.
fn ticker() -> impl FnMut() -> Timestamp {
    let mut ms = T0;
    move || {
        ms += 1;
        Timestamp::from_millis(ms)
    }
}

fn limits(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits");
    group.throughput(Throughput::Elements(1));

    let local = LocalLimiter::new();
    // Other subjects in the map, as on a busy node.
    for i in 0..10_000 {
        local.check(
            &checks(&format!("k:other{i}"), 3),
            Timestamp::from_millis(T0),
        );
    }
    for n in [1, 3] {
        let c = checks("k:bench", n);
        let mut now = ticker();
        group.bench_function(format!("local_check_{n}"), |b| {
            b.iter(|| black_box(local.check(black_box(&c), now())))
        });
    }

    let params = gcra::Params::new(1_000_000, Duration::from_secs(1), 1_000);
    let mut tat = None;
    let mut now = ticker();
    group.bench_function("gcra_check", |b| {
        b.iter(|| {
            let (state, next) = gcra::check_with(black_box(&params), tat, now());
            tat = next.or(tat);
            black_box(state)
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let url = std::env::var("KEYGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    match rt.block_on(RedisLimiter::connect(&url, Duration::from_secs(2))) {
        Ok(redis) => {
            for n in [1, 3] {
                let c = checks(&format!("bench:{}:{n}", std::process::id()), n);
                let mut now = ticker();
                group.bench_function(format!("redis_check_{n}"), |b| {
                    b.iter(|| {
                        let verdict = rt.block_on(redis.check(black_box(&c), now()));
                        black_box(verdict.expect("Redis answered"))
                    })
                });
            }
        }
        Err(e) => eprintln!("skipping the Redis benchmarks: {url} unreachable ({e})"),
    }
    group.finish();
}

criterion_group!(benches, limits);
criterion_main!(benches);
