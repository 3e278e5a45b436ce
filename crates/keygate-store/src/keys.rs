//! Key lifecycle: create, rotate (with optional grace), revoke, disable/enable, expiry.
//!
//! Each operation is one transaction, so a crash never leaves a key half-created, nor an old and
//! a new key both valid where rotation promised one.

use std::time::Duration;

use keygate_core::names::check_label;
use keygate_core::{
    ApiKey, Client, ClientId, KeyDigest, KeyId, KeyMaterial, KeyRestrictions, KeyState,
    RestrictionsChange, SecretKey, Timestamp,
};
use serde::Serialize;
use serde_json::json;

use crate::idempotency::{IdempotencyClaim, Once, SealedAnswer};
use crate::rows::{self, key_columns};
use crate::{clients, Actor, Store, StoreError, WriteTx};

/// A key to create.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub material: KeyMaterial,
    pub label: String,
    pub expires_at: Option<Timestamp>,
    /// Narrowed scopes, CIDRs, metadata, external id; checked against the client at creation.
    pub restrictions: KeyRestrictions,
}

/// The outcome of a rotation: the new key and the old one as it now stands.
#[derive(Clone, Debug)]
pub struct Rotation {
    pub new: ApiKey,
    pub old: ApiKey,
}

impl Rotation {
    /// Until when the replaced key keeps working: the rotation instant when it was revoked at
    /// once, else the end of its grace period.
    pub fn old_valid_until(&self) -> Option<Timestamp> {
        if self.old.state == KeyState::Revoked {
            self.old.rotated_at
        } else {
            self.old.expires_at
        }
    }
}

/// The one document that carries a plaintext key: the answer to a create or a rotation, shown
/// once by the CLI and the admin API alike.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedKey<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub hint: &'a str,
    pub client: &'a str,
    pub client_id: &'a str,
    pub label: &'a str,
    pub state: KeyState,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The key a rotation replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_key_valid_until: Option<Timestamp>,
    /// Narrowed scopes, CIDRs, metadata and external id, each absent when unset.
    #[serde(flatten)]
    pub restrictions: &'a KeyRestrictions,
}

impl<'a> IssuedKey<'a> {
    /// A created key.
    pub fn created(key: &'a ApiKey, secret: &'a SecretKey, client_name: &'a str) -> Self {
        IssuedKey {
            id: key.id.as_str(),
            key: secret.expose(),
            hint: &key.hint,
            client: client_name,
            client_id: key.client_id.as_str(),
            label: &key.label,
            state: key.state,
            expires_at: key.expires_at,
            created_at: key.created_at,
            replaces: None,
            old_key_valid_until: None,
            restrictions: &key.restrictions,
        }
    }

    /// The new key of a rotation, naming the key it replaced.
    pub fn rotated(rotation: &'a Rotation, secret: &'a SecretKey, client_name: &'a str) -> Self {
        IssuedKey {
            replaces: Some(rotation.old.id.as_str()),
            old_key_valid_until: rotation.old_valid_until(),
            ..IssuedKey::created(&rotation.new, secret, client_name)
        }
    }
}

/// The outcome of replacing every key of a client: the one new key, and the keys it revoked.
#[derive(Clone, Debug)]
pub struct Replacement {
    pub new: ApiKey,
    pub revoked: Vec<KeyId>,
}

/// Which keys to list, ordered by creation, one page at a time.
#[derive(Clone, Debug)]
pub struct KeyFilter {
    /// A client name or id.
    pub client: Option<String>,
    pub state: Option<KeyState>,
    /// Only keys with this external id (one per client among keys not revoked).
    pub external_id: Option<String>,
    /// Only keys after this id in the listing order (the previous page's last id).
    pub after: Option<KeyId>,
    pub limit: u32,
}

impl Default for KeyFilter {
    fn default() -> Self {
        KeyFilter {
            client: None,
            state: None,
            external_id: None,
            after: None,
            limit: 1000,
        }
    }
}

