//! The tenant scheduler, after Lambda's tenant isolation mode.
//!
//! An execution environment is bound when it is created to exactly one
//! [`Binding`] (function version, tenant) and serves only that binding until
//! it is destroyed. An invoke takes an idle environment of its binding (the
//! most recently used: warm) or creates one (cold start); each environment
//! runs one invocation at a time, so parallel invokes of one tenant scale out.
//!
//! Limits per function: in-flight invocations never exceed its concurrency;
//! environments (busy, idle or being created) never exceed
//! `ceil(2.5 x concurrency)`: at the cap the least recently used *idle*
//! environment of any tenant is destroyed first, and with none idle the
//! invoke is throttled; one tenant's in-flight invocations never exceed the
//! per-tenant ceiling. Idle environments are reaped after the idle timeout.
//! An environment that fails is destroyed; no other is touched.
//!
//! Cold starts pass [`admission`] control: a bounded number boot at once,
//! the rest wait in a bounded first-come, first-served queue with their
//! invoke's deadline, or are refused at once when they could not be served
//! in time. A waiting cold start takes an idle environment of its own
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
pub mod memory_backend;
mod tenant;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use admission::Admission;
pub use tenant::{InvalidTenantId, TenantId};

use admission::BootEstimate;
use tokio::sync::oneshot;

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
    /// Most in-flight invocations of the function.
    pub concurrency: u32,
    /// Most in-flight invocations of one tenant.
    pub per_tenant: u32,
    /// Environments per unit of concurrency (Lambda: 2.5).
    pub env_cap_factor: f64,
    /// Idle environments older than this are reaped.
    pub idle_timeout: Duration,
    /// An invoke needing a cold start must have its environment ready
    /// within this long of its arrival, or is refused (see [`admission`]).
    pub init_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: 100,
            per_tenant: 10,
            env_cap_factor: 2.5,
            idle_timeout: Duration::from_secs(300),
            init_deadline: Duration::from_secs(120),
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
    /// The function's concurrency is used up.
    FunctionConcurrency,
    /// This tenant's in-flight ceiling is reached.
    TenantConcurrency,
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
    pub const ALL: [ThrottleReason; 5] = [
        Self::FunctionConcurrency,
        Self::TenantConcurrency,
        Self::EnvironmentCap,
        Self::ColdStartQueueFull,
        Self::ColdStartDeadline,
    ];

    /// A stable snake_case name (metrics labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FunctionConcurrency => "function_concurrency",
            Self::TenantConcurrency => "tenant_concurrency",
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

/// Creates environments.
pub trait Backend: Send + Sync + 'static {
    /// The environment type.
    type Env: Environment<Error = Self::Error>;
    /// Errors of creation and of environments.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Invocation request.
    type Request: Send + 'static;
    /// Invocation response.
    type Response: Send + 'static;
    /// Creates an environment bound to `binding`.
    fn create(
        &self,
        binding: &Binding,
    ) -> impl Future<Output = Result<Self::Env, Self::Error>> + Send;
    /// Creates an environment for `function`'s pool, bound to no tenant
    /// and returned only once the function's init has run (Lambda's init
    /// phase), so that the tenant who takes it waits for no init. By
    /// default, [`Backend::create`] with no tenant.
    fn create_pooled(
        &self,
        function: &FunctionKey,
    ) -> impl Future<Output = Result<Self::Env, Self::Error>> + Send {
        let binding = Binding {
            function: function.clone(),
            tenant: None,
        };
        async move { self.create(&binding).await }
    }
}

