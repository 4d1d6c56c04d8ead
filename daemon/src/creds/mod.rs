//! Tenant-scoped credentials, injected by the platform (a silo extension).
//!
//! A function may name an IAM role (`[tenant_roles]` in the configuration,
//! or `PUT /2015-03-31/functions/{name}/tenant-role`, admin keys only). Each
//! of its VMs then gets credentials of that role, assumed by the daemon
//! for the VM's tenant alone: `AssumeRole` with a session policy rendered
//! from the function's template (`${tenant_id}`, `${function_name}`), the
//! session tag `tenant_id`, `SourceIdentity` and a `RoleSessionName` derived
//! from the tenant. The VM's binding (the scheduler's, for its whole life)
//! decides which tenant's credentials it gets, never anything the guest
//! says. The guest agent serves them on the standard container-credentials
//! endpoint.
//!
//! - [`template`]: session-policy templates, checked when set;
//! - [`sts`]: the STS Query API's `AssumeRole`, signed with `aws-sigv4`;
//! - [`chain`]: the daemon's own credentials (environment, profile file,
//!   instance role);
//! - [`broker`]: the cache per (function, tenant), refreshed ahead;
//! - [`vm`]: a VM's side: its binding's tenant only, sent to its agent.

pub mod broker;
pub mod chain;
mod functions;
pub mod sts;
pub mod template;
pub mod vm;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use broker::{Broker, BrokerError, RoleCredentials};
pub use template::{PolicyTemplate, TemplateError};

/// STS's default endpoint (global; signed for `us-east-1`).
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.amazonaws.com";
/// The region requests to [`DEFAULT_STS_ENDPOINT`] are signed for.
pub const DEFAULT_STS_REGION: &str = "us-east-1";
/// Session duration unless set: one hour (STS's default).
pub const DEFAULT_DURATION_S: u32 = 3600;

/// A function's tenant role: what the broker assumes for its tenants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRole {
    /// The role's ARN.
    #[serde(alias = "RoleArn")]
    pub role_arn: String,
    /// STS's endpoint (any STS-compatible one); default: AWS's global one.
    #[serde(
        default,
        alias = "StsEndpoint",
        skip_serializing_if = "Option::is_none"
    )]
    pub sts_endpoint: Option<String>,
    /// The region requests are signed for; default `us-east-1`, or the
    /// region of an `sts.<region>.amazonaws.com` endpoint.
    #[serde(default, alias = "StsRegion", skip_serializing_if = "Option::is_none")]
    pub sts_region: Option<String>,
    /// Session duration in seconds (900 to 43,200; the role's maximum
    /// session duration must allow it).
    #[serde(default = "default_duration", alias = "DurationSeconds")]
    pub duration_seconds: u32,
    /// The session-policy template (JSON).
    #[serde(alias = "SessionPolicy")]
    pub session_policy: String,
}

fn default_duration() -> u32 {
    DEFAULT_DURATION_S
}

/// Why a tenant role is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The session policy cannot work.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A field is out of its range or malformed.
    #[error("{0}")]
    Field(String),
}

