//! Graceful shutdown of the real binary: on SIGTERM it stops accepting at once, lets an
//! in-flight request finish within `shutdown_grace`, closes WebSocket sessions with a close
//! frame that says why, and exits cleanly; past the grace the request is cut and the process
//! still exits.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use keygate_core::{Clock, SystemClock, Timestamp};
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use keygate_test::{
    free_port, http_client, json_output, wait_for_status, Proc, Upstream, WsUpstream,
};

struct Gateway {
    proc: Proc,
    listen: String,
}

async fn serve(dir: &Path, upstream: &str, grace: &str) -> Gateway {
    let config = format!(
        "[server]\nshutdown_grace = \"{grace}\"\n\n[upstreams.default]\nurl = \"{upstream}\"\n\n\
         [[routes]]\nname = \"slow\"\npath = \"/slow/{{ms}}\"\npublic = true\n"
    );
    serve_with(dir, &config).await
}

async fn serve_with(dir: &Path, config_text: &str) -> Gateway {
    let (port, admin) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let config = dir.join("keygate.toml");
    std::fs::write(&config, config_text).unwrap();
    let db = dir.join("keygate.db");
    let proc = Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
        ],
        &[("RUST_LOG", "info")],
        dir,
    );
    let ready = wait_for_status(
        admin_listen.parse().unwrap(),
        "/ready",
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(ready, "gateway did not become ready: {}", proc.stderr());
    Gateway { proc, listen }
}

/// Runs the CLI on the store at `db` and returns its JSON answer.
fn cli(db: &Path, args: &[&str]) -> serde_json::Value {
    json_output(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--json", "--db", db.to_str().unwrap()])
            .args(args),
    )
}

