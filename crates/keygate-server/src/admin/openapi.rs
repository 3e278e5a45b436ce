//! The admin API's OpenAPI 3.1 document, served at `GET /openapi.json` without a token.
//!
//! Paths come from the `#[utoipa::path]` annotations on the handlers. The response types that
//! live in `keygate-core` and `keygate-store` (which do not depend on utoipa) are described here
//! by mirror structs that follow their serde output field for field, as are the JSON answers the
//! handlers build by hand (issued keys, pages).
//!
//! Failures common to every operation (401, 500, 503, and 403 for writes) are added by
//! [`CommonProblems`] rather than repeated on each handler.

use std::sync::LazyLock;

use axum::response::IntoResponse;
use http::header::CONTENT_TYPE;
use utoipa::openapi::path::Operation;
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Required, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{
    amqp, analytics, audit, clients, config, emergency, keys, plans, portal, quotas, sharing,
    suspensions, usage, webhooks,
};

/// The name of the admin token security scheme.
pub(crate) const BEARER: &str = "bearer";

/// An RFC 9457 problem, sent as `application/problem+json`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Problem {
    /// Always `about:blank`.
    #[schema(example = "about:blank")]
    r#type: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Not Found")]
    title: String,
    /// The HTTP status code.
    #[schema(example = 404)]
    status: u16,
    /// What went wrong, for people.
    detail: String,
    /// The stable, machine-readable failure code clients match on.
    #[schema(example = "client_not_found")]
    code: String,
    /// The offending field; only with `invalid_value`.
    #[schema(nullable = false)]
    field: Option<String>,
}

/// Per-contract limits; each overrides the plan's value. Unset limits are omitted.
#[derive(ToSchema)]
#[schema(as = LimitOverrides)]
#[allow(dead_code)]
pub(crate) struct LimitOverrides {
    #[schema(nullable = false, minimum = 1)]
    rps: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_minute: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_hour: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_day: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_month: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    ws_connections: Option<u64>,
}

/// An invitation to the customer portal.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PortalInvitation {
    /// The single-use sign-in link, valid 15 minutes.
    #[schema(example = "https://portal.example.com/sign-in/link?token=0f3a...")]
    link: String,
    /// The address, lowercased.
    email: String,
    /// The client's id.
    #[schema(pattern = "^cli_[0-9a-z]{16}$")]
    client_id: String,
    /// When the link stops working.
    #[schema(format = DateTime)]
    expires_at: String,
    /// Whether the link was mailed (false when the node has no `[portal.smtp]`).
    mailed: bool,
}

/// A client (tenant): what every one of its keys may do.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Client {
    /// Stable id: `cli_` and 16 characters of `0-9a-z`.
    #[schema(pattern = "^cli_[0-9a-z]{16}$", example = "cli_0123456789abcdef")]
    id: String,
    name: String,
    plan: String,
    scopes: Vec<String>,
    /// Sport namespaces the client may reach; empty means none is restricted by sport.
    sports: Vec<String>,
    /// Bookmakers the client may ask for; empty means all bookmakers.
    bookmakers: Vec<String>,
    limits: LimitOverrides,
    active: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// The parent account of a child account; absent otherwise.
    #[schema(pattern = "^cli_[0-9a-z]{16}$", nullable = false)]
    parent: Option<String>,
    /// Profile fields the account keeps through self-service; absent when none.
    #[schema(nullable = false)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// Where a key is in its life; `revoked` is final.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum KeyState {
    Active,
    Disabled,
    Revoked,
}

/// A key as stored and shown: masked, never the plaintext.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ApiKey {
    /// `key_` and 16 characters of `0-9a-z`; not a secret.
    #[schema(pattern = "^key_[0-9a-z]{16}$", example = "key_0123456789abcdef")]
    id: String,
    #[schema(pattern = "^cli_[0-9a-z]{16}$")]
    client_id: String,
    /// The masked key.
    hint: String,
    label: String,
    state: KeyState,
    #[schema(required = true, format = DateTime)]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(required = true, format = DateTime)]
    rotated_at: Option<String>,
    /// The key that replaced this one at rotation.
    #[schema(required = true, pattern = "^key_[0-9a-z]{16}$")]
    replaced_by: Option<String>,
    /// When the key last authenticated, to about a minute plus the gateways' usage flush
    /// interval; null when never.
    #[schema(required = true, format = DateTime)]
    last_used_at: Option<String>,
    /// The key's narrowed scopes (a subset of its client's); absent: all of the client's.
    #[schema(nullable = false)]
    scopes: Option<Vec<String>>,
    /// CIDRs the key may be used from; absent: anywhere.
    #[schema(nullable = false)]
    allowed_cidrs: Option<Vec<String>>,
    /// The operator's labels; absent when none.
    #[schema(nullable = false)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    /// The operator's own id for the key; absent when none.
    #[schema(nullable = false)]
    external_id: Option<String>,
}

