//! Where CLI commands take effect: a local store (`--db`), or a remote node's admin API
//! (`--admin-url` with `KEYGATE_ADMIN_TOKEN`). Both answer with the same model types, so every
//! command prints the same output either way.

mod remote;

use std::time::Duration;

use anyhow::bail;
use keygate_core::suspension::Suspension;
use keygate_core::Clock as _;
use keygate_core::{
    ApiKey, Client, Issuer, KeyId, KeyRestrictions, KeyState, RestrictionsChange, SystemClock,
    Timestamp,
};
use keygate_store::{
    Actor, AuditEntry, AuditFilter, ClientFilter, ClientUpdate, Delivery, DeliveryFilter,
    Emergency, IssuedKey, KeyFilter, NewClient, NewKey, NewSuspension, Store,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use remote::{Remote, RemoteError};

/// An issued key as printed: the plaintext is here and nowhere else. Field for field the
/// store's [`IssuedKey`] document, owned so a remote answer can be read into it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Issued {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) hint: String,
    pub(crate) client: String,
    pub(crate) client_id: String,
    pub(crate) label: String,
    pub(crate) state: KeyState,
    pub(crate) expires_at: Option<Timestamp>,
    pub(crate) created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replaces: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) old_key_valid_until: Option<Timestamp>,
    #[serde(flatten)]
    pub(crate) restrictions: KeyRestrictions,
}

impl Issued {
    fn from_doc(doc: &IssuedKey<'_>) -> anyhow::Result<Issued> {
        Ok(serde_json::from_value(serde_json::to_value(doc)?)?)
    }
}

/// The target of the CLI's commands.
pub(crate) enum Backend {
    Local(Store),
    Remote(Remote),
}

