//! Redis through Sentinel: the limiter talks to the primary a set of sentinels names, and
//! follows it through a failover.
//!
//! `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]` names the
//! sentinels (port 26379 unless given) and the monitored master; the credentials and database
//! are the data nodes' (sentinels are asked without AUTH). `rediss+sentinel://` speaks TLS to
//! the sentinels and the data nodes alike, both verified against the same roots.
//!
//! The redis crate's `SentinelClient` finds the primary: it asks the sentinels, then checks
//! with `ROLE` that the node named is a primary. A [`ConnectionManager`] to that address
//! serves the calls and reconnects by itself after a blip. A failover shows as calls failing
//! (refused, dropped, `READONLY` from a demoted primary, timeouts): any failed call wakes one
//! background task that asks the sentinels until they name a node that answers as a primary,
//! and swaps the connection when the primary moved. Until then the calls keep failing and
//! [`Limits`](crate::Limits) falls back as for any Redis outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use percent_encoding::percent_decode_str;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisError, TlsCertificates, TlsMode};

/// The sentinels' port when the URL gives none.
const SENTINEL_PORT: u16 = 26379;
/// While no primary answers, how often the sentinels are asked again.
const RETRY: Duration = Duration::from_millis(250);
/// After a lookup that found the primary, the least time before the next one, so a stream
/// of failing calls (timeouts under load) costs the sentinels one question a second at most.
const SPACING: Duration = Duration::from_secs(1);

/// A `redis+sentinel://` URL, parsed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    tls: bool,
    sentinels: Vec<(String, u16)>,
    master: String,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("tls", &self.tls)
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

fn decode(part: &str, what: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

/// One `host[:port]` of the sentinel list (`[v6]:port` for IPv6).
fn host_port(item: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{item}`: no `]` after an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("`{item}`: expected `:port` after `]`"))?,
            ),
        };
        (host, port)
    } else {
        match item.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (item, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{item}`: no host"));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("`{item}`: `{p}` is not a port")),
        },
    };
    Ok((host.to_owned(), port))
}

impl SentinelUrl {
    /// `None` when `url` is not a sentinel URL (another scheme); otherwise the parsed URL or
    /// why it is malformed (the caller quotes the URL, masked).
    pub(crate) fn parse(url: &str) -> Option<Result<SentinelUrl, String>> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return None;
        };
        Some(SentinelUrl::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &str) -> Result<SentinelUrl, String> {
        if rest.contains(['?', '#']) {
            return Err("query parameters and fragments are not supported".to_owned());
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((user, password)) => (user, Some(decode(password, "password")?)),
                    None => (info, None),
                };
                let user = Some(decode(user, "user name")?).filter(|u| !u.is_empty());
                (user, password)
            }
        };
        if hosts.is_empty() {
            return Err("no sentinel address (`host:port`, comma-separated)".to_owned());
        }
        let sentinels = hosts
            .split(',')
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()?;
        let mut segments = path.split('/');
        let master = decode(segments.next().unwrap_or(""), "master name")?;
        if master.is_empty() {
            return Err("no master name (`…/mymaster`) after the sentinels".to_owned());
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(n) => match n.parse::<i64>() {
                Ok(db) if db >= 0 => db,
                _ => return Err(format!("`{n}` is not a database number")),
            },
        };
        if segments.next().is_some() {
            return Err("expected `/master` or `/master/db` after the sentinels".to_owned());
        }
        Ok(SentinelUrl {
            tls,
            sentinels,
            master,
            username,
            password,
            db,
        })
    }

    /// Whether the sentinels and data nodes are spoken to over TLS.
    pub(crate) fn tls(&self) -> bool {
        self.tls
    }

    /// The crate's client for these sentinels; connects to nothing yet.
    fn client(&self, roots: Option<&[u8]>) -> Result<SentinelClient, RedisError> {
        let addrs = self.sentinels.iter().map(|(host, port)| {
            if self.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(addrs, &self.master, SentinelServerType::Master)?
                .set_client_to_redis_db(self.db);
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(pem) = roots {
                let certificates = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                };
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        builder.build()
    }
}

/// The primary being served, as last found.
struct Primary {
    /// `host:port`, for comparing lookups and for log lines (no credentials).
    addr: String,
    conn: ConnectionManager,
}

fn addr_of(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    }
}

/// The connection to whichever node the sentinels name as primary.
pub(crate) struct Followed {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: ArcSwap<Primary>,
    config: ConnectionManagerConfig,
    connect_timeout: Duration,
    /// A lookup task is running (at most one at a time).
    following: AtomicBool,
}

impl std::fmt::Debug for Followed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followed")
            .field("primary", &self.current.load().addr)
            .finish_non_exhaustive()
    }
}

