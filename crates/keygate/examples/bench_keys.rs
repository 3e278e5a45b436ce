//! Seeds a SQLite store for `bench/gateway.sh`: `--clients N` clients on plan `--plan`, and one
//! key per line of `--keys FILE` (plaintexts as the peer benchmarks use them), spread over the
//! clients round-robin. Only digests and hints are stored, as for any issued key.

use std::time::Instant;

use keygate_core::key_format::hint_of;
use keygate_core::{Digester, KeyMaterial};
use keygate_store::{Actor, NewClient, NewKey, OpenOptions, Store};
use keygate_test::process::arg;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = arg("--db", "bench-keys.db");
    let file = arg("--keys", "keys.txt");
    let clients: usize = arg("--clients", "100").parse().expect("--clients N");
    let plan = arg("--plan", "bench");
    let text = std::fs::read_to_string(&file).expect("read the key file");
    let keys: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let started = Instant::now();
    let store = Store::open(&db, OpenOptions::default())
        .await
        .expect("open the store");
    let actor = Actor("bench:gateway".into());
    let names: Vec<String> = (0..clients.max(1)).map(|i| format!("bench-{i}")).collect();
    for name in &names {
        store
            .create_client(
                &actor,
                NewClient {
                    name: name.clone(),
                    plan: plan.clone(),
                    ..NewClient::default()
                },
            )
            .await
            .expect("create a client");
    }
    let digester = Digester::plain();
    for (i, key) in keys.iter().enumerate() {
        let material = KeyMaterial {
            digest: digester.digest(key),
            hint: hint_of("", key),
        };
        store
            .create_key(
                &actor,
                &names[i % names.len()],
                NewKey {
                    material,
                    label: String::new(),
                    expires_at: None,
                    restrictions: Default::default(),
                },
            )
            .await
            .expect("create a key");
    }
    store.close().await;
    eprintln!(
        "Seeded {db}: {} clients, {} keys in {:.1} s.",
        names.len(),
        keys.len(),
        started.elapsed().as_secs_f64()
    );
}
