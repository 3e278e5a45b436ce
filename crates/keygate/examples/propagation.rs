//! Measures how long a change takes to reach every node: starts three `keygate serve` nodes on
//! one PostgreSQL database, revokes keys one at a time, and times until each node refuses the
//! revoked key (polled through `POST /v1/keys/verify`). Run through `bench/propagation.sh`.

use std::time::{Duration, Instant};

use keygate_core::{Issuer, KeyState};
use keygate_store::{Actor, NewClient, NewKey, OpenOptions, Store};
use keygate_test::process::arg;
use keygate_test::{free_port, http_client, wait_for_status, Proc};

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    keygate_test::process::percentile(sorted, q).expect("samples")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let base = arg("--db", "postgres://postgres@127.0.0.1:5432/test");
    let changes: usize = arg("--changes", "1000").parse().expect("--changes N");
    let bin = arg("--bin", "target/release/keygate");
    let schema = format!("kg_bench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let db = format!("{base}{sep}options[search_path]={schema}");

    let store = Store::open(&db, OpenOptions::default())
        .await
        .expect("open store");
    let actor = Actor("bench:propagation".into());
    store
        .create_client(
            &actor,
            NewClient {
                name: "bench".into(),
                plan: "bench".into(),
                ..NewClient::default()
            },
        )
        .await
        .expect("create client");
    let issuer = Issuer::default();
    let mut keys = Vec::with_capacity(changes);
    for _ in 0..changes {
        let (secret, material) = issuer.issue();
        let key = store
            .create_key(
                &actor,
                "bench",
                NewKey {
                    material,
                    label: String::new(),
                    expires_at: None,
                    restrictions: Default::default(),
                },
            )
            .await
            .expect("create key");
        keys.push((secret.expose().to_owned(), key.id));
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (port, admin_port) = (free_port(), free_port());
        let listen = format!("127.0.0.1:{port}");
        let admin_listen = format!("127.0.0.1:{admin_port}");
        let log = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&log).expect("log dir");
        let proc = Proc::spawn(
            &bin,
            &[
                "--db",
                &db,
                "serve",
                "--upstream",
                "http://127.0.0.1:9",
                "--listen",
                &listen,
                "--admin-listen",
                &admin_listen,
                "--workers",
                "1",
            ],
            &[("RUST_LOG", "warn")],
            &log,
        );
        assert!(
            wait_for_status(
                admin_listen.parse().expect("addr"),
                "/ready",
                200,
                Duration::from_secs(20)
            )
            .await,
            "node {i} did not start: {}",
            proc.stderr()
        );
        nodes.push((proc, format!("http://{listen}/v1/keys/verify")));
    }

    let http = http_client();
    let mut samples = Vec::with_capacity(changes * nodes.len());
    let started = Instant::now();
    for (secret, id) in &keys {
        store
            .set_key_state(&actor, id, KeyState::Revoked)
            .await
            .expect("revoke");
        let committed = Instant::now();
        let mut waits = Vec::new();
        for (_, url) in &nodes {
            let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
            waits.push(tokio::spawn(async move {
                loop {
                    let body = serde_json::json!({ "key": secret });
                    let resp = http.post(&url).json(&body).send().await.expect("verify");
                    let doc: serde_json::Value = resp.json().await.expect("verify answer");
                    if doc["valid"] == false {
                        return committed.elapsed();
                    }
                    assert!(
                        committed.elapsed() < Duration::from_secs(5),
                        "a change did not arrive in 5 s"
                    );
                }
            }));
        }
        for w in waits {
            samples.push(w.await.expect("poller"));
        }
    }
    let total = started.elapsed();
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| changes | nodes | samples | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {changes} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        nodes.len(),
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("samples")),
    );
    eprintln!("({changes} revocations in {:.1} s)", total.as_secs_f64());
    drop(nodes);
    store.close().await;
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
}
