//! Key-sharing detection's Redis count (`RedisLimiter::count_networks`): one pipelined round
//! trip for a batch, counts per key and hour that add up across calls (as two nodes' flushes
//! do), and the false-positive and false-negative rates of HyperLogLog counting on a synthetic
//! mix, measured against the exact count the local backend keeps.
//!
//! `cargo test -p keygate-limits --test sharing -- --nocapture` prints the rates.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{redis_url, subject, under_ci};
use keygate_core::Timestamp;
use keygate_limits::RedisLimiter;

async fn limiter() -> Option<RedisLimiter> {
    let url = redis_url();
    match RedisLimiter::connect(&url, Duration::from_secs(5)).await {
        Ok(r) => Some(r),
        Err(e) if under_ci() => panic!("Redis at {url} is unreachable under CI: {e}"),
        Err(e) => {
            eprintln!("skipping Redis test: {url} unreachable ({e})");
            None
        }
    }
}

fn hour() -> Timestamp {
    Timestamp::parse_rfc3339("2026-09-21T10:00:00Z").unwrap()
}

#[tokio::test]
async fn counts_add_up_across_flushes_in_one_round_trip_each() {
    let Some(r) = limiter().await else { return };
    let (a, b) = (subject("share-a"), subject("share-b"));
    let before = r.round_trips();
    let counts = r
        .count_networks(hour(), &[(&a, &[1, 2][..]), (&b, &[7][..])])
        .await
        .unwrap();
    assert_eq!(counts, vec![2, 1]);
    assert_eq!(r.round_trips() - before, 1, "one pipelined round trip");
    // Another node's flush: a network seen before is not counted twice.
    let counts = r
        .count_networks(hour(), &[(&a, &[2, 3][..])])
        .await
        .unwrap();
    assert_eq!(counts, vec![3]);
    // The next hour starts from zero.
    let next = Timestamp::from_millis(hour().as_millis() + 3_600_000);
    let counts = r.count_networks(next, &[(&a, &[9][..])]).await.unwrap();
    assert_eq!(counts, vec![1]);
    assert!(r.count_networks(hour(), &[]).await.unwrap().is_empty());
}

/// A small deterministic generator (xorshift64*), so the mix is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Honest keys' networks in an hour: most 1–3 (home, office, a phone), a tail of mobile users
/// up to 8.
fn honest_networks(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..=49 => 1,
        50..=74 => 2,
        75..=87 => 3,
        88..=94 => 4 + rng.below(2),
        _ => 6 + rng.below(3),
    }
}

#[tokio::test]
async fn false_positive_and_negative_rates_on_a_synthetic_mix() {
    let Some(r) = limiter().await else { return };
    const HONEST: usize = 10_000;
    const SHARED: usize = 100;
    const THRESHOLD: u64 = 10;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Each key's networks, sent as two flushes' worth (two nodes or two intervals).
    let mut keys: Vec<(String, Vec<u64>, bool)> = Vec::with_capacity(HONEST + SHARED);
    let run = subject("mix");
    for i in 0..HONEST + SHARED {
        let shared = i >= HONEST;
        let n = if shared {
            20 + rng.below(181)
        } else {
            honest_networks(&mut rng)
        };
        // Networks as the gateway numbers them: random /24s.
        let networks: HashSet<u64> = (0..n).map(|_| (1 << 48) | rng.below(1 << 24)).collect();
        keys.push((format!("{run}:{i}"), networks.into_iter().collect(), shared));
    }
    let mut estimates = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let halves: Vec<(&str, &[u64])> = chunk
            .iter()
            .map(|(k, n, _)| (k.as_str(), &n[..n.len() / 2]))
            .collect();
        r.count_networks(hour(), &halves).await.unwrap();
        let rest: Vec<(&str, &[u64])> = chunk
            .iter()
            .map(|(k, n, _)| (k.as_str(), &n[n.len() / 2..]))
            .collect();
        estimates.extend(r.count_networks(hour(), &rest).await.unwrap());
    }
    let (mut hll_fp, mut hll_fn, mut exact_fp, mut exact_fn) = (0usize, 0usize, 0usize, 0usize);
    let mut worst_error = 0f64;
    for ((_, networks, shared), &estimate) in keys.iter().zip(&estimates) {
        let exact = networks.len() as u64;
        worst_error = worst_error.max((estimate as f64 - exact as f64).abs() / exact as f64);
        match (*shared, estimate >= THRESHOLD, exact >= THRESHOLD) {
            (false, true, _) => hll_fp += 1,
            (true, false, _) => hll_fn += 1,
            _ => {}
        }
        match (*shared, exact >= THRESHOLD) {
            (false, true) => exact_fp += 1,
            (true, false) => exact_fn += 1,
            _ => {}
        }
    }
    let pct = |n: usize, of: usize| 100.0 * n as f64 / of as f64;
    eprintln!(
        "threshold {THRESHOLD}, {HONEST} honest keys (1-8 networks), {SHARED} shared (20-200): \
         Redis HLL false positives {hll_fp} ({:.2}%), false negatives {hll_fn} ({:.2}%), \
         worst relative error {:.2}%; exact local count false positives {exact_fp} ({:.2}%), \
         false negatives {exact_fn} ({:.2}%)",
        pct(hll_fp, HONEST),
        pct(hll_fn, SHARED),
        100.0 * worst_error,
        pct(exact_fp, HONEST),
        pct(exact_fn, SHARED),
    );
    assert_eq!((exact_fp, exact_fn), (0, 0));
    // HLL's standard error is 0.81%; at these sizes Redis's sparse encoding is near exact.
    assert!(pct(hll_fp, HONEST) <= 0.1, "{hll_fp} false positives");
    assert!(pct(hll_fn, SHARED) <= 1.0, "{hll_fn} false negatives");
}
