//! Where accepted asynchronous (Event) invocations live until they are done:
//! the [`EventStore`] trait and its single-host implementation,
//! [`SqliteEventStore`] (`<data_dir>/events.sqlite`).
//!
//! An event is written (and synced to disk) before its caller gets the 202,
//! and stays until it succeeded ([`EventStore::done`]) or was given up
//! ([`EventStore::give_up`], which moves it to the failed events in the same
//! transaction). At start the daemon reads [`EventStore::pending`] back into
//! its in-memory queue ([`crate::events`]), which keeps the fairness (tenant
//! shares, workers in turn); the store keeps only what must survive a crash.
//!
//! The trait is synchronous and small on purpose: the daemon calls it from
//! blocking tasks; [`PgEventStore`] (several hosts on one PostgreSQL)
//! implements the same calls and [`EventStore::adopt`]s the events of a
//! node that died.

pub mod postgres;
pub mod sqlite;

pub use postgres::PgEventStore;
pub use sqlite::SqliteEventStore;

use serde::Serialize;

/// The id of a stored event (unique in one store, never reused).
pub type EventId = i64;

/// An event as accepted: what runs it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The request id the caller was given.
    pub request_id: String,
    /// The function's name.
    pub function: String,
    /// The tenant, for PER_TENANT functions.
    pub tenant: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub accepted_unix_ms: u64,
}

/// An event read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its id.
    pub id: EventId,
    /// As accepted.
    pub event: NewEvent,
    /// Attempts that ended in a function error so far.
    pub errors: u32,
}

impl StoredEvent {
    /// An event from a store's row: its columns (`id, request_id, function,
    /// tenant, payload, accepted_unix_ms, errors`) as SQL keeps them, the
    /// integers signed. A negative acceptance time reads as 0; an error
    /// count that is no `u32` makes the row unreadable (`Err` says so).
    pub(crate) fn from_row(
        id: EventId,
        request_id: String,
        function: String,
        tenant: Option<String>,
        payload: Vec<u8>,
        accepted_unix_ms: i64,
        errors: i64,
    ) -> Result<Self, String> {
        Ok(StoredEvent {
            id,
            event: NewEvent {
                request_id,
                function,
                tenant,
                payload,
                accepted_unix_ms: u64::try_from(accepted_unix_ms).unwrap_or(0),
            },
            errors: u32::try_from(errors).map_err(|_| "errors out of range".to_string())?,
        })
    }
}

/// An event given up: its last error and how often it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailedEvent {
    /// Its id (as it had in the queue).
    pub id: EventId,
    /// The request id the caller was given.
    pub request_id: String,
    /// The function's name.
    pub function_name: String,
    /// The tenant, for PER_TENANT functions.
    pub tenant_id: Option<String>,
    /// The payload, as UTF-8 text (payloads are JSON).
    pub payload: String,
    /// Why it was given up (the last attempt's error).
    pub error: String,
    /// Attempts made (0 if it never ran, e.g. too old).
    pub attempts: u32,
    /// When it was accepted (ms since the Unix epoch).
    pub accepted_unix_ms: u64,
    /// When it was given up (ms since the Unix epoch).
    pub failed_unix_ms: u64,
}

impl FailedEvent {
    /// A failed event from a store's row: its columns (`id, request_id,
    /// function, tenant, payload, accepted_unix_ms, failed_unix_ms,
    /// attempts, error`) as SQL keeps them, the times signed (a negative
    /// one reads as 0) and the payload as bytes (read as UTF-8, lossily);
    /// the attempts already converted (each store's column has its own
    /// type).
    #[allow(clippy::too_many_arguments)] // one per column, in their order
    pub(crate) fn from_row(
        id: EventId,
        request_id: String,
        function_name: String,
        tenant_id: Option<String>,
        payload: Vec<u8>,
        accepted_unix_ms: i64,
        failed_unix_ms: i64,
        attempts: u32,
        error: String,
    ) -> Self {
        FailedEvent {
            id,
            request_id,
            function_name,
            tenant_id,
            payload: String::from_utf8_lossy(&payload).into_owned(),
            accepted_unix_ms: u64::try_from(accepted_unix_ms).unwrap_or(0),
            failed_unix_ms: u64::try_from(failed_unix_ms).unwrap_or(0),
            attempts,
            error,
        }
    }
}

/// A stored event that cannot be read back (skipped, left in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableEvent {
    /// Its id.
    pub id: EventId,
    /// What is wrong with it.
    pub reason: String,
}

/// Errors of an event store: the operation, the store's location and the
/// engine's own message (e.g. "database or disk is full").
#[derive(Debug, thiserror::Error)]
#[error("{what} ({location}): {message}")]
pub struct EventStoreError {
    /// What was being done.
    pub what: &'static str,
    /// Where the store is (a path, a database name).
    pub location: String,
    /// The cause.
    pub message: String,
}

/// A durable queue of accepted events and the store of failed ones.
///
/// [`accept`](Self::accept) and [`remove_failed`](Self::remove_failed)
/// are durable (synced to disk, or committed in the database) when they
/// return `Ok`. The ends of an event ([`done`](Self::done),
/// [`give_up`](Self::give_up), [`record_errors`](Self::record_errors))
/// survive a crash of the daemon and may be undone by a power loss, which
/// only makes the event run again: delivery is at least once.
pub trait EventStore: Send + Sync {
    /// Stores a newly accepted event; returns its id.
    fn accept(&self, event: &NewEvent) -> Result<EventId, EventStoreError>;
    /// Records that event `id` has failed `errors` times so far (so that a
    /// restart keeps its retry count).
    fn record_errors(&self, id: EventId, errors: u32) -> Result<(), EventStoreError>;
    /// Event `id` succeeded (or its function is gone): removes it.
    fn done(&self, id: EventId) -> Result<(), EventStoreError>;
    /// Event `id` is given up after `attempts` attempts: moves it to the
    /// failed events with `error`, at `failed_unix_ms`.
    fn give_up(
        &self,
        id: EventId,
        error: &str,
        attempts: u32,
        failed_unix_ms: u64,
    ) -> Result<(), EventStoreError>;
    /// Every event not done nor given up, oldest first, and those that
    /// cannot be read.
    fn pending(&self) -> Result<(Vec<StoredEvent>, Vec<UnreadableEvent>), EventStoreError>;
    /// Failed events (of `function` only, if given), oldest first.
    fn failed(&self, function: Option<&str>) -> Result<Vec<FailedEvent>, EventStoreError>;
    /// Removes failed event `id`; `Ok(false)` if there is none.
    fn remove_failed(&self, id: EventId) -> Result<bool, EventStoreError>;
    /// Whether the store can be read now (for `/readyz`).
    fn check(&self) -> Result<(), EventStoreError>;
    /// Events another node accepted and can no longer run (its claim
    /// lapsed: it died), now this node's, oldest first. A store of one
    /// host has none.
    fn adopt(&self) -> Result<Vec<StoredEvent>, EventStoreError> {
        Ok(Vec::new())
    }
    /// How often [`adopt`](Self::adopt) is worth calling; `None` for a
    /// store of one host.
    fn adopt_every(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
