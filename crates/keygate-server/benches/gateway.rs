//! Hot-path benchmarks on a replica of 1,000,000 keys: the lookup alone, authentication
//! (format + digest + lookup + state), and the whole decision a proxied request takes (route,
//! credential, format, digest, lookup, state, scope, sport and bookmaker allowlists, plan
//! feature, and the local rate limits: a per-second rate and a daily quota).
//!
//! The clock is fake and moves 1 ms per iteration, so the limits stay on their allowing,
//! counting path. Keys are drawn from 4,096 of the million in a fixed shuffled order, so the
//! lookups miss the CPU caches as a busy node's do. Run: `cargo bench -p keygate-server`.
//!
//! `whole` runs with no suspension in force (what every request pays for the feature: one
//! atomic load); `whole_10_suspensions` with ten in force that do not hold the request (each
//! is checked: the worst case of a request let through), and `suspended` with one that holds
//! it (the refusal up to the exit, which renders it). `whole_restricted_key` runs with every
//! hot key restricted (issue 22: narrowed scopes and a two-CIDR allowlist that admits the
//! request); `whole` is what unrestricted keys pay for the feature (one pointer test).
//! `whole_sharing_on` is `whole` with
//! `[plans.pro.sharing]` on (key-sharing detection queuing each request's network); `whole`
//! is what the feature costs when off: one branch on the client's plan.
//! `forward_headers` adds to `whole` the upstream choice and the identity headers a forwarded
//! request gets; `forward_headers_delay_on` is the same with the plan delayed (issue 22's
//! delayed tiers: one more header), so `forward_headers` is what delayed tiers cost when off.
//!
//! `ws_1m` times WebSocket channel caps and egress metering off the request path:
//! `channel_lease`, what a plan's `max_channels_per_client` costs per new channel (one lease
//! taken and given back), and `egress_count`, what each delivered message pays to be counted
//! with usage.
//!
//! `exit_traced` is a forwarded request's exit (metrics, usage and analytics counts, and its
//! span) with `[tracing]` off, on with the request not sampled (`sample_ratio = 0`: the ids
//! are drawn and `traceparent` is written for the upstream, no span is built), and on with
//! it sampled (the span built and handed to the batch processor's queue). The exporter
//! discards what it gets: serialising and sending a batch happen on the exporter's thread,
//! not the request's, and are not in these figures.
//!
//! `access_line` is the same exit with the access log on (the binary's default): the line as
//! tracing-subscriber's fmt layer formats it and as keygate's own formatter does
//! (`keygate_server::access_log`), text and JSON, written to a sink.

mod support;

/// The allocator the `keygate` binary ships with, so the figures are those of the binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use keygate_core::suspension::{Suspension, Target};
use keygate_core::{Slug, SuspensionId, Timestamp};
use keygate_server::check;
use keygate_server::gateway::Gateway;

const KEYS: usize = 1_000_000;
const HOT: usize = 4_096;

/// Polls a future that is ready at once (the local limiter never waits).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the local limiter does not wait"),
    }
}

