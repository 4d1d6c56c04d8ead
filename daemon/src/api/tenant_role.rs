//! A function's tenant role (a silo extension, admin keys only):
//! `PUT/GET/DELETE /2015-03-31/functions/{name}/tenant-role` with
//! `{"RoleArn", "SessionPolicy", "StsEndpoint"?, "StsRegion"?,
//! "DurationSeconds"?}`. See [`crate::creds`].

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::functions::{change_error, lookup, parse_json};
use super::{function_name, read_authed};
use crate::creds::TenantRole;
use crate::store::FunctionRecord;
use crate::Daemon;
use silo_aws::date::now_iso8601;
use silo_aws::id::random_uuid;

fn body(d: &Daemon, rec: &FunctionRecord) -> Value {
    let (role, source) = match (&rec.tenant_role, d.config.tenant_roles.get(&rec.name)) {
        (Some(r), _) => (Some(r), "api"),
        (None, Some(r)) => (Some(r), "configuration"),
        (None, None) => (None, "none"),
    };
    match role {
        None => json!({ "TenantRole": null, "Source": source }),
        Some(r) => json!({
            "TenantRole": {
                "RoleArn": r.role_arn,
                "StsEndpoint": r.endpoint(),
                "StsRegion": r.region(),
                "DurationSeconds": r.duration_seconds,
                "SessionPolicy": r.session_policy,
            },
            "Source": source,
        }),
    }
}

/// Stores `role` (or none: the configuration's) as `raw`'s and makes a new
/// revision, so that new VMs serve the credentials endpoint (or not) and
/// the old ones finish and go.
async fn set(d: &Arc<Daemon>, raw: &str, role: Option<TenantRole>) -> Result<Response, ApiError> {
    let _changing = d.changing(&function_name(raw)?).await;
    let mut rec = lookup(d, raw)?;
    if role.is_some() && !rec.per_tenant {
        return Err(ApiError::invalid_parameter(
            "a tenant role needs a function with TenancyConfig PER_TENANT: its VMs serve one tenant each",
        ));
    }
    rec.tenant_role = role;
    rec.revision_id = random_uuid();
    rec.last_modified = now_iso8601();
    let code = d
        .code(&rec.code_sha256)
        .map_err(|e| ApiError::service(format!("reading the code of {}: {e}", rec.name)))?;
    let rec = d
        .update(rec.clone(), &code)
        .await
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    d.forget_credentials(&rec.name);
    Ok(Json(body(d, &rec)).into_response())
}

/// `PUT /2015-03-31/functions/{name}/tenant-role`: checked (the session
/// policy renders to JSON within STS's limit for any tenant id), stored.
pub async fn put_tenant_role(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 16, "PutFunctionTenantRole").await?;
    a.principal.require_admin("PutFunctionTenantRole")?;
    let role: TenantRole = parse_json(&a.body)?;
    role.check(&function_name(&raw)?)
        .map_err(|e| ApiError::invalid_parameter(e.to_string()))?;
    set(&d, &raw, Some(role)).await
}

/// `GET /2015-03-31/functions/{name}/tenant-role`.
pub async fn get_tenant_role(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetFunctionTenantRole").await?;
    a.principal.require_admin("GetFunctionTenantRole")?;
    let rec = lookup(&d, &raw)?;
    Ok(Json(body(&d, &rec)).into_response())
}

/// `DELETE /2015-03-31/functions/{name}/tenant-role`: back to the
/// configuration's (or none).
pub async fn delete_tenant_role(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteFunctionTenantRole").await?;
    a.principal.require_admin("DeleteFunctionTenantRole")?;
    set(&d, &raw, None).await
}
