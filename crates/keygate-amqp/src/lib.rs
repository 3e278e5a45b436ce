//! Messaging feed credentials (issue 21, seed 001's
//! `amqp://op-<slug>:<password>@mq.ticktock.bet:5672/<slug>`): one RabbitMQ vhost and user per
//! client, made, rotated and revoked through the broker's management API, kept in the store
//! (never the plaintext password), and held in line with the client's state by [`enforce`].
//!
//! The broker is changed first and the store last, with every broker call idempotent, so a
//! broker outage leaves nothing half-made and a retry finishes any interrupted operation.

mod config;
mod drift;
mod enforce;
mod error;
mod feeds;
mod management;
mod naming;
mod password;

pub use config::{
    AmqpConfig, Operator, Permissions, RawAmqp, RawPermissions, PASSWORD_ENV, USER_ENV,
};
pub use drift::{Drift, DriftItem, Reconciled};
pub use enforce::{enforce, EnforcerStatus, StatusReport, LEASE_TTL};
pub use error::AmqpError;
pub use feeds::{FeedView, Feeds, Issued, Retry};
pub use management::{BrokerUser, BrokerVhost, Management};
pub use naming::{check_slug, derive_slug, Names, MAX_SLUG};