/// A freshly issued key: the plaintext `key` is in this answer only.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct IssuedKey {
    #[schema(pattern = "^key_[0-9a-z]{16}$")]
    id: String,
    /// The plaintext key; shown this once, never again.
    key: String,
    hint: String,
    /// The owning client's name.
    client: String,
    #[schema(pattern = "^cli_[0-9a-z]{16}$")]
    client_id: String,
    label: String,
    state: KeyState,
    #[schema(required = true, format = DateTime)]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    /// The key's narrowed scopes (a subset of its client's); absent: all of the client's.
    #[schema(nullable = false)]
    scopes: Option<Vec<String>>,
    /// CIDRs the key may be used from; absent: anywhere.
    #[schema(nullable = false)]
    allowed_cidrs: Option<Vec<String>>,
    /// The operator's labels; absent when none.
    #[schema(nullable = false)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    /// The operator's own id for the key; absent when none.
    #[schema(nullable = false)]
    external_id: Option<String>,
}

/// The key that replaces a rotated one (plaintext shown this once), and what became of the old.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RotatedKey {
    #[schema(pattern = "^key_[0-9a-z]{16}$")]
    id: String,
    /// The plaintext key; shown this once, never again.
    key: String,
    hint: String,
    client: String,
    #[schema(pattern = "^cli_[0-9a-z]{16}$")]
    client_id: String,
    label: String,
    state: KeyState,
    #[schema(required = true, format = DateTime)]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    /// The rotated key's id.
    #[schema(pattern = "^key_[0-9a-z]{16}$")]
    replaces: String,
    /// When the old key stops working (now, without a grace period).
    #[schema(required = true, format = DateTime)]
    old_key_valid_until: Option<String>,
    /// The key's narrowed scopes (a subset of its client's); absent: all of the client's.
    #[schema(nullable = false)]
    scopes: Option<Vec<String>>,
    /// CIDRs the key may be used from; absent: anywhere.
    #[schema(nullable = false)]
    allowed_cidrs: Option<Vec<String>>,
    /// The operator's labels; absent when none.
    #[schema(nullable = false)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    /// The operator's own id for the key; absent when none.
    #[schema(nullable = false)]
    external_id: Option<String>,
}

/// One operator action.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuditEntry {
    /// Increasing; page with `before`.
    id: i64,
    #[schema(format = DateTime)]
    at: String,
    /// Who acted, e.g. `admin:ops`.
    actor: String,
    /// What was done, e.g. `key.rotate`.
    action: String,
    /// What it was done to.
    target: String,
    /// Action-specific details.
    #[schema(value_type = Object)]
    detail: serde_json::Value,
}

/// A page of clients by name; `next_after` is the cursor of the next page, `null` on the last.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ClientPage {
    items: Vec<Client>,
    #[schema(required = true)]
    next_after: Option<String>,
}

/// A page of masked keys in creation order; `next_after` is the next page's cursor, or `null`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct KeyPage {
    items: Vec<ApiKey>,
    #[schema(required = true, pattern = "^key_[0-9a-z]{16}$")]
    next_after: Option<String>,
}

/// One delivery of an event to one webhook.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Delivery {
    /// Increasing; page with `before`, replay with it.
    id: i64,
    /// The event's id, also sent as `Keygate-Event-Id`: receivers deduplicate on it.
    #[schema(pattern = "^evt_[0-9a-f]{24}$")]
    event_id: String,
    /// e.g. `key.revoked`.
    event_type: String,
    /// The webhook's `name`.
    webhook: String,
    #[schema(pattern = "^(pending|delivered|dead)$")]
    state: String,
    /// Attempts made.
    attempts: i64,
    /// When the next attempt is due (pending deliveries).
    #[schema(format = DateTime)]
    next_at: String,
    /// The receiver's last status, when it answered.
    #[schema(required = true)]
    last_status: Option<i64>,
    /// Why the last attempt failed.
    #[schema(required = true)]
    last_error: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(required = true, format = DateTime)]
    delivered_at: Option<String>,
    /// The event as sent (`show` only).
    #[schema(value_type = Object)]
    body: Option<serde_json::Value>,
}

