//! Upstream services as configured: where they are and how long to wait for them.

use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use rustls::pki_types::ServerName;

/// One upstream service.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    pub name: Box<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` of forwarded requests (the authority), built once.
    pub host: HeaderValue,
    /// A path prefix prepended to forwarded paths (`/api` in `http://host/api`); empty for none.
    pub base_path: Box<str>,
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub timeout: Duration,
    /// Its circuit breaker; `None` when turned off.
    pub breaker: Option<BreakerConfig>,
    /// `https://`: the client configuration and the name its certificate must carry (the
    /// URL's host, also sent as SNI). Set by the configuration compile, which reads the
    /// upstream's `ca_file` and client certificate.
    pub tls: Option<(crate::tls::ClientTls, ServerName<'static>)>,
}

/// A URL that cannot be an upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("upstream URL `{0}` does not parse as an absolute http:// or https:// URL")]
    Unparsable(String),
    #[error("upstream URL `{0}` uses a scheme other than http:// or https://")]
    Scheme(String),
    #[error("upstream URL `{0}` must not carry a query or fragment")]
    Query(String),
}

impl UpstreamSpec {
    /// Whether `other` is the same upstream at the same address: a reload keeps its
    /// connections (and, with the same breaker settings, its breaker).
    pub fn same_endpoint(&self, other: &UpstreamSpec) -> bool {
        self.name == other.name
            && self.scheme == other.scheme
            && self.authority == other.authority
            && self.base_path == other.base_path
            && self.connect_timeout == other.connect_timeout
    }

    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Parses `http://host:port[/base]` or `https://…` (whose TLS settings the caller adds:
    /// [`UpstreamSpec::tls`]).
    ///
    /// # Errors
    /// [`UpstreamUrlError`] naming the URL.
    pub fn parse(name: &str, url: &str) -> Result<UpstreamSpec, UpstreamUrlError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| UpstreamUrlError::Unparsable(url.to_owned()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(UpstreamUrlError::Unparsable(url.to_owned()));
        };
        if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
            return Err(UpstreamUrlError::Scheme(url.to_owned()));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(UpstreamUrlError::Query(url.to_owned()));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamUrlError::Unparsable(url.to_owned()))?;
        Ok(UpstreamSpec {
            name: name.into(),
            host,
            scheme: scheme.clone(),
            authority: authority.clone(),
            base_path: uri.path().trim_end_matches('/').into(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            timeout: Self::DEFAULT_TIMEOUT,
            breaker: Some(BreakerConfig::default()),
            tls: None,
        })
    }

    /// Whether the URL is `https://`.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The name an `https://` upstream's certificate must carry: the URL's host (an IP
    /// address is checked against the certificate's addresses).
    ///
    /// # Errors
    /// [`UpstreamUrlError::Unparsable`] when the host is neither a DNS name nor an address.
    pub fn server_name(&self) -> Result<ServerName<'static>, UpstreamUrlError> {
        let host = self.authority.host();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned())
            .map_err(|_| UpstreamUrlError::Unparsable(self.authority.to_string()))
    }

    /// `host:port` to connect to, the scheme's port when the URL gives none.
    pub(crate) fn connect_addr(&self) -> String {
        match self.authority.port() {
            Some(_) => self.authority.as_str().to_owned(),
            None if self.is_https() => format!("{}:443", self.authority.as_str()),
            None => format!("{}:80", self.authority.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = UpstreamSpec::parse("a", "http://127.0.0.1:9000").unwrap();
        assert_eq!(u.authority.as_str(), "127.0.0.1:9000");
        assert_eq!(&*u.base_path, "");
        assert_eq!(
            &*UpstreamSpec::parse("a", "http://h/api/").unwrap().base_path,
            "/api"
        );
        let https = UpstreamSpec::parse("a", "https://h.example/api").unwrap();
        assert!(https.is_https());
        assert_eq!(https.connect_addr(), "h.example:443");
        assert_eq!(
            UpstreamSpec::parse("a", "http://h").unwrap().connect_addr(),
            "h:80"
        );
        assert_eq!(
            UpstreamSpec::parse("a", "https://[::1]:8443")
                .unwrap()
                .server_name()
                .unwrap()
                .to_str(),
            "::1"
        );
        assert!(matches!(
            UpstreamSpec::parse("a", "ftp://h"),
            Err(UpstreamUrlError::Scheme(_))
        ));
        assert!(matches!(
            UpstreamSpec::parse("a", "h:80"),
            Err(UpstreamUrlError::Unparsable(_))
        ));
        assert!(matches!(
            UpstreamSpec::parse("a", "http://h/?x=1"),
            Err(UpstreamUrlError::Query(_))
        ));
    }
}

/// Which HTTP/1.1 client forwards to `http://` upstreams (`[server] upstream_engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// hyper's client connection, in a task of its own per connection.
    #[default]
    Hyper,
    /// The exchange inside the request's task (`crate::request::direct`); `https://`
    /// upstreams still go through hyper.
    Direct,
}

/// A breaker as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures within `window` that open the breaker.
    pub failures: u32,
    pub window: Duration,
    /// How long an open breaker refuses before letting probes through.
    pub open_for: Duration,
    /// Trial requests let through at once while half-open.
    pub half_open_probes: u32,
    /// Count upstream 5xx answers as failures (connect errors and timeouts always count).
    pub count_5xx: bool,
}

impl Default for BreakerConfig {
    /// On by default: five connect errors or timeouts within ten seconds are an upstream that
    /// is down, and answering at once spares both the callers' time and the upstream's
    /// recovery. 5xx answers are the upstream speaking, so they count only when asked.
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            count_5xx: false,
        }
    }
}