/// One execution environment.
pub trait Environment: Send + 'static {
    /// Errors; any error destroys the environment.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Invocation request.
    type Request: Send + 'static;
    /// Invocation response.
    type Response: Send + 'static;
    /// Runs one invocation.
    fn invoke(
        &mut self,
        req: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send;
    /// Releases the environment (its VM and memory).
    fn destroy(self) -> impl Future<Output = ()> + Send;
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

struct Idle<E> {
    env: E,
    id: u64,
    last_used: Instant,
}

#[derive(Default)]
struct FunctionState {
    current_version: Option<String>,
    deleted: bool,
    in_flight: u32,
    environments: u32,
    tenant_in_flight: HashMap<Option<TenantId>, u32>,
}

impl FunctionState {
    /// Whether pool boots of `version` are still wanted: the function is not
    /// deleted and `version` is its current one (or none is set yet).
    fn wants_pool_boots(&self, version: &str) -> bool {
        !self.deleted && self.current_version.as_deref().is_none_or(|v| v == version)
    }
}

/// Counters since start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Invocations accepted.
    pub invocations: u64,
    /// Environments created.
    pub cold_starts: u64,
    /// Invocations throttled.
    pub throttles: u64,
    /// Environments that failed and were destroyed.
    pub env_failures: u64,
    /// Idle environments evicted at the cap.
    pub evictions: u64,
    /// Idle environments reaped after the timeout.
    pub reaped: u64,
    /// Environments destroyed, for any reason.
    pub destroyed: u64,
    /// Invocations throttled, by reason.
    pub throttles_by_reason: HashMap<ThrottleReason, u64>,
    /// Cold starts that waited and were then served by an idle environment
    /// of their binding instead of a boot.
    pub warm_handoffs: u64,
    /// Environment creations that failed.
    pub create_failures: u64,
    /// Environments booted into pools.
    pub pool_boots: u64,
    /// Pooled environments taken by a new tenant's invoke.
    pub pool_takes: u64,
}

/// A point-in-time view for metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Idle environments per binding.
    pub idle: HashMap<Binding, usize>,
    /// Environments (busy, idle or creating) per function name.
    pub environments: HashMap<String, u32>,
    /// In-flight invocations per function name.
    pub in_flight: HashMap<String, u32>,
    /// In-flight invocations per (function name, tenant).
    pub tenant_in_flight: HashMap<(String, Option<TenantId>), u32>,
    /// Counters.
    pub counters: Counters,
    /// Environments booting now.
    pub booting: usize,
    /// Most environments ever booting at once.
    pub peak_booting: usize,
    /// Cold starts waiting for a boot slot now.
    pub queued: usize,
    /// The admission limits in force.
    pub admission: Admission,
    /// Current estimate of one boot's duration, once one was measured.
    pub boot_estimate: Option<Duration>,
    /// Pools per function name: (target size, ready, booting).
    pub pools: HashMap<String, (usize, usize, usize)>,
}

/// What a queued cold start receives.
enum Grant<E> {
    /// A boot slot: create the environment.
    Boot,
    /// An idle environment of the waiter's binding.
    Warm(Idle<E>),
}

struct Waiter<E> {
    ticket: u64,
    binding: Binding,
    tx: oneshot::Sender<Grant<E>>,
    /// A pool refill: served only when no invoke waits.
    pool: bool,
}

/// Pre-booted environments of one function version, bound to no tenant.
struct Pool<E> {
    /// Distinguishes this pool from an earlier one of the same key, so a
    /// boot started for a removed pool never lands in a new one.
    generation: u64,
    target: usize,
    /// Environment cap of the function when the pool was set.
    cap: u32,
    ready: Vec<Idle<E>>,
    filling: usize,
}

/// Removes `key`'s pool once it is set to 0 and holds and boots nothing.
fn forget_if_empty<E>(pools: &mut HashMap<FunctionKey, Pool<E>>, key: &FunctionKey) {
    if pools
        .get(key)
        .is_some_and(|p| p.target == 0 && p.filling == 0 && p.ready.is_empty())
    {
        pools.remove(key);
    }
}

struct State<E> {
    functions: HashMap<String, FunctionState>,
    idle: HashMap<Binding, Vec<Idle<E>>>,
    next_id: u64,
    counters: Counters,
    booting: usize,
    peak_booting: usize,
    queue: VecDeque<Waiter<E>>,
    next_ticket: u64,
    boot_estimate: BootEstimate,
    pools: HashMap<FunctionKey, Pool<E>>,
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

enum Slot<E> {
    Warm(Idle<E>),
    Pooled(Idle<E>),
    Cold { id: u64, evicted: Option<E> },
}

/// How a cold start's wait for a boot slot ended.
enum Admitted<E> {
    Boot,
    Warm(Idle<E>),
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
    /// raised to one boot slot and one queue entry).
    pub fn with_admission(backend: B, admission: Admission) -> Self {
        Self {
            backend: Arc::new(backend),
            state: Arc::new(Mutex::new(State {
                functions: HashMap::new(),
                idle: HashMap::new(),
                next_id: 1,
                counters: Counters::default(),
                booting: 0,
                peak_booting: 0,
                queue: VecDeque::new(),
                next_ticket: 1,
                boot_estimate: BootEstimate::default(),
                pools: HashMap::new(),
            })),
            admission: Admission {
                max_booting: admission.max_booting.max(1),
                queue_capacity: admission.queue_capacity.max(1),
            },
        }
    }

