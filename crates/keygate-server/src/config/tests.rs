use super::*;

fn over(upstream: &str) -> Overrides {
    Overrides {
        upstream: Some(upstream.to_owned()),
        ..Overrides::default()
    }
}

#[test]
fn the_default_config_is_one_catch_all_route() {
    let c = default_config(&over("http://127.0.0.1:9000")).unwrap();
    assert_eq!(c.routes.routes().len(), 1);
    assert_eq!(&*c.routes.routes()[0].pattern, "/{*path}");
    assert_eq!(c.upstreams[0].authority.as_str(), "127.0.0.1:9000");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    let err = default_config(&Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("no upstream `default` is configured"),
        "{err}"
    );
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9090"

[keys]
prefix = "os_live_"
alphabet = "hex"
length = 32

[upstreams.odds]
url = "http://127.0.0.1:7000/api"
timeout = "5s"

[plans.free]
features = []
[plans.pro_plus_live]
features = ["live", "websocket"]

[[routes]]
name = "matches"
path = "/{sport}/v1/matches/{id}"
methods = ["get"]
upstream = "odds"
scopes = ["cs2:matches:read"]
sport_param = "sport"
bookmaker = "query:bookmaker"
features = ["live"]

[[routes]]
path = "/health-upstream"
upstream = "odds"
public = true

[profile]
credentials = ["header:X-Api-Key", "query:api_key"]
public = ["/health"]

[profile.errors.scope_missing]
status = 403
body = { detail = "Required scope '{subject}' is not granted to this API key." }
"#;

#[test]
fn a_full_config_compiles() {
    let c = load(GOOD, "good.toml", &Overrides::default()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.issuer.format.prefix(), "os_live_");
    assert_eq!(c.upstreams[0].timeout, Duration::from_secs(5));
    assert_eq!(&*c.upstreams[0].base_path, "/api");
    assert_eq!(c.plan_features("pro_plus_live"), ["live", "websocket"]);
    assert!(c.plan_features("unknown").is_empty());
    let r = &c.routes.routes()[0];
    assert_eq!(r.methods.as_deref(), Some(&[http::Method::GET][..]));
    assert!(r.needs.sport_gated);
    assert_eq!(c.profile.credentials.len(), 2);
    assert!(c.profile.public.health && !c.profile.public.ready);
    assert_eq!(
        c.profile
            .error(keygate_core::decision::Reason::ScopeMissing)
            .json_type,
        "application/json"
    );
}

#[test]
fn every_error_is_reported_with_its_line() {
    let bad = r#"
[server]
listen = "nowhere"

[upstreams.odds]
url = "ftp://secure.example"

[[routes]]
path = "/{sport}/v1/matches"
upstream = "nope"
scopes = ["Bad Scope"]
sport_param = "league"

[profile]
credentials = ["cookie:session"]

[profile.errors.made_up]
status = 403
"#;
    let errs = load(bad, "bad.toml", &Overrides::default()).unwrap_err();
    let text = errs.to_string();
    for (line, fragment) in [
        (3, "listen `nowhere` is not an address"),
        (5, "uses a scheme other than http://"),
        (8, "unknown upstream `nope`"),
        (11, "scopes: `Bad Scope` is not a scope"),
        (8, "sport_param `league` is not a parameter"),
        (15, "`cookie:session` must be"),
        (17, "unknown reason `made_up`"),
    ] {
        let expected = format!("bad.toml:{line}: ");
        assert!(
            errs.0
                .iter()
                .any(|e| e.to_string().starts_with(&expected) && e.message.contains(fragment)),
            "missing `{fragment}` at line {line} in:\n{text}"
        );
    }
}

#[test]
fn syntax_and_unknown_keys_name_the_line() {
    let errs = load(
        "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n",
        "typo.toml",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].line, Some(3), "{errs}");
    assert!(
        errs.0[0].message.contains("unknown field `lisen`"),
        "{errs}"
    );
    let errs = load("[server\n", "broken.toml", &Overrides::default()).unwrap_err();
    assert_eq!(errs.0[0].line, Some(1), "{errs}");
    let errs = load(
        "[profile.errors.unknown_key]\nbody = { detail = \"{nope}\" }\n",
        "t.toml",
        &over("http://h"),
    )
    .unwrap_err();
    assert!(errs.to_string().contains("nope"), "{errs}");
}

#[test]
fn weak_key_formats_are_refused() {
    let errs = load(
        "[keys]\nprefix = \"x_\"\nalphabet = \"hex\"\nlength = 16\n",
        "k.toml",
        &over("http://h"),
    )
    .unwrap_err();
    assert!(errs.to_string().contains("k.toml:1: keys:"), "{errs}");
    assert!(errs.to_string().contains("128"), "{errs}");
}

