//! The daemon's configuration file (TOML). Every field has a default, so an
//! empty file is valid; unknown fields are refused, naming the field.
//!
//! ```toml
//! listen = "127.0.0.1:9000"
//! metrics_listen = "127.0.0.1:9101"  # optional: /metrics without a key
//! metrics_tenant_series = 200 # tenants with series of their own in /metrics
//! data_dir = "/var/lib/silo"
//! run_dir = "/run/silo"   # VM run directories; default: "<data_dir>-run"
//! console_bytes = 65536   # each VM's console ring; 0: console off
//! small_pages = false     # guest RAM on 4 KiB host pages (docs/DAEMON.md)
//! kernel = "/var/lib/silo/images/vmlinux"   # default: silo images build's
//! agent = "/var/lib/silo/images/silo-guest-agent"
//! region = "us-east-1"
//! account_id = "000000000000"
//!
//! [limits]
//! concurrency = 0         # in-flight invocations host-wide of functions
//!                         # without reserved concurrency; 0: sized from
//!                         # the host (memory / 128 MiB, at least 16 per CPU)
//! memory_mib = 0          # guest memory of VMs booting or booted, host-
//!                         # wide; 0: three quarters of the host's memory
//! tenant_environments = 0 # VMs one tenant may hold across functions;
//!                         # 0: a quarter of concurrency, at least per_tenant
//! per_tenant = 8          # in-flight invocations of one tenant
//! idle_timeout_s = 300
//! event_queue = 1000      # queued asynchronous (Event) invocations
//! event_queue_per_tenant = 100 # of which one tenant may hold at most
//! event_workers = 4       # Event invocations running at once
//! max_booting = 0         # microVMs booting at once; 0: one per host CPU
//! cold_start_queue = 256  # cold starts waiting for a boot slot
//! pool_boot_slots = 0     # of the boot slots, the most pool boots may
//!                         # hold; 0: half of max_booting (at least 1)
//! init_timeout_s = 120    # an environment must be ready this soon after
//!                         # its invoke arrived, or the invoke gets a 429
//! max_connections = 512   # open HTTP connections; more wait to be accepted
//! header_read_timeout_s = 10 # a request's headers must arrive this soon
//!                         # (also how long an idle connection is kept)
//! body_read_timeout_s = 60 # a request's body must arrive this soon
//! max_header_bytes = 16384 # request line and headers, at most
//!
//! runtime_delivery = "pmem" # how a managed runtime (python3.11,
//!                         # nodejs22.x) reaches its VMs: "pmem" (one
//!                         # read-only image shared by
//!                         # every VM, virtio-pmem with DAX) or "initramfs"
//!                         # (a copy in each VM's initramfs)
//! runtime_sharing = "tenant" # which VMs map the same pmem image pages:
//!                         # "tenant" (a tenant's own copy) or "host"
//!                         # (every VM: an opt-in side channel, see
//!                         # docs/SECURITY.md)
//!
//! [runtimes]              # a managed runtime's built image (its cache
//! "python3.11" = "/var/lib/silo/images/python3.11" # entry); unset: the one
//!                         # `silo images build` built (never the daemon)
//! "nodejs22.x" = "/var/lib/silo/images/nodejs22.x"
//! [jail]                  # every VMM runs jailed (docs/SECURITY.md)
//! uid_base = 1000000000   # each live VM gets its own uid/gid from here
//! uid_count = 65536
//! cgroup_parent = "/sys/fs/cgroup/silo"
//! memory_overhead_mib = 64 # memory.max = guest memory + this
//! cpu_full_at_mib = 1769  # cpu.max: one CPU at this much memory, as Lambda
//! cpu_min_percent = 5     # the smallest share of a CPU
//! pids_max = 32
//!
//! [network]               # one network per VM (docs/DAEMON.md); off:
//! enabled = false         # loopback only
//! egress = "internet"     # or "none", or { allow = ["10.1.2.3/32:5432"] }
//! dns = ["192.0.2.53"]    # default: the host's (non-loopback) resolvers
//! ready_slots = 4         # namespaces prepared ahead
//! bandwidth_bytes_per_s = 0 # per VM and direction; 0: unlimited
//! [network.functions]     # per function (the API's PUT .../network wins)
//! "my-fn" = "none"
//!
//! [gateway]               # the HTTP front door (docs/DAEMON.md); off
//! listen = "0.0.0.0:8080" # unless listen is set
//! tenant_rps = 50         # per tenant, with tenant_burst = 100
//! [gateway.authorizers.main] # JWT: issuer, audiences, jwks_url or
//! issuer = "https://id.example.com/" # jwks_file, tenant_claim
//! audiences = ["orders-api"]
//! jwks_url = "https://id.example.com/.well-known/jwks.json"
//! # jwks_ca_file = "/etc/silo/id-ca.pem" # https: trust only this CA
//! #                       # (PEM); unset: the public web roots
//! # allow_http_jwks = true # needed for a plain http:// jwks_url
//! tenant_claim = "tenant_id"
//! [tenant_roles."my-fn"]  # tenant-scoped credentials (docs/DAEMON.md)
//! role_arn = "arn:aws:iam::123456789012:role/tenants"
//! session_policy = '{"Version":"2012-10-17","Statement":[...${tenant_id}...]}'
//!
//! [pools]                 # microVMs booted ahead of time, bound to no
//! counter = 2             # tenant until a new tenant's first invoke
//!
//! [[credentials]]         # an admin key: any tenant, any operation
//! access_key_id = "AKIDADMIN"
//! secret_access_key = "..."
//!
//! [[credentials]]         # a key that may only invoke as tenant-A
//! access_key_id = "AKIDTENANTA"
//! secret_access_key = "..."
//! tenants = ["tenant-A"]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// If set, a second listener serving only `GET /metrics`, without
    /// authentication (on the API address `/metrics` needs an admin key). A
    /// port alone (`9101` or `"9101"`) binds 127.0.0.1.
    #[serde(deserialize_with = "address_or_port")]
    pub metrics_listen: Option<SocketAddr>,
    /// Tenants with series of their own in `/metrics`, across functions:
    /// the busiest; the others are summed per function under
    /// `tenant_id="(other)"`, so that any number of tenants keeps the text
    /// bounded.
    pub metrics_tenant_series: usize,
    /// Where functions and code are kept (the store).
    pub data_dir: PathBuf,
    /// Where VMs' run directories (sockets, boot timelines) and function
    /// images live: never inside the store, nor the store inside it, so a
    /// full or wiped run area leaves stored functions alone. Unset:
    /// `<data_dir>-run`. See [`DaemonConfig::run_dir`].
    #[serde(rename = "run_dir")]
    pub run_dir_setting: Option<PathBuf>,
    /// Bytes of each VM's serial console kept in the daemon's memory (a
    /// ring: older output is overwritten); 0 turns the console off.
    pub console_bytes: usize,
    /// Back guest RAM with 4 KiB host pages (`silo-vmm --small-pages`),
    /// not transparent huge pages: less held when idle, slower boots.
    pub small_pages: bool,
    /// Region in ARNs.
    pub region: String,
    /// Account id in ARNs.
    pub account_id: String,
    /// Scheduling limits.
    pub limits: LimitsConfig,
    /// Access keys allowed to call the API.
    pub credentials: Vec<Credential>,
    /// Guest kernel (ELF vmlinux or bzImage); `--kernel` overrides it.
    /// Unset: the kernel `silo images build` built for this installation.
    pub kernel: Option<PathBuf>,
    /// Static guest agent; `--agent` overrides it. Unset: as for `kernel`.
    pub agent: Option<PathBuf>,
    /// Pre-booted environments per function name (bound to no tenant until
    /// a new tenant's first invoke takes one); `PUT .../pool` overrides it.
    pub pools: std::collections::BTreeMap<String, u32>,
    /// Tenant roles per function name (`[tenant_roles."name"]`;
    /// `PUT .../tenant-role` overrides it): see [`crate::creds`].
    pub tenant_roles: std::collections::BTreeMap<String, crate::creds::TenantRole>,
    /// Managed runtimes' built images by runtime id (`[runtimes]`): the
    /// directory `silo images build` printed. Unset: that build, if any
    /// (the daemon never builds one).
    pub runtimes: std::collections::BTreeMap<String, PathBuf>,
    /// How a managed runtime's tree reaches its VMs.
    pub runtime_delivery: RuntimeDelivery,
    /// Which VMs may map the same pages of a runtime's pmem image
    /// ([`crate::runtime_copies`]).
    pub runtime_sharing: crate::runtime_copies::RuntimeSharing,
    /// Accept unsigned requests as an administrator (`--allow-unauthenticated`;
    /// a flag, never read from the file).
    #[serde(skip)]
    pub allow_unauthenticated: bool,
    /// The per-VM jail: ids, cgroup parent, limits (see docs/SECURITY.md).
    pub jail: crate::jail::JailSettings,
    /// One network per VM and the functions' egress policies (off by
    /// default).
    pub network: crate::net::NetworkConfig,
    /// The HTTP gateway (`[gateway]`, off unless `listen` is set).
    pub gateway: crate::gateway::GatewayConfig,
    /// Function logs kept on the host (`[logs]`, see [`crate::logs`]).
    pub logs: crate::logs::LogsConfig,
    /// Several nodes on one PostgreSQL (`[cluster]`, off unless
    /// `registry` is set; see [`crate::cluster`]).
    pub cluster: crate::cluster::ClusterConfig,
    /// Start VMMs unjailed (`--insecure-no-jail`; a flag, never read from
    /// the file). Logged on every boot.
    #[serde(skip)]
    pub insecure_no_jail: bool,
}

