//! The host daemon's state: functions (persisted in the [`store`](crate::store)),
//! the tenant scheduler over microVMs, per-tenant [`metrics`](crate::metrics),
//! the queue of asynchronous invocations and the idle reaper. The HTTP layer
//! in [`api`](crate::api) translates Lambda requests into calls on [`Daemon`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use silo_proto::{AgentConfig, Message, Outcome};
use silo_scheduler::{
    Binding, FunctionKey, InvokeReport, Limits, ScheduleError, Scheduler, TenantId,
};

use crate::config::DaemonConfig;
use crate::event_store::{EventStore, SqliteEventStore};
use crate::events::EventQueue;
use crate::metrics::{Ending, Metrics};
use crate::store::{FunctionRecord, Store, StoreError};
use crate::vm_backend::{RegisterError, VmBackend, VmRequest};
use crate::vm_env::{EnvError, InvokeResult};
use silo_aws::id::random_uuid;

/// What the daemon boots VMs from.
#[derive(Debug, Clone)]
pub struct Images {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Static guest agent binary.
    pub agent: PathBuf,
}

/// The result of a synchronous invocation through the scheduler.
pub type InvokeOutcome = Result<InvokeReport<InvokeResult>, ScheduleError<EnvError>>;

/// The daemon.
pub struct Daemon {
    /// Configuration in force.
    pub config: DaemonConfig,
    images: Images,
    pub(crate) store: Store,
    functions: Mutex<BTreeMap<String, FunctionRecord>>,
    pub(crate) scheduler: Scheduler<VmBackend>,
    /// Invocation counters.
    pub metrics: Metrics,
    pub(crate) events: EventQueue,
    /// Where accepted events live until done ([`crate::event_worker`]).
    pub(crate) event_store: Arc<dyn EventStore>,
    /// Turns true when the event workers are to stop.
    pub(crate) event_stop: tokio::sync::watch::Sender<bool>,
    event_workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    run_dir: PathBuf,
    /// Per function name: held through each change of its code or
    /// configuration.
    changes: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Random key of [`Daemon::environment_token`], new at every start.
    env_token_key: String,
    /// The HTTP gateway's routes, authorizers and rate limits.
    pub gateway: crate::gateway::Gateway,
    /// Function logs and usage per tenant.
    pub logs: crate::logs::Logs,
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be used.
    #[error("data directory: {0}")]
    Store(#[from] StoreError),
    /// The run directory cannot be made.
    #[error("run directory: {0}")]
    RunDir(#[from] RegisterError),
    /// The gateway's stored routes cannot be read.
    #[error("gateway: {0}")]
    Gateway(#[from] crate::gateway::routes::RoutesError),
    /// `[network]` is enabled but the host cannot provide it.
    #[error(transparent)]
    Network(#[from] crate::net::NetError),
    /// The event store cannot be opened or read.
    #[error("event store: {0}")]
    Events(#[from] crate::event_store::EventStoreError),
    /// The log store or its export sink cannot be opened.
    #[error("function logs: {0}")]
    Logs(std::io::Error),
    /// The cluster's PostgreSQL cannot be used (`--registry`).
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::pg::PgError),
}

/// Errors changing the daemon's functions.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The function's image cannot be built.
    #[error(transparent)]
    Image(#[from] RegisterError),
    /// The data directory refused the change.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The function went away while it was being changed.
    #[error("the function was deleted meanwhile")]
    Deleted,
    /// A running VM's network rules could not be re-applied.
    #[error("network: {0}")]
    Network(crate::net::NetError),
}

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

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FunctionRecord>> {
        self.functions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ARN of function `name`.
    pub fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.config.region, self.config.account_id
        )
    }

    pub(crate) fn key(rec: &FunctionRecord) -> FunctionKey {
        FunctionKey {
            name: rec.name.clone(),
            version: format!("{}@{}", rec.name, rec.revision_id),
        }
    }

    pub(crate) fn register(&self, rec: &FunctionRecord, code: &[u8]) -> Result<(), RegisterError> {
        let mut environment = rec.environment.clone();
        environment.extend(rec.logging.runtime_environment(&rec.name));
        let cfg = AgentConfig {
            function_name: rec.name.clone(),
            function_arn: self.arn(&rec.name),
            handler: rec.handler.clone(),
            memory_mib: rec.memory_mib,
            timeout_s: rec.timeout_s,
            environment,
            region: self.config.region.clone(),
            container_credentials: self.tenant_role(rec).is_some(),
            ..AgentConfig::default()
        };
        self.scheduler.backend().register(
            &Self::key(rec).version,
            &self.images.agent,
            cfg,
            code,
            &rec.runtime,
            rec.logging.clone(),
        )?;
        self.scheduler
            .backend()
            .set_tenant_role(&Self::key(rec).version, self.tenant_role(rec));
        Ok(())
    }

    /// A function's record.
    pub fn get(&self, name: &str) -> Option<FunctionRecord> {
        self.lock().get(name).cloned()
    }

    /// Every function, by name.
    pub fn list(&self) -> Vec<FunctionRecord> {
        self.lock().values().cloned().collect()
    }

    /// Adds a function (the caller checked the package). `Ok(false)` if the
    /// name is taken.
    pub fn create(&self, rec: FunctionRecord, code: &[u8]) -> Result<bool, FunctionError> {
        if self.lock().contains_key(&rec.name) {
            return Ok(false);
        }
        self.register(&rec, code)?;
        // Pinned until the record naming it is written: a concurrent
        // delete's collection cannot take it in between.
        let _pin = self.store.put_code(&rec.code_sha256, code)?;
        let mut fns = self.lock();
        if fns.contains_key(&rec.name) {
            return Ok(false);
        }
        self.store.put(&rec)?;
        tracing::info!(function = %rec.name, per_tenant = rec.per_tenant, code_sha256 = %rec.code_sha256, "function created");
        self.scheduler.activate(&Self::key(&rec));
        self.apply_pool(&rec);
        fns.insert(rec.name.clone(), rec);
        Ok(true)
    }

    /// The pool size in force for `rec`: set through the API, else the
    /// configuration's `[pools]` entry, else none.
    pub fn pool_size(&self, rec: &FunctionRecord) -> u32 {
        rec.pool_size
            .or_else(|| self.config.pools.get(&rec.name).copied())
            .unwrap_or(0)
    }

    /// Keeps `rec`'s pool at its size (in the background).
    pub(crate) fn apply_pool(&self, rec: &FunctionRecord) {
        let (scheduler, key, size, limits) = (
            self.scheduler.clone(),
            Self::key(rec),
            self.pool_size(rec) as usize,
            self.limits(rec),
        );
        if size > 0 || rec.pool_size.is_some() {
            tracing::info!(function = %rec.name, pool_size = size, "pool of pre-booted environments");
        }
        tokio::spawn(async move {
            scheduler.set_pool(&key, size, &limits).await;
        });
    }

    /// Changes the pool size of function `name` (`None`: back to the
    /// configuration's) and applies it; returns the record as stored.
    pub fn set_pool(&self, name: &str, size: Option<u32>) -> Result<FunctionRecord, FunctionError> {
        let rec = self.modify(name, |r| r.pool_size = size)?;
        self.apply_pool(&rec);
        Ok(rec)
    }

    /// Changes the record of function `name` with `change` and stores it,
    /// read and written under one lock: a change made meanwhile (new code by
    /// [`Daemon::update`]) is never written back over.
    pub(crate) fn modify(
        &self,
        name: &str,
        change: impl FnOnce(&mut FunctionRecord),
    ) -> Result<FunctionRecord, FunctionError> {
        let mut fns = self.lock();
        let rec = fns.get_mut(name).ok_or(FunctionError::Deleted)?;
        let mut changed = rec.clone();
        change(&mut changed);
        self.store.put(&changed)?;
        *rec = changed.clone();
        Ok(changed)
    }

    /// Serializes changes of function `name`'s code and configuration
    /// (UpdateFunctionCode, UpdateFunctionConfiguration): hold it from
    /// reading the record to [`Daemon::update`]'s return, so that revisions
    /// reach the store and the scheduler in the same order.
    pub async fn changing(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The pool's (ready, booting) environments for function `name`.
    pub fn pool_state(&self, name: &str) -> (usize, usize) {
        self.scheduler
            .stats()
            .pools
            .get(name)
            .map_or((0, 0), |p| (p.1, p.2))
    }

    /// Replaces a function's record: new code or configuration means a new
    /// revision; environments of the old one finish their work and go.
    /// Callers hold [`Daemon::changing`] from reading `rec` on; its reserved
    /// concurrency and pool size are taken from the record as it is now.
    /// Returns the record as stored.
    pub async fn update(
        &self,
        rec: FunctionRecord,
        code: &[u8],
    ) -> Result<FunctionRecord, FunctionError> {
        self.register(&rec, code)?;
        let pin = self.store.put_code(&rec.code_sha256, code)?;
        let mut rec = rec;
        let old = {
            let mut fns = self.lock();
            let Some(current) = fns.get(&rec.name) else {
                drop(fns);
                self.scheduler
                    .backend()
                    .unregister(&Self::key(&rec).version);
                return Err(FunctionError::Deleted);
            };
            // Reserved concurrency and pool size are [`Daemon::modify`]'s:
            // as they are now, not as they were when `rec` was read.
            rec.reserved_concurrency = current.reserved_concurrency;
            rec.pool_size = current.pool_size;
            self.store.put(&rec)?;
            fns.insert(rec.name.clone(), rec.clone())
        };
        drop(pin);
        let drained = self.scheduler.set_current_version(&Self::key(&rec)).await;
        self.apply_pool(&rec);
        self.store.collect_code();
        if let Some(old) = old {
            self.scheduler
                .backend()
                .unregister(&Self::key(&old).version);
        }
        tracing::info!(function = %rec.name, revision_id = %rec.revision_id, idle_environments_destroyed = drained, "function updated");
        Ok(rec)
    }

    /// The id callers see for environment `env_id` of `function` serving
    /// `tenant` (`X-Silo-Environment-Id`): see
    /// [`environment_token`](crate::environment_id::environment_token).
    pub fn environment_token(&self, function: &str, tenant: Option<&str>, env_id: u64) -> String {
        crate::environment_id::environment_token(&self.env_token_key, function, tenant, env_id)
    }

    /// A stored package.
    pub fn code(&self, sha256_hex: &str) -> Result<Vec<u8>, StoreError> {
        self.store.code(sha256_hex)
    }

    /// Changes the reserved concurrency of function `name` (no new
    /// revision: environments stay; the new limit applies to the next
    /// invocation); returns the record as stored.
    pub fn set_concurrency(
        &self,
        name: &str,
        reserved: Option<u32>,
    ) -> Result<FunctionRecord, FunctionError> {
        self.modify(name, |r| r.reserved_concurrency = reserved)
    }

    /// Deletes a function and destroys its environments (busy ones when
    /// their invocation ends). `Ok(false)` if there was no such function.
    pub async fn delete(&self, name: &str) -> Result<bool, FunctionError> {
        let old = {
            let mut fns = self.lock();
            if !fns.contains_key(name) {
                return Ok(false);
            }
            self.store.delete(name)?;
            fns.remove(name)
        };
        if let Some(net) = self.network() {
            let _ = net.set_policy(name, None);
        }
        self.forget_credentials(name);
        let destroyed = self.scheduler.retire_function(name).await;
        if let Some(old) = old {
            self.scheduler
                .backend()
                .unregister(&Self::key(&old).version);
        }
        tracing::info!(function = %name, environments_destroyed = destroyed, "function deleted");
        Ok(true)
    }

    fn limits(&self, rec: &FunctionRecord) -> Limits {
        let l = &self.config.limits;
        // Unreserved functions share the host's pool; their environment cap
        // is based on it.
        let concurrency = rec
            .reserved_concurrency
            .unwrap_or(self.scheduler.admission().host_concurrency);
        Limits {
            concurrency,
            reserved: rec.reserved_concurrency.is_some(),
            per_tenant: l.per_tenant.min(concurrency.max(1)),
            env_cap_factor: 2.5,
            idle_timeout: Duration::from_secs(l.idle_timeout_s),
            init_deadline: Duration::from_secs(l.init_timeout_s),
            memory_mib: rec.memory_mib,
        }
    }

    /// Runs one invocation now (RequestResponse) and records its metrics.
    pub async fn invoke(
        &self,
        rec: &FunctionRecord,
        tenant: Option<TenantId>,
        payload: Vec<u8>,
        request_id: &str,
    ) -> InvokeOutcome {
        let started = Instant::now();
        let deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(u64::from(rec.timeout_s));
        let timeout = Duration::from_secs(u64::from(rec.timeout_s));
        let message = Message::Invoke {
            request_id: request_id.to_string(),
            tenant_id: tenant.as_ref().map(|t| t.as_str().to_string()),
            deadline_unix_ms: deadline.as_millis() as u64,
            function_arn: self.arn(&rec.name),
            trace_id: format!(
                "Root=1-{:08x}-{}",
                deadline.as_secs(),
                &request_id.replace('-', "")[..24]
            ),
            payload,
        };
        let binding = Binding {
            function: Self::key(rec),
            tenant: tenant.clone(),
        };
        let result = self
            .scheduler
            .invoke(binding, self.limits(rec), VmRequest { message, timeout })
            .await;
        let t = tenant.as_ref().map(|t| t.as_str());
        if let Some(boot) = result.as_ref().ok().and_then(|r| r.init_duration) {
            self.metrics.record_boot(boot);
        }
        let (ending, cold) = match &result {
            Ok(r) => (
                if matches!(r.response.outcome, Outcome::Ok(_)) {
                    Ending::Ok
                } else {
                    Ending::Error
                },
                r.cold_start,
            ),
            Err(ScheduleError::Throttled(_)) => (Ending::Throttled, false),
            Err(ScheduleError::Environment(_)) => (Ending::Error, false),
            Err(_) => (Ending::Error, true),
        };
        self.metrics
            .record(&rec.name, t, ending, cold, started.elapsed());
        self.logs
            .record_usage(&rec.name, t, rec.memory_mib, &result);
        result
    }

    /// Asynchronous invocations held in the queue (waiting, running or
    /// waiting to be retried).
    pub fn events_held(&self) -> usize {
        self.events.held()
    }

    /// The Prometheus text of the metrics.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.scheduler.stats()) + &self.logs.render_metrics()
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

    /// Whether VMs can boot jailed (or unjailed with `--insecure-no-jail`).
    pub fn jail_ready(&self) -> bool {
        !matches!(
            self.scheduler.backend().jail(),
            crate::jail::JailMode::Unavailable(_)
        )
    }

    /// The guest kernel and agent the daemon boots VMs from.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Whether the daemon is stopping (SIGTERM): `/readyz` fails.
    pub fn stopping(&self) -> bool {
        *self.event_stop.borrow()
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

/// Reaps idle environments past the idle timeout.
async fn reaper(daemon: Arc<Daemon>) {
    let timeout = Duration::from_secs(daemon.config.limits.idle_timeout_s);
    let period = (timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::time::sleep(period).await;
        let n = daemon.scheduler.reap_idle(timeout).await;
        if n > 0 {
            tracing::info!(reaped = n, "idle environments reaped");
        }
    }
}
