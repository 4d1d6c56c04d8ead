//! `silo vmm`: boot one microVM from flags.

/// Flags for `silo vmm`.
#[derive(clap::Args)]
pub struct VmmArgs {}

/// Runs one VM to completion and maps its end to a process exit code.
pub fn run(_args: VmmArgs) -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
