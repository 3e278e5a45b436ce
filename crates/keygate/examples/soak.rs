//! Soak: sustained mixed load against one gateway node for a bounded time, reporting errors,
//! latency per interval and the node's memory at the start and the end. Run through
//! `bench/soak.sh`.
//!
//! The mix, per request slot: 60% valid keys, 15% unknown keys (from rotating client
//! addresses, as `X-Forwarded-For` of a trusted proxy, so the brute-force guard engages per
//! source without touching the valid callers), 15% a client whose plan allows 20 requests a
//! second (mostly 429), 10% a WebSocket session (open, 5 echoed messages, close). An "error"
//! is any answer other than the one its kind expects, or a failed connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use keygate_core::Issuer;
use keygate_store::{Actor, NewClient, NewKey, OpenOptions, Store};
use keygate_test::process::{arg, rss_kib};
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::tokio_tungstenite::{accept_async, connect_async};
use keygate_test::{free_port, http_client, wait_for_status, Proc};

/// A plain HTTP upstream (200, a small JSON body) that keeps nothing per request, and a
/// WebSocket echo upstream; both on loopback, in this process.
async fn upstreams() -> (u16, u16) {
    use hyper::service::service_fn;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http_port = http.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = http.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"{\"ok\":true}")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_port = ws.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = ws.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(ws) = accept_async(s).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(m)) = rx.next().await {
                    if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (http_port, ws_port)
}

