//! Drift: where the broker's users and vhosts under keygate's naming differ from the store, and
//! the repair (`keygate amqp reconcile`).
//!
//! Only names keygate could have made are compared (users under the configured prefix, vhosts
//! carrying keygate's mark). A user under the prefix that keygate did not make (no `keygate`
//! tag) is reported as `unmanaged_user` and never deleted: it may be a tenant made by hand
//! before keygate took over, and deleting it would cut that tenant off.

use std::collections::{BTreeMap, BTreeSet};

use keygate_store::{Actor, FeedState};
use serde::Serialize;
use serde_json::json;

use crate::error::AmqpError;
use crate::feeds::Feeds;
use crate::management::{USER_TAG, VHOST_MARK};
use crate::naming::{is_tenant_user, is_tenant_vhost};

/// One difference between the broker and the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DriftItem {
    /// `missing_user`, `missing_vhost`, `password_changed`, `permissions_wrong`,
    /// `revoked_user_present`, `revoked_vhost_present`, `orphan_user`, `orphan_vhost`,
    /// `unmanaged_user`.
    pub kind: &'static str,
    /// The broker name concerned.
    pub name: String,
    /// The client concerned, when the store knows one.
    pub client: Option<String>,
}

/// What a drift check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Drift {
    pub items: Vec<DriftItem>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// What `reconcile` did.
#[derive(Clone, Debug, Serialize)]
pub struct Reconciled {
    /// The drift found before repairing.
    pub found: Vec<DriftItem>,
    /// Items repaired.
    pub repaired: usize,
    /// Items left alone on purpose (`unmanaged_user`).
    pub left: Vec<DriftItem>,
    /// The drift found after repairing (empty when all is well).
    pub remaining: Vec<DriftItem>,
}

impl Feeds {
    /// Compares the broker with the store.
    ///
    /// # Errors
    /// Broker and store failures.
    pub async fn drift(&self) -> Result<Drift, AmqpError> {
        let m = self.management();
        let feeds = self.store().amqp_feeds().await?;
        let users: BTreeMap<String, _> = m
            .users()
            .await?
            .into_iter()
            .filter(|u| is_tenant_user(self.config(), &u.name))
            .map(|u| (u.name.clone(), u))
            .collect();
        let vhosts: BTreeSet<String> = m
            .vhosts()
            .await?
            .into_iter()
            .filter(|v| {
                v.description.starts_with(VHOST_MARK) && is_tenant_vhost(self.config(), &v.name)
            })
            .map(|v| v.name)
            .collect();
        let mut items = Vec::new();
        let mut known_users = BTreeSet::new();
        let mut known_vhosts = BTreeSet::new();
        let item = |kind, name: &str, client: Option<&str>| DriftItem {
            kind,
            name: name.to_owned(),
            client: client.map(str::to_owned),
        };
        for f in &feeds {
            let (user, vhost, client) = (
                &f.feed.username,
                &f.feed.vhost,
                Some(f.client_name.as_str()),
            );
            known_users.insert(user.clone());
            known_vhosts.insert(vhost.clone());
            match f.feed.state {
                FeedState::Revoked => {
                    if users.contains_key(user) {
                        items.push(item("revoked_user_present", user, client));
                    }
                    if vhosts.contains(vhost) {
                        items.push(item("revoked_vhost_present", vhost, client));
                    }
                }
                FeedState::Active => {
                    match users.get(user) {
                        None => items.push(item("missing_user", user, client)),
                        Some(u) if u.password_hash != f.feed.password_hash => {
                            items.push(item("password_changed", user, client));
                        }
                        Some(_) => {}
                    }
                    if !vhosts.contains(vhost) {
                        items.push(item("missing_vhost", vhost, client));
                        continue;
                    }
                    let granted = m.permissions(vhost, user).await?;
                    let p = &self.config().permissions;
                    let right = match (&granted, f.client_active) {
                        (None, false) => true,
                        (Some(g), true) => {
                            g.configure == p.configure && g.write == p.write && g.read == p.read
                        }
                        _ => false,
                    };
                    if !right && users.contains_key(user) {
                        items.push(item("permissions_wrong", user, client));
                    }
                }
            }
        }
        for (name, u) in &users {
            if !known_users.contains(name) {
                let kind = if u.tags.iter().any(|t| t == USER_TAG) {
                    "orphan_user"
                } else {
                    "unmanaged_user"
                };
                items.push(item(kind, name, None));
            }
        }
        for name in &vhosts {
            if !known_vhosts.contains(name) {
                items.push(item("orphan_vhost", name, None));
            }
        }
        Ok(Drift { items })
    }

    /// Repairs drift (of one client, by name or id, or of all): every stored feed is applied again (users and vhosts restored with the
    /// stored hash, permissions as the client's state says, revoked ones removed), and users
    /// and vhosts keygate made that no feed holds are deleted. Each repair is audited.
    ///
    /// # Errors
    /// Broker and store failures (a retry continues; every step is idempotent).
    pub async fn reconcile(
        &self,
        actor: &Actor,
        only_client: Option<&str>,
    ) -> Result<Reconciled, AmqpError> {
        let only = match only_client {
            Some(c) => Some(self.store().client(c).await?.name),
            None => None,
        };
        let mine = |d: &DriftItem| only.is_none() || d.client == only;
        let mut found = self.drift().await?;
        found.items.retain(|d| mine(d));
        let mut repaired = 0;
        let mut left = Vec::new();
        let feeds = self.store().amqp_feeds().await?;
        for d in &found.items {
            match d.kind {
                "unmanaged_user" => {
                    left.push(d.clone());
                    continue;
                }
                "orphan_user" => self.management().delete_user(&d.name).await?,
                "orphan_vhost" => self.management().delete_vhost(&d.name).await?,
                _ => {
                    let f = feeds
                        .iter()
                        .find(|f| f.feed.username == d.name || f.feed.vhost == d.name);
                    if let Some(f) = f {
                        self.apply(f, d.kind == "password_changed").await?;
                    }
                }
            }
            repaired += 1;
            self.store()
                .audit_amqp(
                    actor,
                    "reconcile",
                    &d.name,
                    json!({ "drift": d.kind, "client": d.client }),
                )
                .await?;
        }
        let remaining = self
            .drift()
            .await?
            .items
            .into_iter()
            .filter(|d| d.kind != "unmanaged_user" && mine(d))
            .collect();
        Ok(Reconciled {
            found: found.items,
            repaired,
            left,
            remaining,
        })
    }
}
