//! TLS end to end with real handshakes and certificates generated per test (rcgen): the public
//! listener (SNI, ALPN, WebSocket over `wss://`, the handshake deadline), certificate reload
//! under load and refusal of a broken file, admin mTLS, `https://` and `wss://` upstreams, and
//! the configuration errors of bad files.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Harness;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use keygate_server::{config, Overrides};
use keygate_test::tls::{self, Issued, TestCa, TlsFront};
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::WsUpstream;
use tokio::io::AsyncReadExt;

const H2: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

/// The public listener with a default certificate (`gw`) and an SNI one (`other`); `{extra}`
/// adds tables.
const CONFIG: &str = r#"
[server.tls]
cert = "{dir}/gw.pem"
key = "{dir}/gw-key.pem"
handshake_timeout = "500ms"

[[server.tls.certificates]]
cert = "{dir}/other.pem"
key = "{dir}/other-key.pem"

{extra}

[[routes]]
name = "status"
path = "/status/{code}"
public = true

[[routes]]
name = "rest"
path = "/{*rest}"
"#;

struct Setup {
    ca: TestCa,
    gw: Issued,
    other: Issued,
    dir: tempfile::TempDir,
}

fn certificates() -> Setup {
    let ca = TestCa::new("keygate test CA");
    let dir = tempfile::tempdir().unwrap();
    let gw = ca.issue(&["gw.test"]);
    let other = ca.issue(&["other.test", "*.wild.test"]);
    gw.write(dir.path(), "gw");
    other.write(dir.path(), "other");
    ca.write_ca(dir.path());
    Setup { ca, gw, other, dir }
}

fn config(s: &Setup, extra: &str) -> String {
    CONFIG
        .replace("{extra}", extra)
        .replace("{dir}", &s.dir.path().display().to_string())
}

/// Replaces a certificate and its key the way deployment tools do: written aside, renamed in.
fn rotate(dir: &Path, stem: &str, issued: &Issued) {
    let aside = tempfile::tempdir_in(dir).unwrap();
    let (cert, key) = issued.write(aside.path(), stem);
    std::fs::rename(key, dir.join(format!("{stem}-key.pem"))).unwrap();
    std::fs::rename(cert, dir.join(format!("{stem}.pem"))).unwrap();
}

/// One anonymous GET of `path` over a fresh TLS connection to `addr`, naming `gw.test` and
/// offering `alpn`.
async fn fetch(s: &Setup, addr: SocketAddr, alpn: &[&[u8]], path: &str) -> tls::TlsAnswer {
    tls::get(addr, "gw.test", s.ca.client_config(alpn, None), path, &[])
        .await
        .unwrap()
}

