//! Feed operations: provision, rotate, revoke, show, and bringing the broker in line with a
//! stored feed (the change feed's enforcement and `reconcile` both use [`Feeds::apply`]).
//!
//! Order of work: the broker first, the store last. A broker failure leaves the store as it was
//! and undoes what this call made on the broker, so nothing is half-made; a store failure after
//! the broker changed undoes the broker change (a rotation puts the old hash back). Every broker
//! call is idempotent, so a retry after anything finishes the job.

use keygate_core::Timestamp;
use keygate_store::{
    Actor, AmqpFeed, FeedOfClient, FeedState, IdempotencyClaim, Once, SealedAnswer, Store,
};
use serde::Serialize;
use serde_json::json;

use crate::config::AmqpConfig;
use crate::error::AmqpError;
use crate::management::{Management, USER_TAG, VHOST_MARK};
use crate::naming::{derive_slug, Names};
use crate::password;

/// A feed credential as issued: the only place its password ever appears, inside `url`.
#[derive(Clone, Serialize)]
pub struct Issued {
    /// `amqp://<user>:<password>@<public address>/<vhost>`, shown once.
    pub url: String,
    pub client: String,
    pub client_id: String,
    pub slug: String,
    pub vhost: String,
    pub user: String,
    pub address: String,
    pub state: FeedState,
    pub created_at: Timestamp,
    pub rotated_at: Option<Timestamp>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("client", &self.client)
            .field("vhost", &self.vhost)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A provision or rotate made safe to retry: the request's idempotency record and how the
/// caller seals an answer (the only form in which the password is kept, for the retry).
#[derive(Clone, Copy)]
pub struct Retry<'a> {
    pub claim: &'a IdempotencyClaim,
    pub seal: &'a (dyn Fn(&Issued) -> SealedAnswer + Send + Sync),
}

impl std::fmt::Debug for Retry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Retry")
    }
}

