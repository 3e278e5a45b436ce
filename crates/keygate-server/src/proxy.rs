//! Forwarding to upstreams: pooled keep-alive connections, streamed bodies, timeouts, RFC 9110
//! hop-by-hop handling, `X-Forwarded-*`, and identity headers that only keygate can set.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate_core::decision::Reason;

use crate::gateway::Admitted;
use crate::profile::{CredentialSource, Profile};
use crate::upstream::UpstreamSpec;

/// One pooled HTTP client per upstream, owned by one worker thread.
#[derive(Clone, Debug)]
pub struct Upstreams {
    clients: Vec<Client<HttpConnector, Incoming>>,
}

impl Upstreams {
    pub fn new(specs: &[UpstreamSpec]) -> Self {
        let clients = specs
            .iter()
            .map(|spec| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(spec.connect_timeout));
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(256)
                    .build(connector)
            })
            .collect();
        Upstreams { clients }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// What the proxy needs to know about the request beyond the request itself.
pub struct Forward<'a> {
    pub upstream: usize,
    pub spec: &'a UpstreamSpec,
    pub who: Option<&'a Admitted>,
    /// The profile source the key came from (stripped unless the profile forwards keys).
    pub credential_source: Option<usize>,
    pub remote: SocketAddr,
}

fn upstream_uri(
    spec: &UpstreamSpec,
    original: &Uri,
    drop_param: Option<&str>,
) -> Result<Uri, Reason> {
    let path = original.path();
    let query = match (original.query(), drop_param) {
        (Some(q), Some(name)) => Some(crate::credential::strip_query_param(q, name)),
        (Some(q), None) => Some(q.to_owned()),
        (None, _) => None,
    };
    let mut pq = String::with_capacity(
        spec.base_path.len() + path.len() + 1 + query.as_ref().map_or(0, String::len),
    );
    pq.push_str(&spec.base_path);
    pq.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        pq.push('?');
        pq.push_str(&q);
    }
    Uri::builder()
        .scheme(spec.scheme.clone())
        .authority(spec.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Reason::BadRequest)
}

/// Prepares the upstream request in place: URI, hop-by-hop headers, credentials, identity,
/// forwarding headers.
///
/// # Errors
/// `BadRequest` if the URI cannot be rebuilt.
pub fn prepare(
    req: &mut Request<Incoming>,
    profile: &Profile,
    f: &Forward<'_>,
) -> Result<(), Reason> {
    let source = f.credential_source.map(|i| &profile.credentials[i]);
    let drop_param = match source {
        Some(CredentialSource::Query(name)) if !profile.forward_credential => Some(&**name),
        _ => None,
    };
    *req.uri_mut() = upstream_uri(f.spec, req.uri(), drop_param)?;
    *req.version_mut() = http::Version::HTTP_11;
    let original_host = req.headers().get(header::HOST).cloned();
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if !profile.forward_credential {
        match source {
            Some(CredentialSource::Header(name)) => {
                headers.remove(name);
            }
            Some(CredentialSource::Bearer) => {
                headers.remove(header::AUTHORIZATION);
            }
            _ => {}
        }
    }
    let ids = &profile.identity;
    for name in ids.all() {
        headers.remove(name);
    }
    if let Some(who) = f.who {
        who.write_identity(headers, ids);
    }
    let ip = f.remote.ip().to_string();
    let xff = HeaderName::from_static("x-forwarded-for");
    let forwarded_for = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(xff, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(host) = original_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let authority =
        HeaderValue::from_str(f.spec.authority.as_str()).map_err(|_| Reason::BadRequest)?;
    headers.insert(header::HOST, authority);
    Ok(())
}

/// Sends the prepared request; the response streams back as it arrives.
///
/// # Errors
/// `UpstreamTimeout` when headers do not arrive in time, `UpstreamUnavailable` otherwise.
pub async fn send(
    upstreams: &Upstreams,
    f: &Forward<'_>,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Reason> {
    let client = &upstreams.clients[f.upstream];
    match tokio::time::timeout(f.spec.timeout, client.request(req)).await {
        Err(_) => Err(Reason::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::warn!(upstream = %f.spec.name, error = %e, "Upstream request failed.");
            Err(Reason::UpstreamUnavailable)
        }
        Ok(Ok(mut resp)) => {
            strip_hop_by_hop(resp.headers_mut());
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upstream_uris() {
        let spec = UpstreamSpec::parse("u", "http://10.0.0.1:9000/api").unwrap();
        let original: Uri = "/cs2/v1/matches?api_key=secret&page=2".parse().unwrap();
        assert_eq!(
            upstream_uri(&spec, &original, Some("api_key"))
                .unwrap()
                .to_string(),
            "http://10.0.0.1:9000/api/cs2/v1/matches?page=2"
        );
        assert_eq!(
            upstream_uri(&spec, &"/x?api_key=s".parse().unwrap(), Some("api_key"))
                .unwrap()
                .to_string(),
            "http://10.0.0.1:9000/api/x"
        );
    }
}
