//! OpenTelemetry spans over OTLP/HTTP (`[tracing]`, off by default).
//!
//! One span per request, made at the request's one exit (`crate::request::exit::record`). The
//! span's ids are chosen when the request arrives ([`Tracer::begin`]) so that the upstream can
//! be told of it (`traceparent`) before the span ends; the SDK's tracer would pick the span id
//! only when the span starts, so spans are handed to the SDK's batch processor as finished
//! [`SpanData`]. The processor's queue is bounded: when the collector is down, spans are dropped
//! rather than memory growing, and requests never wait on an export. Every span lost that way,
//! or in an export the collector refused or never answered, is counted
//! (`keygate_trace_spans_dropped_total`).
//!
//! A span holds the method, route name, status, reason code, decision, client id and key id
//! (the key's id, never the key or its digest) and the upstream's time: never the query string
//! or a request header.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::config::TracingConfig;

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The span exporter of a gateway with `[tracing]`.
pub struct Tracer {
    processor: BatchSpanProcessor,
    stats: Arc<SpanStats>,
    max_queue: usize,
    /// `sample_ratio` as a bound on a trace id's low 63 bits (`u64::MAX`: every trace).
    threshold: u64,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

/// A request's trace, from its arrival to its exit.
#[derive(Debug)]
pub struct TraceCtx {
    trace_id: TraceId,
    span_id: SpanId,
    /// The caller's span, when it sent a valid `traceparent`.
    parent: Option<SpanId>,
    sampled: bool,
    start: SystemTime,
    /// How long the upstream took to answer with its headers, when the request went there.
    pub upstream: Option<Duration>,
}

impl Tracer {
    /// Builds the exporter and its batch processor (a thread of its own).
    ///
    /// # Errors
    /// [`TracingError::Exporter`] when the exporter cannot be built.
    pub fn start(config: &TracingConfig) -> Result<Tracer, TracingError> {
        let endpoint = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
        let timeout = config.export_timeout;
        // The blocking HTTP client owns a runtime of its own, which may be neither built nor
        // dropped on one of tokio's threads.
        let exporter = std::thread::spawn(move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| TracingError::Exporter("the builder panicked".into()))?
        .map_err(|e| TracingError::Exporter(e.to_string()))?;
        Ok(Tracer::with_exporter(config, exporter))
    }

    /// A tracer sending its spans to `exporter` (the OTLP one, or the benches' own).
    pub fn with_exporter<E: SpanExporter + 'static>(config: &TracingConfig, exporter: E) -> Tracer {
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue)
            .with_max_export_batch_size(config.max_queue.min(512))
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let stats = Arc::new(SpanStats::default());
        let exporter = Counting {
            inner: exporter,
            stats: Arc::clone(&stats),
        };
        let mut processor = BatchSpanProcessor::new(exporter, batch);
        processor.set_resource(
            &Resource::builder_empty()
                .with_attribute(KeyValue::new("service.name", config.service_name.clone()))
                .build(),
        );
        Tracer {
            processor,
            stats,
            max_queue: config.max_queue,
            threshold: threshold(config.sample_ratio),
            scope: InstrumentationScope::builder("keygate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// A request's trace: the caller's, when its `traceparent` is valid, else a new one.
    /// A malformed `traceparent` is ignored, never echoed.
    pub fn begin(&self, headers: &HeaderMap) -> Box<TraceCtx> {
        let incoming = headers
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let span_id = new_span_id();
        let ctx = match incoming {
            Some((trace_id, parent, sampled)) => TraceCtx {
                trace_id,
                span_id,
                parent: Some(parent),
                sampled,
                start: SystemTime::now(),
                upstream: None,
            },
            None => {
                let trace_id = new_trace_id();
                let bytes = trace_id.to_bytes();
                let low = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default()) >> 1;
                TraceCtx {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: self.threshold == u64::MAX || low < self.threshold,
                    start: SystemTime::now(),
                    upstream: None,
                }
            }
        };
        Box::new(ctx)
    }

    /// Hands the request's span to the exporter (when sampled); never waits.
    pub fn end(&self, ctx: &TraceCtx, name: String, attributes: Vec<KeyValue>, error: bool) {
        if !ctx.sampled {
            return;
        }
        // The queue's bound, kept here because the SDK does not say what it dropped: a span
        // past `max_queue` waiting for the exporter is counted and dropped before it is built.
        if self.stats.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queue {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let span = SpanData {
            span_context: SpanContext::new(
                ctx.trace_id,
                ctx.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: ctx.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: ctx.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: ctx.start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: if error {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        };
        self.processor.on_end(span);
    }

    /// `keygate_trace_spans_dropped_total`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP keygate_trace_spans_dropped_total Sampled spans not exported: the export queue (tracing.max_queue) was full, or the collector refused or did not answer their export.\n\
             # TYPE keygate_trace_spans_dropped_total counter\n\
             keygate_trace_spans_dropped_total {}\n",
            self.stats.dropped.load(Ordering::Relaxed),
        );
    }

    /// Exports what is queued, waiting at most the export timeout.
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::debug!(error = %e, "Tracing exporter shutdown.");
        }
    }
}

