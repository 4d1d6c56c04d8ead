//! A route's CORS: the answer to a browser's preflight (`OPTIONS` with
//! `Origin` and `Access-Control-Request-Method`), given by the gateway
//! without authorization as API Gateway does, and the headers added to the
//! route's responses.

use axum::http::{HeaderMap, HeaderValue};

use super::routes::Cors;

fn allowed(list: &[String], item: &str) -> bool {
    list.iter()
        .any(|x| x == "*" || x.eq_ignore_ascii_case(item))
}

/// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
fn allow_origin(cors: &Cors, origin: &str) -> Option<HeaderValue> {
    if cors.allow_origins.iter().any(|o| o == origin) {
        return HeaderValue::from_str(origin).ok();
    }
    if cors.allow_origins.iter().any(|o| o == "*") {
        // With credentials a browser refuses `*`: name the origin.
        return if cors.allow_credentials {
            HeaderValue::from_str(origin).ok()
        } else {
            Some(HeaderValue::from_static("*"))
        };
    }
    None
}

/// The headers answering a preflight from `origin` for `method` with
/// `request_headers`; empty if the origin or method is not allowed.
pub fn preflight(
    cors: &Cors,
    origin: &str,
    method: &str,
    request_headers: Option<&str>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    let Some(o) = allow_origin(cors, origin) else {
        return h;
    };
    if !allowed(&cors.allow_methods, method) {
        return h;
    }
    h.insert("access-control-allow-origin", o);
    let methods = if cors.allow_methods.iter().any(|m| m == "*") {
        method.to_string()
    } else {
        cors.allow_methods.join(",")
    };
    if let Ok(v) = HeaderValue::from_str(&methods) {
        h.insert("access-control-allow-methods", v);
    }
    let headers = if cors.allow_headers.iter().any(|x| x == "*") {
        request_headers.unwrap_or("").to_string()
    } else {
        cors.allow_headers.join(",")
    };
    if !headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&headers) {
            h.insert("access-control-allow-headers", v);
        }
    }
    if let Some(age) = cors.max_age {
        h.insert("access-control-max-age", HeaderValue::from(age));
    }
    if cors.allow_credentials {
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
    }
    if !origin_is_star(&h) {
        h.insert("vary", HeaderValue::from_static("Origin"));
    }
    h
}

fn origin_is_star(h: &HeaderMap) -> bool {
    h.get("access-control-allow-origin")
        .is_some_and(|v| v == "*")
}

/// Sets the CORS headers of a response to a request from `origin` (they
/// replace any the function set, as API Gateway's do).
pub fn decorate(cors: &Cors, origin: Option<&str>, h: &mut HeaderMap) {
    for n in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
    ] {
        h.remove(n);
    }
    let Some(o) = origin.and_then(|o| allow_origin(cors, o)) else {
        return;
    };
    let star = o == "*";
    h.insert("access-control-allow-origin", o);
    if !cors.expose_headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(",")) {
            h.insert("access-control-expose-headers", v);
        }
    }
    if cors.allow_credentials {
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
    }
    if !star {
        h.append("vary", HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allow_origins: vec!["https://app.example".into()],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["authorization".into(), "content-type".into()],
            expose_headers: vec!["x-request".into()],
            max_age: Some(600),
            allow_credentials: true,
        }
    }

    #[test]
    fn preflights_and_responses() {
        let h = preflight(
            &cors(),
            "https://app.example",
            "POST",
            Some("authorization"),
        );
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(
            h["access-control-allow-headers"],
            "authorization,content-type"
        );
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(preflight(&cors(), "https://evil.example", "POST", None).is_empty());
        assert!(preflight(&cors(), "https://app.example", "DELETE", None).is_empty());
        let mut r = HeaderMap::new();
        r.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        decorate(&cors(), Some("https://evil.example"), &mut r);
        assert!(
            r.get("access-control-allow-origin").is_none(),
            "the function's * is replaced"
        );
        decorate(&cors(), Some("https://app.example"), &mut r);
        assert_eq!(r["access-control-allow-origin"], "https://app.example");
        assert_eq!(r["access-control-expose-headers"], "x-request");
    }
}
