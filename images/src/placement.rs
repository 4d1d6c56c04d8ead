//! Where a command that boots microVMs runs: here when hardware KVM is
//! usable (or when told to, `--here`), else again inside the KVM test host,
//! where `/bin/silo` is this very program (with `silo-vmm` beside it) and
//! the command is run with `--here`. Used by `silo demo`, `silo bench` and
//! `silo bench-api`.

use crate::testhost::{hardware_kvm_usable, TestHost, TestHostError, TestHostOutput};

/// Where a command that boots microVMs runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On this machine.
    Here,
    /// Inside the KVM test host.
    TestHost,
}

impl Placement {
    /// Here when `force_here` (`--here`) or when hardware KVM is usable;
    /// else the KVM test host.
    pub fn choose(force_here: bool) -> Self {
        if force_here || hardware_kvm_usable() {
            Placement::Here
        } else {
            Placement::TestHost
        }
    }
}

/// Runs `here` on this machine, or `in_test_host` (which re-runs the
/// command inside the KVM test host, see [`test_host_with_this_program`]),
/// as [`Placement::choose`] decides.
pub fn run_here_or_in_test_host<T, E>(
    force_here: bool,
    here: impl FnOnce() -> Result<T, E>,
    in_test_host: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match Placement::choose(force_here) {
        Placement::Here => here(),
        Placement::TestHost => in_test_host(),
    }
}

/// Errors of a command re-run inside the KVM test host.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    /// This program's own path is unknown.
    #[error("{0}")]
    CurrentExe(std::io::Error),
    /// The test host could not be prepared or run.
    #[error(transparent)]
    TestHost(#[from] TestHostError),
    /// The command ran and failed.
    #[error("the {what} failed in the test host (exit {exit_code})")]
    Failed {
        /// What ran ("demo", "benchmark").
        what: String,
        /// Its exit code.
        exit_code: i32,
    },
}

/// A test host holding this program as `/bin/silo` and the VMM beside it
/// as `/bin/silo-vmm` ([`TestHost::silo_binaries`]), so that a command can
/// run itself again in there with `--here`.
pub fn test_host_with_this_program() -> Result<TestHost, RerunError> {
    let this = std::env::current_exe().map_err(RerunError::CurrentExe)?;
    Ok(TestHost::new().silo_binaries(&this)?)
}

/// Runs `command` in `host`; its output if it exited 0, else
/// [`RerunError::Failed`] naming `what`.
pub fn run_checked(
    host: &TestHost,
    what: &str,
    command: &str,
) -> Result<TestHostOutput, RerunError> {
    let out = host.run(command)?;
    if out.exit_code != 0 {
        return Err(RerunError::Failed {
            what: what.to_string(),
            exit_code: out.exit_code,
        });
    }
    Ok(out)
}

/// The text of a test host's output between the first `begin` marker and
/// the next `end` marker, each line without a `[testhost] ` prefix, trimmed.
pub fn between_markers(output: &str, begin: &str, end: &str) -> Option<String> {
    let inner = output.split(begin).nth(1)?.split(end).next()?;
    let lines: Vec<&str> = inner
        .lines()
        .map(|l| l.trim_start_matches("[testhost] "))
        .collect();
    Some(lines.join("\n").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_delimit_the_results() {
        let out =
            "boot\nBENCH_JSON_BEGIN\n[testhost] {\n[testhost]   \"a\": 1\n}\nBENCH_JSON_END\nbye";
        assert_eq!(
            between_markers(out, "BENCH_JSON_BEGIN", "BENCH_JSON_END").as_deref(),
            Some("{\n  \"a\": 1\n}")
        );
        assert_eq!(between_markers("nothing", "BENCH_JSON_BEGIN", "X"), None);
    }

    #[test]
    fn forced_here_is_here() {
        assert_eq!(Placement::choose(true), Placement::Here);
        let r: Result<u8, ()> = run_here_or_in_test_host(true, || Ok(1), || Ok(2));
        assert_eq!(r, Ok(1));
    }
}
