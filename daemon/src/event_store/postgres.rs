//! [`EventStore`] in PostgreSQL, for several nodes sharing one queue
//! (`silo serve --registry postgres://...`).
//!
//! Every event row is *claimed* by one node (`claimed_by`) for a lease
//! (`lease_until`, on the database's clock): the node that accepts an
//! event claims it at once, and a thread renews the leases of all its
//! claims every third of the lease. A node that dies stops renewing; once
//! its leases lapse, any other node [`adopt`](EventStore::adopt)s those
//! events (`FOR UPDATE SKIP LOCKED`: two nodes adopting at once never take
//! the same row) and runs them. A node restarted under the same node id
//! takes its own claims back at start ([`EventStore::pending`]).
//!
//! While both live, no two nodes hold a claim on one event. A node cut off
//! from the database for longer than the lease may have its events
//! adopted while it still runs them: delivery stays at least once.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::Row;

use super::{
    EventId, EventStore, EventStoreError, FailedEvent, NewEvent, StoredEvent, UnreadableEvent,
};
use crate::cluster::pg::{PgConn, PgError};

/// The lease of a claim unless configured.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The event queue of a node of a cluster (see the module's documentation).
pub struct PgEventStore {
    db: Arc<PgConn>,
    node: String,
    lease: Duration,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl From<PgError> for EventStoreError {
    fn from(e: PgError) -> Self {
        EventStoreError {
            what: e.what,
            location: format!("PostgreSQL {}", e.location),
            message: e.message,
        }
    }
}

const COLUMNS: &str = "id, request_id, function, tenant, payload, accepted_unix_ms, errors";

/// Reads one `silo_events` row; `Err` says what is wrong with it.
fn read_event(row: &Row) -> Result<StoredEvent, String> {
    let field = |e: postgres::Error| crate::cluster::pg::message(&e);
    StoredEvent::from_row(
        row.try_get(0).map_err(field)?,
        row.try_get(1).map_err(field)?,
        row.try_get(2).map_err(field)?,
        row.try_get(3).map_err(field)?,
        row.try_get(4).map_err(field)?,
        row.try_get(5).map_err(field)?,
        i64::from(row.try_get::<_, i32>(6).map_err(field)?),
    )
}

fn read_failed(row: &Row) -> Result<FailedEvent, postgres::Error> {
    Ok(FailedEvent::from_row(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        u32::try_from(row.try_get::<_, i32>(7)?).unwrap_or(0),
        row.try_get(8)?,
    ))
}

/// `lease` as a PostgreSQL interval literal's seconds.
fn secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

impl PgEventStore {
    /// The queue of node `node` (unique in the cluster, stable across the
    /// node's restarts) in `db`, whose claims last `lease` unless renewed.
    /// Starts the thread renewing them.
    pub fn open(db: Arc<PgConn>, node: &str, lease: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let renewer = {
            let (db, node, stop) = (db.clone(), node.to_string(), stop.clone());
            std::thread::Builder::new()
                .name("silo-event-leases".into())
                .spawn(move || renew_leases(&db, &node, lease, &stop))
                .ok()
        };
        Self {
            db,
            node: node.to_string(),
            lease,
            stop,
            renewer,
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Claims (`FOR UPDATE SKIP LOCKED`) the events matching `which` for
    /// this node and returns them, oldest first.
    fn claim(&self, what: &'static str, which: &str) -> Result<Vec<StoredEvent>, EventStoreError> {
        let sql = format!(
            "WITH c AS (SELECT id FROM silo_events WHERE {which} ORDER BY id FOR UPDATE SKIP LOCKED) \
             UPDATE silo_events e SET claimed_by = $1, lease_until = now() + make_interval(secs => $2) \
             FROM c WHERE e.id = c.id RETURNING e.id, e.request_id, e.function, e.tenant, e.payload, \
             e.accepted_unix_ms, e.errors"
        );
        let rows = self
            .db
            .with(what, |c| c.query(&sql, &[&self.node, &secs(self.lease)]))?;
        let mut events = rows
            .iter()
            .map(read_event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db.error(what, e))?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }
}

/// Renews `node`'s claims every third of `lease` until `stop`.
fn renew_leases(db: &PgConn, node: &str, lease: Duration, stop: &(Mutex<bool>, Condvar)) {
    let (lock, cv) = stop;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (s, _) = cv
            .wait_timeout_while(stopped, lease / 3, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        stopped = s;
        if *stopped {
            return;
        }
        let r = db.with("renewing the event leases", |c| {
            c.execute(
                "UPDATE silo_events SET lease_until = now() + make_interval(secs => $2) \
                 WHERE claimed_by = $1",
                &[&node, &secs(lease)],
            )
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not renew this node's event leases; other nodes may run its events after the lease");
        }
    }
}

impl Drop for PgEventStore {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
    }
}

impl EventStore for PgEventStore {
    fn accept(&self, e: &NewEvent) -> Result<EventId, EventStoreError> {
        let ms = e.accepted_unix_ms as i64;
        let row = self.db.with("storing an event", |c| {
            c.query_one(
                "INSERT INTO silo_events (request_id, function, tenant, payload, accepted_unix_ms, \
                 claimed_by, lease_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) RETURNING id",
                &[
                    &e.request_id,
                    &e.function,
                    &e.tenant,
                    &e.payload,
                    &ms,
                    &self.node,
                    &secs(self.lease),
                ],
            )
        })?;
        Ok(row.get(0))
    }

    fn record_errors(&self, id: EventId, errors: u32) -> Result<(), EventStoreError> {
        let errors = i32::try_from(errors).unwrap_or(i32::MAX);
        self.db.with("recording an event's attempt", |c| {
            c.execute(
                "UPDATE silo_events SET errors = $2 WHERE id = $1",
                &[&id, &errors],
            )
        })?;
        Ok(())
    }

    fn done(&self, id: EventId) -> Result<(), EventStoreError> {
        self.db.with("removing a finished event", |c| {
            c.execute("DELETE FROM silo_events WHERE id = $1", &[&id])
        })?;
        Ok(())
    }

    fn give_up(
        &self,
        id: EventId,
        error: &str,
        attempts: u32,
        failed_unix_ms: u64,
    ) -> Result<(), EventStoreError> {
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let failed = failed_unix_ms as i64;
        self.db.with("storing a failed event", |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO silo_failed_events (id, request_id, function, tenant, payload, \
                 accepted_unix_ms, failed_unix_ms, attempts, error) \
                 SELECT id, request_id, function, tenant, payload, accepted_unix_ms, $2, $3, $4 \
                 FROM silo_events WHERE id = $1 \
                 ON CONFLICT (id) DO UPDATE SET failed_unix_ms = $2, attempts = $3, error = $4",
                &[&id, &failed, &attempts, &error],
            )?;
            tx.execute("DELETE FROM silo_events WHERE id = $1", &[&id])?;
            tx.commit()
        })?;
        Ok(())
    }

