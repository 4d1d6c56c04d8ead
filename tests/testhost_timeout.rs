//! A test host run that exceeds its timeout ends with a clear error, and
//! leaves no QEMU process and no run directory behind. (Its own test binary,
//! so no other test's QEMU is a child of this process.)

use std::time::Duration;

use silo_images::testhost::{TestHost, TestHostError};

/// Child processes of this process, from every thread's `children` list.
fn children() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task entry").path().join("children");
        let list = std::fs::read_to_string(&path).unwrap_or_default();
        out.extend(list.split_whitespace().map(str::to_string));
    }
    out
}

fn run_dirs_of_this_process() -> Vec<String> {
    let prefix = format!("run-{}-", std::process::id());
    std::fs::read_dir(silo_images::cache_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn timeout_kills_qemu_and_removes_the_run_directory() {
    let res = TestHost::new()
        .timeout(Duration::from_secs(15))
        .run("echo SLEEPING; sleep 600");
    match res {
        Err(TestHostError::Timeout { timeout, tail }) => {
            assert_eq!(timeout, Duration::from_secs(15));
            assert!(
                tail.contains("SLEEPING"),
                "the command had started:\n{tail}"
            );
        }
        Err(e) => panic!("expected a timeout, got: {e}"),
        Ok(out) => panic!("expected a timeout, the run ended:\n{}", out.console),
    }
    assert_eq!(children(), Vec::<String>::new(), "QEMU left running");
    assert_eq!(
        run_dirs_of_this_process(),
        Vec::<String>::new(),
        "run directory left"
    );
}
