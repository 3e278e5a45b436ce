//! Client (tenant) operations.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use keygate_core::names::{check_client_name, check_plan};
use keygate_core::{Client, ClientId, LimitOverrides, Scope, Slug};
use serde_json::json;

use crate::rows::{self, client_columns, to_json};
use crate::{Actor, Store, StoreError, WriteTx};

/// A client to create.
#[derive(Clone, Debug, Default)]
pub struct NewClient {
    /// The id to give the client (`None`: a fresh one). Self-service names its audit actor
    /// after the client it is creating, so it chooses the id first.
    pub id: Option<ClientId>,
    pub name: String,
    pub plan: String,
    pub scopes: Vec<Scope>,
    pub sports: Vec<Slug>,
    pub bookmakers: Vec<Slug>,
    pub limits: LimitOverrides,
    /// Name or id of the parent account; a child cannot itself have children.
    pub parent: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A change to one per-contract limit: `None` leaves it, `Some(None)` returns to the plan's
/// value, `Some(Some(n))` sets it.
pub type LimitChange = Option<Option<NonZeroU64>>;

/// Changes to the per-contract limit overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitPatch {
    pub rps: LimitChange,
    pub per_minute: LimitChange,
    pub per_hour: LimitChange,
    pub per_day: LimitChange,
    pub per_month: LimitChange,
    pub ws_connections: LimitChange,
}

impl LimitPatch {
    fn apply(&self, limits: &mut LimitOverrides) {
        let pairs = [
            (&self.rps, &mut limits.rps),
            (&self.per_minute, &mut limits.per_minute),
            (&self.per_hour, &mut limits.per_hour),
            (&self.per_day, &mut limits.per_day),
            (&self.per_month, &mut limits.per_month),
            (&self.ws_connections, &mut limits.ws_connections),
        ];
        for (change, slot) in pairs {
            if let Some(value) = change {
                *slot = *value;
            }
        }
    }
}

/// Changes to a client; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ClientUpdate {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub scopes: Option<Vec<Scope>>,
    pub sports: Option<Vec<Slug>>,
    pub bookmakers: Option<Vec<Slug>>,
    pub limits: LimitPatch,
    /// Metadata fields to set (`Some`) or remove (`None`); others stay.
    pub metadata: BTreeMap<String, Option<String>>,
}

/// Which clients to list, ordered by name, one page at a time.
#[derive(Clone, Debug)]
pub struct ClientFilter {
    pub plan: Option<String>,
    pub active: Option<bool>,
    /// Only names after this one (the cursor of the previous page).
    pub after: Option<String>,
    pub limit: u32,
}

impl Default for ClientFilter {
    fn default() -> Self {
        ClientFilter {
            plan: None,
            active: None,
            after: None,
            limit: 1000,
        }
    }
}

fn sorted_dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

impl Store {
    /// Creates a client.
    ///
    /// # Errors
    /// [`StoreError::DuplicateClient`], [`StoreError::Invalid`] for a bad name or plan.
    pub async fn create_client(&self, actor: &Actor, new: NewClient) -> Result<Client, StoreError> {
        let mut tx = self.begin_write().await?;
        let client = create_in(&mut tx, actor, new).await?;
        tx.commit().await?;
        Ok(client)
    }

    /// Creates a client and its first key in one transaction (self-service registration: there
    /// is never an account without its key, nor a key shown for an account that failed).
    ///
    /// # Errors
    /// As [`Store::create_client`] and [`Store::create_key`].
    pub async fn create_client_with_key(
        &self,
        actor: &Actor,
        new: NewClient,
        key: crate::NewKey,
    ) -> Result<(Client, keygate_core::ApiKey), StoreError> {
        keygate_core::names::check_label(&key.label)?;
        let mut tx = self.begin_write().await?;
        let client = create_in(&mut tx, actor, new).await?;
        let key = crate::keys::create_in(&mut tx, actor, client.id.as_str(), key).await?;
        tx.commit().await?;
        Ok((client, key))
    }

