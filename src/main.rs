//! `silo`: the host daemon and CLI.
//!
//! `silo serve` runs the daemon, `silo demo` shows the mission. The daemon
//! spawns one `silo-vmm` process (a separate, much smaller program built
//! from `vmm/`) per microVM.

use clap::{Parser, Subcommand};
use silo::{cmd_client, cmd_demo, cmd_run, cmd_serve};
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
    /// Invoke a function on a running daemon.
    Invoke(cmd_client::InvokeArgs),
    /// Measure cold boots against a peer VMM and warm invokes against host mode.
    Bench(boot::BenchArgs),
    /// Measure the daemon through its HTTP API: cold and warm invokes, creations/s.
    BenchApi(api::BenchApiArgs),
    /// Boot one function VM and send it invocations (JSON lines out).
    Run(cmd_run::RunArgs),
}

fn main() -> std::process::ExitCode {
    silo_vmm::timeline::mark_process_start();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => cmd_serve::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::CreateFunction(args) => cmd_client::create(args),
        Command::Invoke(args) => cmd_client::invoke(args),
        Command::Bench(args) => boot::run(args),
        Command::BenchApi(args) => api::run(args),
        Command::Run(args) => cmd_run::run(args),
    }
}
