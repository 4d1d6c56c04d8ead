//! The cluster's registry of functions and code in PostgreSQL
//! (`silo serve --registry postgres://...`), behind the small [`Registry`]
//! trait the [`Store`](crate::store::Store) writes through.
//!
//! - Records (`silo_functions`, the record as JSON) are written in a
//!   transaction that also `NOTIFY`s `silo_functions` with the name; every
//!   node `LISTEN`s on a connection of its own ([`PgRegistry::watch`]) and
//!   re-reads that function. NOTIFY has no replay: after every
//!   (re)connection of the listener the node re-reads everything
//!   ([`Change::Reread`]).
//! - Code (`silo_code`) is content-addressed by the SHA-256 of the package;
//!   a node fetches it on first use, checks the hash (a blob that does not
//!   match is refused) and caches it in its data directory.
//! - Membership: each node upserts its heartbeat row (`silo_nodes`) every
//!   [`HEARTBEAT`] and then reads who else is live (younger than
//!   [`MEMBER_EXPIRY`]): reserved concurrency is split across them
//!   ([`super::shares`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use fallible_iterator::FallibleIterator;

use crate::cluster::keys::{KeyRegistry, KEYS_CHANNEL};
use crate::cluster::pg::{message, PgConn, PgError};
use crate::cluster::shares::{Membership, Placement, MEMBER_EXPIRY};
use crate::store::FunctionRecord;

/// The notification channel of function changes.
pub const CHANNEL: &str = "silo_functions";

/// How often a node writes its heartbeat row.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// What the [`Store`](crate::store::Store) needs of a shared registry.
pub trait Registry: Send + Sync {
    /// Writes `rec` (and tells every node).
    fn put(&self, rec: &FunctionRecord) -> Result<(), PgError>;
    /// Removes function `name` (and tells every node).
    fn delete(&self, name: &str) -> Result<(), PgError>;
    /// Stores a package under its SHA-256 (hex).
    fn put_code(&self, sha256_hex: &str, zip: &[u8]) -> Result<(), PgError>;
    /// The package stored under `sha256_hex`, unchecked (the caller
    /// checks the hash).
    fn code(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, PgError>;
    /// One function's record.
    fn get(&self, name: &str) -> Result<Option<FunctionRecord>, PgError>;
    /// Every function's record.
    fn load(&self) -> Result<Vec<FunctionRecord>, PgError>;
    /// Whether this node is in touch with the registry now (never blocks).
    fn health(&self) -> RegistryHealth;
    /// Where this node stands among the live nodes, as last read (never
    /// blocks); `None` before the first read. See [`super::shares`].
    fn placement(&self) -> Option<Placement> {
        None
    }
    /// The access keys kept in the registry, if it keeps any (see
    /// [`super::keys`]).
    fn keys(&self) -> Option<&KeyRegistry> {
        None
    }
}

/// Whether a node is in touch with the registry (`/readyz`'s `registry`
/// check). Out of touch, the node still serves the functions it holds
/// (degraded): it cannot take changes or Event invokes, and it may miss
/// changes made meanwhile until its listener reconnects and re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryHealth {
    /// The node's last statement (its heartbeat runs one every
    /// [`HEARTBEAT`]) reached PostgreSQL.
    pub reachable: bool,
    /// Its listener is connected and has asked for a re-read of every
    /// function since it (re)connected.
    pub listening: bool,
}

impl RegistryHealth {
    /// Both hold.
    pub fn ok(&self) -> bool {
        self.reachable && self.listening
    }
}

/// A change another node (or this one) made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Function `name` was written or removed: read it again.
    Function(String),
    /// The listener (re)connected; notifications may have been missed:
    /// read every function again (the listener has re-read the keys).
    Reread,
}

