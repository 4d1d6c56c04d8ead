//! AWS Signature Version 4: signing (the CLI helpers) and verification (the
//! daemon), for `AWS4-HMAC-SHA256` requests authenticated by header.
//!
//! Both sides build the canonical request the same way; verification
//! recomputes the signature with the secret of the access key named in the
//! `Authorization` header and compares in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::date::{format_amz_date, parse_amz_date};

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm supported.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Signatures older or newer than this are refused (as AWS: 15 minutes).
pub const MAX_SKEW_SECS: i64 = 15 * 60;

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
    let payload_hash = parts
        .headers
        .iter()
        .find(|(n, _)| n == "x-amz-content-sha256")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| hex::encode(Sha256::digest(parts.body)));
    out.push_str(&format!("\n{}\n{payload_hash}", signed_headers.join(";")));
    Ok(out)
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

/// Checks `parts` against `auth` with `secret`, at server time `now_unix`.
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
    let at = parse_amz_date(amz_date).ok_or(SigV4Error::BadDate)?;
    if (now_unix - at).abs() > MAX_SKEW_SECS {
        return Err(SigV4Error::Expired(amz_date.to_string()));
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Malformed(format!(
            "credential date {} is not the date of X-Amz-Date {amz_date}",
            auth.date
        )));
    }
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
/// add. `headers` must include `host`; all given headers are signed.
pub fn sign(
    parts: &SignedParts<'_>,
    access_key: &str,
    secret: &str,
    region: &str,
    service: &str,
    now_unix: i64,
) -> (String, String) {
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
        .expect("every signed header is present");
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

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn vanilla_headers() -> Vec<(String, String)> {
        vec![
            ("host".into(), "example.amazonaws.com".into()),
            ("x-amz-date".into(), "20150830T123600Z".into()),
        ]
    }

    /// AWS's published test suite, case `get-vanilla`.
    #[test]
    fn matches_the_aws_test_suite_get_vanilla() {
        let headers = vanilla_headers();
        let parts = SignedParts {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let names = vec!["host".to_string(), "x-amz-date".to_string()];
        let sig = signature(
            &parts,
            &names,
            "20150830T123600Z",
            SECRET,
            "us-east-1",
            "service",
        )
        .unwrap();
        assert_eq!(
            sig,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// AWS's published test suite, case `get-vanilla-query-order-key-case`.
    #[test]
    fn matches_the_aws_test_suite_query_order() {
        let headers = vanilla_headers();
        let parts = SignedParts {
            method: "GET",
            path: "/",
            query: "Param2=value2&Param1=value1",
            headers: &headers,
            body: b"",
        };
        let names = vec!["host".to_string(), "x-amz-date".to_string()];
        let sig = signature(
            &parts,
            &names,
            "20150830T123600Z",
            SECRET,
            "us-east-1",
            "service",
        )
        .unwrap();
        assert_eq!(
            sig,
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
}
