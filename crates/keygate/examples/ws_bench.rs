//! WebSocket benchmark: memory per idle session with N sessions open (10,000 by default), and
//! relayed messages per second through one gateway node. Run through `bench/websocket.sh`.
//!
//! Processes: this driver (the clients), an echo upstream (this program again, with
//! `--serve-upstream`), and `--nodes` gateway processes (`keygate serve`, handshake mode) on one
//! SQLite file. Each session holds two sockets in a gateway (client and upstream); with this
//! machine's limit of 20,000 open files per process, 10,000 sessions need two nodes.

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

/// The echo upstream: every text or binary message goes straight back.
async fn serve_upstream(port_file: &Path) {
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
            while let Some(Ok(m)) = rx.next().await {
                if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                    break;
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

async fn node(bin: &str, db: &str, config: &Path, dir: &Path, workers: &str) -> (Proc, String) {
    let (port, admin) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let proc = Proc::spawn(
        bin,
        &[
            "--db",
            db,
            "--config",
            config.to_str().expect("utf-8 path"),
            "serve",
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
            "--workers",
            workers,
        ],
        &[("RUST_LOG", "warn")],
        dir,
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
        proc.stderr()
    );
    (proc, listen)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--serve-upstream") {
        return serve_upstream(&PathBuf::from(arg("--serve-upstream", ""))).await;
    }
    let bin = arg("--bin", "target/release/keygate");
    let sessions: usize = arg("--sessions", "10000").parse().expect("--sessions N");
    let nodes: usize = arg("--nodes", "2").parse().expect("--nodes N");
    let clients: usize = arg("--clients", "32").parse().expect("--clients N");
    let seconds: u64 = arg("--seconds", "5").parse().expect("--seconds N");
    let payload: usize = arg("--payload", "64").parse().expect("--payload BYTES");
    let dir = tempfile::tempdir().expect("temp dir");

    let port_file = dir.path().join("upstream.port");
    let me = std::env::current_exe().expect("own path");
    let _upstream = Proc::spawn(
        me.to_str().expect("utf-8 path"),
        &["--serve-upstream", port_file.to_str().expect("utf-8 path")],
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
    let actor = Actor("bench:websocket".into());
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
    let (secret, material) = Issuer::default().issue();
    store
        .create_key(
            &actor,
            "bench",
            NewKey {
                material,
                label: "bench".into(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await
        .expect("create key");
    let key = secret.expose().to_owned();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[upstreams.live]\nurl = \"http://127.0.0.1:{upstream_port}\"\n\n[[routes]]\npath = \"/stream\"\nupstream = \"live\"\nws = {{ mode = \"handshake\" }}\n"
        ),
    )
    .expect("write config");

    let mut gateways = Vec::new();
    for _ in 0..nodes {
        gateways.push(node(&bin, &db, &config, dir.path(), "1").await);
    }

    // Memory: warm each node with a few sessions, then open `sessions` idle ones.
    for (_, addr) in &gateways {
        for _ in 0..10 {
            let (mut c, _) = connect_async(request(addr, &key)).await.expect("warm-up");
            c.close(None).await.expect("close");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: u64 = gateways.iter().map(|(p, _)| rss_kib(p.id())).sum();
    let opening = Instant::now();
    let mut open = Vec::with_capacity(sessions);
    let mut batch = Vec::new();
    for i in 0..sessions {
        let addr = gateways[i % nodes].1.clone();
        let key = key.clone();
        batch.push(tokio::spawn(async move {
            connect_async(request(&addr, &key)).await.map(|(c, _)| c)
        }));
        if batch.len() == 200 || i + 1 == sessions {
            for t in batch.drain(..) {
                open.push(t.await.expect("task").expect("open a session"));
            }
        }
    }
    let open_took = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: u64 = gateways.iter().map(|(p, _)| rss_kib(p.id())).sum();
    let per_session = (after.saturating_sub(before)) as f64 * 1024.0 / sessions as f64;
    println!(
        "idle sessions: {sessions} over {nodes} node(s) opened in {:.2} s; gateway RSS {} KiB -> {} KiB; {:.1} KiB per idle session",
        open_took.as_secs_f64(),
        before,
        after,
        per_session / 1024.0
    );
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Throughput: `clients` sessions on node 0, each keeping 64 messages in flight.
    let addr = gateways[0].1.clone();
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, _) = connect_async(request(&addr, &key)).await.expect("connect");
        let (mut tx, mut rx) = c.split();
        let window = Arc::new(tokio::sync::Semaphore::new(64));
        let (echoed, stop, w) = (Arc::clone(&echoed), Arc::clone(&stop), Arc::clone(&window));
        let text = "x".repeat(payload);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(permit) = w.acquire().await else { break };
                permit.forget();
                if tx.send(Message::Text(text.as_str().into())).await.is_err() {
                    break;
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                if m.is_text() {
                    echoed.fetch_add(1, Ordering::Relaxed);
                    window.add_permits(1);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = echoed.load(Ordering::Relaxed);
    let cpu_before = cpu_ticks(gateways[0].0.id());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = echoed.load(Ordering::Relaxed) - from;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(gateways[0].0.id()) - cpu_before) as f64 / 100.0;
    stop.store(true, Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    println!(
        "relay: {clients} sessions x {payload}-byte messages, 64 in flight each, {seconds} s: {:.0} echoes/s = {:.0} relayed messages/s (client->upstream + upstream->client); gateway CPU {:.2} s/s, {:.1} us per relayed message",
        rate,
        rate * 2.0,
        cpu / elapsed,
        cpu * 1e6 / (n as f64 * 2.0)
    );
    for t in tasks {
        t.abort();
    }
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    field(11) + field(12)
}
