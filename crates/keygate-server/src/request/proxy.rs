//! Forwarding to upstreams: kept-alive connections, streamed bodies, timeouts, RFC 9110
//! hop-by-hop handling, `X-Forwarded-*`, and identity headers that only keygate can set; the
//! one header rewrite ([`rewrite_headers`]) that WebSocket upstreams get too.
//!
//! Each worker thread keeps its own idle HTTP/1.1 connections per upstream
//! (`hyper::client::conn::http1`) rather than hyper-util's pooled client: no pool keyed by
//! host, no channel hand-off, no shared state between workers. Measured on the gateway bench
//! (BENCHMARKS.md), the pooled client cost about 1 µs of CPU per request.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use keygate_core::decision::Reason;

use crate::policy::guard::Guard;
use crate::policy::profile::{IdentityHeaders, Profile};
use crate::policy::repeat::{repeated, Repeat};
use crate::policy::routes::Route;
use crate::policy::upstream::{Engine, UpstreamSpec};
use crate::request::body::Body;
use crate::request::bounded_body::{self, BoundedBody};
use crate::request::direct::{self, DirectError};
use crate::state::gateway::Admitted;
use crate::state::locks::lock;
use crate::tls::{self, client::ConnectError};

/// Idle connections kept per upstream and worker; more are closed when they finish.
const MAX_IDLE: usize = 256;

/// Why a request did not reach an upstream.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Direct(#[from] DirectError),
}

/// One worker's kept-alive connections to one upstream.
#[derive(Debug, Default)]
struct Pool {
    /// Connections between requests, and connections whose last response body is still
    /// streaming (not ready yet); the most recently used last.
    idle: Mutex<Vec<SendRequest<BoundedBody>>>,
}

impl Pool {
    /// A connection ready for a request, dropping those the upstream closed.
    fn take(&self) -> Option<SendRequest<BoundedBody>> {
        let mut idle = lock(&self.idle);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].is_closed() {
                idle.swap_remove(i);
            } else if idle[i].is_ready() {
                return Some(idle.swap_remove(i));
            }
        }
        None
    }

    fn put(&self, conn: SendRequest<BoundedBody>) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE && !conn.is_closed() {
            idle.push(conn);
        }
    }
}

async fn connect(spec: &UpstreamSpec) -> Result<SendRequest<BoundedBody>, SendError> {
    let addr = spec.connect_addr();
    let stream = tls::client::connect(&addr, spec.tls.as_ref(), spec.connect_timeout).await?;
    // Flat writes, as on the public side: forwarded requests are a head and rarely a body.
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "Upstream connection ended with an error.");
        }
    });
    Ok(sender)
}

/// Each worker's upstream connections, one pool per configured upstream.
#[derive(Debug)]
pub(crate) struct Upstreams {
    /// Shared with the worker's next `Upstreams` after a reload that keeps the upstream.
    pools: Vec<Arc<Pool>>,
    /// The direct engine's connections, one pool per upstream, carried alike.
    direct: Vec<Arc<direct::Pool>>,
    /// Each upstream's `Host` value, copied for this worker: a header value cloned from the
    /// shared configuration bumps one reference count from every worker, a cache line the
    /// cores then pass back and forth on each request (`crate::state::per_worker`).
    hosts: Vec<HeaderValue>,
}

impl Upstreams {
    pub(crate) fn new(specs: &[UpstreamSpec]) -> Self {
        Upstreams {
            pools: specs.iter().map(|_| Arc::default()).collect(),
            direct: specs.iter().map(|_| Arc::default()).collect(),
            hosts: specs
                .iter()
                .map(|s| {
                    HeaderValue::from_bytes(s.host.as_bytes()).unwrap_or_else(|_| s.host.clone())
                })
                .collect(),
        }
    }

    /// This worker's pools for a reloaded upstream list: an upstream at the same address keeps
    /// its kept-alive connections, any other starts with none (connections to an upstream
    /// that is gone close as their last requests end).
    pub(crate) fn carried_to(&self, before: &[UpstreamSpec], after: &[UpstreamSpec]) -> Self {
        let mut next = Upstreams::new(after);
        for (i, spec) in after.iter().enumerate() {
            if let Some(old) = before.iter().position(|b| b.same_endpoint(spec)) {
                next.pools[i] = Arc::clone(&self.pools[old]);
                next.direct[i] = Arc::clone(&self.direct[old]);
            }
        }
        next
    }

    /// This worker's copy of upstream `i`'s `Host` value.
    pub(crate) fn host(&self, i: usize) -> &HeaderValue {
        &self.hosts[i]
    }

