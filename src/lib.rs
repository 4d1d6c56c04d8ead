//! `silo`: the host daemon and CLI, as a library so the binary and the
//! end-to-end tests share one implementation.
//!
//! - [`daemon`] and [`api`]: `silo serve`, the Lambda-compatible HTTP API
//!   over the tenant scheduler and microVMs;
//! - [`vm_env`] and [`vm_backend`]: one microVM per execution environment;
//! - the signed client of the API is the `silo-client` crate;
//! - `cmd_*`: the subcommands.

pub mod api;
pub mod cmd_bench;
pub mod cmd_bench_api;
pub mod cmd_client;
pub mod cmd_demo;
pub mod cmd_run;
pub mod cmd_serve;
pub mod daemon;
pub mod vm_backend;
pub mod vm_env;