    /// Finds a client by name or id.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`].
    pub async fn client(&self, name_or_id: &str) -> Result<Client, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            client_columns!(),
            " FROM clients WHERE (id = $1 OR name = $1) AND deleted_at IS NULL"
        ))
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => rows::client(&row),
            None => Err(StoreError::ClientNotFound(name_or_id.to_owned())),
        }
    }

    /// Lists clients ordered by name.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn list_clients(&self, filter: &ClientFilter) -> Result<Vec<Client>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            client_columns!(),
            " FROM clients WHERE deleted_at IS NULL AND ($1 IS NULL OR plan = $1)",
            " AND ($2 IS NULL OR active = $2)",
            " AND ($3 IS NULL OR name > $3) ORDER BY name LIMIT $4"
        ))
        .bind(filter.plan.as_deref())
        .bind(filter.active.map(i64::from))
        .bind(filter.after.as_deref())
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::client).collect()
    }

    /// Changes a client's settings.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`], [`StoreError::DuplicateClient`] on a rename to a taken
    /// name, [`StoreError::Invalid`].
    pub async fn update_client(
        &self,
        actor: &Actor,
        name_or_id: &str,
        update: ClientUpdate,
    ) -> Result<Client, StoreError> {
        if let Some(name) = &update.name {
            check_client_name(name)?;
        }
        if let Some(plan) = &update.plan {
            check_plan(plan)?;
        }
        let mut tx = self.begin_write().await?;
        let mut client = find(&mut tx, name_or_id)
            .await?
            .ok_or_else(|| StoreError::ClientNotFound(name_or_id.to_owned()))?;
        if let Some(name) = update.name.clone() {
            if name != client.name && find(&mut tx, &name).await?.is_some() {
                return Err(StoreError::DuplicateClient(name));
            }
            client.name = name;
        }
        if let Some(plan) = update.plan.clone() {
            client.plan = plan;
        }
        if let Some(scopes) = update.scopes.clone() {
            client.scopes = sorted_dedup(scopes);
        }
        if let Some(sports) = update.sports.clone() {
            client.sports = sorted_dedup(sports);
        }
        if let Some(bookmakers) = update.bookmakers.clone() {
            client.bookmakers = sorted_dedup(bookmakers);
        }
        update.limits.apply(&mut client.limits);
        for (field, value) in &update.metadata {
            match value {
                Some(v) => client.metadata.insert(field.clone(), v.clone()),
                None => client.metadata.remove(field),
            };
        }
        client.updated_at = tx.now;
        save(&mut tx, &client).await?;
        tx.change("client", client.id.as_str(), "update").await?;
        tx.audit(actor, "client.update", client.id.as_str(), json!(client))
            .await?;
        tx.commit().await?;
        Ok(client)
    }

    /// Enables or disables a client; a disabled client's keys all fail authentication.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`].
    pub async fn set_client_active(
        &self,
        actor: &Actor,
        name_or_id: &str,
        active: bool,
    ) -> Result<Client, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut client = find(&mut tx, name_or_id)
            .await?
            .ok_or_else(|| StoreError::ClientNotFound(name_or_id.to_owned()))?;
        if client.active == active {
            return Ok(client); // dropping the transaction rolls back the version bump
        }
        client.active = active;
        client.updated_at = tx.now;
        save(&mut tx, &client).await?;
        let action = if active { "enable" } else { "disable" };
        tx.change("client", client.id.as_str(), action).await?;
        tx.audit(
            actor,
            &format!("client.{action}"),
            client.id.as_str(),
            json!({ "name": client.name }),
        )
        .await?;
        tx.commit().await?;
        Ok(client)
    }
}

/// What deleting a client ended.
#[derive(Clone, Debug)]
pub struct DeletedClient {
    /// The client as it was, now inactive.
    pub client: Client,
    /// Keys revoked by the deletion (those not revoked before).
    pub keys_revoked: u64,
    /// Portal users removed, with their sign-in links and sessions.
    pub portal_users: u64,
    /// The messaging feed marked revoked, when the client had an active one: the caller removes
    /// it from the broker (the acting node's enforcer does too, from the change feed).
    pub feed: Option<crate::AmqpFeed>,
}

