//! AWS Signature Version 4: signing (the CLI helpers) and verification (the
//! daemon), for `AWS4-HMAC-SHA256` requests authenticated by header.
//!
//! Both sides build the canonical request the same way; verification
//! recomputes the signature with the secret of the access key named in the
//! `Authorization` header and compares in constant time.
//!
//! What a valid signature binds: the method, the path, the query, the
//! headers listed in `SignedHeaders` (which must include [`ALWAYS_SIGNED`]
//! and every header of [`SIGNED_IF_PRESENT`] the request carries) and the
//! SHA-256 of the body, always computed from the body received. An
//! `x-amz-content-sha256` header, when sent, must be that hash:
//! `UNSIGNED-PAYLOAD` and streaming payloads are refused.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::date::{format_amz_date, parse_amz_date_bytes};

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm supported.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Signatures older or newer than this are refused (as AWS: 15 minutes).
pub const MAX_SKEW_SECS: i64 = 15 * 60;
/// Headers every signature must cover.
pub const ALWAYS_SIGNED: [&str; 2] = ["host", "x-amz-date"];
/// Headers a signature must cover whenever the request carries them: the
/// ones that change what the daemon does (who is invoked as, how, and
/// whether logs are returned).
pub const SIGNED_IF_PRESENT: [&str; 3] =
    ["x-amz-tenant-id", "x-amz-invocation-type", "x-amz-log-type"];
/// The header carrying the client's SHA-256 of the body.
pub const CONTENT_SHA256: &str = "x-amz-content-sha256";

/// A request as seen on the wire.
pub struct SignedParts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The path exactly as sent (percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// Header (lower-case name, value) pairs; names may repeat.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// The fields of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Access key id.
    pub access_key: String,
    /// `yyyymmdd` of the scope.
    pub date: String,
    /// Region of the scope.
    pub region: String,
    /// Service of the scope.
    pub service: String,
    /// Signed header names, lower-case, as listed.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

/// Why a request's signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigV4Error {
    /// The Authorization header is not a SigV4 header.
    #[error("the Authorization header is not a valid AWS4-HMAC-SHA256 header: {0}")]
    Malformed(String),
    /// `X-Amz-Date` missing or unreadable.
    #[error("the request has no valid X-Amz-Date header (yyyymmddThhmmssZ)")]
    BadDate,
    /// Signed too long ago or in the future.
    #[error("Signature expired: the request was signed at {0}, more than 15 minutes from the server's time")]
    Expired(String),
    /// A header listed as signed is absent.
    #[error("the signed header {0:?} is not in the request")]
    MissingSignedHeader(String),
    /// A header that must be signed is not in `SignedHeaders`.
    #[error("the header {0} must be signed: list it in SignedHeaders")]
    UnsignedHeader(String),
    /// `x-amz-content-sha256: UNSIGNED-PAYLOAD` (or a streaming payload).
    #[error("x-amz-content-sha256 {0:?} is not accepted: UNSIGNED-PAYLOAD and streaming payloads are refused; sign the SHA-256 of the body")]
    UnsignedPayload(String),
    /// `x-amz-content-sha256` is not the SHA-256 of the body.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,
    /// The signature does not match.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")]
    Mismatch,
}

/// Parses an `Authorization` header value.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigV4Error> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| SigV4Error::Malformed(format!("algorithm is not {ALGORITHM}")))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential =
        credential.ok_or_else(|| SigV4Error::Malformed("no Credential=".to_string()))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(SigV4Error::Malformed(format!(
            "credential {credential:?} is not <key>/<date>/<region>/<service>/aws4_request"
        )));
    }
    let signed = signed.ok_or_else(|| SigV4Error::Malformed("no SignedHeaders=".into()))?;
    let signature = signature.ok_or_else(|| SigV4Error::Malformed("no Signature=".into()))?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigV4Error::Malformed(
            "Signature is not 64 hex digits".into(),
        ));
    }
    Ok(Authorization {
        access_key: scope[0].to_string(),
        date: scope[1].to_string(),
        region: scope[2].to_string(),
        service: scope[3].to_string(),
        signed_headers: signed.split(';').map(|h| h.to_ascii_lowercase()).collect(),
        signature: signature.to_ascii_lowercase(),
    })
}

