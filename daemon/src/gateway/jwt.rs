//! JWT authorizers: a bearer token is accepted only if it is signed (RS256
//! or ES256, never `none` nor HMAC) by a key of the authorizer's JWKS named
//! by the token's `kid`, its `iss` is the issuer, its `aud` names one of the
//! audiences, `exp` is in the future and `nbf` (if any) in the past (with
//! the configured leeway), and, if the authorizer names a tenant claim,
//! that claim is a string that is a valid tenant id.
//!
//! The JWKS is cached by `kid`. A token with an unknown `kid` makes the
//! cache refresh, at most once per `refresh interval` (60 s in production),
//! so forged `kid`s cannot make the daemon hammer the issuer. Keys are
//! refreshed after [`STALE_AFTER`], and dropped (every token refused) if no
//! fetch has succeeded for [`DROP_AFTER`]: a JWKS that cannot be read fails
//! closed. An `https://` JWKS whose server certificate does not verify
//! (see [`super::jwks_tls`]) is a JWKS that cannot be read.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use silo_scheduler::TenantId;

use super::config::AuthorizerConfig;

/// Keys older than this are refreshed on the next token (at most once per
/// refresh interval).
pub const STALE_AFTER: Duration = Duration::from_secs(300);
/// Keys not confirmed by a successful fetch for this long are dropped.
pub const DROP_AFTER: Duration = Duration::from_secs(3600);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: u64 = 256 * 1024;
/// A JWKS fetch must finish this soon.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request is refused (API Gateway's answers: 401 `Unauthorized`,
/// 403 `Forbidden`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No usable, valid token: 401.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A valid token without the scopes or the tenant the route needs: 403.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
}

/// What a verified token grants.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The token's claims (for `requestContext.authorizer.jwt.claims`).
    pub claims: Map<String, Value>,
    /// Its scopes (`scope`, space-separated, or `scp`).
    pub scopes: Vec<String>,
    /// The tenant named by the authorizer's tenant claim, if it has one.
    pub tenant: Option<TenantId>,
}

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Last successful fetch.
    fetched: Option<Instant>,
    /// Last fetch attempt (successful or not).
    attempted: Option<Instant>,
}

impl Keys {
    /// After a failed fetch: drops the keys if no fetch has confirmed them
    /// for [`DROP_AFTER`].
    fn fail_closed(&mut self, authorizer: &str) {
        if self.fetched.is_none_or(|t| t.elapsed() >= DROP_AFTER) && !self.by_kid.is_empty() {
            tracing::error!(authorizer = %authorizer, "JWKS keys expired: refusing every token until a fetch succeeds");
            self.by_kid.clear();
        }
    }
}

/// One authorizer and its key cache.
pub struct Authorizer {
    name: String,
    cfg: AuthorizerConfig,
    refresh_interval: Duration,
    keys: RwLock<Keys>,
    /// Held by the one refresh in progress.
    refreshing: tokio::sync::Mutex<()>,
}

/// Errors reading a JWKS (logged, never shown to callers).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The URL or file could not be read.
    #[error("reading the JWKS: {0}")]
    Read(String),
    /// Not a JWKS.
    #[error("parsing the JWKS: {0}")]
    Parse(String),
    /// The https server's certificate (or the TLS handshake) was refused.
    #[error("TLS to the JWKS server refused: {0}")]
    Tls(String),
}

impl Authorizer {
    /// An authorizer whose keys are fetched on first use; an unknown `kid`
    /// refreshes them at most once per `refresh_interval`.
    pub fn new(name: &str, cfg: AuthorizerConfig, refresh_interval: Duration) -> Self {
        Self {
            name: name.to_string(),
            cfg,
            refresh_interval,
            keys: RwLock::new(Keys {
                by_kid: HashMap::new(),
                fetched: None,
                attempted: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this authorizer names tenants.
    pub fn names_tenants(&self) -> bool {
        self.cfg.tenant_claim.is_some()
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.read_keys().by_kid.get(kid).cloned()
    }

    /// Verifies the token of an `Authorization` header value (`Bearer
    /// <token>`, or the token alone, as API Gateway accepts).
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Verified, Denied> {
        let token = authorization
            .map(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
                    .unwrap_or(h)
                    .trim()
            })
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthorized("no token"))?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Denied::Unauthorized("bad header"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Denied::Unauthorized("algorithm not allowed"));
        }
        if header.crit.is_some() {
            return Err(Denied::Unauthorized("critical header extensions"));
        }
        let kid = header.kid.ok_or(Denied::Unauthorized("no kid"))?;
        self.refresh_if_stale().await;
        let (key, alg) = match self.key(&kid) {
            Some(k) => k,
            None => {
                self.refresh(true).await;
                self.key(&kid).ok_or(Denied::Unauthorized("unknown kid"))?
            }
        };
        if alg != header.alg {
            return Err(Denied::Unauthorized("algorithm does not match the key"));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.cfg.leeway_s;
        v.validate_nbf = true;
        v.validate_exp = true;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            tracing::debug!(authorizer = %self.name, error = %e, "token refused");
            Denied::Unauthorized("invalid token")
        })?;
        let claims = data.claims;
        let tenant = match &self.cfg.tenant_claim {
            None => None,
            Some(c) => match claims.get(c) {
                Some(Value::String(t)) => Some(
                    TenantId::parse(t).map_err(|_| Denied::Forbidden("tenant claim is invalid"))?,
                ),
                _ => return Err(Denied::Forbidden("no tenant claim")),
            },
        };
        let scopes = scopes(&claims);
        Ok(Verified {
            claims,
            scopes,
            tenant,
        })
    }