impl Store {
    /// Creates a key for a client.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`], [`StoreError::ExpiryInPast`], [`StoreError::Invalid`].
    pub async fn create_key(
        &self,
        actor: &Actor,
        client: &str,
        new: NewKey,
    ) -> Result<ApiKey, StoreError> {
        check_label(&new.label)?;
        let mut tx = self.begin_write().await?;
        let key = create_in(&mut tx, actor, client, new).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// [`Store::create_key`] under an idempotency claim: the first request creates the key and
    /// keeps `seal`'s answer in the same transaction; a retry gets that answer back and creates
    /// nothing.
    ///
    /// # Errors
    /// As [`Store::create_key`].
    pub async fn create_key_once(
        &self,
        actor: &Actor,
        client: &str,
        new: NewKey,
        claim: &IdempotencyClaim,
        seal: impl FnOnce(&ApiKey) -> SealedAnswer,
    ) -> Result<Once<ApiKey>, StoreError> {
        check_label(&new.label)?;
        let mut tx = self.begin_write().await?;
        if let Some(replay) = tx.replay(claim).await? {
            return Ok(Once::Replayed(replay));
        }
        let key = create_in(&mut tx, actor, client, new).await?;
        tx.remember(claim, &seal(&key)).await?;
        tx.commit().await?;
        Ok(Once::Done(key))
    }

    /// Reads one key.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`].
    pub async fn key(&self, id: &KeyId) -> Result<ApiKey, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => rows::key(&row),
            None => Err(StoreError::KeyNotFound(id.to_string())),
        }
    }

    /// Lists keys (masked: the store has nothing else) ordered by creation time.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`] when filtering by an unknown client.
    pub async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<ApiKey>, StoreError> {
        let client_id = match &filter.client {
            Some(c) => Some(self.client(c).await?.id),
            None => None,
        };
        let (after_created, after_id) = match &filter.after {
            Some(id) => {
                let k = self.key(id).await?;
                (Some(k.created_at.as_millis()), Some(k.id.to_string()))
            }
            None => (None, None),
        };
        self.select_keys(
            client_id.as_ref().map(|c| c.as_str()),
            filter,
            after_created,
            after_id,
        )
        .await
    }

    /// Every key of the client `id` (up to [`KeyFilter::default`]'s limit), ordered by
    /// creation time, without first looking the client up: for callers that hold its id from
    /// a query that already checked it (the portal's session).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn keys_of_client(&self, id: &ClientId) -> Result<Vec<ApiKey>, StoreError> {
        self.select_keys(Some(id.as_str()), &KeyFilter::default(), None, None)
            .await
    }

    async fn select_keys(
        &self,
        client_id: Option<&str>,
        filter: &KeyFilter,
        after_created: Option<i64>,
        after_id: Option<String>,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE ($1 IS NULL OR client_id = $1) AND ($2 IS NULL OR state = $2)",
            " AND ($3 IS NULL OR created_at > $3 OR (created_at = $3 AND id > $4))",
            " AND ($6 IS NULL OR external_id = $6)",
            " ORDER BY created_at, id LIMIT $5"
        ))
        .bind(client_id)
        .bind(filter.state.map(KeyState::as_str))
        .bind(after_created)
        .bind(after_id)
        .bind(i64::from(filter.limit))
        .bind(filter.external_id.as_deref())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::key).collect()
    }

    /// Replaces a key's secret. The new key keeps the client, label, state and expiry. The old
    /// key is revoked at once, or with `grace` keeps working until then (never past its own
    /// expiry).
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`], [`StoreError::KeyRevoked`], [`StoreError::KeyExpired`].
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        material: KeyMaterial,
        grace: Option<Duration>,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.begin_write().await?;
        let rotation = rotate_in(&mut tx, actor, id, material, grace).await?;
        tx.commit().await?;
        Ok(rotation)
    }

    /// [`Store::rotate_key`] under an idempotency claim: a retry gets the first rotation's
    /// answer back and rotates nothing (the new key is not rotated again).
    ///
    /// # Errors
    /// As [`Store::rotate_key`].
    pub async fn rotate_key_once(
        &self,
        actor: &Actor,
        id: &KeyId,
        material: KeyMaterial,
        grace: Option<Duration>,
        claim: &IdempotencyClaim,
        seal: impl FnOnce(&Rotation) -> SealedAnswer,
    ) -> Result<Once<Rotation>, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(replay) = tx.replay(claim).await? {
            return Ok(Once::Replayed(replay));
        }
        let rotation = rotate_in(&mut tx, actor, id, material, grace).await?;
        tx.remember(claim, &seal(&rotation)).await?;
        tx.commit().await?;
        Ok(Once::Done(rotation))
    }

    /// Replaces every key of a client with one new key, in one transaction: the old keys are
    /// revoked at once (no grace). The new key keeps the restrictions of the oldest key it
    /// replaces (scopes narrowing, CIDRs, metadata, external id), never more scopes than the
    /// client has. With `parent`, the client must be that account's child, else
    /// it is reported as not found, so a caller learns nothing about other accounts.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`], [`StoreError::Invalid`] for a bad label.
    pub async fn replace_keys(
        &self,
        actor: &Actor,
        client: &keygate_core::ClientId,
        parent: Option<&keygate_core::ClientId>,
        material: KeyMaterial,
        label: &str,
    ) -> Result<Replacement, StoreError> {
        check_label(label)?;
        let mut tx = self.begin_write().await?;
        let owner = clients::find(&mut tx, client.as_str())
            .await?
            .filter(|c| c.id == *client && parent.is_none_or(|p| c.parent.as_ref() == Some(p)))
            .ok_or_else(|| StoreError::ClientNotFound(client.to_string()))?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE client_id = $1 AND state <> 'revoked' ORDER BY created_at, id"
        ))
        .bind(owner.id.as_str())
        .fetch_all(&mut *tx.tx)
        .await?;
        let old: Vec<ApiKey> = rows.iter().map(rows::key).collect::<Result<_, _>>()?;
        // The new key is as narrow as the oldest it replaces (a regeneration never widens; a
        // client's keys are one credential in self-service), within the client's scopes now,
        // and takes its external id, given up first by the keys being revoked.
        let mut restrictions = old
            .first()
            .map(|k| k.restrictions.clone())
            .unwrap_or_default();
        if let Some(scopes) = &mut restrictions.scopes {
            scopes.retain(|s| owner.scopes.contains(s));
        }
        if restrictions.external_id.is_some() {
            sqlx::query(
                "UPDATE keys SET external_id = NULL WHERE client_id = $1 AND state <> 'revoked'",
            )
            .bind(owner.id.as_str())
            .execute(&mut *tx.tx)
            .await?;
        }
        let new = create_in(
            &mut tx,
            actor,
            owner.id.as_str(),
            NewKey {
                material,
                label: label.to_owned(),
                expires_at: None,
                restrictions,
            },
        )
        .await?;
        let mut revoked = Vec::with_capacity(old.len());
        for mut key in old {
            if key.restrictions.external_id.is_some()
                && key.restrictions.external_id == new.restrictions.external_id
            {
                key.restrictions.external_id = None;
            }
            key.state = KeyState::Revoked;
            key.rotated_at = Some(tx.now);
            key.replaced_by = Some(new.id.clone());
            save(&mut tx, &key).await?;
            tx.change("key", key.id.as_str(), "rotate").await?;
            revoked.push(key.id);
        }
        tx.audit(
            actor,
            "key.replace",
            owner.id.as_str(),
            json!({ "new_key": new.id, "new_hint": new.hint, "revoked": revoked }),
        )
        .await?;
        tx.commit().await?;
        Ok(Replacement { new, revoked })
    }

    /// Revokes, disables or re-enables a key. Setting the state a key already has changes
    /// nothing; a revoked key cannot be changed.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`], [`StoreError::KeyRevoked`].
    pub async fn set_key_state(
        &self,
        actor: &Actor,
        id: &KeyId,
        state: KeyState,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut key = find(&mut tx, id).await?;
        if key.state == KeyState::Revoked {
            return Err(StoreError::KeyRevoked(key.id));
        }
        change_state(&mut tx, actor, &mut key, state).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Sets (or with `None` clears) a key's expiry.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`], [`StoreError::KeyRevoked`], [`StoreError::ExpiryInPast`].
    pub async fn set_key_expiry(
        &self,
        actor: &Actor,
        id: &KeyId,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(at) = expires_at.filter(|&at| at <= tx.now) {
            return Err(StoreError::ExpiryInPast(at));
        }
        let mut key = find(&mut tx, id).await?;
        if key.state == KeyState::Revoked {
            return Err(StoreError::KeyRevoked(key.id));
        }
        key.expires_at = expires_at;
        save(&mut tx, &key).await?;
        tx.change("key", key.id.as_str(), "expire").await?;
        tx.audit(
            actor,
            "key.expire",
            key.id.as_str(),
            json!({ "expires_at": expires_at }),
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Changes a key's restrictions (narrowed scopes, CIDR allowlist, metadata, external id):
    /// each field the change names replaces the key's. The result is checked against the
    /// client in the same transaction, so a key can never be given a scope its client lacks.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`], [`StoreError::KeyRevoked`],
    /// [`StoreError::InvalidRestriction`], [`StoreError::ScopeNotGranted`],
    /// [`StoreError::DuplicateExternalId`].
    pub async fn set_key_restrictions(
        &self,
        actor: &Actor,
        id: &KeyId,
        change: &RestrictionsChange,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut key = find(&mut tx, id).await?;
        if key.state == KeyState::Revoked {
            return Err(StoreError::KeyRevoked(key.id));
        }
        let restrictions = change.apply(&key.restrictions)?;
        let owner = clients::find(&mut tx, key.client_id.as_str())
            .await?
            .ok_or_else(|| StoreError::ClientNotFound(key.client_id.to_string()))?;
        check_against(&mut tx, &owner, &restrictions, Some(&key.id)).await?;
        key.restrictions = restrictions;
        save(&mut tx, &key).await?;
        tx.change("key", key.id.as_str(), "restrict").await?;
        tx.audit(
            actor,
            "key.restrict",
            key.id.as_str(),
            json!({ "restrictions": key.restrictions }),
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Records when keys were last used, keeping the later of the stored and the given time
    /// (several nodes flush independently). Telemetry like usage: one transaction for the
    /// batch, no feed version, no audit entry; a key that no longer exists is skipped.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; the caller keeps the times and retries.
    pub async fn record_key_use(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, at) in uses {
            sqlx::query(
                "UPDATE keys SET last_used_at = $2 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id.as_str())
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Sets a key's state inside an open write, with its feed row and audit entry; setting the state
/// it already has writes nothing. The caller has refused a revoked key.
pub(crate) async fn change_state(
    tx: &mut WriteTx,
    actor: &Actor,
    key: &mut ApiKey,
    state: KeyState,
) -> Result<(), StoreError> {
    if key.state == state {
        return Ok(());
    }
    key.state = state;
    save(tx, key).await?;
    let action = match state {
        KeyState::Active => "enable",
        KeyState::Disabled => "disable",
        KeyState::Revoked => "revoke",
    };
    tx.change("key", key.id.as_str(), action).await?;
    tx.audit(
        actor,
        &format!("key.{action}"),
        key.id.as_str(),
        json!({ "hint": key.hint }),
    )
    .await
}

/// Reads the key stored under `digest`, in any state, inside an open write.
pub(crate) async fn find_by_digest(
    tx: &mut WriteTx,
    digest: &KeyDigest,
) -> Result<Option<ApiKey>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM keys WHERE digest = $1"
    ))
    .bind(digest.as_bytes().to_vec())
    .fetch_optional(&mut *tx.tx)
    .await?;
    row.as_ref().map(rows::key).transpose()
}

pub(crate) async fn find(tx: &mut WriteTx, id: &KeyId) -> Result<ApiKey, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM keys WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *tx.tx)
    .await?;
    match row {
        Some(row) => rows::key(&row),
        None => Err(StoreError::KeyNotFound(id.to_string())),
    }
}

/// Checks restrictions against the key's client inside an open write: no scope the client
/// lacks, and an external id no other live key of the client has (`except` the key itself).
async fn check_against(
    tx: &mut WriteTx,
    owner: &Client,
    r: &KeyRestrictions,
    except: Option<&KeyId>,
) -> Result<(), StoreError> {
    if let Some(scope) = r.widening(&owner.scopes) {
        return Err(StoreError::ScopeNotGranted(scope.to_string()));
    }
    if let Some(external) = &r.external_id {
        let taken = sqlx::query(
            "SELECT id FROM keys WHERE client_id = $1 AND external_id = $2 \
             AND state <> 'revoked' AND ($3 IS NULL OR id <> $3)",
        )
        .bind(owner.id.as_str())
        .bind(external.as_str())
        .bind(except.map(KeyId::as_str))
        .fetch_optional(&mut *tx.tx)
        .await?;
        if taken.is_some() {
            return Err(StoreError::DuplicateExternalId(external.clone()));
        }
    }
    Ok(())
}

async fn insert(tx: &mut WriteTx, key: &ApiKey) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO keys (",
        key_columns!(),
        ", version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(key.id.as_str())
    .bind(key.client_id.as_str())
    .bind(key.digest.as_bytes().to_vec())
    .bind(key.hint.as_str())
    .bind(key.label.as_str())
    .bind(key.state.as_str())
    .bind(key.expires_at.map(Timestamp::as_millis))
    .bind(key.created_at.as_millis())
    .bind(key.rotated_at.map(Timestamp::as_millis))
    .bind(key.replaced_by.as_ref().map(|k| k.as_str()))
    .bind(key.last_used_at.map(Timestamp::as_millis))
    .bind(rows::restrictions_column(&key.restrictions))
    .bind(key.restrictions.external_id.as_deref())
    .bind(tx.version)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

async fn save(tx: &mut WriteTx, key: &ApiKey) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE keys SET state = $2, expires_at = $3, rotated_at = $4, replaced_by = $5, \
         label = $6, version = $7, restrictions = $8, external_id = $9 WHERE id = $1",
    )
    .bind(key.id.as_str())
    .bind(key.state.as_str())
    .bind(key.expires_at.map(Timestamp::as_millis))
    .bind(key.rotated_at.map(Timestamp::as_millis))
    .bind(key.replaced_by.as_ref().map(|k| k.as_str()))
    .bind(key.label.as_str())
    .bind(tx.version)
    .bind(rows::restrictions_column(&key.restrictions))
    .bind(key.restrictions.external_id.as_deref())
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Creates a key inside an open write.
pub(crate) async fn create_in(
    tx: &mut WriteTx,
    actor: &Actor,
    client: &str,
    new: NewKey,
) -> Result<ApiKey, StoreError> {
    if let Some(at) = new.expires_at.filter(|&at| at <= tx.now) {
        return Err(StoreError::ExpiryInPast(at));
    }
    let owner = clients::find(tx, client)
        .await?
        .ok_or_else(|| StoreError::ClientNotFound(client.to_owned()))?;
    let restrictions = new.restrictions.validate()?;
    check_against(tx, &owner, &restrictions, None).await?;
    let key = ApiKey {
        id: KeyId::generate(),
        client_id: owner.id,
        digest: new.material.digest,
        hint: new.material.hint,
        label: new.label,
        state: KeyState::Active,
        expires_at: new.expires_at,
        created_at: tx.now,
        rotated_at: None,
        replaced_by: None,
        last_used_at: None,
        restrictions,
    };
    insert(tx, &key).await?;
    tx.change("key", key.id.as_str(), "create").await?;
    tx.audit(actor, "key.create", key.id.as_str(), json!(key))
        .await?;
    Ok(key)
}

/// Rotates a key inside an open write.
async fn rotate_in(
    tx: &mut WriteTx,
    actor: &Actor,
    id: &KeyId,
    material: KeyMaterial,
    grace: Option<Duration>,
) -> Result<Rotation, StoreError> {
    let mut old = find(tx, id).await?;
    if old.state == KeyState::Revoked {
        return Err(StoreError::KeyRevoked(old.id));
    }
    if let Some(at) = old.expires_at.filter(|&at| at <= tx.now) {
        return Err(StoreError::KeyExpired(old.id, at));
    }
    let new = ApiKey {
        id: KeyId::generate(),
        client_id: old.client_id.clone(),
        digest: material.digest,
        hint: material.hint,
        label: old.label.clone(),
        state: old.state,
        expires_at: old.expires_at,
        created_at: tx.now,
        rotated_at: None,
        replaced_by: None,
        last_used_at: None,
        // The new key is exactly as narrow as the old (a rotation never widens), and takes
        // its external id: the id names the credential, not one secret of it.
        restrictions: old.restrictions.clone(),
    };
    if old.restrictions.external_id.take().is_some() {
        sqlx::query("UPDATE keys SET external_id = NULL WHERE id = $1")
            .bind(old.id.as_str())
            .execute(&mut *tx.tx)
            .await?;
    }
    insert(tx, &new).await?;
    old.rotated_at = Some(tx.now);
    old.replaced_by = Some(new.id.clone());
    match grace.filter(|g| !g.is_zero()) {
        None => old.state = KeyState::Revoked,
        Some(g) => {
            let end = tx.now.plus(g);
            old.expires_at = Some(old.expires_at.map_or(end, |at| at.min(end)));
        }
    }
    save(tx, &old).await?;
    tx.change("key", new.id.as_str(), "create").await?;
    tx.change("key", old.id.as_str(), "rotate").await?;
    tx.audit(
        actor,
        "key.rotate",
        old.id.as_str(),
        json!({
            "new_key": new.id,
            "new_hint": new.hint,
            "grace_seconds": grace.map(|g| g.as_secs()),
            "old_valid_until": if old.state == KeyState::Revoked { Some(tx.now) } else { old.expires_at },
        }),
    )
    .await?;
    Ok(Rotation { new, old })
}
