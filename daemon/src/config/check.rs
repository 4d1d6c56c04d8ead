//! Reading a configuration file and checking the values its types cannot
//! refuse.

use std::path::{Path, PathBuf};

use super::{DaemonConfig, MAX_HEADER_BYTES, MIN_HEADER_BYTES};

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Not valid TOML or not the expected fields.
    #[error("{0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// Valid syntax, invalid values.
    #[error("{0}: {1}")]
    Invalid(PathBuf, InvalidConfig),
}

/// A value the types cannot refuse, refused by [`DaemonConfig::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// `[network]` names or ranges are invalid.
    #[error("{0}")]
    Network(String),
    /// `[gateway]` settings are invalid.
    #[error("{0}")]
    Gateway(String),
    /// A `[tenant_roles]` entry cannot work.
    #[error("tenant_roles.{0}: {1}")]
    TenantRole(String, String),
    /// `limits.per_tenant` is 0.
    #[error("limits.per_tenant must be at least 1")]
    PerTenant,
    /// `limits.cold_start_queue` is 0.
    #[error("limits.cold_start_queue must be at least 1")]
    ColdStartQueue,
    /// A `[jail]` setting is out of range.
    #[error("{0}")]
    Jail(String),
    /// `limits.init_timeout_s` is out of range.
    #[error("limits.init_timeout_s must be between 1 and 3600")]
    InitTimeout,
    /// `limits.event_queue`, `limits.event_queue_per_tenant` or
    /// `limits.event_workers` is 0.
    #[error("limits.event_queue, limits.event_queue_per_tenant and limits.event_workers must be at least 1")]
    EventQueue,
    /// `limits.max_connections` is 0.
    #[error("limits.max_connections must be at least 1")]
    MaxConnections,
    /// A request timeout is out of range.
    #[error(
        "limits.header_read_timeout_s and limits.body_read_timeout_s must be between 1 and 3600"
    )]
    RequestTimeout,
    /// `limits.max_header_bytes` is out of range.
    #[error("limits.max_header_bytes must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}")]
    MaxHeaderBytes,
    /// `[runtimes]` names a runtime this build does not offer.
    #[error("runtimes: {0:?} is not a managed runtime (offered: {offered})", offered = silo_images::runtime::MANAGED_RUNTIMES.join(", "))]
    UnknownRuntime(String),
    /// `console_bytes` is too large.
    #[error("console_bytes must be at most {max} (0 turns the console off)", max = crate::console::MAX_CONSOLE_BYTES)]
    ConsoleBytes,
    /// `[logs] write_delay_ms` out of its range.
    #[error("[logs] write_delay_ms must be 1 to 10000 (ms the log writer waits to batch lines)")]
    LogWriteDelay,
    /// The run directory and the data directory overlap.
    #[error(
        "run_dir {run} and data_dir {data} must not be the same directory or inside one another"
    )]
    RunDirOverlaps {
        /// The run directory.
        run: PathBuf,
        /// The data directory.
        data: PathBuf,
    },
    /// A credential without its key id or secret.
    #[error("credentials: access_key_id and secret_access_key must not be empty")]
    EmptyCredential,
    /// Two credentials with one key id.
    #[error("credentials: access key {0} is listed twice")]
    DuplicateKey(String),
    /// A credential names an invalid tenant id.
    #[error("credentials: key {key}: tenant {tenant:?}: {reason}")]
    Tenant {
        /// The access key id.
        key: String,
        /// The tenant id as written.
        tenant: String,
        /// Why it is not a tenant id.
        reason: silo_scheduler::InvalidTenantId,
    },
}

impl DaemonConfig {
    /// The run directory: `run_dir` if set, else `<data_dir>-run` (a
    /// sibling of the store, unique per data directory).
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir_setting.clone().unwrap_or_else(|| {
            let mut name = self
                .data_dir
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "silo".into());
            name.push("-run");
            self.data_dir.with_file_name(name)
        })
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))?;
        cfg.check()
            .map_err(|m| ConfigError::Invalid(path.into(), m))?;
        Ok(cfg)
    }

    /// Checks values the types cannot.
    pub fn check(&self) -> Result<(), InvalidConfig> {
        if self.limits.per_tenant == 0 {
            return Err(InvalidConfig::PerTenant);
        }
        if self.limits.cold_start_queue == 0 {
            return Err(InvalidConfig::ColdStartQueue);
        }
        if !(1..=3600).contains(&self.limits.init_timeout_s) {
            return Err(InvalidConfig::InitTimeout);
        }
        self.jail.check().map_err(InvalidConfig::Jail)?;
        self.network.validate().map_err(InvalidConfig::Network)?;
        self.gateway.validate().map_err(InvalidConfig::Gateway)?;
        for (name, role) in &self.tenant_roles {
            role.check(name)
                .map_err(|e| InvalidConfig::TenantRole(name.clone(), e.to_string()))?;
        }
        let l = &self.limits;
        if l.event_queue == 0 || l.event_queue_per_tenant == 0 || l.event_workers == 0 {
            return Err(InvalidConfig::EventQueue);
        }
        if l.max_connections == 0 {
            return Err(InvalidConfig::MaxConnections);
        }
        if !(1..=3600).contains(&l.header_read_timeout_s)
            || !(1..=3600).contains(&l.body_read_timeout_s)
        {
            return Err(InvalidConfig::RequestTimeout);
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&l.max_header_bytes) {
            return Err(InvalidConfig::MaxHeaderBytes);
        }
        if let Some(name) = self
            .runtimes
            .keys()
            .find(|n| !silo_images::runtime::MANAGED_RUNTIMES.contains(&n.as_str()))
        {
            return Err(InvalidConfig::UnknownRuntime(name.clone()));
        }
        if self.console_bytes > crate::console::MAX_CONSOLE_BYTES {
            return Err(InvalidConfig::ConsoleBytes);
        }
        if !(1..=10_000).contains(&self.logs.write_delay_ms) {
            return Err(InvalidConfig::LogWriteDelay);
        }
        let (run, data) = (absolute(&self.run_dir()), absolute(&self.data_dir));
        if run.starts_with(&data) || data.starts_with(&run) {
            return Err(InvalidConfig::RunDirOverlaps { run, data });
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.credentials {
            if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
                return Err(InvalidConfig::EmptyCredential);
            }
            if !seen.insert(&c.access_key_id) {
                return Err(InvalidConfig::DuplicateKey(c.access_key_id.clone()));
            }
            for t in c.tenants.iter().flatten() {
                silo_scheduler::TenantId::parse(t).map_err(|reason| InvalidConfig::Tenant {
                    key: c.access_key_id.clone(),
                    tenant: t.clone(),
                    reason,
                })?;
            }
        }
        Ok(())
    }
}

/// `p` made absolute against the working directory, `.` and `..` resolved
/// lexically (the directories need not exist yet).
fn absolute(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}