#[test]
fn legacy_key_shapes_are_read_and_bad_ones_named_with_their_line() {
    let text = "[keys]\nprefix = \"os_live_\"\nalphabet = \"hex\"\nlength = 32\n\n\
                [[keys.legacy]]\nprefix = \"sk_live_\"\nlength = 24\n\n\
                [[keys.legacy]]\nalphabet = \"base64url\"\nlength = 22\n";
    let c = load(text, "k.toml", &over("http://h")).unwrap_or_else(|e| panic!("{e}"));
    let shapes: Vec<(&str, usize)> = c
        .issuer
        .legacy
        .iter()
        .map(|l| (l.prefix(), l.key_len()))
        .collect();
    assert_eq!(shapes, vec![("sk_live_", 32), ("", 22)]);
    assert!(c
        .issuer
        .digest_presented("sk_live_4eC39HqLyjWDarjtT1zdp7dc")
        .is_ok());

    let bad = "[keys]\nprefix = \"os_live_\"\nalphabet = \"hex\"\nlength = 32\n\n\
               [[keys.legacy]]\nprefix = \"old\"\nlength = 8\n\n\
               [[keys.legacy]]\nprefix = \"os_\"\nalphabet = \"hex\"\nlength = 37\n\n\
               [[keys.legacy]]\nalphabet = \"base32\"\nlength = 40\n";
    let errs = load(bad, "k.toml", &over("http://h"))
        .unwrap_err()
        .to_string();
    assert!(
        errs.contains("k.toml:6: keys.legacy[0]:") && errs.contains("128"),
        "{errs}"
    );
    assert!(
        errs.contains("k.toml:10: keys.legacy[1]:") && errs.contains("ambiguous"),
        "{errs}"
    );
    assert!(errs.contains("keys.legacy[2].alphabet"), "{errs}");
}

