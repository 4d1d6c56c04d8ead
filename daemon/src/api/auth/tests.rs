//! Requests signed by AWS's own signer (`aws-sigv4`, the signer of the
//! AWS SDK for Rust) in the shapes boto3 and the AWS CLI send, verified
//! by the daemon's authentication: they pass, and any tampering fails.

use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use axum::http::{HeaderValue, Request};

use super::*;
use crate::config::Credential;

const ADMIN: (&str, &str) = ("AKIDADMIN", "admin-secret");
const TENANT_A: (&str, &str) = ("AKIDTENANTA", "tenant-a-secret");
const HOST: &str = "127.0.0.1:9000";
/// 2026-11-24T14:30:00Z.
const NOW: i64 = 1_795_530_600;

fn config() -> DaemonConfig {
    DaemonConfig {
        credentials: vec![
            Credential {
                access_key_id: ADMIN.0.into(),
                secret_access_key: ADMIN.1.into(),
                tenants: None,
            },
            Credential {
                access_key_id: TENANT_A.0.into(),
                secret_access_key: TENANT_A.1.into(),
                tenants: Some(vec!["tenant-A".into(), "tenant A".into()]),
            },
        ],
        ..DaemonConfig::default()
    }
}

/// A request as sent: method, path and query, headers (without `host`,
/// which the HTTP client adds), body.
#[derive(Clone)]
struct Wire {
    method: &'static str,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// How the oracle signs.
#[derive(Clone, Copy)]
struct How {
    key: (&'static str, &'static str),
    region: &'static str,
    /// Send `x-amz-content-sha256` (as S3 clients and some SDKs do).
    content_sha256_header: bool,
    /// Sign `UNSIGNED-PAYLOAD` instead of the body's hash.
    unsigned_payload: bool,
    /// A header left out of the signature.
    exclude: Option<&'static str>,
}

const BOTO3: How = How {
    key: ADMIN,
    region: "us-east-1",
    content_sha256_header: false,
    unsigned_payload: false,
    exclude: None,
};

/// The headers `aws-sigv4` adds (`authorization`, `x-amz-date`, maybe
/// `x-amz-content-sha256`), with `host`, on top of `w`'s.
fn oracle_sign(w: &Wire, how: How) -> Vec<(String, String)> {
    let identity = Credentials::new(how.key.0, how.key.1, None, None, "test").into();
    let mut settings = SigningSettings::default();
    if how.content_sha256_header {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    if let (Some(h), Some(list)) = (how.exclude, settings.excluded_headers.as_mut()) {
        list.push(h.into());
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(how.region)
        .name("lambda")
        .time(UNIX_EPOCH + Duration::from_secs(NOW as u64))
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let mut headers = w.headers.clone();
    headers.push(("host".into(), HOST.into()));
    let url = format!("http://{HOST}{}", w.path_and_query);
    let body = if how.unsigned_payload {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Bytes(&w.body)
    };
    let req = SignableRequest::new(
        w.method,
        url,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        body,
    )
    .expect("signable request");
    let (instructions, _) = sign(req, &params).expect("signed").into_parts();
    for (n, v) in instructions.headers() {
        headers.push((n.to_ascii_lowercase(), v.to_string()));
    }
    headers
}

fn parts(w: &Wire, headers: &[(String, String)]) -> Parts {
    let mut b = Request::builder()
        .method(w.method)
        .uri(w.path_and_query.as_str());
    for (n, v) in headers {
        b = b.header(n.as_str(), v.as_str());
    }
    b.body(()).expect("request").into_parts().0
}

fn check(w: &Wire, headers: &[(String, String)]) -> Result<Principal, ApiError> {
    authenticate_at(&config(), &parts(w, headers), &w.body, NOW + 30)
}

fn set(headers: &mut [(String, String)], name: &str, value: &str) {
    let h = headers
        .iter_mut()
        .find(|(n, _)| n == name)
        .expect("header present");
    h.1 = value.into();
}

fn invoke(tenant: Option<&str>, kind: &str) -> Wire {
    let mut headers = vec![
        (
            "content-type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        ),
        ("x-amz-invocation-type".into(), kind.into()),
        ("x-amz-log-type".into(), "Tail".into()),
        (
            "user-agent".into(),
            "Boto3/1.40.0 md/Botocore#1.40.0".into(),
        ),
    ];
    if let Some(t) = tenant {
        headers.push(("x-amz-tenant-id".into(), t.into()));
    }
    Wire {
        method: "POST",
        path_and_query: "/2015-03-31/functions/counter/invocations?Qualifier=%24LATEST".into(),
        headers,
        body: br#"{"n": 1, "s": "caf\u00e9"}"#.to_vec(),
    }
}

/// The requests boto3 and the AWS CLI send for the operations silo has.
fn boto3_shaped() -> Vec<Wire> {
    let get = |p: &str| Wire {
        method: "GET",
        path_and_query: p.into(),
        headers: vec![],
        body: vec![],
    };
    vec![
        invoke(Some("tenant-A"), "RequestResponse"),
        invoke(Some("org/42:user=7+x@y.z_w"), "Event"),
        invoke(None, "DryRun"),
        Wire {
            method: "POST",
            path_and_query: "/2015-03-31/functions".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"FunctionName":"counter","Runtime":"provided.al2023","Code":{"ZipFile":"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}}"#.to_vec(),
        },
        get("/2015-03-31/functions/?Marker=counter&MaxItems=10"),
        get("/2015-03-31/functions/?MaxItems=50&Marker=a%2Fb"),
        get("/2015-03-31/functions/counter"),
        get("/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Acounter%3A%24LATEST/configuration"),
        Wire {
            method: "DELETE",
            path_and_query: "/2015-03-31/functions/counter".into(),
            headers: vec![],
            body: vec![],
        },
    ]
}

#[test]
fn requests_signed_by_aws_sigv4_verify() {
    for w in boto3_shaped() {
        for content_sha256_header in [false, true] {
            let how = How {
                content_sha256_header,
                ..BOTO3
            };
            let headers = oracle_sign(&w, how);
            assert_eq!(
                check(&w, &headers),
                Ok(Principal::Admin {
                    access_key: Some(ADMIN.0.into())
                }),
                "{} {} (x-amz-content-sha256: {content_sha256_header})",
                w.method,
                w.path_and_query
            );
        }
    }
    let w = invoke(Some("tenant A"), "RequestResponse");
    let headers = oracle_sign(
        &w,
        How {
            key: TENANT_A,
            ..BOTO3
        },
    );
    assert!(
        matches!(check(&w, &headers), Ok(Principal::Tenants { .. })),
        "{:?}",
        check(&w, &headers)
    );
}

fn refused(r: Result<Principal, ApiError>, part: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN, "{e:?}");
    assert!(e.message.contains(part), "{:?} lacks {part:?}", e.message);
}

#[test]
fn a_tampered_body_fails_with_or_without_the_content_hash_header() {
    for content_sha256_header in [false, true] {
        let w = invoke(Some("tenant-A"), "RequestResponse");
        let headers = oracle_sign(
            &w,
            How {
                content_sha256_header,
                ..BOTO3
            },
        );
        assert!(check(&w, &headers).is_ok());
        let other = Wire {
            body: br#"{"n": 2}"#.to_vec(),
            ..w.clone()
        };
        assert!(
            check(&other, &headers).is_err(),
            "replayed with another body (x-amz-content-sha256: {content_sha256_header})"
        );
    }
    // A content hash header that is not the body's is refused by name.
    let w = invoke(Some("tenant-A"), "RequestResponse");
    let mut headers = oracle_sign(&w, BOTO3);
    headers.push(("x-amz-content-sha256".into(), "0".repeat(64)));
    refused(check(&w, &headers), "x-amz-content-sha256");
}

#[test]
fn tampered_tenant_host_date_or_query_fail() {
    let w = invoke(Some("tenant-A"), "RequestResponse");
    let good = oracle_sign(&w, BOTO3);
    for (name, value) in [
        ("x-amz-tenant-id", "tenant-B"),
        ("host", "127.0.0.1:9001"),
        ("x-amz-date", "20261124T143100Z"),
        ("x-amz-invocation-type", "Event"),
    ] {
        let mut h = good.clone();
        set(&mut h, name, value);
        refused(check(&w, &h), "signature");
    }
    let other_path = Wire {
        path_and_query: "/2015-03-31/functions/other/invocations?Qualifier=%24LATEST".into(),
        ..w.clone()
    };
    refused(check(&other_path, &good), "signature");
    // A tenant header added to a request signed without one.
    let plain = invoke(None, "RequestResponse");
    let mut h = oracle_sign(&plain, BOTO3);
    h.push(("x-amz-tenant-id".into(), "tenant-A".into()));
    refused(check(&plain, &h), "x-amz-tenant-id");
}

#[test]
fn unsigned_payload_is_refused() {
    let w = invoke(Some("tenant-A"), "RequestResponse");
    let headers = oracle_sign(
        &w,
        How {
            content_sha256_header: true,
            unsigned_payload: true,
            ..BOTO3
        },
    );
    assert!(headers
        .iter()
        .any(|(n, v)| n == "x-amz-content-sha256" && v == "UNSIGNED-PAYLOAD"));
    refused(check(&w, &headers), "UNSIGNED-PAYLOAD");
}

#[test]
fn host_and_tenant_must_be_signed() {
    for h in ["host", "x-amz-tenant-id"] {
        let w = invoke(Some("tenant-A"), "RequestResponse");
        let headers = oracle_sign(
            &w,
            How {
                exclude: Some(h),
                ..BOTO3
            },
        );
        refused(check(&w, &headers), h);
    }
}

#[test]
fn the_credential_scope_must_name_the_daemons_region() {
    let w = invoke(Some("tenant-A"), "RequestResponse");
    let headers = oracle_sign(
        &w,
        How {
            region: "eu-west-1",
            ..BOTO3
        },
    );
    refused(check(&w, &headers), "eu-west-1");
}

#[test]
fn a_non_ascii_date_is_refused_not_a_panic() {
    let w = invoke(Some("tenant-A"), "RequestResponse");
    let headers = oracle_sign(&w, BOTO3);
    let mut p = parts(&w, &headers);
    // 16 bytes each, the 9th inside a multi-byte character (as text).
    for bad in [&b"2026112\xff12300Z"[..], "2026112é143000Z".as_bytes()] {
        p.headers.insert(
            "x-amz-date",
            HeaderValue::from_bytes(bad).expect("obs-text is a valid header value"),
        );
        refused(authenticate_at(&config(), &p, &w.body, NOW), "X-Amz-Date");
    }
}

/// Two requests signed by botocore 1.43 (boto3's signer, `SigV4Auth`
/// for `lambda` in `us-east-1`) with this test's admin key, as it sent
/// them: they verify, and with another body or tenant they do not.
#[test]
fn requests_signed_by_botocore_verify() {
    let at = silo_aws::date::parse_amz_date("20261126T031409Z").expect("date");
    let invoke = Wire {
        method: "POST",
        path_and_query: "/2015-03-31/functions/counter/invocations?Qualifier=%24LATEST".into(),
        headers: [
            ("x-amz-invocation-type", "RequestResponse"),
            ("x-amz-tenant-id", "tenant A"),
            ("user-agent", "Boto3/1.40 md/Botocore#1.43"),
            ("content-type", "application/octet-stream"),
            ("x-amz-date", "20261126T031409Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDADMIN/20261126/us-east-1/lambda/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-invocation-type;x-amz-tenant-id, Signature=6bb3ded3e6ac26d76ec85742cee8c3f4a0b71e2b80d8e4a04caabbeec7450ce3"),
            ("content-length", "8"),
            ("host", HOST),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect(),
        body: br#"{"n": 1}"#.to_vec(),
    };
    let list = Wire {
        method: "GET",
        path_and_query: "/2015-03-31/functions/?Marker=a&MaxItems=10".into(),
        headers: [
            ("user-agent", "Boto3"),
            ("x-amz-date", "20261126T031409Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDADMIN/20261126/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=e32458b78078f4adbb8f6256b9f1591d41e5a4bb033d6dda2ff5d0ff9685493f"),
            ("host", HOST),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect(),
        body: vec![],
    };
    for w in [&invoke, &list] {
        let r = authenticate_at(&config(), &parts(w, &w.headers), &w.body, at);
        assert!(r.is_ok(), "{} {}: {r:?}", w.method, w.path_and_query);
    }
    let other_body = authenticate_at(
        &config(),
        &parts(&invoke, &invoke.headers),
        b"{\"n\": 2}",
        at,
    );
    refused(other_body, "signature");
    let mut h = invoke.headers.clone();
    set(&mut h, "x-amz-tenant-id", "tenant-A");
    refused(
        authenticate_at(&config(), &parts(&invoke, &h), &invoke.body, at),
        "signature",
    );
}

/// `--allow-unauthenticated` makes unsigned callers admins only while
/// no key is configured.
#[test]
fn allow_unauthenticated_never_admits_strangers_when_keys_exist() {
    let w = invoke(None, "DryRun");
    let mut headers = w.headers.clone();
    headers.push(("host".into(), HOST.into()));
    let mut cfg = DaemonConfig {
        allow_unauthenticated: true,
        ..config()
    };
    let e = authenticate_at(&cfg, &parts(&w, &headers), &w.body, NOW).unwrap_err();
    assert_eq!(e.kind, "MissingAuthenticationTokenException");
    assert!(
        e.message.contains("--allow-unauthenticated"),
        "{}",
        e.message
    );
    let stranger = oracle_sign(
        &w,
        How {
            key: ("AKIDSTRANGER", "x"),
            ..BOTO3
        },
    );
    let e = authenticate_at(&cfg, &parts(&w, &stranger), &w.body, NOW).unwrap_err();
    assert_eq!(e.kind, "UnrecognizedClientException");
    cfg.credentials.clear();
    for h in [&headers, &stranger] {
        assert_eq!(
            authenticate_at(&cfg, &parts(&w, h), &w.body, NOW),
            Ok(Principal::Admin { access_key: None })
        );
    }
}
