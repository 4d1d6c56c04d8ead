//! The daemon's own AWS credentials, for calling STS: the usual chain of
//! the host, first found wins:
//!
//! 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    optionally `AWS_SESSION_TOKEN`;
//! 2. the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default
//!    `~/.aws/credentials`), profile `AWS_PROFILE` or `default`: static keys
//!    (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`);
//! 3. the instance role, through IMDSv2 (`169.254.169.254`; off with
//!    `AWS_EC2_METADATA_DISABLED=true`), cached until 5 minutes before it
//!    expires.
//!
//! Read at each use (environment and file) so rotated keys are picked up.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::sync::Mutex;

use super::sts::{error_chain, now_unix, parse_iso8601, HttpClient};

/// The daemon's credentials for one STS call.
#[derive(Clone, PartialEq, Eq)]
pub struct HostCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
    /// When temporary credentials expire (seconds since the epoch).
    pub expires_unix: Option<i64>,
}

impl std::fmt::Debug for HostCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where the chain looks (the process's environment, or a test's).
#[derive(Debug, Clone, Default)]
pub struct ChainSource {
    /// Environment variables to read instead of the process's, if set.
    pub env: Option<std::collections::HashMap<String, String>>,
}

/// The chain, with the instance role's credentials cached.
pub struct Chain {
    source: ChainSource,
    imds: Mutex<Option<HostCredentials>>,
}

const IMDS: &str = "http://169.254.169.254";

impl Chain {
    /// The chain reading `source`.
    pub fn new(source: ChainSource) -> Self {
        Self {
            source,
            imds: Mutex::new(None),
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        match &self.source.env {
            Some(env) => env.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
        .filter(|v| !v.is_empty())
    }

    /// The first credentials the chain finds, or why there are none.
    pub async fn credentials(&self, client: &HttpClient) -> Result<HostCredentials, String> {
        if let (Some(id), Some(secret)) = (
            self.var("AWS_ACCESS_KEY_ID"),
            self.var("AWS_SECRET_ACCESS_KEY"),
        ) {
            return Ok(HostCredentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: self.var("AWS_SESSION_TOKEN"),
                expires_unix: None,
            });
        }
        let file = self
            .var("AWS_SHARED_CREDENTIALS_FILE")
            .or_else(|| self.var("HOME").map(|h| format!("{h}/.aws/credentials")));
        let profile = self.var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        if let Some(file) = &file {
            if let Ok(text) = std::fs::read_to_string(file) {
                if let Some(c) = profile_keys(&text, &profile) {
                    return Ok(c);
                }
            }
        }
        if self
            .var("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err(format!(
                "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, no keys for profile {profile:?} in {}, \
                 and the instance metadata service is disabled",
                file.as_deref().unwrap_or("(no HOME)")
            ));
        }
        let mut cached = self.imds.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.expires_unix.is_some_and(|e| e - now_unix() > 300) {
                return Ok(c.clone());
            }
        }
        let c = instance_role(client).await.map_err(|e| {
            format!(
                "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, no keys for profile {profile:?} in {}, \
                 and no instance role ({e})",
                file.as_deref().unwrap_or("(no HOME)")
            )
        })?;
        *cached = Some(c.clone());
        Ok(c)
    }
}

/// The static keys of `profile` in a shared credentials file.
pub fn profile_keys(text: &str, profile: &str) -> Option<HostCredentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(HostCredentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
        expires_unix: None,
    })
}

async fn imds_call(
    client: &HttpClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(format!("{IMDS}{path}"));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let call = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{path}: HTTP {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .map_err(|_| format!("{path}: no answer within 2 s"))?
}

/// The instance role's credentials through IMDSv2.
async fn instance_role(client: &HttpClient) -> Result<HostCredentials, String> {
    let token = imds_call(
        client,
        "PUT",
        "/latest/api/token",
        &[("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
    )
    .await?;
    let h = [("x-aws-ec2-metadata-token", token.trim())];
    let base = "/latest/meta-data/iam/security-credentials/";
    let role = imds_call(client, "GET", base, &h).await?;
    let role = role.lines().next().unwrap_or("").trim().to_string();
    if role.is_empty() || role.contains('/') {
        return Err("no instance role".into());
    }
    let doc = imds_call(client, "GET", &format!("{base}{role}"), &h).await?;
    let v: serde_json::Value = serde_json::from_str(&doc).map_err(|e| e.to_string())?;
    let s = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("instance role document without {k}"))
    };
    Ok(HostCredentials {
        access_key_id: s("AccessKeyId")?,
        secret_access_key: s("SecretAccessKey")?,
        session_token: Some(s("Token")?),
        expires_unix: parse_iso8601(&s("Expiration")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_the_shared_file() {
        let text = "[default]\naws_access_key_id = AKID1\naws_secret_access_key=S1\n\n# x\n[ops]\naws_access_key_id=AKID2\naws_secret_access_key = S2\naws_session_token = T2\n";
        let d = profile_keys(text, "default").unwrap();
        assert_eq!((d.access_key_id.as_str(), d.session_token), ("AKID1", None));
        let o = profile_keys(text, "ops").unwrap();
        assert_eq!(o.session_token.as_deref(), Some("T2"));
        assert!(profile_keys(text, "none").is_none());
    }

    #[tokio::test]
    async fn the_environment_comes_first_and_no_credentials_say_where_they_looked() {
        let env = |pairs: &[(&str, &str)]| ChainSource {
            env: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        };
        let client = super::super::sts::http_client();
        let c = Chain::new(env(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]))
        .credentials(&client)
        .await
        .unwrap();
        assert_eq!(c.access_key_id, "AKIDENV");
        let e = Chain::new(env(&[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("HOME", "/nonexistent"),
        ]))
        .credentials(&client)
        .await
        .unwrap_err();
        assert!(
            e.contains("AWS_ACCESS_KEY_ID") && e.contains("/nonexistent/.aws/credentials"),
            "{e}"
        );
    }
}
