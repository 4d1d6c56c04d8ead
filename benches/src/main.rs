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
    silo_benches::init_tracing();
    cli.command.run()
}
