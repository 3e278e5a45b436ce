//! Command-line grammar. Operators and scripts depend on these names: change them only with care.

use std::num::NonZeroU64;

use clap::{Args, Parser, Subcommand};
use keygate_core::{KeyId, Scope, Slug, Timestamp};

/// keygate: API keys, scopes, plans and rate limits in front of your REST and WebSocket APIs.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Database: a SQLite file path, sqlite://PATH or postgres://USER@HOST/DB
    /// [default: the config's server.db, else keygate.db].
    #[arg(long, global = true, env = "KEYGATE_DB")]
    pub(crate) db: Option<String>,

    /// Configuration file (profile, routes, upstreams, key format).
    #[arg(long, global = true, env = "KEYGATE_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,

    /// Work through a node's admin API instead of a database (`http://127.0.0.1:8081`, or
    /// `https://` for an admin listener with `[server.admin_tls]`); the admin token is read
    /// from KEYGATE_ADMIN_TOKEN.
    #[arg(long, global = true, env = "KEYGATE_ADMIN_URL", value_name = "URL")]
    pub(crate) admin_url: Option<String>,

    /// With an https:// --admin-url: CA certificates (PEM) to trust instead of the system's.
    #[arg(long, global = true, env = "KEYGATE_ADMIN_CA", value_name = "FILE")]
    pub(crate) admin_ca: Option<std::path::PathBuf>,

    /// With an https:// --admin-url: a client certificate chain (PEM) for an admin listener
    /// that requires one (`client_ca`); its key in --admin-key.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_ADMIN_CERT",
        value_name = "FILE",
        requires = "admin_key"
    )]
    pub(crate) admin_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --admin-cert.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_ADMIN_KEY",
        value_name = "FILE",
        requires = "admin_cert"
    )]
    pub(crate) admin_key: Option<std::path::PathBuf>,

    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Manage clients (tenants): their plan, scopes, allowlists and limits.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage API keys: create, rotate, revoke, disable, expire.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Import keys another system issued, so customers keep them: JSON lines
    /// (`{"client": …, "key": "…"}` or `{"client": …, "sha256": "…"}`) or CSV with a header;
    /// all or nothing, and a re-run imports only what is new. Works on a database (--db).
    Import(ImportArgs),
    /// Show the audit log, newest first.
    Audit(AuditArgs),
    /// Requests per hour, day, client, key, route and status (`[analytics]`), as flushed by
    /// every node: filtered, grouped, as a table, CSV (--csv) or JSON (--json).
    Usage(AnalyticsArgs),
    /// Show the plans (of the configuration, or of the node behind --admin-url).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Emergency mode: every node answers every non-infra request with 503.
    #[command(subcommand)]
    Emergency(EmergencyCommand),
    /// Suspend a scope, sport, bookmaker or route (for everyone or one client): every node
    /// refuses the requests it holds with the profile's `suspended` answer.
    Suspend(SuspendArgs),
    /// Lift a suspension (`keygate suspensions` lists their ids).
    Resume {
        /// The suspension's id (`sus_…`).
        id: String,
    },
    /// List the suspensions in force.
    Suspensions {
        /// Every suspension ever made, lifted and run out too (newest first).
        #[arg(long)]
        all: bool,
    },
    /// Messaging feed credentials on RabbitMQ (`[amqp]`): one vhost and user per client.
    #[command(subcommand)]
    Amqp(AmqpCommand),
    /// The customer portal (`[portal]`): invite people to sign in for a client.
    #[command(subcommand)]
    Portal(PortalCommand),
    /// Webhook deliveries from the outbox (`[[webhooks]]`): list, show, replay.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Manage admin tokens for the admin API.
    #[command(subcommand, name = "admin-token")]
    AdminToken(AdminTokenCommand),
    /// Apply pending schema migrations to the database.
    Migrate,
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run a demo: a sample upstream, a demo client and key, and the gateway in front.
    Demo(ServeArgs),
    /// Reload a running node's configuration file (as SIGHUP does): the node behind
    /// --admin-url, else the one listening on --config's admin address. The file is checked
    /// here first; a node refuses a file with errors and keeps serving the one in force.
    Reload,
    /// Check a configuration file and report every problem with its line.
    CheckConfig {
        /// The file to check.
        file: std::path::PathBuf,
    },
}

