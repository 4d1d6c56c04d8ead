//! Runs a shell script that needs real KVM: directly when this host has
//! hardware KVM, otherwise inside the KVM test host (QEMU TCG, nested SVM).
//! Either way the script runs in a work directory holding the given files,
//! with the `silo` binary under test on its PATH.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use silo_images::testhost::{hardware_kvm_usable, TestHost};

/// A file for the script's work directory.
pub enum WorkFile {
    /// Copied from the host.
    Host(PathBuf),
    /// Written from memory.
    Bytes(Vec<u8>),
}

/// What the script printed and how it exited.
pub struct ScriptRun {
    /// stdout and stderr of the script.
    pub output: String,
    /// Its exit code.
    pub exit_code: i32,
    /// Where it ran.
    pub in_test_host: bool,
}

/// Runs `script` with `files` in its working directory and `silo` on PATH.
pub fn run_with_kvm(files: Vec<(&str, WorkFile)>, script: &str, timeout: Duration) -> ScriptRun {
    run_with_kvm_beating(files, script, timeout, None)
}

/// [`run_with_kvm`] for a script that prints a line at least every
/// `heartbeat` (`silo_heartbeat`): in the test host, silence for four of
/// them ends the run as an emulator stall (run once more from scratch).
pub fn run_with_kvm_beating(
    files: Vec<(&str, WorkFile)>,
    script: &str,
    timeout: Duration,
    heartbeat: Option<Duration>,
) -> ScriptRun {
    let silo = PathBuf::from(env!("CARGO_BIN_EXE_silo"));
    if hardware_kvm_usable() {
        let dir = std::env::temp_dir().join(format!(
            "silo-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, f) in &files {
            let dst = dir.join(name);
            match f {
                WorkFile::Host(p) => std::fs::copy(p, &dst).map(|_| ()),
                WorkFile::Bytes(b) => std::fs::write(&dst, b),
            }
            .unwrap();
        }
        let path = format!(
            "{}:{}",
            silo.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new("timeout")
            .arg(timeout.as_secs().to_string())
            .args(["sh", "-c", script])
            .current_dir(&dir)
            .env("PATH", path)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut output = String::from_utf8_lossy(&out.stdout).to_string();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        eprintln!("{output}");
        return ScriptRun {
            output,
            exit_code: out.status.code().unwrap_or(-1),
            in_test_host: false,
        };
    }
    eprintln!("no hardware KVM here: running in the KVM test host");
    let mut host = TestHost::new()
        .timeout(timeout)
        .silo_binaries(&silo)
        .expect("include silo");
    if let Some(every) = heartbeat {
        host = host.heartbeat(every);
    }
    for (name, f) in files {
        let guest = format!("/work/{name}");
        host = match f {
            WorkFile::Host(p) => host.file(p, &guest, 0o755),
            WorkFile::Bytes(b) => host.bytes(&guest, b, 0o755),
        };
    }
    let out = host.run(script).expect("test host run");
    ScriptRun {
        output: out.output,
        exit_code: out.exit_code,
        in_test_host: true,
    }
}

/// The part of a script's `output` between the marker lines `begin` and
/// `end` (which the script echoes around it), each line without the test
/// host's `[testhost] ` prefix; panics, showing the output, if `begin` is
/// missing.
pub fn section(output: &str, begin: &str, end: &str) -> String {
    output
        .split(begin)
        .nth(1)
        .and_then(|s| s.split(end).next())
        .unwrap_or_else(|| panic!("no {begin} in the output:\n{output}"))
        .lines()
        .map(|l| l.trim_start_matches("[testhost] "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the first Prometheus sample in `text` whose line starts
/// with `line_prefix` (the metric name, its labels if any), ignoring a test
/// host's `[testhost] ` line prefix.
pub fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .map(|l| l.trim_start_matches("[testhost] "))
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}
pub mod cli;
pub mod daemon;
pub mod jwt;
