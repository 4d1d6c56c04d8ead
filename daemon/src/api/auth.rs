//! Who may call the API. Each request carries an AWS SigV4 signature made
//! with an access key from the daemon's configuration; the key decides what
//! the caller may do:
//!
//! - a key without `tenants` is an administrator: every operation, any tenant;
//! - a key with `tenants` may invoke only as one of its tenants, and may
//!   read function configurations (GetFunction, GetFunctionConfiguration,
//!   ListFunctions) with their environment variables removed; it cannot
//!   change functions nor read `/metrics`.
//!
//! With `--allow-unauthenticated` and no key configured, a request without a
//! signature (or signed with any key) is an administrator. As soon as one
//! key is configured the flag has no effect: unsigned requests and unknown
//! keys are refused (403), so the flag can never make strangers
//! administrators of a daemon that has keys. A request signed with a known
//! key is always verified and restricted.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::request::Parts;

use super::error::ApiError;
use crate::config::DaemonConfig;
use crate::Daemon;
use silo_aws::sigv4;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Any operation, any tenant.
    Admin {
        /// The access key, if one signed the request.
        access_key: Option<String>,
    },
    /// Invoke as these tenants only; read-only otherwise.
    Tenants {
        /// The access key.
        access_key: String,
        /// Tenants it may act for.
        tenants: HashSet<String>,
    },
}

impl Principal {
    /// Refuses callers that may not change functions.
    pub fn require_admin(&self, operation: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Tenants { access_key, .. } => Err(ApiError::forbidden(
                "AccessDeniedException",
                format!(
                    "access key {access_key} is restricted to tenants and may not call {operation}"
                ),
            )),
        }
    }

    /// Whether the caller may see secrets in configurations (environment
    /// variables): administrators only.
    pub fn may_read_secrets(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }

    /// Refuses callers that may not act for `tenant` (`None`: no tenant).
    pub fn require_tenant(&self, tenant: Option<&str>) -> Result<(), ApiError> {
        match (self, tenant) {
            (Principal::Admin { .. }, _) => Ok(()),
            (Principal::Tenants { tenants, .. }, Some(t)) if tenants.contains(t) => Ok(()),
            (Principal::Tenants { access_key, .. }, Some(t)) => Err(ApiError::forbidden(
                "AccessDeniedException",
                format!("access key {access_key} may not invoke as tenant {t:?}"),
            )),
            (Principal::Tenants { access_key, .. }, None) => Err(ApiError::forbidden(
                "AccessDeniedException",
                format!("access key {access_key} is restricted to tenants and may only invoke with one of them"),
            )),
        }
    }
}

/// Verifies the request's signature and names its principal, at the
/// server's current time.
pub fn authenticate(daemon: &Daemon, parts: &Parts, body: &[u8]) -> Result<Principal, ApiError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let keys = daemon.store.registry().and_then(|r| r.keys());
    authenticate_with(&daemon.config, keys, parts, body, now)
}

/// Verifies the request's signature against `config`'s keys at server time
/// `now_unix` and names its principal.
pub fn authenticate_at(
    config: &DaemonConfig,
    parts: &Parts,
    body: &[u8],
    now_unix: i64,
) -> Result<Principal, ApiError> {
    authenticate_with(config, None, parts, body, now_unix)
}

/// [`authenticate_at`] with the cluster's registry `keys` beside the
/// configuration's (a configured key wins over a registry key of the same
/// id).
pub fn authenticate_with(
    config: &DaemonConfig,
    keys: Option<&crate::cluster::keys::KeyRegistry>,
    parts: &Parts,
    body: &[u8],
    now_unix: i64,
) -> Result<Principal, ApiError> {
    let header = parts
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or(""));
    // The flag admits anonymous callers only to a daemon without any key.
    let allow_anonymous = config.allow_unauthenticated
        && config.credentials.is_empty()
        && !keys.is_some_and(|k| k.any());
    let flag_ignored = if config.allow_unauthenticated && !allow_anonymous {
        " (--allow-unauthenticated has no effect while access keys are configured)"
    } else {
        ""
    };
    let Some(header) = header else {
        return if allow_anonymous {
            Ok(Principal::Admin { access_key: None })
        } else {
            Err(ApiError::forbidden(
                "MissingAuthenticationTokenException",
                format!("Missing Authentication Token: sign requests with AWS SigV4 using a key from the daemon's configuration{flag_ignored}"),
            ))
        };
    };
    let auth = sigv4::parse_authorization(header)
        .map_err(|e| ApiError::forbidden("IncompleteSignatureException", e.to_string()))?;
    let Some(cred) = config
        .credentials
        .iter()
        .find(|c| c.access_key_id == auth.access_key)
        .cloned()
        .or_else(|| keys.and_then(|k| k.get(&auth.access_key)))
    else {
        return if allow_anonymous {
            Ok(Principal::Admin { access_key: None })
        } else {
            Err(ApiError::forbidden(
                "UnrecognizedClientException",
                format!("The security token included in the request is invalid.{flag_ignored}"),
            ))
        };
    };
    // The CloudWatch Logs operations (`POST /` with a `Logs_20140328.*`
    // target) are signed for `logs`, everything else for `lambda`.
    let service = super::logs::signing_service(parts);
    if auth.service != service {
        return Err(ApiError::forbidden(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: '{service}', not {:?}",
                auth.service
            ),
        ));
    }
    if auth.region != config.region {
        return Err(ApiError::forbidden(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region, not {:?}: this daemon's region is {:?}",
                auth.region, config.region
            ),
        ));
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let signed = sigv4::SignedParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body,
    };
    sigv4::verify(&signed, &auth, &cred.secret_access_key, now_unix)
        .map_err(|e| ApiError::forbidden("InvalidSignatureException", e.to_string()))?;
    Ok(match &cred.tenants {
        None => Principal::Admin {
            access_key: Some(cred.access_key_id.clone()),
        },
        Some(t) => Principal::Tenants {
            access_key: cred.access_key_id.clone(),
            tenants: t.iter().cloned().collect(),
        },
    })
}

#[cfg(test)]
mod tests;
