//! WebSocket benchmark: memory per idle session with N sessions open (10,000 by default), and
//! relayed messages per second through one gateway node. Run through `bench/websocket.sh`.
//!
//! Processes: this driver (the clients), an echo upstream (this program again, with
//! `--serve-upstream`), and `--nodes` gateway processes (`keygate serve`, handshake mode) on one
//! SQLite file. Each session holds two sockets in a gateway (client and upstream); with this
//! machine's limit of 20,000 open files per process, 10,000 sessions need two nodes.
//!
//! `--cases keygate,nginx --reps N`: the same measurements with nginx proxying WebSocket to the
//! same upstream (as many nginx nodes, one worker each), the cases alternating, then medians and
//! keygate / nginx ratios (issue 24). Memory and CPU count a process and its children (nginx's
//! worker).

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

/// One gateway process under test: a `keygate serve` node, or an nginx master (whose worker,
/// its child, does the relaying).
struct Gateway {
    proc: Proc,
    addr: String,
    /// nginx: stopped with SIGTERM first. Killed outright, its master leaves the worker
    /// running (and holding its WebSocket connections) after the bench ends.
    stop_with_term: bool,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.stop_with_term {
            // nginx's fast shutdown: the master stops its workers, then exits. `Proc`'s own
            // drop (SIGKILL) follows for whatever is left.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.proc.id().to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) && tree(self.proc.id()).len() > 1 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// nginx proxying WebSocket to the same echo upstream, with the same key check as keygate's
/// (the key in a `map`, 401 without it) and one worker, as each keygate node has.
fn nginx_config(dir: &Path, n: usize, port: u16, upstream_port: u16, key: &str) -> PathBuf {
    let tmp = dir.join(format!("nginx-{n}-tmp"));
    std::fs::create_dir_all(&tmp).expect("nginx temp dir");
    let t = tmp.display();
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 1;
worker_rlimit_nofile 30000;
pid {d}/nginx-{n}.pid;
error_log {d}/nginx-{n}.err warn;
events {{ worker_connections 25000; }}
http {{
  access_log off;
  client_body_temp_path {t}/body;
  proxy_temp_path {t}/proxy;
  fastcgi_temp_path {t}/fcgi;
  uwsgi_temp_path {t}/uwsgi;
  scgi_temp_path {t}/scgi;
  map $http_x_api_key $client {{
    default "";
    "{key}" "bench";
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /stream {{
      if ($client = "") {{ return 401; }}
      proxy_pass http://127.0.0.1:{upstream_port};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header X-Client-Id $client;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"#
    );
    let path = dir.join(format!("nginx-{n}.conf"));
    std::fs::write(&path, conf).expect("write the nginx config");
    path
}

async fn nginx(dir: &Path, n: usize, upstream_port: u16, key: &str) -> Gateway {
    let port = free_port();
    let conf = nginx_config(dir, n, port, upstream_port, key);
    let proc = Proc::spawn(
        "nginx",
        &[
            "-c",
            conf.to_str().expect("utf-8 path"),
            "-g",
            "daemon off;",
        ],
        &[],
        dir,
    );
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    // Ready once it answers the handshake (a plain GET without the key gets 401).
    while !wait_for_status(
        addr.parse().expect("address"),
        "/stream",
        401,
        Duration::from_millis(200),
    )
    .await
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx not ready: {}",
            proc.stderr()
        );
    }
    Gateway {
        proc,
        addr,
        stop_with_term: true,
    }
}

/// What one case measured.
#[derive(Clone, Copy, Debug)]
struct Figures {
    /// Resident memory per idle session, KiB.
    kib_per_session: f64,
    /// Relayed messages per second (client to upstream and back, each counted).
    relayed_per_s: f64,
    /// Gateway CPU (user + kernel) per relayed message, µs.
    cpu_us_per_message: f64,
}

struct Setup {
    bin: String,
    db: String,
    config: PathBuf,
    upstream_port: u16,
    key: String,
    sessions: usize,
    nodes: usize,
    clients: usize,
    seconds: u64,
    payload: usize,
}

async fn measure(case: &str, s: &Setup, dir: &Path) -> Figures {
    let mut gateways = Vec::new();
    for n in 0..s.nodes {
        gateways.push(match case {
            "keygate" => {
                let (proc, addr) = node(&s.bin, &s.db, &s.config, dir, "1").await;
                Gateway {
                    proc,
                    addr,
                    stop_with_term: false,
                }
            }
            "nginx" => nginx(dir, n, s.upstream_port, &s.key).await,
            other => panic!("unknown case {other} (keygate, nginx)"),
        });
    }
    let (key, sessions, nodes) = (&s.key, s.sessions, s.nodes);
    // Memory: warm each node with a few sessions, then open `sessions` idle ones.
    for g in &gateways {
        for _ in 0..10 {
            let (mut c, _) = connect_async(request(&g.addr, key)).await.expect("warm-up");
            c.close(None).await.expect("close");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss =
        |gateways: &[Gateway]| -> u64 { gateways.iter().map(|g| tree_rss_kib(g.proc.id())).sum() };
    let before = rss(&gateways);
    let opening = Instant::now();
    let mut open = Vec::with_capacity(sessions);
    let mut batch = Vec::new();
    for i in 0..sessions {
        let addr = gateways[i % nodes].addr.clone();
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
    let after = rss(&gateways);
    let per_session = (after.saturating_sub(before)) as f64 / sessions as f64;
    println!(
        "{case}: idle sessions: {sessions} over {nodes} node(s) opened in {:.2} s; gateway RSS {} KiB -> {} KiB; {:.1} KiB per idle session",
        open_took.as_secs_f64(),
        before,
        after,
        per_session
    );
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Throughput: `clients` sessions on node 0, each keeping 64 messages in flight.
    let (clients, payload, seconds) = (s.clients, s.payload, s.seconds);
    let addr = gateways[0].addr.clone();
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, _) = connect_async(request(&addr, key)).await.expect("connect");
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
    let gateway = gateways[0].proc.id();
    let cpu_before = tree_cpu_ticks(gateway);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = echoed.load(Ordering::Relaxed) - from;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (tree_cpu_ticks(gateway) - cpu_before) as f64 / 100.0;
    stop.store(true, Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    let cpu_us = cpu * 1e6 / (n as f64 * 2.0);
    println!(
        "{case}: relay: {clients} sessions x {payload}-byte messages, 64 in flight each, {seconds} s: {:.0} echoes/s = {:.0} relayed messages/s (client->upstream + upstream->client); gateway CPU {:.2} s/s, {:.1} us per relayed message",
        rate,
        rate * 2.0,
        cpu / elapsed,
        cpu_us
    );
    for t in tasks {
        t.abort();
    }
    drop(gateways);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Figures {
        kib_per_session: per_session,
        relayed_per_s: rate * 2.0,
        cpu_us_per_message: cpu_us,
    }
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
    // Cases run alternately, `--reps` times each: "keygate" alone, or "keygate,nginx" beside
    // nginx on the same echo upstream.
    let cases = arg("--cases", "keygate");
    let cases: Vec<&str> = cases.split(',').filter(|c| !c.is_empty()).collect();
    let reps: usize = arg("--reps", "1").parse().expect("--reps N");
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

    let setup = Setup {
        bin,
        db,
        config,
        upstream_port,
        key,
        sessions,
        nodes,
        clients,
        seconds,
        payload,
    };
    let mut results: Vec<(&str, Figures)> = Vec::new();
    for rep in 1..=reps {
        for case in &cases {
            println!("-- rep {rep}/{reps}: {case}");
            results.push((*case, measure(case, &setup, dir.path()).await));
        }
    }
    summary(&cases, &results);
}

/// Medians per case, and each case's ratios to the first (keygate / nginx as the issue's
/// goals read: messages/s >= 1.0x, memory per session <= 1.0x).
fn summary(cases: &[&str], results: &[(&str, Figures)]) {
    let median = |case: &str, f: fn(&Figures) -> f64| -> f64 {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|(c, _)| *c == case)
            .map(|(_, r)| f(r))
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!("\n| case | relayed messages/s | CPU us per message | KiB per idle session |");
    println!("|---|---:|---:|---:|");
    for case in cases {
        println!(
            "| {case} | {:.0} | {:.2} | {:.1} |",
            median(case, |r| r.relayed_per_s),
            median(case, |r| r.cpu_us_per_message),
            median(case, |r| r.kib_per_session)
        );
    }
    let Some(first) = cases.first() else { return };
    for other in cases.iter().skip(1) {
        println!(
            "\n{first} / {other}: messages/s {:.2}x, CPU per message {:.2}x, memory per idle session {:.2}x",
            median(first, |r| r.relayed_per_s) / median(other, |r| r.relayed_per_s),
            median(first, |r| r.cpu_us_per_message) / median(other, |r| r.cpu_us_per_message),
            median(first, |r| r.kib_per_session) / median(other, |r| r.kib_per_session)
        );
    }
}

/// The process ids of `pid` and its direct children (nginx's workers).
fn tree(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

fn tree_rss_kib(pid: u32) -> u64 {
    tree(pid).into_iter().map(rss_kib).sum()
}

fn tree_cpu_ticks(pid: u32) -> u64 {
    tree(pid).into_iter().map(cpu_ticks).sum()
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
