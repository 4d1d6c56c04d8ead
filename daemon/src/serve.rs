//! Serving the Lambda API: [`start`] binds the listener, starts the
//! [`Daemon`] and serves until [`Running::stop`]; [`run`] is `silo serve`
//! after its flags: serve until SIGINT or SIGTERM.
//!
//! Connections are served by hyper's HTTP/1 server with the limits of
//! `[limits]`: at most `max_connections` open at once (more wait in the
//! listen backlog), request line and headers within `max_header_bytes` and
//! `header_read_timeout_s` (which also closes idle keep-alive connections).
//! Body sizes are checked per operation before a body is read (see
//! [`api`](crate::api)).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;

use crate::config::{DaemonConfig, LimitsConfig};
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
    /// Where the HTTP gateway listens, if configured.
    pub gateway_addr: Option<SocketAddr>,
    /// The daemon.
    pub daemon: Arc<Daemon>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, destroys idle VMs.
    ///
    /// In order: `/readyz` turns 503 and the event workers take no new
    /// event; the listeners close; requests in flight and the events being
    /// run get [`SHUTDOWN_GRACE`] to finish (queued events stay in the event
    /// store, and so does one still running then: it runs again after the
    /// next start); then every VM is shut down.
    pub async fn stop(self) -> usize {
        let events = self.daemon.stop_event_workers(SHUTDOWN_GRACE);
        let _ = self.stop.send(true);
        let servers = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        let (finished, ()) = tokio::join!(events, servers);
        if !finished {
            tracing::warn!("events still running at the end of the grace period stay queued in the event store and run again after the next start");
        }
        self.daemon.shutdown().await
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })
}

/// Serves `app` on `listener` with the connection and header limits of
/// `limits`, until `stop` turns true.
fn spawn_server(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: LimitsConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve_connections(listener, app, limits, stop))
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
    let gateway_listener = match cfg.gateway.listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let gateway_addr = match &gateway_listener {
        Some(l) => Some(l.local_addr().map_err(ServeError::Io)?),
        None => None,
    };
    let daemon = Daemon::start(cfg, images)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let limits = daemon.config.limits;
    let mut tasks = vec![spawn_server(
        listener,
        crate::api::router(daemon.clone()),
        limits,
        rx.clone(),
    )];
    if let Some(l) = gateway_listener {
        tasks.push(spawn_server(
            l,
            crate::gateway::router(daemon.clone()),
            limits,
            rx.clone(),
        ));
    }
    if let Some(l) = metrics_listener {
        tasks.push(spawn_server(
            l,
            crate::api::metrics_router(daemon.clone()),
            limits,
            rx,
        ));
    }
    Ok(Running {
        addr,
        metrics_addr,
        gateway_addr,
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
            gateway_listen = %running.gateway_addr.map(|a| a.to_string()).unwrap_or_else(|| "none".into()),
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

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// In-flight requests get this long to finish once the daemon stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Accepts connections (at most `limits.max_connections` open at once) and
/// serves each with the header limits, until `stop`.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: LimitsConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_s))
        .max_buf_size(limits.max_header_bytes.max(crate::config::MIN_HEADER_BYTES))
        .keep_alive(true);
    loop {
        // A connection slot first: at the limit, new connections wait in
        // the kernel's backlog rather than costing memory here.
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer's address reaches handlers as `ConnectInfo` (the
        // gateway's `sourceIp`).
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower_service::Service::call(&mut app.clone(), req)
            });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; stopping anyway");
    }
}