    /// The backend environments are created with.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<B::Env>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `req` in an environment bound to `binding`, within `limits`.
    ///
    /// The work runs in its own task: if the caller goes away mid-invoke the
    /// environment still finishes and is kept or destroyed, never leaked.
    pub async fn invoke(
        &self,
        binding: Binding,
        limits: Limits,
        req: B::Request,
    ) -> Result<InvokeReport<B::Response>, ScheduleError<B::Error>> {
        let this = self.clone();
        tokio::spawn(async move { this.invoke_inner(binding, limits, req).await })
            .await
            .map_err(|e| ScheduleError::Internal(e.to_string()))?
    }

    async fn invoke_inner(
        &self,
        binding: Binding,
        limits: Limits,
        req: B::Request,
    ) -> Result<InvokeReport<B::Response>, ScheduleError<B::Error>> {
        let tenant = binding.tenant.as_ref().map(|t| t.as_str().to_string());
        let tenant_id = tenant.as_deref().unwrap_or("-");
        let deadline = Instant::now() + limits.init_deadline;
        let slot = self.acquire(&binding, &limits)?;
        let from_pool = matches!(slot, Slot::Pooled(_));
        // A cold start refills the pool at once (its own boot queues with
        // the refills). A pooled VM's refill waits until this invoke is
        // answered: a boot started now would compete for the CPU with the
        // very invoke the pool exists to make fast.
        if matches!(slot, Slot::Cold { .. }) {
            self.refill(&binding.function);
        }
        let (mut env, id, cold, init) = match slot {
            Slot::Warm(idle) => (idle.env, idle.id, false, None),
            Slot::Pooled(idle) => {
                tracing::info!(function = %binding.function.name, tenant_id, env_id = idle.id, "pre-booted environment bound to this tenant");
                (idle.env, idle.id, false, None)
            }
            Slot::Cold { id, evicted } => {
                if let Some(old) = evicted {
                    self.destroy_later(old);
                }
                let started = Instant::now();
                match self.admit(&binding, deadline).await {
                    Err(reason) => {
                        tracing::info!(function = %binding.function.name, tenant_id, reason = reason.as_str(), "cold start refused");
                        self.release(&binding, None, true);
                        return Err(ScheduleError::Throttled(reason));
                    }
                    Ok(Admitted::Warm(idle)) => {
                        tracing::info!(function = %binding.function.name, tenant_id, env_id = idle.id, waited_ms = started.elapsed().as_millis() as u64, "queued cold start served by an idle environment of its tenant");
                        (idle.env, idle.id, false, None)
                    }
                    Ok(Admitted::Boot) => {
                        let queued = started.elapsed();
                        let boot_started = Instant::now();
                        tracing::info!(function = %binding.function.name, tenant_id, env_id = id, queued_ms = queued.as_millis() as u64, "creating environment (cold start)");
                        let created = self.backend.create(&binding).await;
                        self.boot_done(created.is_ok().then(|| boot_started.elapsed()));
                        match created {
                            Ok(env) => (env, id, true, Some(boot_started.elapsed())),
                            Err(e) => {
                                tracing::warn!(function = %binding.function.name, tenant_id, env_id = id, error = %e, "environment creation failed");
                                self.release(&binding, None, true);
                                return Err(ScheduleError::Create(e));
                            }
                        }
                    }
                }
            }
        };
        let result = env.invoke(req).await;
        if from_pool {
            self.refill(&binding.function);
        }
        match result {
            Ok(response) => {
                self.release(&binding, Some((env, id)), false);
                Ok(InvokeReport {
                    response,
                    cold_start: cold,
                    env_id: id,
                    init_duration: init,
                    from_pool,
                })
            }
            Err(e) => {
                tracing::warn!(function = %binding.function.name, tenant_id, env_id = id, error = %e, "environment failed; destroying it");
                self.lock().counters.env_failures += 1;
                self.release(&binding, None, true);
                env.destroy().await;
                self.lock().counters.destroyed += 1;
                Err(ScheduleError::Environment(e))
            }
        }
    }

