//! A small blocking client of the daemon's Lambda API, signing with SigV4
//! when credentials are given: used by `silo create-function`, `silo invoke`,
//! `silo demo`, the benchmarks and the tests.
//!
//! [`burst`] drives a burst of new tenants through it.

pub mod burst;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

use silo_aws::sigv4;

/// Access key and secret.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: String,
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `x-amzn-ErrorType`, if this is an API error.
    pub fn error_type(&self) -> Option<&str> {
        self.header("x-amzn-errortype")
    }
}

/// Options of one invoke.
#[derive(Debug, Clone, Default)]
pub struct InvokeOptions {
    /// `X-Amz-Tenant-Id`.
    pub tenant: Option<String>,
    /// `X-Amz-Invocation-Type` (RequestResponse when `None`).
    pub invocation_type: Option<String>,
    /// `X-Amz-Log-Type: Tail`.
    pub log_tail: bool,
}

/// How long a request may take in full by default (see
/// [`LambdaClient::with_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// The client.
#[derive(Clone)]
pub struct LambdaClient {
    endpoint: String,
    credentials: Option<Credentials>,
    region: String,
    agent: ureq::Agent,
    timeout: Duration,
}

/// Transport failures (no HTTP answer at all).
#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {reason}")]
pub struct ClientError {
    method: String,
    url: String,
    reason: String,
    timed_out: bool,
}

impl ClientError {
    /// Whether the request was given up because its answer did not come
    /// within the client's timeout ([`LambdaClient::with_timeout`]).
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }
}

/// Whether `e` or an error it was caused by is an I/O time-out.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

