//! Asynchronous invocation settings and failed events (admin keys only):
//!
//! - `PutFunctionEventInvokeConfig` (`PUT`), `UpdateFunctionEventInvokeConfig`
//!   (`POST`), `GetFunctionEventInvokeConfig` and
//!   `DeleteFunctionEventInvokeConfig` on
//!   `/2019-09-25/functions/{name}/event-invoke-config`, as Lambda's;
//! - silo's on-failure destination, kept by silo itself (a silo extension):
//!   `GET /silo/failed-events[?FunctionName=f]` lists events given up
//!   (payload, tenant, error, attempts), `DELETE /silo/failed-events/{id}`
//!   removes one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::functions::{change_error, lookup, parse_json};
use super::read_authed;
use crate::event_store::now_unix_ms;
use crate::event_worker::{
    EventInvokeConfig, MAX_EVENT_AGE_S, MAX_RETRY_ATTEMPTS, MIN_EVENT_AGE_S,
};
use crate::Daemon;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigInput {
    maximum_retry_attempts: Option<i64>,
    maximum_event_age_in_seconds: Option<i64>,
    destination_config: Option<Value>,
}

fn config_body(d: &Daemon, name: &str, c: &EventInvokeConfig) -> Value {
    json!({
        "LastModified": c.last_modified_unix_ms as f64 / 1000.0,
        "FunctionArn": format!("{}:$LATEST", d.arn(name)),
        "MaximumRetryAttempts": c.maximum_retry_attempts,
        "MaximumEventAgeInSeconds": c.maximum_event_age_s,
        "DestinationConfig": { "OnSuccess": {}, "OnFailure": {} },
    })
}

/// Whether a `DestinationConfig` names any destination.
fn names_destination(v: &Value) -> bool {
    ["OnSuccess", "OnFailure"].iter().any(|k| {
        v.get(k)
            .and_then(|d| d.get("Destination"))
            .is_some_and(|d| !d.is_null())
    })
}

/// The settings `input` asks for over `base` (Put: the defaults; Update:
/// the settings in force), checked as Lambda checks them.
fn merge(input: &ConfigInput, base: EventInvokeConfig) -> Result<EventInvokeConfig, ApiError> {
    if input
        .destination_config
        .as_ref()
        .is_some_and(names_destination)
    {
        return Err(ApiError::invalid_parameter(
            "silo keeps failed events itself (GET /silo/failed-events, `silo events failed`); \
             DestinationConfig destinations are not supported",
        ));
    }
    let retries = match input.maximum_retry_attempts {
        None => base.maximum_retry_attempts,
        Some(n) if (0..=i64::from(MAX_RETRY_ATTEMPTS)).contains(&n) => n as u32,
        Some(n) => {
            return Err(ApiError::invalid_parameter(format!(
                "1 validation error detected: Value {n} at 'maximumRetryAttempts' failed to satisfy constraint: \
                 Member must have value between 0 and {MAX_RETRY_ATTEMPTS}"
            )))
        }
    };
    let age = match input.maximum_event_age_in_seconds {
        None => base.maximum_event_age_s,
        Some(n) if (i64::from(MIN_EVENT_AGE_S)..=i64::from(MAX_EVENT_AGE_S)).contains(&n) => {
            n as u32
        }
        Some(n) => {
            return Err(ApiError::invalid_parameter(format!(
                "1 validation error detected: Value {n} at 'maximumEventAgeInSeconds' failed to satisfy constraint: \
                 Member must have value between {MIN_EVENT_AGE_S} and {MAX_EVENT_AGE_S}"
            )))
        }
    };
    Ok(EventInvokeConfig {
        maximum_retry_attempts: retries,
        maximum_event_age_s: age,
        last_modified_unix_ms: now_unix_ms(),
    })
}

async fn set(
    d: Arc<Daemon>,
    raw: String,
    req: Request,
    op: &'static str,
    replace: bool,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 16, op).await?;
    a.principal.require_admin(op)?;
    let input: ConfigInput = parse_json(&a.body)?;
    let rec = lookup(&d, &raw)?;
    let base = if replace {
        EventInvokeConfig::default()
    } else {
        rec.event_invoke_config.unwrap_or_default()
    };
    let cfg = merge(&input, base)?;
    d.modify(&rec.name, |r| r.event_invoke_config = Some(cfg))
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(Json(config_body(&d, &rec.name, &cfg)).into_response())
}

/// `PUT /2019-09-25/functions/{name}/event-invoke-config`: replaces the
/// settings (fields left out take their defaults).
pub async fn put_config(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    set(d, raw, req, "PutFunctionEventInvokeConfig", true).await
}

/// `POST /2019-09-25/functions/{name}/event-invoke-config`: changes the
/// fields given.
pub async fn update_config(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    set(d, raw, req, "UpdateFunctionEventInvokeConfig", false).await
}

/// `GET /2019-09-25/functions/{name}/event-invoke-config`
pub async fn get_config(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetFunctionEventInvokeConfig").await?;
    a.principal.require_admin("GetFunctionEventInvokeConfig")?;
    let rec = lookup(&d, &raw)?;
    match rec.event_invoke_config {
        Some(c) => Ok(Json(config_body(&d, &rec.name, &c)).into_response()),
        None => Err(ApiError::not_found(format!(
            "The function {} doesn't have an EventInvokeConfig",
            d.arn(&rec.name)
        ))),
    }
}

/// `DELETE /2019-09-25/functions/{name}/event-invoke-config`: back to the
/// defaults (2 retries, 6 hours).
pub async fn delete_config(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteFunctionEventInvokeConfig").await?;
    a.principal
        .require_admin("DeleteFunctionEventInvokeConfig")?;
    let rec = lookup(&d, &raw)?;
    if rec.event_invoke_config.is_none() {
        return Err(ApiError::not_found(format!(
            "The function {} doesn't have an EventInvokeConfig",
            d.arn(&rec.name)
        )));
    }
    d.modify(&rec.name, |r| r.event_invoke_config = None)
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn store_error(e: crate::event_store::EventStoreError) -> ApiError {
    ApiError::service(e.to_string())
}

/// `GET /silo/failed-events[?FunctionName=f]`: `{"FailedEvents": [...]}`,
/// oldest first.
pub async fn list_failed(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "ListFailedEvents").await?;
    // Payloads of every tenant: administrators only.
    a.principal.require_admin("ListFailedEvents")?;
    let function = q.get("FunctionName").cloned();
    let events = d.failed_events(function).await.map_err(store_error)?;
    Ok(Json(json!({ "FailedEvents": events })).into_response())
}

/// `DELETE /silo/failed-events/{id}`
pub async fn delete_failed(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteFailedEvent").await?;
    a.principal.require_admin("DeleteFailedEvent")?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::invalid_parameter(format!("{id:?} is not a failed event id")))?;
    if d.remove_failed_event(id).await.map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("No failed event {id}")))
    }
}
