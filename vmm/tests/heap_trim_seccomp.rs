//! A thread under the device thread's seccomp filter allocates and frees
//! the way the vsock muxer does under a guest's traffic (buffers grown to
//! hundreds of KiB, then freed). glibc shrinks a thread's heap only after
//! reading `/proc/sys/vm/overcommit_memory` (an `openat`, forbidden), so
//! without `keep_heaps_unshrunk` the process dies of SIGSYS; with it, it
//! lives. Each case runs in a child process (this test binary, re-run).

use std::process::Command;

const CHILD: &str = "SILO_HEAP_TRIM_CHILD";

/// What the device thread does, in miniature: grow many buffers, free them.
fn churn() {
    for _ in 0..4 {
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        for i in 0..64 {
            let mut v = Vec::new();
            for _ in 0..8 {
                v.extend_from_slice(&[i as u8; 8 * 1024]);
            }
            bufs.push(v);
        }
        drop(bufs);
    }
}

fn child(tune: bool) -> ! {
    if tune {
        silo_vmm::keep_heaps_unshrunk();
    }
    let t = std::thread::spawn(|| {
        silo_vmm::seccomp::install(silo_vmm::seccomp::ThreadKind::Devices).expect("device filter");
        churn();
    });
    let ok = t.join().is_ok();
    std::process::exit(if ok { 0 } else { 3 });
}

fn run_case(case: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_device_thread_frees_memory_without_being_killed",
        ])
        .args(["--test-threads=1", "--nocapture"])
        .env(CHILD, case)
        .status()
        .unwrap()
}

#[test]
fn the_device_thread_frees_memory_without_being_killed() {
    match std::env::var(CHILD).as_deref() {
        Ok("tuned") => child(true),
        Ok("untuned") => child(false),
        _ => {}
    }
    use std::os::unix::process::ExitStatusExt;
    let tuned = run_case("tuned");
    assert!(tuned.success(), "with keep_heaps_unshrunk: {tuned:?}");
    if cfg!(target_env = "gnu") {
        // The failure this guards against, shown: the same churn without
        // the tunable is killed by the filter.
        let untuned = run_case("untuned");
        assert_eq!(
            untuned.signal(),
            Some(libc::SIGSYS),
            "without it: {untuned:?}"
        );
    }
}
