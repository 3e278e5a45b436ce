//! Delayed tiers' memory: what a delayed WebSocket session costs a gateway while its upstream
//! sends `--rate` messages per second (1,000 by default) for longer than the delay. Run
//! through `bench/websocket-delay.sh`.
//!
//! Processes: this driver (the clients), a feed upstream (this program again, with
//! `--serve-feed`: each connection gets `--rate` messages of `--payload` bytes per second),
//! and one gateway (`keygate serve`, one worker) with a real-time plan and a plan of
//! `--delay` seconds. Rounds alternate: `--sessions` real-time sessions, then as many delayed
//! ones, each held open for the delay plus 3 s (the delayed queues full and steady), the
//! gateway's RSS read at the end of each; the figure is the difference per session and per
//! held message. Every client reads all it is sent (a delayed session must keep up too).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use keygate_core::Issuer;
use keygate_store::{Actor, NewClient, NewKey, OpenOptions, Store};
use keygate_test::process::{arg, rss_kib};
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::tokio_tungstenite::{accept_async, connect_async};
use keygate_test::{free_port, wait_for_status, Proc};

/// The feed: on every connection, `rate` messages of `payload` bytes per second, in ticks of
/// 10 ms, each message numbered.
async fn serve_feed(port_file: &Path, rate: u64, payload: usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let port = listener.local_addr().expect("upstream address").port();
    std::fs::write(port_file, port.to_string()).expect("write the upstream port");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(ws) = accept_async(stream).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / 100).max(1);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                for _ in 0..per_tick {
                    let head = format!("{n:>12} ");
                    let body = "x".repeat(payload.saturating_sub(head.len()));
                    n += 1;
                    if tx
                        .send(Message::Text(format!("{head}{body}").into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
}

fn request(addr: &str, key: &str) -> http::Request<()> {
    let mut req = format!("ws://{addr}/stream")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", key.parse().expect("key header"));
    req
}

async fn key_on(store: &Store, name: &str, plan: &str) -> String {
    let actor = Actor("bench:websocket-delay".into());
    store
        .create_client(
            &actor,
            NewClient {
                name: name.into(),
                plan: plan.into(),
                ..NewClient::default()
            },
        )
        .await
        .expect("create client");
    let (secret, material) = Issuer::default().issue();
    store
        .create_key(
            &actor,
            name,
            NewKey {
                material,
                label: "bench".into(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await
        .expect("create key");
    secret.expose().to_owned()
}

/// Opens `n` sessions with `key`, holds them for `hold` while reading everything, and returns
/// the gateway's RSS (KiB) at the end and the messages received per session per second.
async fn round(gateway: &Proc, addr: &str, key: &str, n: usize, hold: Duration) -> (u64, f64) {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, _) = connect_async(request(addr, key))
            .await
            .expect("open a session");
        let received = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = c.split();
            while let Some(Ok(m)) = rx.next().await {
                if m.is_text() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = tx.close().await;
        }));
    }
    // The last 3 s of the hold measure the delivery rate (the delayed queues are full then).
    tokio::time::sleep(hold.saturating_sub(Duration::from_secs(3))).await;
    let from = received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rate = (received.load(Ordering::Relaxed) - from) as f64 / 3.0 / n as f64;
    let rss = rss_kib(gateway.id());
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    (rss, rate)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--serve-feed") {
        let rate = arg("--rate", "1000").parse().expect("--rate N");
        let payload = arg("--payload", "200").parse().expect("--payload BYTES");
        return serve_feed(&PathBuf::from(arg("--serve-feed", "")), rate, payload).await;
    }
    let bin = arg("--bin", "target/release/keygate");
    let sessions: usize = arg("--sessions", "20").parse().expect("--sessions N");
    let rate: u64 = arg("--rate", "1000").parse().expect("--rate N");
    let payload: usize = arg("--payload", "200").parse().expect("--payload BYTES");
    let delay: u64 = arg("--delay", "10").parse().expect("--delay SECONDS");
    let rounds: usize = arg("--rounds", "2").parse().expect("--rounds N");
    let dir = tempfile::tempdir().expect("temp dir");

    let port_file = dir.path().join("upstream.port");
    let me = std::env::current_exe().expect("own path");
    let (rate_arg, payload_arg) = (rate.to_string(), payload.to_string());
    let _upstream = Proc::spawn(
        me.to_str().expect("utf-8 path"),
        &[
            "--serve-feed",
            port_file.to_str().expect("utf-8 path"),
            "--rate",
            &rate_arg,
            "--payload",
            &payload_arg,
        ],
        &[],
        dir.path(),
    );
    let started = Instant::now();
    let upstream_port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            if let Ok(p) = p.trim().parse::<u16>() {
                break p;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().expect("utf-8 path").to_owned();
    let store = Store::open(&db, OpenOptions::default())
        .await
        .expect("open store");
    let live_key = key_on(&store, "live", "live").await;
    let delayed_key = key_on(&store, "delayed", "delayed").await;
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[upstreams.feed]\nurl = \"http://127.0.0.1:{upstream_port}\"\n\n[plans.live]\n[plans.delayed]\ndelay = \"{delay}s\"\n\n[[routes]]\npath = \"/stream\"\nupstream = \"feed\"\nws = {{ mode = \"handshake\" }}\n"
        ),
    )
    .expect("write config");
    let (port, admin) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let gateway = Proc::spawn(
        &bin,
        &[
            "--db",
            &db,
            "--config",
            config.to_str().expect("utf-8 path"),
            "serve",
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
            "--workers",
            "1",
        ],
        &[("RUST_LOG", "warn")],
        dir.path(),
    );
    assert!(
        wait_for_status(
            admin_listen.parse().expect("address"),
            "/ready",
            200,
            Duration::from_secs(10)
        )
        .await,
        "gateway not ready: {}",
        gateway.stderr()
    );

    let hold = Duration::from_secs(delay + 3);
    let held = rate * delay;
    println!(
        "{sessions} sessions per round, {rate} messages/s of {payload} bytes each, delay {delay} s (about {held} messages held per delayed session), rounds alternate"
    );
    let mut diffs = Vec::new();
    for r in 0..rounds {
        let (live_rss, live_rate) = round(&gateway, &listen, &live_key, sessions, hold).await;
        let (late_rss, late_rate) = round(&gateway, &listen, &delayed_key, sessions, hold).await;
        let per_session = (late_rss as f64 - live_rss as f64) / sessions as f64;
        println!(
            "round {r}: real-time RSS {live_rss} KiB ({live_rate:.0} msg/s per session); delayed RSS {late_rss} KiB ({late_rate:.0} msg/s per session); {:.0} KiB more per delayed session, {:.0} bytes per held message",
            per_session,
            per_session * 1024.0 / held as f64
        );
        diffs.push(per_session);
    }
    diffs.sort_by(f64::total_cmp);
    println!(
        "median over {rounds} round(s): {:.0} KiB per delayed session",
        diffs[diffs.len() / 2]
    );
}
