//! Serving the Lambda API: [`start`] binds the listener, starts the
//! [`Daemon`] and serves until [`Running::stop`]; [`run`] is `silo serve`
//! after its flags: serve until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::DaemonConfig;
use crate::{Daemon, Images, StartError};

/// Errors serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address cannot be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon cannot start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The runtime, the listener's address or the signal handler failed.
    #[error("{0}")]
    Io(std::io::Error),
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
pub async fn start(cfg: DaemonConfig, images: Images) -> Result<Running, ServeError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Io)?;
    let daemon = Daemon::start(cfg, images)?;
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

/// Serves on a new tokio runtime until SIGINT or SIGTERM, then finishes
/// in-flight requests and destroys idle VMs (`silo serve`).
pub fn run(cfg: DaemonConfig, images: Images) -> Result<(), ServeError> {
    let rt = tokio::runtime::Runtime::new().map_err(ServeError::Io)?;
    rt.block_on(async move {
        let running = start(cfg, images).await?;
        let d = &running.daemon;
        tracing::info!(
            listen = %running.addr,
            data_dir = %d.config.data_dir.display(),
            functions = d.list().len(),
            authentication = match (d.config.allow_unauthenticated, d.config.credentials.is_empty()) {
                (true, true) => "none: every caller is an administrator (--allow-unauthenticated, no keys)",
                (true, false) => "SigV4 required (--allow-unauthenticated ignored: keys are configured)",
                (false, _) => "SigV4 required",
            },
            "silo daemon serving the Lambda API"
        );
        println!("silo: serving on http://{}", running.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ServeError::Io)?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: finishing in-flight requests");
        let n = running.stop().await;
        tracing::info!(environments_destroyed = n, "stopped");
        Ok(())
    })
}
