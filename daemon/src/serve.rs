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

/// A running daemon: its addresses and a way to stop it.
pub struct Running {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// Where unauthenticated `/metrics` is served, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The daemon.
    pub daemon: Arc<Daemon>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, destroys idle VMs.
    pub async fn stop(self) -> usize {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.daemon.shutdown().await
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })
}

/// Serves `app` on `listener` until `stop` turns true.
fn spawn_server(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    })
}

/// Starts the daemon on the current tokio runtime.
pub async fn start(cfg: DaemonConfig, images: Images) -> Result<Running, ServeError> {
    let listener = bind(cfg.listen).await?;
    let addr = listener.local_addr().map_err(ServeError::Io)?;
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(ServeError::Io)?),
        None => None,
    };
    let daemon = Daemon::start(cfg, images)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![spawn_server(
        listener,
        crate::api::router(daemon.clone()),
        rx.clone(),
    )];
    if let Some(l) = metrics_listener {
        tasks.push(spawn_server(
            l,
            crate::api::metrics_router(daemon.clone()),
            rx,
        ));
    }
    Ok(Running {
        addr,
        metrics_addr,
        daemon,
        stop: tx,
        tasks,
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
            metrics_listen = %running.metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "none (/metrics needs an admin key)".into()),
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
