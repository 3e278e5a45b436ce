//! `/health`, `/ready`, `/status`, `/metrics`: always on the admin listener, and on the public
//! listener where the profile makes them public.

use http::{Response, StatusCode};
use serde_json::json;

use crate::request::body::Body;
use crate::request::respond;
use crate::state::gateway::Gateway;

/// An infra endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Infra {
    Health,
    Ready,
    Status,
    Metrics,
}

impl Infra {
    pub(crate) fn from_path(path: &str) -> Option<Infra> {
        use crate::policy::paths;
        match path {
            paths::HEALTH => Some(Infra::Health),
            paths::READY => Some(Infra::Ready),
            paths::STATUS => Some(Infra::Status),
            paths::METRICS => Some(Infra::Metrics),
            _ => None,
        }
    }

    /// Whether the profile serves this endpoint without a key on the public listener.
    pub(crate) fn is_public(self, gw: &Gateway) -> bool {
        let p = gw.config.profile.public;
        match self {
            Infra::Health => p.health,
            Infra::Ready => p.ready,
            Infra::Status => p.status,
            Infra::Metrics => p.metrics,
        }
    }
}

/// Answers an infra endpoint.
pub(crate) fn answer(gw: &Gateway, which: Infra) -> Response<Body> {
    match which {
        Infra::Health => respond::json(StatusCode::OK, &json!({ "status": "ok" })),
        Infra::Ready => {
            // Ready once the replica is loaded; a store outage afterwards keeps us serving
            // from the replica (fail static), so it does not make us unready.
            let store_ok = !gw.config.ready_requires_store || gw.store.is_up();
            if gw.drain.is_stopping() {
                respond::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "status": "stopping", "detail": "keygate is shutting down." }),
                )
            } else if gw.replica.is_loaded() && store_ok {
                respond::json(StatusCode::OK, &json!({ "status": "ready" }))
            } else {
                {
                    let detail = if gw.replica.is_loaded() {
                        "The store is unreachable and this node is configured to leave the pool."
                    } else {
                        "The key replica is still loading."
                    };
                    respond::json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({ "status": "not ready", "detail": detail }),
                    )
                }
            }
        }
        Infra::Status => {
            let g = gw.gauges();
            respond::json(
                StatusCode::OK,
                &json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": g.uptime_seconds.floor(),
                    "profile": &*gw.config.profile.name,
                    "config": gw.loaded.status(&gw.config),
                    "replica": {
                        "loaded": gw.replica.is_loaded(),
                        "keys": g.replica_keys,
                        "clients": g.replica_clients,
                        "version": g.feed_version,
                    },
                    "limiter": g.limiter.map(|l| json!({
                        "backend": l.backend,
                        "degraded": l.degraded,
                        "fallbacks": l.fallbacks,
                    })),
                    "upstreams": gw.breakers.status(&gw.config.upstreams, gw.clock.now()),
                    "store": {
                        "state": if g.store_up { "up" } else { "unreachable" },
                        "down_seconds": g.store_down_seconds,
                        "feed_lag_seconds": g.feed_lag_seconds,
                    },
                    "amqp": crate::state::amqp::status(gw),
                    "tls": gw.tls.get().and_then(|t| t.status()),
                }),
            )
        }
        Infra::Metrics => {
            let mut text = gw.metrics.render(&gw.gauges());
            gw.guard.render(&mut text);
            gw.connections.render(&mut text);
            gw.loaded.render(&mut text);
            gw.sharing.render(&mut text);
            gw.quotas.render(&mut text);
            if let Some(tracer) = gw.tracer.get() {
                tracer.render(&mut text);
            }
            crate::state::amqp::render_metrics(gw, &mut text);
            if let Some(tls) = gw.tls.get() {
                tls.render(&mut text);
            }
            gw.breakers
                .render(&gw.config.upstreams, gw.clock.now(), &mut text);
            respond::text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
    }
}