    fn acquire(
        &self,
        binding: &Binding,
        limits: &Limits,
    ) -> Result<Slot<B::Env>, ScheduleError<B::Error>> {
        let mut st = self.lock();
        let st = &mut *st;
        let f = st
            .functions
            .entry(binding.function.name.clone())
            .or_default();
        if f.current_version.as_deref() != Some(binding.function.version.as_str()) && !f.deleted {
            f.current_version = Some(binding.function.version.clone());
        }
        f.deleted = false;
        let tenant_now = f
            .tenant_in_flight
            .get(&binding.tenant)
            .copied()
            .unwrap_or(0);
        let throttle = if f.in_flight >= limits.concurrency {
            Some(ThrottleReason::FunctionConcurrency)
        } else if tenant_now >= limits.per_tenant {
            Some(ThrottleReason::TenantConcurrency)
        } else {
            None
        };
        if let Some(reason) = throttle {
            st.counters.throttle(reason);
            return Err(ScheduleError::Throttled(reason));
        }
        // Warm: the most recently used idle environment of this binding.
        if let Some(idle) = st.idle.get_mut(binding).and_then(Vec::pop) {
            f.in_flight += 1;
            *f.tenant_in_flight
                .entry(binding.tenant.clone())
                .or_default() += 1;
            st.counters.invocations += 1;
            return Ok(Slot::Warm(idle));
        }
        // A pre-booted environment of this function version, bound to no
        // tenant yet: it becomes this binding's for life.
        if let Some(idle) = st
            .pools
            .get_mut(&binding.function)
            .and_then(|p| p.ready.pop())
        {
            f.in_flight += 1;
            *f.tenant_in_flight
                .entry(binding.tenant.clone())
                .or_default() += 1;
            st.counters.invocations += 1;
            st.counters.pool_takes += 1;
            return Ok(Slot::Pooled(idle));
        }
        // Cold: make room under the cap by evicting the LRU idle environment
        // of any tenant of this function.
        let mut evicted = None;
        if f.environments >= limits.env_cap() {
            let victim = st
                .idle
                .iter()
                .filter(|(b, v)| b.function.name == binding.function.name && !v.is_empty())
                .flat_map(|(b, v)| {
                    v.iter()
                        .enumerate()
                        .map(move |(i, e)| (e.last_used, b.clone(), i))
                })
                .min_by_key(|(t, _, _)| *t);
            match victim {
                Some((_, b, i)) => {
                    let e = st.idle.get_mut(&b).expect("victim binding").remove(i);
                    tracing::info!(function = %b.function.name, tenant_id = ?b.tenant.as_ref().map(TenantId::as_str).unwrap_or("-"), env_id = e.id, "evicting least recently used idle environment");
                    evicted = Some(e.env);
                    f.environments -= 1;
                    st.counters.evictions += 1;
                }
                None => {
                    st.counters.throttle(ThrottleReason::EnvironmentCap);
                    return Err(ScheduleError::Throttled(ThrottleReason::EnvironmentCap));
                }
            }
        }
        f.environments += 1;
        f.in_flight += 1;
        *f.tenant_in_flight
            .entry(binding.tenant.clone())
            .or_default() += 1;
        let id = st.next_id;
        st.next_id += 1;
        st.counters.invocations += 1;
        Ok(Slot::Cold { id, evicted })
    }

    /// Waits for a boot slot (or an idle environment of `binding`) in
    /// arrival order; refuses at once when the queue is full or the
    /// environment could not be ready by `deadline`.
    async fn admit(
        &self,
        binding: &Binding,
        deadline: Instant,
    ) -> Result<Admitted<B::Env>, ThrottleReason> {
        let (ticket, rx) = {
            let mut st = self.lock();
            let st = &mut *st;
            let now = Instant::now();
            // A free slot always boots: the estimate only judges waits (and
            // refusing here could refuse forever after one slow boot, since
            // no boot would then ever update the estimate).
            if st.booting < self.admission.max_booting && st.queue.iter().all(|w| w.pool) {
                st.booting += 1;
                st.peak_booting = st.peak_booting.max(st.booting);
                st.counters.cold_starts += 1;
                return Ok(Admitted::Boot);
            }
            let invoke_waiters = st.queue.iter().filter(|w| !w.pool).count();
            let refuse = if invoke_waiters >= self.admission.queue_capacity {
                Some(ThrottleReason::ColdStartQueueFull)
            } else if !st.boot_estimate.fits(
                now,
                invoke_waiters + 1,
                self.admission.max_booting,
                deadline,
            ) {
                Some(ThrottleReason::ColdStartDeadline)
            } else {
                None
            };
            if let Some(reason) = refuse {
                st.counters.throttle(reason);
                return Err(reason);
            }
            st.enqueue(binding, false)
        };
        let mut rx = rx;
        let grant = match tokio::time::timeout_at(deadline.into(), &mut rx).await {
            Ok(Ok(g)) => Some(g),
            Ok(Err(_)) => None,
            Err(_) => {
                // Timed out: leave the queue, unless a grant raced the timer.
                let mut st = self.lock();
                let before = st.queue.len();
                st.queue.retain(|w| w.ticket != ticket);
                if st.queue.len() == before {
                    drop(st);
                    rx.try_recv().ok()
                } else {
                    None
                }
            }
        };
        match grant {
            Some(Grant::Boot) => Ok(Admitted::Boot),
            Some(Grant::Warm(idle)) => Ok(Admitted::Warm(idle)),
            None => {
                self.lock()
                    .counters
                    .throttle(ThrottleReason::ColdStartDeadline);
                Err(ThrottleReason::ColdStartDeadline)
            }
        }
    }

