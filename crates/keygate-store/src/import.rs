//! Importing keys another system issued (`keygate import`): every line is checked against the
//! store inside one write, and the keys are written in that write, all of them or none.
//!
//! Built for 100,000 keys at a time: digests are looked up and rows inserted in batches of a
//! few hundred, and the audit log gets one entry per import (its counts and feed version; the
//! `changes` rows of that version name every key), not one per key.

use std::collections::{BTreeMap, HashMap};

use keygate_core::import::{ImportKey, ImportProblem};
use keygate_core::{ClientId, KeyDigest, KeyId, Timestamp};
use serde_json::json;
use sqlx::Row;

use crate::{clients, Actor, Store, StoreError, WriteTx};

/// Rows per INSERT: 9 bound values each stays far below every backend's limit on bound values
/// (PostgreSQL 65,535; SQLite 32,766), and past a few hundred a bigger statement saves nothing.
const INSERT_BATCH: usize = 500;
/// Digests per lookup.
const LOOKUP_BATCH: usize = 500;

/// What an import did, or (with problems, or a dry run) would have done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Keys written (or, in a dry run, that would be).
    pub imported: u64,
    /// Lines whose key the store already has for the same client: a re-run changes nothing.
    pub unchanged: u64,
    /// Lines the store refused, in file order. When there is any, nothing was written.
    pub problems: Vec<(u64, ImportProblem)>,
    /// The feed version the keys were written at; `None` when nothing was written.
    pub version: Option<i64>,
}

impl Store {
    /// Imports keys in one transaction: each must belong to an existing client, expire in the
    /// future (if at all), and have a digest no other client's key has. A digest the same client
    /// already has is counted unchanged (never updated), so a file can be imported again.
    /// With any problem, or with `dry_run`, nothing is written.
    ///
    /// `source` (the file's name) is recorded in the one audit entry.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Full`]; refused lines are in the outcome.
    pub async fn import_keys(
        &self,
        actor: &Actor,
        source: &str,
        keys: &[ImportKey],
        dry_run: bool,
    ) -> Result<ImportOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut owners: HashMap<&str, Option<ClientId>> = HashMap::new();
        for k in keys {
            if !owners.contains_key(k.client.as_str()) {
                let found = clients::find(&mut tx, &k.client).await?.map(|c| c.id);
                owners.insert(&k.client, found);
            }
        }
        let stored = stored_owners(&mut tx, keys).await?;
        let mut outcome = ImportOutcome::default();
        let mut seen: HashMap<KeyDigest, (u64, &ClientId)> = HashMap::with_capacity(keys.len());
        let mut new: Vec<(&ImportKey, &ClientId)> = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(Some(owner)) = owners.get(k.client.as_str()) else {
                outcome
                    .problems
                    .push((k.line, ImportProblem::ClientNotFound));
                continue;
            };
            if k.expires_at.is_some_and(|at| at <= tx.now) {
                outcome.problems.push((k.line, ImportProblem::ExpiryInPast));
                continue;
            }
            let digest = k.material.digest;
            if let Some(had) = stored.get(&digest) {
                if had == owner {
                    outcome.unchanged += 1;
                } else {
                    outcome.problems.push((k.line, ImportProblem::OtherClient));
                }
                continue;
            }
            match seen.get(&digest) {
                Some((_, earlier)) if *earlier == owner => outcome.unchanged += 1,
                Some((line, _)) => outcome
                    .problems
                    .push((k.line, ImportProblem::DuplicateOfLine(*line))),
                None => {
                    seen.insert(digest, (k.line, owner));
                    new.push((k, owner));
                }
            }
        }
        outcome.imported = new.len() as u64;
        if dry_run || !outcome.problems.is_empty() || new.is_empty() {
            return Ok(outcome); // Dropping the transaction rolls the version bump back.
        }
        let ids: Vec<KeyId> = new.iter().map(|_| KeyId::generate()).collect();
        for (rows, ids) in new.chunks(INSERT_BATCH).zip(ids.chunks(INSERT_BATCH)) {
            insert_batch(&mut tx, rows, ids).await?;
        }
        for ids in ids.chunks(INSERT_BATCH) {
            changes_batch(&mut tx, ids).await?;
        }
        let mut per_client: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, owner) in &new {
            *per_client.entry(owner.as_str()).or_default() += 1;
        }
        let version = tx.version;
        tx.audit(
            actor,
            "key.import",
            source,
            json!({
                "imported": outcome.imported,
                "unchanged": outcome.unchanged,
                "clients": per_client,
                "version": version,
            }),
        )
        .await?;
        tx.commit().await?;
        outcome.version = Some(version);
        Ok(outcome)
    }
}