    async fn refresh_if_stale(&self) {
        let stale = match self.read_keys().fetched {
            None => true,
            Some(t) => t.elapsed() >= STALE_AFTER,
        };
        if stale {
            self.refresh(false).await;
        }
    }

    /// Fetches the JWKS again unless one was attempted within the refresh
    /// interval (`forced`: an unknown `kid` asks).
    async fn refresh(&self, forced: bool) {
        let _one = self.refreshing.lock().await;
        {
            let k = self.read_keys();
            if let Some(t) = k.attempted {
                if t.elapsed() < self.refresh_interval {
                    return;
                }
            }
            if !forced && k.fetched.is_some_and(|t| t.elapsed() < STALE_AFTER) {
                return;
            }
        }
        let result = self.fetch().await;
        let mut k = self.keys.write().unwrap_or_else(|p| p.into_inner());
        k.attempted = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::info!(authorizer = %self.name, keys = keys.len(), "JWKS loaded");
                k.by_kid = keys;
                k.fetched = Some(Instant::now());
            }
            Err(e @ JwksError::Tls(_)) => {
                tracing::error!(authorizer = %self.name, error = %e, "JWKS refresh failed: TLS refused, the JWKS server is not trusted");
                k.fail_closed(&self.name);
            }
            Err(e) => {
                tracing::warn!(authorizer = %self.name, error = %e, "JWKS refresh failed");
                k.fail_closed(&self.name);
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, JwksError> {
        let bytes = match (&self.cfg.jwks_url, &self.cfg.jwks_file) {
            (Some(url), _) => {
                let url = url.clone();
                let ca = self.cfg.jwks_ca_file.clone();
                tokio::task::spawn_blocking(move || fetch_url(&url, ca.as_deref()))
                    .await
                    .map_err(|e| JwksError::Read(e.to_string()))??
            }
            (None, Some(path)) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let f = std::fs::File::open(&path)
                        .map_err(|e| JwksError::Read(format!("{}: {e}", path.display())))?;
                    let mut b = Vec::new();
                    f.take(MAX_JWKS_BYTES + 1)
                        .read_to_end(&mut b)
                        .map_err(|e| JwksError::Read(format!("{}: {e}", path.display())))?;
                    Ok::<_, JwksError>(b)
                })
                .await
                .map_err(|e| JwksError::Read(e.to_string()))??
            }
            (None, None) => return Err(JwksError::Read("no jwks_url or jwks_file".into())),
        };
        if bytes.len() as u64 > MAX_JWKS_BYTES {
            return Err(JwksError::Read(format!(
                "larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        parse_jwks(&bytes)
    }
}

/// Reads the JWKS at `url`; over https, the server's certificate is
/// verified against `ca_file`'s CAs if given, else the public web roots.
fn fetch_url(url: &str, ca_file: Option<&std::path::Path>) -> Result<Vec<u8>, JwksError> {
    use std::io::Read;
    let tls = super::jwks_tls::client_config(ca_file).map_err(|e| JwksError::Tls(e.to_string()))?;
    let agent = ureq::AgentBuilder::new()
        .timeout(FETCH_TIMEOUT)
        .redirects(0)
        .tls_config(tls)
        .build();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| match super::jwks_tls::tls_cause(&e) {
            Some(cause) => JwksError::Tls(format!("{url}: {cause}")),
            None => JwksError::Read(e.to_string()),
        })?;
    let mut b = Vec::new();
    resp.into_reader()
        .take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut b)
        .map_err(|e| JwksError::Read(e.to_string()))?;
    Ok(b)
}

/// The signing keys of a JWKS by `kid`: RSA keys for RS256 and P-256 keys
/// for ES256; keys without a `kid`, for encryption, or of other types or
/// algorithms are left out.
pub fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, (DecodingKey, Algorithm)>, JwksError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| JwksError::Parse(e.to_string()))?;
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(k) => {
                out.insert(kid, (k, alg));
            }
            Err(e) => tracing::warn!(kid = ?kid, error = %e, "skipping a JWKS key"),
        }
    }
    Ok(out)
}

/// The token's scopes: `scope` (space-separated) or `scp` (a list or a
/// space-separated string).
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let from = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    claims
        .get("scope")
        .or_else(|| claims.get("scp"))
        .map(from)
        .unwrap_or_default()
}
