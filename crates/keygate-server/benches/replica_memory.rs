//! Replica size and load time for 1,000,000 keys: resident memory before and after
//! `Replica::load` (the snapshot it reads from is already in memory, so the growth is the
//! replica's own), divided by the number of keys; and how long the load took.
//!
//! Not a criterion bench: one load is the measurement. Run:
//! `cargo bench -p keygate-server --bench replica_memory` (`KEYS=N` to change the count).

mod support;

/// The allocator the `keygate` binary ships with, so the figures are those of the binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use keygate_server::feed::Plans;
use keygate_server::replica::Replica;

fn main() {
    // `cargo bench` passes `--bench`; a filter that names another bench skips this one.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"replica_memory".contains(a.as_str()))
    {
        return;
    }
    let n: usize = std::env::var("KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = support::config();
    let started = Instant::now();
    let (snapshot, plaintexts) = support::snapshot(&config.issuer.format, n);
    drop(plaintexts);
    let built = started.elapsed();
    let before = support::rss_bytes().unwrap_or(0);
    let replica = Replica::new();
    let started = Instant::now();
    replica.load(&snapshot, &Plans(&config));
    let load = started.elapsed();
    let after = support::rss_bytes().unwrap_or(0);
    assert_eq!(replica.key_count(), n);
    let per_key = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "replica_memory: {n} keys, {} clients: load {:.3} s, RSS +{:.1} MiB = {per_key:.0} bytes/key \
         (snapshot built in {:.2} s, not counted)",
        replica.client_count(),
        load.as_secs_f64(),
        after.saturating_sub(before) as f64 / (1024.0 * 1024.0),
        built.as_secs_f64(),
    );
}
