//! A deployment for the benches: a configuration with one sport-, bookmaker- and plan-gated
//! route under rate limits, and a snapshot of `n` keys spread over 1,000 clients, built without
//! a store (the replica is what is measured, not SQLite).

use std::sync::Arc;

use keygate_core::{
    ApiKey, Client, ClientId, KeyFormat, KeyId, KeyState, LimitOverrides, ManualClock, Scope, Slug,
    Timestamp,
};
use keygate_server::config::{self, Config, Overrides};
use keygate_server::feed::Plans;
use keygate_server::gateway::Gateway;
use keygate_server::replica::Replica;
use keygate_store::Snapshot;

pub(crate) const CONFIG: &str = r#"
[keys]
prefix = "kg_"
alphabet = "base62"
length = 30
checksum = true

[upstreams.scores]
url = "http://127.0.0.1:9"

[plans.pro]
features = ["live"]
limits = { rps = 1000000, per_day = 1000000000, by = "key" }

[[routes]]
path = "/{sport}/v1/matches/{id}"
methods = ["GET"]
upstream = "scores"
scopes = ["cs2:matches:read"]
sport_param = "sport"
bookmaker = "query:bookmaker"
features = ["live"]

[profile]
credentials = ["header:X-API-Key", "bearer"]
"#;

/// 2026-11-23T00:00:00Z, a fixed start for the fake clock.
pub(crate) const T0: i64 = 1_795_392_000_000;

pub(crate) const CLIENTS: usize = 1_000;

/// A deterministic byte source, so every run builds the same keys.
pub(crate) fn seeded(mut state: u64) -> impl FnMut(&mut [u8]) {
    move |buf: &mut [u8]| {
        for b in buf {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *b = (state >> 33) as u8;
        }
    }
}

pub(crate) fn config() -> Config {
    config::load(CONFIG, "bench.toml", &Overrides::default()).expect("the bench config compiles")
}

fn client(i: usize, fill: &mut impl FnMut(&mut [u8])) -> Client {
    let slug = |s: &str| Slug::new(s).expect("a slug");
    Client {
        id: ClientId::generate_with(&mut *fill),
        name: format!("client {i}"),
        plan: "pro".into(),
        scopes: ["cs2:matches:read", "cs2:matches:list", "dota2:matches:read"]
            .iter()
            .map(|s| Scope::new(s).expect("a scope"))
            .collect(),
        sports: vec![slug("cs2"), slug("dota2")],
        bookmakers: vec![slug("bet365"), slug("pinnacle")],
        limits: LimitOverrides::default(),
        active: true,
        created_at: Timestamp::from_millis(T0),
        updated_at: Timestamp::from_millis(T0),
        parent: None,
        metadata: Default::default(),
    }
}

/// `n` active keys over [`CLIENTS`] clients, and their plaintexts.
pub(crate) fn snapshot(format: &KeyFormat, n: usize) -> (Snapshot, Vec<String>) {
    let mut fill = seeded(42);
    let clients: Vec<Client> = (0..CLIENTS).map(|i| client(i, &mut fill)).collect();
    let digester = keygate_core::Digester::plain();
    let mut plaintexts = Vec::with_capacity(n);
    let keys = (0..n)
        .map(|i| {
            let secret = format.generate_with(&mut fill);
            let key = ApiKey {
                id: KeyId::generate_with(&mut fill),
                client_id: clients[i % CLIENTS].id.clone(),
                digest: digester.digest(secret.expose()),
                hint: format.hint(&secret),
                label: String::new(),
                state: KeyState::Active,
                expires_at: None,
                created_at: Timestamp::from_millis(T0),
                rotated_at: None,
                replaced_by: None,
                last_used_at: None,
                restrictions: Default::default(),
            };
            plaintexts.push(secret.expose().to_owned());
            key
        })
        .collect();
    let snapshot = Snapshot {
        version: 1,
        clients,
        keys,
        ..Snapshot::default()
    };
    (snapshot, plaintexts)
}

/// A gateway over a replica of `n` keys, on a fake clock; the plaintexts of its keys.
#[allow(dead_code)] // Not every bench binary uses every helper.
pub(crate) fn gateway(n: usize) -> (Gateway, Arc<ManualClock>, Vec<String>) {
    let config = config();
    let (snapshot, plaintexts) = snapshot(&config.issuer.format, n);
    let replica = Arc::new(Replica::new());
    replica.load(&snapshot, &Plans(&config));
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    let gw = Gateway::new(
        config,
        replica,
        keygate_limits::Limits::local(),
        Arc::clone(&clock) as Arc<dyn keygate_core::Clock>,
    );
    (gw, clock, plaintexts)
}

/// Resident set size of this process, in bytes (Linux `/proc/self/status`).
#[allow(dead_code)] // Not every bench binary uses every helper.
pub(crate) fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
