//! A function's egress policy (a silo extension, admin keys only):
//! `PUT/GET /2015-03-31/functions/{name}/network` with the body
//! `{"Egress": "internet" | "none" | {"Allow": ["A.B.C.D/LEN:PORT", ...]}}`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::functions::{change_error, lookup, parse_json};
use super::read_authed;
use crate::net::EgressPolicy;
use crate::store::FunctionRecord;
use crate::Daemon;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct NetworkInput {
    egress: serde_json::Value,
}

fn body(d: &Daemon, rec: &FunctionRecord) -> Value {
    let (policy, source) = d.egress_policy(rec);
    json!({
        "Egress": policy,
        "Source": source,
        "NetworkEnabled": d.network().is_some(),
    })
}

/// `PUT /2015-03-31/functions/{name}/network`: sets the function's egress
/// policy, stored with it and applied at once to its running VMs (a VM
/// booted under `none` has no interface: it keeps none).
pub async fn put_network(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 16, "PutFunctionNetwork").await?;
    a.principal.require_admin("PutFunctionNetwork")?;
    let input: NetworkInput = parse_json(&a.body)?;
    let policy: EgressPolicy = serde_json::from_value(input.egress)
        .map_err(|e| ApiError::invalid_parameter(format!("Egress: {e}")))?;
    let rec = lookup(&d, &raw)?;
    let (rec, updated) = d
        .set_egress_policy(&rec.name, policy)
        .await
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    let mut out = body(&d, &rec);
    out["RunningVmsUpdated"] = json!(updated);
    Ok(Json(out).into_response())
}

/// `GET /2015-03-31/functions/{name}/network`: the function's effective
/// egress policy and where it comes from (`api`, `configuration`,
/// `default`).
pub async fn get_network(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetFunctionNetwork").await?;
    a.principal.require_admin("GetFunctionNetwork")?;
    let rec = lookup(&d, &raw)?;
    Ok(Json(body(&d, &rec)).into_response())
}