/// How a managed runtime's tree reaches a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeDelivery {
    /// Copied into each VM's initramfs (unpacked into guest memory): the
    /// baseline the shared image is measured against.
    Initramfs,
    /// One read-only image shared by every VM of the runtime (virtio-pmem,
    /// mounted with DAX: guests map the host's page cache of the image).
    #[default]
    Pmem,
}

/// Smallest `limits.max_header_bytes` (the HTTP server's smallest buffer).
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Largest `limits.max_header_bytes`.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

mod check;
mod limits;
#[cfg(test)]
mod tests;

pub use check::{ConfigError, InvalidConfig};
pub use limits::LimitsConfig;

/// One access key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Access key id (as in `AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// Secret (as in `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: String,
    /// If set, the key may only invoke as these tenants and may not change
    /// functions.
    pub tenants: Option<Vec<String>>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            metrics_listen: None,
            metrics_tenant_series: crate::metrics::DEFAULT_TENANT_SERIES,
            data_dir: default_data_dir(),
            run_dir_setting: None,
            console_bytes: crate::console::DEFAULT_CONSOLE_BYTES,
            small_pages: false,
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            limits: LimitsConfig::default(),
            credentials: Vec::new(),
            pools: std::collections::BTreeMap::new(),
            tenant_roles: std::collections::BTreeMap::new(),
            runtimes: std::collections::BTreeMap::new(),
            runtime_delivery: RuntimeDelivery::default(),
            runtime_sharing: Default::default(),
            kernel: None,
            agent: None,
            allow_unauthenticated: false,
            jail: crate::jail::JailSettings::default(),
            network: crate::net::NetworkConfig::default(),
            gateway: crate::gateway::GatewayConfig::default(),
            logs: crate::logs::LogsConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            insecure_no_jail: false,
        }
    }
}

/// `metrics_listen`: an address, or a port alone on the loopback address.
fn address_or_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Port(u16),
        Text(String),
    }
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    match Raw::deserialize(d)? {
        Raw::Port(p) => Ok(Some(loopback(p))),
        Raw::Text(t) => t
            .parse::<SocketAddr>()
            .or_else(|_| t.parse::<u16>().map(loopback))
            .map(Some)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "metrics_listen {t:?} is neither an address (127.0.0.1:9101) nor a port"
                ))
            }),
    }
}

/// `$XDG_DATA_HOME/silo`, else `~/.local/share/silo`.
fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("silo");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".local/share/silo")
}