/// Tables a file only implies (a sub-table header with no header for its parent) are read like
/// explicit ones.
#[test]
fn implied_tables_compile() {
    let text = r#"
[plans.pro.limits]
rps = 5

[profile.errors.scope_missing.body]
detail = "Missing required scope: {subject}"

[profile.ws.close.going_away]
code = 1012
reason = "Restarting"
"#;
    let c = load(text, "implied.toml", &over("http://127.0.0.1:9000"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.plan_features("pro").is_empty());
    let close = c.ws.profile.close(crate::policy::ws::CloseEvent::GoingAway);
    assert_eq!((close.code, &*close.reason), (1012, "Restarting"));
    let e = load(
        "[profile.ws.close.going_away]\ncode = \"x\"\n",
        "bad.toml",
        &over("http://127.0.0.1:9000"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("bad.toml"), "{e}");
}

#[test]
fn breakers_default_on_and_validate_with_lines() {
    let c = load(
        "[upstreams.a]\nurl = \"http://h:1\"\n\n[upstreams.b]\nurl = \"http://h:2\"\nbreaker = { failures = 2, window = \"1s\", open_for = \"250ms\", half_open_probes = 3, count_5xx = true }\n\n[upstreams.c]\nurl = \"http://h:3\"\nbreaker = { enabled = false }\n[[routes]]\npath = \"/\"\nupstream = \"a\"\n",
        "b.toml",
        &Overrides::default(),
    )
    .unwrap();
    let by_name = |n: &str| c.upstreams.iter().find(|u| &*u.name == n).unwrap().breaker;
    assert_eq!(
        by_name("a"),
        Some(crate::policy::upstream::BreakerConfig::default())
    );
    let b = by_name("b").unwrap();
    assert_eq!((b.failures, b.half_open_probes, b.count_5xx), (2, 3, true));
    assert_eq!(b.open_for, std::time::Duration::from_millis(250));
    assert_eq!(by_name("c"), None);

    let errs = load(
        "[upstreams.default]\nurl = \"http://h:1\"\nbreaker = { failures = 0, open_for = \"soon\" }\n\n[upstreams.x]\nurl = \"http://h:2\"\nbreaker = { window = \"0s\", half_open_probes = -1, retries = 3 }\n",
        "bad.toml",
        &Overrides::default(),
    )
    .unwrap_err();
    let text = errs.to_string();
    assert!(
        text.contains("bad.toml:7: ") && text.contains("unknown field `retries`"),
        "{text}"
    );
    let errs = load(
        "[upstreams.default]\nurl = \"http://h:1\"\nbreaker = { failures = 0, open_for = \"soon\" }\n\n[upstreams.x]\nurl = \"http://h:2\"\nbreaker = { window = \"0s\", half_open_probes = -1 }\n",
        "bad.toml",
        &Overrides::default(),
    )
    .unwrap_err();
    let text = errs.to_string();
    for (line, fragment) in [
        (
            3,
            "upstreams.default.breaker.failures: 0 is not a positive whole number",
        ),
        (3, "soon"),
        (7, "upstreams.x.breaker.window must be longer than 0s"),
        (
            7,
            "upstreams.x.breaker.half_open_probes: -1 is not a positive whole number",
        ),
    ] {
        let expected = format!("bad.toml:{line}: ");
        assert!(
            errs.0
                .iter()
                .any(|e| e.to_string().starts_with(&expected) && e.to_string().contains(fragment)),
            "missing `{fragment}` at line {line} in:\n{text}"
        );
    }
}

#[test]
fn subject_route_and_whoami_overrides_compile_with_line_numbered_errors() {
    let text = r#"
[plans.free]
bookmaker_selection = 1

[[routes]]
path = "/v1/stream"
scopes = ["live_scores"]
errors = { scope_missing = { status = 401 } }

[profile]
whoami_body = { data = { name = { var = "name" }, id = "{tenant_id}" } }

[profile.errors.feature_not_on_plan]
body = { code = "{subject}_not_on_plan" }
[profile.errors."feature_not_on_plan:live"]
body = { code = "live_not_on_plan", message = "Upgrade to Pro+ Live" }
"#;
    let c = load(text, "p.toml", &over("http://127.0.0.1:9000")).unwrap();
    assert_eq!(c.plans["free"].bookmaker_selection, Some(1));
    let route = &c.routes.routes()[0];
    let denial = keygate_core::decision::Denial::about(
        keygate_core::decision::Reason::ScopeMissing,
        "live_scores",
    );
    assert_eq!(c.profile.spec_for(&denial, Some(&route.errors)).status, 401);
    assert_eq!(c.profile.spec_for(&denial, None).status, 403);
    assert_eq!(c.profile.subject_errors.by_subject.len(), 1);

    let bad = r#"
[plans.free]
bookmaker_selection = 0

[[routes]]
path = "/x"
errors = { nosuch = { status = 401 } }

[profile]
whoami_body = { id = "{secret}" }

[profile.errors."scope_missing:"]
status = 403
"#;
    let err = load(bad, "p.toml", &over("http://127.0.0.1:9000"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.toml:2: plans.free.bookmaker_selection: 0"),
        "{err}"
    );
    assert!(
        err.contains("p.toml:5: route `/x` errors: unknown reason `nosuch`"),
        "{err}"
    );
    assert!(
        err.contains(
            "p.toml:10: profile.whoami_body: the template uses the unknown variable `secret`"
        ),
        "{err}"
    );
    assert!(err.contains("names no subject"), "{err}");
}

#[test]
fn selfservice_is_checked_with_lines_and_off_by_default() {
    let c = default_config(&over("http://127.0.0.1:9000")).unwrap();
    assert!(c.selfservice.is_none());
    assert!(c
        .routes
        .routes()
        .iter()
        .all(|r| matches!(r.target, crate::policy::routes::Target::Upstream(_))));

    let text = r#"[plans.free]
features = []

[selfservice]
plan = "gold"
scopes = ["Bad Scope"]
fields = { id = 10, "Wallet" = 5, email = 0 }
patchable = ["name", "phone"]

[[routes]]
path = "/api/register"
selfservice = "register"
limits = { per_minute = 5 }

[[routes]]
path = "/api/me"
methods = ["DELETE"]
selfservice = "me"
upstream = "default"

[[routes]]
path = "/bots/{agent}/regenerate-key"
selfservice = "regenerate_child_key"
child_param = "bot"

[[routes]]
path = "/x"
selfservice = "teleport"

[[routes]]
path = "/y"
limits = { per_minute = 5, by = "source" }

[unknown]
"#;
    let err = load(text, "op.toml", &over("http://127.0.0.1:9000")).unwrap_err();
    assert_eq!(err.0.len(), 1, "unknown tables fail first: {err}");
    assert!(err.to_string().starts_with("op.toml:34:"), "{err}");

    let text = text.replace("[unknown]\n", "");
    let err = load(&text, "op.toml", &over("http://127.0.0.1:9000"))
        .unwrap_err()
        .to_string();
    for needle in [
        "op.toml:4: selfservice: plan `gold` is not configured",
        "op.toml:4: selfservice: scopes:",
        "op.toml:4: selfservice: fields: `id` is reserved",
        "op.toml:4: selfservice: fields: `Wallet` is not a field name",
        "op.toml:4: selfservice: fields.email: 0 is not a length",
        "op.toml:4: selfservice: patchable: `phone` is neither `name` nor one of fields",
        "op.toml:10: route `/api/register`: a public route has no client or key to count; its limits need by = \"source\"",
        "op.toml:15: route `/api/me`: a selfservice route is answered by keygate",
        "op.toml:15: route `/api/me`: selfservice `me` answers GET and PATCH only, not `DELETE`",
        "op.toml:21: route `/bots/{agent}/regenerate-key`: child_param `bot` is not a parameter",
        "op.toml:26: route `/x`: selfservice `teleport` is not",
        "op.toml:30: route `/y`: by = \"source\" is for public routes",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    let missing = "[[routes]]\npath = \"/api/me\"\nselfservice = \"me\"\n";
    let err = load(missing, "op.toml", &over("http://127.0.0.1:9000"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("op.toml:1: route `/api/me`: selfservice routes need a [selfservice] table"),
        "{err}"
    );
}

#[test]
fn the_openpoker_profile_compiles_with_its_selfservice_routes() {
    let text = include_str!("../../../../profiles/openpoker.toml");
    let c = load(text, "openpoker.toml", &over("http://127.0.0.1:9000")).unwrap();
    let s = c.selfservice.as_ref().unwrap();
    assert_eq!((s.plan.as_str(), s.key_label.as_str()), ("free", "primary"));
    assert_eq!(s.patchable, ["name", "wallet_address"]);
    let register = c
        .routes
        .routes()
        .iter()
        .find(|r| &*r.name == "register")
        .unwrap();
    assert!(register.public);
    assert_eq!(
        register.limits.by,
        crate::policy::ratelimit::LimitBy::Source
    );
    assert_eq!(c.issuer.format.prefix(), "op_live_");
}

#[test]
fn scope_templates_name_path_parameters_and_errors_name_the_line() {
    let good = r#"
[upstreams.default]
url = "http://127.0.0.1:9000"

[[routes]]
name = "matches"
path = "/{sport}/v1/matches/{id}"
scopes = ["{sport}:matches:read", "base"]
scopes_any = ["{sport}:live", "all:live"]
sport_param = "sport"
"#;
    let c = load(good, "t.toml", &Overrides::default()).unwrap();
    let needs = &c.routes.routes()[0].needs;
    assert!(needs.has_templates());
    let written: Vec<&str> = needs.scopes.iter().map(|s| s.as_written()).collect();
    assert_eq!(written, ["{sport}:matches:read", "base"]);
    assert_eq!(needs.any_scope[0].resolve(&["dota2", "7"]), "dota2:live");

    let bad = r#"
[upstreams.default]
url = "http://127.0.0.1:9000"

[[routes]]
name = "matches"
path = "/{sport}/v1/matches"
sport_param = "sport"
scopes = ["{league}:matches:list"]

[[routes]]
name = "files"
path = "/files/{*rest}"
scopes_any = [
  "{rest}:read",
  "{sport:read",
]

[[routes]]
name = "plain"
path = "/plain"
scopes = ["{sport}::list"]
"#;
    let errs = load(bad, "bad.toml", &Overrides::default()).unwrap_err();
    let lines: Vec<(Option<usize>, &str)> = errs
        .0
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (
                Some(9),
                "route `matches`: scopes: scope `{league}:matches:list` names `{league}`, which is not a parameter of the path (its parameters: `{sport}`)"
            ),
            (
                Some(14),
                "route `files`: scopes_any: scope `{rest}:read` names the catch-all `{*rest}`; a scope can take only a one-segment parameter like `{rest}`"
            ),
            (
                Some(14),
                "route `files`: scopes_any: scope `{sport:read` has a `{` or `}` that does not enclose a parameter name"
            ),
            (
                Some(22),
                "route `plain`: scopes: scope `{sport}::list` names `{sport}`, which is not a parameter of the path (the path has no parameters)"
            ),
        ],
        "{errs}"
    );
}

#[test]
fn formats_and_the_default_plan_are_checked_at_load() {
    let upstream = "[upstreams.default]\nurl = \"http://127.0.0.1:9000\"\n";
    let load_text = |extra: &str| {
        load(
            &format!("{upstream}{extra}"),
            "p.toml",
            &Overrides::default(),
        )
    };
    let c = load_text("[plans.free]\n[profile]\nformats = [\"json\"]\ndefault_plan = \"free\"\n")
        .unwrap();
    assert!(c.profile.json_only && !c.profile.enforce_accept);
    assert_eq!(&*c.profile.default_plan, "free");
    let c = load_text("[profile]\nformats = [\"xml\", \"json\"]\n").unwrap();
    assert!(!c.profile.json_only && c.profile.enforce_accept);
    assert_eq!(&*c.profile.default_plan, "default");
    for (extra, fragment) in [
        ("[profile]\nformats = [\"xml\"]\n", "profile.formats"),
        ("[profile]\nformats = []\n", "profile.formats"),
        (
            "[profile]\nformats = [\"json\"]\nenforce_accept = true\n",
            "profile.enforce_accept",
        ),
        (
            "[plans.pro]\n[profile]\ndefault_plan = \"free\"\n",
            "profile.default_plan `free` is not a plan of this file (pro)",
        ),
    ] {
        let errs = load_text(extra).unwrap_err().to_string();
        assert!(errs.contains(fragment), "{extra}: {errs}");
    }
}

#[test]
fn connection_bounds_default_for_production_and_validate() {
    let c = default_config(&over("http://127.0.0.1:9000")).unwrap();
    assert_eq!(c.http.max_connections, 10_000);
    assert_eq!(c.http.admin_max_connections, 256);
    assert_eq!(c.http.h2_handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.http.h2_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.http.h2_keepalive_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.http.h2_max_concurrent_streams, 100);

    let c = load(
        "[server]\nmax_connections = 50\nadmin_max_connections = 5\nh2_handshake_timeout = \"2s\"\nh2_idle_timeout = \"15s\"\nh2_keepalive_interval = \"0s\"\nh2_max_concurrent_streams = 8\n[upstreams.default]\nurl = \"http://h:1\"\n",
        "c.toml",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        (c.http.max_connections, c.http.admin_max_connections),
        (50, 5)
    );
    assert_eq!(c.http.h2_handshake_timeout, Duration::from_secs(2));
    assert_eq!(c.http.h2_idle_timeout, Duration::from_secs(15));
    assert_eq!(c.http.h2_keepalive_interval, None);
    assert_eq!(c.http.h2_max_concurrent_streams, 8);

    let errs = load(
        "[server]\nmax_connections = 0\nadmin_max_connections = 0\nh2_handshake_timeout = \"0s\"\nh2_idle_timeout = \"later\"\nh2_max_concurrent_streams = 0\n[upstreams.default]\nurl = \"http://h:1\"\n",
        "bad.toml",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    for fragment in [
        "server.max_connections: 0 is not a positive whole number (it would refuse every connection)",
        "server.admin_max_connections: 0 is not a positive whole number (it would refuse every connection)",
        "server.h2_handshake_timeout must be longer than 0s",
        "server.h2_idle_timeout: `later` is not a duration",
        "server.h2_max_concurrent_streams: 0 is not a positive whole number (it would refuse every HTTP/2 request)",
    ] {
        assert!(errs.contains(fragment), "missing `{fragment}` in:\n{errs}");
    }
}

/// Counts, durations and closed-set words each have one reader and one wording, and a wrong
/// one (a negative count included) is reported with its line beside every other problem.
#[test]
fn counts_durations_and_words_are_reported_one_way_in_one_pass() {
    let errs = load(
        "[server]\nmax_headers = -1\nfeed_poll = \"often\"\n\n[guard]\nthreshold = 0\nwindow = \"0s\"\n\n[upstreams.default]\nurl = \"http://h:1\"\ntimeout = \"0s\"\n\n[profile.ws]\non_bad_message = \"ignore\"\nunknown_channels = \"maybe\"\nlimits = { connections_per_day_by = \"source\" }\n",
        "bad.toml",
        &Overrides::default(),
    )
    .unwrap_err();
    let text = errs.to_string();
    for fragment in [
        "server.max_headers: -1 is not a positive whole number",
        "server.feed_poll: `often` is not a duration; use forms like 90s",
        "bad.toml:5: guard.threshold: 0 is not a positive whole number (set guard.enabled = false to turn the guard off)",
        "bad.toml:5: guard.window must be longer than 0s",
        "bad.toml:9: upstreams.default.timeout must be longer than 0s",
        "profile.ws.on_bad_message `ignore` is not `error` or `close`",
        "profile.ws.unknown_channels `maybe` is not `refuse` or `allow`",
        "connections_per_day_by `source` is not `client` or `key`",
    ] {
        assert!(text.contains(fragment), "missing `{fragment}` in:\n{text}");
    }
    assert_eq!(errs.0.len(), 8, "{text}");
}

#[test]
fn the_portal_is_off_unless_it_has_a_listener() {
    let c = load("", "t.toml", &over("http://127.0.0.1:9000")).unwrap();
    assert_eq!(c.portal, None);
    let err = load(
        "[portal]\nbase_url = \"https://p.example\"\n",
        "t.toml",
        &over("http://127.0.0.1:9000"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("t.toml:1"), "{err}");
    assert!(err.to_string().contains("listen is missing"), "{err}");
}

#[test]
fn portal_settings_compile_with_defaults_and_tls_choices() {
    let text = r##"
[portal]
listen = "127.0.0.1:8082"
base_url = "https://portal.example.com/"
name = "OddsStream"
colors = { primary = "#6a35c9" }
sign_up = true
bookmaker_selection = true
bookmakers = ["bet365", "pinnacle"]
child_bots = true
rotate_grace = "1h"

[portal.smtp]
url = "smtp://mail.example.com"
from = "OddsStream <no-reply@oddsstream.io>"
"##;
    let c = load(text, "t.toml", &over("http://127.0.0.1:9000")).unwrap();
    let p = c.portal.unwrap();
    assert_eq!(p.listen.to_string(), "127.0.0.1:8082");
    assert_eq!(p.base_url, "https://portal.example.com");
    assert!(p.secure_cookies, "https: Secure cookies");
    assert_eq!(p.colors.primary, "#6a35c9");
    assert_eq!(p.colors.background, "#ffffff");
    assert!(p.sign_up && p.bookmaker_selection && p.child_bots);
    assert_eq!(p.bookmakers.len(), 2);
    assert_eq!(p.session_lifetime, Duration::from_secs(12 * 3600));
    assert_eq!(p.rotate_grace, Some(Duration::from_secs(3600)));
    assert_eq!((p.sign_in_per_address, p.sign_in_per_source), (5, 20));
    let smtp = p.smtp.unwrap();
    // A remote relay on smtp:// must upgrade with STARTTLS (port 587 by default).
    assert_eq!((smtp.host.as_str(), smtp.port), ("mail.example.com", 587));
    assert!(smtp.starttls && !smtp.implicit_tls);
    let tls = text.replace("smtp://mail.example.com", "smtps://mail.example.com");
    let smtp = load(&tls, "t.toml", &over("http://127.0.0.1:9000"))
        .unwrap()
        .portal
        .unwrap()
        .smtp
        .unwrap();
    assert_eq!(smtp.port, 465);
    assert!(smtp.implicit_tls && !smtp.starttls);
    // A loopback relay (a local MTA, the tests' SMTP server) needs no STARTTLS.
    let local = text.replace("smtp://mail.example.com", "smtp://127.0.0.1:2525");
    let smtp = load(&local, "t.toml", &over("http://127.0.0.1:9000"))
        .unwrap()
        .portal
        .unwrap()
        .smtp
        .unwrap();
    assert!(!smtp.starttls && smtp.port == 2525);
}

#[test]
fn portal_errors_are_all_reported() {
    let text = r#"
[portal]
listen = "nowhere"
base_url = "javascript:alert(1)"
logo = "https://cdn.example.com/logo.png"
colors = { primary = "red;}" }
bookmaker_selection = true
session_lifetime = "0s"
sign_in_per_address = 0
requests_per_source = 0

[portal.smtp]
url = "smtp://user:pw@mail.example.com"
from = "not an address"
username_env = "KEYGATE_TEST_SMTP_USER_THAT_IS_NEVER_SET"
password_env = "KEYGATE_TEST_SMTP_PASSWORD_THAT_IS_NEVER_SET"
"#;
    let err = load(text, "t.toml", &over("http://127.0.0.1:9000"))
        .unwrap_err()
        .to_string();
    for expected in [
        "listen `nowhere`",
        "base_url `javascript:alert(1)`",
        "logo: give a data:image/png",
        "colors.primary",
        "bookmaker_selection needs the list",
        "session_lifetime must be longer than 0s",
        "sign_in_per_address: 0",
        "requests_per_source: 0 is not a count from 1 to 1000000",
        "smtp.url",
    ] {
        assert!(err.contains(expected), "{expected} missing from {err}");
    }
    // The SMTP secrets are named by variable, checked at load (not for tools).
    let creds = r#"
[portal]
listen = "127.0.0.1:8082"
[portal.smtp]
url = "smtp://127.0.0.1:2525"
from = "a@b.example"
username_env = "KEYGATE_TEST_SMTP_USER_THAT_IS_NEVER_SET"
password_env = "KEYGATE_TEST_SMTP_PASSWORD_THAT_IS_NEVER_SET"
"#;
    let err = load(creds, "t.toml", &over("http://127.0.0.1:9000"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KEYGATE_TEST_SMTP_USER_THAT_IS_NEVER_SET"),
        "{err}"
    );
    let tooling = Overrides {
        tooling: true,
        ..over("http://127.0.0.1:9000")
    };
    assert!(load(creds, "t.toml", &tooling).is_ok());
}

#[test]
fn every_shipped_profile_with_a_portal_compiles_it() {
    for (name, sign_up, bookmakers, bots) in [
        ("ticktock", false, false, false),
        ("openpoker", true, false, true),
        ("oddsstream", true, true, false),
        ("sportrix", false, false, false),
    ] {
        let path = format!("{}/../../profiles/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let tooling = Overrides {
            tooling: true,
            ..over("http://127.0.0.1:9000")
        };
        let c = load(&text, &path, &tooling).unwrap_or_else(|e| panic!("{e}"));
        let p = c.portal.unwrap_or_else(|| panic!("{name} has no portal"));
        assert_eq!(
            (p.sign_up, p.bookmaker_selection, p.child_bots),
            (sign_up, bookmakers, bots),
            "{name}"
        );
        assert!(
            p.base_url.starts_with("https://") && p.secure_cookies,
            "{name}"
        );
        assert!(p.smtp.unwrap().from.contains('@'), "{name}");
    }
}

#[test]
fn the_readme_portal_configuration_compiles() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme
        .find("### Customer portal")
        .expect("the README's portal section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let tooling = Overrides {
        tooling: true,
        ..over("http://127.0.0.1:9000")
    };
    let c = load(block, "README.md", &tooling).unwrap_or_else(|e| panic!("{e}"));
    let p = c.portal.unwrap();
    assert!(p.logo.is_some() && p.secure_cookies && p.smtp.unwrap().credentials_env.is_some());
}

#[test]
fn the_readme_lists_each_shipped_profiles_scanner_pattern() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme
        .find("### Leaked keys")
        .expect("the README's leak-report section")..];
    for name in [
        "default",
        "ticktock",
        "openpoker",
        "oddsstream",
        "sportrix",
        "abp",
    ] {
        let c = if name == "default" {
            load("", "default.toml", &over("http://127.0.0.1:9000")).unwrap()
        } else {
            let path = format!("{}/../../profiles/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let tooling = Overrides {
                tooling: true,
                ..over("http://127.0.0.1:9000")
            };
            load(&text, &path, &tooling).unwrap_or_else(|e| panic!("{e}"))
        };
        let row = format!("| {name} | `{}` |", c.issuer.format.pattern());
        assert!(section.contains(&row), "README lacks {row}");
    }
}

#[test]
fn the_readme_leak_report_configuration_compiles() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme.find("### Leaked keys").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    // The document is read at start; here only the table's shape is checked.
    let tooling = Overrides {
        tooling: true,
        skip_tls_files: true,
        ..over("http://127.0.0.1:9000")
    };
    assert!(load(block, "README.md", &tooling).is_ok());
}

#[test]
fn plan_sharing_compiles_and_bad_values_are_named() {
    use crate::policy::sharing::{Sharing, SharingAction};
    let text = r#"
[plans.free]

[plans.pro.sharing]
networks_per_hour = 10

[plans.strict.sharing]
networks_per_hour = 3
action = "disable"
"#;
    let c = load(text, "p.toml", &over("http://127.0.0.1:9000")).unwrap();
    assert_eq!(c.plans["free"].sharing, None);
    assert_eq!(
        c.plans["pro"].sharing,
        Some(Sharing {
            networks_per_hour: 10,
            action: SharingAction::Flag
        })
    );
    assert_eq!(
        c.plans["strict"].sharing.map(|s| s.action),
        Some(SharingAction::Disable)
    );
    assert_eq!(c.plans["pro"].to_json("pro")["sharing"]["action"], "flag");

    let bad = r#"
[plans.one]
[plans.one.sharing]
networks_per_hour = 1
[plans.huge]
[plans.huge.sharing]
networks_per_hour = 10001
[plans.negative]
[plans.negative.sharing]
networks_per_hour = -5
[plans.odd]
[plans.odd.sharing]
networks_per_hour = 5
action = "revoke"
"#;
    let errs = load(bad, "p.toml", &over("http://127.0.0.1:9000")).unwrap_err();
    let err = errs.to_string();
    // Each with the line of its plan's table (a `[plans.NAME.sharing]` with no `[plans.NAME]`
    // header has no span in toml's answer, and its errors no line).
    for (line, expected) in [
        (
            2,
            "plans.one.sharing.networks_per_hour: 1 is not between 2 and 10000",
        ),
        (
            5,
            "plans.huge.sharing.networks_per_hour: 10001 is not between 2 and 10000",
        ),
        (
            8,
            "plans.negative.sharing.networks_per_hour: -5 is not between 2 and 10000",
        ),
        (
            11,
            "plans.odd.sharing.action: `revoke` is not `flag` or `disable`",
        ),
    ] {
        // The table's header, or the value's line below it.
        let at = [line, line + 1, line + 2].map(|l| format!("p.toml:{l}: "));
        assert!(
            errs.0
                .iter()
                .any(|e| at.iter().any(|a| e.to_string().starts_with(a))
                    && e.message.contains(expected)),
            "{expected} not at line {line} in {err}"
        );
    }
    let unknown = "[plans.x.sharing]\nnetworks_per_hour = 3\nthreshold = 4\n";
    assert!(load(unknown, "p.toml", &over("http://127.0.0.1:9000")).is_err());
}

#[test]
fn the_upstream_engine_is_hyper_unless_direct_is_asked_for() {
    let o = over("http://127.0.0.1:9000");
    assert_eq!(
        load("", "e.toml", &o).unwrap().upstream_engine,
        crate::policy::upstream::Engine::Hyper
    );
    let direct = load("[server]\nupstream_engine = \"direct\"\n", "e.toml", &o).unwrap();
    assert_eq!(
        direct.upstream_engine,
        crate::policy::upstream::Engine::Direct
    );
    for bad in ["\"Direct\"", "\"\"", "\"fast\"", "1"] {
        let text = format!("[server]\nupstream_engine = {bad}\n");
        assert!(load(&text, "e.toml", &o).is_err(), "{bad}");
    }
    let errs = load("[server]\nupstream_engine = \"fast\"\n", "e.toml", &o).unwrap_err();
    assert!(
        errs.to_string()
            .contains("server.upstream_engine `fast` is not `hyper` or `direct`"),
        "{errs}"
    );
}

#[test]
fn plan_delay_and_delayed_upstream_compile_and_bad_values_are_named() {
    use std::time::Duration;
    let text = r#"
[upstreams.late]
url = "http://127.0.0.1:7001"

[plans.free]

[plans.delayed]
delay = "60s"

[plans.brief]
delay = "1500ms"

[profile.ws]
delay_buffer_bytes = 1048576
delay_buffer_messages = 500

[[routes]]
name = "odds"
path = "/v1/odds"
delayed_upstream = "late"

[[routes]]
name = "scores"
path = "/v1/scores"
"#;
    let c = load(text, "p.toml", &over("http://127.0.0.1:9000")).unwrap();
    assert_eq!(c.plans["free"].delay, None);
    assert_eq!(c.plans["delayed"].delay, Some(Duration::from_secs(60)));
    assert_eq!(c.plans["brief"].delay, Some(Duration::from_millis(1500)));
    assert_eq!(c.plans["delayed"].to_json("delayed")["delay_seconds"], 60.0);
    assert!(c.plans["free"]
        .to_json("free")
        .get("delay_seconds")
        .is_none());
    let late = c.upstreams.iter().position(|u| &*u.name == "late");
    let routes = c.routes.routes();
    assert_eq!(routes[0].delayed_upstream, late);
    assert_eq!(routes[1].delayed_upstream, None);
    // The route picks its delayed upstream only when asked, and only for a delayed caller.
    assert_eq!(routes[0].upstream_for(7, || false), 7);
    assert_eq!(routes[0].upstream_for(7, || true), late.unwrap());
    assert_eq!(routes[1].upstream_for(7, || true), 7);
    let b = c.ws.profile.delay_buffer;
    assert_eq!((b.bytes, b.messages), (1 << 20, 500));
    assert_eq!(
        default_config(&over("http://127.0.0.1:9000"))
            .unwrap()
            .ws
            .profile
            .delay_buffer,
        crate::policy::delay::DelayBuffer::default()
    );

    let bad = r#"
[plans.zero]
delay = "0s"

[plans.long]
delay = "3601s"

[plans.garbled]
delay = "-5s"

[profile.ws]
delay_buffer_bytes = 2000000000
delay_buffer_messages = -1

[[routes]]
name = "odds"
path = "/v1/odds"
delayed_upstream = "nowhere"

[[routes]]
name = "open"
path = "/v1/open"
public = true
delayed_upstream = "default"
"#;
    let err = load(bad, "p.toml", &over("http://127.0.0.1:9000"))
        .unwrap_err()
        .to_string();
    for expected in [
        "p.toml:3: plans.zero.delay must be longer than 0s",
        "p.toml:6: plans.long.delay: 3601s is longer than the longest delay, 3600s",
        "p.toml:9: plans.garbled.delay: ",
        "profile.ws.delay_buffer_bytes: 2000000000 is more than the most a session may hold, 1073741824",
        "profile.ws.delay_buffer_messages: -1 is not a positive whole number",
        "route `odds`: unknown delayed_upstream `nowhere`",
        "route `open`: a public route has no caller whose plan could be delayed",
    ] {
        assert!(err.contains(expected), "{expected} not in {err}");
    }
}

#[test]
fn the_readme_delayed_tiers_configuration_compiles() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme
        .find("### Delayed tiers")
        .expect("the README's delayed tiers section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let upstreams = "[upstreams.odds]\nurl = \"http://127.0.0.1:7000\"\n[upstreams.odds_delayed]\nurl = \"http://127.0.0.1:7001\"\n";
    let c = load(
        &format!("{upstreams}{block}"),
        "README.md",
        &over("http://127.0.0.1:9000"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.plans["delayed"].delay,
        Some(std::time::Duration::from_secs(60))
    );
    let close =
        c.ws.profile
            .close(crate::policy::ws::CloseEvent::DelayOverflow);
    assert_eq!(close.code, 4013);
    assert!(c.routes.routes()[0].delayed_upstream.is_some());
}