fn hot_path(c: &mut Criterion) {
    let (gw, clock, plaintexts) = support::gateway(KEYS);
    let mut pick = support::seeded(7);
    let sample: Vec<&str> = (0..HOT)
        .map(|_| {
            let mut b = [0u8; 4];
            pick(&mut b);
            plaintexts[u32::from_le_bytes(b) as usize % plaintexts.len()].as_str()
        })
        .collect();
    let digests: Vec<_> = sample
        .iter()
        .map(|k| gw.config.issuer.digester.digest(k))
        .collect();
    let headers: Vec<HeaderMap> = sample
        .iter()
        .map(|k| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", HeaderValue::from_str(k).expect("ASCII key"));
            h.insert("accept", HeaderValue::from_static("application/json"));
            h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
            h
        })
        .collect();

    let mut group = c.benchmark_group("replica_1m");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            black_box(gw.replica.get(black_box(&digests[i])))
        })
    });
    let absent = gw.config.issuer.digester.digest("kg_not_issued");
    group.bench_function("lookup_miss", |b| {
        b.iter(|| black_box(gw.replica.get(black_box(&absent))))
    });
    group.finish();

    let mut group = c.benchmark_group("decision_1m");
    group.throughput(Throughput::Elements(1));
    group.bench_function("authenticate", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            black_box(gw.authenticate(black_box(sample[i])).is_ok())
        })
    });
    let method = Method::GET;
    let path = "/cs2/v1/matches/12345";
    let query = Some("bookmaker=bet365&page=2");
    group.bench_function("whole", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            clock.advance(Duration::from_millis(1));
            black_box(decide_and_limit(&gw, &method, path, query, &headers[i]))
        })
    });

    // Quota controls on: every client of the sample has a top-up and a reset in force for
    // the current day, so each request finds its client's adjustment and applies it.
    let now = gw.clock.now();
    let (start, end) = keygate_core::limit::Window::Day.bounds(now);
    let mut adjusted: Vec<keygate_store::QuotaAdjustment> = digests
        .iter()
        .filter_map(|d| gw.replica.get(d))
        .map(|k| keygate_store::QuotaAdjustment {
            client_id: k.client.load().policy.id.clone(),
            window: keygate_core::limit::Window::Day,
            window_start: start,
            window_end: end,
            topup: 1_000,
            resets: 1,
        })
        .collect();
    adjusted.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    adjusted.dedup_by(|a, b| a.client_id == b.client_id);
    gw.quotas.set(&adjusted);
    group.bench_function("whole_topped_up", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            clock.advance(Duration::from_millis(1));
            black_box(decide_and_limit(&gw, &method, path, query, &headers[i]))
        })
    });
    gw.quotas.set(&[]);
    // The decision, the limits and what the request's exit counts: with `[analytics]` on
    // (the default: an hourly entry per key and route, and the upstream latency histogram with
    // its two clock reads), and off (a daily entry per client, as before analytics).
    let route = gw.analytics_ids.route(Some(0));
    let upstream = gw.analytics_ids.upstream(0);
    group.bench_function("whole_counted", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            clock.advance(Duration::from_millis(1));
            let sent = std::time::Instant::now();
            let (allowed, who) = decide_and_limit_who(&gw, &method, path, query, &headers[i]);
            let now = gw.clock.now();
            gw.usage
                .record(&who.client, Some(&who.key.limit_subject), route, now, 200);
            gw.usage
                .record_latency(route, upstream, now, sent.elapsed());
            black_box(allowed)
        })
    });
    group.bench_function("whole_counted_analytics_off", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            clock.advance(Duration::from_millis(1));
            let (allowed, who) = decide_and_limit_who(&gw, &method, path, query, &headers[i]);
            gw.usage.record(&who.client, None, 0, gw.clock.now(), 200);
            black_box(allowed)
        })
    });

    // Ten suspensions in force, none holding the request: each is checked.
    let now = gw.clock.now();
    let ten: Vec<Suspension> = (0..10)
        .map(|i| {
            suspension(Target::Bookmaker(
                Slug::new(&format!("b{i}")).expect("a slug"),
            ))
        })
        .collect();
    gw.suspensions.set(ten.clone(), now);
    group.bench_function("whole_10_suspensions", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            clock.advance(Duration::from_millis(1));
            black_box(decide_and_limit(&gw, &method, path, query, &headers[i]))
        })
    });
    // One more that holds it, checked last: the request is refused `suspended`.
    let mut held = ten;
    held.push(suspension(Target::Sport(Slug::new("cs2").expect("a slug"))));
    gw.suspensions.set(held, now);
    group.bench_function("suspended", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            let refused = check::decide(
                &gw,
                &method,
                path,
                query,
                black_box(&headers[i]),
                std::net::IpAddr::from([127, 0, 0, 1]),
            )
            .expect_err("a suspended request");
            black_box(refused.reason())
        })
    });
    gw.suspensions.set(Vec::new(), now);

    // Key-sharing detection on every client's plan: each request also queues its network
    // (between two flushes, a lookup in the pending map finding it already there).
    let sharing = keygate_server::config::load(
        &format!(
            "{}\n[plans.pro.sharing]\nnetworks_per_hour = 10\n",
            support::CONFIG
        ),
        "bench.toml",
        &keygate_server::config::Overrides::default(),
    )
    .expect("the bench config compiles");
    gw.replica.recompile(&keygate_server::feed::Plans(&sharing));
    group.bench_function("whole_sharing_on", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            clock.advance(Duration::from_millis(1));
            black_box(decide_and_limit(&gw, &method, path, query, &headers[i]))
        })
    });
    gw.replica
        .recompile(&keygate_server::feed::Plans(&gw.config));

    // Delayed tiers (issue 22): what a forwarded request pays after the decision for the
    // upstream choice and the identity headers, with every client on a plan without a delay
    // (`forward_headers`) and on one with `delay = "60s"` (`forward_headers_delay_on`: the
    // `X-Keygate-Delay` header is written too).
    let mut out = HeaderMap::with_capacity(16);
    let identity = gw.config.profile.identity.clone();
    let delayed = keygate_server::config::load(
        &support::CONFIG.replace("[plans.pro]\n", "[plans.pro]\ndelay = \"60s\"\n"),
        "bench.toml",
        &keygate_server::config::Overrides::default(),
    )
    .expect("the bench config compiles");
    for (name, plans) in [
        ("forward_headers", &gw.config),
        ("forward_headers_delay_on", &delayed),
    ] {
        gw.replica.recompile(&keygate_server::feed::Plans(plans));
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % HOT;
                clock.advance(Duration::from_millis(1));
                black_box(forward_headers(
                    &gw,
                    &method,
                    path,
                    query,
                    &headers[i],
                    &identity,
                    &mut out,
                ))
            })
        });
    }
    gw.replica
        .recompile(&keygate_server::feed::Plans(&gw.config));

    // Issue 22: the hot keys restricted (their client's scopes, two CIDRs, the request's
    // address in the second), so the request passes after the CIDR walk and the key's own
    // scope check. `whole` above is the cost when no key has restrictions.
    let restricted: Vec<keygate_core::ApiKey> =
        sample.iter().map(|k| restricted_key(&gw, k)).collect();
    gw.replica.apply(
        &keygate_store::Delta {
            version: gw.replica.version() + 1,
            keys: restricted,
            ..Default::default()
        },
        &|_: &str| Vec::<String>::new(),
    );
    group.bench_function("whole_restricted_key", |b| {
        b.iter(|| {
            i = (i + 1) % HOT;
            clock.advance(Duration::from_millis(1));
            black_box(decide_and_limit(&gw, &method, path, query, &headers[i]))
        })
    });
    group.finish();

    // WebSocket channel caps and egress (issue 22): neither is on the decision above (`whole`
    // is what they cost a request: nothing). Per new channel with `max_channels_per_client`,
    // one lease taken (and given back on unsubscribe or close) on the local limiter; per
    // message delivered, one egress count.
    let mut group = c.benchmark_group("ws_1m");
    group.throughput(Throughput::Elements(1));
    let who: Vec<_> = digests
        .iter()
        .filter_map(|d| gw.replica.get(d))
        .map(|k| k.client.load())
        .collect();
    let ttl = Duration::from_secs(30);
    let mut lease = 0u64;
    group.bench_function("channel_lease", |b| {
        b.iter(|| {
            i = (i + 1) % who.len();
            lease += 1;
            let key = keygate_limits::LimitKey::new(who[i].limit_subject.clone(), 11);
            let now = gw.clock.now();
            let state = ready(gw.limits.acquire_lease(&key, 50, lease, ttl, now)).expect("local");
            ready(gw.limits.release_lease(&key, lease));
            black_box(state.allowed)
        })
    });
    group.bench_function("egress_count", |b| {
        b.iter(|| {
            i = (i + 1) % who.len();
            gw.usage
                .record_ws(&who[i], gw.clock.now(), 0, 1, black_box(120));
        })
    });
    group.finish();
}

