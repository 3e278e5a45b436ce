//! The nginx `auth_request` contract against a real nginx (`.ci/run` installs it from Debian's
//! packages): nginx asks keygate per request and forwards the identity keygate returns.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Harness;

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `auth_request` sub-request location of README.md ("Beside an existing gateway"):
/// the original URI and method, and the client's address for the brute-force guard.
const AUTH_LOCATION: &str = r#"
        location = /_keygate {
            internal;
            proxy_pass http://{gateway}/v1/auth/nginx;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
"#;

/// Starts nginx in front of `h`'s gateway and upstream; `None` (the test is skipped) when
/// nginx is not installed outside CI.
async fn start_nginx(h: &Harness) -> Option<(Nginx, String, tempfile::TempDir)> {
    // Debian's package puts it in /usr/sbin, which a user's PATH may lack.
    let nginx = keygate_test::program("nginx", &[std::path::Path::new("/usr/sbin")])?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = keygate_test::free_port();
    let auth_location = AUTH_LOCATION.replace("{gateway}", &h.gateway.addr.to_string());
    let conf = format!(
        r#"
daemon off;
master_process off;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_keygate;
            auth_request_set $kg_client $upstream_http_x_keygate_client_id;
            proxy_set_header X-Client-Id $kg_client;
            proxy_set_header X-API-Key "";
            proxy_set_header Authorization "";
            proxy_pass {upstream};
        }}
{auth_location}
    }}
}}
"#,
        upstream = h.upstream.url(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(&nginx)
        .args(["-p", &d.to_string(), "-c", conf_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = Nginx(child);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        keygate_test::wait_for_status(addr, "/cs2/v1/matches", 401, Duration::from_secs(10)).await,
        "nginx did not come up: {}",
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    );
    Some((running, format!("http://127.0.0.1:{port}"), dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_uses_keygate() {
    let h = Harness::start(
        r#"
[[routes]]
path = "/{sport}/v1/matches"
sport_param = "sport"
scopes = ["matches:read"]
"#,
    )
    .await;
    let client = h
        .client("Acme", &["matches:read"], &["cs2"], &[], "pro")
        .await;
    let (key, _) = h.key("Acme", None).await;

    let Some((_nginx, base, _dir)) = start_nginx(&h).await else {
        return;
    };
    let ok = h
        .http
        .get(format!("{base}/cs2/v1/matches"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/cs2/v1/matches");
    assert_eq!(
        seen.header("x-client-id"),
        Some(client.id.as_str()),
        "identity from keygate"
    );
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the key stops at nginx (README's location)"
    );

    let before = h.upstream.request_count();
    let denied = h
        .http
        .get(format!("{base}/dota2/v1/matches"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let unknown = h
        .http
        .get(format!("{base}/cs2/v1/matches"))
        .header("X-API-Key", "kg_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    assert_eq!(
        h.upstream.request_count(),
        before,
        "refused requests never reach the upstream"
    );
}

/// Issue 17 (9): behind nginx every caller reaches keygate from nginx's address. With nginx
/// in `trusted_proxies` and README.md's sub-request location, the guard counts each client
/// by the address nginx reports, and a cooled-down client's valid key is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_trusted_proxies_cools_down_one_client_not_its_neighbours() {
    let h = Harness::start(
        r#"
[[routes]]
path = "/{sport}/v1/matches"

[guard]
threshold = 3
trusted_proxies = ["127.0.0.1"]          # nginx, as keygate sees it
"#,
    )
    .await;
    h.client("Acme", &[], &[], &[], "pro").await;
    let (key, _) = h.key("Acme", None).await;
    let Some((_nginx, base, _dir)) = start_nginx(&h).await else {
        return;
    };
    let from = |ip: &str| {
        keygate_test::reqwest::Client::builder()
            .no_proxy()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let (guesser, neighbour) = (from("127.0.0.2"), from("127.0.0.3"));
    let url = format!("{base}/cs2/v1/matches");
    let status = |client: &keygate_test::reqwest::Client, key: &str| {
        let req = client
            .get(&url)
            .header("X-API-Key", key)
            // A forged address: nginx appends the real one, which keygate believes.
            .header("X-Forwarded-For", "198.51.100.1");
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(status(&guesser, "kg_wrong").await, 401);
    }
    // nginx honours only 401 and 403 from auth_request: the cool-down answers 403.
    assert_eq!(status(&guesser, "kg_wrong").await, 403);
    assert_eq!(
        status(&neighbour, "kg_wrong").await,
        401,
        "the neighbour is not cooled down"
    );
    assert_eq!(status(&guesser, &key).await, 200, "a valid key is served");
    assert_eq!(status(&neighbour, &key).await, 200);
}
