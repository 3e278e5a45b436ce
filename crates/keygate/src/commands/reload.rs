//! `keygate reload`: a running node reads its configuration file again, keeping every
//! connection and WebSocket session open (`POST /v1/reload`; SIGHUP does the same).

use std::net::SocketAddr;

use keygate_server::Overrides;

use crate::backend::Remote;
use crate::cli::Cli;
use crate::output;

pub(crate) async fn run(cli: &Cli) -> anyhow::Result<()> {
    let url = match (&cli.admin_url, &cli.config) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => {
            // The file is checked here first, so its errors print with their lines even when
            // no node is running; the node checks it again (its command line may differ).
            let overrides = Overrides {
                tooling: true,
                ..Overrides::default()
            };
            let config = super::load_config(path, &overrides)?;
            format!("http://{}", reachable(config.admin_listen))
        }
        (None, None) => anyhow::bail!(
            "give --admin-url (the node's admin API) or --config (the file the node on this machine serves)"
        ),
    };
    let remote = Remote::new(&url, &super::admin_token()?, &super::admin_tls(cli))?;
    let answer = remote.reload().await?;
    if cli.json {
        output::json(&answer);
        return Ok(());
    }
    let field = |name: &str| answer.get(name).cloned().unwrap_or_default();
    println!(
        "Configuration reloaded: version {}, hash {}{}.",
        field("version"),
        field("hash").as_str().unwrap_or_default(),
        if field("changed") == serde_json::Value::Bool(false) {
            " (unchanged)"
        } else {
            ""
        }
    );
    if let Some(kept) = answer.get("restart_required").and_then(|v| v.as_array()) {
        if !kept.is_empty() {
            let names: Vec<&str> = kept.iter().filter_map(|v| v.as_str()).collect();
            println!(
                "These settings changed but take effect only after a restart: {}.",
                names.join(", ")
            );
        }
    }
    Ok(())
}

/// Where to reach a listener bound to `addr`: loopback for a wildcard address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}