impl Backend {
    /// The local store, for commands the admin API does not offer.
    ///
    /// # Errors
    /// When the CLI talks to a remote node.
    pub(crate) fn local(&self, command: &str) -> anyhow::Result<&Store> {
        match self {
            Backend::Local(store) => Ok(store),
            Backend::Remote(_) => bail!(
                "`keygate {command}` works on a database (--db or KEYGATE_DB), not through the admin API (--admin-url)"
            ),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        match self {
            Backend::Local(store) => store.now(),
            Backend::Remote(_) => SystemClock.now(),
        }
    }

    pub(crate) async fn close(&self) {
        if let Backend::Local(store) = self {
            store.close().await;
        }
    }

    pub(crate) async fn create_client(
        &self,
        actor: &Actor,
        new: NewClient,
    ) -> anyhow::Result<Client> {
        match self {
            Backend::Local(s) => Ok(s.create_client(actor, new).await?),
            Backend::Remote(r) => r.create_client(&new).await,
        }
    }

    pub(crate) async fn list_clients(&self, filter: &ClientFilter) -> anyhow::Result<Vec<Client>> {
        match self {
            Backend::Local(s) => Ok(s.list_clients(filter).await?),
            Backend::Remote(r) => r.list_clients(filter).await,
        }
    }

    pub(crate) async fn client(&self, name: &str) -> anyhow::Result<Client> {
        match self {
            Backend::Local(s) => Ok(s.client(name).await?),
            Backend::Remote(r) => r.client(name).await,
        }
    }

    pub(crate) async fn update_client(
        &self,
        actor: &Actor,
        name: &str,
        update: ClientUpdate,
    ) -> anyhow::Result<Client> {
        match self {
            Backend::Local(s) => Ok(s.update_client(actor, name, update).await?),
            Backend::Remote(r) => r.update_client(name, &update).await,
        }
    }

    pub(crate) async fn set_client_active(
        &self,
        actor: &Actor,
        name: &str,
        active: bool,
    ) -> anyhow::Result<Client> {
        match self {
            Backend::Local(s) => Ok(s.set_client_active(actor, name, active).await?),
            Backend::Remote(r) => r.set_client_active(name, active).await,
        }
    }

    /// Issues a key: locally with the configured key format, remotely with the node's.
    pub(crate) async fn create_key(
        &self,
        actor: &Actor,
        issuer: &Issuer,
        client: &str,
        label: String,
        expires_at: Option<Timestamp>,
        restrictions: KeyRestrictions,
    ) -> anyhow::Result<Issued> {
        match self {
            Backend::Local(s) => {
                let (secret, material) = issuer.issue();
                let new = NewKey {
                    material,
                    label,
                    expires_at,
                    restrictions,
                };
                let key = s.create_key(actor, client, new).await?;
                let owner = s.client(key.client_id.as_str()).await?;
                Issued::from_doc(&IssuedKey::created(&key, &secret, &owner.name))
            }
            Backend::Remote(r) => {
                r.create_key(client, &label, expires_at, &restrictions)
                    .await
            }
        }
    }

    pub(crate) async fn rotate_key(
        &self,
        actor: &Actor,
        issuer: &Issuer,
        id: &KeyId,
        grace: Option<Duration>,
    ) -> anyhow::Result<Issued> {
        match self {
            Backend::Local(s) => {
                let (secret, material) = issuer.issue();
                let rotation = s.rotate_key(actor, id, material, grace).await?;
                let owner = s.client(rotation.new.client_id.as_str()).await?;
                Issued::from_doc(&IssuedKey::rotated(&rotation, &secret, &owner.name))
            }
            Backend::Remote(r) => r.rotate_key(id, grace).await,
        }
    }

    pub(crate) async fn list_keys(&self, filter: &KeyFilter) -> anyhow::Result<Vec<ApiKey>> {
        match self {
            Backend::Local(s) => Ok(s.list_keys(filter).await?),
            Backend::Remote(r) => r.list_keys(filter).await,
        }
    }

    pub(crate) async fn key(&self, id: &KeyId) -> anyhow::Result<ApiKey> {
        match self {
            Backend::Local(s) => Ok(s.key(id).await?),
            Backend::Remote(r) => r.key(id).await,
        }
    }

    pub(crate) async fn set_key_state(
        &self,
        actor: &Actor,
        id: &KeyId,
        state: KeyState,
    ) -> anyhow::Result<ApiKey> {
        match self {
            Backend::Local(s) => Ok(s.set_key_state(actor, id, state).await?),
            Backend::Remote(r) => r.set_key_state(id, state).await,
        }
    }

    pub(crate) async fn set_key_restrictions(
        &self,
        actor: &Actor,
        id: &KeyId,
        change: &RestrictionsChange,
    ) -> anyhow::Result<ApiKey> {
        match self {
            Backend::Local(s) => Ok(s.set_key_restrictions(actor, id, change).await?),
            Backend::Remote(r) => r.set_key_restrictions(id, change).await,
        }
    }

    pub(crate) async fn set_key_expiry(
        &self,
        actor: &Actor,
        id: &KeyId,
        at: Option<Timestamp>,
    ) -> anyhow::Result<ApiKey> {
        match self {
            Backend::Local(s) => Ok(s.set_key_expiry(actor, id, at).await?),
            Backend::Remote(r) => r.set_key_expiry(id, at).await,
        }
    }

    pub(crate) async fn suspected_keys(
        &self,
        since: Option<Timestamp>,
    ) -> anyhow::Result<Vec<keygate_store::SharingSuspicion>> {
        match self {
            Backend::Local(s) => Ok(s.suspected_keys(since).await?),
            Backend::Remote(r) => r.suspected_keys(since).await,
        }
    }

    pub(crate) async fn audit(&self, filter: &AuditFilter) -> anyhow::Result<Vec<AuditEntry>> {
        match self {
            Backend::Local(s) => Ok(s.audit(filter).await?),
            Backend::Remote(r) => r.audit(filter).await,
        }
    }

    pub(crate) async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> anyhow::Result<Vec<Delivery>> {
        match self {
            Backend::Local(s) => Ok(s.deliveries(filter).await?),
            Backend::Remote(r) => r.deliveries(filter).await,
        }
    }

    /// A delivery and the event body it sends.
    pub(crate) async fn delivery(&self, id: i64) -> anyhow::Result<(Delivery, Value)> {
        match self {
            Backend::Local(s) => {
                let delivery = s.delivery(id).await?;
                let body = s.delivery_body(id).await?;
                Ok((delivery, serde_json::from_str(&body)?))
            }
            Backend::Remote(r) => r.delivery(id).await,
        }
    }

    pub(crate) async fn replay_delivery(&self, actor: &Actor, id: i64) -> anyhow::Result<Delivery> {
        match self {
            Backend::Local(s) => Ok(s.replay_delivery(actor, id).await?),
            Backend::Remote(r) => r.replay_delivery(id).await,
        }
    }

    pub(crate) async fn emergency(&self) -> anyhow::Result<Emergency> {
        match self {
            Backend::Local(s) => Ok(s.emergency().await?),
            Backend::Remote(r) => r.emergency().await,
        }
    }

    pub(crate) async fn set_emergency(
        &self,
        actor: &Actor,
        on: bool,
        message: Option<&str>,
    ) -> anyhow::Result<Emergency> {
        match self {
            Backend::Local(s) => Ok(s.set_emergency(actor, on, message).await?),
            Backend::Remote(r) => r.set_emergency(on, message).await,
        }
    }

    pub(crate) async fn suspend(
        &self,
        actor: &Actor,
        new: NewSuspension,
    ) -> anyhow::Result<Suspension> {
        match self {
            Backend::Local(s) => Ok(s.create_suspension(actor, new).await?),
            Backend::Remote(r) => r.suspend(&new).await,
        }
    }

    pub(crate) async fn resume(&self, actor: &Actor, id: &str) -> anyhow::Result<Suspension> {
        match self {
            Backend::Local(s) => Ok(s.lift_suspension(actor, id).await?),
            Backend::Remote(r) => r.resume(id).await,
        }
    }

    pub(crate) async fn suspensions(&self, all: bool) -> anyhow::Result<Vec<Suspension>> {
        match self {
            Backend::Local(s) => Ok(s.suspensions(all).await?),
            Backend::Remote(r) => r.suspensions(all).await,
        }
    }

    /// A client's usage report over `from..=to` (`YYYY-MM-DD`, UTC).
    pub(crate) async fn usage(&self, client: &str, from: &str, to: &str) -> anyhow::Result<Value> {
        match self {
            Backend::Local(s) => {
                let owner = s.client(client).await?;
                let rows = s.usage(&owner.id, from, to).await?;
                let ws = s.usage_ws(&owner.id, from, to).await?;
                Ok(keygate_server::usage::report(&owner, from, to, &rows, &ws))
            }
            Backend::Remote(r) => r.usage(client, from, to).await,
        }
    }

    /// Request counts for `raw` (`GET /v1/analytics`'s filters), as that endpoint's JSON.
    pub(crate) async fn analytics(
        &self,
        raw: &keygate_server::analytics::RawFilters,
    ) -> anyhow::Result<Value> {
        use keygate_server::analytics;
        match self {
            Backend::Local(s) => {
                let mut parsed = analytics::parse(raw, s.now())?;
                if let Some(c) = &parsed.client {
                    parsed.query.client = Some(s.client(c).await?.id.as_str().to_owned());
                }
                let rows = s.analytics(&parsed.query).await?;
                let next = parsed.paging.next(rows.more);
                Ok(analytics::to_json(&parsed.query, &rows, next))
            }
            Backend::Remote(r) => r.analytics(raw).await,
        }
    }
}

impl Backend {
    /// A quota top-up (`add`) or reset of `client`'s current window(s), if asked, then its
    /// quota report: the node's (with use) remotely, the store's and `config`'s locally.
    pub(crate) async fn quota(
        &self,
        actor: &Actor,
        config: &keygate_server::Config,
        client: &str,
        add: Option<u64>,
        reset: bool,
        window: Option<keygate_core::limit::Window>,
    ) -> anyhow::Result<Value> {
        use keygate_core::limit::Window;
        match self {
            Backend::Local(s) => {
                if let Some(n) = add {
                    s.quota_topup(actor, client, window.unwrap_or(Window::Day), n)
                        .await?;
                } else if reset {
                    let windows = window.map_or(Window::ALL.to_vec(), |w| vec![w]);
                    s.quota_reset(actor, client, &windows).await?;
                }
                let owner = s.client(client).await?;
                let (_, adjustments) = s.quota_adjustments(client).await?;
                Ok(keygate_server::admin::quotas::offline_report(
                    config,
                    &owner,
                    &adjustments,
                    s.now(),
                ))
            }
            Backend::Remote(r) => r.quota(client, add, reset, window).await,
        }
    }

    /// The plans: this CLI's configuration locally, the node's remotely.
    pub(crate) async fn plans(
        &self,
        config: &keygate_server::Config,
    ) -> anyhow::Result<Vec<Value>> {
        match self {
            Backend::Local(_) => Ok(config
                .plans
                .iter()
                .map(|(name, plan)| plan.to_json(name))
                .collect()),
            Backend::Remote(r) => r.plans().await,
        }
    }
}
