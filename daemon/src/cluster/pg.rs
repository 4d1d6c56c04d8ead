//! A node's pool of PostgreSQL connections, shared by its cluster stores:
//! connected (with a timeout) and migrated at start, a connection the
//! server dropped replaced, and the versioned schema ([`MIGRATIONS`]).
//!
//! The client is the synchronous `postgres` crate (tokio-postgres
//! underneath): the stores' traits are synchronous and called from blocking
//! tasks (as SQLite is). Its pool is r2d2 ([`POOL_SIZE`] connections), so
//! concurrent accepts, heartbeats and reads run side by side; each call is
//! a short statement or transaction.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::{Client, Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;

/// Connections a node keeps open to the database at most.
pub const POOL_SIZE: u32 = 4;
/// How long a call waits for a connection once the database was found
/// unreachable: it fails at once rather than wait out [`CONNECT_TIMEOUT`]
/// again (a node serves degraded meanwhile); the pool goes on connecting
/// in the background.
const UNREACHABLE_WAIT: Duration = Duration::from_millis(100);

/// Errors of the cluster's PostgreSQL: the operation, the database (host,
/// port, name: never the password) and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{what} (PostgreSQL {location}): {message}")]
pub struct PgError {
    /// What was being done.
    pub what: &'static str,
    /// Which database.
    pub location: String,
    /// The cause.
    pub message: String,
}

/// The text of a client error with its cause (the server's message for a
/// database error: `postgres::Error`'s own text is only "db error").
pub fn message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        m.push_str(&format!(": {c}"));
        cause = c.source();
    }
    m
}

/// How long connecting may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one migration per version, applied in order at start (in
/// one transaction each, under an advisory lock so that nodes starting
/// together apply each once). Applied versions are rows of
/// `silo_schema`. Never edit a released migration: add the next one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE silo_events (
            id BIGSERIAL PRIMARY KEY,
            request_id TEXT NOT NULL,
            function TEXT NOT NULL,
            tenant TEXT,
            payload BYTEA NOT NULL,
            accepted_unix_ms BIGINT NOT NULL,
            errors INTEGER NOT NULL DEFAULT 0,
            claimed_by TEXT,
            lease_until TIMESTAMPTZ
        );
        CREATE INDEX silo_events_lease ON silo_events (lease_until);
        CREATE TABLE silo_failed_events (
            id BIGINT PRIMARY KEY,
            request_id TEXT NOT NULL,
            function TEXT NOT NULL,
            tenant TEXT,
            payload BYTEA NOT NULL,
            accepted_unix_ms BIGINT NOT NULL,
            failed_unix_ms BIGINT NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT NOT NULL
        );
        CREATE INDEX silo_failed_events_function ON silo_failed_events (function);",
    ),
    (
        2,
        "CREATE TABLE silo_functions (
            name TEXT PRIMARY KEY,
            record JSONB NOT NULL,
            changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE silo_code (
            sha256 TEXT PRIMARY KEY,
            zip BYTEA NOT NULL
        );
        CREATE TABLE silo_nodes (
            node TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            heartbeat TIMESTAMPTZ NOT NULL
        );",
    ),
    (
        3,
        "CREATE TABLE silo_keys (
            access_key_id TEXT PRIMARY KEY,
            secret_access_key TEXT NOT NULL,
            tenants JSONB,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );",
    ),
];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Each table and the columns the code reads: checked after migrating, so
/// that a database whose tables were changed behind silo's back is refused
/// at start with the statement that failed.
const EXPECTED: &[&str] = &[
    "SELECT id, request_id, function, tenant, payload, accepted_unix_ms, errors, claimed_by, lease_until FROM silo_events LIMIT 0",
    "SELECT id, request_id, function, tenant, payload, accepted_unix_ms, failed_unix_ms, attempts, error FROM silo_failed_events LIMIT 0",
    "SELECT name, record, changed_at FROM silo_functions LIMIT 0",
    "SELECT sha256, zip FROM silo_code LIMIT 0",
    "SELECT node, address, heartbeat FROM silo_nodes LIMIT 0",
    "SELECT access_key_id, secret_access_key, tenants FROM silo_keys LIMIT 0",
];

/// A reconnecting pool of connections to the cluster's database.
pub struct PgConn {
    config: Config,
    location: String,
    /// `None` only while dropping.
    pool: Option<r2d2::Pool<PostgresConnectionManager<NoTls>>>,
    /// Whether the last call reached the server (a server error counts as
    /// reached; a failed connection or a lost one does not).
    reachable: AtomicBool,
}

/// `host:port/dbname` of `config` (no user, no password).
fn location_of(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("(default database)")
    )
}