/// Options of `usage`: the filters of `GET /v1/analytics`, checked by the same parser.
#[derive(Debug, Args)]
pub(crate) struct AnalyticsArgs {
    /// First hour: a UTC day (YYYY-MM-DD) or a whole hour (YYYY-MM-DDTHH:00:00Z)
    /// [default: 23 hours before --to].
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Last hour, included: a UTC day (its last hour) or a whole hour [default: this hour].
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Only this client (name or id).
    #[arg(long)]
    pub(crate) client: Option<String>,
    /// Only this key (`key_…`).
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// Only this route (its configured name).
    #[arg(long)]
    pub(crate) route: Option<String>,
    /// Only this HTTP status.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Group by these, comma-separated: hour, day, client, key, route, status [default: one total].
    #[arg(long, value_name = "DIMENSIONS")]
    pub(crate) by: Option<String>,
    /// Print CSV (spreadsheet-safe) instead of a table.
    #[arg(long)]
    pub(crate) csv: bool,
    /// Rows per page, 1 to 10000 [default: 10000].
    #[arg(long)]
    pub(crate) limit: Option<String>,
    /// The next page of the same query: the cursor the previous page printed.
    #[arg(long)]
    pub(crate) cursor: Option<String>,
}

/// Options of `import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The file: one key per line, with `client` and `key` (plaintext) or `sha256` (hex),
    /// and optionally `label`, `expires_at` (RFC 3339) and, with `sha256`, `hint`.
    pub(crate) file: std::path::PathBuf,
    /// Check every line against the file and the database, and write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// How the file is written [default: by its extension (.csv, .jsonl), else by its first
    /// character (`{` is JSON lines)].
    #[arg(long, value_parser = ["jsonl", "csv"])]
    pub(crate) format: Option<String>,
}

