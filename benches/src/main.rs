//! `silo-bench`: silo's benchmarks without the rest of the CLI, with the
//! same subcommands and flags as `silo bench` and `silo bench-api`.

use clap::Parser;
use silo_benches::BenchCommand;

/// silo's benchmarks.
#[derive(Parser)]
#[command(name = "silo-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    cli.command.run()
}
