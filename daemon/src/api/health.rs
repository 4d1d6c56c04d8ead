//! `GET /healthz` and `GET /readyz`, without authentication (for systemd
//! watchdogs, load balancers and orchestrators; they tell nothing about
//! functions or tenants):
//!
//! - `/healthz`: 200 while the process serves HTTP at all;
//! - `/readyz`: 200 when this daemon can take invokes (microVMs can be
//!   jailed, or `--insecure-no-jail`; the guest kernel and agent are
//!   there; the event store can be read) and is not stopping; else 503.
//!   The body names each check and whether it passed; the reasons are in
//!   the daemon's log.

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
    let store = match d.check_event_store().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readyz: the event store cannot be read");
            false
        }
    };
    let stopping = d.stopping();
    let ready = jail && kernel && agent && store && !stopping;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "checks": { "jail": jail, "kernel": kernel, "agent": agent, "event_store": store, "stopping": stopping },
    });
    (status, Json(body)).into_response()
}
