//! The gateway's routes (a silo extension, admin keys only):
//! `PUT/GET/DELETE /2015-03-31/gateway/routes/{route}` and `GET
//! /2015-03-31/gateway/routes`. A route's body:
//! `{"RouteKey": "ANY /orders/{proxy+}", "FunctionName": "orders",
//! "Authorizer": "main", "AuthorizationScopes": ["orders"], "Cors": {...}}`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::functions::{lookup, parse_json};
use super::read_authed;
use crate::gateway::{Cors, RouteError, RouteRecord};
use crate::Daemon;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RouteInput {
    route_key: String,
    function_name: String,
    #[serde(default)]
    authorizer: Option<String>,
    #[serde(default)]
    authorization_scopes: Vec<String>,
    #[serde(default)]
    cors: Option<Cors>,
}

fn route_error(e: RouteError) -> ApiError {
    match e {
        RouteError::Invalid(m) => ApiError::invalid_parameter(m),
        e @ RouteError::Conflict { .. } => ApiError::conflict(e.to_string()),
        RouteError::Store(e) => ApiError::service(format!("storing the routes: {e}")),
    }
}

/// `PUT /2015-03-31/gateway/routes/{route}`: creates or replaces a route.
pub async fn put_route(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 16, "PutGatewayRoute").await?;
    a.principal.require_admin("PutGatewayRoute")?;
    let input: RouteInput = parse_json(&a.body)?;
    let rec = lookup(&d, &input.function_name)?;
    let route = RouteRecord {
        route_id: id,
        route_key: input.route_key,
        function_name: rec.name.clone(),
        authorizer: input.authorizer,
        authorization_scopes: input.authorization_scopes,
        cors: input.cors,
    };
    let key = d
        .gateway
        .check(&route, rec.per_tenant)
        .map_err(route_error)?;
    d.gateway.put(route.clone(), key).map_err(route_error)?;
    tracing::info!(route = %route.route_id, key = %route.route_key, function = %route.function_name, "gateway route stored");
    Ok(Json(route).into_response())
}

/// `GET /2015-03-31/gateway/routes/{route}`
pub async fn get_route(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetGatewayRoute").await?;
    a.principal.require_admin("GetGatewayRoute")?;
    let r = d
        .gateway
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("Route not found: {id}")))?;
    Ok(Json(r).into_response())
}

/// `GET /2015-03-31/gateway/routes`
pub async fn list_routes(State(d): State<Arc<Daemon>>, req: Request) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "ListGatewayRoutes").await?;
    a.principal.require_admin("ListGatewayRoutes")?;
    Ok(Json(json!({ "Routes": d.gateway.list() })).into_response())
}

/// `DELETE /2015-03-31/gateway/routes/{route}`
pub async fn delete_route(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteGatewayRoute").await?;
    a.principal.require_admin("DeleteGatewayRoute")?;
    if !d.gateway.delete(&id).map_err(route_error)? {
        return Err(ApiError::not_found(format!("Route not found: {id}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
