//! The listeners of the real binary: a second `keygate serve` on a port the first holds fails
//! to start (SO_REUSEPORT would otherwise let the kernel split the traffic between them), and
//! a process out of file descriptors backs off quietly instead of spinning and flooding its
//! log, then serves again once descriptors are freed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keygate_test::{free_port, http_client, json_output, wait_for_status, Proc, Upstream};

struct Gateway {
    proc: Proc,
    listen: String,
    admin: String,
}

/// Starts `keygate serve` on `listen` with the store at `db`; does not wait for it.
fn spawn(dir: &Path, db: &Path, upstream: &str, listen: &str, config: &str) -> Gateway {
    let admin = format!("127.0.0.1:{}", free_port());
    let file = dir.join(format!("keygate-{}.toml", free_port()));
    std::fs::write(
        &file,
        format!(
            "{config}\n[upstreams.default]\nurl = \"{upstream}\"\n\n[[routes]]\nname = \"echo\"\npath = \"/{{*rest}}\"\n"
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            listen,
            "--admin-listen",
            &admin,
        ],
        &[("RUST_LOG", "info")],
        dir,
    );
    Gateway {
        proc,
        listen: listen.to_owned(),
        admin,
    }
}

async fn ready(g: &Gateway) {
    let up = wait_for_status(
        g.admin.parse().unwrap(),
        "/ready",
        200,
        Duration::from_secs(20),
    )
    .await;
    assert!(up, "gateway did not become ready: {}", g.proc.stderr());
}

/// A client with a key in the store at `db`; returns the key.
fn issue_key(db: &Path) -> String {
    let cli = |args: &[&str]| {
        json_output(
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(["--json", "--db", db.to_str().unwrap()])
                .args(args),
        )
    };
    cli(&["client", "create", "Acme"]);
    let key = cli(&["key", "create", "--client", "Acme"]);
    key["key"].as_str().unwrap().to_owned()
}

