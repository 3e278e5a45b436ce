//! The contract a provider's customers see: where the key is read from, the status, headers and
//! body of every refusal, which infra endpoints are public, and the identity headers upstreams get.
//!
//! Compiled from configuration once; rendering a refusal fills a precompiled template.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use keygate_core::decision::{Denial, Reason};
use keygate_core::render::{BodyFormat, BodyTemplate, Value, Vars};

/// A place a credential may be read from, in profile order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    Header(HeaderName),
    Bearer,
    Query(Box<str>),
}

/// Header names keygate sets on forwarded requests (and strips from callers).
#[derive(Clone, Debug)]
pub struct IdentityHeaders {
    pub client_id: HeaderName,
    pub client_name: HeaderName,
    pub key_id: HeaderName,
    pub scopes: HeaderName,
    pub plan: HeaderName,
    /// The client's sport allowlist (see [`crate::state::replica::IdentityValues`] for the values).
    pub sports: HeaderName,
    /// The client's bookmaker allowlist (or selection, on a plan with `bookmaker_selection`).
    pub bookmakers: HeaderName,
    /// The caller's plan delay in seconds (`crate::policy::delay`): written for a delayed
    /// plan only, and removed from every caller's request, so an upstream never takes a
    /// caller's own claim for the gateway's.
    pub delay: HeaderName,
}

impl IdentityHeaders {
    /// A copy that shares no allocation with `self`: each worker sends its own, since a name
    /// cloned from one shared copy bumps a reference count every worker writes to
    /// (`crate::state::per_worker`).
    pub fn copied(&self) -> Self {
        let copy = |n: &HeaderName| {
            HeaderName::from_bytes(n.as_str().as_bytes()).unwrap_or_else(|_| n.clone())
        };
        IdentityHeaders {
            client_id: copy(&self.client_id),
            client_name: copy(&self.client_name),
            key_id: copy(&self.key_id),
            scopes: copy(&self.scopes),
            plan: copy(&self.plan),
            sports: copy(&self.sports),
            bookmakers: copy(&self.bookmakers),
            delay: copy(&self.delay),
        }
    }

    pub fn all(&self) -> [&HeaderName; 8] {
        [
            &self.client_id,
            &self.client_name,
            &self.key_id,
            &self.scopes,
            &self.plan,
            &self.sports,
            &self.bookmakers,
            &self.delay,
        ]
    }
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            client_id: HeaderName::from_static("x-keygate-client-id"),
            client_name: HeaderName::from_static("x-keygate-client-name"),
            key_id: HeaderName::from_static("x-keygate-key-id"),
            scopes: HeaderName::from_static("x-keygate-scopes"),
            plan: HeaderName::from_static("x-keygate-plan"),
            sports: HeaderName::from_static("x-keygate-sports"),
            bookmakers: HeaderName::from_static("x-keygate-bookmakers"),
            delay: HeaderName::from_static("x-keygate-delay"),
        }
    }
}

/// Which infra endpoints answer without a key on the public listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublicInfra {
    pub health: bool,
    pub ready: bool,
    pub status: bool,
    pub metrics: bool,
}

/// The answer to one refusal reason.
#[derive(Clone, Debug)]
pub struct ErrorSpec {
    pub status: StatusCode,
    pub template: BodyTemplate,
    pub json_type: HeaderValue,
    pub xml_type: HeaderValue,
    pub xml_root: Box<str>,
    pub xml_namespace: Option<Box<str>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Variables a body template may use.
pub(crate) const TEMPLATE_VARS: &[&str] = &[
    "code",
    "status",
    "title",
    "detail",
    "subject",
    "limit",
    "remaining",
    "reset",
    "retry_after",
];

/// The RFC 9457 problem document of the default profile.
pub(crate) const PROBLEM_BODY: &str = r#"{"type":"about:blank","title":"{title}","status":{"var":"status"},"detail":"{detail}","code":"{code}"}"#;

impl ErrorSpec {
    /// The default profile's answer: RFC 9457 problem details with a stable `code`.
    pub fn problem(reason: Reason) -> ErrorSpec {
        let tree: serde_json::Value =
            serde_json::from_str(PROBLEM_BODY).expect("the built-in problem template is JSON");
        ErrorSpec {
            status: StatusCode::from_u16(reason.default_status())
                .expect("default statuses are valid"),
            template: BodyTemplate::compile(&tree, TEMPLATE_VARS)
                .expect("the built-in problem template compiles"),
            json_type: HeaderValue::from_static("application/problem+json"),
            xml_type: HeaderValue::from_static("application/problem+xml"),
            xml_root: "problem".into(),
            xml_namespace: Some("urn:ietf:rfc:7807".into()),
            headers: Vec::new(),
        }
    }
}

/// Rate-limit facts a refusal may quote.
#[derive(Clone, Copy, Debug, Default)]
pub struct LimitFacts {
    pub limit: u64,
    pub remaining: u64,
    pub reset: u64,
    pub retry_after: u64,
}

/// Answers that replace the profile's for one reason (`scope_missing`) or one subject of a
/// reason (`feature_not_on_plan:live`): a route's own, or the profile's per-subject ones.
#[derive(Clone, Debug, Default)]
pub struct ErrorOverrides {
    pub by_subject: Vec<(Reason, Box<str>, ErrorSpec)>,
    pub by_reason: Vec<(Reason, ErrorSpec)>,
}

impl ErrorOverrides {
    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty() && self.by_reason.is_empty()
    }