impl LambdaClient {
    /// A client of `endpoint` (e.g. `http://127.0.0.1:9000`).
    pub fn new(endpoint: &str, credentials: Option<Credentials>) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
            region: "us-east-1".into(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .build(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// This client with each request given at most `timeout` in full
    /// (sending, waiting for the answer, reading it; [`DEFAULT_TIMEOUT`]
    /// unless set): a request not answered by then fails with an error
    /// whose [`ClientError::timed_out`] is true.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request, signed if the client has credentials.
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, ClientError> {
        self.request_for("lambda", method, path_and_query, headers, body)
    }

    /// A CloudWatch Logs operation of the daemon (`POST /`, JSON 1.1,
    /// signed for the `logs` service), e.g. `FilterLogEvents`.
    pub fn logs(&self, operation: &str, input: &Value) -> Result<HttpResponse, ClientError> {
        let target = format!("Logs_20140328.{operation}");
        self.request_for(
            "logs",
            "POST",
            "/",
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", &target),
            ],
            input.to_string().as_bytes(),
        )
    }

    /// [`LambdaClient::request`] signed for `service`.
    fn request_for(
        &self,
        service: &str,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, ClientError> {
        let url = format!("{}{}", self.endpoint, path_and_query);
        let err = |reason: String, timed_out: bool| ClientError {
            method: method.into(),
            url: url.clone(),
            reason,
            timed_out,
        };
        let mut req = self.agent.request(method, &url).timeout(self.timeout);
        for (n, v) in headers {
            req = req.set(n, v);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        for (n, v) in
            self.signature_headers_for(service, method, path_and_query, headers, body, now)
        {
            req = req.set(&n, &v);
        }
        let result = if body.is_empty() && method != "POST" && method != "PUT" {
            req.call()
        } else {
            req.send_bytes(body)
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(err(e.to_string(), is_timeout(&e))),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                let v = resp.header(&n)?.to_string();
                Some((n.to_ascii_lowercase(), v))
            })
            .collect();
        let mut body = Vec::new();
        use std::io::Read;
        resp.into_reader()
            .take(64 << 20)
            .read_to_end(&mut body)
            .map_err(|e| err(e.to_string(), is_timeout(&e)))?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// The headers that sign a request at `now_unix` (`x-amz-date` and
    /// `authorization`; none without credentials). The signature covers
    /// the method, path, query, `host`, `x-amz-date`, every header given
    /// (so `x-amz-tenant-id` and `x-amz-invocation-type` when sent) and the
    /// SHA-256 of `body`.
    pub fn signature_headers(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        now_unix: i64,
    ) -> Vec<(String, String)> {
        self.signature_headers_for("lambda", method, path_and_query, headers, body, now_unix)
    }

    /// [`LambdaClient::signature_headers`] for `service`.
    fn signature_headers_for(
        &self,
        service: &str,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        now_unix: i64,
    ) -> Vec<(String, String)> {
        let Some(c) = &self.credentials else {
            return Vec::new();
        };
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&self.endpoint)
            .to_string();
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let mut signed: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect();
        signed.push(("host".into(), host));
        let parts = sigv4::SignedParts {
            method,
            path,
            query,
            headers: &signed,
            body,
        };
        let (date, auth) = sigv4::sign(
            &parts,
            &c.access_key,
            &c.secret,
            &self.region,
            service,
            now_unix,
        );
        vec![("x-amz-date".into(), date), ("authorization".into(), auth)]
    }

    /// CreateFunction with a zip package; `per_tenant` sets
    /// `TenancyConfig.TenantIsolationMode = PER_TENANT`.
    pub fn create_function(
        &self,
        name: &str,
        zip: &[u8],
        per_tenant: bool,
        extra: Value,
    ) -> Result<HttpResponse, ClientError> {
        let mut body = json!({
            "FunctionName": name,
            "Runtime": "provided.al2023",
            "Role": "arn:aws:iam::000000000000:role/silo-function",
            "Handler": "bootstrap",
            "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip) },
        });
        if per_tenant {
            body["TenancyConfig"] = json!({ "TenantIsolationMode": "PER_TENANT" });
        }
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let bytes = serde_json::to_vec(&body).expect("JSON");
        self.request(
            "POST",
            "/2015-03-31/functions",
            &[("content-type", "application/json")],
            &bytes,
        )
    }

    /// GetFunctionConfiguration.
    pub fn get_function_configuration(&self, name: &str) -> Result<HttpResponse, ClientError> {
        self.request(
            "GET",
            &format!("/2015-03-31/functions/{name}/configuration"),
            &[],
            b"",
        )
    }

    /// Invoke.
    pub fn invoke(
        &self,
        name: &str,
        payload: &[u8],
        opts: &InvokeOptions,
    ) -> Result<HttpResponse, ClientError> {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(t) = &opts.tenant {
            headers.push(("x-amz-tenant-id", t));
        }
        if let Some(t) = &opts.invocation_type {
            headers.push(("x-amz-invocation-type", t));
        }
        if opts.log_tail {
            headers.push(("x-amz-log-type", "Tail"));
        }
        self.request(
            "POST",
            &format!("/2015-03-31/functions/{name}/invocations"),
            &headers,
            payload,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client signs passes the daemon's verification, including
    /// its rules on what a signature must cover; another body does not.
    #[test]
    fn the_client_signs_host_date_tenant_and_the_body() {
        let c = LambdaClient::new(
            "http://127.0.0.1:9000",
            Some(Credentials {
                access_key: "AKID".into(),
                secret: "secret".into(),
            }),
        );
        let now = 1_795_530_600;
        let given = [
            ("content-type", "application/json"),
            ("x-amz-tenant-id", "tenant A"),
            ("x-amz-invocation-type", "Event"),
        ];
        let body = br#"{"n":1}"#;
        let path = "/2015-03-31/functions/f/invocations";
        let sig = c.signature_headers(
            "POST",
            &format!("{path}?Qualifier=%24LATEST"),
            &given,
            body,
            now,
        );
        let mut sent: Vec<(String, String)> = given
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        sent.push(("host".into(), "127.0.0.1:9000".into()));
        sent.extend(sig.iter().cloned());
        let auth = sigv4::parse_authorization(&sig[1].1).unwrap();
        for h in [
            "host",
            "x-amz-date",
            "x-amz-tenant-id",
            "x-amz-invocation-type",
        ] {
            assert!(auth.signed_headers.iter().any(|s| s == h), "{h} signed");
        }
        let parts = |body: &'static [u8]| sigv4::SignedParts {
            method: "POST",
            path,
            query: "Qualifier=%24LATEST",
            headers: &sent,
            body,
        };
        assert_eq!(sigv4::verify(&parts(body), &auth, "secret", now), Ok(()));
        assert_eq!(
            sigv4::verify(&parts(b"{\"n\":2}"), &auth, "secret", now),
            Err(sigv4::SigV4Error::Mismatch)
        );
    }
}