/// The replica's key for `plaintext`, narrowed to its client's scopes and two CIDRs (the
/// bench's 127.0.0.1 in the second).
fn restricted_key(gw: &Gateway, plaintext: &str) -> keygate_core::ApiKey {
    use keygate_core::key_restrictions::parse_cidr;
    let digest = gw.config.issuer.digester.digest(plaintext);
    let entry = gw.replica.get(&digest).expect("a hot key");
    let client = entry.client.load();
    keygate_core::ApiKey {
        id: keygate_core::KeyId::parse(entry.id()).expect("a key id"),
        client_id: client.policy.id.clone(),
        digest,
        hint: String::new(),
        label: String::new(),
        state: keygate_core::KeyState::Active,
        expires_at: None,
        created_at: Timestamp::from_millis(support::T0),
        rotated_at: None,
        replaced_by: None,
        last_used_at: None,
        restrictions: keygate_core::KeyRestrictions {
            scopes: Some(
                client
                    .policy
                    .scopes
                    .iter()
                    .map(|s| keygate_core::Scope::new(s).expect("a scope"))
                    .collect(),
            ),
            allowed_cidrs: vec![
                parse_cidr("10.0.0.0/8").expect("a cidr"),
                parse_cidr("127.0.0.0/8").expect("a cidr"),
            ],
            ..Default::default()
        },
    }
}

