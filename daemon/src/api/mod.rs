//! The Lambda-compatible HTTP API: the paths, shapes, headers and errors of
//! AWS Lambda's REST API, so AWS SDKs and CLIs work with an endpoint
//! override. Every request is authenticated with SigV4 (see [`auth`]) before
//! anything else is read from it; `GET /metrics` needs an admin key here,
//! and is served without authentication only by [`metrics_router`], on the
//! separate `metrics_listen` address when the operator configures one.

pub mod auth;
pub mod error;
mod functions;
mod invoke;

use std::sync::Arc;

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
            put(functions::put_pool)
                .get(functions::get_pool)
                .delete(functions::delete_pool),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            put(functions::put_concurrency).delete(functions::delete_concurrency),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
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
    (
        [("content-type", "text/plain; version=0.0.4")],
        d.render_metrics(),
    )
        .into_response()
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

/// Reads the body (at most `limit` bytes, else 413 naming the limit) and
/// checks the signature.
pub(crate) async fn read_authed(
    daemon: &Daemon,
    req: Request,
    limit: usize,
    what: &str,
) -> Result<Authed, ApiError> {
    let (parts, body): (Parts, Body) = req.into_parts();
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        ApiError::too_large(format!(
            "Request must be smaller than {limit} bytes for the {what} operation"
        ))
    };
    // Oversized bodies are read (up to the largest request the API takes)
    // before answering, so the client sees the 413 rather than a reset.
    if declared.is_some_and(|n| n > limit) {
        let _ = axum::body::to_bytes(body, MAX_CODE_REQUEST).await;
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, limit.max(MAX_CODE_REQUEST))
        .await
        .map_err(|_| too_large())?;
    if body.len() > limit {
        return Err(too_large());
    }
    let principal = auth::authenticate(daemon, &parts, &body)?;
    Ok(Authed {
        parts,
        body,
        principal,
    })
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
