//! The Lambda-compatible HTTP API: the paths, shapes, headers and errors of
//! AWS Lambda's REST API, so AWS SDKs and CLIs work with an endpoint
//! override. Every request is authenticated with SigV4 (see [`auth`]) before
//! anything else is read from it; `GET /metrics` needs an admin key here,
//! and is served without authentication only by [`metrics_router`], on the
//! separate `metrics_listen` address when the operator configures one.

mod access_keys;
pub mod auth;
pub mod error;
mod event_config;
mod function_settings;
mod functions;
mod gateway_routes;
mod health;
mod invoke;
mod logs;
mod network;
mod tenant_role;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::Daemon;
use auth::Principal;
use error::ApiError;

/// Largest CreateFunction/UpdateFunctionCode request: a 50 MB zip, base64.
pub const MAX_CODE_REQUEST: usize = 70 * 1024 * 1024;

/// The router of the whole API.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route(
            "/2015-03-31/functions",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(functions::get_configuration).put(functions::update_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            put(functions::update_code),
        )
        .route(
            "/2015-03-31/functions/{name}/pool",
            put(function_settings::put_pool)
                .get(function_settings::get_pool)
                .delete(function_settings::delete_pool),
        )
        .route(
            "/2015-03-31/functions/{name}/network",
            put(network::put_network).get(network::get_network),
        )
        .route(
            "/2015-03-31/functions/{name}/tenant-role",
            put(tenant_role::put_tenant_role)
                .get(tenant_role::get_tenant_role)
                .delete(tenant_role::delete_tenant_role),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            put(function_settings::put_concurrency).delete(function_settings::delete_concurrency),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
        .route(
            "/2015-03-31/gateway/routes",
            get(gateway_routes::list_routes),
        )
        .route(
            "/2015-03-31/gateway/routes/{route}",
            put(gateway_routes::put_route)
                .get(gateway_routes::get_route)
                .delete(gateway_routes::delete_route),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            put(event_config::put_config)
                .post(event_config::update_config)
                .get(event_config::get_config)
                .delete(event_config::delete_config),
        )
        .route("/silo/failed-events", get(event_config::list_failed))
        .route(
            "/silo/failed-events/{id}",
            axum::routing::delete(event_config::delete_failed),
        )
        .route(
            "/silo/access-keys",
            post(access_keys::create).get(access_keys::list),
        )
        .route(
            "/silo/access-keys/{id}",
            axum::routing::delete(access_keys::delete),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/", post(logs::dispatch))
        .route("/2015-03-31/functions/{name}/usage", get(logs::usage))
        .route("/metrics", get(metrics))
        .fallback(unknown)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(daemon)
}

/// The router of the separate metrics address (`metrics_listen`): only
/// `GET /metrics`, without authentication.
pub fn metrics_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(unknown)
        .with_state(daemon)
}

/// `GET /metrics` on the API address: admin keys only (the text names every
/// tenant and its traffic).
async fn metrics(State(d): State<Arc<Daemon>>, req: Request) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GET /metrics").await?;
    a.principal.require_admin("GET /metrics")?;
    Ok(metrics_text(State(d)).await)
}