    /// The override for a refusal, the subject's before the reason's.
    pub fn find(&self, denial: &Denial) -> Option<&ErrorSpec> {
        let subject = denial.subject.as_deref();
        self.by_subject
            .iter()
            .find(|(r, s, _)| *r == denial.reason && Some(&**s) == subject)
            .map(|(_, _, spec)| spec)
            .or_else(|| {
                self.by_reason
                    .iter()
                    .find(|(r, _)| *r == denial.reason)
                    .map(|(_, spec)| spec)
            })
    }
}

/// Variables a whoami template may use.
pub(crate) const WHOAMI_VARS: &[&str] = &[
    "tenant_id",
    "client_id",
    "name",
    "plan",
    "key_id",
    "scopes",
    "sport_allowlist",
    "bookmaker_allowlist",
    "features",
    "rate_limit_rpm",
    // Issue 22: the key's own (scopes above are already the key's effective ones).
    "expires_at",
    "allowed_cidrs",
    "metadata",
    "external_id",
];

/// Today's whoami document, the default profile's.
pub(crate) const DEFAULT_WHOAMI_BODY: &str = r#"{"data":{"tenant_id":{"var":"tenant_id"},"name":{"var":"name"},"scopes":{"var":"scopes"},"sport_allowlist":{"var":"sport_allowlist"},"bookmaker_allowlist":{"var":"bookmaker_allowlist"},"rate_limit_rpm":{"var":"rate_limit_rpm"},"plan":{"var":"plan"},"key_id":{"var":"key_id"},"expires_at":{"var":"expires_at"},"allowed_cidrs":{"var":"allowed_cidrs"},"metadata":{"var":"metadata"},"external_id":{"var":"external_id"}}}"#;

/// The whoami document: a template over [`WHOAMI_VARS`], rendered as JSON or XML by `Accept`.
#[derive(Clone, Debug)]
pub struct WhoamiBody {
    pub template: BodyTemplate,
    /// Root element of the XML form.
    pub xml_root: Box<str>,
}

impl Default for WhoamiBody {
    fn default() -> Self {
        let tree: serde_json::Value = serde_json::from_str(DEFAULT_WHOAMI_BODY)
            .expect("the built-in whoami template is JSON");
        WhoamiBody {
            template: BodyTemplate::compile(&tree, WHOAMI_VARS)
                .expect("the built-in whoami template compiles"),
            xml_root: "whoami".into(),
        }
    }
}

