//! `silo`: the CLI. The daemon is the `silo-daemon` crate, the signed
//! client of the API the `silo-client` crate.
//!
//! - `cmd_*`: the subcommands; the benchmarks are the `silo-benches` crate.

pub mod cmd_client;
pub mod cmd_demo;
pub mod cmd_run;
pub mod cmd_serve;