fn sigterm(proc: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts `GET /slow/{ms}` and waits until the upstream has it (the request is in flight).
async fn in_flight(
    g: &Gateway,
    upstream: &Upstream,
    ms: u64,
) -> tokio::task::JoinHandle<Result<(u16, String), String>> {
    let url = format!("http://{}/slow/{ms}", g.listen);
    let slow = tokio::spawn(async move {
        let resp = http_client()
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    });
    let started = Instant::now();
    while upstream.request_count() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let mut g = serve(dir.path(), &upstream.url(), "10s").await;
    let slow = in_flight(&g, &upstream, 1500).await;

    let signalled = Instant::now();
    sigterm(&g.proc);
    // New connections are refused once the listeners close, well before the request ends.
    let mut refused = false;
    while signalled.elapsed() < Duration::from_secs(1) {
        if tokio::net::TcpStream::connect(&g.listen).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting after SIGTERM");

    // The in-flight request completes normally.
    let (status, body) = slow.await.unwrap().expect("the in-flight request finishes");
    assert_eq!((status, body.as_str()), (200, "slow"));
    let status = g
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("the gateway exits after draining");
    assert!(status.success(), "{status:?}: {}", g.proc.stderr());
    assert!(
        signalled.elapsed() >= Duration::from_millis(1000),
        "exited before the request finished"
    );
    let log = g.proc.stderr();
    assert!(
        log.contains("Stopping") && log.contains("Stopped."),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_the_gateway_exits_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let mut g = serve(dir.path(), &upstream.url(), "300ms").await;
    let slow = in_flight(&g, &upstream, 10_000).await;
    let signalled = Instant::now();
    sigterm(&g.proc);
    let status = g
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("the gateway exits at the end of the grace");
    assert!(status.success(), "{status:?}: {}", g.proc.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(
        slow.await.unwrap().is_err(),
        "a request past the grace is cut"
    );
    assert!(g.proc.stderr().contains("shutdown grace"));
}

/// The close frame a client receives, or what came instead.
async fn close_frame(c: &mut WsClient) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (u16::from(f.code), f.reason.to_string())
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

type WsClient = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websocket_sessions_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let up = WsUpstream::start().await;
    let config = format!(
        r#"
[server]
shutdown_grace = "5s"

[upstreams.live]
url = "{ws}"

[[routes]]
path = "/v1/stream"
upstream = "live"
ws = {{ mode = "handshake" }}

[[routes]]
path = "/ws"
upstream = "live"
ws = {{ mode = "login_message" }}

[profile.ws.close.going_away]
code = 1001
reason = "Server restarting, reconnect shortly"
"#,
        ws = up.url()
    );
    let db = dir.path().join("keygate.db");
    let cli = |args: &[&str]| cli(&db, args);
    cli(&["client", "create", "Acme"]);
    let key = cli(&["key", "create", "--client", "Acme"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut g = serve_with(dir.path(), &config).await;

    // One session relaying to the upstream, one still waiting for its login message.
    let mut req = format!("ws://{}/v1/stream", g.listen)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    let (mut live, _) = connect_async(req).await.expect("the session opens");
    live.send(Message::text("hello")).await.unwrap();
    // The upstream registers the connection once its side of the handshake is done, which
    // may be after the gateway's 101 reached the client.
    up.wait_connections(1, Duration::from_secs(5)).await[0]
        .wait_received(1, Duration::from_secs(5))
        .await;
    let (mut waiting, _) = connect_async(format!("ws://{}/ws", g.listen))
        .await
        .expect("the login-message upgrade needs no key");

    let signalled = Instant::now();
    sigterm(&g.proc);
    for c in [&mut live, &mut waiting] {
        assert_eq!(
            close_frame(c).await,
            (1001, "Server restarting, reconnect shortly".to_owned())
        );
    }
    // The upstream side is closed too, not left dangling.
    assert!(
        up.connections()[0]
            .wait_closed(Duration::from_secs(5))
            .await
            .is_some(),
        "the upstream WebSocket is closed"
    );
    let status = g
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("the gateway exits once its sessions are closed");
    assert!(status.success(), "{status:?}: {}", g.proc.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "waited for the grace instead of closing the sessions: {:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_usage_and_last_use_that_no_periodic_flush_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    // An hour between flushes: only the one at shutdown can write what this test sends.
    let config = format!(
        "[server]\nusage_flush = \"1h\"\n\n[upstreams.default]\nurl = \"{}\"\n\n\
         [[routes]]\nname = \"echo\"\npath = \"/echo/{{*rest}}\"\n",
        upstream.url()
    );
    let db = dir.path().join("keygate.db");
    let cli = |args: &[&str]| cli(&db, args);
    cli(&["client", "create", "Acme"]);
    let used = cli(&["key", "create", "--client", "Acme"]);
    let idle = cli(&["key", "create", "--client", "Acme"]);
    let key = used["key"].as_str().unwrap();
    let mut g = serve_with(dir.path(), &config).await;

    let before = SystemClock.now();
    for _ in 0..5 {
        let resp = http_client()
            .get(format!("http://{}/echo/x", g.listen))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let after = SystemClock.now();
    sigterm(&g.proc);
    let status = g.proc.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}: {}", g.proc.stderr());

    let (from, to) = (before.utc_day(), after.utc_day());
    let usage = cli(&["client", "usage", "Acme", "--from", &from, "--to", &to]);
    assert_eq!(usage["requests"], 5, "{usage}");
    let shown = cli(&["key", "show", used["id"].as_str().unwrap()]);
    let last = shown["last_used_at"].as_str().expect("a last use");
    let last = Timestamp::parse_rfc3339(last).unwrap().as_millis();
    // Shown to the second or finer; it lies within the requests' window.
    let (before, after) = (before.as_millis(), after.as_millis());
    assert!(
        (before / 1000 * 1000..=after).contains(&last),
        "{before} <= {last} <= {after}"
    );
    let shown = cli(&["key", "show", idle["id"].as_str().unwrap()]);
    assert!(shown["last_used_at"].is_null(), "{shown}");
}

/// A gateway with a slow route and a WebSocket route, draining for `grace`.
async fn serve_busy(dir: &Path, upstream: &Upstream, ws: &WsUpstream, grace: &str) -> Gateway {
    let config = format!(
        r#"
[server]
shutdown_grace = "{grace}"

[upstreams.default]
url = "{upstream}"

[upstreams.live]
url = "{ws}"

[[routes]]
name = "slow"
path = "/slow/{{ms}}"
public = true

[[routes]]
path = "/v1/stream"
upstream = "live"
ws = {{ mode = "login_message" }}
"#,
        upstream = upstream.url(),
        ws = ws.url()
    );
    serve_with(dir, &config).await
}

/// A keep-alive connection that has had its answer and now sits idle, held by the client.
async fn idle_keep_alive(listen: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
    c.write_all(b"GET /slow/1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"slow") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    c
}

/// Whether the server closed `c` within `within` (a read returns end of file or an error).
async fn closed_by_server(c: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, c.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Issue 17, item 14: whatever is busy at SIGTERM (an idle keep-alive connection held open
/// by its client, a connection that has sent nothing, a slow upstream answer in flight, a
/// WebSocket session whose client reads nothing), the process exits within the grace, plus
/// a margin for a busy machine, and cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_whatever_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let ws = WsUpstream::start().await;
    let grace = Duration::from_secs(3);
    let mut g = serve_busy(dir.path(), &upstream, &ws, "3s").await;

    let mut idle = idle_keep_alive(&g.listen).await;
    let mut silent = tokio::net::TcpStream::connect(&g.listen).await.unwrap();
    let slow = in_flight(&g, &upstream, 60_000).await;
    // A session that never reads: the going-away close frame is never answered.
    let (_session, _) = connect_async(format!("ws://{}/v1/stream", g.listen))
        .await
        .expect("the session opens");

    let signalled = Instant::now();
    sigterm(&g.proc);
    // Idle and silent connections have nothing in flight: closed at once, not at the grace.
    assert!(
        closed_by_server(&mut idle, Duration::from_millis(1500)).await,
        "the idle keep-alive connection was kept open"
    );
    assert!(
        closed_by_server(&mut silent, Duration::from_millis(1500)).await,
        "the connection that sent nothing was kept open"
    );
    let status = g
        .proc
        .wait_exit(grace + Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s past the grace: {}", g.proc.stderr()));
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}: {}", g.proc.stderr());
    assert!(
        took < grace + Duration::from_secs(2),
        "took {took:?} for a grace of {grace:?}: {}",
        g.proc.stderr()
    );
    assert!(
        slow.await.unwrap().is_err(),
        "the request past the grace is cut"
    );
    let log = g.proc.stderr();
    assert!(log.contains("Stopped."), "{log}");
}

/// A connection that has sent nothing yet has nothing in flight: it does not hold the
/// shutdown until its header timeout or the grace (it held both, one after the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_nothing_in_flight_do_not_hold_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let mut g = serve(dir.path(), &upstream.url(), "30s").await;
    let _idle = idle_keep_alive(&g.listen).await;
    let _silent: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(tokio::net::TcpStream::connect(&g.listen).await.unwrap());
        }
        v
    };
    let signalled = Instant::now();
    sigterm(&g.proc);
    let status = g
        .proc
        .wait_exit(Duration::from_secs(40))
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}: {}", g.proc.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "waited {:?} for connections with nothing in flight (grace 30 s)",
        signalled.elapsed()
    );
}

/// "A second signal exits at once": even with a request in flight and a long grace. The
/// abandoned drain used to keep the process until the grace anyway (dropping the runtime
/// waited for the task joining the worker threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let mut g = serve(dir.path(), &upstream.url(), "30s").await;
    let _slow = in_flight(&g, &upstream, 60_000).await;
    sigterm(&g.proc);
    let started = Instant::now();
    while !g.proc.stderr().contains("Stopping") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            g.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = Instant::now();
    sigterm(&g.proc);
    let status = g
        .proc
        .wait_exit(Duration::from_secs(40))
        .expect("the gateway exits");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "took {:?} after the second signal (grace 30 s)",
        second.elapsed()
    );
    assert!(status.success(), "{status:?}");
    assert!(g.proc.stderr().contains("A second stop signal"));
}

/// A store that hangs (connections open, nothing answered) at SIGTERM: the usage writes at
/// shutdown have no answer to wait for, and used to wait for it forever. The process exits
/// within the grace all the same, saying what it could not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_while_the_store_hangs() {
    let Some(db) = keygate_test::postgres_schema("kg_shutdown").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let store_cli = |args: &[&str]| {
        json_output(
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(["--json", "--db", &db])
                .args(args),
        )
    };
    store_cli(&["migrate"]);
    store_cli(&["client", "create", "Acme"]);
    let key = store_cli(&["key", "create", "--client", "Acme"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // The node reaches PostgreSQL through a relay the test can stall.
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let base = std::env::var("KEYGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    assert!(
        base.contains("127.0.0.1:5432"),
        "the relay expects {pg}: {base}"
    );
    let relay = keygate_test::Relay::start(pg).await;
    let relayed = db.replace("127.0.0.1:5432", &relay.addr().to_string());
    let config = format!(
        "[server]\nshutdown_grace = \"2s\"\nusage_flush = \"1h\"\n\n[upstreams.default]\nurl = \"{}\"\n\n\
         [[routes]]\nname = \"echo\"\npath = \"/echo/{{*rest}}\"\n",
        upstream.url()
    );
    std::fs::write(dir.path().join("keygate.toml"), &config).unwrap();
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut proc = Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            &relayed,
            "serve",
            "--config",
            dir.path().join("keygate.toml").to_str().unwrap(),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
        ],
        &[("RUST_LOG", "info")],
        dir.path(),
    );
    assert!(
        wait_for_status(
            admin.parse().unwrap(),
            "/ready",
            200,
            Duration::from_secs(20)
        )
        .await,
        "{}",
        proc.stderr()
    );
    // Something for the shutdown to write: a use of the key, counted in memory.
    let resp = http_client()
        .get(format!("http://{listen}/echo/x"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    relay.stall();
    let signalled = Instant::now();
    sigterm(&proc);
    let status = proc
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM: {}", proc.stderr()));
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}: {}", proc.stderr());
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} for a grace of 2 s: {}",
        proc.stderr()
    );
    assert!(
        proc.stderr()
            .contains("The store did not take the last usage counts within the shutdown grace."),
        "{}",
        proc.stderr()
    );
    relay.cut();
}
