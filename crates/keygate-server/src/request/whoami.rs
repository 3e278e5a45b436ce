//! `GET /v1/whoami`: the caller's client, scopes, allowlists and limits, in the shape the
//! profile's whoami template gives (`[profile] whoami_body`; the default is the ticktock
//! document, seed 001, with the plan, key id and bookmaker allowlist added). JSON or XML by
//! `Accept`, like every body the gateway writes itself.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use keygate_core::render::{BodyFormat, Value, Vars};

use crate::policy::profile::WhoamiBody;
use crate::request::body::Body;
use crate::state::gateway::Admitted;

/// The whoami variables of one caller.
struct WhoVars<'a>(&'a Admitted);

fn list(items: &[Box<str>]) -> Value {
    Value::List(items.iter().map(|s| s.to_string()).collect())
}

impl WhoVars<'_> {
    fn restrictions(&self) -> Option<&keygate_core::KeyRestrictions> {
        self.0.key.rules.as_ref().map(|r| &r.source)
    }
}

impl Vars for WhoVars<'_> {
    fn get(&self, name: &str) -> Option<Value> {
        let c = &self.0.client.policy;
        Some(match name {
            "tenant_id" | "client_id" => Value::Str(c.id.as_str().to_owned()),
            "name" => Value::Str(c.name.to_string()),
            "plan" => Value::Str(c.plan.to_string()),
            "key_id" => Value::Str(self.0.key.id().to_owned()),
            // A narrowed key's effective scopes: its client's that the key kept.
            "scopes" => Value::List(
                self.0
                    .effective_scopes()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            "expires_at" => Value::Str(self.0.key.policy.expires_at?.to_string()),
            "allowed_cidrs" => Value::List(
                self.restrictions()
                    .map(|r| r.allowed_cidrs.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            ),
            "metadata" => Value::Map(
                self.restrictions()
                    .map(|r| r.metadata.clone().into_iter().collect())
                    .unwrap_or_default(),
            ),
            "external_id" => Value::Str(self.restrictions()?.external_id.clone()?),
            "sport_allowlist" => list(&c.sports),
            "bookmaker_allowlist" => list(&c.bookmakers),
            "features" => list(&c.features),
            "rate_limit_rpm" => {
                Value::Int(i64::try_from(self.0.client.limits.rpm?).unwrap_or(i64::MAX))
            }
            _ => return None,
        })
    }
}

/// The whoami document.
pub(crate) fn answer(body: &WhoamiBody, who: &Admitted, format: BodyFormat) -> Response<Body> {
    let vars = WhoVars(who);
    let (text, content_type) = match format {
        BodyFormat::Json => (body.template.render_json(&vars), "application/json"),
        BodyFormat::Xml => (
            body.template.render_xml(&vars, &body.xml_root, None),
            "application/xml",
        ),
    };
    let mut resp = Response::new(Body::from(Bytes::from(text)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