impl TenantRole {
    /// Checks every field for function `function` and returns the parsed
    /// template.
    pub fn check(&self, function: &str) -> Result<PolicyTemplate, RoleError> {
        let arn = &self.role_arn;
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if arn.len() < 20
            || arn.len() > 2048
            || parts.len() != 6
            || parts[0] != "arn"
            || parts[2] != "iam"
            || !parts[5].starts_with("role/")
            || arn.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(RoleError::Field(format!(
                "RoleArn {:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
                arn.chars().take(100).collect::<String>()
            )));
        }
        if !(900..=43_200).contains(&self.duration_seconds) {
            return Err(RoleError::Field(format!(
                "DurationSeconds {} is outside STS's 900 to 43200",
                self.duration_seconds
            )));
        }
        if let Some(e) = &self.sts_endpoint {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', ' ']) || e.len() > 512) {
                return Err(RoleError::Field(format!(
                    "StsEndpoint {:?} is not an http(s) URL",
                    e.chars().take(100).collect::<String>()
                )));
            }
        }
        if let Some(r) = &self.sts_region {
            if r.is_empty()
                || r.len() > 64
                || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(RoleError::Field(format!(
                    "StsRegion {r:?} is not a region name"
                )));
            }
        }
        Ok(PolicyTemplate::parse(&self.session_policy, function)?)
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> String {
        match (&self.sts_endpoint, &self.sts_region) {
            (Some(e), _) => e.trim_end_matches('/').to_string(),
            (None, Some(r)) => format!("https://sts.{r}.amazonaws.com"),
            (None, None) => DEFAULT_STS_ENDPOINT.into(),
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> String {
        if let Some(r) = &self.sts_region {
            return r.clone();
        }
        self.sts_endpoint
            .as_deref()
            .and_then(|e| e.split("://").nth(1))
            .and_then(|rest| rest.split(['/', ':']).next())
            .and_then(|host| host.strip_prefix("sts."))
            .and_then(|h| h.strip_suffix(".amazonaws.com"))
            .filter(|r| !r.contains('.') && !r.is_empty())
            .unwrap_or(DEFAULT_STS_REGION)
            .to_string()
    }
}

/// Whether `s` fits STS's `RoleSessionName` and `SourceIdentity`: 2 to 64
/// of `[\w+=,.@-]`.
pub fn sts_name_ok(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

/// The `RoleSessionName` (and `SourceIdentity`) for `tenant`: the tenant id
/// itself when it fits STS's rule (2 to 64 of `[\w+=,.@-]`); else its
/// allowed characters (others as `-`, at most 46) and 12 hex digits of its
/// SHA-256, so distinct tenants stay distinct. The exact id is always in the
/// session tag `tenant_id`.
pub fn session_name(tenant: &str) -> String {
    if sts_name_ok(tenant) {
        return tenant.to_string();
    }
    let clean: String = tenant
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(46)
        .collect();
    let hash = hex::encode(Sha256::digest(tenant.as_bytes()));
    format!("t-{clean}-{}", &hash[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn role() -> TenantRole {
        TenantRole {
            role_arn: "arn:aws:iam::123456789012:role/silo-tenant".into(),
            sts_endpoint: None,
            sts_region: None,
            duration_seconds: 3600,
            session_policy: r#"{"Statement":[{"Resource":"arn:aws:s3:::b/${tenant_id}/*"}]}"#
                .into(),
        }
    }

    #[test]
    fn fields_are_checked_naming_the_fault() {
        assert!(role().check("f").is_ok());
        for (change, word) in [
            (
                Box::new(|r: &mut TenantRole| r.role_arn = "arn:aws:s3:::bucket".into())
                    as Box<dyn Fn(&mut TenantRole)>,
                "RoleArn",
            ),
            (Box::new(|r| r.duration_seconds = 899), "DurationSeconds"),
            (Box::new(|r| r.duration_seconds = 43_201), "DurationSeconds"),
            (
                Box::new(|r| r.sts_endpoint = Some("ftp://x".into())),
                "StsEndpoint",
            ),
            (
                Box::new(|r| r.sts_region = Some("us east".into())),
                "StsRegion",
            ),
            (Box::new(|r| r.session_policy = "{".into()), "SessionPolicy"),
        ] {
            let mut r = role();
            change(&mut r);
            let e = r.check("f").unwrap_err().to_string();
            assert!(e.contains(word), "{e} does not name {word}");
        }
    }

    #[test]
    fn endpoint_and_region_defaults() {
        let mut r = role();
        assert_eq!(
            (r.endpoint(), r.region()),
            (DEFAULT_STS_ENDPOINT.into(), "us-east-1".into())
        );
        r.sts_region = Some("eu-west-1".into());
        assert_eq!(r.endpoint(), "https://sts.eu-west-1.amazonaws.com");
        r.sts_region = None;
        r.sts_endpoint = Some("https://sts.ap-south-1.amazonaws.com/".into());
        assert_eq!(
            (r.endpoint(), r.region()),
            (
                "https://sts.ap-south-1.amazonaws.com".into(),
                "ap-south-1".into()
            )
        );
        r.sts_endpoint = Some("http://10.0.2.2:5000".into());
        assert_eq!(r.region(), "us-east-1");
    }

    proptest! {
        /// Every tenant id Lambda allows gives a session name STS accepts,
        /// and different tenants different names.
        #[test]
        fn session_names_fit_sts_and_stay_distinct(
            a in "[a-zA-Z0-9._:/=+\\-@ ]{1,256}",
            b in "[a-zA-Z0-9._:/=+\\-@ ]{1,256}",
        ) {
            let (na, nb) = (session_name(&a), session_name(&b));
            prop_assert!(sts_name_ok(&na), "{}", na);
            prop_assert!(a == b || na != nb, "{} and {} both {}", a, b, na);
        }
    }

    /// The example of docs/DAEMON.md is a configuration the daemon takes.
    #[test]
    fn the_documented_example_is_accepted() {
        let doc = include_str!("../../../docs/DAEMON.md");
        let start = doc.find("[tenant_roles.reports]").expect("the example");
        let block = &doc[start..start + doc[start..].find("```").expect("its end")];
        let cfg: crate::config::DaemonConfig = toml::from_str(block).unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.tenant_roles.len(), 2);
        let orders = cfg.tenant_roles["orders"].check("orders").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&orders.render("tenant A", "orders")).unwrap();
        assert_eq!(
            v["Statement"][0]["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"][0],
            "tenant A"
        );
    }

    #[test]
    fn session_names_keep_fitting_ids_and_hash_the_rest() {
        assert_eq!(session_name("tenant-A"), "tenant-A");
        let n = session_name("tenant A");
        assert!(
            n.starts_with("t-tenant-A-") && n.len() == 2 + 8 + 1 + 12,
            "{n}"
        );
        assert_ne!(session_name("x"), session_name("y"));
        assert!(sts_name_ok(&session_name(&"a".repeat(256))));
    }
}