/// The registry in PostgreSQL (see the module's documentation).
pub struct PgRegistry {
    db: Arc<PgConn>,
    node: String,
    listening: Arc<AtomicBool>,
    /// The live nodes as last read after a heartbeat (reserved
    /// concurrency shares).
    membership: Arc<Membership>,
    /// The access keys and this node's copy of them.
    keys: Arc<KeyRegistry>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn decode(name: &str, v: serde_json::Value) -> Result<FunctionRecord, String> {
    serde_json::from_value(v).map_err(|e| format!("the record of {name:?} is not readable: {e}"))
}

/// Waits `d` or until `stop`; returns whether stopped.
fn pause(stop: &(Mutex<bool>, Condvar), d: Duration) -> bool {
    let g = stop.0.lock().unwrap_or_else(|p| p.into_inner());
    let (g, _) = stop
        .1
        .wait_timeout_while(g, d, |s| !*s)
        .unwrap_or_else(|p| p.into_inner());
    *g
}

impl PgRegistry {
    /// The registry in `db`, for node `node` advertised at `address`;
    /// writes its first heartbeat and reads the membership, then starts
    /// the heartbeat thread (a beat, then a membership read, every
    /// [`HEARTBEAT`]).
    pub fn open(db: Arc<PgConn>, node: &str, address: &str) -> Arc<Self> {
        let r = Arc::new(Self {
            keys: Arc::new(KeyRegistry::open(db.clone())),
            db,
            node: node.to_string(),
            listening: Arc::new(AtomicBool::new(false)),
            membership: Arc::new(Membership::default()),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            threads: Mutex::new(Vec::new()),
        });
        let (db, node, address, membership, stop) = (
            r.db.clone(),
            node.to_string(),
            address.to_string(),
            r.membership.clone(),
            r.stop.clone(),
        );
        beat(&db, &node, &address, &membership);
        r.spawn("silo-heartbeat", move || loop {
            if pause(&stop, HEARTBEAT) {
                return;
            }
            beat(&db, &node, &address, &membership);
        });
        r
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) {
        if let Ok(t) = std::thread::Builder::new().name(name.into()).spawn(f) {
            self.threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(t);
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The nodes (id, address) whose heartbeat is younger than `within`,
    /// by id.
    pub fn members(&self, within: Duration) -> Result<Vec<(String, String)>, PgError> {
        members(&self.db, within)
    }

    /// Sends every function change to `changes` from a thread of its own,
    /// on a connection of its own, until the registry is dropped or
    /// `changes` is closed; re-reads the access keys itself on their
    /// notifications and on every (re)connection. Starts with [`Change::Reread`], and sends one after
    /// every reconnection.
    pub fn watch(&self, changes: tokio::sync::mpsc::UnboundedSender<Change>) {
        let (db, stop, listening) = (self.db.clone(), self.stop.clone(), self.listening.clone());
        let keys = self.keys.clone();
        self.spawn("silo-registry-listen", move || {
            listen(&db, &keys, &changes, &stop, &listening)
        });
    }
}

/// The nodes (id, address) of `db` whose heartbeat is younger than
/// `within`, by id.
fn members(db: &PgConn, within: Duration) -> Result<Vec<(String, String)>, PgError> {
    let rows = db.with("reading the cluster's members", |c| {
        c.query(
            "SELECT node, address FROM silo_nodes \
             WHERE heartbeat > now() - make_interval(secs => $1) ORDER BY node",
            &[&within.as_secs_f64()],
        )
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Writes `node`'s heartbeat, then reads the live nodes into `membership`.
/// Either failing leaves the last membership in force.
fn beat(db: &PgConn, node: &str, address: &str, membership: &Membership) {
    let written = db.with("writing this node's heartbeat", |c| {
        c.execute(
            "INSERT INTO silo_nodes (node, address, heartbeat) VALUES ($1, $2, now()) \
             ON CONFLICT (node) DO UPDATE SET address = $2, heartbeat = now()",
            &[&node, &address],
        )
    });
    if let Err(e) = written {
        tracing::warn!(error = %e, "heartbeat not written");
        return;
    }
    match members(db, MEMBER_EXPIRY) {
        Ok(live) => {
            let ids: Vec<String> = live.into_iter().map(|(n, _)| n).collect();
            if membership.update(node, &ids) {
                tracing::info!(live_nodes = ?ids, "cluster membership changed; reserved concurrency re-split");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "membership not read; the last reserved concurrency shares stay")
        }
    }
}

/// Re-reads the access keys (on the listener's thread: a revocation never
/// waits behind function changes being applied).
fn reload_keys(keys: &KeyRegistry) {
    if let Err(e) = keys.reload() {
        tracing::warn!(error = %e, "re-reading the access keys failed; the last ones stay until the next change or reconnect");
    }
}

/// The listener's loop (see [`PgRegistry::watch`]).
fn listen(
    db: &PgConn,
    keys: &KeyRegistry,
    changes: &tokio::sync::mpsc::UnboundedSender<Change>,
    stop: &(Mutex<bool>, Condvar),
    listening: &AtomicBool,
) {
    let mut lost = false;
    loop {
        let mut client = match db.open("listening for registry changes").and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {KEYS_CHANNEL}"))
                .map_err(|e| db.error("listening for registry changes", message(&e)))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                if !lost {
                    tracing::warn!(error = %e, "registry listener disconnected; retrying every second (this node serves from its cached functions meanwhile)");
                    lost = true;
                }
                if pause(stop, Duration::from_secs(1)) {
                    return;
                }
                continue;
            }
        };
        if lost {
            tracing::info!(database = %db.location(), "registry listener reconnected; re-reading every function");
        }
        reload_keys(keys);
        if changes.send(Change::Reread).is_err() {
            return;
        }
        listening.store(true, Ordering::Relaxed);
        loop {
            if *stop.0.lock().unwrap_or_else(|p| p.into_inner()) {
                return;
            }
            let next = client
                .notifications()
                .timeout_iter(Duration::from_millis(500))
                .next();
            match next {
                Ok(Some(n)) if n.channel() == KEYS_CHANNEL => reload_keys(keys),
                Ok(Some(n)) => {
                    if changes
                        .send(Change::Function(n.payload().to_string()))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %message(&e), "registry listener lost its connection");
                    listening.store(false, Ordering::Relaxed);
                    lost = true;
                    break;
                }
                Ok(None) if client.is_closed() => {
                    listening.store(false, Ordering::Relaxed);
                    lost = true;
                    break;
                }
                Ok(None) => {}
            }
        }
    }
}

impl Drop for PgRegistry {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        for t in std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner())) {
            let _ = t.join();
        }
        // A node that stops leaves the membership at once (the others
        // re-split reserved concurrency at their next heartbeat, not after
        // the expiry); on a thread of its own, as the client must not block
        // on a thread that drives an async runtime.
        let (db, node) = (self.db.clone(), self.node.clone());
        let _ = std::thread::Builder::new()
            .name("silo-leave".into())
            .spawn(move || {
                let left = db.with("leaving the cluster's membership", |c| {
                    c.execute("DELETE FROM silo_nodes WHERE node = $1", &[&node])
                });
                if let Err(e) = left {
                    tracing::warn!(error = %e, "membership row not removed; the others count this node out after its heartbeat expires");
                }
            })
            .map(|t| t.join());
    }
}

