//! `[gateway]` in the daemon's configuration: the HTTP front door's address,
//! its per-tenant rate limits and its JWT authorizers.
//!
//! ```toml
//! [gateway]
//! listen = "0.0.0.0:8080"   # unset: no gateway listener
//! tenant_rps = 50           # requests per second per tenant (sustained)
//! tenant_burst = 100        # requests a tenant may send at once
//! jwks_refresh_interval_s = 60 # an unknown kid refetches a JWKS at most
//!                           # this often
//!
//! [gateway.authorizers.main]
//! issuer = "https://id.example.com/"
//! audiences = ["orders-api"]
//! jwks_url = "https://id.example.com/.well-known/jwks.json"  # or jwks_file
//! # jwks_ca_file = "/etc/silo/id-ca.pem" # trust only this CA (PEM) for the
//! #                         # JWKS's TLS; unset: the public web roots
//! # allow_http_jwks = true  # only to accept a plain http:// jwks_url
//! tenant_claim = "tenant_id"   # the claim naming the tenant
//! leeway_s = 30                # clock skew allowed on exp/nbf
//! ```
//!
//! Authorizers live only here (the operator's file), never in the routes
//! API: a JWKS URL or file is something the daemon fetches or reads, which
//! an API caller should not choose.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address of the gateway listener; unset: no gateway.
    pub listen: Option<SocketAddr>,
    /// Sustained requests per second one tenant may send through the
    /// gateway (all routes together); 0: no limit.
    pub tenant_rps: u32,
    /// Requests one tenant may send at once above the sustained rate.
    pub tenant_burst: u32,
    /// A token with an unknown `kid` refetches its authorizer's JWKS at
    /// most once per this many seconds.
    pub jwks_refresh_interval_s: u64,
    /// JWT authorizers by name, referenced by routes.
    pub authorizers: BTreeMap<String, AuthorizerConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tenant_rps: 50,
            tenant_burst: 100,
            jwks_refresh_interval_s: 60,
            authorizers: BTreeMap::new(),
        }
    }
}

/// One JWT authorizer (as API Gateway's: issuer, audiences, keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizerConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// Tokens must carry one of these in `aud`.
    pub audiences: Vec<String>,
    /// Where the issuer's JWKS is fetched: `https://` (the server's
    /// certificate verified against the public web roots, or
    /// `jwks_ca_file`), or `http://` only with `allow_http_jwks`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// CA certificates (PEM) that alone are trusted for the `https://`
    /// JWKS's certificate (a private CA); unset: the public web roots.
    /// Read again on every fetch.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Accept a plain `http://` `jwks_url`: whoever is on the network path
    /// can then replace the keys and mint tokens for every tenant.
    #[serde(default)]
    pub allow_http_jwks: bool,
    /// Or a JWKS file on this host (read again on refresh).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The claim naming the tenant (a string matching Lambda's tenant-id
    /// pattern); unset: the authorizer names no tenant, and may only guard
    /// routes to functions without tenant isolation.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_leeway() -> u64 {
    30
}

/// Largest `leeway_s`.
pub const MAX_LEEWAY_S: u64 = 300;

impl GatewayConfig {
    /// Checks what the types cannot; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.tenant_rps > 0 && self.tenant_burst == 0 {
            return Err("gateway.tenant_burst must be at least 1 when tenant_rps is set".into());
        }
        if !(1..=3600).contains(&self.jwks_refresh_interval_s) {
            return Err("gateway.jwks_refresh_interval_s must be between 1 and 3600".into());
        }
        for (name, a) in &self.authorizers {
            let at = |m: &str| format!("gateway.authorizers.{name}: {m}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(at("the name must be letters, digits, - or _"));
            }
            if a.issuer.is_empty() {
                return Err(at("issuer must not be empty"));
            }
            if a.audiences.is_empty() || a.audiences.iter().any(|x| x.is_empty()) {
                return Err(at("audiences must name at least one audience"));
            }
            match (&a.jwks_url, &a.jwks_file) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(at("set exactly one of jwks_url and jwks_file"))
                }
                (Some(u), None) if !u.starts_with("http://") && !u.starts_with("https://") => {
                    return Err(at("jwks_url must be an http:// or https:// URL"))
                }
                (Some(u), None) if u.starts_with("http://") && !a.allow_http_jwks => {
                    return Err(at(
                        "jwks_url is plain http://, which lets anyone on the network path replace the keys and mint tokens for any tenant: use https://, or set allow_http_jwks = true on a network you trust",
                    ))
                }
                _ => {}
            }
            if let Some(ca) = &a.jwks_ca_file {
                if !a
                    .jwks_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
                {
                    return Err(at("jwks_ca_file needs an https:// jwks_url"));
                }
                super::jwks_tls::client_config(Some(ca)).map_err(|e| at(&e.to_string()))?;
            }
            if a.tenant_claim.as_deref() == Some("") {
                return Err(at("tenant_claim must not be empty"));
            }
            if a.leeway_s > MAX_LEEWAY_S {
                return Err(at(&format!("leeway_s must be at most {MAX_LEEWAY_S}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_mistakes() {
        let c: GatewayConfig = toml::from_str("").unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.validate(), Ok(()));
        let ok = "[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_file = \"/x\"\ntenant_claim = \"t\"\n";
        let c: GatewayConfig = toml::from_str(ok).unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.authorizers["main"].leeway_s, 30);
        for (bad, what) in [
            ("[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\n", "exactly one"),
            ("[authorizers.main]\nissuer = \"i\"\naudiences = []\njwks_file = \"/x\"\n", "audiences"),
            ("[authorizers.main]\nissuer = \"\"\naudiences = [\"a\"]\njwks_file = \"/x\"\n", "issuer"),
            ("[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"file:///x\"\n", "http"),
            ("[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_file = \"/x\"\nleeway_s = 3600\n", "leeway_s"),
            ("tenant_rps = 5\ntenant_burst = 0\n", "tenant_burst"),
            ("[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"http://id/jwks\"\n", "allow_http_jwks = true"),
            ("[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_file = \"/x\"\njwks_ca_file = \"/ca.pem\"\n", "needs an https://"),
            ("[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"https://id/jwks\"\njwks_ca_file = \"/nonexistent/ca.pem\"\n", "/nonexistent/ca.pem"),
        ] {
            let c: GatewayConfig = toml::from_str(bad).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
        assert!(toml::from_str::<GatewayConfig>("lisen = \"x\"").is_err());
        for ok in [
            "[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"https://id/jwks\"\n",
            "[authorizers.main]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"http://id/jwks\"\nallow_http_jwks = true\n",
        ] {
            let c: GatewayConfig = toml::from_str(ok).unwrap();
            assert_eq!(c.validate(), Ok(()), "{ok}");
        }
    }
}