async fn issue(store: &Store, client: &str, plan: &str) -> String {
    let actor = Actor("bench:soak".into());
    store
        .create_client(
            &actor,
            NewClient {
                name: client.into(),
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
            client,
            NewKey {
                material,
                label: "soak".into(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await
        .expect("create key");
    secret.expose().to_owned()
}

/// Counts and latencies of the current interval.
#[derive(Default)]
struct Interval {
    latencies_us: Vec<u32>,
    errors: u64,
}

#[derive(Default)]
struct Totals {
    ok: AtomicU64,
    limited: AtomicU64,
    refused: AtomicU64,
    ws_sessions: AtomicU64,
    errors: AtomicU64,
}

/// Milliseconds at the `q` quantile of latencies in µs, 0 when none.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    keygate_test::process::percentile(sorted, q).map_or(0.0, |us| f64::from(us) / 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = arg("--bin", "target/release/keygate");
    let seconds: u64 = arg("--seconds", "60").parse().expect("--seconds N");
    let concurrency: usize = arg("--concurrency", "32").parse().expect("--concurrency N");
    let report_every: u64 = arg("--every", "10").parse().expect("--every SECONDS");
    let dir = tempfile::tempdir().expect("temp dir");
    let (http_port, ws_port) = upstreams().await;

    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().expect("utf-8 path").to_owned();
    let store = Store::open(&db, OpenOptions::default())
        .await
        .expect("open store");
    let valid = issue(&store, "steady", "big").await;
    let limited = issue(&store, "bursty", "small").await;
    store.close().await;
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[upstreams.default]
url = "http://127.0.0.1:{http_port}"
[upstreams.live]
url = "http://127.0.0.1:{ws_port}"

[plans.big]
limits = {{ rps = 1000000 }}
[plans.small]
limits = {{ rps = 20, burst = 20 }}

[guard]
threshold = 20
trusted_proxies = ["127.0.0.1/32"]
# Unknown keys come from ever new sources and prefixes: the guard tracks at most this many of
# each, so its memory reaches its bound within the first minute and must then stay flat.
max_tracked = 10000

[[routes]]
path = "/stream"
upstream = "live"
ws = {{ mode = "handshake" }}

[[routes]]
path = "/api/{{*rest}}"
"#
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

    let interval = Arc::new(Mutex::new(Interval::default()));
    let totals = Arc::new(Totals::default());
    let slot = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (interval, totals, slot) = (interval.clone(), totals.clone(), slot.clone());
        let (valid, limited, listen) = (valid.clone(), limited.clone(), listen.clone());
        tasks.push(tokio::spawn(async move {
            let http = http_client();
            while Instant::now() < end {
                let n = slot.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let ok = match n % 20 {
                    0..=11 => expect(&http, &listen, &valid, None, 200, &totals).await,
                    12..=14 => {
                        let unknown = Issuer::default().issue().0.expose().to_owned();
                        let from = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
                        expect(&http, &listen, &unknown, Some(&from), 401, &totals).await
                    }
                    15..=17 => expect(&http, &listen, &limited, None, 429, &totals).await,
                    _ => websocket(&listen, &valid, &totals).await,
                };
                let us = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX);
                let mut i = interval.lock().expect("interval lock");
                i.latencies_us.push(us);
                if !ok {
                    i.errors += 1;
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    println!(
        "| t (s) | requests/s | p50 ms | p99 ms | errors | gateway RSS MiB |\n|---|---|---|---|---|---|"
    );
    let mut rss_start = 0;
    let mut t = 0;
    while t < seconds {
        tokio::time::sleep(Duration::from_secs(report_every.min(seconds - t))).await;
        t += report_every.min(seconds - t);
        let mut i = std::mem::take(&mut *interval.lock().expect("interval lock"));
        i.latencies_us.sort_unstable();
        if rss_start == 0 {
            rss_start = rss_kib(gateway.id()); // warm: after the first interval
        }
        println!(
            "| {t} | {:.0} | {:.2} | {:.2} | {} | {:.1} |",
            i.latencies_us.len() as f64 / report_every as f64,
            percentile(&i.latencies_us, 0.50),
            percentile(&i.latencies_us, 0.99),
            i.errors,
            rss_kib(gateway.id()) as f64 / 1024.0
        );
    }
    for task in tasks {
        let _ = task.await;
    }
    let rss_end = rss_kib(gateway.id());
    println!(
        "\ntotals: {} ok, {} rate-limited, {} refused (unknown key or guard), {} WebSocket sessions, {} errors",
        totals.ok.load(Ordering::Relaxed),
        totals.limited.load(Ordering::Relaxed),
        totals.refused.load(Ordering::Relaxed),
        totals.ws_sessions.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
    );
    println!(
        "gateway RSS: {:.1} MiB after the first interval (warm), {:.1} MiB at the end ({:+.1} MiB)",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        (rss_end as f64 - rss_start as f64) / 1024.0
    );
    let log = gateway.stderr();
    if log.contains("panicked") {
        println!("the gateway panicked:\n{log}");
        std::process::exit(1);
    }
}

/// One HTTP request; true when it got the status its kind expects (the guard's 429 counts as
/// expected for unknown keys).
async fn expect(
    http: &keygate_test::reqwest::Client,
    listen: &str,
    key: &str,
    from: Option<&str>,
    want: u16,
    totals: &Totals,
) -> bool {
    let mut req = http
        .get(format!("http://{listen}/api/matches"))
        .header("x-api-key", key);
    if let Some(addr) = from {
        req = req.header("x-forwarded-for", addr);
    }
    let Ok(resp) = req.send().await else {
        return false;
    };
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    match status {
        200 => totals.ok.fetch_add(1, Ordering::Relaxed),
        401 => totals.refused.fetch_add(1, Ordering::Relaxed),
        429 if want == 401 => totals.refused.fetch_add(1, Ordering::Relaxed),
        429 => totals.limited.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    // A rate-limited client gets some requests through as its allowance refills.
    status == want || (want == 429 && status == 200) || (want == 401 && status == 429)
}

/// A WebSocket session: open, five echoed messages, close.
async fn websocket(listen: &str, key: &str, totals: &Totals) -> bool {
    let mut req = format!("ws://{listen}/stream")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", key.parse().expect("key header"));
    let Ok((mut c, _)) = connect_async(req).await else {
        return false;
    };
    for i in 0..5 {
        if c.send(Message::text(format!("m{i}"))).await.is_err() {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == format!("m{i}") => {}
            _ => return false,
        }
    }
    let _ = c.close(None).await;
    totals.ws_sessions.fetch_add(1, Ordering::Relaxed);
    true
}
