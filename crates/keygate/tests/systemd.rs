//! systemd integration of the real binary: readiness, reload and stop notifications on
//! `NOTIFY_SOCKET` (a datagram socket the test listens on, as systemd does), and socket
//! activation through systemd's own `systemd-socket-activate`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keygate_test::{free_port, http_client, wait_for_status, Proc, Upstream};

fn config(upstream: &str, admin: &str, extra: &str) -> String {
    format!(
        "[server]\nadmin_listen = \"{admin}\"\n\n[upstreams.default]\nurl = \"{upstream}\"\n\n{extra}[[routes]]\nname = \"open\"\npath = \"/open\"\npublic = true\n"
    )
}

/// The next notification, as systemd would read it.
fn next_notification(socket: &UnixDatagram, proc: &Proc) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification ({e}); the node's log: {}", proc.stderr()));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn signal(proc: &Proc, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &proc.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reload_and_stop_are_told_to_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, config(&upstream.url(), &admin, "")).unwrap();
    let proc = serve(
        dir.path(),
        &file,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );

    let ready = next_notification(&socket, &proc);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means serving: the replica is loaded.
    let status = http_client()
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    // SIGHUP: RELOADING=1 with the monotonic time systemd 253+ asks for, then READY=1.
    std::fs::write(
        &file,
        config(
            &upstream.url(),
            &admin,
            "[[routes]]\nname = \"new\"\npath = \"/new\"\npublic = true\n\n",
        ),
    )
    .unwrap();
    signal(&proc, "HUP");
    let reloading = next_notification(&socket, &proc);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    let ready = next_notification(&socket, &proc);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");

    signal(&proc, "TERM");
    let stopping = next_notification(&socket, &proc);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_sockets_systemd_passes() {
    let Some(activate) = keygate_test::program("systemd-socket-activate", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (public, admin, unused) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    // The file names other addresses: the passed sockets win.
    let file = dir.path().join("keygate.toml");
    std::fs::write(
        &file,
        config(&upstream.url(), &format!("127.0.0.1:{}", free_port()), ""),
    )
    .unwrap();
    let db = dir.path().join("keygate.db");
    let proc = Proc::spawn(
        activate.to_str().unwrap(),
        &[
            "-l",
            &public,
            "-l",
            &admin,
            "--fdname=public:admin",
            "-E",
            "RUST_LOG=info",
            env!("CARGO_BIN_EXE_keygate"),
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            &unused,
        ],
        &[],
        dir.path(),
    );
    // The first connection starts keygate, which then answers it on the passed socket.
    let ready = wait_for_status(
        admin.parse().unwrap(),
        "/ready",
        200,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        ready,
        "not ready on the passed admin socket: {}",
        proc.stderr()
    );
    let resp = http_client()
        .get(format!("http://{public}/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", proc.stderr());
    // Nothing was bound at the file's or the flag's address.
    assert!(std::net::TcpStream::connect(&unused).is_err());
    drop(proc);
}

fn serve(dir: &Path, file: &Path, env: &[(&str, &str)]) -> Proc {
    let db = dir.join("keygate.db");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec![("RUST_LOG", "info")];
    all.extend_from_slice(env);
    Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            &listen,
        ],
        &all,
        dir,
    )
}

/// The shipped units (`deploy/`) are ones systemd accepts, pointed at this build's binary.
#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let Some(analyze) = keygate_test::program("systemd-analyze", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut units = Vec::new();
    for name in ["keygate.service", "keygate.socket", "keygate-admin.socket"] {
        let text = std::fs::read_to_string(deploy.join(name)).unwrap();
        let text = text.replace("/usr/local/bin/keygate", env!("CARGO_BIN_EXE_keygate"));
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let service = std::fs::read_to_string(deploy.join("keygate.service")).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(service.contains(hardening), "missing {hardening}");
    }
}