/// The decision and the limits of one allowed request: the `whole` cases.
fn decide_and_limit(
    gw: &Gateway,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<bool> {
    let passed = check::decide(
        gw,
        method,
        path,
        query,
        black_box(headers),
        std::net::IpAddr::from([127, 0, 0, 1]),
    )
    .expect("an allowed request");
    let who = passed.who.as_ref().expect("an authenticated caller");
    let now = gw.clock.now();
    let limited = ready(gw.check_limits(who, passed.route, now)).expect("limits apply");
    limited.map(|(_, state)| state.allowed)
}

/// [`decide_and_limit`], then the upstream the request goes to and its identity headers
/// (what a delayed plan adds to the hot path); the number of headers written.
fn forward_headers(
    gw: &Gateway,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    identity: &keygate_server::check::IdentityHeaders,
    out: &mut HeaderMap,
) -> (usize, usize) {
    let passed = check::decide(
        gw,
        method,
        path,
        query,
        black_box(headers),
        std::net::IpAddr::from([127, 0, 0, 1]),
    )
    .expect("an allowed request");
    let who = passed.who.as_ref().expect("an authenticated caller");
    let now = gw.clock.now();
    let limited = ready(gw.check_limits(who, passed.route, now)).expect("limits apply");
    black_box(limited);
    let upstream = passed.upstream(0);
    out.clear();
    who.write_identity(out, identity);
    (upstream, out.len())
}

/// [`decide_and_limit`], also giving the caller (for the exit's counts).
fn decide_and_limit_who(
    gw: &Gateway,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> (Option<bool>, keygate_server::check::Admitted) {
    let passed = check::decide(
        gw,
        method,
        path,
        query,
        black_box(headers),
        std::net::IpAddr::from([127, 0, 0, 1]),
    )
    .expect("an allowed request");
    let who = passed.who.expect("an authenticated caller");
    let now = gw.clock.now();
    let limited = ready(gw.check_limits(&who, passed.route, now)).expect("limits apply");
    (limited.map(|(_, state)| state.allowed), who)
}

/// A suspension in force with no end.
fn suspension(target: Target) -> Suspension {
    Suspension {
        id: SuspensionId::generate(),
        target,
        client_id: None,
        message: Some("Integrity hold.".into()),
        until: None,
        created_at: Timestamp::from_millis(support::T0),
        created_by: "cli:bench".into(),
        lifted_at: None,
        lifted_by: None,
    }
}

/// An exporter that drops every batch: the request's side of tracing is what is measured.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        drop(batch);
        std::future::ready(Ok(()))
    }
}

