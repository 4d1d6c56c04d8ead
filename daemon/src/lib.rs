//! `silo-daemon`: the host daemon behind `silo serve`.
//!
//! - [`api`]: the Lambda-compatible HTTP API (axum routes, SigV4
//!   authentication, Lambda errors);
//! - [`Daemon`] (in `state`): functions, the tenant scheduler, the queue of
//!   asynchronous invocations and the idle reaper; [`config`], [`store`]
//!   (the data directory), [`metrics`] (Prometheus text) and
//!   [`environment_id`] (the opaque environment ids callers see);
//! - [`vm_env`] and [`vm_backend`]: one microVM per execution environment,
//!   each a `silo-vmm` process, as the scheduler's backend;
//! - [`serve`]: the listener and the serving loop;
//! - [`gateway`]: the HTTP front door (routes to functions, JWT
//!   authorizers, per-tenant rate limits) on its own listener.
//! - [`logs`]: function logs per tenant (store, formats, queries, usage);
//! - [`serve`]: the listener and the serving loop.
//!
//! The guest kernel and agent come from the caller ([`Images`]); this crate
//! neither builds them nor knows about the KVM test host.

pub mod api;
pub mod cluster;
pub mod config;
pub mod console;
pub mod creds;
pub mod environment_id;
pub mod event_store;
pub mod event_worker;
mod events;
pub mod gateway;
pub mod jail;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod recovery;
pub mod runtime_copies;
pub mod serve;
mod state;
pub mod store;
#[cfg(test)]
mod test_logs;
pub mod vm_backend;
pub mod vm_env;
pub mod vm_memory;
pub mod vm_reclaim;

pub use events::QueueFull;
pub use state::{Daemon, FunctionError, Images, InvokeOutcome, StartError};
