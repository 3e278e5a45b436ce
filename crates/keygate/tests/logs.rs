//! What the real binary writes to its log: text logs carry no terminal escape codes unless
//! they go to a terminal, since a file or a pipe is read by people and log shippers that show
//! `\x1b[32m` as noise.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keygate_test::free_port;

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
