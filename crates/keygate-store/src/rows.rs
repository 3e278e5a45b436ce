//! Decoding stored rows into model types. A row that does not decode is reported as
//! [`StoreError::Corrupt`], never a panic.

use keygate_core::{
    ApiKey, Client, ClientId, KeyDigest, KeyId, KeyRestrictions, KeyState, Timestamp,
};
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::StoreError;

/// Columns of `clients`, in the order [`client`] reads them.
macro_rules! client_columns {
    () => {
        "id, name, plan, scopes, sports, bookmakers, limits, active, created_at, updated_at, parent_id, metadata"
    };
}
/// Columns of `keys`, in the order [`key`] reads them.
macro_rules! key_columns {
    () => {
        "id, client_id, digest, hint, label, state, expires_at, created_at, rotated_at, replaced_by, last_used_at, restrictions, external_id"
    };
}
pub(crate) use {client_columns, key_columns};

fn json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn client(row: &AnyRow) -> Result<Client, StoreError> {
    let id: String = row.try_get("id")?;
    Ok(Client {
        id: ClientId::parse(&id).map_err(|e| corrupt("client id", e))?,
        name: row.try_get("name")?,
        plan: row.try_get("plan")?,
        scopes: json(row, "scopes")?,
        sports: json(row, "sports")?,
        bookmakers: json(row, "bookmakers")?,
        limits: json(row, "limits")?,
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
        parent: row
            .try_get::<Option<String>, _>("parent_id")?
            .map(|p| ClientId::parse(&p).map_err(|e| corrupt("parent id", e)))
            .transpose()?,
        metadata: json(row, "metadata")?,
    })
}

pub(crate) fn key(row: &AnyRow) -> Result<ApiKey, StoreError> {
    let id: String = row.try_get("id")?;
    let client_id: String = row.try_get("client_id")?;
    let digest: Vec<u8> = row.try_get("digest")?;
    let state: String = row.try_get("state")?;
    let replaced_by: Option<String> = row.try_get("replaced_by")?;
    Ok(ApiKey {
        id: KeyId::parse(&id).map_err(|e| corrupt("key id", e))?,
        client_id: ClientId::parse(&client_id).map_err(|e| corrupt("client id", e))?,
        digest: KeyDigest::from_slice(&digest)
            .ok_or_else(|| corrupt("key digest", "not 32 bytes"))?,
        hint: row.try_get("hint")?,
        label: row.try_get("label")?,
        state: KeyState::parse(&state).ok_or_else(|| corrupt("key state", &state))?,
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        rotated_at: row
            .try_get::<Option<i64>, _>("rotated_at")?
            .map(Timestamp::from_millis),
        replaced_by: replaced_by
            .map(|s| KeyId::parse(&s).map_err(|e| corrupt("replaced_by", e)))
            .transpose()?,
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")?
            .map(Timestamp::from_millis),
        restrictions: key_restrictions(row)?,
    })
}

/// A key's restrictions: the JSON column (NULL for none) and the external id beside it.
fn key_restrictions(row: &AnyRow) -> Result<KeyRestrictions, StoreError> {
    let mut r = match row.try_get::<Option<String>, _>("restrictions")? {
        Some(text) => serde_json::from_str(&text).map_err(|e| corrupt("column restrictions", e))?,
        None => KeyRestrictions::default(),
    };
    r.external_id = row.try_get("external_id")?;
    Ok(r)
}

/// The `restrictions` column of a key: NULL when it narrows nothing and has no metadata (the
/// external id has its own column).
pub(crate) fn restrictions_column(r: &KeyRestrictions) -> Option<String> {
    let stored = KeyRestrictions {
        external_id: None,
        ..r.clone()
    };
    (!stored.is_empty()).then(|| to_json(&stored))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("model types serialize")
}
