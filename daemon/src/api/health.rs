//! `GET /healthz` and `GET /readyz`, without authentication (for systemd
//! watchdogs, load balancers and orchestrators; they tell nothing about
//! functions or tenants):
//!
//! - `/healthz`: 200 while the process serves HTTP at all;
//! - `/readyz`: 200 when this daemon can take invokes (microVMs can be
//!   jailed, or `--insecure-no-jail`; the guest kernel and agent are
//!   there; the event store can be read) and is not stopping; else 503.
//!   The body names each check and whether it passed; the reasons are in
//!   the daemon's log. A cluster node out of touch with PostgreSQL stays
//!   ready, `"degraded": true` with `registry` and `event_store` false: it
//!   serves the functions it holds, so that a PostgreSQL outage is not an
//!   outage of every node behind the balancer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::Daemon;

/// `GET /healthz`
pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

/// `GET /readyz`
pub async fn readyz(State(d): State<Arc<Daemon>>) -> Response {
    let jail = d.jail_ready();
    let kernel = d.images().kernel.is_file();
    let agent = d.images().agent.is_file();
    // A cluster node's stores are in PostgreSQL: their state is what the
    // node last saw (never a blocking call here: an unreachable server
    // would hold the check past the balancer's timeout). Out of touch,
    // the node is degraded but ready: it serves the functions it holds.
    let registry = d.store.registry().map(|r| r.health());
    let store = match registry {
        Some(h) => h.reachable,
        None => match d.check_event_store().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "readyz: the event store cannot be read");
                false
            }
        },
    };
    let stopping = d.stopping();
    let ready = jail && kernel && agent && (store || registry.is_some()) && !stopping;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut checks = json!({ "jail": jail, "kernel": kernel, "agent": agent, "event_store": store, "stopping": stopping });
    let mut body = json!({ "ready": ready });
    if let Some(h) = registry {
        checks["registry"] = json!(h.ok());
        body["degraded"] = json!(!h.ok());
    }
    body["checks"] = checks;
    (status, Json(body)).into_response()
}
