//! API access keys kept in the cluster's registry (a silo extension, admin
//! keys only, cluster mode only: one host keeps its keys in the
//! configuration file):
//!
//! - `POST /silo/access-keys` with `{"Tenants": ["t1", ...]}` (or `{}` for
//!   an administrator key): 201 `{"AccessKeyId", "SecretAccessKey",
//!   "Tenants"}`; the secret is shown this once;
//! - `GET /silo/access-keys`: every key without its secret, the
//!   configuration's (`"Source": "configuration"`) and the registry's;
//! - `DELETE /silo/access-keys/{id}`: revokes a registry key on every node.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::functions::parse_json;
use super::read_authed;
use crate::cluster::keys::KeyRegistry;
use crate::Daemon;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct KeyInput {
    tenants: Option<Vec<String>>,
}

fn registry_keys(d: &Daemon) -> Result<&KeyRegistry, ApiError> {
    d.store.registry().and_then(|r| r.keys()).ok_or_else(|| {
        ApiError::invalid_parameter(
            "access keys are managed through the API only in a cluster (silo serve --registry); \
             this daemon's keys are its configuration's [[credentials]]",
        )
    })
}

/// `POST /silo/access-keys`: a new key, stored in the registry.
pub async fn create(State(d): State<Arc<Daemon>>, req: Request) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 16, "CreateAccessKey").await?;
    a.principal.require_admin("CreateAccessKey")?;
    let input: KeyInput = if a.body.is_empty() {
        KeyInput::default()
    } else {
        parse_json(&a.body)?
    };
    if let Some(t) = &input.tenants {
        if t.is_empty() {
            return Err(ApiError::invalid_parameter(
                "Tenants must name one tenant or more; omit it for an administrator key",
            ));
        }
        // Lambda's rule for tenant ids, as for keys in the configuration.
        for id in t {
            silo_scheduler::TenantId::parse(id).map_err(|reason| {
                ApiError::invalid_parameter(format!("Tenants: {id:?} is not a tenant id: {reason}"))
            })?;
        }
    }
    let d2 = d.clone();
    let cred =
        tokio::task::spawn_blocking(move || registry_keys(&d2).map(|k| k.create(input.tenants)))
            .await
            .map_err(|e| ApiError::service(e.to_string()))??
            .map_err(|e| ApiError::service(format!("creating an access key: {e}")))?;
    tracing::info!(access_key = %cred.access_key_id, administrator = cred.tenants.is_none(), "access key created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "AccessKeyId": cred.access_key_id,
            "SecretAccessKey": cred.secret_access_key,
            "Tenants": cred.tenants,
        })),
    )
        .into_response())
}

/// `GET /silo/access-keys`: the keys this node accepts, without secrets.
pub async fn list(State(d): State<Arc<Daemon>>, req: Request) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "ListAccessKeys").await?;
    a.principal.require_admin("ListAccessKeys")?;
    let entry = |id: &str, tenants: &Option<Vec<String>>, source: &str| -> Value {
        json!({ "AccessKeyId": id, "Tenants": tenants, "Source": source })
    };
    let mut keys: Vec<Value> = d
        .config
        .credentials
        .iter()
        .map(|c| entry(&c.access_key_id, &c.tenants, "configuration"))
        .collect();
    if let Some(k) = d.store.registry().and_then(|r| r.keys()) {
        keys.extend(
            k.list()
                .iter()
                .map(|c| entry(&c.access_key_id, &c.tenants, "registry")),
        );
    }
    Ok(Json(json!({ "AccessKeys": keys })).into_response())
}

/// `DELETE /silo/access-keys/{id}`: revokes a registry key everywhere.
pub async fn delete(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteAccessKey").await?;
    a.principal.require_admin("DeleteAccessKey")?;
    if d.config.credentials.iter().any(|c| c.access_key_id == id) {
        return Err(ApiError::conflict(format!(
            "access key {id} is in this node's configuration file: remove it there"
        )));
    }
    let d2 = d.clone();
    let id2 = id.clone();
    let found = tokio::task::spawn_blocking(move || registry_keys(&d2).map(|k| k.delete(&id2)))
        .await
        .map_err(|e| ApiError::service(e.to_string()))??
        .map_err(|e| ApiError::service(format!("revoking access key {id}: {e}")))?;
    if !found {
        return Err(ApiError::not_found(format!("no access key {id}")));
    }
    tracing::info!(access_key = ?id, "access key revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}