/// A compiled profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: Box<str>,
    pub credentials: Vec<CredentialSource>,
    /// Every source the configuration names: [`Profile::credentials`], then each WebSocket
    /// route's own. All are stripped from whatever goes upstream (`crate::request::credential::strip`),
    /// so a key stops at the gateway wherever in the request the caller put it.
    pub named_credentials: Vec<CredentialSource>,
    /// Forward the caller's key to the upstream, in the one source it was read from (off: the
    /// key stops at the gateway). Other copies of it are stripped all the same.
    pub forward_credential: bool,
    pub public: PublicInfra,
    pub whoami: Option<Box<str>>,
    pub verify: bool,
    pub enforce_accept: bool,
    /// `formats = ["json"]`: every refusal is JSON whatever `Accept` asks (seeds 000 and 004
    /// show JSON bodies only), and no request is refused 406 for its `Accept`.
    pub json_only: bool,
    /// The plan of clients created without one (`keygate client create`, `POST /v1/clients`).
    pub default_plan: Box<str>,
    /// A path (or method) no route serves is answered `not_found` (`method_not_allowed`) only
    /// to a caller with a valid key; others get their key's refusal (seed 004: every endpoint
    /// but `GET /health` requires authentication).
    pub unknown_paths_need_key: bool,
    pub identity: IdentityHeaders,
    /// One per [`Reason`], indexed by [`Reason::index`].
    pub errors: Vec<ErrorSpec>,
    /// Answers for one subject of a reason (`feature_not_on_plan:live`), tried first: a
    /// provider may publish a different code per missing feature or scope.
    pub subject_errors: ErrorOverrides,
    /// The whoami document's shape.
    pub whoami_body: WhoamiBody,
    /// Root element of XML refusals with a configured body.
    pub xml_root: Box<str>,
    pub rate_limit_headers: crate::policy::ratelimit::HeaderStyle,
    /// Status of the `upstream_unavailable` answer while a circuit breaker is open: 503 (the
    /// upstream is known to be down, retry later), unless the profile set that reason's status.
    pub circuit_open_status: StatusCode,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            name: "default".into(),
            credentials: vec![
                CredentialSource::Header(HeaderName::from_static("x-api-key")),
                CredentialSource::Bearer,
            ],
            named_credentials: vec![
                CredentialSource::Header(HeaderName::from_static("x-api-key")),
                CredentialSource::Bearer,
            ],
            forward_credential: false,
            public: PublicInfra {
                health: true,
                ready: true,
                status: false,
                metrics: false,
            },
            whoami: Some("/v1/whoami".into()),
            verify: true,
            enforce_accept: true,
            json_only: false,
            default_plan: "default".into(),
            unknown_paths_need_key: false,
            identity: IdentityHeaders::default(),
            errors: Reason::ALL.into_iter().map(ErrorSpec::problem).collect(),
            subject_errors: ErrorOverrides::default(),
            whoami_body: WhoamiBody::default(),
            xml_root: "error".into(),
            rate_limit_headers: crate::policy::ratelimit::HeaderStyle::default(),
            circuit_open_status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Template variables of one refusal.
struct DenialVars<'a> {
    denial: &'a Denial,
    status: StatusCode,
    limits: LimitFacts,
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Vars for DenialVars<'_> {
    fn get(&self, name: &str) -> Option<Value> {
        let r = self.denial.reason;
        let subject = self.denial.subject.as_deref().unwrap_or("");
        Some(match name {
            "code" => Value::Str(r.code().to_owned()),
            "status" => Value::Int(i64::from(self.status.as_u16())),
            "title" => Value::Str(self.status.canonical_reason().unwrap_or("Error").to_owned()),
            "detail" => Value::Str(
                r.default_detail()
                    .replace("{subject}", subject)
                    .replace("{retry_after}", &self.limits.retry_after.to_string()),
            ),
            "subject" => Value::Str(subject.to_owned()),
            "limit" => int(self.limits.limit),
            "remaining" => int(self.limits.remaining),
            "reset" => int(self.limits.reset),
            "retry_after" => int(self.limits.retry_after),
            _ => return None,
        })
    }
}

/// A rendered refusal, ready to become a response.
#[derive(Debug)]
pub struct Rendered {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Profile {
    pub fn error(&self, reason: Reason) -> &ErrorSpec {
        &self.errors[reason.index()]
    }

    /// The answer to a refusal: the route's override, then the subject's, then the reason's.
    pub fn spec_for<'a>(
        &'a self,
        denial: &Denial,
        route: Option<&'a ErrorOverrides>,
    ) -> &'a ErrorSpec {
        route
            .and_then(|o| o.find(denial))
            .or_else(|| self.subject_errors.find(denial))
            .unwrap_or_else(|| self.error(denial.reason))
    }

    /// Renders a refusal in the format the caller accepts (with a route's overrides, if any).
    pub fn render(
        &self,
        denial: &Denial,
        format: BodyFormat,
        limits: LimitFacts,
        route: Option<&ErrorOverrides>,
    ) -> Rendered {
        let status = self.spec_for(denial, route).status;
        self.render_as(denial, format, limits, route, status)
    }

    /// Renders a refusal with another status than its answer's (an open circuit breaker).
    pub fn render_as(
        &self,
        denial: &Denial,
        format: BodyFormat,
        limits: LimitFacts,
        route: Option<&ErrorOverrides>,
        status: StatusCode,
    ) -> Rendered {
        let spec = self.spec_for(denial, route);
        let vars = DenialVars {
            denial,
            status,
            limits,
        };
        let format = if self.json_only {
            BodyFormat::Json
        } else {
            format
        };
        let (body, content_type) = match format {
            BodyFormat::Json => (spec.template.render_json(&vars), spec.json_type.clone()),
            BodyFormat::Xml => (
                spec.template
                    .render_xml(&vars, &spec.xml_root, spec.xml_namespace.as_deref()),
                spec.xml_type.clone(),
            ),
        };
        Rendered {
            status,
            content_type,
            headers: spec.headers.clone(),
            body: Bytes::from(body),
        }
    }
}
