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
//! Environments are reached through the [`Backend`] and [`Environment`]
//! traits: VMs in the daemon, an in-memory backend in tests.

pub mod memory_backend;
mod tenant;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use tenant::{InvalidTenantId, TenantId};

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: 100,
            per_tenant: 10,
            env_cap_factor: 2.5,
            idle_timeout: Duration::from_secs(300),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// The function's concurrency is used up.
    FunctionConcurrency,
    /// This tenant's in-flight ceiling is reached.
    TenantConcurrency,
    /// The environment cap is reached and none is idle.
    EnvironmentCap,
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
    /// Time spent creating the environment.
    pub init_duration: Option<Duration>,
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
}

struct State<E> {
    functions: HashMap<String, FunctionState>,
    idle: HashMap<Binding, Vec<Idle<E>>>,
    next_id: u64,
    counters: Counters,
}

/// The scheduler; clone it freely (shared state inside).
pub struct Scheduler<B: Backend> {
    backend: Arc<B>,
    state: Arc<Mutex<State<B::Env>>>,
}

impl<B: Backend> Clone for Scheduler<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            state: self.state.clone(),
        }
    }
}

enum Slot<E> {
    Warm(Idle<E>),
    Cold { id: u64, evicted: Option<E> },
}

impl<B> Scheduler<B>
where
    B: Backend,
    B::Env: Environment<Request = B::Request, Response = B::Response>,
{
    /// A scheduler creating environments with `backend`.
    pub fn new(backend: B) -> Self {
        Self {
            backend: Arc::new(backend),
            state: Arc::new(Mutex::new(State {
                functions: HashMap::new(),
                idle: HashMap::new(),
                next_id: 1,
                counters: Counters::default(),
            })),
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
        let slot = self.acquire(&binding, &limits)?;
        let (mut env, id, cold, init) = match slot {
            Slot::Warm(idle) => (idle.env, idle.id, false, None),
            Slot::Cold { id, evicted } => {
                if let Some(old) = evicted {
                    self.destroy_later(old);
                }
                let started = Instant::now();
                tracing::info!(function = %binding.function.name, tenant_id = %tenant.as_deref().unwrap_or("-"), env_id = id, "creating environment (cold start)");
                match self.backend.create(&binding).await {
                    Ok(env) => (env, id, true, Some(started.elapsed())),
                    Err(e) => {
                        tracing::warn!(function = %binding.function.name, tenant_id = %tenant.as_deref().unwrap_or("-"), env_id = id, error = %e, "environment creation failed");
                        self.release(&binding, None, true);
                        return Err(ScheduleError::Create(e));
                    }
                }
            }
        };
        let result = env.invoke(req).await;
        match result {
            Ok(response) => {
                self.release(&binding, Some((env, id)), false);
                Ok(InvokeReport {
                    response,
                    cold_start: cold,
                    env_id: id,
                    init_duration: init,
                })
            }
            Err(e) => {
                tracing::warn!(function = %binding.function.name, tenant_id = %tenant.as_deref().unwrap_or("-"), env_id = id, error = %e, "environment failed; destroying it");
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
            st.counters.throttles += 1;
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
                    tracing::info!(function = %b.function.name, tenant_id = %b.tenant.as_ref().map(TenantId::as_str).unwrap_or("-"), env_id = e.id, "evicting least recently used idle environment");
                    evicted = Some(e.env);
                    f.environments -= 1;
                    st.counters.evictions += 1;
                }
                None => {
                    st.counters.throttles += 1;
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
        st.counters.cold_starts += 1;
        Ok(Slot::Cold { id, evicted })
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
                    st.idle.entry(binding.clone()).or_default().push(Idle {
                        env,
                        id,
                        last_used: Instant::now(),
                    })
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

    /// Destroys environments idle for longer than `idle_timeout`.
    pub async fn reap_idle(&self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        let envs = self.take_idle(|_, e| now.duration_since(e.last_used) >= idle_timeout);
        let n = self.destroy_all(envs).await;
        self.lock().counters.reaped += n as u64;
        n
    }

    /// DeleteFunction: idle environments go now, busy ones when they finish.
    pub async fn retire_function(&self, name: &str) -> usize {
        self.lock()
            .functions
            .entry(name.to_string())
            .or_default()
            .deleted = true;
        let envs = self.take_idle(|b, _| b.function.name == name);
        self.destroy_all(envs).await
    }

    /// UpdateFunctionCode: environments of other versions drain and go.
    pub async fn set_current_version(&self, key: &FunctionKey) -> usize {
        self.lock()
            .functions
            .entry(key.name.clone())
            .or_default()
            .current_version = Some(key.version.clone());
        let envs =
            self.take_idle(|b, _| b.function.name == key.name && b.function.version != key.version);
        self.destroy_all(envs).await
    }

    /// Destroys every idle environment (daemon shutdown).
    pub async fn shutdown(&self) -> usize {
        let envs = self.take_idle(|_, _| true);
        self.destroy_all(envs).await
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
        }
    }
}
