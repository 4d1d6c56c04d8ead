//! Routes: `METHOD /path` keys with API Gateway's path patterns (`{param}`,
//! a last `{proxy+}` taking the rest of the path, `ANY`, `$default`), each
//! to a function, with an optional JWT authorizer, required scopes and
//! CORS. Kept in `<data_dir>/gateway/routes.json` (written as the store
//! writes records: temporary file, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One segment of a route's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches itself.
    Literal(String),
    /// `{name}`: one segment.
    Param(String),
    /// `{name+}`: this segment and every one after (last only).
    Greedy(String),
}

/// A parsed route key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKey {
    /// `ANY` matches every method; `None`: `$default` (every request).
    method: Option<String>,
    segments: Vec<Segment>,
}

/// Why a route key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RouteKey {key:?}: {reason}")]
pub struct BadRouteKey {
    key: String,
    reason: &'static str,
}

const METHODS: [&str; 8] = [
    "ANY", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
];

impl RouteKey {
    /// Parses `METHOD /path/{param}/{proxy+}` or `$default`.
    pub fn parse(key: &str) -> Result<Self, BadRouteKey> {
        let bad = |reason| BadRouteKey {
            key: key.chars().take(256).collect(),
            reason,
        };
        if key == "$default" {
            return Ok(Self {
                method: None,
                segments: Vec::new(),
            });
        }
        let (method, path) = key
            .split_once(' ')
            .ok_or_else(|| bad("expected \"METHOD /path\" or \"$default\""))?;
        if !METHODS.contains(&method) {
            return Err(bad(
                "the method must be ANY, GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS",
            ));
        }
        if !path.starts_with('/') || path.len() > 1024 {
            return Err(bad("the path must start with / (at most 1024 characters)"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = path[1..].split('/').collect();
        let mut names = std::collections::HashSet::new();
        for (i, s) in parts.iter().enumerate() {
            if s.is_empty() {
                if parts.len() == 1 {
                    break; // "/" alone
                }
                return Err(bad("empty path segment"));
            }
            let seg = if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let (name, greedy) = match inner.strip_suffix('+') {
                    Some(n) => (n, true),
                    None => (inner, false),
                };
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(bad(
                        "a parameter is {name} or {name+}, letters, digits, _ or -",
                    ));
                }
                if !names.insert(name.to_string()) {
                    return Err(bad("a parameter name appears twice"));
                }
                if greedy {
                    if i + 1 != parts.len() {
                        return Err(bad("a greedy {name+} parameter must be the last segment"));
                    }
                    Segment::Greedy(name.into())
                } else {
                    Segment::Param(name.into())
                }
            } else {
                if s.contains(['{', '}']) {
                    return Err(bad("braces only around a whole segment"));
                }
                Segment::Literal((*s).into())
            };
            segments.push(seg);
        }
        Ok(Self {
            method: Some(method.into()),
            segments,
        })
    }

    /// If this key matches `method` and `path` (raw, as sent), its path
    /// parameters (percent-decoded).
    pub fn matches(&self, method: &str, path: &str) -> Option<BTreeMap<String, String>> {
        let Some(m) = &self.method else {
            return Some(BTreeMap::new());
        };
        if m != "ANY" && m != method {
            return None;
        }
        let path = path.strip_prefix('/')?;
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let mut params = BTreeMap::new();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
                Segment::Param(n) => {
                    let p = parts.get(i).filter(|p| !p.is_empty())?;
                    params.insert(n.clone(), decode(p));
                }
                Segment::Greedy(n) => {
                    let rest = parts.get(i..).filter(|r| !r.is_empty())?.join("/");
                    if rest.is_empty() {
                        return None;
                    }
                    params.insert(n.clone(), decode(&rest));
                    return Some(params);
                }
            }
        }
        (parts.len() == self.segments.len()).then_some(params)
    }

    /// Orders matching keys as API Gateway prefers them (higher first): a
    /// full match over a greedy `{proxy+}` one, then more literal segments,
    /// then more segments, then a named method over `ANY`; `$default` last.
    pub fn priority(&self) -> (bool, bool, usize, usize, bool) {
        let Some(m) = &self.method else {
            return (false, false, 0, 0, false);
        };
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let greedy = self
            .segments
            .iter()
            .any(|s| matches!(s, Segment::Greedy(_)));
        (true, !greedy, literals, self.segments.len(), m != "ANY")
    }

    /// Whether the path part (any method) matches: preflights look for a
    /// route of the path.
    pub fn matches_path(&self, path: &str) -> bool {
        let any = Self {
            method: self.method.as_ref().map(|_| "ANY".to_string()),
            segments: self.segments.clone(),
        };
        any.matches("GET", path).is_some()
    }

    /// The key's method (`ANY`, `GET`...), `None` for `$default`.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }
}

