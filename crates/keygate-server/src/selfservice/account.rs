//! The documents self-service answers with: an account's profile, and a key shown once.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use keygate_core::Client;
use serde_json::{json, Value};

use crate::request::body::Body;

/// An account as its owner sees it: id, name, plan, scopes, parent, profile fields.
pub(super) fn profile(client: &Client, key_id: Option<&str>) -> Value {
    let mut doc = json!({
        "id": client.id,
        "name": client.name,
        "plan": client.plan,
        "scopes": client.scopes,
        "created_at": client.created_at,
    });
    if let Some(parent) = &client.parent {
        doc["parent"] = json!(parent);
    }
    if let Some(key_id) = key_id {
        doc["key_id"] = json!(key_id);
    }
    for (field, value) in &client.metadata {
        doc[field.as_str()] = json!(value);
    }
    doc
}

/// Seed 002's answer to a regeneration: `{"api_key": "op_live_…"}`, never cached.
pub(super) fn issued_key(secret: &str) -> Response<Body> {
    no_store(json_response(StatusCode::OK, json!({ "api_key": secret })))
}

pub(super) fn json_response(status: StatusCode, doc: Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(doc.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response holding a plaintext key must not be kept by any cache.
pub(super) fn no_store(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
