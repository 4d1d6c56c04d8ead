//! The gateway listener's one handler: every request goes through
//! [`handle`]. Answers carry API Gateway's shapes (`{"message": ...}`) and
//! an `apigw-requestid` header.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use silo_proto::Outcome;
use silo_scheduler::ScheduleError;
use tracing::Instrument;

use super::event::{map_response, request_event, RequestParts};
use super::jwt::Denied;
use crate::Daemon;
use silo_aws::id::random_uuid;

/// The gateway's router: every method and path to [`handle`].
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(daemon)
}

/// An API Gateway-shaped answer: `{"message": message}`.
fn answer(status: StatusCode, message: &str) -> Response {
    let mut r = (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    r
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Handles one gateway request.
async fn handle(State(d): State<Arc<Daemon>>, req: Request) -> Response {
    let request_id = random_uuid();
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let mut resp = handle_inner(&d, &parts, &mut body, &request_id).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("apigw-requestid", v);
    }
    if let Some(body) = body {
        // Refused before its body was read. Closing a socket with unread
        // data resets it (the client may lose the answer), so a body of
        // at most DRAIN_SLACK is read and discarded first, as the API
        // does; a larger one ends the connection, and says so.
        let timeout = Duration::from_secs(d.config.limits.body_read_timeout_s);
        let cap = crate::api::DRAIN_SLACK;
        let declared_over = header(&parts.headers, "content-length")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > cap as u64);
        if declared_over || !drain(body, cap, timeout).await {
            resp.headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
    }
    resp
}

/// Reads and discards `body` within `timeout`; false if it is longer
/// than `cap`, fails or is late.
async fn drain(body: Body, cap: usize, timeout: Duration) -> bool {
    use http_body_util::BodyExt;
    let read = async move {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > cap {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(timeout, read).await.unwrap_or(false)
}

async fn handle_inner(
    d: &Daemon,
    req: &axum::http::request::Parts,
    body: &mut Option<Body>,
    request_id: &str,
) -> Response {
    let gw = &d.gateway;
    let method = req.method.as_str().to_ascii_uppercase();
    let path = req.uri.path().to_string();
    let origin = header(&req.headers, "origin").map(str::to_string);
    if method == "OPTIONS" {
        if let (Some(o), Some(m)) = (
            origin.as_deref(),
            header(&req.headers, "access-control-request-method"),
        ) {
            if let Some(cors) = gw.preflight_cors(&m.to_ascii_uppercase(), &path) {
                let h = super::cors::preflight(
                    &cors,
                    o,
                    m,
                    header(&req.headers, "access-control-request-headers"),
                );
                return (StatusCode::NO_CONTENT, h).into_response();
            }
        }
    }
    let Some((route, path_params)) = gw.route_for(&method, &path) else {
        return answer(StatusCode::NOT_FOUND, "Not Found");
    };
    let mut resp = serve_route(d, req, body, request_id, &method, &route, path_params).await;
    if let Some(cors) = &route.cors {
        super::cors::decorate(cors, origin.as_deref(), resp.headers_mut());
    }
    resp
}

async fn serve_route(
    d: &Daemon,
    req: &axum::http::request::Parts,
    body: &mut Option<Body>,
    request_id: &str,
    method: &str,
    route: &super::RouteRecord,
    path_params: std::collections::BTreeMap<String, String>,
) -> Response {
    let gw = &d.gateway;
    let verified = match &route.authorizer {
        None => None,
        Some(name) => {
            let Some(a) = gw.authorizers.get(name) else {
                tracing::error!(route = %route.route_id, authorizer = %name, "the route's authorizer is not configured");
                return answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
            };
            match a.verify(header(&req.headers, "authorization")).await {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::info!(route = %route.route_id, reason = %e, "gateway request refused");
                    return match e {
                        Denied::Unauthorized(_) => answer(StatusCode::UNAUTHORIZED, "Unauthorized"),
                        Denied::Forbidden(_) => answer(StatusCode::FORBIDDEN, "Forbidden"),
                    };
                }
            }
        }
    };
    if !route.authorization_scopes.is_empty() {
        let has = verified.as_ref().is_some_and(|v| {
            v.scopes
                .iter()
                .any(|s| route.authorization_scopes.contains(s))
        });
        if !has {
            return answer(StatusCode::FORBIDDEN, "Forbidden");
        }
    }
    let Some(rec) = d.get(&route.function_name) else {
        tracing::error!(route = %route.route_id, function = %route.function_name, "the route's function does not exist");
        return answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let token_tenant = verified.as_ref().and_then(|v| v.tenant.clone());
    let tenant = match (rec.per_tenant, &token_tenant) {
        (true, None) => {
            tracing::error!(route = %route.route_id, function = %rec.name, "a per-tenant function's route names no tenant");
            return answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
        (true, Some(t)) => Some(t.clone()),
        (false, _) => None,
    };
    let limit_key = token_tenant.as_ref().map(|t| t.as_str()).unwrap_or("");
    if let Some(l) = &gw.limiter {
        if !l.check(limit_key) {
            tracing::info!(tenant_id = ?limit_key, route = %route.route_id, "gateway rate limit");
            return answer(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        }
    }
    let source_ip = req
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let parts = req;
    let Some(body) = body.take() else {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let body = match read_body(d, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let event = request_event(&RequestParts {
        route_key: &route.route_key,
        method,
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        path_parameters: &path_params,
        source_ip,
        jwt: verified.as_ref().map(|v| (&v.claims, v.scopes.as_slice())),
        request_id,
        account_id: &d.config.account_id,
        now_ms,
        body: &body,
    });
    let payload = event.to_string().into_bytes();
    if payload.len() > silo_proto::MAX_PAYLOAD {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    }
    let tenant_log = tenant.as_ref().map(|t| t.as_str().to_string());
    let span = tracing::info_span!("gateway", function = %rec.name, tenant_id = ?tenant_log.as_deref().unwrap_or("-"), request_id = %request_id);
    async move {
        let result = d.invoke(&rec, tenant, payload, request_id).await;
        let resp = match result {
            Ok(report) => match &report.response.outcome {
                Outcome::Ok(body) => match map_response(body) {
                    Ok((status, headers, body)) => {
                        let mut r = (status, body).into_response();
                        r.headers_mut().extend(headers);
                        r
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "function result not mapped");
                        answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                    }
                },
                Outcome::Err(_) => {
                    answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                }
            },
            Err(ScheduleError::Throttled(reason)) => {
                tracing::info!(reason = ?reason, "invocation throttled");
                answer(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            }
            Err(ScheduleError::Environment(crate::vm_env::EnvError::TimedOut)) => {
                answer(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway invocation failed");
                answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
        };
        tracing::info!(status = resp.status().as_u16(), "gateway request answered");
        resp
    }
    .instrument(span)
    .await
}

/// Reads a body up to the invoke payload limit, within the body timeout.
async fn read_body(d: &Daemon, body: Body) -> Result<axum::body::Bytes, Response> {
    let limit = silo_proto::MAX_PAYLOAD;
    let timeout = Duration::from_secs(d.config.limits.body_read_timeout_s);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(answer(StatusCode::REQUEST_TIMEOUT, "Request Timeout")),
        Ok(Err(_)) => Err(answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request Entity Too Large",
        )),
        Ok(Ok(b)) => Ok(b),
    }
}