    /// A boot ended (`Some(duration)` if it succeeded): its slot goes to
    /// the first waiter.
    fn boot_done(&self, took: Option<Duration>) {
        let mut st = self.lock();
        let st = &mut *st;
        st.booting = st.booting.saturating_sub(1);
        match took {
            Some(d) => st.boot_estimate.record(d),
            None => st.counters.create_failures += 1,
        }
        while st.booting < self.admission.max_booting && !st.queue.is_empty() {
            // Arrival order, but a waiter whose tenant already has an
            // environment booting or busy lets the first waiter of a tenant
            // with none go first: its own will likely be handed one.
            let has_env = |w: &Waiter<B::Env>| {
                let in_flight = st
                    .functions
                    .get(&w.binding.function.name)
                    .and_then(|f| f.tenant_in_flight.get(&w.binding.tenant))
                    .copied()
                    .unwrap_or(0) as usize;
                let waiting = st.queue.iter().filter(|o| o.binding == w.binding).count();
                in_flight > waiting
            };
            let pick = st
                .queue
                .iter()
                .position(|w| !w.pool && !has_env(w))
                .or_else(|| st.queue.iter().position(|w| !w.pool))
                .unwrap_or(0);
            let Some(w) = st.queue.remove(pick) else {
                break;
            };
            st.booting += 1;
            st.peak_booting = st.peak_booting.max(st.booting);
            let cold = u64::from(!w.pool);
            st.counters.cold_starts += cold;
            if w.tx.send(Grant::Boot).is_err() {
                st.booting -= 1;
                st.counters.cold_starts -= cold;
            }
        }
    }

    /// Ends an invocation: the environment goes back to idle, or, if it
    /// failed (`None`) or its function version is retired, is dropped from
    /// the count (the caller or a task destroys it).
    fn release(&self, binding: &Binding, env: Option<(B::Env, u64)>, _failed: bool) {
        let mut to_destroy = None;
        {
            let mut st = self.lock();
            let st = &mut *st;
            let f = st
                .functions
                .entry(binding.function.name.clone())
                .or_default();
            f.in_flight = f.in_flight.saturating_sub(1);
            if let Some(n) = f.tenant_in_flight.get_mut(&binding.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    f.tenant_in_flight.remove(&binding.tenant);
                }
            }
            let retired = f.deleted
                || f.current_version.as_deref() != Some(binding.function.version.as_str());
            match env {
                Some((env, id)) if !retired => {
                    let idle = Idle {
                        env,
                        id,
                        last_used: Instant::now(),
                    };
                    // A cold start of this binding waiting for a boot slot
                    // takes it instead, and gives back its reservation.
                    match hand_to_waiter(&mut st.queue, |b| b == binding, idle) {
                        None => {
                            f.environments = f.environments.saturating_sub(1);
                            st.counters.warm_handoffs += 1;
                            return;
                        }
                        Some(idle) => st.idle.entry(binding.clone()).or_default().push(idle),
                    }
                }
                Some((env, _)) => {
                    f.environments = f.environments.saturating_sub(1);
                    to_destroy = Some(env);
                }
                None => f.environments = f.environments.saturating_sub(1),
            }
        }
        if let Some(env) = to_destroy {
            self.destroy_later(env);
        }
    }

