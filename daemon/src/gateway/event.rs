//! API Gateway's HTTP API payload format 2.0: the event a function behind a
//! route receives ([`request_event`]) and how its result becomes the HTTP
//! response ([`map_response`]), as API Gateway does both.
//!
//! The event is built here rather than with the `aws_lambda_events` types:
//! their serialization adds fields API Gateway never sends (`httpMethod`,
//! `type`, `methodArn`...), and the response shorthand (a plain string or
//! an object without `statusCode`) is API Gateway's inference, not a type.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use base64::Engine;
use serde_json::{json, Map, Value};

/// Header names the function never sees from the client: the tenant is the
/// verified token's, never a header (any case: header names arrive
/// lower-cased), and API Gateway reserves `x-amzn-`. A header is dropped if
/// its name starts with one of these or contains `tenant`.
const STRIPPED_PREFIXES: [&str; 4] = ["x-amz-", "x-amzn-", "lambda-runtime-", "x-silo-"];

/// Whether the client's header `name` (lower case) is removed before the
/// function sees the request.
pub fn stripped(name: &str) -> bool {
    STRIPPED_PREFIXES.iter().any(|p| name.starts_with(p)) || name.contains("tenant")
}

/// What the event is made of.
pub struct RequestParts<'a> {
    /// The route's key as configured (`ANY /orders/{proxy+}`).
    pub route_key: &'a str,
    /// Method, upper case.
    pub method: &'a str,
    /// The path as sent.
    pub raw_path: &'a str,
    /// The query string as sent (no `?`).
    pub raw_query: &'a str,
    /// The client's headers.
    pub headers: &'a HeaderMap,
    /// `{param}` values.
    pub path_parameters: &'a BTreeMap<String, String>,
    /// The client's address.
    pub source_ip: String,
    /// The verified token's claims and scopes, if the route has an authorizer.
    pub jwt: Option<(&'a Map<String, Value>, &'a [String])>,
    /// This request's id.
    pub request_id: &'a str,
    /// The account id of the daemon's ARNs.
    pub account_id: &'a str,
    /// Now, in milliseconds since the epoch.
    pub now_ms: u64,
    /// The body.
    pub body: &'a [u8],
}

/// API Gateway's `requestContext.time`: `07/Dec/2026:14:03:58 +0000`.
fn clf_time(now_ms: u64) -> String {
    let d = silo_aws::date::format_amz_date((now_ms / 1000) as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = d[4..6].parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{}/{}/{}:{}:{}:{} +0000",
        &d[6..8],
        MONTHS[month - 1],
        &d[0..4],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
}

/// Whether a body of this content type is passed as text (when it is
/// UTF-8); anything else is base64 (`isBase64Encoded`).
fn textual(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.ends_with("/json")
        || ct.ends_with("+json")
        || ct.ends_with("/xml")
        || ct.ends_with("+xml")
        || ct == "application/javascript"
        || ct == "application/x-www-form-urlencoded"
}

/// A claim's value as API Gateway passes it: strings as they are, other
/// values as JSON text.
fn claim_text(v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        other => Value::String(other.to_string()),
    }
}

/// The payload format 2.0 event of a request.
pub fn request_event(p: &RequestParts<'_>) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in p.headers {
        let n = name.as_str();
        if stripped(n) {
            continue;
        }
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if n == "cookie" {
            cookies.extend(
                v.split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
            );
            continue;
        }
        headers
            .entry(n.to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    headers.insert("x-forwarded-for".into(), p.source_ip.clone());
    headers.insert("x-forwarded-proto".into(), "http".into());
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(p.raw_query.as_bytes()) {
        query
            .entry(k.into_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let host = headers.get("host").cloned().unwrap_or_default();
    let mut ctx = json!({
        "accountId": p.account_id,
        "apiId": "silo",
        "domainName": host,
        "domainPrefix": host.split('.').next().unwrap_or(""),
        "http": {
            "method": p.method,
            "path": p.raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": p.source_ip,
            "userAgent": headers.get("user-agent").cloned().unwrap_or_default(),
        },
        "requestId": p.request_id,
        "routeKey": p.route_key,
        "stage": "$default",
        "time": clf_time(p.now_ms),
        "timeEpoch": p.now_ms,
    });
    if let Some((claims, scopes)) = p.jwt {
        let claims: Map<String, Value> = claims
            .iter()
            .map(|(k, v)| (k.clone(), claim_text(v)))
            .collect();
        ctx["authorizer"] = json!({ "jwt": {
            "claims": claims,
            "scopes": if scopes.is_empty() { Value::Null } else { json!(scopes) },
        }});
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": p.route_key,
        "rawPath": p.raw_path,
        "rawQueryString": p.raw_query,
        "headers": headers,
        "requestContext": ctx,
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = json!(query);
    }
    if !p.path_parameters.is_empty() {
        event["pathParameters"] = json!(p.path_parameters);
    }
    if !p.body.is_empty() {
        let ct = p.headers.get("content-type").and_then(|v| v.to_str().ok());
        match std::str::from_utf8(p.body) {
            Ok(text) if textual(ct) => event["body"] = json!(text),
            _ => {
                event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(p.body));
                event["isBase64Encoded"] = json!(true);
            }
        }
    }
    event
}

/// A function result API Gateway cannot map (its 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Lambda proxy response: {0}")]
pub struct Malformed(pub &'static str);

/// The HTTP response of a function's result, as API Gateway maps format
/// 2.0: an object with `statusCode` gives status, `headers`, `cookies`
/// (one `Set-Cookie` each) and `body` (base64-decoded if
/// `isBase64Encoded`); any other JSON (a string, an object without
/// `statusCode`...) is a 200 `application/json` whose body is the string,
/// or the JSON text of anything else.
pub fn map_response(result: &[u8]) -> Result<(StatusCode, HeaderMap, Vec<u8>), Malformed> {
    let v: Value = serde_json::from_slice(result).map_err(|_| Malformed("not JSON"))?;
    let json_ct = || {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h
    };
    let obj = match v {
        Value::Object(o) if o.contains_key("statusCode") => o,
        Value::String(s) => return Ok((StatusCode::OK, json_ct(), s.into_bytes())),
        other => return Ok((StatusCode::OK, json_ct(), other.to_string().into_bytes())),
    };
    let status = obj
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| (100..=599).contains(&s.as_u16()))
        .ok_or(Malformed("statusCode is not an HTTP status"))?;
    let mut headers = HeaderMap::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(Malformed("a header value is not a string")),
                };
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| Malformed("a header name is not valid"))?;
                if matches!(
                    name.as_str(),
                    "content-length"
                        | "transfer-encoding"
                        | "connection"
                        | "keep-alive"
                        | "upgrade"
                ) {
                    continue;
                }
                let value = HeaderValue::from_str(&text)
                    .map_err(|_| Malformed("a header value is not valid"))?;
                headers.append(name, value);
            }
        }
        Some(_) => return Err(Malformed("headers is not an object")),
    }
    match obj.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(c)) => {
            for cookie in c {
                let s = cookie
                    .as_str()
                    .ok_or(Malformed("a cookie is not a string"))?;
                let value =
                    HeaderValue::from_str(s).map_err(|_| Malformed("a cookie is not valid"))?;
                headers.append("set-cookie", value);
            }
        }
        Some(_) => return Err(Malformed("cookies is not a list")),
    }
    let base64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Malformed("isBase64Encoded is not a boolean")),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if base64 => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| Malformed("body is not base64"))?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(_) => return Err(Malformed("body is not a string")),
    };
    Ok((status, headers, body))
}

#[cfg(test)]
mod tests;