    /// Sends `req` on a kept-alive connection, or a new one. A request that a reused
    /// connection could not even start (the upstream had closed it) is retried once on a
    /// new connection; one that was sent is never repeated.
    async fn request(
        &self,
        upstream: usize,
        spec: &UpstreamSpec,
        req: Request<BoundedBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let pool = &self.pools[upstream];
        let req = match pool.take() {
            Some(mut conn) => match conn.try_send_request(req).await {
                Ok(resp) => {
                    pool.put(conn);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(e.into_error().into()),
                },
            },
            None => req,
        };
        // Boxed: a new connection is the rare case, and its handshake's state would otherwise
        // size every request's future.
        let mut conn = Box::pin(connect(spec)).await?;
        let resp = conn.send_request(req).await?;
        pool.put(conn);
        Ok(resp)
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

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// One pass over the message's few headers finds what to remove; removing each of the nine
/// names unconditionally hashed nine names per message, twice per request (callgrind: 6% of
/// the gate path's instructions, BENCHMARKS.md).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: smallvec::SmallVec<[HeaderName; 4]> = smallvec::SmallVec::new();
    for (name, value) in headers.iter() {
        if *name == header::CONNECTION {
            let tokens = value.to_str().unwrap_or_default().split(',').map(str::trim);
            for token in tokens {
                // The usual tokens name no header of the message (`close`) or one that is
                // hop-by-hop anyway (`keep-alive`): no name to build for them.
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                {
                    continue;
                }
                if let Ok(named) = HeaderName::from_bytes(token.as_bytes()) {
                    doomed.push(named);
                }
            }
        }
        if is_hop_by_hop(name) {
            doomed.push(name.clone());
        }
        // A message framed by both (RFC 9112 §6.3: a smuggling attempt) is framed by its
        // transfer coding; the length must not travel on beside the re-framed body.
        if *name == header::TRANSFER_ENCODING {
            doomed.push(header::CONTENT_LENGTH);
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// What the proxy needs to know about the request beyond the request itself.
pub(crate) struct Forward<'a> {
    pub upstream: usize,
    pub spec: &'a UpstreamSpec,
    /// The `Host` sent upstream ([`Upstreams::host`]).
    pub host: &'a HeaderValue,
    /// The identity header names, this worker's copy.
    pub identity: &'a IdentityHeaders,
    pub who: Option<&'a Admitted>,
    /// The profile source the key came from (forwarded when the profile forwards keys; every
    /// other source is stripped).
    pub credential_source: Option<usize>,
    pub remote: SocketAddr,
    /// `[server] max_body_bytes`: a body that streams past it is cut and answered 413.
    pub max_body: u64,
    /// The matched route (its methods decide whether method overrides go).
    pub route: &'a Route,
    /// Whose client-address headers are believed ([`Toward::guard`]).
    pub guard: &'a Guard,
    /// `[server] upstream_engine`.
    pub engine: Engine,
}

/// The request target sent upstream, in origin form (`/base/path?query`): the base path
/// prepended, `query` the one to send ([`crate::request::credential::strip`]'s: owned when it dropped a
/// credential). `None` when the original target can go as it is (no base path, nothing
/// dropped, already origin form), which costs nothing.
fn upstream_uri(
    spec: &UpstreamSpec,
    original: &Uri,
    query: Option<&Cow<'_, str>>,
) -> Result<Option<Uri>, Reason> {
    let path = original.path();
    let changed = matches!(query, Some(Cow::Owned(_)));
    if spec.base_path.is_empty() && !changed && original.scheme().is_none() {
        return Ok(None);
    }
    let mut pq =
        String::with_capacity(spec.base_path.len() + path.len() + 1 + query.map_or(0, |q| q.len()));
    pq.push_str(&spec.base_path);
    pq.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::from_maybe_shared(pq)
        .map(|pq| Some(Uri::from(pq)))
        .map_err(|_| Reason::BadRequest)
}

thread_local! {
    /// The last caller address's `X-Forwarded-For` value: callers keep their connections, so
    /// most requests reuse it instead of formatting an address.
    static FORWARDED_FOR: Repeat<IpAddr> = const { Repeat::new() };
}

fn forwarded_for(ip: IpAddr) -> HeaderValue {
    repeated(&FORWARDED_FOR, ip, |ip| {
        HeaderValue::from_str(&ip.to_string()).expect("an address is ASCII")
    })
}

/// Headers that make an upstream framework take another method than the request's (Symfony,
/// Laravel, Express's method-override, ASP.NET): on a route that allows only some methods, an
/// allowed `POST` could otherwise be served as a `DELETE`.
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-http-method"),
];

/// The query parameter Rails and Laravel read as the method (see [`METHOD_OVERRIDES`]).
const METHOD_PARAM: &str = "_method";

/// Headers that make an upstream framework (IIS, Symfony) serve another path than the
/// request's, the one the gateway authorized: never forwarded.
const PATH_OVERRIDES: [HeaderName; 2] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Headers that name the client's address: believed only from a trusted proxy
/// (`[guard] trusted_proxies`), removed from anyone else's requests.
const CLIENT_ADDRESS: [HeaderName; 2] = [HeaderName::from_static("x-real-ip"), header::FORWARDED];

/// The forwarding headers written toward every upstream. Constants, so that the names are
/// checked once at compile time rather than by `from_static` on every request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// What the headers toward an upstream say of the caller.
pub(crate) struct Toward<'a> {
    /// The identity header names.
    pub identity: &'a IdentityHeaders,
    /// The caller, when it authenticated (else identity headers it sent are removed).
    pub who: Option<&'a Admitted>,
    pub remote: SocketAddr,
    /// Whose client-address headers are believed ([`Guard::is_trusted`]).
    pub guard: &'a Guard,
    /// The route allows only some methods: method-override headers are removed.
    pub restricts_methods: bool,
}

/// Rewrites a caller's headers for an upstream, HTTP and WebSocket alike: hop-by-hop headers
/// go; identity headers are written (or, without a caller, the forged ones removed; a
/// caller's own delay header goes when its plan has none);
/// `X-Real-IP` and `Forwarded` go unless the peer is a trusted proxy; method overrides go on
/// routes that restrict methods, path overrides always; `X-Forwarded-For` gets the peer
/// appended, `X-Forwarded-Proto` and `X-Forwarded-Host` (the caller's `Host`) are written.
/// `Host` itself is the caller's to set.
pub(crate) fn rewrite_headers(headers: &mut HeaderMap, t: &Toward<'_>) {
    strip_hop_by_hop(headers);
    // Room for what is added below (identity, X-Forwarded-*): one growth of the map at most.
    headers.reserve(8);
    // One pass over the few headers finds what goes; the peer's trust is looked up only for
    // a request that names a client address.
    let ids = t.identity.all();
    // A caller on a plan without a delay gets no delay header written over its own: its own
    // goes (one comparison per header; a delayed caller's is replaced below).
    let strip_delay = t.who.is_some_and(|w| w.client.identity().delay.is_none());
    let mut trusted = None;
    let mut doomed: smallvec::SmallVec<[HeaderName; 2]> = smallvec::SmallVec::new();
    for name in headers.keys() {
        let goes = (t.who.is_none() && ids.contains(&name))
            || (strip_delay && *name == t.identity.delay)
            || (t.restricts_methods && METHOD_OVERRIDES.contains(name))
            || PATH_OVERRIDES.contains(name)
            || (CLIENT_ADDRESS.contains(name)
                && !*trusted.get_or_insert_with(|| t.guard.is_trusted(&t.remote.ip())));
        if goes {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if let Some(who) = t.who {
        // Each insert replaces every value a caller sent under that name.
        who.write_identity(headers, t.identity);
    }
    // One lookup of the name for both the read and the write.
    let ip = t.remote.ip();
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(forwarded_for(ip));
        }
        Entry::Occupied(mut prior) => {
            let joined = prior
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            let value = if joined.is_empty() {
                Some(forwarded_for(ip))
            } else {
                HeaderValue::from_str(&format!("{joined}, {ip}")).ok()
            };
            match value {
                Some(v) => {
                    prior.insert(v);
                }
                // A prior chain that cannot be extended goes rather than reach the upstream
                // without the caller's address at its end.
                None => {
                    prior.remove_entry_mult();
                }
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HTTP);
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// Prepares the upstream request in place: URI (base path, credentials and, on routes that
/// restrict methods, `_method` dropped), headers ([`rewrite_headers`]), `Host`.
///
/// # Errors
/// `BadRequest` if the URI cannot be rebuilt.
pub(crate) fn prepare(
    req: &mut Request<Incoming>,
    profile: &Profile,
    f: &Forward<'_>,
) -> Result<(), Reason> {
    // Every source the configuration names is stripped, on public routes too; with
    // `forward_credential` the one the key was read from goes on.
    let kept = f
        .credential_source
        .filter(|_| profile.forward_credential)
        .map(|i| &profile.credentials[i]);
    let restricts_methods = f.route.methods.is_some();
    let mut headers = std::mem::take(req.headers_mut());
    let mut query = crate::request::credential::strip(
        &profile.named_credentials,
        kept,
        &mut headers,
        req.uri().query(),
    );
    if let Some(q) = query.as_ref() {
        if restricts_methods && crate::request::credential::has_query_param(q, METHOD_PARAM) {
            query = Some(Cow::Owned(crate::request::credential::strip_query_param(
                q,
                METHOD_PARAM,
            )));
        }
    }
    if let Some(uri) = upstream_uri(f.spec, req.uri(), query.as_ref())? {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
    let toward = Toward {
        identity: f.identity,
        who: f.who,
        remote: f.remote,
        guard: f.guard,
        restricts_methods,
    };
    rewrite_headers(&mut headers, &toward);
    headers.insert(header::HOST, f.host.clone());
    *req.headers_mut() = headers;
    Ok(())
}

/// Sends the prepared request; the response streams back as it arrives.
///
/// A failure of the caller's own body (closed or reset mid-body, malformed chunking, or a body
/// still awaited from the caller when the timeout fires) is `RequestBodyFailed`: the caller's
/// failure, which no circuit breaker counts (`crate::runtime::service` counts only the upstream's).
///
/// # Errors
/// `UpstreamTimeout` when headers do not arrive in time, `PayloadTooLarge` when the body
/// streams past `max_body`, `RequestBodyFailed` when the caller's body fails,
/// `UpstreamUnavailable` otherwise.
pub(crate) async fn send(
    upstreams: &Upstreams,
    f: &Forward<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Reason> {
    let (parts, body) = req.into_parts();
    let (body, caller) = BoundedBody::new(body, f.max_body);
    let req = Request::from_parts(parts, body);
    let sent = if f.engine == Engine::Direct && !f.spec.is_https() {
        let sent = direct::exchange(&upstreams.direct[f.upstream], f.spec, req);
        tokio::time::timeout(f.spec.timeout, sent).await.map(|r| {
            r.map(|resp| resp.map(Body::Direct))
                .map_err(SendError::from)
        })
    } else {
        let sent = upstreams.request(f.upstream, f.spec, req);
        tokio::time::timeout(f.spec.timeout, sent)
            .await
            .map(|r| r.map(|resp| resp.map(Body::Upstream)))
    };
    match sent {
        Err(_) if caller.is_waiting() => {
            tracing::debug!(upstream = %f.spec.name, "The caller's request body did not arrive in time.");
            Err(Reason::RequestBodyFailed)
        }
        Err(_) => Err(Reason::UpstreamTimeout),
        Ok(Err(e)) if bounded_body::is_too_large(&e) => Err(Reason::PayloadTooLarge),
        Ok(Err(e)) if bounded_body::is_client_failure(&e) => {
            tracing::debug!(upstream = %f.spec.name, error = %e, "The caller's request body failed.");
            Err(Reason::RequestBodyFailed)
        }
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
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn each_worker_sends_its_own_copies_of_configured_header_values() {
        let spec = UpstreamSpec::parse("u", "http://10.0.0.1:9000/api").unwrap();
        let upstreams = Upstreams::new(std::slice::from_ref(&spec));
        assert_eq!(upstreams.host(0), &spec.host);
        assert_ne!(
            upstreams.host(0).as_bytes().as_ptr(),
            spec.host.as_bytes().as_ptr()
        );
        let configured = IdentityHeaders {
            client_id: HeaderName::from_static("x-tt-client"),
            ..IdentityHeaders::default()
        };
        let copy = configured.copied();
        assert_eq!(copy.all(), configured.all());
        assert_ne!(
            copy.client_id.as_str().as_ptr(),
            configured.client_id.as_str().as_ptr()
        );
    }

    #[test]
    fn upstream_uris() {
        let spec = UpstreamSpec::parse("u", "http://10.0.0.1:9000/api").unwrap();
        let original: Uri = "/cs2/v1/matches?api_key=secret&page=2".parse().unwrap();
        let stripped = Cow::Owned("page=2".to_owned());
        assert_eq!(
            upstream_uri(&spec, &original, Some(&stripped))
                .unwrap()
                .unwrap()
                .to_string(),
            "/api/cs2/v1/matches?page=2"
        );
        assert_eq!(
            upstream_uri(
                &spec,
                &"/x?api_key=s".parse().unwrap(),
                Some(&Cow::Owned(String::new()))
            )
            .unwrap()
            .unwrap()
            .to_string(),
            "/api/x"
        );
        // Nothing to change: the original target goes as it is.
        let plain = UpstreamSpec::parse("u", "http://10.0.0.1:9000").unwrap();
        let unchanged = Cow::Borrowed("api_key=secret&page=2");
        assert!(upstream_uri(&plain, &original, Some(&unchanged))
            .unwrap()
            .is_none());
        let absolute: Uri = "http://evil.example/x?y=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &absolute, Some(&Cow::Borrowed("y=1")))
                .unwrap()
                .unwrap()
                .to_string(),
            "/x?y=1"
        );
    }
}