/// One request on a new connection (so the kernel picks a listening socket each time).
async fn status(listen: &str, key: &str) -> Option<u16> {
    http_client()
        .get(format!("http://{listen}/echo/x"))
        .header("x-api-key", key)
        .header("connection", "close")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_port_fails_to_start_and_the_first_keeps_every_request() {
    let upstream = Upstream::start().await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db = one.path().join("keygate.db");
    let key = issue_key(&db);
    let listen = format!("127.0.0.1:{}", free_port());
    let first = spawn(one.path(), &db, &upstream.url(), &listen, "");
    ready(&first).await;

    // Its own store, which does not know the key: had it joined, its share would be 401s.
    let mut second = spawn(
        two.path(),
        &two.path().join("keygate.db"),
        &upstream.url(),
        &listen,
        "",
    );
    let exit = second.proc.wait_exit(Duration::from_secs(30));
    let stderr = second.proc.stderr();
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the second instance is running ({exit:?}): {stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot listen on {listen}"))
            && stderr.contains("another process is already listening there"),
        "{stderr}"
    );

    let mut answers = Vec::new();
    for _ in 0..50 {
        answers.push(status(&first.listen, &key).await);
    }
    assert!(
        answers.iter().all(|s| *s == Some(200)),
        "{answers:?}\n{}",
        first.proc.stderr()
    );
    // A restart on the same port is not held back by the first run's closed connections.
    drop(first);
    let again = spawn(one.path(), &db, &upstream.url(), &listen, "");
    ready(&again).await;
    assert_eq!(status(&again.listen, &key).await, Some(200));
}

/// CPU time (user + system) the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_gateway_backs_off_quietly_and_recovers() {
    use rustix::process::{prlimit, Pid, Resource, Rlimit};

    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let key = issue_key(&db);
    let listen = format!("127.0.0.1:{}", free_port());
    // Silent connections are held for the whole test.
    let g = spawn(
        dir.path(),
        &db,
        &upstream.url(),
        &listen,
        "[server]\nheader_read_timeout = \"120s\"\n",
    );
    ready(&g).await;
    assert_eq!(status(&g.listen, &key).await, Some(200));

    // Leave the gateway a few dozen descriptors, then open far more connections than that.
    let pid = g.proc.id();
    let limit = open_fds(pid) + 30;
    prlimit(
        Some(Pid::from_raw(i32::try_from(pid).unwrap()).unwrap()),
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .unwrap();
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(tokio::net::TcpStream::connect(&g.listen).await.unwrap());
    }
    // Until every descriptor is taken (the connections the gateway could accept).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !g.proc.stderr().contains("Too many open files") {
        assert!(
            Instant::now() < deadline,
            "the gateway never ran out of descriptors ({} open of {limit})",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Out of descriptors, it waits: a few wake-ups a second, a log line now and then.
    let (ticks, log) = (cpu_ticks(pid), g.proc.stderr().len());
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (used, logged) = (
        cpu_ticks(pid) - ticks,
        g.proc.stderr().len().saturating_sub(log),
    );
    // Clock ticks are 1/100 s: under 0.6 s of CPU over 3 s (a spinning loop takes all of it).
    assert!(
        used < 60,
        "{used} ticks of CPU in {:?} while out of descriptors",
        window.elapsed()
    );
    assert!(
        logged < 16 * 1024,
        "{logged} bytes of log in {:?}",
        window.elapsed()
    );

    // Descriptors freed: valid requests and the admin listener are answered again.
    drop(flood);
    let recovered = wait_for_status(
        g.admin.parse().unwrap(),
        "/health",
        200,
        Duration::from_secs(30),
    )
    .await;
    assert!(recovered, "the admin listener never answered again");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&g.listen, &key).await != Some(200) {
        assert!(Instant::now() < deadline, "the gateway never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        g.proc.stderr().contains("RLIMIT_NOFILE"),
        "the open-file limit is not logged at start: {}",
        g.proc.stderr()
    );
}

/// The scheduling of the task whose `/proc` directory is `dir`: its nice value and policy
/// (fields 19 and 41 of its `stat`; policy 0 is `SCHED_OTHER`, 5 `SCHED_IDLE`).
fn scheduling(dir: &Path) -> (i64, u32) {
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
    // After the name in parentheses, state is field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (fields[16].parse().unwrap(), fields[38].parse().unwrap())
}

/// The scheduling of every thread of `pid` named `name` (as truncated to 15 bytes).
fn threads(pid: u32, name: &str) -> Vec<(i64, u32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            found.push(scheduling(&dir));
        }
    }
    found
}

/// The portal renders pages on a thread of its own below the gateway's priority, so a flood of
/// page loads neither delays the gateway's workers nor the node's change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_runs_on_its_own_thread_below_the_gateway_s_priority() {
    const OTHER: u32 = 0;
    const IDLE: u32 = 5;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let key = issue_key(&db);
    for (setting, nice_above, policy) in [
        ("", 10, OTHER),
        ("priority = \"idle\"\n", 0, IDLE),
        ("priority = \"low\"\n", 10, OTHER),
        ("priority = \"normal\"\n", 0, OTHER),
    ] {
        let portal = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{}", free_port());
        let mut g = spawn(
            dir.path(),
            &db,
            &upstream.url(),
            &listen,
            &format!("[portal]\nlisten = \"{portal}\"\n{setting}"),
        );
        ready(&g).await;
        let page = http_client()
            .get(format!("http://{portal}/sign-in"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(status(&listen, &key).await, Some(200));

        // The process's main thread runs the admin API and the change feed.
        let (base, _) = scheduling(Path::new(&format!("/proc/{}", g.proc.id())));
        let workers = threads(g.proc.id(), "keygate-worker-");
        assert!(!workers.is_empty(), "no worker threads found");
        assert!(workers.iter().all(|&w| w == (base, OTHER)), "{workers:?}");
        assert_eq!(
            threads(g.proc.id(), "keygate-portal"),
            vec![((base + nice_above).min(19), policy)],
            "with `{setting}`"
        );
        g.proc.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_portal_priority_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(
        &file,
        "[portal]\nlisten = \"127.0.0.1:0\"\npriority = \"lowest\"\n\n[upstreams.default]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check-config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("portal.priority `lowest` is not `idle`, `low` or `normal`"),
        "{text}"
    );
}
