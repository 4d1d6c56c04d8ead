//! The tenant scheduler, after Lambda's tenant isolation mode.
//!
//! An execution environment is bound when it is created to exactly one
//! [`Binding`] (function version, tenant) and serves only that binding until
//! it is destroyed. An invoke takes an idle environment of its binding (the
//! most recently used: warm) or creates one (cold start); each environment
//! runs one invocation at a time, so parallel invokes of one tenant scale out.
//!
//! Limits per function: in-flight invocations never exceed its reserved
//! concurrency, or, without a reservation, draw on one host-wide pool;
//! environments (busy, idle or being created) never exceed
//! `ceil(2.5 x concurrency)`: at the cap the least recently used *idle*
//! environment of any tenant is destroyed first, and with none idle the
//! invoke is throttled; one tenant's in-flight invocations never exceed the
//! per-tenant ceiling. Shares that hold across functions (a tenant's
//! environments, its turn at the boot slots, host memory) are in [`fair`].
//! Idle environments are reaped after the idle timeout. An environment
//! that fails is destroyed; no other is touched.
//!
//! Cold starts pass [`admission`] control: a bounded number boot at once,
//! within the host's memory, the rest wait in a bounded queue served in
//! turn by tenant with their invoke's deadline, or are refused at once
//! when they could not be served in time. A waiting cold start takes an idle environment of its own
//! binding if one is released before a boot slot is free.
//!
//! A function version may keep a **pool** of environments booted ahead of
//! time and bound to no tenant ([`Scheduler::set_pool`]): a new tenant's
//! first invoke takes one (no boot on its path) and binds it for life; the
//! pool refills in the background, its boots waiting behind invokes' cold
//! starts for a boot slot. A pooled environment has served no one before it
//! is taken (its init ran without a tenant, as in Lambda's init phase).
//! Pooled environments count against the environment cap and are reaped
//! after the idle timeout like idle ones.
//!
//! Environments are reached through the [`Backend`] and [`Environment`]
//! traits: VMs in the daemon, an in-memory backend in tests.

pub mod admission;
mod backend;
pub mod fair;
mod invoke;
mod lifecycle;
pub mod memory_backend;
mod pools;
mod state;
mod tenant;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use admission::{host_memory_mib, Admission};
pub use backend::{Backend, Environment};
pub use state::{Counters, Stats};
pub use tenant::{InvalidTenantId, TenantId};

use state::State;

/// A function version: new code means new environments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    /// Function name.
    pub name: String,
    /// Code version (e.g. the package's SHA-256).
    pub version: String,
}

/// What an environment is bound to for life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Binding {
    /// The function version.
    pub function: FunctionKey,
    /// The tenant; `None` only for functions without tenant isolation.
    pub tenant: Option<TenantId>,
}

/// Per-function limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most in-flight invocations of the function when `reserved`;
    /// otherwise only the base of the environment cap (the function draws
    /// on the host-wide pool, [`Admission::host_concurrency`]).
    pub concurrency: u32,
    /// Whether `concurrency` is reserved for the function (Lambda's
    /// PutFunctionConcurrency); unreserved functions share the host's pool.
    pub reserved: bool,
    /// Most in-flight invocations of one tenant.
    pub per_tenant: u32,
    /// Environments per unit of concurrency (Lambda: 2.5).
    pub env_cap_factor: f64,
    /// Idle environments older than this are reaped.
    pub idle_timeout: Duration,
    /// An invoke needing a cold start must have its environment ready
    /// within this long of its arrival, or is refused (see [`admission`]).
    pub init_deadline: Duration,
    /// Guest memory of one environment (MiB), counted against the host's
    /// [`Admission::memory_mib`].
    pub memory_mib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: 100,
            reserved: false,
            per_tenant: 10,
            env_cap_factor: 2.5,
            idle_timeout: Duration::from_secs(300),
            init_deadline: Duration::from_secs(120),
            memory_mib: 128,
        }
    }
}

impl Limits {
    /// Environment cap: `ceil(env_cap_factor x concurrency)`.
    pub fn env_cap(&self) -> u32 {
        (self.env_cap_factor * f64::from(self.concurrency)).ceil() as u32
    }
}

