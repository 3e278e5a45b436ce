//! What the real binary writes to its log: text logs carry no terminal escape codes unless
//! they go to a terminal, since a file or a pipe is read by people and log shippers that show
//! `\x1b[32m` as noise; the access log, buffered per worker, loses no line at a graceful stop
//! and tears none.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keygate_test::{free_port, http_client};

/// Issue 17, item 12: `--log-format text` to a pipe has no escape bytes.
#[test]
fn text_logs_to_a_pipe_have_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--log-format",
            "text",
        ])
        .args(["--listen", &listen, "--admin-listen", &admin])
        .args(["--upstream", "http://127.0.0.1:9"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the pipe on a thread; stop the node once it has logged its start.
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    let _ = tx.send(all.clone());
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = rx.recv_timeout(left).expect("the node logs its start");
        let seen = String::from_utf8_lossy(&seen);
        if seen.contains("Replica loaded.") && seen.contains("keygate is listening.") {
            break;
        }
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        text.contains("INFO")
            && text.contains("keygate is listening.")
            && text.contains("Stopped."),
        "{text}"
    );
    assert!(
        !log.contains(&0x1b),
        "escape codes in a piped log: {:?}",
        &text[..text.len().min(300)]
    );
}

/// Issue 24: the access log is buffered per worker thread (`log_writer`). A line reaches the log
/// while the node runs (the timed flush), lines written by two workers under concurrent load are
/// whole, and every request's line is in the log after SIGTERM, even the last ones'. Never the
/// key or the query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_access_lines_are_whole_prompt_and_kept_at_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        "[profile]\ncredentials = [\"header:x-api-key\", \"query:apiKey\"]\n\n\
         [guard]\nthreshold = 100000\nprefix_threshold = 100000\n\n\
         [[routes]]\nname = \"api\"\npath = \"/v1/{*rest}\"\n",
    )
    .unwrap();
    let keygate_test::Serving {
        proc: mut node,
        listen,
        ..
    } = keygate_test::serve_ready_with(
        env!("CARGO_BIN_EXE_keygate"),
        (db.to_str().unwrap(), &config),
        "http://127.0.0.1:9",
        &["--log-format", "json", "--workers", "2"],
        &[("RUST_LOG", "info")],
        dir.path(),
    )
    .await;
    let access = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter(|l| l.contains("keygate::access"))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn line ({e}): {l}")))
            .collect()
    };
    let client = http_client();
    let secret = "kg_test_notakey_0123456789abcdef";

    // One request: its line is written within the flush interval, with the node still running.
    let status = client
        .get(format!("http://{listen}/v1/first"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let deadline = Instant::now() + Duration::from_secs(10);
    while access(&node.stderr()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no access line while running: {}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Concurrent load over both workers, then SIGTERM at once: no line lost, none torn.
    let (tasks, each) = (8, 100);
    let mut running = Vec::new();
    for t in 0..tasks {
        let (client, listen) = (client.clone(), listen.clone());
        running.push(tokio::spawn(async move {
            for i in 0..each {
                let status = client
                    .get(format!(
                        "http://{listen}/v1/t{t}/r{i}?apiKey={secret}&q=private"
                    ))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 401);
            }
        }));
    }
    for r in running {
        r.await.unwrap();
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = node
        .wait_exit(Duration::from_secs(30))
        .expect("the node stops");
    let log = node.stderr();
    assert!(status.success(), "{status:?}: {log}");
    let lines = access(&log);
    assert_eq!(lines.len(), 1 + tasks * each, "access lines lost: {log}");
    for line in &lines {
        assert_eq!(line["fields"]["message"], "Request.", "{line}");
        assert_eq!(line["fields"]["status"], 401, "{line}");
        assert_eq!(line["fields"]["route"], "api", "{line}");
        assert!(line["fields"]["latency_us"].is_u64(), "{line}");
    }
    assert!(!log.contains(secret) && !log.contains("private"), "{log}");
    assert!(log.contains("Stopped."), "{log}");
}
