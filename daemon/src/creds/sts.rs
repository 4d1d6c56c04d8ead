//! `AssumeRole` over STS's Query API: a form POST signed with SigV4 by
//! `aws-sigv4` (the AWS SDK for Rust's own signer), sent with hyper over
//! rustls, its XML answer read with quick-xml.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::chain::HostCredentials;

/// How long one STS call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an STS answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The HTTP(S) client the broker uses.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for `http://` and `https://` (Mozilla's roots, TLS by rustls).
pub fn http_client() -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// Why STS gave no credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StsError {
    /// STS could not be reached or did not answer in time.
    #[error("STS at {endpoint} is unreachable: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// STS refused (its error code and message).
    #[error("STS refused AssumeRole of {role_arn}: {code}: {message}")]
    Refused {
        /// The role (empty for other calls).
        role_arn: String,
        /// STS's error code (`AccessDenied`, ...).
        code: String,
        /// STS's message (bounded).
        message: String,
    },
    /// The answer is not one STS gives.
    #[error("STS's answer is malformed: {0}")]
    Malformed(String),
    /// The daemon has no credentials of its own to call STS with.
    #[error("the daemon has no AWS credentials to call STS with: {0}")]
    NoHostCredentials(String),
}

/// What one `AssumeRole` asks for.
#[derive(Debug, Clone)]
pub struct AssumeRole<'a> {
    /// STS's endpoint (no trailing slash).
    pub endpoint: &'a str,
    /// The region to sign for.
    pub region: &'a str,
    /// The role.
    pub role_arn: &'a str,
    /// `RoleSessionName`.
    pub session_name: &'a str,
    /// `SourceIdentity`.
    pub source_identity: &'a str,
    /// The session policy (compact JSON).
    pub policy: &'a str,
    /// Session tags.
    pub tags: &'a [(&'a str, &'a str)],
    /// `DurationSeconds`.
    pub duration_s: u32,
}

/// Credentials STS returned.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `SessionToken`.
    pub session_token: String,
    /// `Expiration`, seconds since the epoch.
    pub expiration_unix: i64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_key_id", &self.access_key_id)
            .field("expiration_unix", &self.expiration_unix)
            .finish_non_exhaustive()
    }
}

/// `application/x-www-form-urlencoded` of one value (RFC 3986 unreserved
/// characters kept).
fn form(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The form body of `req`.
pub fn form_body(req: &AssumeRole<'_>) -> String {
    let mut p: Vec<(String, String)> = vec![
        ("Action".into(), "AssumeRole".into()),
        ("Version".into(), "2011-06-15".into()),
        ("RoleArn".into(), req.role_arn.into()),
        ("RoleSessionName".into(), req.session_name.into()),
        ("SourceIdentity".into(), req.source_identity.into()),
        ("DurationSeconds".into(), req.duration_s.to_string()),
        ("Policy".into(), req.policy.into()),
    ];
    for (i, (k, v)) in req.tags.iter().enumerate() {
        p.push((format!("Tags.member.{}.Key", i + 1), (*k).into()));
        p.push((format!("Tags.member.{}.Value", i + 1), (*v).into()));
    }
    p.iter()
        .map(|(k, v)| format!("{}={}", form(k), form(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Calls `AssumeRole` with the daemon's credentials `host`.
pub async fn assume_role(
    client: &HttpClient,
    host: &HostCredentials,
    req: &AssumeRole<'_>,
) -> Result<Issued, StsError> {
    let fields = query(client, host, req.endpoint, req.region, form_body(req))
        .await
        .map_err(|e| match e {
            StsError::Refused { code, message, .. } => StsError::Refused {
                role_arn: req.role_arn.to_string(),
                code,
                message,
            },
            e => e,
        })?;
    let get = |k: &str| {
        fields
            .get(k)
            .cloned()
            .ok_or_else(|| StsError::Malformed(format!("no {k} in the answer")))
    };
    let expiration = get("Expiration")?;
    Ok(Issued {
        access_key_id: get("AccessKeyId")?,
        secret_access_key: get("SecretAccessKey")?,
        session_token: get("SessionToken")?,
        expiration_unix: parse_iso8601(&expiration)
            .ok_or_else(|| StsError::Malformed(format!("Expiration {}", bounded(&expiration))))?,
    })
}

/// `GetCallerIdentity` with `creds`: the caller's ARN (for tests and
/// diagnostics: which identity a set of credentials is).
pub async fn caller_identity(
    client: &HttpClient,
    creds: &HostCredentials,
    endpoint: &str,
    region: &str,
) -> Result<String, StsError> {
    let fields = query(
        client,
        creds,
        endpoint,
        region,
        "Action=GetCallerIdentity&Version=2011-06-15".into(),
    )
    .await?;
    fields
        .get("Arn")
        .cloned()
        .ok_or_else(|| StsError::Malformed("no Arn in the answer".into()))
}

/// One signed STS Query API call: the leaf fields of its XML answer.
async fn query(
    client: &HttpClient,
    host: &HostCredentials,
    endpoint: &str,
    region: &str,
    body: String,
) -> Result<HashMap<String, String>, StsError> {
    let unreachable = |reason: String| StsError::Unreachable {
        endpoint: endpoint.to_string(),
        reason,
    };
    let url = format!("{endpoint}/");
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| unreachable(format!("bad endpoint: {e}")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| unreachable("the endpoint names no host".into()))?
        .to_string();
    let identity = Credentials::new(
        &host.access_key_id,
        &host.secret_access_key,
        host.session_token.clone(),
        None,
        "silo-daemon",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| StsError::Malformed(format!("signing: {e}")))?
        .into();
    let headers = [
        ("host", authority.as_str()),
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
    ];
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| StsError::Malformed(format!("signing: {e}")))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| StsError::Malformed(format!("signing: {e}")))?
        .into_parts();
    let mut builder = hyper::Request::builder().method("POST").uri(uri);
    for (n, v) in headers {
        builder = builder.header(n, v);
    }
    for (n, v) in instructions.headers() {
        builder = builder.header(n, v);
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| StsError::Malformed(format!("request: {e}")))?;
    let call = async {
        let resp = client
            .request(request)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, StsError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))??;
    let text = String::from_utf8_lossy(&bytes);
    let fields = xml_fields(&text)?;
    if !status.is_success() {
        if let Some(code) = fields.get("Code") {
            return Err(StsError::Refused {
                role_arn: String::new(),
                code: bounded(code),
                message: bounded(fields.get("Message").map_or("", String::as_str)),
            });
        }
        return Err(unreachable(format!("HTTP {status} without an STS error")));
    }
    Ok(fields)
}

/// An error and its sources, one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    bounded(&s)
}

/// Text from outside, cut to 300 characters and escaped.
fn bounded(s: &str) -> String {
    let cut: String = s.chars().take(300).collect();
    let esc = format!("{cut:?}");
    esc[1..esc.len() - 1].to_string()
}

/// The text of every leaf element of `xml` by its local name (the last one
/// wins; STS's answers have each once).
pub fn xml_fields(xml: &str) -> Result<HashMap<String, String>, StsError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = HashMap::new();
    let mut current: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                current = Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
            }
            Ok(Event::Text(t)) => {
                if let Some(name) = &current {
                    let text = t.decode().map_err(|e| StsError::Malformed(e.to_string()))?;
                    out.entry(name.clone())
                        .and_modify(|v: &mut String| v.push_str(&text))
                        .or_insert_with(|| text.into_owned());
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let Some(name) = &current {
                    let ch = r
                        .resolve_char_ref()
                        .ok()
                        .flatten()
                        .map(String::from)
                        .or_else(|| {
                            let n = String::from_utf8_lossy(r.as_ref()).into_owned();
                            quick_xml::escape::resolve_xml_entity(&n).map(str::to_string)
                        })
                        .unwrap_or_default();
                    out.entry(name.clone())
                        .and_modify(|v: &mut String| v.push_str(&ch))
                        .or_insert(ch);
                }
            }
            Ok(Event::End(_)) => current = None,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(StsError::Malformed(format!("not XML: {e}"))),
        }
    }
    Ok(out)
}

