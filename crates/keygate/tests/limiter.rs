//! The real binary with Redis down when it starts: it starts anyway, on the fallback the
//! configuration asks for (local limits, or the profile's 503 for limited requests when
//! `fail_closed = true`), says so in its log, `/status` and `/metrics`, and uses the shared
//! limiter as soon as Redis answers, without a restart or a request to notice.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keygate_test::{http_client, redis_url, wait_for_status, Relay, Serving, Upstream};
use serde_json::Value;

fn cli(db: &Path, config: &Path, args: &[&str]) -> Value {
    keygate_test::json_output(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--json", "--config", config.to_str().unwrap()])
            .args(args)
            .env("KEYGATE_DB", db),
    )
}

async fn get_json(url: &str) -> Value {
    http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn get_text(url: &str) -> String {
    http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Issue 17, item 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_redis_is_down_and_shares_limits_once_it_answers() {
    let Some(redis) = redis_url() else { return };
    let target = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let upstream = Upstream::start().await;
    for fail_closed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start(target).await;
        relay.cut();
        let config = dir.path().join("keygate.toml");
        // The default 5 ms request budget, as shipped: start-up is not held to it.
        std::fs::write(
            &config,
            format!(
                "[limits]\nbackend = \"redis\"\nredis_url = \"redis://{}\"\nfail_closed = {fail_closed}\n\n\
                 [plans.pro]\nlimits = {{ per_minute = 600, by = \"key\" }}\n",
                relay.addr()
            ),
        )
        .unwrap();
        let db = dir.path().join("keygate.db");
        cli(&db, &config, &["client", "create", "Acme", "--plan", "pro"]);
        let key = cli(&db, &config, &["key", "create", "--client", "Acme"])["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let Serving {
            proc,
            listen,
            admin,
        } = keygate_test::serve(
            env!("CARGO_BIN_EXE_keygate"),
            (db.to_str().unwrap(), &config),
            &upstream.url(),
            &[("RUST_LOG", "info")],
            dir.path(),
        );
        let ready = wait_for_status(
            admin.parse().unwrap(),
            "/ready",
            200,
            Duration::from_secs(20),
        )
        .await;
        assert!(
            ready,
            "fail_closed = {fail_closed}: did not start: {}",
            proc.stderr()
        );
        assert!(
            proc.stderr().contains("Redis is unreachable at start"),
            "{}",
            proc.stderr()
        );
        let status = get_json(&format!("http://{admin}/status")).await;
        assert_eq!(status["limiter"]["backend"], "redis", "{status}");
        assert_eq!(status["limiter"]["degraded"], true, "{status}");
        let metrics = get_text(&format!("http://{admin}/metrics")).await;
        assert!(metrics.contains("keygate_limiter_degraded 1"), "{metrics}");

        let call = || {
            http_client()
                .get(format!("http://{listen}/data"))
                .header("X-API-Key", &key)
                .send()
        };
        let resp = call().await.unwrap();
        if fail_closed {
            assert_eq!(
                resp.status(),
                503,
                "limited requests are refused until Redis answers"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "limiter_unavailable", "{body}");
        } else {
            assert_eq!(resp.status(), 200, "local limits answer");
            assert_eq!(resp.headers()["x-ratelimit-remaining"], "599");
        }

        // Redis comes up: the node connects by itself, with no request to prompt it.
        relay.restore().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = get_json(&format!("http://{admin}/status")).await;
            if status["limiter"]["degraded"] == false {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never reconnected: {status}\n{}",
                proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let metrics = get_text(&format!("http://{admin}/metrics")).await;
        assert!(metrics.contains("keygate_limiter_degraded 0"), "{metrics}");
        assert!(
            proc.stderr().contains("Redis connected"),
            "{}",
            proc.stderr()
        );
        let resp = call().await.unwrap();
        assert_eq!(resp.status(), 200);
        // Redis's own counter: the request answered locally before is not in it.
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "599");
        relay.cut();
    }
}
