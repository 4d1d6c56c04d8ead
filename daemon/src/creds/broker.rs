//! The credentials broker: one `AssumeRole` per (function, tenant, role
//! settings), cached until [`REFRESH_BEFORE`] its expiry, refreshed ahead
//! in the background, shared by every VM of that tenant of that function.
//! The tenant is always the caller's binding's (the scheduler's), never
//! anything a guest sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::chain::{Chain, ChainSource};
use super::sts::{self, AssumeRole, HttpClient, Issued, StsError};
use super::{session_name, TenantRole};

/// Credentials are not handed out with less than this left (and are
/// refreshed in the background from twice this on).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// From this many cached entries on (then at each power of two), expired
/// ones are dropped.
const PRUNE_AT: usize = 1024;

/// A tenant's credentials for one function.
#[derive(Clone, PartialEq, Eq)]
pub struct RoleCredentials {
    /// The tenant they were assumed for.
    pub tenant: String,
    /// What STS issued.
    pub issued: Issued,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("tenant", &self.tenant)
            .field("issued", &self.issued)
            .finish()
    }
}

/// Why a tenant's credentials could not be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("tenant credentials of function {function} for tenant {tenant:?}: {source}")]
pub struct BrokerError {
    /// The function.
    pub function: String,
    /// The tenant.
    pub tenant: String,
    /// What STS (or the daemon's own credentials) said.
    #[source]
    pub source: StsError,
}

impl BrokerError {
    /// The failure's kind, for `/metrics`: `unreachable`, `refused`,
    /// `malformed`, `no_host_credentials`.
    pub fn reason(&self) -> &'static str {
        match self.source {
            StsError::Unreachable { .. } => "unreachable",
            StsError::Refused { .. } => "refused",
            StsError::Malformed(_) => "malformed",
            StsError::NoHostCredentials(_) => "no_host_credentials",
        }
    }
}

type Key = (String, String, [u8; 32]);

#[derive(Default)]
struct Counters {
    /// Per function: AssumeRole calls that gave credentials.
    assumed: BTreeMap<String, u64>,
    /// Per function: answered from the cache.
    cached: BTreeMap<String, u64>,
    /// Per (function, reason): failures.
    failures: BTreeMap<(String, &'static str), u64>,
}

/// Now, seconds since the epoch (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The broker.
pub struct Broker {
    client: HttpClient,
    chain: Chain,
    clock: Clock,
    /// One slot per key: the lock is held across its AssumeRole, so
    /// concurrent askers wait for one call instead of making their own.
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Issued>>>>>,
    counters: Mutex<Counters>,
}

impl Broker {
    /// A broker using the host's credential chain and clock.
    pub fn new() -> Arc<Self> {
        Self::with(ChainSource::default(), Arc::new(sts::now_unix))
    }

