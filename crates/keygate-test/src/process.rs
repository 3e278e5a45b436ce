//! Helpers for tests that run the `keygate` binary as a child process.
//!
//! The binary's path comes from the caller (e.g.
//! `env!("CARGO_BIN_EXE_keygate")`), because only the binary's own crate
//! knows it. The child's stdout and stderr go to files so a failing test can
//! print them; the child is killed when its [`Proc`] is dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Distinguishes the log files of processes spawned into the same directory.
static NEXT_PROC: AtomicUsize = AtomicUsize::new(0);

/// A keygate process started by a test (the binary path comes from the
/// caller, e.g. `env!("CARGO_BIN_EXE_keygate")`, because only the binary's
/// own crate knows it). Killed and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// File receiving the child's stdout.
    pub stdout_log: PathBuf,
    /// File receiving the child's stderr.
    pub stderr_log: PathBuf,
}

/// A `keygate serve` started on two fresh loopback ports.
#[derive(Debug)]
pub struct Serving {
    pub proc: Proc,
    /// The public listener, `127.0.0.1:PORT`.
    pub listen: String,
    /// The admin listener, `127.0.0.1:PORT`.
    pub admin: String,
}

/// Starts `bin --db DB --config CONFIG serve --upstream UPSTREAM` on fresh loopback ports for
/// the public and admin listeners, with `env` and its logs in `dir`; does not wait for it.
pub fn serve(
    bin: &str,
    store: (&str, &Path),
    upstream: &str,
    env: &[(&str, &str)],
    dir: &Path,
) -> Serving {
    serve_with(bin, store, upstream, &[], env, dir)
}

/// [`serve`] with more `serve` arguments (`--workers 2`, `--log-format json`, ...).
pub fn serve_with(
    bin: &str,
    (db, config): (&str, &Path),
    upstream: &str,
    more: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> Serving {
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--db",
        db,
        "--config",
        config.to_str().expect("a UTF-8 path"),
        "serve",
        "--upstream",
        upstream,
        "--listen",
        &listen,
        "--admin-listen",
        &admin,
    ];
    args.extend_from_slice(more);
    let proc = Proc::spawn(bin, &args, env, dir);
    Serving {
        proc,
        listen,
        admin,
    }
}

/// [`serve`], then waits (30 s: a busy machine) until its admin listener answers `/ready`;
/// fails the test with the node's log otherwise.
pub async fn serve_ready(
    bin: &str,
    store: (&str, &Path),
    upstream: &str,
    env: &[(&str, &str)],
    dir: &Path,
) -> Serving {
    serve_ready_with(bin, store, upstream, &[], env, dir).await
}

/// [`serve_with`], then waits as [`serve_ready`] does.
pub async fn serve_ready_with(
    bin: &str,
    store: (&str, &Path),
    upstream: &str,
    more: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> Serving {
    let node = serve_with(bin, store, upstream, more, env, dir);
    let admin = node.admin.parse().expect("a socket address");
    assert!(
        wait_for_status(admin, "/ready", 200, Duration::from_secs(30)).await,
        "the node did not become ready: {}",
        node.proc.stderr()
    );
    node
}

impl Proc {
    /// Spawns `bin args...` with extra env vars (added to the inherited
    /// environment), stdin closed, stdout/stderr redirected to files in
    /// `log_dir`.
    ///
    /// Panics if the log files cannot be created or the binary cannot be
    /// started, which fails the calling test.
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Proc {
        let n = NEXT_PROC.fetch_add(1, Ordering::Relaxed);
        let stem = Path::new(bin)
            .file_stem()
            .map_or_else(|| "proc".into(), |s| s.to_string_lossy().into_owned());
        let stdout_log = log_dir.join(format!("{stem}-{n}.stdout.log"));
        let stderr_log = log_dir.join(format!("{stem}-{n}.stderr.log"));
        let stdout = File::create(&stdout_log).expect("create stdout log file for child process");
        let stderr = File::create(&stderr_log).expect("create stderr log file for child process");
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        Proc {
            child,
            stdout_log,
            stderr_log,
        }
    }

    /// The child's OS process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr so far (lossy UTF-8; empty if the
    /// log cannot be read).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_log)
    }

    /// Everything the child wrote to stdout so far (lossy UTF-8; empty if the
    /// log cannot be read).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_log)
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the child to exit by itself (polling every
    /// 20 ms, blocking the calling thread); returns its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the child (if still running) and reaps it.
    pub fn kill(&mut self) {
        // Errors mean the child already exited, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Runs a CLI command to completion and returns the JSON document it printed; a failure
/// fails the test with the command's stderr.
pub fn json_output(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768–60999), so no
/// outgoing connection of any process can take one between the test's pick and the server's
/// bind, which is how `bind :0, read, drop` failed (a client socket of a neighbouring test
/// got the port first). 25672 is RabbitMQ's distribution port, left alone.
const PORTS: std::ops::Range<u16> = 20_000..32_000;
const RESERVED: &[u16] = &[25_672];

/// The next candidate offset into [`PORTS`]; starts at a place drawn from the process id and
/// the clock so that test binaries running side by side walk different stretches.
static NEXT_PORT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Finds a TCP port on 127.0.0.1 that nothing listens on and that no other call in this
/// process has handed out, for a server the test starts next.
///
/// Panics when the whole range is taken, which fails the calling test.
pub fn free_port() -> u16 {
    let span = usize::from(PORTS.end - PORTS.start);
    let _ = NEXT_PORT.compare_exchange(
        usize::MAX,
        start_offset(span),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT_PORT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORTS.start + u16::try_from(offset).expect("offset within the range");
        if RESERVED.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {PORTS:?}")
}

fn start_offset(span: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    (std::process::id() as usize)
        .wrapping_mul(7919)
        .wrapping_add(nanos)
        % span
}

/// Polls `GET http://{addr}{path}` every 20 ms until it answers `status` or
/// `timeout` passes; returns whether it did. Each attempt is itself bounded by
/// the time left, so a server that accepts but never answers cannot hang it.
pub async fn wait_for_status(addr: SocketAddr, path: &str, status: u16, timeout: Duration) -> bool {
    let client = crate::http_client();
    let url = format!("http://{addr}{path}");
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if let Ok(resp) = client.get(&url).timeout(left).send().await {
            if resp.status().as_u16() == status {
                return true;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(left.min(Duration::from_millis(20))).await;
    }
}

/// The value after `--name` on this process's command line, or `default`: the bench drivers'
/// whole argument parsing.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// The `q` quantile (0 to 1) of `sorted` by nearest rank, `None` when empty: the benchmark
/// examples' percentiles.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * q).round() as usize;
    Some(sorted[i.min(last)])
}

/// Resident memory of process `pid` in KiB (`VmRSS`), 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
