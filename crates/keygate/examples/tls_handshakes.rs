//! New TLS connections per second: each request on a connection of its own, with a full
//! handshake (the client offers no session to resume). Run by `bench/gateway.sh` for the
//! `*-tls-new` cases, against keygate and nginx with the same certificate (issue 24).
//!
//! wrk cannot measure this: with `Connection: close` it reconnects with the last session and
//! resumes it, so a full handshake is never repeated.
//!
//! ```sh
//! tls_handshakes --addr 127.0.0.1:18098 --ca cert.pem --keys keys.txt --concurrency 64 --seconds 8
//! ```
//!
//! Each of `--concurrency` tasks connects, completes the handshake, sends `GET /` with a random
//! key of `--keys` and `Connection: close`, and reads the answer to its end. It prints the
//! RESULT line of bench/peers.sh's wrk script (exchanges per second, latency percentiles of
//! connect-to-last-byte, answers other than 2xx, connection errors). `--warmup` seconds run
//! first and are not counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keygate_test::process::arg;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What one measured period saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    non2xx: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// One exchange on a new connection: the status code, or why there was none.
async fn exchange(
    connector: &TlsConnector,
    addr: &str,
    name: &ServerName<'static>,
    key: &str,
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name.clone(), tcp).await?;
    static TOLD: std::sync::Once = std::sync::Once::new();
    TOLD.call_once(|| {
        // What was negotiated, once: the comparison is only fair with the same parameters.
        let c = tls.get_ref().1;
        eprintln!(
            "tls_handshakes: {:?}, {:?}, {:?}, resumed: {:?}",
            c.protocol_version(),
            c.negotiated_cipher_suite().map(|s| s.suite()),
            c.negotiated_key_exchange_group().map(|g| g.name()),
            c.handshake_kind(),
        );
    });
    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    buf.clear();
    // To the end: the server closes after the answer (`Connection: close`). A peer that closes
    // without close_notify (nginx does send it) still ends the read with what came.
    match tls.read_to_end(buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e),
    }
    let status = buf
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    Ok(status)
}

/// The `p`th percentile in µs, 0 when nothing was measured.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    keygate_test::process::percentile(sorted, p / 100.0).unwrap_or(0)
}

fn main() {
    // The client's handshake costs more than the server's (it verifies the certificate): as
    // many threads as the machine has cores, so the server, not the client, is what is measured
    // wherever the cores allow. `--threads` sets another number.
    let threads: usize = arg("--threads", "0").parse().expect("--threads N");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        runtime.worker_threads(threads);
    }
    runtime
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let addr = arg("--addr", "127.0.0.1:18098");
    let ca = arg("--ca", "");
    let keys_file = arg("--keys", "");
    let concurrency: usize = arg("--concurrency", "64").parse().expect("--concurrency N");
    let seconds: f64 = arg("--seconds", "8").parse().expect("--seconds S");
    let warmup: f64 = arg("--warmup", "2").parse().expect("--warmup S");

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).expect("--ca: a PEM file") {
        roots
            .add(cert.expect("--ca: a certificate"))
            .expect("--ca: a usable certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(keygate_test::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake: no session kept to resume.
    config.resumption = Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let keys: Arc<Vec<String>> = Arc::new(if keys_file.is_empty() {
        vec!["none".to_owned()]
    } else {
        std::fs::read_to_string(&keys_file)
            .expect("--keys: a file of keys, one a line")
            .lines()
            .map(str::to_owned)
            .collect()
    });

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (connector, name, addr, keys) = (
            connector.clone(),
            name.clone(),
            addr.clone(),
            Arc::clone(&keys),
        );
        let (measuring, stop, tally) = (
            Arc::clone(&measuring),
            Arc::clone(&stop),
            Arc::clone(&tally),
        );
        tasks.push(tokio::spawn(async move {
            // xorshift: a random key per request without a shared generator.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
            let mut buf = Vec::with_capacity(1024);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = &keys[(x % keys.len() as u64) as usize];
                let started = Instant::now();
                let result = exchange(&connector, &addr, &name, key, &mut buf).await;
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(status) => {
                        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if (200..300).contains(&status) {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.non2xx.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        // The first error is told, so a broken run says why.
                        if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("tls_handshakes: {e}");
                        }
                    }
                }
            }
            tally
                .latencies_us
                .lock()
                .expect("latencies")
                .extend(latencies);
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let mut latencies = std::mem::take(&mut *tally.latencies_us.lock().expect("latencies"));
    latencies.sort_unstable();
    let ok = tally.ok.load(Ordering::Relaxed);
    let non2xx = tally.non2xx.load(Ordering::Relaxed);
    let requests = ok + non2xx;
    println!(
        "RESULT requests={requests} duration_us={} rps={:.1} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} non2xx={non2xx} sockerr={}",
        elapsed.as_micros(),
        requests as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        latencies.last().copied().unwrap_or(0),
        tally.errors.load(Ordering::Relaxed),
    );
}
