//! `keygate demo`: one command to see keygate work. It starts a sample upstream on loopback,
//! ensures a demo client, issues a fresh key, runs the gateway in front and prints curl lines.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate_core::{Scope, Slug};
use keygate_store::{Actor, NewClient, NewKey, StoreError};
use tokio::net::TcpListener;

use super::serve;
use crate::cli::ServeArgs;

const DEMO_CLIENT: &str = "Demo Sportsbook";

/// A sample upstream: answers every request with what it received, identity headers included.
async fn sample_upstream() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the sample upstream")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let body = serde_json::json!({
                        "upstream": "keygate demo",
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "client_id": header("x-keygate-client-id"),
                        "client_name": header("x-keygate-client-name"),
                        "key_id": header("x-keygate-key-id"),
                        "scopes": header("x-keygate-scopes"),
                    });
                    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

pub(crate) fn run(db: Option<String>, path: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let upstream = sample_upstream().await?;
        let mut args = args;
        args.upstream = Some(format!("http://{upstream}"));
        let db = db.unwrap_or_else(|| "keygate-demo.db".to_owned());
        let config = serve::config(path, &serve::overrides(Some(db.clone()), &args))?;
        serve::init_logging(&args.log_format);
        let store = serve::open_store(&config.db).await?;
        let actor = Actor("demo".to_owned());
        let client = match store.client(DEMO_CLIENT).await {
            Ok(c) => c,
            Err(StoreError::ClientNotFound(_)) => {
                store
                    .create_client(
                        &actor,
                        NewClient {
                            name: DEMO_CLIENT.to_owned(),
                            plan: "demo".to_owned(),
                            scopes: vec![Scope::new("cs2:matches:read").expect("valid scope")],
                            sports: vec![Slug::new("cs2").expect("valid slug")],
                            ..NewClient::default()
                        },
                    )
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let (secret, material) = config.issuer.issue();
        let key = store
            .create_key(
                &actor,
                client.id.as_str(),
                NewKey { material, label: "demo".to_owned(), expires_at: None, restrictions: Default::default() },
            )
            .await?;
        let running = keygate_server::start(config, store).await?;
        let gw = running.addr;
        println!(
            "\nkeygate demo is running.\n\n  gateway   http://{gw}\n  admin     http://{admin}\n  upstream  http://{upstream} (sample)\n  database  {db}\n  client    {name} ({id})\n  key       {key_id}\n\nYour demo key (shown once):\n\n  {secret}\n\nTry it:\n\n  curl -i http://{gw}/cs2/v1/matches -H 'X-API-Key: {secret}'\n  curl -i http://{gw}/v1/whoami -H 'Authorization: Bearer {secret}'\n  curl -i http://{gw}/cs2/v1/matches                        # 401: no key\n  curl -i http://{gw}/cs2/v1/matches -H 'X-API-Key: kg_nope'  # 401: malformed\n  curl -s http://{admin}/metrics | head\n  cargo run --release -- --db {db} key revoke {key_id}   # then retry the first line\n\nPress Ctrl-C to stop.\n",
            admin = running.admin_addr,
            name = client.name,
            id = client.id,
            key_id = key.id,
            secret = secret.expose(),
        );
        serve::serve_until_stopped(running).await;
        Ok(())
    });
    runtime.shutdown_background();
    served
}
