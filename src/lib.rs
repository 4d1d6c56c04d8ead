//! `silo`: the CLI. The daemon is the `silo-daemon` crate, the signed
//! client of the API the `silo-client` crate.
//!
//! - `cmd_*`: the subcommands.

pub mod cmd_bench;
pub mod cmd_bench_api;
pub mod cmd_client;
pub mod cmd_demo;
pub mod cmd_run;
pub mod cmd_serve;