/// Why an invoke was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThrottleReason {
    /// The function's reserved concurrency is used up.
    FunctionConcurrency,
    /// The host-wide pool of unreserved concurrency is used up.
    HostConcurrency,
    /// This tenant's in-flight ceiling (per function) is reached.
    TenantConcurrency,
    /// This tenant holds its share of environments across functions, all
    /// busy.
    TenantEnvironments,
    /// The function's memory exceeds the host's whole guest memory budget.
    HostMemory,
    /// The environment cap is reached and none is idle.
    EnvironmentCap,
    /// The queue of cold starts waiting for a boot slot is full.
    ColdStartQueueFull,
    /// The cold start could not have its environment ready before the
    /// invoke's deadline (estimated on arrival from measured boots, or
    /// found while waiting).
    ColdStartDeadline,
}

impl ThrottleReason {
    /// Every reason, for metrics.
    pub const ALL: [ThrottleReason; 8] = [
        Self::FunctionConcurrency,
        Self::HostConcurrency,
        Self::TenantConcurrency,
        Self::TenantEnvironments,
        Self::HostMemory,
        Self::EnvironmentCap,
        Self::ColdStartQueueFull,
        Self::ColdStartDeadline,
    ];

    /// A stable snake_case name (metrics labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FunctionConcurrency => "function_concurrency",
            Self::HostConcurrency => "host_concurrency",
            Self::TenantConcurrency => "tenant_concurrency",
            Self::TenantEnvironments => "tenant_environments",
            Self::HostMemory => "host_memory",
            Self::EnvironmentCap => "environment_cap",
            Self::ColdStartQueueFull => "cold_start_queue_full",
            Self::ColdStartDeadline => "cold_start_deadline",
        }
    }
}

/// Scheduling errors.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError<E: std::error::Error> {
    /// Rate exceeded.
    #[error("throttled: {0:?}")]
    Throttled(ThrottleReason),
    /// Creating an environment failed (cold start failure).
    #[error("cannot create an execution environment: {0}")]
    Create(E),
    /// The environment failed during the invocation; it was destroyed.
    #[error("the execution environment failed: {0}")]
    Environment(E),
    /// The scheduler's worker task failed.
    #[error("internal scheduler error: {0}")]
    Internal(String),
}

/// The outcome of a scheduled invocation.
#[derive(Debug)]
pub struct InvokeReport<R> {
    /// The environment's response.
    pub response: R,
    /// Whether an environment was created for it.
    pub cold_start: bool,
    /// Which environment ran it.
    pub env_id: u64,
    /// Time spent creating the environment (the boot, without any wait
    /// for a boot slot).
    pub init_duration: Option<Duration>,
    /// Whether the environment came from the function's pool of pre-booted
    /// environments (bound to this invoke's tenant now).
    pub from_pool: bool,
}

/// The scheduler; clone it freely (shared state inside).
pub struct Scheduler<B: Backend> {
    backend: Arc<B>,
    state: Arc<Mutex<State<B::Env>>>,
    admission: Admission,
}

impl<B: Backend> Clone for Scheduler<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            state: self.state.clone(),
            admission: self.admission,
        }
    }
}

impl<B> Scheduler<B>
where
    B: Backend,
    B::Env: Environment<Request = B::Request, Response = B::Response>,
{
    /// A scheduler creating environments with `backend`, with this host's
    /// default [`Admission`].
    pub fn new(backend: B) -> Self {
        Self::with_admission(backend, Admission::for_host())
    }

    /// A scheduler with explicit cold-start admission limits (zeros are
    /// raised to one: boot slot, queue entry, pool boot slot, MiB,
    /// invocation, environment per tenant).
    pub fn with_admission(backend: B, admission: Admission) -> Self {
        Self {
            backend: Arc::new(backend),
            state: Arc::new(Mutex::new(State::new())),
            admission: Admission {
                max_booting: admission.max_booting.max(1),
                queue_capacity: admission.queue_capacity.max(1),
                pool_boot_slots: admission
                    .pool_boot_slots
                    .clamp(1, admission.max_booting.max(1)),
                memory_mib: admission.memory_mib.max(1),
                host_concurrency: admission.host_concurrency.max(1),
                tenant_environments: admission.tenant_environments.max(1),
            },
        }
    }

    /// The admission limits and shares in force.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// The backend environments are created with.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<B::Env>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