/// A feed credential as shown (never the password).
#[derive(Clone, Debug, Serialize)]
pub struct FeedView {
    pub client: String,
    pub client_id: String,
    pub client_active: bool,
    pub slug: String,
    pub vhost: String,
    pub user: String,
    pub address: String,
    /// The URL without its password: what the tenant's client connects to.
    pub url_hint: String,
    pub state: FeedState,
    pub created_at: Timestamp,
    pub rotated_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// Feed operations against one store and one broker.
#[derive(Clone, Debug)]
pub struct Feeds {
    store: Store,
    management: Management,
    config: AmqpConfig,
}

impl Feeds {
    /// # Errors
    /// [`AmqpError::BrokerUnreachable`] when the HTTP client cannot be built.
    pub fn new(store: Store, config: AmqpConfig) -> Result<Feeds, AmqpError> {
        Ok(Feeds {
            management: Management::new(&config)?,
            store,
            config,
        })
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    pub fn management(&self) -> &Management {
        &self.management
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn url(&self, feed: &AmqpFeed, password: &str) -> String {
        format!(
            "amqp://{}:{password}@{}/{}",
            feed.username, self.config.public_address, feed.vhost
        )
    }

    fn view(&self, f: &FeedOfClient) -> FeedView {
        FeedView {
            client: f.client_name.clone(),
            client_id: f.feed.client_id.clone(),
            client_active: f.client_active,
            slug: f.feed.slug.clone(),
            vhost: f.feed.vhost.clone(),
            user: f.feed.username.clone(),
            address: self.config.public_address.clone(),
            url_hint: self.url(&f.feed, "…"),
            state: f.feed.state,
            created_at: f.feed.created_at,
            rotated_at: f.feed.rotated_at,
            revoked_at: f.feed.revoked_at,
        }
    }

    fn issued(&self, client: &str, feed: &AmqpFeed, password: &str) -> Issued {
        Issued {
            url: self.url(feed, password),
            client: client.to_owned(),
            client_id: feed.client_id.clone(),
            slug: feed.slug.clone(),
            vhost: feed.vhost.clone(),
            user: feed.username.clone(),
            address: self.config.public_address.clone(),
            state: feed.state,
            created_at: feed.created_at,
            rotated_at: feed.rotated_at,
        }
    }

    /// Makes a client's vhost and user, grants the configured permissions and limits, and
    /// returns the URL with the password, once. A client whose feed was revoked gets its old
    /// slug again unless `slug` names another.
    ///
    /// # Errors
    /// [`AmqpError::AlreadyProvisioned`], [`AmqpError::SlugTaken`],
    /// [`AmqpError::NameTakenOnBroker`], [`AmqpError::ClientInactive`], slug errors, broker
    /// and store failures (after which nothing is left half-made).
    pub async fn provision(
        &self,
        actor: &Actor,
        client: &str,
        slug: Option<&str>,
    ) -> Result<Issued, AmqpError> {
        done(self.provision_once(actor, client, slug, None).await?)
    }

    /// [`Feeds::provision`] under `retry`: a retried request gets the first answer back
    /// (sealed; the caller opens it) before anything is checked or made.
    ///
    /// # Errors
    /// As [`Feeds::provision`].
    pub async fn provision_once(
        &self,
        actor: &Actor,
        client: &str,
        slug: Option<&str>,
        retry: Option<Retry<'_>>,
    ) -> Result<Once<Issued>, AmqpError> {
        if let Some(replay) = self.replay(retry).await? {
            return Ok(Once::Replayed(replay));
        }
        let client = self.store.client(client).await?;
        if !client.active {
            return Err(AmqpError::ClientInactive(client.name));
        }
        let id = client.id.as_str().to_owned();
        let previous = self.store.amqp_feed(&id).await?;
        if let Some(p) = &previous {
            if p.feed.state == FeedState::Active {
                return Err(AmqpError::AlreadyProvisioned(client.name));
            }
        }
        let slug = match (slug, &previous) {
            (Some(s), _) => s.to_owned(),
            (None, Some(p)) => p.feed.slug.clone(),
            (None, None) => derive_slug(&client.name)?,
        };
        let names = Names::new(&self.config, &slug)?;
        if let Some(holder) = self
            .store
            .amqp_feed_by_name(&names.slug, &names.vhost, &names.user)
            .await?
        {
            if holder.feed.client_id != id {
                return Err(AmqpError::SlugTaken {
                    slug: names.slug,
                    holder: holder.client_name,
                });
            }
        }
        // Names on the broker that keygate did not make for this client are never taken over.
        let vhost_before = self.management.vhost(&names.vhost).await?;
        if let Some(v) = &vhost_before {
            if v.description != format!("{VHOST_MARK}{id}") {
                return Err(AmqpError::NameTakenOnBroker {
                    what: "vhost",
                    name: names.vhost,
                });
            }
        }
        let user_before = self.management.user(&names.user).await?;
        if let Some(u) = &user_before {
            if !u.tags.iter().any(|t| t == USER_TAG) {
                return Err(AmqpError::NameTakenOnBroker {
                    what: "user",
                    name: names.user,
                });
            }
        }
        let password = password::generate();
        let now = self.store.now();
        let feed = AmqpFeed {
            client_id: id.clone(),
            slug: names.slug.clone(),
            vhost: names.vhost.clone(),
            username: names.user.clone(),
            password_hash: password::rabbit_hash(&password),
            state: FeedState::Active,
            created_at: now,
            rotated_at: None,
            revoked_at: None,
        };
        let undo = |feed: AmqpFeed| async move {
            // Only what this call made goes; a leftover of an earlier try stays to be finished.
            if user_before.is_none() {
                let _ = self.management.delete_user(&feed.username).await;
            }
            if vhost_before.is_none() {
                let _ = self.management.delete_vhost(&feed.vhost).await;
            }
        };
        if let Err(e) = self.grant(&feed).await {
            undo(feed).await;
            return Err(e);
        }
        let detail = json!({ "client": client.name, "slug": feed.slug, "vhost": feed.vhost, "user": feed.username });
        let issued = self.issued(&client.name, &feed, &password);
        match self
            .write(actor, &feed, "provision", detail, retry, &issued)
            .await
        {
            Ok(Some(replay)) => return Ok(Once::Replayed(replay)),
            Ok(None) => {}
            Err(e) => {
                undo(feed).await;
                return Err(e);
            }
        }
        tracing::info!(client = %client.name, vhost = %feed.vhost, user = %feed.username, "Messaging feed provisioned.");
        Ok(Once::Done(issued))
    }

    /// An earlier answer under `retry`'s claim, if any.
    async fn replay(
        &self,
        retry: Option<Retry<'_>>,
    ) -> Result<Option<keygate_store::Replay>, AmqpError> {
        match retry {
            Some(r) => Ok(self.store.idempotency_replay(r.claim).await?),
            None => Ok(None),
        }
    }

    /// Stores the feed (and, under `retry`, the sealed answer). When a concurrent retry under
    /// the same claim stored first, its answer is returned and the broker is put back to what
    /// the store holds (this call's password never reaches anyone).
    async fn write(
        &self,
        actor: &Actor,
        feed: &AmqpFeed,
        action: &str,
        detail: serde_json::Value,
        retry: Option<Retry<'_>>,
        issued: &Issued,
    ) -> Result<Option<keygate_store::Replay>, AmqpError> {
        let sealed = retry.map(|r| (r.claim, (r.seal)(issued)));
        let once = sealed.as_ref().map(|(claim, answer)| (*claim, answer));
        match self
            .store
            .put_amqp_feed_once(actor, feed, action, detail, once)
            .await?
        {
            Once::Done(()) => Ok(None),
            Once::Replayed(replay) => {
                if let Some(stored) = self.store.amqp_feed(&feed.client_id).await? {
                    self.apply(&stored, false).await?;
                }
                Ok(Some(replay))
            }
        }
    }

    /// The vhost, the user with the feed's hash, its permissions and the vhost's limits.
    async fn grant(&self, feed: &AmqpFeed) -> Result<(), AmqpError> {
        let m = &self.management;
        m.put_vhost(&feed.vhost, &feed.client_id).await?;
        m.put_user(&feed.username, &feed.password_hash).await?;
        m.put_permissions(&feed.vhost, &feed.username, &self.config.permissions)
            .await?;
        m.set_vhost_limit(&feed.vhost, "max-connections", self.config.max_connections)
            .await?;
        m.set_vhost_limit(&feed.vhost, "max-queues", self.config.max_queues)
            .await?;
        Ok(())
    }

    async fn active_feed(&self, client: &str) -> Result<(String, FeedOfClient), AmqpError> {
        let c = self.store.client(client).await?;
        match self.store.amqp_feed(c.id.as_str()).await? {
            Some(f) if f.feed.state == FeedState::Active => Ok((c.name, f)),
            _ => Err(AmqpError::NotProvisioned(c.name)),
        }
    }

    /// Issues a new password, closes the connections opened with the old one, and returns the
    /// new URL once. The old password fails from the moment this returns.
    ///
    /// # Errors
    /// [`AmqpError::NotProvisioned`], [`AmqpError::ClientInactive`], broker and store
    /// failures (after which the old password still works and the new one does not).
    pub async fn rotate(&self, actor: &Actor, client: &str) -> Result<Issued, AmqpError> {
        done(self.rotate_once(actor, client, None).await?)
    }

    /// [`Feeds::rotate`] under `retry`: a retried request gets the first answer back and
    /// rotates nothing.
    ///
    /// # Errors
    /// As [`Feeds::rotate`].
    pub async fn rotate_once(
        &self,
        actor: &Actor,
        client: &str,
        retry: Option<Retry<'_>>,
    ) -> Result<Once<Issued>, AmqpError> {
        if let Some(replay) = self.replay(retry).await? {
            return Ok(Once::Replayed(replay));
        }
        let (name, current) = self.active_feed(client).await?;
        if !current.client_active {
            return Err(AmqpError::ClientInactive(name));
        }
        let password = password::generate();
        let mut feed = current.feed.clone();
        feed.password_hash = password::rabbit_hash(&password);
        feed.rotated_at = Some(self.store.now());
        // `grant` also finishes a vhost or user that drifted away.
        if let Err(e) = self.grant(&feed).await {
            let _ = self
                .management
                .put_user(&feed.username, &current.feed.password_hash)
                .await;
            return Err(e);
        }
        let closed = self.management.close_user_connections(&feed.username).await;
        let detail =
            json!({ "client": name, "user": feed.username, "connections_closed": closed.is_ok() });
        let issued = self.issued(&name, &feed, &password);
        match self
            .write(actor, &feed, "rotate", detail, retry, &issued)
            .await
        {
            Ok(Some(replay)) => return Ok(Once::Replayed(replay)),
            Ok(None) => {}
            Err(e) => {
                let _ = self
                    .management
                    .put_user(&feed.username, &current.feed.password_hash)
                    .await;
                return Err(e);
            }
        }
        closed?;
        tracing::info!(client = %name, user = %feed.username, "Messaging feed password rotated; old connections closed.");
        Ok(Once::Done(issued))
    }

    /// Deletes the client's user and vhost (the broker closes their connections; keygate closes
    /// the user's too) and marks the feed revoked. Revoking a revoked feed repeats the broker
    /// deletes and succeeds.
    ///
    /// # Errors
    /// [`AmqpError::NotProvisioned`] for a client that never had a feed; broker and store
    /// failures (a retry finishes the revocation).
    pub async fn revoke(&self, actor: &Actor, client: &str) -> Result<FeedView, AmqpError> {
        let c = self.store.client(client).await?;
        let Some(mut current) = self.store.amqp_feed(c.id.as_str()).await? else {
            return Err(AmqpError::NotProvisioned(c.name));
        };
        self.remove(&current.feed).await?;
        if current.feed.state == FeedState::Revoked {
            return Ok(self.view(&current));
        }
        current.feed.state = FeedState::Revoked;
        current.feed.revoked_at = Some(self.store.now());
        let detail = json!({ "client": c.name, "user": current.feed.username, "vhost": current.feed.vhost, "connections_closed": true });
        self.store
            .put_amqp_feed(actor, &current.feed, "revoke", detail)
            .await?;
        tracing::info!(client = %c.name, user = %current.feed.username, "Messaging feed revoked; connections closed.");
        Ok(self.view(&current))
    }

    /// Removes a feed from the broker: user first (no new logins), then its connections, then
    /// the vhost (and whatever connection is still in it). Idempotent; used by revocation and
    /// by client deletion (whose store write already marked the feed revoked).
    ///
    /// # Errors
    /// Broker failures.
    pub async fn remove(&self, feed: &AmqpFeed) -> Result<(), AmqpError> {
        let m = &self.management;
        m.delete_user(&feed.username).await?;
        m.close_user_connections(&feed.username).await?;
        m.delete_vhost(&feed.vhost).await
    }

    /// The client's feed as stored.
    ///
    /// # Errors
    /// [`AmqpError::NotProvisioned`], store failures.
    pub async fn show(&self, client: &str) -> Result<FeedView, AmqpError> {
        let c = self.store.client(client).await?;
        match self.store.amqp_feed(c.id.as_str()).await? {
            Some(f) => Ok(self.view(&f)),
            None => Err(AmqpError::NotProvisioned(c.name)),
        }
    }

    /// Every stored feed.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list(&self) -> Result<Vec<FeedView>, AmqpError> {
        Ok(self
            .store
            .amqp_feeds()
            .await?
            .iter()
            .map(|f| self.view(f))
            .collect())
    }

    /// Makes the broker match one stored feed: an active feed of an active client is granted;
    /// an active feed of a disabled client keeps its user but loses its permissions and its
    /// connections (enabling the client grants them again, with the same password); a revoked
    /// feed has no user and no vhost. `close` closes the user's connections on an active
    /// client too (a password changed elsewhere). Idempotent.
    ///
    /// # Errors
    /// Broker failures.
    pub async fn apply(&self, f: &FeedOfClient, close: bool) -> Result<(), AmqpError> {
        match (f.feed.state, f.client_active) {
            (FeedState::Revoked, _) => self.remove(&f.feed).await,
            (FeedState::Active, true) => {
                self.grant(&f.feed).await?;
                if close {
                    self.management
                        .close_user_connections(&f.feed.username)
                        .await?;
                }
                Ok(())
            }
            (FeedState::Active, false) => {
                let m = &self.management;
                m.delete_permissions(&f.feed.vhost, &f.feed.username)
                    .await?;
                m.close_user_connections(&f.feed.username).await
            }
        }
    }
}

/// The answer of a call made without a retry claim (never replayed).
fn done(once: Once<Issued>) -> Result<Issued, AmqpError> {
    match once {
        Once::Done(issued) => Ok(issued),
        Once::Replayed(_) => Err(AmqpError::Store(keygate_store::StoreError::Corrupt(
            "a feed operation without an idempotency claim was replayed".to_owned(),
        ))),
    }
}