    fn destroy_later(&self, env: B::Env) {
        let this = self.clone();
        tokio::spawn(async move {
            env.destroy().await;
            this.lock().counters.destroyed += 1;
        });
    }

    fn take_idle(&self, pred: impl Fn(&Binding, &Idle<B::Env>) -> bool) -> Vec<B::Env> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut out = Vec::new();
        for (b, list) in st.idle.iter_mut() {
            let mut i = 0;
            while i < list.len() {
                if pred(b, &list[i]) {
                    out.push(list.remove(i).env);
                    if let Some(f) = st.functions.get_mut(&b.function.name) {
                        f.environments = f.environments.saturating_sub(1);
                    }
                } else {
                    i += 1;
                }
            }
        }
        st.idle.retain(|_, v| !v.is_empty());
        out
    }

    async fn destroy_all(&self, envs: Vec<B::Env>) -> usize {
        let n = envs.len();
        for e in envs {
            e.destroy().await;
        }
        self.lock().counters.destroyed += n as u64;
        n
    }

    /// Takes pooled environments matching `pred` out of their pools (and
    /// out of the environment count), for destruction.
    fn take_pooled(
        &self,
        pred: impl Fn(&FunctionKey, &Idle<B::Env>) -> bool,
        drop_pools: impl Fn(&FunctionKey) -> bool,
    ) -> Vec<B::Env> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut out = Vec::new();
        for (key, pool) in st.pools.iter_mut() {
            let mut i = 0;
            while i < pool.ready.len() {
                if pred(key, &pool.ready[i]) {
                    out.push(pool.ready.remove(i).env);
                    if let Some(f) = st.functions.get_mut(&key.name) {
                        f.environments = f.environments.saturating_sub(1);
                    }
                } else {
                    i += 1;
                }
            }
        }
        st.pools.retain(|k, _| !drop_pools(k));
        out
    }

    /// Destroys environments idle for longer than `idle_timeout`, pooled
    /// ones included (a pool drained this way refills on its function's
    /// next cold start).
    pub async fn reap_idle(&self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        let old = |e: &Idle<B::Env>| now.duration_since(e.last_used) >= idle_timeout;
        let mut envs = self.take_idle(|_, e| old(e));
        envs.extend(self.take_pooled(|_, e| old(e), |_| false));
        let n = self.destroy_all(envs).await;
        self.lock().counters.reaped += n as u64;
        n
    }

    /// DeleteFunction: idle and pooled environments go now, busy ones when
    /// they finish.
    pub async fn retire_function(&self, name: &str) -> usize {
        self.lock()
            .functions
            .entry(name.to_string())
            .or_default()
            .deleted = true;
        let mut envs = self.take_idle(|b, _| b.function.name == name);
        envs.extend(self.take_pooled(|k, _| k.name == name, |k| k.name == name));
        self.destroy_all(envs).await
    }

    /// UpdateFunctionCode: environments of other versions drain and go; a
    /// pool moves to the new version (and refills with it).
    pub async fn set_current_version(&self, key: &FunctionKey) -> usize {
        let carried = {
            let mut st = self.lock();
            st.functions
                .entry(key.name.clone())
                .or_default()
                .current_version = Some(key.version.clone());
            st.pools
                .iter()
                .find(|(k, _)| k.name == key.name && k.version != key.version)
                .map(|(_, p)| (p.target, p.cap))
        };
        let stale = |k: &FunctionKey| k.name == key.name && k.version != key.version;
        let mut envs =
            self.take_idle(|b, _| b.function.name == key.name && b.function.version != key.version);
        envs.extend(self.take_pooled(|k, _| stale(k), stale));
        let n = self.destroy_all(envs).await;
        if let Some((target, cap)) = carried {
            self.set_pool_with_cap(key, target, cap);
        }
        n
    }

    /// Destroys every idle and pooled environment (daemon shutdown).
    pub async fn shutdown(&self) -> usize {
        let mut envs = self.take_idle(|_, _| true);
        envs.extend(self.take_pooled(|_, _| true, |_| true));
        self.destroy_all(envs).await
    }

    /// CreateFunction: `function` is the current version of a live function
    /// (a function deleted earlier under the same name comes back).
    pub fn activate(&self, function: &FunctionKey) {
        let mut st = self.lock();
        let f = st.functions.entry(function.name.clone()).or_default();
        f.deleted = false;
        f.current_version = Some(function.version.clone());
    }

    /// Keeps `size` environments of `function` booted ahead of time and
    /// bound to no tenant (0 removes the pool and destroys what it holds).
    /// Pool boots wait for a boot slot behind invokes' cold starts, and
    /// never take the function past its environment cap under `limits`.
    pub async fn set_pool(&self, function: &FunctionKey, size: usize, limits: &Limits) -> usize {
        let surplus = {
            let mut st = self.lock();
            let st = &mut *st;
            let generation = st.next_ticket;
            st.next_ticket += 1;
            let pool = st.pools.entry(function.clone()).or_insert(Pool {
                generation,
                target: 0,
                cap: limits.env_cap(),
                ready: Vec::new(),
                filling: 0,
            });
            pool.target = size;
            pool.cap = limits.env_cap();
            let extra = pool.ready.len().saturating_sub(size);
            let envs: Vec<B::Env> = pool.ready.drain(..extra).map(|i| i.env).collect();
            if let Some(f) = st.functions.get_mut(&function.name) {
                f.environments = f.environments.saturating_sub(envs.len() as u32);
            }
            if size == 0 && pool.filling == 0 {
                st.pools.remove(function);
            }
            envs
        };
        let n = self.destroy_all(surplus).await;
        self.refill(function);
        n
    }

    fn set_pool_with_cap(&self, function: &FunctionKey, size: usize, cap: u32) {
        let mut st = self.lock();
        let generation = st.next_ticket;
        st.next_ticket += 1;
        st.pools.insert(
            function.clone(),
            Pool {
                generation,
                target: size,
                cap,
                ready: Vec::new(),
                filling: 0,
            },
        );
        drop(st);
        self.refill(function);
    }

    /// Starts the boots a pool is short of (within the environment cap).
    fn refill(&self, key: &FunctionKey) {
        let n = {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(pool) = st.pools.get_mut(key) else {
                return;
            };
            let f = st.functions.entry(key.name.clone()).or_default();
            if !f.wants_pool_boots(&key.version) {
                return;
            }
            let short = pool.target.saturating_sub(pool.ready.len() + pool.filling);
            let room = pool.cap.saturating_sub(f.environments) as usize;
            let n = short.min(room);
            pool.filling += n;
            f.environments += n as u32;
            (n, pool.generation)
        };
        let (n, generation) = n;
        for _ in 0..n {
            let this = self.clone();
            let key = key.clone();
            tokio::spawn(async move { this.fill_one(key, generation).await });
        }
    }

    /// Boots one environment into `key`'s pool, behind waiting invokes.
    async fn fill_one(&self, key: FunctionKey, generation: u64) {
        let binding = Binding {
            function: key.clone(),
            tenant: None,
        };
        let rx = {
            let mut st = self.lock();
            let st = &mut *st;
            // The pool shrank, went away or lost its function version since
            // this boot was planned: give its reservation back, boot nothing.
            let f = st.functions.entry(key.name.clone()).or_default();
            let current = f.wants_pool_boots(&key.version);
            let pool = st
                .pools
                .get_mut(&key)
                .filter(|p| p.generation == generation);
            let wanted = current
                && pool
                    .as_ref()
                    .is_some_and(|p| p.ready.len() + p.filling <= p.target);
            if !wanted {
                f.environments = f.environments.saturating_sub(1);
                if let Some(pool) = pool {
                    pool.filling -= 1;
                }
                forget_if_empty(&mut st.pools, &key);
                return;
            }
            if st.booting < self.admission.max_booting && st.queue.is_empty() {
                st.booting += 1;
                st.peak_booting = st.peak_booting.max(st.booting);
                None
            } else {
                Some(st.enqueue(&binding, true).1)
            }
        };
        let granted = match rx {
            None => true,
            Some(rx) => matches!(rx.await, Ok(Grant::Boot)),
        };
        let mut failed = false;
        let (created, took) = if granted {
            let started = Instant::now();
            tracing::info!(function = %key.name, "booting a pooled environment (no tenant)");
            let r = self.backend.create_pooled(&key).await;
            let took = r.as_ref().ok().map(|_| started.elapsed());
            if let Err(e) = &r {
                // Counted by `boot_done`; not retried at once (see below).
                tracing::warn!(function = %key.name, error = %e, "a pooled environment failed to boot or init");
                failed = true;
            }
            (r.ok(), Some(took))
        } else {
            (None, None)
        };
        let leftover = {
            let mut st = self.lock();
            let st = &mut *st;
            let id = st.next_id;
            st.next_id += 1;
            let f = st.functions.entry(key.name.clone()).or_default();
            let current = f.wants_pool_boots(&key.version);
            let pool = st
                .pools
                .get_mut(&key)
                .filter(|p| p.generation == generation);
            match (created, pool) {
                (Some(env), Some(pool)) if current && pool.ready.len() < pool.target => {
                    pool.filling -= 1;
                    st.counters.pool_boots += 1;
                    let idle = Idle {
                        env,
                        id,
                        last_used: Instant::now(),
                    };
                    // An invoke of this function waiting for a boot slot
                    // takes it at once, and gives back its reservation.
                    match hand_to_waiter(&mut st.queue, |b| b.function == key, idle) {
                        None => {
                            f.environments = f.environments.saturating_sub(1);
                            st.counters.pool_takes += 1;
                        }
                        Some(idle) => pool.ready.push(idle),
                    }
                    None
                }
                (env, pool) => {
                    if let Some(pool) = pool {
                        pool.filling -= 1;
                    }
                    f.environments = f.environments.saturating_sub(1);
                    forget_if_empty(&mut st.pools, &key);
                    env
                }
            }
        };
        // The slot is freed only now, after a waiting invoke had its chance
        // to take the new environment instead of a boot of its own.
        if let Some(took) = took {
            self.boot_done(took);
        }
        match leftover {
            Some(env) => self.destroy_later(env),
            // A failed boot is not retried at once (a function whose runtime
            // cannot start would boot VMs in a loop): the pool refills on
            // the function's next cold start.
            None if failed => {}
            // Taken at once, or ready: top the pool up again if it is short.
            None => self.refill(&key),
        }
    }

    /// A snapshot for metrics.
    pub fn stats(&self) -> Stats {
        let st = self.lock();
        Stats {
            idle: st.idle.iter().map(|(b, v)| (b.clone(), v.len())).collect(),
            environments: st
                .functions
                .iter()
                .map(|(n, f)| (n.clone(), f.environments))
                .collect(),
            in_flight: st
                .functions
                .iter()
                .map(|(n, f)| (n.clone(), f.in_flight))
                .collect(),
            tenant_in_flight: st
                .functions
                .iter()
                .flat_map(|(n, f)| {
                    f.tenant_in_flight
                        .iter()
                        .map(move |(t, c)| ((n.clone(), t.clone()), *c))
                })
                .collect(),
            counters: st.counters.clone(),
            booting: st.booting,
            peak_booting: st.peak_booting,
            queued: st.queue.iter().filter(|w| !w.pool).count(),
            admission: self.admission,
            boot_estimate: st.boot_estimate.mean(),
            pools: st
                .pools
                .iter()
                .map(|(k, p)| (k.name.clone(), (p.target, p.ready.len(), p.filling)))
                .collect(),
        }
    }
}