    /// A broker reading `source` for its own credentials, with `clock`.
    pub fn with(source: ChainSource, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            client: sts::http_client(),
            chain: Chain::new(source),
            clock,
            slots: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
        })
    }

    fn key(function: &str, tenant: &str, role: &TenantRole) -> Key {
        let settings = serde_json::to_vec(role).unwrap_or_default();
        (
            function.to_string(),
            tenant.to_string(),
            Sha256::digest(&settings).into(),
        )
    }

    /// `tenant`'s credentials for `function` under `role`, valid for at
    /// least `min_valid` (at least [`REFRESH_BEFORE`], at most the session
    /// duration less two minutes): from the
    /// cache, else by `AssumeRole`. Starts a background refresh when what
    /// it hands out is within twice that of expiring.
    pub async fn credentials(
        self: &Arc<Self>,
        function: &str,
        tenant: &str,
        role: &TenantRole,
        min_valid: Duration,
    ) -> Result<RoleCredentials, BrokerError> {
        // Never more than a session lasts less two minutes, or every ask
        // would assume the role anew.
        let session = Duration::from_secs(u64::from(role.duration_seconds));
        let min = min_valid
            .max(REFRESH_BEFORE)
            .min(session.saturating_sub(Duration::from_secs(120)))
            .as_secs() as i64;
        let slot = {
            let mut slots = self.slots.lock().expect("broker slots");
            if slots.len() >= PRUNE_AT && slots.len().is_power_of_two() {
                // Bounded by the tenants with live sessions: expired (or
                // failed) entries nobody is using go.
                let now = (self.clock)();
                slots.retain(|_, s| match s.try_lock() {
                    Ok(held) => held.as_ref().is_some_and(|c| c.expiration_unix > now),
                    Err(_) => true,
                });
            }
            slots
                .entry(Self::key(function, tenant, role))
                .or_default()
                .clone()
        };
        let mut held = slot.lock().await;
        let now = (self.clock)();
        if let Some(c) = held.as_ref() {
            if c.expiration_unix - now >= min {
                self.count(|k| *k.cached.entry(function.to_string()).or_default() += 1);
                if c.expiration_unix - now < 2 * min {
                    self.refresh_in_background(function, tenant, role);
                }
                return Ok(RoleCredentials {
                    tenant: tenant.to_string(),
                    issued: c.clone(),
                });
            }
        }
        let issued = self.assume(function, tenant, role).await?;
        *held = Some(issued.clone());
        Ok(RoleCredentials {
            tenant: tenant.to_string(),
            issued,
        })
    }

    /// Starts getting `tenant`'s credentials (a VM of it is booting): the
    /// invoke then finds them cached. Failures are counted and logged; the
    /// invoke tries again and reports.
    pub fn prefetch(
        self: &Arc<Self>,
        function: &str,
        tenant: &str,
        role: &TenantRole,
        min_valid: Duration,
    ) {
        let (me, f, t, r) = (
            self.clone(),
            function.to_string(),
            tenant.to_string(),
            role.clone(),
        );
        tokio::spawn(async move {
            let _ = me.credentials(&f, &t, &r, min_valid).await;
        });
    }

    fn refresh_in_background(self: &Arc<Self>, function: &str, tenant: &str, role: &TenantRole) {
        let (me, f, t, r) = (
            self.clone(),
            function.to_string(),
            tenant.to_string(),
            role.clone(),
        );
        let key = Self::key(function, tenant, role);
        tokio::spawn(async move {
            let slot = me.slots.lock().expect("broker slots").get(&key).cloned();
            let Some(slot) = slot else { return };
            // Another refresh (or an asker) holds it: it is being renewed.
            let Ok(mut held) = slot.try_lock() else {
                return;
            };
            if let Ok(issued) = me.assume(&f, &t, &r).await {
                *held = Some(issued);
            }
        });
    }

    async fn assume(
        &self,
        function: &str,
        tenant: &str,
        role: &TenantRole,
    ) -> Result<Issued, BrokerError> {
        let fail = |source: StsError| {
            let e = BrokerError {
                function: function.to_string(),
                tenant: tenant.to_string(),
                source,
            };
            self.count(|k| {
                *k.failures
                    .entry((function.to_string(), e.reason()))
                    .or_default() += 1
            });
            tracing::warn!(function = %function, tenant_id = ?tenant, reason = e.reason(), error = %e.source, "tenant credentials: AssumeRole failed");
            e
        };
        let template = role
            .check(function)
            .map_err(|e| fail(StsError::Malformed(format!("the tenant role: {e}"))))?;
        let policy = template.render(tenant, function);
        let host = self
            .chain
            .credentials(&self.client)
            .await
            .map_err(|e| fail(StsError::NoHostCredentials(e)))?;
        let name = session_name(tenant);
        let (endpoint, region) = (role.endpoint(), role.region());
        let started = std::time::Instant::now();
        let issued = sts::assume_role(
            &self.client,
            &host,
            &AssumeRole {
                endpoint: &endpoint,
                region: &region,
                role_arn: &role.role_arn,
                session_name: &name,
                source_identity: &name,
                policy: &policy,
                tags: &[("tenant_id", tenant)],
                duration_s: role.duration_seconds,
            },
        )
        .await
        .map_err(fail)?;
        self.count(|k| *k.assumed.entry(function.to_string()).or_default() += 1);
        tracing::info!(
            function = %function,
            tenant_id = ?tenant,
            access_key_id = %issued.access_key_id,
            expires_in_s = issued.expiration_unix - (self.clock)(),
            assume_role_ms = started.elapsed().as_millis() as u64,
            "tenant credentials: role assumed"
        );
        Ok(issued)
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock().expect("broker counters"));
    }

    /// Drops every cached credential of `function` (deleted, or its role
    /// changed).
    pub fn forget_function(&self, function: &str) {
        self.slots
            .lock()
            .expect("broker slots")
            .retain(|k, _| k.0 != function);
    }

    /// Prometheus text of the broker's counters (per function: no tenant
    /// series, so the text stays bounded).
    pub fn render_metrics(&self) -> String {
        let k = self.counters.lock().expect("broker counters");
        let mut out = String::new();
        out.push_str("# HELP silo_tenant_credentials_assumed_total AssumeRole calls that gave a tenant credentials.\n# TYPE silo_tenant_credentials_assumed_total counter\n");
        for (f, n) in &k.assumed {
            out.push_str(&format!(
                "silo_tenant_credentials_assumed_total{{function={f:?}}} {n}\n"
            ));
        }
        out.push_str("# HELP silo_tenant_credentials_cached_total Tenant credentials handed out from the cache.\n# TYPE silo_tenant_credentials_cached_total counter\n");
        for (f, n) in &k.cached {
            out.push_str(&format!(
                "silo_tenant_credentials_cached_total{{function={f:?}}} {n}\n"
            ));
        }
        out.push_str("# HELP silo_tenant_credentials_failures_total Tenant credentials that could not be had, by reason.\n# TYPE silo_tenant_credentials_failures_total counter\n");
        for ((f, r), n) in &k.failures {
            out.push_str(&format!(
                "silo_tenant_credentials_failures_total{{function={f:?},reason=\"{r}\"}} {n}\n"
            ));
        }
        out
    }
}

impl Broker {
    /// How many (function, tenant, role) entries the cache holds.
    pub fn entries(&self) -> usize {
        self.slots.lock().expect("broker slots").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many tenants whose credentials could not be had (or expired) do not
    /// grow the cache without bound.
    #[tokio::test]
    async fn the_cache_forgets_what_it_cannot_use() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let broker = Broker::with(
            ChainSource {
                env: Some(HashMap::from([
                    ("AWS_ACCESS_KEY_ID".into(), "AKID".into()),
                    ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
                ])),
            },
            Arc::new(sts::now_unix),
        );
        let role = TenantRole {
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            sts_endpoint: Some(format!("http://127.0.0.1:{port}")),
            sts_region: None,
            duration_seconds: 900,
            session_policy: r#"{"S":"${tenant_id}"}"#.into(),
        };
        for i in 0..(PRUNE_AT + 10) {
            let e = broker
                .credentials("f", &format!("t{i}"), &role, Duration::from_secs(60))
                .await
                .unwrap_err();
            assert_eq!(e.reason(), "unreachable");
        }
        assert!(broker.entries() < 20, "{} entries", broker.entries());
    }
}