/// A page of deliveries, newest first; `next_before` is the next page's cursor, or `null`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DeliveryPage {
    items: Vec<Delivery>,
    #[schema(required = true)]
    next_before: Option<i64>,
}

/// A configured webhook (its URL and secret are not shown).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Webhook {
    name: String,
    /// The event types its filter takes.
    events: Vec<String>,
    timeout_ms: u64,
    max_attempts: u32,
    backoff_ms: u64,
}

/// The webhooks this node sends to.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct WebhookList {
    items: Vec<Webhook>,
}

/// A page of audit entries, newest first; `next_before` is the next page's cursor, or `null`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuditPage {
    items: Vec<AuditEntry>,
    #[schema(required = true)]
    next_before: Option<i64>,
}

/// A plan's limits; unset limits are omitted.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PlanLimits {
    #[schema(nullable = false, minimum = 1)]
    rps: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_minute: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_hour: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_day: Option<u64>,
    #[schema(nullable = false, minimum = 1)]
    per_month: Option<u64>,
    /// Burst of the rate limits (the limit itself when absent).
    #[schema(nullable = false)]
    burst: Option<u32>,
}

/// Whom a plan's limits count: each client, or each key.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum LimitsBy {
    Client,
    Key,
    Source,
}

/// What key-sharing detection does with a key seen from too many networks.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum SharingActionName {
    Flag,
    Disable,
}

/// A plan's key-sharing detection (`[plans.NAME.sharing]`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PlanSharing {
    /// Distinct networks (IPv4 /24, IPv6 /48) a key may be seen from in an hour.
    #[schema(minimum = 2, maximum = 10000)]
    networks_per_hour: u32,
    action: SharingActionName,
}

/// A plan of the configuration: the features it includes and its limits.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Plan {
    name: String,
    features: Vec<String>,
    limits: PlanLimits,
    limits_by: LimitsBy,
    /// Clients on this plan pick at most this many bookmakers themselves; absent: every
    /// bookmaker.
    #[schema(nullable = false, minimum = 1)]
    bookmaker_selection: Option<u32>,
    /// Key-sharing detection; absent when off.
    #[schema(nullable = false)]
    sharing: Option<PlanSharing>,
    /// A delayed tier: upstream data reaches clients this many seconds late; absent for real
    /// time.
    #[schema(nullable = false, exclusive_minimum = 0, maximum = 3600)]
    delay_seconds: Option<f64>,
}

/// Every configured plan.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PlanList {
    items: Vec<Plan>,
}

/// A reload that was applied.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Reloaded {
    /// The configuration's version on this node: 1 at start, one more per applied reload.
    version: u64,
    /// SHA-256 of the file's text, hex (`/status` `config.hash`).
    hash: String,
    /// Whether the file differed from the one in force.
    changed: bool,
    /// Settings the file changes that take effect only after a restart (kept as running).
    restart_required: Vec<String>,
    /// WebSocket sessions closed because the new configuration no longer allows them.
    sessions_closed: u64,
}

/// Emergency mode as stored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct EmergencyState {
    on: bool,
    /// What callers read; the default sentence when `null`.
    #[schema(required = true)]
    message: Option<String>,
    /// When it was last switched; `null` when never.
    #[schema(required = true, format = DateTime)]
    changed_at: Option<String>,
    /// Who last switched it; `null` when never.
    #[schema(required = true)]
    changed_by: Option<String>,
}

