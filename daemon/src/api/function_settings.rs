//! A function's settings beside its configuration: reserved concurrency
//! (Put/DeleteFunctionConcurrency) and silo's pool of pre-booted
//! environments (Put/Get/DeleteFunctionPool, admin keys only).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::functions::{change_error, lookup, parse_json};
use super::read_authed;
use crate::store::FunctionRecord;
use crate::Daemon;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConcurrencyInput {
    reserved_concurrent_executions: Option<i64>,
}

/// `PUT /2017-10-31/functions/{name}/concurrency`
pub async fn put_concurrency(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 16, "PutFunctionConcurrency").await?;
    a.principal.require_admin("PutFunctionConcurrency")?;
    let input: ConcurrencyInput = parse_json(&a.body)?;
    let n = input
        .reserved_concurrent_executions
        .filter(|n| (0..=10_000).contains(n))
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "ReservedConcurrentExecutions must be a number from 0 to 10000",
            )
        })? as u32;
    let rec = lookup(&d, &raw)?;
    d.set_concurrency(&rec.name, Some(n))
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(Json(json!({ "ReservedConcurrentExecutions": n })).into_response())
}

/// `DELETE /2017-10-31/functions/{name}/concurrency`
pub async fn delete_concurrency(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteFunctionConcurrency").await?;
    a.principal.require_admin("DeleteFunctionConcurrency")?;
    let rec = lookup(&d, &raw)?;
    d.set_concurrency(&rec.name, None)
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolInput {
    pool_size: Option<i64>,
}

fn pool_body(d: &Daemon, rec: &FunctionRecord) -> Value {
    let (ready, booting) = d.pool_state(&rec.name);
    json!({ "PoolSize": d.pool_size(rec), "Ready": ready, "Booting": booting })
}

/// `PUT /2015-03-31/functions/{name}/pool` (a silo extension): keep
/// `PoolSize` environments booted ahead of time, bound to no tenant until a
/// new tenant's first invoke takes one.
pub async fn put_pool(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 16, "PutFunctionPool").await?;
    a.principal.require_admin("PutFunctionPool")?;
    let input: PoolInput = parse_json(&a.body)?;
    let n = input
        .pool_size
        .filter(|n| (0..=100).contains(n))
        .ok_or_else(|| ApiError::invalid_parameter("PoolSize must be a number from 0 to 100"))?
        as u32;
    let rec = lookup(&d, &raw)?;
    let rec = d
        .set_pool(&rec.name, Some(n))
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(Json(pool_body(&d, &rec)).into_response())
}

/// `GET /2015-03-31/functions/{name}/pool`: the pool's size, and how many of
/// its environments are ready and booting (admin keys only).
pub async fn get_pool(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetFunctionPool").await?;
    // Pool state tells of every tenant's traffic: administrators only.
    a.principal.require_admin("GetFunctionPool")?;
    let rec = lookup(&d, &raw)?;
    Ok(Json(pool_body(&d, &rec)).into_response())
}

/// `DELETE /2015-03-31/functions/{name}/pool`: back to the configuration's
/// pool size (none unless `[pools]` names the function).
pub async fn delete_pool(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteFunctionPool").await?;
    a.principal.require_admin("DeleteFunctionPool")?;
    let rec = lookup(&d, &raw)?;
    d.set_pool(&rec.name, None)
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
