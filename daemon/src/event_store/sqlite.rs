//! [`EventStore`] in one SQLite database, `<data_dir>/events.sqlite`
//! (WAL journal, `synchronous = FULL`: an accept is synced before it
//! returns; the ends of events are committed without a sync of their own,
//! see [`SqliteEventStore::unsynced`]). The file and its `-wal`/`-shm` companions are made 0600:
//! payloads are the tenants' data.
//!
//! Accepts made at once share one commit, so one sync (group commit): the
//! first caller commits every event waiting at that moment in one
//! transaction; those arriving meanwhile wait for the next one, which the
//! first of them makes. Each caller returns once its own event's commit is
//! synced. (SQLite syncs with `fdatasync`: the workspace's
//! `.cargo/config.toml` builds the bundled library with `HAVE_FDATASYNC`.)

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    EventId, EventStore, EventStoreError, FailedEvent, NewEvent, StoredEvent, UnreadableEvent,
};

/// The file name under the data directory.
pub const FILE_NAME: &str = "events.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    function TEXT NOT NULL,
    tenant TEXT,
    payload BLOB NOT NULL,
    accepted_unix_ms INTEGER NOT NULL,
    errors INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS failed_events (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    function TEXT NOT NULL,
    tenant TEXT,
    payload BLOB NOT NULL,
    accepted_unix_ms INTEGER NOT NULL,
    failed_unix_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS failed_events_function ON failed_events (function);
";

/// The event store of one host (see the module's documentation).
pub struct SqliteEventStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    group: Mutex<Group>,
    committed: Condvar,
}

/// Accepts waiting for a commit (see the module's documentation).
#[derive(Default)]
struct Group {
    /// Events not yet in a commit, by ticket.
    waiting: Vec<(u64, NewEvent)>,
    next_ticket: u64,
    /// A caller is committing a batch now.
    committing: bool,
    /// Outcomes of committed batches not yet collected, by ticket.
    done: HashMap<u64, Result<EventId, String>>,
}