/// CORS of a route, as API Gateway's `CorsConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed (`*` for any).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods allowed in preflights (`*` for any).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflights (`*` for any).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight's answer may be cached.
    #[serde(default)]
    pub max_age: Option<u32>,
    /// `Access-Control-Allow-Credentials: true`.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// One route as stored and as the routes API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteRecord {
    /// The route's name (the API path's `{route}`).
    pub route_id: String,
    /// `METHOD /path` or `$default`.
    pub route_key: String,
    /// The function invoked.
    pub function_name: String,
    /// The `[gateway.authorizers]` entry guarding it, if any.
    #[serde(default)]
    pub authorizer: Option<String>,
    /// Scopes a token must carry (any one of them), as API Gateway's
    /// `AuthorizationScopes`.
    #[serde(default)]
    pub authorization_scopes: Vec<String>,
    /// CORS, if any.
    #[serde(default)]
    pub cors: Option<Cors>,
}

/// Errors keeping routes.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read, written or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The routes file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The routes file under `data_dir`.
pub fn routes_path(data_dir: &Path) -> PathBuf {
    data_dir.join("gateway").join("routes.json")
}

/// Reads the stored routes (none if the file does not exist).
pub fn load(data_dir: &Path) -> Result<Vec<RouteRecord>, RoutesError> {
    let path = routes_path(data_dir);
    let err = |reason: String| RoutesError::File {
        path: path.clone(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes every route, atomically and durably.
pub fn save(data_dir: &Path, routes: &[RouteRecord]) -> Result<(), RoutesError> {
    let path = routes_path(data_dir);
    let err = |reason: String| RoutesError::File {
        path: path.clone(),
        reason,
    };
    let dir = path.parent().expect("routes file has a parent");
    crate::store::private_dir(dir).map_err(|e| err(e.to_string()))?;
    let data = serde_json::to_vec_pretty(routes).map_err(|e| err(e.to_string()))?;
    crate::store::write_atomic(&path, &data).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(key: &str, method: &str, path: &str) -> Option<Vec<(String, String)>> {
        RouteKey::parse(key)
            .unwrap()
            .matches(method, path)
            .map(|m| m.into_iter().collect())
    }

    #[test]
    fn keys_match_as_api_gateway() {
        let p = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            params("ANY /orders/{proxy+}", "POST", "/orders/1/items"),
            Some(vec![p("proxy", "1/items")])
        );
        assert_eq!(params("ANY /orders/{proxy+}", "GET", "/orders"), None);
        assert_eq!(params("ANY /orders/{proxy+}", "GET", "/orders/"), None);
        assert_eq!(
            params("GET /pets/{id}", "GET", "/pets/a%20b"),
            Some(vec![p("id", "a b")])
        );
        assert_eq!(params("GET /pets/{id}", "POST", "/pets/1"), None);
        assert_eq!(params("GET /pets/{id}", "GET", "/pets/1/x"), None);
        assert_eq!(params("GET /pets/{id}", "GET", "/pets"), None);
        assert_eq!(params("GET /", "GET", "/"), Some(vec![]));
        assert_eq!(params("GET /", "GET", "/x"), None);
        assert_eq!(params("$default", "PATCH", "/any/thing"), Some(vec![]));
        for bad in [
            "GET pets",
            "FETCH /x",
            "GET /{a+}/b",
            "GET /a//b",
            "GET /{a}/{a}",
            "GET /x{a}",
            "GET",
        ] {
            assert!(RouteKey::parse(bad).is_err(), "{bad}");
        }
        let k = |s| RouteKey::parse(s).unwrap().priority();
        assert!(k("GET /pets/dog") > k("GET /pets/{id}"));
        assert!(k("GET /pets/{id}") > k("ANY /pets/{id}"));
        assert!(k("ANY /pets/{id}") > k("ANY /{proxy+}"));
        assert!(k("ANY /{proxy+}") > k("$default"));
        assert!(k("ANY /pets/dog") > k("GET /pets/{proxy+}"));
    }
}