/// The hot keys' admitted requests for `GET /cs2/v1/matches/12345?bookmaker=bet365&page=2`,
/// with the headers each came with.
fn forwarded_callers(gw: &Gateway, plaintexts: &[String]) -> Vec<(HeaderMap, check::Admitted)> {
    let path = "/cs2/v1/matches/12345";
    let query = Some("bookmaker=bet365&page=2");
    plaintexts
        .iter()
        .take(HOT)
        .map(|k| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", HeaderValue::from_str(k).expect("ASCII key"));
            h.insert("accept", HeaderValue::from_static("application/json"));
            let (_, who) = decide_and_limit_who(gw, &Method::GET, path, query, &h);
            (h, who)
        })
        .collect()
}

/// Times the exits of `callers`' forwarded requests, one after the other.
fn forwarded_exits(
    b: &mut criterion::Bencher<'_>,
    gw: &Gateway,
    callers: &[(HeaderMap, check::Admitted)],
) {
    let mut to_upstream = HeaderMap::new();
    let mut i = 0;
    b.iter(|| {
        i = (i + 1) % callers.len();
        let (incoming, who) = &callers[i];
        check::bench_forwarded(gw, who, black_box(incoming), &mut to_upstream);
        black_box(&to_upstream);
    });
}

/// A forwarded request's exit with tracing off, on and unsampled, and on and sampled.
fn traced_exit(c: &mut Criterion) {
    const KEYS_HERE: usize = 10_000;
    let mut group = c.benchmark_group("exit_traced");
    group.throughput(Throughput::Elements(1));
    for (name, ratio) in [
        ("off", None),
        ("unsampled", Some(0.0)),
        ("sampled", Some(1.0)),
    ] {
        let (gw, _clock, plaintexts) = support::gateway(KEYS_HERE);
        if let Some(sample_ratio) = ratio {
            let config = keygate_server::config::TracingConfig {
                otlp_endpoint: "http://127.0.0.1:9".into(),
                service_name: "bench".into(),
                sample_ratio,
                max_queue: 65_536,
                export_timeout: Duration::from_secs(1),
            };
            let tracer = keygate_server::traces::Tracer::with_exporter(&config, Discard);
            assert!(gw.tracer.set(tracer).is_ok(), "one tracer");
        }
        let callers = forwarded_callers(&gw, &plaintexts);
        group.bench_function(name, |b| forwarded_exits(b, &gw, &callers));
        if let Some(t) = gw.tracer.get() {
            t.shutdown();
        }
    }
    group.finish();
}

/// A forwarded request's exit (as `exit_traced/off`) with the access log on: its line
/// formatted by tracing-subscriber's fmt layer (`fmt_*`) and by keygate's own formatter
/// (`own_*`, what the binary uses), written to a sink; `off` has no subscriber.
fn access_line(c: &mut Criterion) {
    use keygate_server::access_log::AccessFirst;
    use tracing_subscriber::fmt::format;
    let mut group = c.benchmark_group("access_line");
    group.throughput(Throughput::Elements(1));
    let (gw, _clock, plaintexts) = support::gateway(10_000);
    let callers = forwarded_callers(&gw, &plaintexts);
    let fmt = || {
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(std::io::sink)
    };
    let cases: [(&str, Option<tracing::Dispatch>); 5] = [
        ("off", None),
        ("fmt_text", Some(fmt().finish().into())),
        (
            "own_text",
            Some(
                fmt()
                    .event_format(AccessFirst::text(format()))
                    .finish()
                    .into(),
            ),
        ),
        ("fmt_json", Some(fmt().json().finish().into())),
        (
            "own_json",
            Some(
                fmt()
                    .json()
                    .event_format(AccessFirst::json(format().json()))
                    .finish()
                    .into(),
            ),
        ),
    ];
    for (name, dispatch) in cases {
        let _default = dispatch.map(|d| tracing::dispatcher::set_default(&d));
        group.bench_function(name, |b| forwarded_exits(b, &gw, &callers));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path, traced_exit, access_line
}
criterion_main!(benches);