/// Percent-encodes `s` as SigV4 requires (RFC 3986 unreserved kept).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request of `parts` over `signed_headers`.
fn canonical_request(
    parts: &SignedParts<'_>,
    signed_headers: &[String],
) -> Result<String, SigV4Error> {
    // Services other than S3 encode the (already encoded) path once more.
    let path = if parts.path.is_empty() {
        "/"
    } else {
        parts.path
    };
    let mut out = format!(
        "{}\n{}\n{}\n",
        parts.method,
        uri_encode(path, true),
        canonical_query(parts.query)
    );
    for name in signed_headers {
        let values: Vec<String> = parts
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(SigV4Error::MissingSignedHeader(name.clone()));
        }
        out.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash = payload_hash(parts)?;
    out.push_str(&format!("\n{}\n{payload_hash}", signed_headers.join(";")));
    Ok(out)
}

/// The SHA-256 of `body` in lower-case hex, as `x-amz-content-sha256`
/// carries it.
pub fn payload_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The SHA-256 (lower-case hex) of the body, checked against the
/// `x-amz-content-sha256` header when the request carries one.
fn payload_hash(parts: &SignedParts<'_>) -> Result<String, SigV4Error> {
    let computed = payload_sha256(parts.body);
    for (_, v) in parts.headers.iter().filter(|(n, _)| n == CONTENT_SHA256) {
        let v = v.trim();
        if v == "UNSIGNED-PAYLOAD" || v.starts_with("STREAMING-") {
            return Err(SigV4Error::UnsignedPayload(v.to_string()));
        }
        if v != computed {
            return Err(SigV4Error::PayloadHashMismatch);
        }
    }
    Ok(computed)
}

/// Refuses a signature that leaves out a header it must cover.
fn check_signed_headers(parts: &SignedParts<'_>, auth: &Authorization) -> Result<(), SigV4Error> {
    let signed = |h: &str| auth.signed_headers.iter().any(|s| s == h);
    for h in ALWAYS_SIGNED {
        if !signed(h) {
            return Err(SigV4Error::UnsignedHeader(h.to_string()));
        }
    }
    for h in SIGNED_IF_PRESENT {
        if parts.headers.iter().any(|(n, _)| n == h) && !signed(h) {
            return Err(SigV4Error::UnsignedHeader(h.to_string()));
        }
    }
    Ok(())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The signature of `parts` at `amz_date` (yyyymmddThhmmssZ).
fn signature(
    parts: &SignedParts<'_>,
    signed_headers: &[String],
    amz_date: &str,
    secret: &str,
    region: &str,
    service: &str,
) -> Result<String, SigV4Error> {
    let date = amz_date.get(..8).ok_or(SigV4Error::BadDate)?;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let creq = canonical_request(parts, signed_headers)?;
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(creq.as_bytes()))
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    Ok(hex::encode(hmac(&k, to_sign.as_bytes())))
}

/// Checks `parts` against `auth` with `secret`, at server time `now_unix`:
/// the date, the headers the signature must cover, the body's hash, then
/// the signature itself.
pub fn verify(
    parts: &SignedParts<'_>,
    auth: &Authorization,
    secret: &str,
    now_unix: i64,
) -> Result<(), SigV4Error> {
    let amz_date = parts
        .headers
        .iter()
        .find(|(n, _)| n == "x-amz-date")
        .map(|(_, v)| v.as_str())
        .ok_or(SigV4Error::BadDate)?;
    let at = parse_amz_date_bytes(amz_date.as_bytes()).ok_or(SigV4Error::BadDate)?;
    if (now_unix - at).abs() > MAX_SKEW_SECS {
        return Err(SigV4Error::Expired(amz_date.to_string()));
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Malformed(format!(
            "credential date {} is not the date of X-Amz-Date {amz_date}",
            auth.date
        )));
    }
    check_signed_headers(parts, auth)?;
    let expected = signature(
        parts,
        &auth.signed_headers,
        amz_date,
        secret,
        &auth.region,
        &auth.service,
    )?;
    let (a, b) = (expected.as_bytes(), auth.signature.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    if diff == 0 {
        Ok(())
    } else {
        Err(SigV4Error::Mismatch)
    }
}