/// A scoped suspension. Exactly one of `scope`, `sport`, `bookmaker` or `route` is present.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Suspension {
    /// `sus_` and 16 characters of `0-9a-z`: what `keygate resume` and `DELETE` take.
    #[schema(pattern = "^sus_[0-9a-z]{16}$", example = "sus_0123456789abcdef")]
    id: String,
    #[schema(nullable = false)]
    scope: Option<String>,
    #[schema(nullable = false)]
    sport: Option<String>,
    #[schema(nullable = false)]
    bookmaker: Option<String>,
    #[schema(nullable = false)]
    route: Option<String>,
    /// Only this client's requests are held; `null`: everyone's.
    #[schema(required = true, pattern = "^cli_[0-9a-z]{16}$")]
    client_id: Option<String>,
    /// What callers read; the default sentence when `null`.
    #[schema(required = true)]
    message: Option<String>,
    /// Lifted by the clock at this instant; `null`: until resumed.
    #[schema(required = true, format = DateTime)]
    until: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    created_by: String,
    /// When an operator lifted it; `null` while not lifted.
    #[schema(required = true, format = DateTime)]
    lifted_at: Option<String>,
    #[schema(required = true)]
    lifted_by: Option<String>,
}

/// One UTC day of a client's usage.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UsageDay {
    #[schema(format = Date)]
    day: String,
    requests: u64,
    /// Requests per HTTP status, keyed by the status code.
    by_status: std::collections::BTreeMap<String, u64>,
    /// WebSocket messages delivered to the client's sessions (upstream to client).
    ws_messages: u64,
    /// Their payload bytes.
    ws_bytes: u64,
}

/// A client's requests per day and status over a range of days.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Usage {
    #[schema(pattern = "^cli_[0-9a-z]{16}$")]
    client_id: String,
    client: String,
    #[schema(format = Date)]
    from: String,
    #[schema(format = Date)]
    to: String,
    /// All requests in the range.
    requests: u64,
    /// All WebSocket messages delivered in the range.
    ws_messages: u64,
    /// Their payload bytes.
    ws_bytes: u64,
    days: Vec<UsageDay>,
}

/// What deleting a client ended.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ClientDeleted {
    #[schema(pattern = "^cli_[0-9a-z]{16}$")]
    id: String,
    name: String,
    #[schema(format = DateTime)]
    deleted_at: String,
    /// Keys revoked by the deletion.
    keys_revoked: u64,
    /// Portal users removed (their sessions ended).
    portal_users: u64,
    /// `none` (no active feed), `revoked` (user and vhost deleted on the broker), or `pending`
    /// (the broker could not be reached; the node acting on the broker removes them when it
    /// answers).
    feed: String,
    /// Why the feed is `pending`.
    feed_error: Option<String>,
}

/// A feed credential as issued: its password appears here, in `url`, and nowhere else.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct IssuedFeed {
    /// `amqp://op-<slug>:<password>@<address>/<slug>`, shown once.
    #[schema(example = "amqp://op-acme-sportsbook:Zx...@mq.ticktock.bet:5672/acme-sportsbook")]
    url: String,
    client: String,
    client_id: String,
    slug: String,
    vhost: String,
    user: String,
    address: String,
    /// `active`.
    state: String,
    created_at: String,
    rotated_at: Option<String>,
}

/// A feed credential as stored (never its password).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Feed {
    client: String,
    client_id: String,
    /// A disabled client's feed keeps its user but may not open its vhost.
    client_active: bool,
    slug: String,
    vhost: String,
    user: String,
    address: String,
    /// The URL with `…` for the password.
    url_hint: String,
    /// `active` or `revoked`.
    state: String,
    created_at: String,
    rotated_at: Option<String>,
    revoked_at: Option<String>,
}

/// One difference between the broker and the store.
#[derive(ToSchema)]
#[schema(as = FeedDriftItem)]
#[allow(dead_code)]
pub(crate) struct FeedDriftItem {
    /// `missing_user`, `missing_vhost`, `password_changed`, `permissions_wrong`,
    /// `revoked_user_present`, `revoked_vhost_present`, `orphan_user`, `orphan_vhost`,
    /// `unmanaged_user`.
    kind: String,
    name: String,
    client: Option<String>,
}

/// The drift found.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FeedDrift {
    items: Vec<FeedDriftItem>,
}

/// What a reconcile found and did.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FeedReconciled {
    found: Vec<FeedDriftItem>,
    repaired: u64,
    /// Users under the naming that keygate did not make: never deleted.
    left: Vec<FeedDriftItem>,
    /// Drift still there afterwards (empty when all is well).
    remaining: Vec<FeedDriftItem>,
}