impl Registry for PgRegistry {
    fn placement(&self) -> Option<Placement> {
        self.membership.placement()
    }

    fn keys(&self) -> Option<&KeyRegistry> {
        Some(&self.keys)
    }

    fn health(&self) -> RegistryHealth {
        RegistryHealth {
            reachable: self.db.reachable(),
            listening: self.listening.load(Ordering::Relaxed),
        }
    }

    fn put(&self, rec: &FunctionRecord) -> Result<(), PgError> {
        let v = serde_json::to_value(rec)
            .map_err(|e| self.db.error("encoding a record", e.to_string()))?;
        self.db.with("writing a function", |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO silo_functions (name, record, changed_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (name) DO UPDATE SET record = $2, changed_at = now()",
                &[&rec.name, &v],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &rec.name])?;
            tx.commit()
        })
    }

    fn delete(&self, name: &str) -> Result<(), PgError> {
        self.db.with("removing a function", |c| {
            let mut tx = c.transaction()?;
            tx.execute("DELETE FROM silo_functions WHERE name = $1", &[&name])?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name])?;
            tx.commit()
        })
    }

    fn put_code(&self, sha256_hex: &str, zip: &[u8]) -> Result<(), PgError> {
        self.db.with("storing a package", |c| {
            c.execute(
                "INSERT INTO silo_code (sha256, zip) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
                &[&sha256_hex, &zip],
            )
        })?;
        Ok(())
    }

    fn code(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, PgError> {
        let row = self.db.with("reading a package", |c| {
            c.query_opt(
                "SELECT zip FROM silo_code WHERE sha256 = $1",
                &[&sha256_hex],
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn get(&self, name: &str) -> Result<Option<FunctionRecord>, PgError> {
        let row = self.db.with("reading a function", |c| {
            c.query_opt(
                "SELECT record FROM silo_functions WHERE name = $1",
                &[&name],
            )
        })?;
        row.map(|r| decode(name, r.get(0)))
            .transpose()
            .map_err(|m| self.db.error("reading a function", m))
    }

    fn load(&self) -> Result<Vec<FunctionRecord>, PgError> {
        let rows = self.db.with("reading the functions", |c| {
            c.query("SELECT name, record FROM silo_functions ORDER BY name", &[])
        })?;
        let mut out = Vec::new();
        for r in rows {
            let name: String = r.get(0);
            match decode(&name, r.get(1)) {
                Ok(rec) => out.push(rec),
                Err(m) => {
                    tracing::error!(function = %name, error = %m, "skipping an unreadable function record in the registry")
                }
            }
        }
        Ok(out)
    }
}