/// Signs a request: returns the `x-amz-date` and `authorization` values to
/// add. `headers` must include `host`; all given headers are signed, and so
/// is the SHA-256 of the body.
///
/// # Panics
///
/// If `headers` lacks `host` (a programming error of the caller), or names
/// `x-amz-content-sha256` with a value that is not the body's hash.
pub fn sign(
    parts: &SignedParts<'_>,
    access_key: &str,
    secret: &str,
    region: &str,
    service: &str,
    now_unix: i64,
) -> (String, String) {
    assert!(
        parts.headers.iter().any(|(n, _)| n == "host"),
        "a SigV4 signature must cover the host header"
    );
    let amz_date = format_amz_date(now_unix);
    let mut headers: Vec<(String, String)> = parts.headers.to_vec();
    headers.push(("x-amz-date".into(), amz_date.clone()));
    let mut names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    let with_date = SignedParts {
        headers: &headers,
        ..*parts
    };
    let sig = signature(&with_date, &names, &amz_date, secret, region, service)
        .expect("every signed header is present and the content hash is the body's");
    let auth = format!(
        "{ALGORITHM} Credential={access_key}/{}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={sig}",
        &amz_date[..8],
        names.join(";")
    );
    (amz_date, auth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::date::parse_amz_date;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn vanilla_headers() -> Vec<(String, String)> {
        vec![
            ("host".into(), "example.amazonaws.com".into()),
            ("x-amz-date".into(), "20150830T123600Z".into()),
        ]
    }

    /// The signature of AWS's test-suite GET of `/` with this query.
    fn suite_get_signature(query: &str) -> String {
        let headers = vanilla_headers();
        let parts = SignedParts {
            method: "GET",
            path: "/",
            query,
            headers: &headers,
            body: b"",
        };
        let names = vec!["host".to_string(), "x-amz-date".to_string()];
        signature(
            &parts,
            &names,
            "20150830T123600Z",
            SECRET,
            "us-east-1",
            "service",
        )
        .unwrap()
    }

    /// AWS's published test suite, case `get-vanilla`.
    #[test]
    fn matches_the_aws_test_suite_get_vanilla() {
        assert_eq!(
            suite_get_signature(""),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// AWS's published test suite, case `get-vanilla-query-order-key-case`.
    #[test]
    fn matches_the_aws_test_suite_query_order() {
        assert_eq!(
            suite_get_signature("Param2=value2&Param1=value1"),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn sign_then_verify_and_tampering_is_refused() {
        let now = parse_amz_date("20261124T143000Z").unwrap();
        let headers = vec![
            ("host".to_string(), "127.0.0.1:9000".to_string()),
            ("x-amz-tenant-id".to_string(), "tenant-A".to_string()),
        ];
        let body = br#"{"a":1}"#;
        let parts = SignedParts {
            method: "POST",
            path: "/2015-03-31/functions/f%3A1/invocations",
            query: "Qualifier=%24LATEST",
            headers: &headers,
            body,
        };
        let (date, authz) = sign(&parts, "AKID", "secret", "us-east-1", "lambda", now);
        let mut sent = headers.clone();
        sent.push(("x-amz-date".into(), date));
        let auth = parse_authorization(&authz).unwrap();
        assert_eq!(auth.access_key, "AKID");
        assert_eq!(auth.service, "lambda");
        let ok = SignedParts {
            headers: &sent,
            ..parts
        };
        assert_eq!(verify(&ok, &auth, "secret", now + 60), Ok(()));
        assert_eq!(verify(&ok, &auth, "other", now), Err(SigV4Error::Mismatch));
        assert!(matches!(
            verify(&ok, &auth, "secret", now + 3600),
            Err(SigV4Error::Expired(_))
        ));
        let tampered_body = SignedParts {
            body: br#"{"a":2}"#,
            ..ok
        };
        assert_eq!(
            verify(&tampered_body, &auth, "secret", now),
            Err(SigV4Error::Mismatch)
        );
        let mut other_tenant = sent.clone();
        other_tenant[1].1 = "tenant-B".into();
        let tampered_header = SignedParts {
            headers: &other_tenant,
            ..ok
        };
        assert_eq!(
            verify(&tampered_header, &auth, "secret", now),
            Err(SigV4Error::Mismatch)
        );
    }

    #[test]
    fn malformed_authorization_is_named() {
        assert!(matches!(
            parse_authorization("Basic abc"),
            Err(SigV4Error::Malformed(_))
        ));
        assert!(matches!(
            parse_authorization(
                "AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=00"
            ),
            Err(SigV4Error::Malformed(_))
        ));
    }

    fn signed_invoke(extra: &[(&str, &str)]) -> (Vec<(String, String)>, Authorization, i64) {
        let now = parse_amz_date("20261124T143000Z").unwrap();
        let mut headers = vec![("host".to_string(), "127.0.0.1:9000".to_string())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        let parts = SignedParts {
            method: "POST",
            path: "/2015-03-31/functions/f/invocations",
            query: "",
            headers: &headers,
            body: b"{}",
        };
        let (date, authz) = sign(&parts, "AKID", "secret", "us-east-1", "lambda", now);
        headers.push(("x-amz-date".into(), date));
        (headers, parse_authorization(&authz).unwrap(), now)
    }

    fn verify_body(
        headers: &[(String, String)],
        auth: &Authorization,
        now: i64,
        body: &[u8],
    ) -> Result<(), SigV4Error> {
        let parts = SignedParts {
            method: "POST",
            path: "/2015-03-31/functions/f/invocations",
            query: "",
            headers,
            body,
        };
        verify(&parts, auth, "secret", now)
    }

    #[test]
    fn the_body_hash_is_computed_and_the_header_must_match_it() {
        let body_hash = hex::encode(Sha256::digest(b"{}"));
        let (h, auth, now) = signed_invoke(&[(CONTENT_SHA256, &body_hash)]);
        assert_eq!(verify_body(&h, &auth, now, b"{}"), Ok(()));
        // The same signed header, another body: the hash is recomputed.
        assert_eq!(
            verify_body(&h, &auth, now, b"{\"x\":1}"),
            Err(SigV4Error::PayloadHashMismatch)
        );
        let (h, auth, now) = signed_invoke(&[]);
        let mut unsigned = h.clone();
        unsigned.push((CONTENT_SHA256.into(), "UNSIGNED-PAYLOAD".into()));
        assert_eq!(
            verify_body(&unsigned, &auth, now, b"{}"),
            Err(SigV4Error::UnsignedPayload("UNSIGNED-PAYLOAD".into()))
        );
        assert_eq!(
            verify_body(&h, &auth, now, b"{ }"),
            Err(SigV4Error::Mismatch)
        );
    }

    #[test]
    fn host_date_and_tenant_must_be_signed() {
        let (mut h, mut auth, now) = signed_invoke(&[]);
        auth.signed_headers.retain(|n| n != "host");
        assert_eq!(
            verify_body(&h, &auth, now, b"{}"),
            Err(SigV4Error::UnsignedHeader("host".into()))
        );
        auth.signed_headers.push("host".into());
        h.push(("x-amz-tenant-id".into(), "tenant-A".into()));
        assert_eq!(
            verify_body(&h, &auth, now, b"{}"),
            Err(SigV4Error::UnsignedHeader("x-amz-tenant-id".into()))
        );
        let (h, auth, now) = signed_invoke(&[("x-amz-tenant-id", "tenant-A")]);
        assert_eq!(verify_body(&h, &auth, now, b"{}"), Ok(()));
    }
}