/// One group of `GET /v1/analytics`: a property per dimension grouped by (`hour` as an RFC 3339
/// instant, `day` as `YYYY-MM-DD`, `client` and `key` as ids, `route` a name, `status` a
/// number), and its count.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AnalyticsGroup {
    #[schema(format = DateTime)]
    hour: Option<String>,
    #[schema(format = Date)]
    day: Option<String>,
    client: Option<String>,
    key: Option<String>,
    route: Option<String>,
    status: Option<u16>,
    requests: u64,
}

/// Request counts over a range of hours, grouped.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Analytics {
    /// The first hour counted.
    #[schema(format = DateTime)]
    from: String,
    /// The end of the last hour counted (excluded).
    #[schema(format = DateTime)]
    to: String,
    group_by: Vec<String>,
    /// The sum over this page's rows.
    requests: u64,
    rows: Vec<AnalyticsGroup>,
    /// The cursor of the next page (`cursor=`), or null on the last page.
    next: Option<String>,
}

/// A cumulative histogram bucket: latencies at most `le_ms` milliseconds (`+Inf`: all).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LatencyBucket {
    le_ms: String,
    count: u64,
}

/// One route's and upstream's latency (request sent to response head) over the range.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LatencyHistogram {
    route: String,
    upstream: String,
    count: u64,
    sum_ms: f64,
    mean_ms: Option<f64>,
    /// Estimated from the buckets (linear within the bucket, as Prometheus's `histogram_quantile`).
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    buckets: Vec<LatencyBucket>,
}

/// Upstream latency histograms over a range of hours.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Latency {
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    histograms: Vec<LatencyHistogram>,
    /// The cursor of the next page (`cursor=`), or null on the last page.
    next: Option<String>,
}

/// A client's WebSocket activity over the range.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct WsClientActivity {
    client: String,
    sessions: u64,
    /// Messages (text and binary) delivered to the client.
    messages: u64,
    bytes: u64,
}

/// WebSocket activity per client over a range of hours.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct WsActivity {
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    clients: Vec<WsClientActivity>,
    /// The cursor of the next page (`cursor=`), or null on the last page.
    next: Option<String>,
}

/// The admin API document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate admin API",
        description = "Clients, keys, usage, plans, emergency mode, suspensions and the audit log of a keygate deployment. Every operation \
                       needs an admin token (`Authorization: Bearer kgadm_...`); read-only tokens \
                       may only read. Failures are RFC 9457 problems (`application/problem+json`).",
    ),
    paths(
        clients::create,
        clients::list,
        clients::show,
        clients::update,
        clients::disable,
        clients::enable,
        clients::delete,
        keys::create,
        keys::list,
        keys::show,
        keys::rotate,
        keys::revoke,
        keys::disable,
        keys::enable,
        keys::set_expiry,
        keys::restrict,
        sharing::list,
        usage::show,
        quotas::show,
        quotas::change,
        analytics::requests,
        analytics::latency,
        analytics::websocket,
        plans::list,
        plans::show,
        emergency::show,
        emergency::set,
        suspensions::create,
        suspensions::list,
        suspensions::show,
        suspensions::lift,
        audit::list,
        amqp::provision,
        amqp::show,
        amqp::rotate,
        amqp::revoke,
        amqp::drift,
        amqp::reconcile,
        config::reload,
        portal::invite,
        webhooks::list_webhooks,
        webhooks::list,
        webhooks::show,
        webhooks::replay,
    ),
    components(schemas(
        Problem,
        LimitOverrides,
        Client,
        ClientPage,
        KeyState,
        ApiKey,
        IssuedKey,
        RotatedKey,
        KeyPage,
        AuditEntry,
        AuditPage,
        sharing::SuspectedKey,
        sharing::SuspectedKeys,
        clients::CreateBody,
        clients::UpdateBody,
        clients::LimitsBody,
        keys::CreateBody,
        keys::RotateBody,
        keys::ExpiryBody,
        keys::PatchBody,
        keys::RestrictionsBody,
        PlanLimits,
        LimitsBy,
        SharingActionName,
        PlanSharing,
        Plan,
        PlanList,
        EmergencyState,
        UsageDay,
        Usage,
        quotas::ChangeBody,
        quotas::QuotaReport,
        quotas::QuotaWindow,
        AnalyticsGroup,
        Analytics,
        LatencyBucket,
        LatencyHistogram,
        Latency,
        WsClientActivity,
        WsActivity,
        emergency::SwitchBody,
        Suspension,
        suspensions::CreateBody,
        IssuedFeed,
        Feed,
        FeedDriftItem,
        FeedDrift,
        FeedReconciled,
        amqp::ProvisionBody,
        amqp::ReconcileBody,
        Reloaded,
        ClientDeleted,
        portal::InviteBody,
        PortalInvitation,
        Delivery,
        DeliveryPage,
        Webhook,
        WebhookList,
    )),
    modifiers(&CommonProblems),
    tags(
        (name = "clients", description = "Clients (tenants) and what their keys may do."),
        (name = "keys", description = "Issuing keys and managing their lifecycle."),
        (name = "plans", description = "The plans of the deployment's configuration (read-only)."),
        (name = "emergency", description = "Emergency mode: every node refuses non-infra requests with 503."),
        (name = "suspensions", description = "Scoped suspensions: every node refuses the requests one holds (a scope, sport, bookmaker or route) with `suspended`."),
        (name = "analytics", description = "Requests per hour, client, key, route and status; upstream latency; WebSocket activity (issue 23)."),
        (name = "audit", description = "The audit log of operator actions."),
        (name = "amqp", description = "Messaging feed credentials: one RabbitMQ vhost and user per client (seed 001)."),
        (name = "config", description = "This node's configuration file: reload it without dropping connections."),
        (name = "portal", description = "The customer portal: inviting people to sign in for a client."),
        (name = "webhooks", description = "Webhook deliveries from the outbox: list, show and replay."),
    ),
)]
pub(crate) struct ApiDoc;

