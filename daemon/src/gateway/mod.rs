//! The HTTP gateway: a separate listener (`[gateway] listen`) where routes
//! (`ANY /orders/{proxy+}`, managed through the admin API) reach functions
//! with API Gateway's HTTP API payload format 2.0.
//!
//! For a per-tenant function the tenant comes only from the route's JWT
//! authorizer: the verified token's tenant claim. Headers a client sends
//! that name a tenant (`X-Amz-Tenant-Id` in any case, anything with
//! `tenant` in its name, `x-amz*`) are removed before the function sees the
//! request. Per request, in order: route match (404), CORS preflight
//! (answered without authorization), authorization (401/403), the tenant's
//! rate limit (429), the body (413 past the limit), the invoke, the
//! result mapped back (500 if malformed).

pub mod config;
mod cors;
pub mod event;
pub mod jwks_tls;
pub mod jwt;
mod limit;
pub mod routes;
mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use config::GatewayConfig;
pub use routes::{Cors, RouteKey, RouteRecord};
pub use serve::router;

use jwt::Authorizer;
use limit::TenantLimiter;

/// Why a route cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The route is not valid; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// Another route has the same key.
    #[error("route {other} already has the key {key}")]
    Conflict {
        /// The other route's id.
        other: String,
        /// The key.
        key: String,
    },
    /// The routes file could not be written.
    #[error(transparent)]
    Store(#[from] routes::RoutesError),
}

/// The gateway's state: routes, authorizers, rate limits.
pub struct Gateway {
    data_dir: PathBuf,
    routes: RwLock<Vec<(RouteRecord, RouteKey)>>,
    /// Held through each change of the routes (and its write).
    changes: Mutex<()>,
    authorizers: BTreeMap<String, Arc<Authorizer>>,
    limiter: Option<TenantLimiter>,
}

impl Gateway {
    /// The gateway of `cfg` with the routes stored under `data_dir`
    /// (stored routes that no longer parse are logged and skipped).
    pub fn new(
        cfg: &GatewayConfig,
        data_dir: &std::path::Path,
    ) -> Result<Self, routes::RoutesError> {
        let refresh = Duration::from_secs(cfg.jwks_refresh_interval_s);
        let mut list = Vec::new();
        for r in routes::load(data_dir)? {
            match RouteKey::parse(&r.route_key) {
                Ok(k) => list.push((r, k)),
                Err(e) => {
                    tracing::error!(route = %r.route_id, error = %e, "skipping a stored route")
                }
            }
        }
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            routes: RwLock::new(list),
            changes: Mutex::new(()),
            authorizers: cfg
                .authorizers
                .iter()
                .map(|(n, a)| (n.clone(), Arc::new(Authorizer::new(n, a.clone(), refresh))))
                .collect(),
            limiter: TenantLimiter::new(cfg.tenant_rps, cfg.tenant_burst),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(RouteRecord, RouteKey)>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every route, by id.
    pub fn list(&self) -> Vec<RouteRecord> {
        let mut v: Vec<RouteRecord> = self.read().iter().map(|(r, _)| r.clone()).collect();
        v.sort_by(|a, b| a.route_id.cmp(&b.route_id));
        v
    }

    /// The route `id`.
    pub fn get(&self, id: &str) -> Option<RouteRecord> {
        self.read()
            .iter()
            .find(|(r, _)| r.route_id == id)
            .map(|(r, _)| r.clone())
    }

    /// Checks a route against the configuration and the function it
    /// names (`per_tenant`: whether that function uses tenant isolation).
    pub fn check(&self, r: &RouteRecord, per_tenant: bool) -> Result<RouteKey, RouteError> {
        let bad = |m: String| RouteError::Invalid(m);
        if r.route_id.is_empty()
            || r.route_id.len() > 64
            || !r
                .route_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "a route id is 1 to 64 letters, digits, hyphens or underscores".into(),
            ));
        }
        let key = RouteKey::parse(&r.route_key).map_err(|e| bad(e.to_string()))?;
        let auth = match &r.authorizer {
            None => None,
            Some(a) => Some(self.authorizers.get(a).ok_or_else(|| {
                bad(format!(
                    "Authorizer {a:?} is not in the daemon's [gateway.authorizers]"
                ))
            })?),
        };
        if per_tenant && !auth.is_some_and(|a| a.names_tenants()) {
            return Err(bad(format!(
                "{} uses tenant isolation: its route needs an Authorizer with a tenant_claim (the tenant comes only from a verified token)",
                r.function_name
            )));
        }
        if !r.authorization_scopes.is_empty() && auth.is_none() {
            return Err(bad("AuthorizationScopes need an Authorizer".into()));
        }
        Ok(key)
    }

    /// Stores (creates or replaces) a route checked by [`Gateway::check`].
    pub fn put(&self, r: RouteRecord, key: RouteKey) -> Result<(), RouteError> {
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<(RouteRecord, RouteKey)> = self
            .read()
            .iter()
            .filter(|(o, _)| o.route_id != r.route_id)
            .cloned()
            .collect();
        if let Some((o, _)) = next.iter().find(|(o, _)| o.route_key == r.route_key) {
            return Err(RouteError::Conflict {
                other: o.route_id.clone(),
                key: r.route_key.clone(),
            });
        }
        next.push((r, key));
        self.commit(next)
    }

    /// Removes route `id`; whether it existed.
    pub fn delete(&self, id: &str) -> Result<bool, RouteError> {
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.read().len();
        let next: Vec<_> = self
            .read()
            .iter()
            .filter(|(o, _)| o.route_id != id)
            .cloned()
            .collect();
        if next.len() == before {
            return Ok(false);
        }
        self.commit(next)?;
        Ok(true)
    }

    fn commit(&self, next: Vec<(RouteRecord, RouteKey)>) -> Result<(), RouteError> {
        let records: Vec<RouteRecord> = next.iter().map(|(r, _)| r.clone()).collect();
        routes::save(&self.data_dir, &records)?;
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The best route for `method` and `path` and its path parameters.
    fn route_for(
        &self,
        method: &str,
        path: &str,
    ) -> Option<(RouteRecord, BTreeMap<String, String>)> {
        self.read()
            .iter()
            .filter_map(|(r, k)| k.matches(method, path).map(|p| (r, k, p)))
            .max_by_key(|(_, k, _)| k.priority())
            .map(|(r, _, p)| (r.clone(), p))
    }

    /// The CORS of the best route of `path` whose method is `method` (or
    /// `ANY`) that has CORS, for a preflight.
    fn preflight_cors(&self, method: &str, path: &str) -> Option<Cors> {
        self.read()
            .iter()
            .filter(|(r, k)| r.cors.is_some() && k.matches_path(path))
            .filter(|(_, k)| k.method().is_none_or(|m| m == "ANY" || m == method))
            .max_by_key(|(_, k)| k.priority())
            .and_then(|(r, _)| r.cors.clone())
    }
}
