//! Self-tests of the process helpers, using `sh` as the child.
#![cfg(unix)]

use std::time::Duration;

use keygate_test::{free_port, wait_for_status, Proc, Upstream};

#[test]
fn proc_captures_output_and_env() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut proc = Proc::spawn(
        "sh",
        &["-c", "echo out $KG_TEST_VAR; echo err >&2"],
        &[("KG_TEST_VAR", "42")],
        dir.path(),
    );
    let status = proc.wait_exit(Duration::from_secs(5)).expect("sh exits");
    assert!(status.success());
    assert_eq!(proc.stdout(), "out 42\n");
    assert_eq!(proc.stderr(), "err\n");
    assert!(proc.stdout_log.starts_with(dir.path()));
}

#[test]
fn kill_stops_a_running_child() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut proc = Proc::spawn("sh", &["-c", "sleep 30"], &[], dir.path());
    assert!(proc.try_wait().is_none(), "child still running");
    proc.kill();
    assert!(proc.try_wait().is_some(), "child reaped after kill");
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("free port can be bound");
}

/// The CI failure this guards against: a port picked by `bind :0` lies in the ephemeral range,
/// where a neighbouring test's outgoing connection took it before the gateway could listen.
#[test]
fn free_port_stays_out_of_the_ephemeral_range_and_never_repeats() {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let mut seen = std::collections::HashSet::new();
    let mut held = Vec::new();
    for _ in 0..200 {
        let port = free_port();
        assert!(!(low..=high).contains(&port), "{port} is ephemeral");
        assert!(seen.insert(port), "{port} handed out twice");
        // Held ports must be skipped by the next picks, whatever the counter says. (Another
        // test binary walking the same range may have taken this one since: then it is held
        // by that process, which does as well.)
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
}

#[tokio::test]
async fn wait_for_status_sees_up_and_down_servers() {
    let up = Upstream::start().await;
    assert!(wait_for_status(up.addr(), "/status/204", 204, Duration::from_secs(2)).await);
    assert!(!wait_for_status(up.addr(), "/status/500", 200, Duration::from_millis(100)).await);
    let addr = up.addr();
    drop(up);
    assert!(!wait_for_status(addr, "/", 200, Duration::from_millis(100)).await);
}