/// Adds the bearer scheme, and the failures every operation shares.
struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("kgadm_...")
                        .description(Some(
                            "An admin token: `Authorization: Bearer kgadm_...`.".to_owned(),
                        ))
                        .build(),
                ),
            );
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/problem+json",
                        Content::new(Some(RefOr::Ref(Ref::from_schema_name("Problem")))),
                    )
                    .build(),
            )
        };
        for item in doc.paths.paths.values_mut() {
            // (operation, whether it reads)
            let operations: [(Option<&mut Operation>, bool); 5] = [
                (item.get.as_mut(), true),
                (item.post.as_mut(), false),
                (item.put.as_mut(), false),
                (item.patch.as_mut(), false),
                (item.delete.as_mut(), false),
            ];
            for (op, read) in operations {
                let Some(op) = op else { continue };
                if let Some(body) = op.request_body.as_mut() {
                    optional_body_is_not_null(body);
                }
                let responses = &mut op.responses.responses;
                responses.insert(
                    "401".into(),
                    problem("No admin token, or it is malformed, unknown or revoked (`missing_token`, `malformed_token`, `unknown_token`)."),
                );
                if !read {
                    responses.insert(
                        "403".into(),
                        problem("The admin token is read-only (`read_only_token`)."),
                    );
                }
                responses.insert(
                    "500".into(),
                    problem("The store failed unexpectedly (`internal_error`)."),
                );
                responses.insert(
                    "503".into(),
                    problem("The store is unreachable (`store_unavailable`) or full (`store_full`); nothing changed."),
                );
            }
        }
    }
}

/// An optional body (`Option<T>` in `request_body`) comes out as `oneOf: [null, T]`; but the
/// body is either absent or a `T`, never JSON `null`, which `required: false` already says.
fn optional_body_is_not_null(body: &mut RequestBody) {
    if body.required == Some(Required::True) {
        return;
    }
    for content in body.content.values_mut() {
        if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
            if let [RefOr::Ref(r), RefOr::T(_)] | [RefOr::T(_), RefOr::Ref(r)] =
                one_of.items.as_slice()
            {
                content.schema = Some(RefOr::Ref(r.clone()));
            }
        }
    }
}

/// The document, built once.
pub(crate) static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// `GET /openapi.json`: the document; needs no token.
pub(crate) async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_unique_operation_ids() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all, "duplicate operationId");
    }

    #[test]
    fn an_optional_body_is_absent_rather_than_null() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        let body = &doc["paths"]["/v1/keys/{id}/rotate"]["post"]["requestBody"];
        assert_ne!(body["required"], true);
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/KeyRotate"
        );
    }
}