    /// This node's own claims (from before a restart) and every event
    /// unclaimed or whose lease lapsed, now claimed by this node.
    fn pending(&self) -> Result<(Vec<StoredEvent>, Vec<UnreadableEvent>), EventStoreError> {
        let events = self.claim(
            "reading the queued events",
            "claimed_by = $1 OR claimed_by IS NULL OR lease_until < now()",
        )?;
        Ok((events, Vec::new()))
    }

    fn adopt(&self) -> Result<Vec<StoredEvent>, EventStoreError> {
        self.claim(
            "adopting the events of a lost node",
            "(claimed_by IS NULL OR lease_until < now()) AND claimed_by IS DISTINCT FROM $1",
        )
    }

    fn adopt_every(&self) -> Option<Duration> {
        Some(self.lease / 2)
    }

    fn failed(&self, function: Option<&str>) -> Result<Vec<FailedEvent>, EventStoreError> {
        let what = "reading the failed events";
        let rows = self.db.with(what, |c| {
            c.query(
                "SELECT id, request_id, function, tenant, payload, accepted_unix_ms, \
                 failed_unix_ms, attempts, error FROM silo_failed_events \
                 WHERE $1::TEXT IS NULL OR function = $1 ORDER BY id",
                &[&function],
            )
        })?;
        rows.iter()
            .map(read_failed)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db.error(what, crate::cluster::pg::message(&e)).into())
    }

    fn remove_failed(&self, id: EventId) -> Result<bool, EventStoreError> {
        let n = self.db.with("removing a failed event", |c| {
            c.execute("DELETE FROM silo_failed_events WHERE id = $1", &[&id])
        })?;
        Ok(n > 0)
    }

    fn check(&self) -> Result<(), EventStoreError> {
        self.db.with("reading", |c| {
            c.execute(&format!("SELECT {COLUMNS} FROM silo_events LIMIT 0"), &[])
        })?;
        Ok(())
    }
}