impl SqliteEventStore {
    /// Opens (creating, 0600) `<data_dir>/events.sqlite`.
    pub fn open(data_dir: &Path) -> Result<Self, EventStoreError> {
        let path = data_dir.join(FILE_NAME);
        let err = |what: &'static str| {
            let location = path.display().to_string();
            move |e: String| EventStoreError {
                what,
                location,
                message: e,
            }
        };
        // Made here with mode 0600; SQLite gives its -wal and -shm files the
        // database file's mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err("creating")(e.to_string()))?;
        let conn = Connection::open(&path).map_err(|e| err("opening")(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|_| conn.busy_timeout(std::time::Duration::from_secs(5)))
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(|e| err("initialising")(e.to_string()))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            group: Mutex::new(Group::default()),
            committed: Condvar::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` in a commit that is not synced on its own (WAL with
    /// `synchronous = NORMAL`): for the ends of events (done, given up, an
    /// attempt counted). A power loss may undo such a commit, never tear
    /// it; the event then runs again (at least once), and the next
    /// accept's synced commit makes it durable anyway. Halves the syncs
    /// per event, which the 202 of accepts waits behind.
    pub fn unsynced<T>(
        &self,
        what: &'static str,
        change: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, EventStoreError> {
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.error(what, e))?;
        let r = change(&mut conn);
        let back = conn.pragma_update(None, "synchronous", "FULL");
        let r = r.map_err(|e| self.error(what, e))?;
        back.map_err(|e| self.error(what, e))?;
        Ok(r)
    }

    /// Inserts `batch` in one transaction (one synced commit): the ids, or
    /// the error every event of the batch then gets (none is stored).
    fn commit_batch(&self, batch: &[(u64, NewEvent)]) -> Result<Vec<EventId>, String> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        let mut ids = Vec::with_capacity(batch.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (request_id, function, tenant, payload, accepted_unix_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| e.to_string())?;
            for (_, e) in batch {
                insert
                    .execute(params![
                        e.request_id,
                        e.function,
                        e.tenant,
                        e.payload,
                        e.accepted_unix_ms as i64
                    ])
                    .map_err(|e| e.to_string())?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(ids)
    }

    fn lock_group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, what: &'static str, e: rusqlite::Error) -> EventStoreError {
        EventStoreError {
            what,
            location: self.path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Reads one `events` row; `Err` says what is wrong with it.
fn read_event(row: &Row<'_>) -> Result<StoredEvent, String> {
    let field = |e: rusqlite::Error| e.to_string();
    StoredEvent::from_row(
        row.get(0).map_err(field)?,
        row.get(1).map_err(field)?,
        row.get(2).map_err(field)?,
        row.get(3).map_err(field)?,
        row.get(4).map_err(field)?,
        row.get(5).map_err(field)?,
        row.get(6).map_err(field)?,
    )
}

fn read_failed(row: &Row<'_>) -> rusqlite::Result<FailedEvent> {
    Ok(FailedEvent::from_row(
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        u32::try_from(row.get::<_, i64>(7)?).unwrap_or(u32::MAX),
        row.get(8)?,
    ))
}

impl EventStore for SqliteEventStore {
    fn accept(&self, e: &NewEvent) -> Result<EventId, EventStoreError> {
        let mut g = self.lock_group();
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        g.waiting.push((ticket, e.clone()));
        loop {
            if let Some(r) = g.done.remove(&ticket) {
                return r.map_err(|message| EventStoreError {
                    what: "storing an event",
                    location: self.path.display().to_string(),
                    message,
                });
            }
            if g.committing {
                g = self.committed.wait(g).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // This caller commits everything waiting now, its own event
            // among it.
            g.committing = true;
            let batch = std::mem::take(&mut g.waiting);
            drop(g);
            let outcome = self.commit_batch(&batch);
            g = self.lock_group();
            match outcome {
                Ok(ids) => {
                    for ((t, _), id) in batch.iter().zip(ids) {
                        g.done.insert(*t, Ok(id));
                    }
                }
                Err(message) => {
                    for (t, _) in &batch {
                        g.done.insert(*t, Err(message.clone()));
                    }
                }
            }
            g.committing = false;
            self.committed.notify_all();
        }
    }

    fn record_errors(&self, id: EventId, errors: u32) -> Result<(), EventStoreError> {
        self.unsynced("recording an event's attempt", |c| {
            c.execute(
                "UPDATE events SET errors = ?2 WHERE id = ?1",
                params![id, errors],
            )
        })?;
        Ok(())
    }

    fn done(&self, id: EventId) -> Result<(), EventStoreError> {
        self.unsynced("removing a finished event", |c| {
            c.execute("DELETE FROM events WHERE id = ?1", params![id])
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
        self.unsynced("storing a failed event", |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO failed_events (id, request_id, function, tenant, payload, \
                 accepted_unix_ms, failed_unix_ms, attempts, error) \
                 SELECT id, request_id, function, tenant, payload, accepted_unix_ms, ?2, ?3, ?4 \
                 FROM events WHERE id = ?1",
                params![id, failed_unix_ms as i64, attempts, error],
            )?;
            tx.execute("DELETE FROM events WHERE id = ?1", params![id])?;
            tx.commit()
        })
    }

    fn pending(&self) -> Result<(Vec<StoredEvent>, Vec<UnreadableEvent>), EventStoreError> {
        let conn = self.lock();
        let what = "reading the queued events";
        let mut stmt = conn
            .prepare(
                "SELECT id, request_id, function, tenant, payload, accepted_unix_ms, errors \
                 FROM events ORDER BY id",
            )
            .map_err(|e| self.error(what, e))?;
        let rows = stmt
            .query_map([], |row| {
                let id: EventId = row.get(0)?;
                Ok(read_event(row).map_err(|reason| UnreadableEvent { id, reason }))
            })
            .map_err(|e| self.error(what, e))?;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for r in rows {
            match r.map_err(|e| self.error(what, e))? {
                Ok(ev) => good.push(ev),
                Err(u) => bad.push(u),
            }
        }
        Ok((good, bad))
    }

    fn failed(&self, function: Option<&str>) -> Result<Vec<FailedEvent>, EventStoreError> {
        let conn = self.lock();
        let what = "reading the failed events";
        let mut stmt = conn
            .prepare(
                "SELECT id, request_id, function, tenant, payload, accepted_unix_ms, \
                 failed_unix_ms, attempts, error FROM failed_events \
                 WHERE ?1 IS NULL OR function = ?1 ORDER BY id",
            )
            .map_err(|e| self.error(what, e))?;
        let rows = stmt
            .query_map(params![function], read_failed)
            .map_err(|e| self.error(what, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(what, e))
    }

    fn remove_failed(&self, id: EventId) -> Result<bool, EventStoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM failed_events WHERE id = ?1", params![id])
            .map_err(|e| self.error("removing a failed event", e))?;
        Ok(n > 0)
    }

    fn check(&self) -> Result<(), EventStoreError> {
        self.lock()
            .query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
            .optional()
            .map(|_| ())
            .map_err(|e| self.error("reading", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32, tenant: Option<&str>) -> NewEvent {
        NewEvent {
            request_id: format!("req-{n}"),
            function: "f".into(),
            tenant: tenant.map(str::to_string),
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            accepted_unix_ms: 1_000 + u64::from(n),
        }
    }

    fn scratch() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "silo-event-store-{}-{}",
            std::process::id(),
            silo_aws::id::random_uuid()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// What was accepted is there after reopening (another process would
    /// see the same file); done and given-up events are not.
    #[test]
    fn accepted_events_survive_reopening_until_done_or_given_up() {
        let dir = scratch();
        let s = SqliteEventStore::open(&dir).unwrap();
        let ids: Vec<EventId> = (0..4)
            .map(|n| s.accept(&event(n, Some("t"))).unwrap())
            .collect();
        s.record_errors(ids[1], 2).unwrap();
        s.done(ids[0]).unwrap();
        s.give_up(ids[3], "Unhandled: boom", 3, 5_000).unwrap();
        drop(s);
        let s = SqliteEventStore::open(&dir).unwrap();
        let (good, bad) = s.pending().unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            good.iter()
                .map(|e| (e.id, e.errors, e.event.clone()))
                .collect::<Vec<_>>(),
            vec![
                (ids[1], 2, event(1, Some("t"))),
                (ids[2], 0, event(2, Some("t")))
            ]
        );
        let failed = s.failed(None).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (
                failed[0].id,
                failed[0].request_id.as_str(),
                failed[0].error.as_str(),
                failed[0].attempts,
                failed[0].payload.as_str(),
                failed[0].tenant_id.as_deref()
            ),
            (
                ids[3],
                "req-3",
                "Unhandled: boom",
                3,
                "{\"n\":3}",
                Some("t")
            )
        );
        assert!(s.failed(Some("other")).unwrap().is_empty());
        assert!(s.remove_failed(ids[3]).unwrap());
        assert!(!s.remove_failed(ids[3]).unwrap());
        // Ids are never reused, even for the last one removed.
        let next = s.accept(&event(9, None)).unwrap();
        assert!(next > ids[3]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A row that cannot be read is reported by its id and skipped; the
    /// others load.
    #[test]
    fn an_unreadable_event_is_reported_by_id_and_the_others_load() {
        let dir = scratch();
        let s = SqliteEventStore::open(&dir).unwrap();
        let ids: Vec<EventId> = (0..3).map(|n| s.accept(&event(n, None)).unwrap()).collect();
        drop(s);
        // Corrupted behind the daemon's back: a function name that is not
        // text.
        let raw = Connection::open(dir.join(FILE_NAME)).unwrap();
        raw.execute(
            "UPDATE events SET function = X'ff00fe' WHERE id = ?1",
            params![ids[1]],
        )
        .unwrap();
        drop(raw);
        let s = SqliteEventStore::open(&dir).unwrap();
        let (good, bad) = s.pending().unwrap();
        assert_eq!(
            good.iter().map(|e| e.id).collect::<Vec<_>>(),
            [ids[0], ids[2]]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].id, ids[1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Accepts made at once (sharing commits) are each stored once, each
    /// with its own id, and every one is there after reopening.
    #[test]
    fn concurrent_accepts_are_each_stored_with_their_own_id() {
        let dir = scratch();
        let s = std::sync::Arc::new(SqliteEventStore::open(&dir).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            let n = t * 100 + i;
                            (n, s.accept(&event(n, Some("t"))).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut by_id = std::collections::BTreeMap::new();
        for t in threads {
            for (n, id) in t.join().unwrap() {
                assert!(by_id.insert(id, n).is_none(), "id {id} given twice");
            }
        }
        assert_eq!(by_id.len(), 200);
        drop(s);
        let s = SqliteEventStore::open(&dir).unwrap();
        let (good, bad) = s.pending().unwrap();
        assert!(bad.is_empty());
        assert_eq!(good.len(), 200);
        for e in good {
            assert_eq!(e.event, event(by_id[&e.id], Some("t")), "event {}", e.id);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The database holds tenants' payloads: only its owner reads it.
    #[test]
    fn the_database_is_private_to_the_daemon() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch();
        let s = SqliteEventStore::open(&dir).unwrap();
        s.accept(&event(0, None)).unwrap();
        for name in [FILE_NAME, "events.sqlite-wal"] {
            let mode = std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name}: {mode:o}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