impl Followed {
    /// Finds the primary through the sentinels and connects to it (the caller bounds the
    /// time); later lookups are bounded by `connect_timeout`.
    ///
    /// # Errors
    /// The sentinels' error, or the primary's.
    pub(crate) async fn connect(
        url: &SentinelUrl,
        roots: Option<&[u8]>,
        config: ConnectionManagerConfig,
        connect_timeout: Duration,
    ) -> Result<Arc<Followed>, RedisError> {
        let mut sentinel = url.client(roots)?;
        let client = sentinel.async_get_client().await?;
        let addr = addr_of(&client);
        let conn = ConnectionManager::new_with_config(client, config.clone()).await?;
        Ok(Arc::new(Followed {
            sentinel: tokio::sync::Mutex::new(sentinel),
            current: ArcSwap::from_pointee(Primary { addr, conn }),
            config,
            connect_timeout,
            following: AtomicBool::new(false),
        }))
    }

    /// The connection to the primary as last found.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.current.load().conn.clone()
    }

    /// A call failed: unless a lookup is under way, starts one in the background.
    pub(crate) fn call_failed(self: &Arc<Self>) {
        if self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(follow(Arc::downgrade(self)));
    }

    /// Asks the sentinels for the primary once; swaps the connection when it moved.
    async fn lookup(&self) -> Result<(), String> {
        let found = tokio::time::timeout(self.connect_timeout, async {
            let client = self.sentinel.lock().await.async_get_client().await?;
            let addr = addr_of(&client);
            if addr == self.current.load().addr {
                return Ok(None);
            }
            let conn = ConnectionManager::new_with_config(client, self.config.clone()).await?;
            Ok::<_, RedisError>(Some(Primary { addr, conn }))
        })
        .await
        .map_err(|_| format!("no answer within {:?}", self.connect_timeout))?
        .map_err(|e| e.to_string())?;
        if let Some(primary) = found {
            tracing::info!(
                from = %self.current.load().addr,
                to = %primary.addr,
                "The sentinels name a new Redis primary; the limiter follows it."
            );
            self.current.store(Arc::new(primary));
        }
        Ok(())
    }
}

/// Looks the primary up until the sentinels name one that answers as a primary, then waits
/// [`SPACING`] before the next lookup may start. Ends early when the limiter is dropped.
async fn follow(followed: Weak<Followed>) {
    loop {
        let Some(f) = followed.upgrade() else {
            return;
        };
        match f.lookup().await {
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(error = %e, "No Redis primary found through the sentinels yet.");
            }
        }
        drop(f);
        tokio::time::sleep(RETRY).await;
    }
    tokio::time::sleep(SPACING).await;
    if let Some(f) = followed.upgrade() {
        f.following.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SentinelUrl, String> {
        SentinelUrl::parse(url).expect("a sentinel URL")
    }

    #[test]
    fn urls_name_the_sentinels_the_master_and_the_data_nodes_credentials() {
        assert!(SentinelUrl::parse("redis://127.0.0.1:6379").is_none());
        let u =
            parse("redis+sentinel://:p%40ss@10.0.0.1:26380,[::1],s3.example/mymaster/2").unwrap();
        assert!(!u.tls());
        assert_eq!(
            u.sentinels,
            [
                ("10.0.0.1".to_owned(), 26380),
                ("::1".to_owned(), SENTINEL_PORT),
                ("s3.example".to_owned(), SENTINEL_PORT)
            ]
        );
        assert_eq!(
            (u.master.as_str(), u.username, u.password.as_deref(), u.db),
            ("mymaster", None, Some("p@ss"), 2)
        );
        assert!(!format!("{:?}", parse("redis+sentinel://u:pw@h/m").unwrap()).contains("pw"));
        let u = parse("rediss+sentinel://app@h:1/m").unwrap();
        assert!(u.tls());
        assert_eq!(
            (u.username.as_deref(), u.password, u.db),
            (Some("app"), None, 0)
        );
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        for (url, expected) in [
            ("redis+sentinel:///m", "no sentinel address"),
            ("redis+sentinel://h:26379", "no master name"),
            ("redis+sentinel://h:26379/", "no master name"),
            ("redis+sentinel://h:0/m", "is not a port"),
            ("redis+sentinel://h:x/m", "is not a port"),
            ("redis+sentinel://h,,k/m", "no host"),
            ("redis+sentinel://[::1/m", "no `]`"),
            ("redis+sentinel://h/m/x", "not a database number"),
            ("redis+sentinel://h/m/1/2", "expected `/master`"),
            ("redis+sentinel://h/m?x=1", "not supported"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.contains(expected), "{url}: {e}");
        }
    }
}