impl TraceCtx {
    /// Whether this request's span is exported (the caller's flag, or the sample ratio).
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The `traceparent` the upstream receives: this trace, the gateway's span as parent.
    /// Written as hex into a fixed buffer: every request of a traced gateway pays for it,
    /// sampled or not, and `format!` through the ids' `Display` cost several times as much.
    pub fn traceparent(&self) -> HeaderValue {
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut v[3..35], &self.trace_id.to_bytes());
        write_hex(&mut v[36..52], &self.span_id.to_bytes());
        if self.sampled {
            v[54] = b'1';
        }
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Whether the caller sent a valid `traceparent` (its `tracestate` goes on with it).
    pub fn continued(&self) -> bool {
        self.parent.is_some()
    }
}

/// What the export queue holds and what was lost, shared with the exporter's thread.
#[derive(Debug, Default)]
struct SpanStats {
    /// Spans handed to the processor and not yet to an export.
    queued: AtomicUsize,
    /// Spans lost: queue full, or their export failed (refused, timed out, unreachable).
    dropped: AtomicU64,
}

/// The OTLP exporter, counting what leaves the queue and what it could not deliver.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    stats: Arc<SpanStats>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        self.stats.queued.fetch_sub(n, Ordering::Relaxed);
        let stats = Arc::clone(&self.stats);
        let exported = self.inner.export(batch);
        async move {
            let result = exported.await;
            if result.is_err() {
                stats
                    .dropped
                    .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Tells the upstream of the gateway's span: its `traceparent`; the caller's `tracestate`
/// goes on only with the caller's valid `traceparent`.
pub(crate) fn toward_upstream(ctx: &TraceCtx, headers: &mut HeaderMap) {
    headers.insert(TRACEPARENT, ctx.traceparent());
    if !ctx.continued() {
        headers.remove(TRACESTATE);
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio <= 0.0 {
        0
    } else {
        // Truncation intended: the bound of a share of 2^63.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let t = (ratio * (1u64 << 63) as f64) as u64;
        t
    }
}

/// A new trace id from the SDK's generator: a per-thread PRNG seeded from the OS, not a
/// `getrandom` system call per id (two of them made up most of an unsampled request's cost).
/// Trace ids are correlation ids, not secrets; all zeros is invalid and drawn again.
fn new_trace_id() -> TraceId {
    loop {
        let id = RandomIdGenerator::default().new_trace_id();
        if id != TraceId::INVALID {
            return id;
        }
    }
}

/// A new span id, as [`new_trace_id`].
fn new_span_id() -> SpanId {
    loop {
        let id = RandomIdGenerator::default().new_span_id();
        if id != SpanId::INVALID {
            return id;
        }
    }
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// A W3C `traceparent` of version `00`: exactly `00-<32 hex>-<16 hex>-<2 hex>`, lower-case,
/// neither id all zeros. Anything else is `None`.
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace: [u8; 16] = hex(&v[3..35])?;
    let span: [u8; 8] = hex(&v[36..52])?;
    let flags: [u8; 1] = hex(&v[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        flags[0] & 1 == 1,
    ))
}

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, sampled) = parse_traceparent(v).unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(sampled);
    }

    #[test]
    fn hostile_traceparents_are_ignored() {
        for v in [
            &b""[..],
            b"garbage",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            &[b'0'; 4096][..],
        ] {
            assert!(
                parse_traceparent(v).is_none(),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn the_traceparent_written_is_the_one_read() {
        for sampled in [false, true] {
            let ctx = TraceCtx {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent: None,
                sampled,
                start: SystemTime::now(),
                upstream: None,
            };
            let v = ctx.traceparent();
            let expected = format!(
                "00-{}-{}-{}",
                ctx.trace_id,
                ctx.span_id,
                if sampled { "01" } else { "00" }
            );
            assert_eq!(v.to_str().unwrap(), expected);
            let (t, s, f) = parse_traceparent(v.as_bytes()).unwrap();
            assert_eq!((t, s, f), (ctx.trace_id, ctx.span_id, sampled));
        }
    }

    #[test]
    fn sample_ratio_bounds() {
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(0.5), 1u64 << 62);
    }
}
