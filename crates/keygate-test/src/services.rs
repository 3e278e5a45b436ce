//! The services and programs tests use: PostgreSQL and Redis, read from
//! `KEYGATE_TEST_DATABASE_URL` and `KEYGATE_TEST_REDIS_URL` (which `.ci/run` sets), RabbitMQ,
//! and proxies such as nginx, Traefik and Envoy. Under `CI=true` a missing one fails the test;
//! elsewhere the test is skipped with a note.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Fails the test under CI; elsewhere notes that it is skipped, and why.
fn missing(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}, under CI"
    );
    eprintln!("skipping: {why}");
}

fn unreachable(what: &str, url: &str, e: &dyn std::fmt::Display) {
    missing(&format!("{what} at {url} is unreachable ({e})"));
}

/// The program `name` in the first of `dirs`, then of `PATH`, that has it; `None` (the test
/// skips) outside CI when none does.
pub fn program(name: &str, dirs: &[&Path]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = dirs
        .iter()
        .map(|d| d.to_path_buf())
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        missing(&format!("{name} is not installed"));
    }
    found
}

/// A fresh schema (named `{prefix}_{random}`) in the test PostgreSQL, as a URL whose
/// connections use it, or `None` outside CI when PostgreSQL does not answer.
pub async fn postgres_schema(prefix: &str) -> Option<String> {
    let base = std::env::var("KEYGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = match sqlx::PgPool::connect(&base).await {
        Ok(pool) => pool,
        Err(e) => {
            unreachable("PostgreSQL", &base, &e);
            return None;
        }
    };
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).expect("OS randomness");
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let schema = format!("{prefix}_{suffix}");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create a test schema");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options[search_path]={schema}"))
}

/// The test Redis's URL, or `None` outside CI when it does not answer.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("KEYGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let addr = match hostport.parse() {
        Ok(addr) => addr,
        Err(e) => {
            unreachable("Redis", &url, &e);
            return None;
        }
    };
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => Some(url),
        Err(e) => {
            unreachable("Redis", &url, &e);
            None
        }
    }
}

/// The test RabbitMQ: its AMQP address and management API, and the operator's credentials.
#[derive(Clone, Debug)]
pub struct RabbitMq {
    /// `host:port` of the AMQP listener.
    pub amqp_address: String,
    /// `http://host:port` of the management API.
    pub management_url: String,
    pub user: String,
    pub password: String,
}

/// The test RabbitMQ, from `KEYGATE_TEST_AMQP_ADDRESS` (default `127.0.0.1:5672`),
/// `KEYGATE_TEST_RABBITMQ_MANAGEMENT_URL` (default `http://127.0.0.1:15672`) and
/// `KEYGATE_TEST_AMQP_USER` / `KEYGATE_TEST_AMQP_PASSWORD` (default guest/guest), or `None`
/// outside CI when its management API does not answer.
pub async fn rabbitmq() -> Option<RabbitMq> {
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let mq = RabbitMq {
        amqp_address: env("KEYGATE_TEST_AMQP_ADDRESS", "127.0.0.1:5672"),
        management_url: env(
            "KEYGATE_TEST_RABBITMQ_MANAGEMENT_URL",
            "http://127.0.0.1:15672",
        ),
        user: env("KEYGATE_TEST_AMQP_USER", "guest"),
        password: env("KEYGATE_TEST_AMQP_PASSWORD", "guest"),
    };
    let overview = format!("{}/api/overview", mq.management_url);
    let answer = crate::http_client()
        .get(&overview)
        .basic_auth(&mq.user, Some(&mq.password))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Some(mq),
        Ok(r) => {
            unreachable("RabbitMQ's management API", &overview, &r.status());
            None
        }
        Err(e) => {
            unreachable("RabbitMQ's management API", &overview, &e);
            None
        }
    }
}
