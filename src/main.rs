//! `silo`: the host daemon and CLI.
//!
//! One binary: `silo serve` runs the daemon, `silo demo` shows the mission,
//! `silo vmm` boots one microVM (the daemon spawns one such process per VM).

mod cmd_bench;
mod cmd_demo;
mod cmd_run;
mod cmd_vmm;
mod vm_backend;
mod vm_env;

use clap::{Parser, Subcommand};

/// Tenant-isolated functions on microVMs.
#[derive(Parser)]
#[command(name = "silo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one microVM (one process per VM; normally spawned by the daemon).
    Vmm(cmd_vmm::VmmArgs),
    /// Measure cold boots against a peer VMM and warm invokes against host mode.
    Bench(cmd_bench::BenchArgs),
    /// Show the mission: one function, two tenants, isolated microVMs.
    Demo(cmd_demo::DemoArgs),
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
        Command::Vmm(args) => cmd_vmm::run(args),
        Command::Run(args) => cmd_run::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Bench(args) => cmd_bench::run(args),
    }
}