impl PgConn {
    /// Connects to `url` (`postgres://user:password@host:port/db`) and
    /// brings the schema to [`latest_version`]. Fails clearly when the
    /// database cannot be reached, its schema is newer than this build, or
    /// its tables are not what silo made.
    pub fn connect(url: &str) -> Result<Self, PgError> {
        let mut config = Config::from_str(url).map_err(|e| PgError {
            what: "reading the database URL",
            location: "(unparsed URL)".into(),
            message: message(&e),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("silo");
        let location = location_of(&config);
        // Connections are made on demand (none idle kept open for their
        // own sake), checked by the calls themselves (a closed one is
        // replaced, see `with`), not by a query on every checkout.
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(CONNECT_TIMEOUT)
            .build_unchecked(PostgresConnectionManager::new(config.clone(), NoTls));
        let conn = Self {
            config,
            location,
            pool: Some(pool),
            reachable: AtomicBool::new(true),
        };
        off_runtime(|| {
            let mut client = conn.open("connecting")?;
            migrate(&mut client).map_err(|(what, message)| conn.error(what, message))?;
            Ok::<_, PgError>(())
        })?;
        Ok(conn)
    }

    /// A new connection of its own (for LISTEN).
    pub fn open(&self, what: &'static str) -> Result<Client, PgError> {
        self.config
            .connect(NoTls)
            .map_err(|e| self.error(what, message(&e)))
    }

    /// Whether the last call on the shared connection reached the server
    /// (the node's heartbeat makes one every
    /// [`HEARTBEAT`](super::registry::HEARTBEAT)). Never blocks.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Where the database is (`host:port/dbname`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// An error of this database.
    pub fn error(&self, what: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            what,
            location: self.location.clone(),
            message: message.into(),
        }
    }

    /// Runs `call` on a connection of the pool (connecting one if none is
    /// idle). When the connection turns out closed (the server restarted),
    /// it is dropped and `call` runs once more on another: a statement
    /// whose commit was lost with the connection may so run twice (callers
    /// are idempotent or at least once).
    pub fn with<T>(
        &self,
        what: &'static str,
        call: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, PgError> {
        off_runtime(|| self.with_here(what, call))
    }

    fn with_here<T>(
        &self,
        what: &'static str,
        mut call: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, PgError> {
        let pool = self.pool.as_ref().expect("only None while dropping");
        let reached = |r: bool| self.reachable.store(r, Ordering::Relaxed);
        for attempt in 0..2 {
            let wait = if self.reachable() {
                CONNECT_TIMEOUT
            } else {
                UNREACHABLE_WAIT
            };
            let mut client = pool.get_timeout(wait).map_err(|e| {
                reached(false);
                self.error(what, e.to_string())
            })?;
            match call(&mut client) {
                Ok(v) => {
                    reached(true);
                    return Ok(v);
                }
                Err(e) if attempt == 0 && (e.is_closed() || client.is_closed()) => {
                    // Dropped closed: the pool discards it.
                    tracing::warn!(database = %self.location, error = %e, "PostgreSQL connection lost; reconnecting");
                }
                Err(e) => {
                    // The server's own refusal (a constraint, say) still
                    // came from it; a lost connection did not.
                    reached(!(e.is_closed() || client.is_closed()));
                    return Err(self.error(what, message(&e)));
                }
            }
        }
        reached(false);
        Err(self.error(what, "the connection was lost twice"))
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // The synchronous client closes its connection on its own runtime,
        // which panics on a thread that drives an async runtime (the
        // daemon drops its stores on one at shutdown): closed on a thread
        // of its own.
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new()
                .name("silo-pg-close".into())
                .spawn(move || drop(pool))
                .map(|t| t.join());
        }
    }
}

/// Runs `f`, which blocks on the synchronous client's own runtime: on a
/// worker of a multi-threaded tokio runtime (the daemon's API handlers call
/// the store directly) through `block_in_place`, elsewhere (blocking-pool
/// and plain threads) as it is.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Applies the migrations the database lacks and checks the tables.
/// `Err((what, message))`.
fn migrate(client: &mut Client) -> Result<(), (&'static str, String)> {
    let mut tx = client
        .transaction()
        .map_err(|e| ("starting the schema migration", message(&e)))?;
    // One node migrates at a time; the others then find it done.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(5110240001);
         CREATE TABLE IF NOT EXISTS silo_schema (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );",
    )
    .map_err(|e| ("making the schema version table", message(&e)))?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM silo_schema", &[])
        .and_then(|r| r.try_get(0))
        .map_err(|e| ("reading the schema version", message(&e)))?;
    if current > latest_version() {
        return Err((
            "checking the schema version",
            format!(
                "the database's schema is version {current}, newer than this silo's {}: upgrade silo",
                latest_version()
            ),
        ));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .and_then(|_| tx.execute("INSERT INTO silo_schema (version) VALUES ($1)", &[version]))
            .map_err(|e| {
                (
                    "applying a schema migration",
                    format!("version {version}: {}", message(&e)),
                )
            })?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    for q in EXPECTED {
        tx.batch_execute(q).map_err(|e| {
            (
                "checking the schema",
                format!(
                    "the database's tables are not silo's: {} (in: {q})",
                    message(&e)
                ),
            )
        })?;
    }
    tx.commit()
        .map_err(|e| ("committing the schema migration", message(&e)))
}
