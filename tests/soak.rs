//! The soak benchmark (`benches/soak/soak.sh`) where VMs boot: here with
//! hardware KVM, else in the KVM test host. On demand only, never in CI:
//!
//! ```sh
//! SOAK_SECONDS=1800 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! The samples (JSON lines) are written to `benches/results/soak-<unix
//! time>.jsonl` and the summary printed. This is a measurement, not a
//! test: it asserts only that the soak ran.

mod common;

use std::time::Duration;

use common::daemon::script_files;
use common::{run_with_kvm, section, WorkFile};

#[test]
#[ignore = "a benchmark of 30 minutes and more: run on demand"]
fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = script_files(String::new());
    files.push(("soak.sh", WorkFile::Host(root.join("benches/soak/soak.sh"))));
    // The test host (2 GiB by default) holds fewer VMs than a real host.
    let load = if silo_images::testhost::hardware_kvm_usable() {
        ""
    } else {
        "SOAK_TENANTS=8 SOAK_NEW_EVERY=6"
    };
    let script = format!("SOAK_SECONDS={seconds} {load} sh soak.sh");
    let run = run_with_kvm(files, &script, Duration::from_secs(seconds + 900));
    let out = &run.output;
    let samples = section(out, "SOAK_JSONL_BEGIN", "SOAK_JSONL_END");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = root.join(format!("benches/results/soak-{stamp}.jsonl"));
    std::fs::write(&path, samples.trim_start()).unwrap();
    let summary = out
        .lines()
        .find_map(|l| {
            l.trim_start_matches("[testhost] ")
                .strip_prefix("SOAK_SUMMARY ")
        })
        .unwrap_or_else(|| panic!("no summary:\n{out}"));
    println!("soak samples: {}\nsummary: {summary}", path.display());
    assert!(out.contains("SOAK_DAEMON_EXIT 0"), "{out}");
}
