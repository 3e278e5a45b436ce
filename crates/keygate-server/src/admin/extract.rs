//! Extractors whose every rejection is an [`AdminError`]: JSON bodies, query strings and ids in
//! the path. Handlers never see axum's own rejections, so every refusal is a problem document.

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Path, Query, Request};
use axum::Json;
use http::request::Parts;
use keygate_core::KeyId;
use serde::de::DeserializeOwned;

use super::error::AdminError;

/// A JSON body (`Content-Type: application/json`), deserialized strictly.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AdminError> {
        let Json(value) = <Json<T> as FromRequest<S>>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

/// An optional JSON body: absent when the request has no `Content-Type`.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, AdminError> {
        let value = <Json<T> as OptionalFromRequest<S>>::from_request(req, state).await?;
        Ok(value.map(|Json(v)| JsonBody(v)))
    }
}

/// Query parameters.
#[derive(Debug)]
pub(crate) struct Params<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Params(value))
    }
}

/// A key id from the path (`key_` + 16 characters).
#[derive(Debug)]
pub(crate) struct KeyPath(pub(crate) KeyId);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        let id = KeyId::parse(&raw).map_err(|e| AdminError::InvalidId(e.to_string()))?;
        Ok(KeyPath(id))
    }
}

/// A client name or id from the path (percent-decoded).
#[derive(Debug)]
pub(crate) struct ClientPath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for ClientPath {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(ClientPath(raw))
    }
}