/// The client of every stored key whose digest is among `keys`' (revoked keys included: a
/// digest is never stored twice).
async fn stored_owners(
    tx: &mut WriteTx,
    keys: &[ImportKey],
) -> Result<HashMap<KeyDigest, ClientId>, StoreError> {
    let mut found = HashMap::new();
    for batch in keys.chunks(LOOKUP_BATCH) {
        let sql = format!(
            "SELECT digest, client_id FROM keys WHERE digest IN ({})",
            placeholders(batch.len(), 1, 0)
        );
        let mut query = sqlx::query(&sql);
        for k in batch {
            query = query.bind(k.material.digest.as_bytes().to_vec());
        }
        for row in query.fetch_all(&mut *tx.tx).await? {
            let bytes: Vec<u8> = row.try_get("digest")?;
            let digest = KeyDigest::from_slice(&bytes)
                .ok_or_else(|| StoreError::Corrupt("a key digest is not 32 bytes".to_owned()))?;
            let client: String = row.try_get("client_id")?;
            let client = ClientId::parse(&client)
                .map_err(|e| StoreError::Corrupt(format!("a key's client id: {e}")))?;
            found.insert(digest, client);
        }
    }
    Ok(found)
}

async fn insert_batch(
    tx: &mut WriteTx,
    rows: &[(&ImportKey, &ClientId)],
    ids: &[KeyId],
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO keys (id, client_id, digest, hint, label, state, expires_at, created_at, version) VALUES {}",
        tuples(rows.len(), 9)
    );
    let mut query = sqlx::query(&sql);
    for ((k, owner), id) in rows.iter().zip(ids) {
        query = query
            .bind(id.as_str())
            .bind(owner.as_str())
            .bind(k.material.digest.as_bytes().to_vec())
            .bind(k.material.hint.as_str())
            .bind(k.label.as_str())
            .bind("active")
            .bind(k.expires_at.map(Timestamp::as_millis))
            .bind(tx.now.as_millis())
            .bind(tx.version);
    }
    query.execute(&mut *tx.tx).await?;
    Ok(())
}

/// One `changes` row per key, as [`WriteTx::change`] writes for a created key.
async fn changes_batch(tx: &mut WriteTx, ids: &[KeyId]) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO changes (version, entity, entity_id, action, at) VALUES {}",
        tuples(ids.len(), 5)
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query
            .bind(tx.version)
            .bind("key")
            .bind(id.as_str())
            .bind("create")
            .bind(tx.now.as_millis());
    }
    query.execute(&mut *tx.tx).await?;
    Ok(())
}

/// `$first, $first+1, …` for `n` values after `skip` earlier ones.
fn placeholders(n: usize, first: usize, skip: usize) -> String {
    let mut out = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('$');
        out.push_str(&(first + skip + i).to_string());
    }
    out
}

/// `($1, …, $width), ($width+1, …)` for `rows` rows.
fn tuples(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(width, 1, r * width)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(placeholders(3, 1, 0), "$1, $2, $3");
        assert_eq!(tuples(2, 2), "($1, $2), ($3, $4)");
    }
}