/// Asks `addr` for `path` until it presents `cert`; past `within`, fails saying `what`.
async fn until_serving(
    s: &Setup,
    (addr, alpn, path): (SocketAddr, &[&[u8]], &str),
    cert: &Issued,
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    while fetch(s, addr, alpn, path).await.peer != cert.der {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(h: &Harness) -> String {
    h.http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let s = certificates();
    let h = Harness::start(&config(&s, "")).await;
    let addr = h.gateway.addr;

    let a = fetch(&s, addr, H2, "/status/200").await;
    assert_eq!((a.status, a.alpn.as_deref()), (200, Some("h2")));
    assert_eq!(a.peer, s.gw.der, "the default certificate");

    let a = fetch(&s, addr, H1, "/status/201").await;
    assert_eq!((a.status, a.alpn.as_deref()), (201, Some("http/1.1")));
    // No ALPN at all: HTTP/1.1.
    let a = tls::get(
        addr,
        "gw.test",
        s.ca.client_config(&[], None),
        "/status/202",
        &[],
    )
    .await
    .unwrap();
    assert_eq!((a.status, a.alpn), (202, None));

    for name in ["other.test", "OTHER.test", "a.wild.test"] {
        let a = tls::get(addr, name, s.ca.client_config(H2, None), "/status/200", &[])
            .await
            .unwrap();
        assert_eq!(a.peer, s.other.der, "{name}: chosen by SNI");
    }
    // A name no certificate has gets the default, which the client then refuses.
    let refused = tls::get(
        addr,
        "b.c.wild.test",
        s.ca.client_config(H2, None),
        "/",
        &[],
    )
    .await;
    assert!(
        refused.unwrap_err().contains("certificate"),
        "verified by name"
    );

    // Keys still work through TLS; /status reports the certificates.
    h.client("Acme", &[], &[], &[], "default").await;
    let (key, _) = h.key("Acme", None).await;
    let a = tls::get(
        addr,
        "gw.test",
        s.ca.client_config(H2, None),
        "/echo",
        &[("x-api-key", &key)],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let status = h.status().await;
    let certs = &status["tls"]["public"]["certificates"];
    assert_eq!(certs[0]["names"], serde_json::json!(["gw.test"]));
    assert!(certs[1]["not_after"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_plain_text_client_is_closed_at_the_handshake_deadline() {
    let s = certificates();
    let h = Harness::start(&config(&s, "")).await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed by the gateway");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(started.elapsed() < Duration::from_secs(3));
    // Plain HTTP on the TLS port gets no HTTP answer.
    let answer = common::raw_request(
        h.gateway.addr,
        "GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(!answer.contains("200"), "{answer}");
}

/// A connection kept open across a rotation, to show it goes on with its certificate.
async fn keep_alive(
    addr: std::net::SocketAddr,
    s: &Setup,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = tls::connect(addr, "gw.test", s.ca.client_config(H1, None))
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn status_on(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    let req = hyper::Request::get("/status/200")
        .header("host", "gw.test")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_rotated_under_load_fails_no_request() {
    let s = certificates();
    let h = Harness::start(&config(&s, "")).await;
    let addr = h.gateway.addr;
    let mut kept = keep_alive(addr, &s).await;
    assert_eq!(status_on(&mut kept).await, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let (done, fresh) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let new = s.ca.issue(&["gw.test"]);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, done, fresh) = (
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&done),
            Arc::clone(&fresh),
        );
        let (config, new_der) = (s.ca.client_config(H2, None), new.der.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A new connection each time: every request is a handshake.
                match tls::get(addr, "gw.test", Arc::clone(&config), "/status/200", &[]).await {
                    Ok(a) if a.status == 200 => {
                        done.fetch_add(1, Ordering::Relaxed);
                        if a.peer == new_der {
                            fresh.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(a) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", a.status)),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    rotate(s.dir.path(), "gw", &new);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        fresh.load(Ordering::Relaxed) >= 20,
        "new handshakes see the new certificate"
    );
    assert!(
        done.load(Ordering::Relaxed) > fresh.load(Ordering::Relaxed),
        "load ran before the swap too"
    );
    // The connection opened before the swap goes on.
    assert_eq!(status_on(&mut kept).await, 200);
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_tls_certificate_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("keygate_tls_certificate_reloads_total{result=\"error\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_file_is_refused_and_the_old_one_keeps_serving() {
    let s = certificates();
    let h = Harness::start(&config(&s, "")).await;
    let addr = h.gateway.addr;
    let cert_path = s.dir.path().join("gw.pem");
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&h)
        .await
        .contains("reloads_total{result=\"error\"} 1")
    {
        assert!(Instant::now() < deadline, "the watcher saw the broken file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = fetch(&s, addr, H2, "/status/200").await;
    assert_eq!(
        (a.status, &a.peer),
        (200, &s.gw.der),
        "the old certificate serves"
    );

    // What SIGHUP and the configuration reload call: the error names the file.
    let tls_state = std::sync::Arc::clone(h.gateway.gateway().tls.get().unwrap());
    let e = tls_state.reload().unwrap_err().to_string();
    assert!(e.contains(&cert_path.display().to_string()), "{e}");
    // A key that does not match its certificate is refused too, naming both files.
    let stranger = s.ca.issue(&["gw.test"]);
    std::fs::write(&cert_path, &stranger.cert_pem).unwrap();
    let e = tls_state.reload().unwrap_err().to_string();
    assert!(
        e.contains("do not belong together") && e.contains("gw-key.pem"),
        "{e}"
    );

    // A good pair is taken.
    rotate(s.dir.path(), "gw", &stranger);
    tls_state.reload().unwrap();
    let a = fetch(&s, addr, H2, "/status/200").await;
    assert_eq!(a.peer, stranger.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_and_does_not_stop_the_process() {
    let s = certificates();
    let h = Harness::start(&config(&s, "")).await;
    let new = s.ca.issue(&["gw.test"]);
    rotate(s.dir.path(), "gw", &new);
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    until_serving(
        &s,
        (h.gateway.addr, H2, "/status/200"),
        &new,
        Duration::from_secs(5),
        "SIGHUP reloaded the certificate",
    )
    .await;
}

/// What a configuration reload does with `[server.tls]`: `Tls::reconfigure` with the new
/// file's settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tls_settings_serve_new_handshakes_and_bad_ones_change_nothing() {
    let s = certificates();
    let h = Harness::start(&config(&s, "")).await;
    let addr = h.gateway.addr;
    let tls_state = std::sync::Arc::clone(h.gateway.gateway().tls.get().unwrap());
    let third = s.ca.issue(&["third.test"]);
    third.write(s.dir.path(), "third");
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Overrides::default()
    };
    let load = |text: &str| config::load(text, "new.toml", &overrides).unwrap();
    let dir = s.dir.path().display().to_string();

    // Adding a listener's TLS needs a restart; a missing file is refused; neither changes
    // what serves.
    let with_admin = load(&config(
        &s,
        &format!("[server.admin_tls]\ncert = \"{dir}/gw.pem\"\nkey = \"{dir}/gw-key.pem\"\n"),
    ));
    let e = tls_state
        .reconfigure(with_admin.tls.as_ref(), with_admin.admin_tls.as_ref())
        .unwrap_err();
    assert!(e.to_string().contains("needs a restart"), "{e}");
    let mut gone = load(&config(&s, "")).tls.unwrap();
    gone.certificates[0].cert = s.dir.path().join("gone.pem");
    let e = tls_state.reconfigure(Some(&gone), None).unwrap_err();
    assert!(e.to_string().contains("gone.pem"), "{e}");
    let a = fetch(&s, addr, H2, "/status/200").await;
    assert_eq!(a.peer, s.gw.der);

    // Another default certificate: new handshakes get it.
    let text = config(&s, "")
        .replace("/gw.pem", "/third.pem")
        .replace("/gw-key.pem", "/third-key.pem");
    let new = load(&text);
    tls_state.reconfigure(new.tls.as_ref(), None).unwrap();
    let a = tls::get(
        addr,
        "third.test",
        s.ca.client_config(H2, None),
        "/status/200",
        &[],
    )
    .await
    .unwrap();
    assert_eq!((a.status, &a.peer), (200, &third.der));
    let a = tls::get(
        addr,
        "other.test",
        s.ca.client_config(H2, None),
        "/status/200",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.peer, s.other.der, "the SNI certificate still serves");
    assert!(
        tls::get(addr, "gw.test", s.ca.client_config(H2, None), "/", &[])
            .await
            .is_err(),
        "the old default is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_run_over_wss_in_every_mode() {
    let s = certificates();
    let up = WsUpstream::start().await;
    let extra = format!(
        r#"
[upstreams.live]
url = "{}"

[[routes]]
name = "stream"
path = "/v1/stream"
upstream = "live"
ws = {{ mode = "handshake", credentials = ["header:X-API-Key"] }}

[[routes]]
name = "login"
path = "/ws"
upstream = "live"
ws = {{ mode = "login_message" }}

[[routes]]
name = "game"
path = "/game"
upstream = "live"
ws = {{ mode = "close_code", credentials = ["bearer"] }}
"#,
        up.url()
    );
    let h = Harness::start(&config(&s, &extra)).await;
    h.client("Acme", &[], &[], &[], "default").await;
    let (key, _) = h.key("Acme", None).await;
    let bearer = format!("Bearer {key}");
    for (path, header) in [
        ("/v1/stream", Some(("x-api-key", key.as_str()))),
        ("/game", Some(("authorization", bearer.as_str()))),
        ("/ws", None),
    ] {
        let stream = tls::connect(h.gateway.addr, "gw.test", s.ca.client_config(H1, None))
            .await
            .unwrap();
        let mut req = format!("wss://gw.test{path}")
            .into_client_request()
            .unwrap();
        if let Some((name, value)) = header {
            req.headers_mut().insert(name, value.parse().unwrap());
        }
        let (mut ws, _) = keygate_test::tokio_tungstenite::client_async(req, stream)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        if header.is_none() {
            let login = format!(r#"{{"type":"login","apiKey":"{key}"}}"#);
            ws.send(Message::Text(login.into())).await.unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
            let reply = reply.unwrap().unwrap().unwrap();
            assert!(reply.to_text().unwrap().contains("ok"), "{path}: {reply:?}");
        }
        ws.send(Message::Text("hello over tls".into()))
            .await
            .unwrap();
        let echoed = loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if m.is_text() && m.to_text().unwrap() == "hello over tls" {
                break m;
            }
        };
        assert_eq!(echoed.to_text().unwrap(), "hello over tls", "{path}");
        ws.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_requires_a_client_certificate_and_the_public_one_does_not() {
    let s = certificates();
    let extra = format!(
        r#"
[server.admin_tls]
cert = "{dir}/gw.pem"
key = "{dir}/gw-key.pem"
client_ca = "{dir}/ca.pem"
"#,
        dir = s.dir.path().display()
    );
    let h = Harness::start(&config(&s, &extra)).await;
    let admin = h.gateway.admin_addr;
    let operator = s.ca.issue(&["operator"]);
    let a = tls::get(
        admin,
        "gw.test",
        s.ca.client_config(H1, Some(&operator)),
        "/health",
        &[],
    )
    .await
    .unwrap();
    assert_eq!((a.status, a.alpn.as_deref()), (200, Some("http/1.1")));

    let anonymous = tls::get(
        admin,
        "gw.test",
        s.ca.client_config(H1, None),
        "/health",
        &[],
    )
    .await;
    assert!(anonymous.is_err(), "no client certificate: refused");
    let stranger_ca = TestCa::new("another CA");
    let stranger = stranger_ca.issue(&["operator"]);
    let foreign = tls::get(
        admin,
        "gw.test",
        s.ca.client_config(H1, Some(&stranger)),
        "/health",
        &[],
    )
    .await;
    assert!(foreign.is_err(), "a certificate of another CA: refused");
    // The public listener asks for none.
    let a = fetch(&s, h.gateway.addr, H1, "/status/200").await;
    assert_eq!(a.status, 200);
}

/// The admin listener's client CA is watched like the certificates: once the file holds
/// another CA, new handshakes are verified against it (SIGHUP and a configuration reload call
/// the same `reload`); a broken file is refused, naming it, and the previous CA keeps
/// verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_client_ca_is_reloaded_and_a_broken_one_refused() {
    let s = certificates();
    let extra = format!(
        r#"
[server.admin_tls]
cert = "{dir}/gw.pem"
key = "{dir}/gw-key.pem"
client_ca = "{dir}/operators.pem"
"#,
        dir = s.dir.path().display()
    );
    let ca_path = s.dir.path().join("operators.pem");
    let (ca1, ca2) = (TestCa::new("operators 1"), TestCa::new("operators 2"));
    std::fs::write(&ca_path, &ca1.pem).unwrap();
    let h = Harness::start(&config(&s, &extra)).await;
    let admin = h.gateway.admin_addr;
    let (one, two) = (ca1.issue(&["operator"]), ca2.issue(&["operator"]));
    let admitted = |operator: &Issued| {
        let config = s.ca.client_config(H1, Some(operator));
        async move {
            tls::get(admin, "gw.test", config, "/health", &[])
                .await
                .is_ok_and(|a| a.status == 200)
        }
    };
    assert!(admitted(&one).await, "CA 1's operator");
    assert!(!admitted(&two).await, "CA 2's operator, before the change");

    // Written aside and renamed in, as deployment tools do; the watcher takes it.
    let aside = tempfile::tempdir_in(s.dir.path()).unwrap();
    std::fs::write(aside.path().join("operators.pem"), &ca2.pem).unwrap();
    std::fs::rename(aside.path().join("operators.pem"), &ca_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !admitted(&two).await {
        assert!(Instant::now() < deadline, "the new client CA was not taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!admitted(&one).await, "CA 1's operator, after the change");

    let tls_state = Arc::clone(h.gateway.gateway().tls.get().unwrap());
    for broken in [
        "-----BEGIN CERTIFICATE-----\nbroken\n".to_owned(),
        two.key_pem.clone(),
    ] {
        std::fs::write(&ca_path, broken).unwrap();
        let e = tls_state.reload().unwrap_err().to_string();
        assert!(e.contains(&ca_path.display().to_string()), "{e}");
        assert!(admitted(&two).await, "CA 2 keeps verifying");
        assert!(!admitted(&one).await);
    }
    // Back to CA 1 through the same reload: taken.
    std::fs::write(&ca_path, &ca1.pem).unwrap();
    tls_state.reload().unwrap();
    assert!(admitted(&one).await && !admitted(&two).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_upstreams_are_verified_against_their_ca() {
    let s = certificates();
    let upstream_ca = TestCa::new("upstream CA");
    let up_cert = upstream_ca.issue(&["localhost"]);
    let up_dir = tempfile::tempdir().unwrap();
    let up_ca_path = upstream_ca.write_ca(up_dir.path());
    let ws = WsUpstream::start().await;
    // The plain test upstreams behind TLS fronts.
    let plain = keygate_test::Upstream::start().await;
    let front = TlsFront::start(up_cert.server_config(), plain.addr()).await;
    let ws_front = TlsFront::start(up_cert.server_config(), ws.addr()).await;
    let extra = format!(
        r#"
[upstreams.secure]
url = "https://localhost:{port}"
ca_file = "{ca}"

[upstreams.wrong_ca]
url = "https://localhost:{port}"
ca_file = "{dir}/ca.pem"

[upstreams.wrong_name]
url = "https://127.0.0.1:{port}"
ca_file = "{ca}"

[upstreams.live]
url = "https://localhost:{ws_port}"
ca_file = "{ca}"

[[routes]]
name = "secure"
path = "/secure/{{*rest}}"
upstream = "secure"
public = true

[[routes]]
name = "wrong_ca"
path = "/wrong_ca/{{*rest}}"
upstream = "wrong_ca"
public = true

[[routes]]
name = "wrong_name"
path = "/wrong_name/{{*rest}}"
upstream = "wrong_name"
public = true

[[routes]]
name = "stream"
path = "/v1/stream"
upstream = "live"
ws = {{ mode = "handshake", credentials = ["header:X-API-Key"] }}
"#,
        port = front.addr.port(),
        ws_port = ws_front.addr.port(),
        ca = up_ca_path.display(),
        dir = s.dir.path().display(),
    );
    let h = Harness::start(&config(&s, &extra)).await;
    let client = s.ca.client_config(H2, None);
    let a = tls::get(
        h.gateway.addr,
        "gw.test",
        Arc::clone(&client),
        "/secure/hello",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(plain.requests().iter().any(|r| r.uri == "/secure/hello"));
    for path in ["/wrong_ca/hello", "/wrong_name/hello"] {
        let a = tls::get(h.gateway.addr, "gw.test", Arc::clone(&client), path, &[])
            .await
            .unwrap();
        assert_eq!(a.status, 502, "{path}: {}", a.body);
        assert!(
            a.body.contains("upstream_unavailable"),
            "{path}: {}",
            a.body
        );
    }
    assert_eq!(
        plain.requests().len(),
        1,
        "nothing reached the upstream unverified"
    );

    // wss:// to the upstream, under wss:// from the client.
    let stream = tls::connect(h.gateway.addr, "gw.test", s.ca.client_config(H1, None))
        .await
        .unwrap();
    h.client("Acme", &[], &[], &[], "default").await;
    let (key, _) = h.key("Acme", None).await;
    let mut req = "wss://gw.test/v1/stream".into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    let (mut session, _) = keygate_test::tokio_tungstenite::client_async(req, stream)
        .await
        .unwrap();
    session
        .send(Message::Text("through two tls hops".into()))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), session.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.to_text().unwrap(), "through two tls hops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_requires_a_client_certificate_gets_the_configured_one() {
    let s = certificates();
    let upstream_ca = TestCa::new("upstream CA");
    let up_dir = tempfile::tempdir().unwrap();
    let up_ca_path = upstream_ca.write_ca(up_dir.path());
    let (cert, key) = s.ca.issue(&["keygate"]).write(up_dir.path(), "keygate");
    let plain = keygate_test::Upstream::start().await;
    let front = TlsFront::start(
        upstream_ca
            .issue(&["localhost"])
            .server_config_requiring(&s.ca),
        plain.addr(),
    )
    .await;
    let extra = format!(
        r#"
[upstreams.with_cert]
url = "https://localhost:{port}"
ca_file = "{ca}"
client_cert = "{cert}"
client_key = "{key}"

[upstreams.without_cert]
url = "https://localhost:{port}"
ca_file = "{ca}"

[[routes]]
name = "with_cert"
path = "/with/{{*rest}}"
upstream = "with_cert"
public = true

[[routes]]
name = "without_cert"
path = "/without/{{*rest}}"
upstream = "without_cert"
public = true
"#,
        port = front.addr.port(),
        ca = up_ca_path.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let h = Harness::start(&config(&s, &extra)).await;
    let client = s.ca.client_config(H1, None);
    let a = tls::get(
        h.gateway.addr,
        "gw.test",
        Arc::clone(&client),
        "/with/x",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let a = tls::get(h.gateway.addr, "gw.test", client, "/without/x", &[])
        .await
        .unwrap();
    assert_eq!(a.status, 502, "{}", a.body);
    let uris: Vec<String> = plain.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(uris, ["/with/x"]);
}

#[test]
fn bad_certificate_files_are_reported_with_their_lines() {
    let s = certificates();
    let dir = s.dir.path().display().to_string();
    let file = s.dir.path().join("keygate.toml");
    let file = file.to_str().unwrap();
    let missing = r#"
[server.tls]
cert = "missing.pem"
key = "gw-key.pem"
"#;
    let e = config::load(missing, file, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "{file}:3: server.tls.cert: cannot read `{dir}/missing.pem`"
        )),
        "relative to the file's directory, with its line: {e}"
    );

    let swapped = r#"
[server.admin_tls]
cert = "gw-key.pem"
key = "gw.pem"
"#;
    let e = config::load(swapped, file, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":3: server.admin_tls.cert:") && e.contains("holds no certificate"),
        "{e}"
    );
    assert!(
        e.contains(":4: server.admin_tls.key:") && e.contains("holds no private key"),
        "{e}"
    );

    let mismatched = r#"
[server.tls]
cert = "gw.pem"
key = "other-key.pem"
"#;
    let e = config::load(mismatched, file, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not belong together"), "{e}");

    let upstream = r#"
[upstreams.a]
url = "https://localhost:1"
ca_file = "nowhere.pem"

[upstreams.b]
url = "http://localhost:1"
ca_file = "ca.pem"
"#;
    let e = config::load(upstream, file, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2: upstream `a`: cannot read") && e.contains("nowhere.pem"),
        "{e}"
    );
    assert!(
        e.contains(":6: upstream `b`: ca_file, client_cert and client_key are for https://"),
        "{e}"
    );

    let limits = r#"
[limits]
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
redis_ca_file = "ca.pem"
"#;
    let e = config::load(limits, file, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2: limits.redis_ca_file is for rediss:// URLs"),
        "{e}"
    );
    let limits = limits
        .replace("redis://", "rediss://")
        .replace("ca.pem", "gw-key.pem");
    let e = config::load(&limits, file, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("limits.redis_ca_file:") && e.contains("holds no certificate"),
        "{e}"
    );

    let good = config(&s, "");
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Overrides::default()
    };
    config::load(&good, file, &overrides).unwrap();
}

/// A configuration reload applies the listener's new certificate files at once, refuses
/// files it cannot use (the old certificates keep serving), and names turning TLS off as
/// needing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_swaps_certificate_files_and_refuses_unusable_ones() {
    let s = certificates();
    let h = Harness::start(&config(&s, "")).await;
    let addr = h.gateway.addr;
    let next = s.ca.issue(&["gw.test"]);
    next.write(s.dir.path(), "next");

    // The default certificate now comes from other files.
    h.rewrite_config(
        &config(&s, "")
            .replace("/gw.pem", "/next.pem")
            .replace("/gw-key.pem", "/next-key.pem"),
    );
    let reloaded = h.gateway.reload("test").await.unwrap();
    assert!(reloaded.restart_required.is_empty(), "{reloaded:?}");
    let a = fetch(&s, addr, H2, "/status/200").await;
    assert_eq!(a.peer, next.der, "the reloaded file's certificate");

    // A file that holds no certificate: refused, naming it; the served one stays.
    let broken = s.dir.path().join("broken.pem");
    std::fs::write(&broken, "not a certificate").unwrap();
    h.rewrite_config(&config(&s, "").replace(
        &format!("{}/gw.pem", s.dir.path().display()),
        &broken.display().to_string(),
    ));
    let e = h.gateway.reload("test").await.unwrap_err().to_string();
    assert!(e.contains("broken.pem"), "{e}");
    let a = fetch(&s, addr, H2, "/status/200").await;
    assert_eq!(a.peer, next.der);

    // Without [server.tls]: TLS stays on until a restart, and the answer says so.
    let plain = "[[routes]]\nname = \"rest\"\npath = \"/{*rest}\"\n";
    h.rewrite_config(plain);
    let reloaded = h.gateway.reload("test").await.unwrap();
    assert_eq!(reloaded.restart_required, ["server.tls"]);
    let a = fetch(&s, addr, H2, "/status/200").await;
    assert_eq!(a.peer, next.der);
}

/// `[portal.tls]`: the customer portal terminates TLS itself, with `Secure`, `__Host-` cookies
/// and https links, and refuses plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_listener_terminates_tls_with_secure_cookies() {
    let s = certificates();
    let extra = format!(
        r#"
[portal]
listen = "127.0.0.1:8082"

[portal.tls]
cert = "{dir}/gw.pem"
key = "{dir}/gw-key.pem"
handshake_timeout = "500ms"
"#,
        dir = s.dir.path().display()
    );
    let h = Harness::start(&config(&s, &extra)).await;
    let portal = h.gateway.portal_addr.expect("the portal listens");
    let page = fetch(&s, portal, H2, "/sign-in").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.alpn.as_deref(),
        Some("http/1.1"),
        "the portal speaks HTTP/1.1"
    );
    assert_eq!(page.peer, s.gw.der);
    let cookies: Vec<&str> = page
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        !cookies.is_empty()
            && cookies
                .iter()
                .all(|c| c.starts_with("__Host-") && c.contains("; Secure")),
        "{cookies:?}"
    );
    // Links in mails point at the https address the portal bound.
    let gw = h.gateway.gateway();
    assert_eq!(
        gw.config.portal.as_ref().unwrap().base_url,
        format!("https://{portal}")
    );

    // Plain HTTP on the TLS port gets no page.
    let plain = keygate_test::http_client()
        .get(format!("http://{portal}/sign-in"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain text was answered: {plain:?}");

    // The certificate file is watched like the other listeners'.
    let next = s.ca.issue(&["gw.test"]);
    rotate(s.dir.path(), "gw", &next);
    until_serving(
        &s,
        (portal, H1, "/sign-in"),
        &next,
        Duration::from_secs(20),
        "the portal kept its old certificate",
    )
    .await;
    let status = h.status().await;
    assert!(status["tls"]["portal"].is_object(), "{status}");
}
