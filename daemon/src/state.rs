//! The host daemon's state: functions (persisted in the [`store`](crate::store)),
//! the tenant scheduler over microVMs, per-tenant [`metrics`](crate::metrics),
//! the queue of asynchronous invocations and the idle reaper. The HTTP layer
//! in [`api`](crate::api) translates Lambda requests into calls on [`Daemon`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use silo_proto::{Message, Outcome};
use silo_scheduler::{
    Binding, FunctionKey, InvokeReport, Limits, ScheduleError, Scheduler, TenantId,
};

use crate::config::DaemonConfig;
use crate::event_store::EventStore;
use crate::events::EventQueue;
use crate::metrics::{Ending, Metrics};
use crate::store::{FunctionRecord, Store, StoreError};
use crate::vm_backend::{RegisterError, VmBackend, VmRequest};
use crate::vm_env::{EnvError, InvokeResult};

mod functions;
mod lifecycle;

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

    /// The id callers see for environment `env_id` of `function` serving
    /// `tenant` (`X-Silo-Environment-Id`): see
    /// [`environment_token`](crate::environment_id::environment_token).
    pub fn environment_token(&self, function: &str, tenant: Option<&str>, env_id: u64) -> String {
        crate::environment_id::environment_token(&self.env_token_key, function, tenant, env_id)
    }

    /// The reserved concurrency this node enforces for `rec`: all of it on
    /// one host; in a cluster, this node's share of it among the live nodes
    /// ([`crate::cluster::shares`]), with the placement it was split by.
    pub(crate) fn reserved_here(
        &self,
        rec: &FunctionRecord,
    ) -> Option<(u32, Option<crate::cluster::shares::Placement>)> {
        let n = rec.reserved_concurrency?;
        let placement = self.store.registry().and_then(|r| r.placement());
        Some((
            placement.map_or(n, |p| crate::cluster::shares::share(n, p)),
            placement,
        ))
    }

    fn limits(&self, rec: &FunctionRecord) -> Limits {
        let l = &self.config.limits;
        // Unreserved functions share the host's pool; their environment cap
        // is based on it.
        let reserved = self.reserved_here(rec).map(|(n, _)| n);
        let concurrency = reserved.unwrap_or(self.scheduler.admission().host_concurrency);
        Limits {
            concurrency,
            reserved: reserved.is_some(),
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
}
