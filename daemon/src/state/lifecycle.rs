//! The daemon's start (stores, backend, recovery, event workers, the idle
//! reaper) and its stop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use silo_scheduler::Scheduler;

use super::{Daemon, Images, StartError};
use crate::config::DaemonConfig;
use crate::event_store::{EventStore, SqliteEventStore};
use crate::events::EventQueue;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::vm_backend::VmBackend;
use silo_aws::id::random_uuid;

impl Daemon {
    /// Opens the data directory, registers every stored function's image
    /// and starts the event workers and the idle reaper. Must run inside a
    /// tokio runtime.
    pub fn start(config: DaemonConfig, images: Images) -> Result<Arc<Self>, StartError> {
        let (store, event_store, registry) = match &config.cluster.registry {
            Some(url) => crate::cluster::open_stores(&config, url)?,
            None => (
                Store::open(&config.data_dir)?,
                Arc::new(SqliteEventStore::open(&config.data_dir)?) as Arc<dyn EventStore>,
                None,
            ),
        };
        let logs =
            crate::logs::Logs::start(&config.data_dir, &config.logs).map_err(StartError::Logs)?;
        let run_dir = config.run_dir();
        let left_run_entries = crate::recovery::reap_run_dir(&run_dir);
        crate::vm_backend::make_run_dir(&run_dir)?;
        let jail = crate::jail::JailMode::for_daemon(&config.jail, config.insecure_no_jail);
        let left_processes = match jail {
            crate::jail::JailMode::Jailed(_) => crate::recovery::reap_jail_uids(&config.jail),
            _ => 0,
        };
        let backend = VmBackend::new(
            images.kernel.clone(),
            run_dir.clone(),
            Duration::from_secs(config.limits.init_timeout_s),
            jail,
        )
        .with_runtimes(crate::vm_backend::RuntimeSettings {
            delivery: config.runtime_delivery,
            dirs: config.runtimes.clone(),
            sharing: config.runtime_sharing,
        })
        .with_console_bytes(config.console_bytes)
        .with_guest_memory(crate::vm_env::GuestMemoryMode {
            small_pages: config.small_pages,
            ..Default::default()
        })
        .with_logs(logs.sink().cloned())
        .with_network(crate::net::start_for(
            &config.network,
            config.metrics_tenant_series,
        )?);
        crate::runtime_copies::log_sharing(config.runtime_sharing);
        let admission = config.limits.admission();
        tracing::info!(
            max_booting = admission.max_booting,
            cold_start_queue = admission.queue_capacity,
            init_timeout_s = config.limits.init_timeout_s,
            pool_boot_slots = admission.pool_boot_slots,
            memory_mib = admission.memory_mib,
            concurrency = admission.host_concurrency,
            tenant_environments = admission.tenant_environments,
            "cold-start admission and host-wide shares"
        );
        let l = &config.limits;
        let events = EventQueue::new(l.event_queue, l.event_queue_per_tenant, l.event_workers);
        let event_workers = l.event_workers.max(1);
        let gateway = crate::gateway::Gateway::new(&config.gateway, &config.data_dir)?;
        let (records, bad) = store.load();
        for b in bad {
            tracing::error!(file = %b, "skipping an unreadable function record");
        }
        let daemon = Arc::new(Self {
            scheduler: Scheduler::with_admission(backend, admission),
            store,
            functions: Mutex::new(BTreeMap::new()),
            metrics: Metrics::with_tenant_series(config.metrics_tenant_series),
            events,
            event_store,
            event_stop: tokio::sync::watch::channel(false).0,
            event_workers: Mutex::new(Vec::new()),
            images,
            run_dir,
            changes: Mutex::new(BTreeMap::new()),
            env_token_key: format!("{}{}", random_uuid(), random_uuid()),
            gateway,
            logs,
            config,
        });
        for rec in records {
            let name = rec.name.clone();
            daemon.apply_network(&rec);
            match daemon.store.code(&rec.code_sha256) {
                Ok(code) => {
                    if let Err(e) = daemon.register(&rec, &code) {
                        tracing::error!(function = %name, error = %e, "skipping a function whose image cannot be built");
                        continue;
                    }
                }
                Err(e) => {
                    tracing::error!(function = %name, error = %e, "skipping a function whose code is missing");
                    continue;
                }
            }
            daemon.scheduler.activate(&Self::key(&rec));
            daemon.apply_pool(&rec);
            daemon.lock().insert(name, rec);
        }
        let recovered = daemon.recover_events()?;
        tracing::info!(
            run_dir_entries = left_run_entries,
            jail_uid_processes = left_processes,
            events = recovered,
            store = %daemon.config.data_dir.join(crate::event_store::sqlite::FILE_NAME).display(),
            "recovery: leftovers of an earlier run reaped, queued events read back"
        );
        let workers = (0..event_workers)
            .map(|_| {
                tokio::spawn(crate::event_worker::event_worker(
                    daemon.clone(),
                    daemon.event_stop.subscribe(),
                ))
            })
            .collect();
        *daemon
            .event_workers
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = workers;
        tokio::spawn(reaper(daemon.clone()));
        if let Some(r) = registry {
            crate::cluster::sync::follow(&daemon, &r);
            crate::cluster::sync::adopt_orphans(&daemon);
        }
        Ok(daemon)
    }

    /// Stops the event workers: each finishes the event it runs, within
    /// `grace`; what is still queued (or did not finish) stays in the event
    /// store and runs after the next start. Returns whether all finished.
    pub async fn stop_event_workers(&self, grace: Duration) -> bool {
        let _ = self.event_stop.send(true);
        let workers =
            std::mem::take(&mut *self.event_workers.lock().unwrap_or_else(|p| p.into_inner()));
        let all = futures_join_all(workers);
        tokio::time::timeout(grace, all).await.is_ok()
    }

    /// Destroys every idle environment (daemon shutdown).
    pub async fn shutdown(&self) -> usize {
        let n = self.scheduler.shutdown().await;
        if let Some(net) = self.network().cloned() {
            // Prepared slots and the host's table go with the daemon.
            let _ = tokio::task::spawn_blocking(move || net.close()).await;
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        self.logs.shutdown();
        n
    }
}

/// Awaits every task of `tasks`.
async fn futures_join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Reaps idle environments past the idle timeout, and charges idle VMs
/// what they hold once paged out (as often as idle reclaim looks at them).
async fn reaper(daemon: Arc<Daemon>) {
    let timeout = Duration::from_secs(daemon.config.limits.idle_timeout_s);
    let mut period = timeout / 4;
    if daemon.config.jail.idle_reclaim_after_s > 0 {
        period = period.min(Duration::from_secs(daemon.config.jail.idle_reclaim_after_s) / 4);
    }
    let period = period.clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::time::sleep(period).await;
        let n = daemon.scheduler.reap_idle(timeout).await;
        if n > 0 {
            tracing::info!(reaped = n, "idle environments reaped");
        }
        // Idle VMs paged out are charged what they hold (room for more
        // environments: admission by memory actually held).
        daemon.scheduler.recharge_idle();
    }
}