/// Options of `serve` and `demo`; each overrides the configuration file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Public listener address.
    #[arg(long)]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// Admin listener address (keep it on loopback).
    #[arg(long)]
    pub(crate) admin_listen: Option<std::net::SocketAddr>,
    /// Customer portal listener address (where `[portal]` is configured).
    #[arg(long)]
    pub(crate) portal_listen: Option<std::net::SocketAddr>,
    /// URL of the `default` upstream, used by routes that name none.
    #[arg(long)]
    pub(crate) upstream: Option<String>,
    /// Worker threads serving the public listener [default: one per core].
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub(crate) log_format: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PortalCommand {
    /// Make an address one of the client's portal users and mail it a single-use sign-in link
    /// (valid 15 minutes); the link is printed too.
    Invite {
        /// The client's name or id.
        client: String,
        /// The person's e-mail address.
        #[arg(long)]
        email: String,
    },
    /// Disable a portal user: every session of theirs ends at once, on every node.
    Disable {
        /// The person's e-mail address.
        email: String,
    },
    /// Enable a disabled portal user again (they sign in anew).
    Enable {
        /// The person's e-mail address.
        email: String,
    },
    /// List a client's portal users.
    Users {
        /// The client's name or id.
        client: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminTokenCommand {
    /// Create a token; it is printed once and never again.
    Create {
        /// A unique name; it appears as the actor of every change made with the token.
        #[arg(long)]
        name: String,
        /// The token may list and show, but not change anything.
        #[arg(long)]
        read_only: bool,
    },
    /// List tokens (never the secrets).
    List,
    /// Revoke a token by name; it stops working at once.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Create a client.
    Create(ClientCreate),
    /// List clients, ordered by name.
    List(ClientList),
    /// Show one client.
    Show { name: String },
    /// Change a client's plan, scopes, allowlists or limits.
    Update(ClientUpdateArgs),
    /// Disable a client: all its keys stop working.
    Disable { name: String },
    /// Enable a disabled client.
    Enable { name: String },
    /// Delete a client: its keys stop on every node, its portal users and their sessions end,
    /// its messaging feed leaves the broker. The audit history stays and the name stays taken.
    Delete { name: String },
    /// Requests per UTC day and status.
    Usage(UsageArgs),
    /// Show the client's quota windows (allowance, top-up, use), or top up or reset the
    /// current window on every node (audited).
    Quota(QuotaArgs),
}

/// `keygate client quota CLIENT [--add N | --reset] [--window hour|day|month]`.
#[derive(Debug, Args)]
pub(crate) struct QuotaArgs {
    pub(crate) name: String,
    /// Add N units (1 to 1000000000) to the current window's allowance.
    #[arg(long, conflicts_with = "reset", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub(crate) add: Option<u64>,
    /// Zero the current window's count on every node (every window unless --window).
    #[arg(long)]
    pub(crate) reset: bool,
    /// The window: hour, day or month [default for --add: day].
    #[arg(long, value_parser = ["hour", "day", "month"])]
    pub(crate) window: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    pub(crate) name: String,
    /// First day (YYYY-MM-DD, UTC) [default: 29 days before --to].
    #[arg(long, value_parser = parse_day)]
    pub(crate) from: Option<String>,
    /// Last day (YYYY-MM-DD, UTC) [default: today].
    #[arg(long, value_parser = parse_day)]
    pub(crate) to: Option<String>,
}

/// A UTC day, `YYYY-MM-DD`.
fn parse_day(s: &str) -> Result<String, String> {
    Timestamp::parse_rfc3339(&format!("{s}T00:00:00Z"))
        .ok()
        .filter(|t| t.utc_day() == s)
        .map(|_| s.to_owned())
        .ok_or_else(|| format!("`{s}` is not a day (YYYY-MM-DD)"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum AmqpCommand {
    /// Make the client's vhost and user; prints the `amqp://` URL with its password, once.
    Provision {
        client: String,
        /// The vhost / user slug [default: made from the client's name].
        #[arg(long)]
        slug: Option<String>,
    },
    /// Issue a new password (printed once); the old one and its connections stop at once.
    Rotate { client: String },
    /// Delete the client's vhost and user; its connections are closed at once.
    Revoke { client: String },
    /// Show the client's feed (never the password).
    Show { client: String },
    /// Compare the broker with the store and repair the difference (one client, or all).
    Reconcile {
        client: Option<String>,
        /// Only report the drift; change nothing.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PlanCommand {
    /// List the plans.
    List,
    /// Show one plan.
    Show { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EmergencyCommand {
    /// Refuse every non-infra request with 503 on every node.
    On {
        /// What callers read (1 to 500 printable characters).
        #[arg(long)]
        message: Option<String>,
    },
    /// Serve again.
    Off,
    /// Show whether emergency mode is on.
    Status,
}

/// What `keygate suspend` holds, and for whom and how long.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["scope", "sport", "bookmaker", "route"])))]
pub(crate) struct SuspendArgs {
    /// Every route that requires this scope.
    #[arg(long, value_parser = parse_scope)]
    pub(crate) scope: Option<Scope>,
    /// Every request naming this sport namespace.
    #[arg(long, value_parser = parse_slug)]
    pub(crate) sport: Option<Slug>,
    /// Every request naming this bookmaker.
    #[arg(long, value_parser = parse_slug)]
    pub(crate) bookmaker: Option<Slug>,
    /// Every request on the route of this name.
    #[arg(long)]
    pub(crate) route: Option<String>,
    /// Only this client's requests (its name or id).
    #[arg(long)]
    pub(crate) client: Option<String>,
    /// What callers read in the refusal (1 to 500 printable characters).
    #[arg(long)]
    pub(crate) message: Option<String>,
    /// Lift it automatically: an RFC 3339 instant (2026-12-31T23:59:59Z) or a duration from
    /// now (90m, 2h).
    #[arg(long, value_parser = parse_until)]
    pub(crate) until: Option<Until>,
}

/// `--until`: an instant, or a duration from when the command runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    At(Timestamp),
    In(std::time::Duration),
}

fn parse_until(s: &str) -> Result<Until, String> {
    Timestamp::parse_rfc3339(s).map(Until::At).or_else(|_| {
        keygate_core::duration::parse_duration(s)
            .map(Until::In)
            .map_err(|_| format!("`{s}` is neither an RFC 3339 instant (2026-12-31T23:59:59Z) nor a duration (90m)"))
    })
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::new(s).map_err(|e| e.to_string())
}

fn parse_slug(s: &str) -> Result<Slug, String> {
    Slug::new(s).map_err(|e| e.to_string())
}

/// A positive limit.
fn parse_limit(s: &str) -> Result<NonZeroU64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("a limit of 0 would refuse every request; give a positive number".into()),
        Ok(n) => Ok(NonZeroU64::new(n).expect("checked non-zero")),
        Err(_) => Err(format!("`{s}` is not a positive whole number")),
    }
}

/// A new value for a per-contract limit: a number, or `None` for the plan's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LimitChange(pub(crate) Option<NonZeroU64>);

/// A positive limit, or `default` to return to the plan's value.
fn parse_limit_change(s: &str) -> Result<LimitChange, String> {
    if s == "default" {
        return Ok(LimitChange(None));
    }
    parse_limit(s)
        .map(|n| LimitChange(Some(n)))
        .map_err(|e| format!("{e}, or `default` for the plan's value"))
}

/// A comma-separated replacement list; empty means none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct List<T>(pub(crate) Vec<T>);

fn parse_list<T>(s: &str, item: fn(&str) -> Result<T, String>) -> Result<List<T>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(item)
        .collect::<Result<Vec<_>, _>>()
        .map(List)
}

fn parse_scope_list(s: &str) -> Result<List<Scope>, String> {
    parse_list(s, parse_scope)
}

fn parse_slug_list(s: &str) -> Result<List<Slug>, String> {
    parse_list(s, parse_slug)
}

fn parse_id(s: &str) -> Result<KeyId, String> {
    KeyId::parse(s).map_err(|e| e.to_string())
}

fn parse_instant(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    keygate_core::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// Per-contract limits that override the plan's.
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// Requests per second.
    #[arg(long, value_parser = parse_limit, allow_negative_numbers = true)]
    pub(crate) rps: Option<NonZeroU64>,
    /// Requests per minute.
    #[arg(long, value_parser = parse_limit, allow_negative_numbers = true)]
    pub(crate) per_minute: Option<NonZeroU64>,
    /// Requests per UTC hour.
    #[arg(long, value_parser = parse_limit, allow_negative_numbers = true)]
    pub(crate) per_hour: Option<NonZeroU64>,
    /// Requests per UTC day.
    #[arg(long, value_parser = parse_limit, allow_negative_numbers = true)]
    pub(crate) per_day: Option<NonZeroU64>,
    /// Requests per UTC calendar month.
    #[arg(long, value_parser = parse_limit, allow_negative_numbers = true)]
    pub(crate) per_month: Option<NonZeroU64>,
    /// Concurrent WebSocket connections.
    #[arg(long, value_parser = parse_limit, allow_negative_numbers = true)]
    pub(crate) ws_connections: Option<NonZeroU64>,
}

#[derive(Debug, Args)]
pub(crate) struct ClientCreate {
    pub(crate) name: String,
    /// Plan name (default: the configuration's `[profile] default_plan`, else `default`).
    #[arg(long)]
    pub(crate) plan: Option<String>,
    /// Scopes, comma-separated (`cs2:matches:read,live_scores`).
    #[arg(long, value_delimiter = ',', value_parser = parse_scope)]
    pub(crate) scopes: Vec<Scope>,
    /// Sport namespaces the client may reach, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_slug)]
    pub(crate) sports: Vec<Slug>,
    /// Bookmakers the client may ask for (none given = all bookmakers).
    #[arg(long, value_delimiter = ',', value_parser = parse_slug)]
    pub(crate) bookmakers: Vec<Slug>,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    /// Parent account (name or id): the client becomes its child, whose keys the parent's
    /// keys may regenerate through self-service.
    #[arg(long)]
    pub(crate) parent: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ClientList {
    /// Only clients on this plan.
    #[arg(long)]
    pub(crate) plan: Option<String>,
    /// Only disabled clients.
    #[arg(long, conflicts_with = "active")]
    pub(crate) inactive: bool,
    /// Only enabled clients.
    #[arg(long)]
    pub(crate) active: bool,
    /// Only names after this one (paging).
    #[arg(long)]
    pub(crate) after: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: u32,
}

#[derive(Debug, Args)]
pub(crate) struct ClientUpdateArgs {
    pub(crate) name: String,
    /// New name.
    #[arg(long = "name", value_name = "NEW_NAME")]
    pub(crate) rename: Option<String>,
    #[arg(long)]
    pub(crate) plan: Option<String>,
    /// Replace the scopes (comma-separated; `--scopes ''` removes all).
    #[arg(long, value_parser = parse_scope_list)]
    pub(crate) scopes: Option<List<Scope>>,
    /// Replace the sport allowlist.
    #[arg(long, value_parser = parse_slug_list)]
    pub(crate) sports: Option<List<Slug>>,
    /// Replace the bookmaker allowlist (`''` = all bookmakers).
    #[arg(long, value_parser = parse_slug_list)]
    pub(crate) bookmakers: Option<List<Slug>>,
    /// Requests per second, or `default`.
    #[arg(long, value_parser = parse_limit_change, allow_negative_numbers = true)]
    pub(crate) rps: Option<LimitChange>,
    /// Requests per minute, or `default`.
    #[arg(long, value_parser = parse_limit_change, allow_negative_numbers = true)]
    pub(crate) per_minute: Option<LimitChange>,
    /// Requests per UTC hour, or `default`.
    #[arg(long, value_parser = parse_limit_change, allow_negative_numbers = true)]
    pub(crate) per_hour: Option<LimitChange>,
    /// Requests per UTC day, or `default`.
    #[arg(long, value_parser = parse_limit_change, allow_negative_numbers = true)]
    pub(crate) per_day: Option<LimitChange>,
    /// Requests per UTC month, or `default`.
    #[arg(long, value_parser = parse_limit_change, allow_negative_numbers = true)]
    pub(crate) per_month: Option<LimitChange>,
    /// Concurrent WebSocket connections, or `default`.
    #[arg(long, value_parser = parse_limit_change, allow_negative_numbers = true)]
    pub(crate) ws_connections: Option<LimitChange>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key; the plaintext is printed once and never again.
    Create(KeyCreate),
    /// List keys, masked.
    List(KeyList),
    /// Show one key, masked.
    Show {
        #[arg(value_parser = parse_id)]
        id: KeyId,
    },
    /// Replace a key's secret; the old key stops now, or after --grace.
    Rotate {
        #[arg(value_parser = parse_id)]
        id: KeyId,
        /// Keep the old key working this long (`1h`, `30m`).
        #[arg(long, value_parser = parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Revoke a key for good.
    Revoke {
        #[arg(value_parser = parse_id)]
        id: KeyId,
    },
    /// Disable a key (it can be enabled again).
    Disable {
        #[arg(value_parser = parse_id)]
        id: KeyId,
    },
    /// Enable a disabled key.
    Enable {
        #[arg(value_parser = parse_id)]
        id: KeyId,
    },
    /// Narrow a key or label it: its scopes (never more than its client's), the addresses it
    /// may be used from, metadata and an external id. Options not given are kept.
    Restrict(KeyRestrict),
    /// Keys suspected of being shared (`[plans.NAME.sharing]`), newest first.
    Suspected {
        /// Only those recorded at or after this instant (RFC 3339).
        #[arg(long, value_parser = parse_instant)]
        since: Option<Timestamp>,
    },
    /// Set or clear a key's expiry.
    Expire {
        #[arg(value_parser = parse_id)]
        id: KeyId,
        /// The instant the key stops working (RFC 3339).
        #[arg(long, value_parser = parse_instant, required_unless_present_any = ["in_", "never"])]
        at: Option<Timestamp>,
        /// Expire this long from now (`30d`).
        #[arg(long = "in", id = "in_", value_parser = parse_duration, conflicts_with = "at")]
        in_: Option<std::time::Duration>,
        /// Remove the expiry.
        #[arg(long, conflicts_with_all = ["at", "in_"])]
        never: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct KeyCreate {
    /// The client (name or id) the key belongs to.
    #[arg(long)]
    pub(crate) client: String,
    /// What the key is for (`production`, `staging`, `team-odds`).
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// The instant the key stops working (RFC 3339).
    #[arg(long, value_parser = parse_instant, conflicts_with = "expires_in")]
    pub(crate) expires_at: Option<Timestamp>,
    /// Expire this long from now (`30d`).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) expires_in: Option<std::time::Duration>,
    #[command(flatten)]
    pub(crate) restrictions: KeyRestrictionArgs,
}

/// A key's restrictions as options (issue 22).
#[derive(Debug, Args)]
pub(crate) struct KeyRestrictionArgs {
    /// Narrow the key to these of its client's scopes, comma-separated (`''`: none of them);
    /// a scope the client lacks is refused.
    #[arg(long, value_parser = parse_scope_list)]
    pub(crate) scopes: Option<List<Scope>>,
    /// Where the key may be used from: CIDRs or addresses, comma-separated
    /// (`203.0.113.0/24,2001:db8::/32`; `''`: anywhere). `/0` is refused.
    #[arg(long, value_parser = parse_cidr_list)]
    pub(crate) cidrs: Option<List<keygate_core::key_restrictions::IpNet>>,
    /// A metadata entry `name=value`; repeat for more (at most 16). Replaces all metadata.
    #[arg(long = "metadata", value_name = "NAME=VALUE", value_parser = parse_metadata)]
    pub(crate) metadata: Vec<(String, String)>,
    /// The operator's own id for the key, unique among the client's keys.
    #[arg(long)]
    pub(crate) external_id: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct KeyRestrict {
    #[arg(value_parser = parse_id)]
    pub(crate) id: KeyId,
    #[command(flatten)]
    pub(crate) set: KeyRestrictionArgs,
    /// Give the key all of its client's scopes again.
    #[arg(long, conflicts_with = "scopes")]
    pub(crate) all_scopes: bool,
    /// Remove all metadata.
    #[arg(long, conflicts_with = "metadata")]
    pub(crate) clear_metadata: bool,
    /// Remove the external id.
    #[arg(long, conflicts_with = "external_id")]
    pub(crate) clear_external_id: bool,
}

fn parse_cidr_list(s: &str) -> Result<List<keygate_core::key_restrictions::IpNet>, String> {
    parse_list(s, |c| {
        keygate_core::key_restrictions::parse_cidr(c).map_err(|e| e.to_string())
    })
}

fn parse_metadata(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "metadata is `name=value`".to_owned())
}

#[derive(Debug, Args)]
pub(crate) struct KeyList {
    /// Only keys of this client.
    #[arg(long)]
    pub(crate) client: Option<String>,
    /// Only keys in this state (active, disabled, revoked).
    #[arg(long, value_parser = ["active", "disabled", "revoked"])]
    pub(crate) state: Option<String>,
    /// Only keys with this external id.
    #[arg(long)]
    pub(crate) external_id: Option<String>,
    /// Only keys after this id (paging).
    #[arg(long, value_parser = parse_id)]
    pub(crate) after: Option<KeyId>,
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// List deliveries, newest first.
    List(DeliveryListArgs),
    /// Show one delivery and the event body it sends.
    Show {
        /// The delivery id (from `list`).
        id: i64,
    },
    /// Send a dead or delivered delivery again (pending, due now, attempts counted anew).
    Replay {
        /// The delivery id (from `list`).
        id: i64,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DeliveryListArgs {
    /// Only deliveries in this state.
    #[arg(long, value_parser = ["pending", "delivered", "dead"])]
    pub(crate) state: Option<String>,
    /// Only this webhook's deliveries (its `name`).
    #[arg(long)]
    pub(crate) webhook: Option<String>,
    /// Only this event type (`key.revoked`).
    #[arg(long)]
    pub(crate) event: Option<String>,
    /// Only this event's deliveries (`evt_...`).
    #[arg(long)]
    pub(crate) event_id: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u32,
    /// Only deliveries older than this id (paging).
    #[arg(long)]
    pub(crate) before: Option<i64>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u32,
    /// Only entries older than this id (paging).
    #[arg(long)]
    pub(crate) before: Option<i64>,
    #[arg(long)]
    pub(crate) actor: Option<String>,
    /// An action (`key.rotate`) or a family (`key.`).
    #[arg(long)]
    pub(crate) action: Option<String>,
    /// A client or key id.
    #[arg(long)]
    pub(crate) target: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_are_validated() {
        assert!(parse_limit("0").unwrap_err().contains("positive"));
        assert!(parse_limit("-5").unwrap_err().contains("`-5`"));
        assert!(parse_limit("ten").is_err());
        assert_eq!(parse_limit_change("default"), Ok(LimitChange(None)));
        assert_eq!(parse_limit_change("250").unwrap().0.unwrap().get(), 250);
        assert_eq!(parse_scope_list(""), Ok(List(vec![])));
        assert_eq!(parse_scope_list("a,b:c").unwrap().0.len(), 2);
        assert!(parse_slug_list("cs2,Bad").is_err());
    }
}