async fn metrics_text(State(d): State<Arc<Daemon>>) -> Response {
    let mut text = d.render_metrics();
    text.push_str(&d.scheduler.backend().broker().render_metrics());
    text.push_str(&d.scheduler.backend().memory.render());
    if let Some(net) = d.network() {
        text.push_str(&net.render_metrics());
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn unknown(req: Request) -> ApiError {
    ApiError::unknown_operation(req.method().as_str(), req.uri().path())
}

/// A request read whole and authenticated.
pub(crate) struct Authed {
    /// Method, URI and headers.
    pub parts: Parts,
    /// The body.
    pub body: Bytes,
    /// Who sent it.
    pub principal: Principal,
}

/// Bodies announced at most this much over an operation's limit are read
/// (and discarded, never buffered) before the 413, so that clients that
/// send the whole body before reading the answer see the 413 rather than a
/// reset connection; larger ones are refused at once and the connection
/// closed.
pub const DRAIN_SLACK: usize = 1024 * 1024;

/// Authenticates and reads a request, refusing what it can before reading:
///
/// 1. a `Content-Length` over `limit` gets a 413 at once (413 after
///    draining, without buffering, when it is at most [`DRAIN_SLACK`] over);
/// 2. a request that cannot authenticate whatever its body (no signature,
///    an `Authorization` header that does not parse, an unknown key) gets
///    its 403 before its body is read;
/// 3. the body is read, at most `limit` bytes (a chunked body is cut off
///    past the limit, 413) and within `limits.body_read_timeout_s` (408);
/// 4. the signature is checked.
pub(crate) async fn read_authed(
    daemon: &Daemon,
    req: Request,
    limit: usize,
    what: &str,
) -> Result<Authed, ApiError> {
    let (parts, body): (Parts, Body) = req.into_parts();
    let too_large = || {
        ApiError::too_large(format!(
            "Request must be smaller than {limit} bytes for the {what} operation"
        ))
    };
    let timeout = Duration::from_secs(daemon.config.limits.body_read_timeout_s);
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        if n <= (limit + DRAIN_SLACK) as u64 {
            let _ = tokio::time::timeout(timeout, drain(body)).await;
        }
        return Err(too_large());
    }
    authenticate_headers(daemon, &parts)?;
    let body = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            return Err(ApiError::request_timeout(format!(
                "The request body did not arrive within {} seconds",
                timeout.as_secs()
            )))
        }
        Ok(Err(e)) if is_length_limit(&e) => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(ApiError::invalid_content(format!(
                "Could not read the request body: {e}"
            )))
        }
        Ok(Ok(b)) => b,
    };
    let principal = auth::authenticate(daemon, &parts, &body)?;
    Ok(Authed {
        parts,
        body,
        principal,
    })
}

/// Reads a body to its end, keeping nothing.
async fn drain(body: Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    while let Some(Ok(_)) = body.frame().await {}
}

/// Whether a body read failed on its length limit (not on the connection).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Refuses, from the headers alone, every request whose body the daemon
/// has no reason to read: only a request whose `Authorization` header
/// parses *and* names a key of the configuration may have its body read
/// (the signature over it is checked after). One without a signature, with
/// a header that does not parse, or signed with a key the daemon does not
/// know gets its 403 here, before a byte of its body is read (with
/// `--allow-unauthenticated` and no key configured, anonymous callers are
/// admitted here as they are by the full check). The refusal is
/// [`auth::authenticate`]'s own, asked with an empty body, so both agree.
fn authenticate_headers(daemon: &Daemon, parts: &Parts) -> Result<(), ApiError> {
    let known_key = parts
        .headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| silo_aws::sigv4::parse_authorization(h).ok())
        .is_some_and(|a| {
            daemon
                .config
                .credentials
                .iter()
                .any(|c| c.access_key_id == a.access_key)
                || daemon
                    .store
                    .registry()
                    .and_then(|r| r.keys())
                    .is_some_and(|k| k.get(&a.access_key).is_some())
        });
    if !known_key {
        auth::authenticate(daemon, parts, b"")?;
    }
    Ok(())
}

/// A function name from a path: a plain name or a function ARN (with or
/// without a `:$LATEST` qualifier), checked as Lambda does.
pub(crate) fn function_name(raw: &str) -> Result<String, ApiError> {
    let name = if let Some(rest) = raw.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.as_slice() {
            [_, "lambda", _, _, "function", name] => *name,
            [_, "lambda", _, _, "function", name, "$LATEST"] => *name,
            _ => {
                return Err(ApiError::invalid_parameter(format!(
                    "{raw:?} is not a function name or function ARN"
                )))
            }
        }
    } else {
        raw
    };
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::invalid_parameter(format!(
            "1 validation error detected: Value {name:?} at 'functionName' failed to satisfy constraint: \
             a function name is 1 to 64 letters, digits, hyphens or underscores"
        )));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_and_arns() {
        assert_eq!(function_name("counter").unwrap(), "counter");
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:000000000000:function:counter").unwrap(),
            "counter"
        );
        for bad in ["", "a b", "../x", &"x".repeat(65), "arn:aws:s3:::bucket"] {
            assert!(function_name(bad).is_err(), "{bad:?}");
        }
    }
}
