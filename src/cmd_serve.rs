//! `silo serve`: the host daemon with its Lambda-compatible HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::daemon::config::DaemonConfig;
use crate::daemon::{Daemon, Images};

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
    /// Where functions and code persist [default: ~/.local/share/silo].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Accept unsigned requests as an administrator (local use only).
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Guest kernel [default: build silo's guest kernel].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Static guest agent [default: build it from this source tree].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// In-flight invocations per function (without reserved concurrency).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// In-flight invocations of one tenant of one function.
    #[arg(long)]
    pub per_tenant: Option<u32>,
    /// Seconds an idle environment is kept before it is destroyed.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
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
        cfg.allow_unauthenticated = self.allow_unauthenticated;
        cfg.check()?;
        if cfg.credentials.is_empty() && !cfg.allow_unauthenticated {
            return Err(
                "no credentials are configured: add [[credentials]] to the configuration file \
                 (--config), or pass --allow-unauthenticated for local use"
                    .into(),
            );
        }
        Ok(cfg)
    }

    /// Kernel and agent: given, or built from this tree.
    pub fn images(&self) -> Result<Images, String> {
        let kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => {
                silo_images::kernel::guest_kernel()
                    .map_err(|e| e.to_string())?
                    .vmlinux
            }
        };
        let agent = match &self.agent {
            Some(a) => a.clone(),
            None => silo_images::artifacts::guest_agent().map_err(|e| e.to_string())?,
        };
        for (what, p) in [("kernel", &kernel), ("agent", &agent)] {
            if !p.is_file() {
                return Err(format!("{what} {} is not a file", p.display()));
            }
        }
        Ok(Images { kernel, agent })
    }
}

/// A running daemon: its address and a way to stop it.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The daemon.
    pub daemon: Arc<Daemon>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, destroys idle VMs.
    pub async fn stop(self) -> usize {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.daemon.shutdown().await
    }
}

/// Starts the daemon on the current tokio runtime.
pub async fn start(cfg: DaemonConfig, images: Images) -> Result<Running, String> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let daemon = Daemon::start(cfg, images).map_err(|e| e.to_string())?;
    let app = crate::api::router(daemon.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(Running {
        addr,
        daemon,
        stop: tx,
        task,
    })
}

/// Runs `silo serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> ExitCode {
    let result = (|| {
        let cfg = args.resolve()?;
        let images = args.images()?;
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let running = start(cfg, images).await?;
            let d = &running.daemon;
            tracing::info!(
                listen = %running.addr,
                data_dir = %d.config.data_dir.display(),
                functions = d.list().len(),
                authentication = if d.config.allow_unauthenticated { "optional (--allow-unauthenticated)" } else { "SigV4 required" },
                "silo daemon serving the Lambda API"
            );
            println!("silo: serving on http://{}", running.addr);
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| e.to_string())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: finishing in-flight requests");
            let n = running.stop().await;
            tracing::info!(environments_destroyed = n, "stopped");
            Ok::<(), String>(())
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo serve: {e}");
            ExitCode::FAILURE
        }
    }
}
