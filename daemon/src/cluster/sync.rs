//! A cluster node keeping up with the others: applies the registry's
//! changes ([`Change`]) to this daemon's functions, and adopts the Event
//! queue's orphans (events of a node that died) into its own queue.
//!
//! A change is applied from the registry's current state, never from the
//! notification: the node reads the record again, so notifications that
//! arrive late, twice, or not at all (a re-read follows every reconnect)
//! all end in the registry's state. Nothing read here is written back.

use std::sync::Arc;
use std::time::Duration;

use super::registry::{Change, PgRegistry};
use crate::state::Daemon;
use crate::store::FunctionRecord;

/// Starts applying `registry`'s changes to `daemon`.
pub(crate) fn follow(daemon: &Arc<Daemon>, registry: &PgRegistry) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    registry.watch(tx);
    let daemon = daemon.clone();
    tokio::spawn(async move {
        while let Some(change) = rx.recv().await {
            let names = match change {
                Change::Function(name) => vec![name],
                Change::Reread => {
                    let d = daemon.clone();
                    let stored =
                        tokio::task::spawn_blocking(move || d.store.registry().map(|r| r.load()))
                            .await;
                    let Ok(Some(Ok(records))) = stored else {
                        tracing::warn!("re-reading the registry failed; the listener retries");
                        continue;
                    };
                    let mut names: Vec<String> = records.into_iter().map(|r| r.name).collect();
                    names.extend(daemon.list().into_iter().map(|r| r.name));
                    names.sort();
                    names.dedup();
                    names
                }
            };
            for name in names {
                apply(&daemon, &name).await;
            }
        }
    });
}

/// Brings function `name` on this node to the registry's state.
async fn apply(daemon: &Arc<Daemon>, name: &str) {
    let _changing = daemon.changing(name).await;
    let d = daemon.clone();
    let n = name.to_string();
    let read = tokio::task::spawn_blocking(move || {
        let registry = d.store.registry().cloned()?;
        Some(registry.get(&n).map_err(|e| e.to_string()).and_then(|rec| {
            rec.map(|rec| {
                d.store
                    .code(&rec.code_sha256)
                    .map(|code| (rec, code))
                    .map_err(|e| e.to_string())
            })
            .transpose()
        }))
    })
    .await;
    let wanted = match read {
        Ok(Some(Ok(w))) => w,
        Ok(Some(Err(e))) => {
            tracing::error!(function = %name, error = %e, "could not read a changed function from the registry");
            return;
        }
        _ => return,
    };
    let current = daemon.get(name);
    match (current, wanted) {
        (None, None) => {}
        (Some(old), None) => forget(daemon, old).await,
        (Some(old), Some((rec, _))) if old == rec => {}
        (Some(old), Some((rec, _))) if old.revision_id == rec.revision_id => {
            // Concurrency, pool, egress, tenant role: no new revision.
            let _ = daemon.store.put_local(&rec);
            daemon.apply_network(&rec);
            daemon
                .scheduler
                .backend()
                .set_tenant_role(&Daemon::key(&rec).version, daemon.tenant_role(&rec));
            daemon.apply_pool(&rec);
            daemon.lock().insert(rec.name.clone(), rec);
            tracing::info!(function = %name, "function configuration changed on another node");
        }
        (old, Some((rec, code))) => {
            if let Err(e) = daemon.register(&rec, &code) {
                tracing::error!(function = %name, error = %e, "skipping a function changed on another node: its image cannot be built");
                return;
            }
            let _ = daemon.store.put_local(&rec);
            daemon.apply_network(&rec);
            daemon.lock().insert(rec.name.clone(), rec.clone());
            match old {
                None => daemon.scheduler.activate(&Daemon::key(&rec)),
                Some(old) => {
                    daemon
                        .scheduler
                        .set_current_version(&Daemon::key(&rec))
                        .await;
                    daemon
                        .scheduler
                        .backend()
                        .unregister(&Daemon::key(&old).version);
                }
            }
            daemon.apply_pool(&rec);
            tracing::info!(function = %name, revision_id = %rec.revision_id, "function created or updated on another node");
        }
    }
}

/// Removes function `old` here (another node deleted it).
async fn forget(daemon: &Arc<Daemon>, old: FunctionRecord) {
    let name = old.name.clone();
    daemon.lock().remove(&name);
    daemon.store.delete_local(&name);
    if let Some(net) = daemon.network() {
        let _ = net.set_policy(&name, None);
    }
    daemon.forget_credentials(&name);
    let destroyed = daemon.scheduler.retire_function(&name).await;
    daemon
        .scheduler
        .backend()
        .unregister(&Daemon::key(&old).version);
    tracing::info!(function = %name, environments_destroyed = destroyed, "function deleted on another node");
}

/// Adopts, every [`EventStore::adopt_every`](crate::event_store::EventStore::adopt_every),
/// the events of nodes that died into this node's queue.
pub(crate) fn adopt_orphans(daemon: &Arc<Daemon>) {
    let Some(every) = daemon.event_store.adopt_every() else {
        return;
    };
    let daemon = daemon.clone();
    let mut stop = daemon.event_stop.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every.max(Duration::from_millis(100))) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let store = daemon.event_store.clone();
            match tokio::task::spawn_blocking(move || store.adopt()).await {
                Ok(Ok(events)) if !events.is_empty() => {
                    let n = daemon.queue_stored(events);
                    tracing::info!(events = n, "adopted the queued events of a lost node");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "adopting lost nodes' events failed"),
                _ => {}
            }
        }
    });
}