/// Seconds since the epoch of `yyyy-mm-ddThh:mm:ss[.fff]Z`.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim();
    let main = s.strip_suffix('Z')?;
    let main = main.split('.').next()?;
    let compact: String = main.chars().filter(|c| *c != '-' && *c != ':').collect();
    silo_aws::date::parse_amz_date(&format!("{compact}Z"))
}

/// RFC 3339 (`yyyy-mm-ddThh:mm:ssZ`) of a Unix time.
pub fn format_rfc3339(unix: i64) -> String {
    let d = silo_aws::date::format_amz_date(unix);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
}

/// Now, seconds since the epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_answers_are_read() {
        let ok = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult><Credentials><AccessKeyId>ASIAX</AccessKeyId>
  <SecretAccessKey>s/e+c&amp;r</SecretAccessKey><SessionToken>tok</SessionToken>
  <Expiration>2026-12-07T15:28:33.359Z</Expiration></Credentials></AssumeRoleResult>
</AssumeRoleResponse>"#;
        let f = xml_fields(ok).unwrap();
        assert_eq!(f["SecretAccessKey"], "s/e+c&r");
        assert_eq!(parse_iso8601(&f["Expiration"]), Some(1_796_657_313));
        assert_eq!(format_rfc3339(1_796_657_313), "2026-12-07T15:28:33Z");
        let err = r#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not &lt;allowed&gt;</Message></Error></ErrorResponse>"#;
        let f = xml_fields(err).unwrap();
        assert_eq!(
            (f["Code"].as_str(), f["Message"].as_str()),
            ("AccessDenied", "not <allowed>")
        );
    }

    #[test]
    fn the_form_encodes_every_parameter() {
        let b = form_body(&AssumeRole {
            endpoint: "x",
            region: "r",
            role_arn: "arn:aws:iam::1:role/r",
            session_name: "s",
            source_identity: "s",
            policy: "{\"a\":\"b c\"}",
            tags: &[("tenant_id", "tenant A/1")],
            duration_s: 900,
        });
        assert!(b.contains("Policy=%7B%22a%22%3A%22b%20c%22%7D"), "{b}");
        assert!(
            b.contains("Tags.member.1.Key=tenant_id&Tags.member.1.Value=tenant%20A%2F1"),
            "{b}"
        );
        assert!(
            b.starts_with("Action=AssumeRole&Version=2011-06-15&"),
            "{b}"
        );
    }
}
