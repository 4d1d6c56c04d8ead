//! `silo serve`: the host daemon with its Lambda-compatible HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use silo_daemon::config::DaemonConfig;
use silo_daemon::Images;

/// Flags for `silo serve` (they override the configuration file).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Configuration file (TOML): listen address, data directory, limits,
    /// credentials. See docs/DAEMON.md.
    #[arg(long, env = "SILO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9000].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Also serve `GET /metrics` without authentication on this address
    /// (e.g. 127.0.0.1:9101); on the API address it needs an admin key.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where functions and code persist [default: ~/.local/share/silo].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Accept unsigned requests as an administrator (local use only).
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Start microVMs unjailed, as the daemon's user in the host's
    /// namespaces (logged on every boot). Without it, a host that cannot
    /// jail (not root, no cgroup v2) boots no VM.
    #[arg(long)]
    pub insecure_no_jail: bool,
    /// Guest kernel [default: build silo's guest kernel].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Static guest agent [default: build it from this source tree].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// In-flight invocations host-wide of functions without reserved
    /// concurrency [default: sized from the host].
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// In-flight invocations of one tenant of one function.
    #[arg(long)]
    pub per_tenant: Option<u32>,
    /// Seconds an idle environment is kept before it is destroyed.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Join a cluster: functions, code and the Event queue in this
    /// PostgreSQL (`postgres://user:password@host:port/db`) instead of the
    /// data directory (then a cache). See docs/ARCHITECTURE.md.
    #[arg(long, env = "SILO_REGISTRY", hide_env_values = true)]
    pub registry: Option<String>,
    /// This node's id in the cluster [default: <hostname>:<listen port>].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Log lines as text, or as JSON objects (one per line, for journald
    /// and log shippers).
    #[arg(long, value_enum, env = "SILO_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How `silo serve` writes its log (stderr).
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl ServeArgs {
    /// The configuration: the file (if any), then the flags.
    pub fn resolve(&self) -> Result<DaemonConfig, String> {
        let mut cfg = match &self.config {
            Some(p) => DaemonConfig::load(p).map_err(|e| e.to_string())?,
            None => DaemonConfig::default(),
        };
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(m) = self.metrics_listen {
            cfg.metrics_listen = Some(m);
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(n) = self.concurrency {
            cfg.limits.concurrency = n;
        }
        if let Some(n) = self.per_tenant {
            cfg.limits.per_tenant = n;
        }
        if let Some(n) = self.idle_timeout {
            cfg.limits.idle_timeout_s = n;
        }
        if let Some(r) = &self.registry {
            cfg.cluster.registry = Some(r.clone());
        }
        if let Some(n) = &self.node_id {
            cfg.cluster.node = Some(n.clone());
        }
        cfg.allow_unauthenticated = self.allow_unauthenticated;
        cfg.insecure_no_jail = self.insecure_no_jail;
        cfg.check().map_err(|e| e.to_string())?;
        if cfg.credentials.is_empty() && !cfg.allow_unauthenticated {
            return Err(
                "no credentials are configured: add [[credentials]] to the configuration file \
                 (--config), or pass --allow-unauthenticated for local use"
                    .into(),
            );
        }
        Ok(cfg)
    }

    /// Kernel and agent: the flags, else the configuration, else the
    /// kernel from the recipe this binary carries (built now if missing:
    /// `silo images build` builds it ahead) and the agent installed with
    /// this `silo`, or built from the checkout it runs from.
    pub fn images(&self, cfg: &DaemonConfig) -> Result<Images, String> {
        let kernel = match self.kernel.as_ref().or(cfg.kernel.as_ref()) {
            Some(k) => k.clone(),
            None => {
                silo_images::kernel::guest_kernel()
                    .map_err(|e| {
                        format!("no kernel given and the guest kernel's recipe failed: {e}")
                    })?
                    .vmlinux
            }
        };
        let agent = match self.agent.as_ref().or(cfg.agent.as_ref()) {
            Some(a) => a.clone(),
            None => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find this executable: {e}"))?;
                silo_images::artifacts::agent_for(&exe).map_err(|e| e.to_string())?
            }
        };
        for (what, p) in [("kernel", &kernel), ("agent", &agent)] {
            if !p.is_file() {
                return Err(format!("{what} {} is not a file", p.display()));
            }
        }
        Ok(Images { kernel, agent })
    }
}

/// Names in `cfg.runtimes` every managed runtime the configuration leaves
/// out whose cache entry `silo images build` (or a test, or `silo demo`)
/// built from the recipes this `silo` carries. Builds nothing: the daemon never runs a recipe; a function on a runtime
/// that is not built is refused at creation, saying to run `silo images
/// build`. The daemon checks an entry's file against its manifest when it
/// first uses it.
fn find_built_runtimes(cfg: &mut DaemonConfig) {
    for name in silo_images::runtime::MANAGED_RUNTIMES {
        if cfg.runtimes.contains_key(name) {
            continue;
        }
        match silo_images::runtime::built_runtime_image(name) {
            Ok(Some(rt)) => {
                tracing::info!(runtime = %name, dir = %rt.dir.display(), "managed runtime found built (checked against its manifest at first use)");
                cfg.runtimes.insert(name.to_string(), rt.dir);
            }
            Ok(None) => tracing::warn!(
                runtime = %name,
                "managed runtime not built: functions on it are refused until `silo images build` \
                 builds it (or [runtimes] names a built one)"
            ),
            Err(e) => {
                tracing::error!(runtime = %name, error = %e, "cannot look up the managed runtime's build: functions on it are refused")
            }
        }
    }
}

/// Runs `silo serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> ExitCode {
    let result = (|| {
        let mut cfg = args.resolve()?;
        let images = args.images(&cfg)?;
        find_built_runtimes(&mut cfg);
        silo_daemon::serve::run(cfg, images).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo serve: {e}");
            ExitCode::FAILURE
        }
    }
}
