//! `silo`: the CLI of the host daemon.
//!
//! `silo serve` runs the daemon (the `silo-daemon` crate), `silo demo` shows
//! the mission, `silo create-function` and `silo invoke` call a running
//! daemon (the `silo-client` crate), `silo bench` and `silo bench-api`
//! measure (the `silo-benches` crate). The daemon spawns one `silo-vmm`
//! process (a separate, much smaller program built from `vmm/`) per microVM.
//! The `cmd_*` modules parse flags and call into those crates.

mod cmd_client;
mod cmd_cluster;
mod cmd_demo;
mod cmd_events;
mod cmd_images;
mod cmd_logs;
mod cmd_run;
mod cmd_serve;

use clap::{Parser, Subcommand};
use silo_benches::{api, boot};

/// Tenant-isolated functions on microVMs.
#[derive(Parser)]
#[command(name = "silo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: the Lambda-compatible HTTP API over tenant-bound microVMs.
    Serve(cmd_serve::ServeArgs),
    /// Show the mission: one function, two tenants, isolated microVMs.
    Demo(cmd_demo::DemoArgs),
    /// Create a function on a running daemon.
    CreateFunction(cmd_client::CreateArgs),
    /// Replace a function's code on a running daemon.
    UpdateFunctionCode(cmd_client::UpdateCodeArgs),
    /// Invoke a function on a running daemon.
    Invoke(cmd_client::InvokeArgs),
    /// Failed Event invocations on a running daemon (list, remove).
    Events(cmd_events::EventsArgs),
    /// A function's log on a running daemon (one tenant's with --tenant).
    Logs(cmd_logs::LogsArgs),
    /// Usage per function and tenant on a running daemon.
    Usage(cmd_logs::UsageArgs),
    /// A burst of new tenants against a running daemon (JSON report).
    Burst(cmd_client::BurstArgs),
    /// Measure cold boots against a peer VMM and warm invokes against host mode.
    Bench(boot::BenchArgs),
    /// Measure the daemon through its HTTP API: cold and warm invokes, creations/s.
    BenchApi(api::BenchApiArgs),
    /// Boot one function VM and send it invocations (JSON lines out).
    Run(cmd_run::RunArgs),
    /// Build the guest kernel, agent, demo function and VMM ahead of time.
    Images(cmd_images::ImagesArgs),
    /// Several nodes as one service (print HAProxy's configuration).
    Cluster(cmd_cluster::ClusterArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve(a) if a.log_format == cmd_serve::LogFormat::Json => {
            silo_benches::init_tracing_json()
        }
        _ => silo_benches::init_tracing(),
    }
    // Commands that boot microVMs need the VMM program: found beside this
    // executable, or built from the source tree before any thread starts.
    if matches!(
        cli.command,
        Command::Serve(_)
            | Command::Demo(_)
            | Command::Bench(_)
            | Command::BenchApi(_)
            | Command::Run(_)
    ) {
        if let Err(e) = cmd_images::ensure_vmm() {
            eprintln!("silo: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    match cli.command {
        Command::Serve(args) => cmd_serve::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::CreateFunction(args) => cmd_client::create(args),
        Command::UpdateFunctionCode(args) => cmd_client::update_code(args),
        Command::Invoke(args) => cmd_client::invoke(args),
        Command::Events(args) => cmd_events::run(args),
        Command::Burst(args) => cmd_client::burst(args),
        Command::Logs(args) => cmd_logs::logs(args),
        Command::Usage(args) => cmd_logs::usage(args),
        Command::Bench(args) => boot::run(args),
        Command::BenchApi(args) => api::run(args),
        Command::Run(args) => cmd_run::run(args),
        Command::Images(args) => cmd_images::run(args),
        Command::Cluster(args) => cmd_cluster::run(args),
    }
}