impl<E> State<E> {
    /// Puts a waiter for a boot slot at the end of the queue.
    fn enqueue(&mut self, binding: &Binding, pool: bool) -> (u64, oneshot::Receiver<Grant<E>>) {
        let (tx, rx) = oneshot::channel();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back(Waiter {
            ticket,
            binding: binding.clone(),
            tx,
            pool,
        });
        (ticket, rx)
    }
}

/// Hands `idle` to the first waiting invoke (not a pool refill) whose
/// binding `wanted` accepts, in arrival order; gives it back when no waiter
/// takes it (waiters whose caller has gone are dropped on the way).
fn hand_to_waiter<E>(
    queue: &mut VecDeque<Waiter<E>>,
    wanted: impl Fn(&Binding) -> bool,
    mut idle: Idle<E>,
) -> Option<Idle<E>> {
    while let Some(pos) = queue.iter().position(|w| !w.pool && wanted(&w.binding)) {
        let w = queue.remove(pos).expect("position is in range");
        match w.tx.send(Grant::Warm(idle)) {
            Ok(()) => return None,
            Err(Grant::Warm(back)) => idle = back,
            Err(Grant::Boot) => unreachable!("sent a warm grant"),
        }
    }
    Some(idle)
}

impl Counters {
    fn throttle(&mut self, reason: ThrottleReason) {
        self.throttles += 1;
        *self.throttles_by_reason.entry(reason).or_default() += 1;
    }
}