impl Store {
    /// Deletes a client in one transaction: every key revoked, the client inactive and hidden
    /// from every lookup and listing, its portal users, links and sessions removed, its feed
    /// marked revoked. The row itself stays, so the audit history keeps naming it and the name
    /// stays taken (a new client can never inherit a deleted one's history or customers).
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`] (also for a client deleted before);
    /// [`StoreError::Conflict`] while the client has child accounts.
    pub async fn delete_client(
        &self,
        actor: &Actor,
        name_or_id: &str,
    ) -> Result<DeletedClient, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut client = find(&mut tx, name_or_id)
            .await?
            .ok_or_else(|| StoreError::ClientNotFound(name_or_id.to_owned()))?;
        let id = client.id.as_str().to_owned();
        let (children,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM clients WHERE parent_id = $1 AND deleted_at IS NULL",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx.tx)
        .await?;
        if children > 0 {
            return Err(StoreError::Conflict(format!(
                "client `{}` has {children} child account(s); delete them first",
                client.name
            )));
        }
        client.active = false;
        client.updated_at = tx.now;
        save(&mut tx, &client).await?;
        sqlx::query("UPDATE clients SET deleted_at = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(tx.now.as_millis())
            .execute(&mut *tx.tx)
            .await?;
        let keys_revoked = sqlx::query(
            "UPDATE keys SET state = 'revoked', version = $2 WHERE client_id = $1 AND state <> 'revoked'",
        )
        .bind(id.as_str())
        .bind(tx.version)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        let users = "SELECT id FROM portal_users WHERE client_id = $1";
        for table in ["portal_sessions", "portal_links"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id IN ({users})"))
                .bind(id.as_str())
                .execute(&mut *tx.tx)
                .await?;
        }
        let portal_users = sqlx::query("DELETE FROM portal_users WHERE client_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        let feed = crate::amqp::revoke_in(&mut tx, &id).await?;
        tx.change("client", &id, "delete").await?;
        tx.audit(
            actor,
            "client.delete",
            &id,
            json!({
                "name": client.name,
                "keys_revoked": keys_revoked,
                "portal_users": portal_users,
                "feed_revoked": feed.as_ref().map(|f| f.username.as_str()),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(DeletedClient {
            client,
            keys_revoked,
            portal_users,
            feed,
        })
    }
}

/// Creates a client inside an open write.
async fn create_in(tx: &mut WriteTx, actor: &Actor, new: NewClient) -> Result<Client, StoreError> {
    check_client_name(&new.name)?;
    check_plan(&new.plan)?;
    if find(tx, &new.name).await?.is_some() {
        return Err(StoreError::DuplicateClient(new.name));
    }
    let parent = match &new.parent {
        None => None,
        Some(p) => {
            let parent = find(tx, p)
                .await?
                .ok_or_else(|| StoreError::InvalidParent(format!("no client `{p}`")))?;
            if parent.parent.is_some() {
                return Err(StoreError::InvalidParent(format!(
                    "`{}` is itself a child account",
                    parent.name
                )));
            }
            Some(parent.id)
        }
    };
    let client = Client {
        id: new.id.unwrap_or_else(ClientId::generate),
        name: new.name,
        plan: new.plan,
        scopes: sorted_dedup(new.scopes),
        sports: sorted_dedup(new.sports),
        bookmakers: sorted_dedup(new.bookmakers),
        limits: new.limits,
        active: true,
        created_at: tx.now,
        updated_at: tx.now,
        parent,
        metadata: new.metadata,
    };
    sqlx::query(concat!(
        "INSERT INTO clients (",
        client_columns!(),
        ", version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(client.id.as_str())
    .bind(client.name.as_str())
    .bind(client.plan.as_str())
    .bind(to_json(&client.scopes))
    .bind(to_json(&client.sports))
    .bind(to_json(&client.bookmakers))
    .bind(to_json(&client.limits))
    .bind(1_i64)
    .bind(client.created_at.as_millis())
    .bind(client.updated_at.as_millis())
    .bind(client.parent.as_ref().map(ClientId::as_str))
    .bind(to_json(&client.metadata))
    .bind(tx.version)
    .execute(&mut *tx.tx)
    .await
    .map_err(|e| duplicate_name(e, &client.name))?;
    tx.change("client", client.id.as_str(), "create").await?;
    tx.audit(actor, "client.create", client.id.as_str(), json!(client))
        .await?;
    Ok(client)
}

/// Reads a client inside a write transaction.
pub(crate) async fn find(tx: &mut WriteTx, name_or_id: &str) -> Result<Option<Client>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        client_columns!(),
        " FROM clients WHERE (id = $1 OR name = $1) AND deleted_at IS NULL"
    ))
    .bind(name_or_id)
    .fetch_optional(&mut *tx.tx)
    .await?;
    row.as_ref().map(rows::client).transpose()
}

/// A unique-name violation (a concurrent writer took the name) is a duplicate client.
fn duplicate_name(e: sqlx::Error, name: &str) -> StoreError {
    match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::DuplicateClient(name.to_owned()),
        other => other,
    }
}

async fn save(tx: &mut WriteTx, client: &Client) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE clients SET name = $2, plan = $3, scopes = $4, sports = $5, bookmakers = $6, \
         limits = $7, active = $8, updated_at = $9, version = $10, metadata = $11 WHERE id = $1",
    )
    .bind(client.id.as_str())
    .bind(client.name.as_str())
    .bind(client.plan.as_str())
    .bind(to_json(&client.scopes))
    .bind(to_json(&client.sports))
    .bind(to_json(&client.bookmakers))
    .bind(to_json(&client.limits))
    .bind(i64::from(client.active))
    .bind(client.updated_at.as_millis())
    .bind(tx.version)
    .bind(to_json(&client.metadata))
    .execute(&mut *tx.tx)
    .await
    .map_err(|e| duplicate_name(e, &client.name))?;
    Ok(())
}
