//! Several `silo serve` nodes as one service, on engines operators already
//! run (`silo serve --registry postgres://...`, or `[cluster] registry`):
//!
//! - [`pg`]: the shared PostgreSQL connection and its versioned schema;
//! - [`registry`]: functions and code in PostgreSQL, changes pushed with
//!   LISTEN/NOTIFY, membership by heartbeat rows; the
//!   [`Store`](crate::store::Store) writes through it and caches on disk;
//! - [`keys`]: API access keys created and revoked through any node;
//! - [`shares`]: each function's reserved concurrency split across the
//!   live nodes;
//! - [`PgEventStore`](crate::event_store::PgEventStore): the Event queue
//!   all nodes share, claimed with leases;
//! - [`sync`]: a node applying the others' changes and adopting a lost
//!   node's events;
//! - [`haproxy`]: the HAProxy configuration that routes each (function,
//!   tenant) to one node by consistent hashing (an affinity hint, never the
//!   isolation boundary: each node keeps one tenant per environment).
//!
//! Without a registry the daemon is one host with its embedded stores, as
//! before.

pub mod haproxy;
pub mod keys;
pub mod pg;
pub mod registry;
pub mod shares;
pub(crate) mod sync;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::DaemonConfig;
use crate::event_store::{EventStore, PgEventStore};
use crate::state::StartError;
use crate::store::Store;

/// `[cluster]`: this node's part in a cluster.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The PostgreSQL URL (`postgres://user:password@host:port/db`);
    /// unset: one host with its embedded stores.
    pub registry: Option<String>,
    /// This node's id, unique in the cluster and stable across its
    /// restarts (it takes its own queued events back at start). Unset:
    /// `<hostname>:<listen port>`.
    pub node: Option<String>,
    /// The address other parts reach this node at (membership rows).
    /// Unset: the listen address.
    pub advertise: Option<String>,
    /// Seconds an Event claim lasts without renewal: a dead node's events
    /// run elsewhere after about this long. Unset: 30.
    pub event_lease_s: Option<u64>,
}

impl std::fmt::Debug for ClusterConfig {
    // The URL may hold a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("registry", &self.registry.as_ref().map(|_| "(set)"))
            .field("node", &self.node)
            .field("advertise", &self.advertise)
            .field("event_lease_s", &self.event_lease_s)
            .finish()
    }
}

/// This node's id (see [`ClusterConfig::node`]).
pub fn node_id(config: &DaemonConfig) -> String {
    config.cluster.node.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", config.listen.port())
    })
}

/// A node's function store, Event queue and registry.
pub(crate) type NodeStores = (
    Store,
    Arc<dyn EventStore>,
    Option<Arc<registry::PgRegistry>>,
);

/// The stores of a cluster node: the data directory as a cache of the
/// registry in `url`, and the shared Event queue. Fails when PostgreSQL
/// cannot be reached or its schema is not silo's.
pub(crate) fn open_stores(config: &DaemonConfig, url: &str) -> Result<NodeStores, StartError> {
    let db = Arc::new(pg::PgConn::connect(url)?);
    let node = node_id(config);
    let address = config
        .cluster
        .advertise
        .clone()
        .unwrap_or_else(|| config.listen.to_string());
    let lease = config
        .cluster
        .event_lease_s
        .map_or(crate::event_store::postgres::DEFAULT_LEASE, |s| {
            Duration::from_secs(s.max(1))
        });
    let registry = registry::PgRegistry::open(db.clone(), &node, &address);
    let store = Store::open(&config.data_dir)?.with_registry(registry.clone());
    let events: Arc<dyn EventStore> = Arc::new(PgEventStore::open(db, &node, lease));
    tracing::info!(database = %url_location(url), node = %node, address = %address, "cluster node: registry and Event queue in PostgreSQL");
    Ok((store, events, Some(registry)))
}

/// The database's location for logs (no credentials).
fn url_location(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, rest)) => rest.to_string(),
        None => url.to_string(),
    }
}
