//! `GET /v1/whoami`: the caller's client, scopes, allowlists and limits, in the shape of the
//! ticktock contract (seed 001) by default.

use http::{Response, StatusCode};
use serde_json::json;

use crate::body::Body;
use crate::gateway::Admitted;
use crate::respond;

/// The whoami document.
pub fn answer(who: &Admitted) -> Response<Body> {
    let c = &who.client.policy;
    let rpm = who.client.limits.rpm;
    respond::json(
        StatusCode::OK,
        &json!({
            "data": {
                "tenant_id": c.id.as_str(),
                "name": &*c.name,
                "scopes": c.scopes.iter().map(|s| &**s).collect::<Vec<_>>(),
                "sport_allowlist": c.sports.iter().map(|s| &**s).collect::<Vec<_>>(),
                "bookmaker_allowlist": c.bookmakers.iter().map(|s| &**s).collect::<Vec<_>>(),
                "rate_limit_rpm": rpm,
                "plan": &*c.plan,
                "key_id": who.key.id(),
            }
        }),
    )
}
