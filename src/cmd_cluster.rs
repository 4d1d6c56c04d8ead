//! `silo cluster`: helpers for running several nodes as one service.

use std::process::ExitCode;

use silo_daemon::cluster::haproxy::{config, HaproxyOptions};

/// `silo cluster ...`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Print an HAProxy (2.6+) configuration routing each (function,
    /// tenant) to one node: consistent hashing with bounded load, health
    /// checks on /readyz, SigV4 headers passed through.
    HaproxyConfig(HaproxyArgs),
}

#[derive(clap::Args, Debug)]
struct HaproxyArgs {
    /// A node's API address (host:port); repeat for each node.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// Where HAProxy listens.
    #[arg(long, default_value = "0.0.0.0:9000")]
    listen: String,
    /// Bounded load: no node takes more than this percentage of the
    /// average load (HAProxy's hash-balance-factor; 0: unbounded, the
    /// default, since any bound moves tenants at low concurrency).
    #[arg(long, default_value_t = 0)]
    balance_factor: u32,
    /// Health check interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    check_interval_ms: u32,
}

/// Runs `silo cluster`.
pub fn run(args: ClusterArgs) -> ExitCode {
    match args.command {
        ClusterCommand::HaproxyConfig(a) => {
            let o = HaproxyOptions {
                nodes: a.nodes,
                listen: a.listen,
                balance_factor: a.balance_factor,
                check_interval_ms: a.check_interval_ms,
                ..HaproxyOptions::default()
            };
            match config(&o) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("silo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
