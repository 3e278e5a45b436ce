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

fn nginx_binary() -> Option<String> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_uses_keygate() {
    let Some(nginx) = nginx_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx is not installed under CI"
        );
        eprintln!("skipping: nginx is not installed");
        return;
    };
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

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = keygate_test::free_port();
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
            proxy_pass {upstream};
        }}
        location = /_keygate {{
            internal;
            proxy_pass http://{gateway}/v1/auth/nginx;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}
    }}
}}
"#,
        upstream = h.upstream.url(),
        gateway = h.gateway.addr,
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(&nginx)
        .args(["-p", &d.to_string(), "-c", conf_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _nginx = Nginx(child);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        keygate_test::wait_for_status(addr, "/cs2/v1/matches", 401, Duration::from_secs(5)).await,
        "nginx did not come up: {}",
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    );

    let base = format!("http://127.0.0.1:{port}");
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
