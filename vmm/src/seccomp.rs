//! Per-thread seccomp filters: once the guest runs, each VMM thread may make
//! only the system calls its job needs; any other call kills the process.
//!
//! - vCPU threads: `KVM_RUN` and the exits they handle (port I/O and MMIO to
//!   the serial port, i8042 and virtio-mmio registers, irqfd writes);
//! - the `devices` thread: epoll, eventfds and the vsock device's Unix
//!   sockets (it connects to `<uds>_<port>` when the guest asks);
//! - the main thread: waits for the VM's end, kicks and joins the vCPUs,
//!   writes the log and exits.
//!
//! Filters are installed by each thread on itself (vCPU and devices threads
//! first thing, the main thread once the others run), so no filter allows
//! `clone`, `execve` or opening files. `SILO_SECCOMP=off` disables them for
//! debugging (logged as a warning).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// The device event loop.
    Devices,
    /// The VMM's main thread after start-up.
    Main,
}

/// Calls every thread makes: memory allocation, locks, signals, time, exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_fcntl,
];

const VCPU: &[libc::c_long] = &[libc::SYS_ioctl, libc::SYS_lseek, libc::SYS_fsync];

const DEVICES: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_readv,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_accept4,
    libc::SYS_ioctl,
    libc::SYS_getsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

const MAIN: &[libc::c_long] = &[
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_ioctl,
    libc::SYS_fsync,
];

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter for the {kind:?} thread: {reason}")]
pub struct SeccompError {
    kind: ThreadKind,
    reason: String,
}

/// The compiled filter for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let err = |reason: String| SeccompError { kind, reason };
    let extra = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Devices => DEVICES,
        ThreadKind::Main => MAIN,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|&n| (n, Vec::new()))
        .collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| err(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| err(e.to_string()))
}

/// Whether filters are wanted (`SILO_SECCOMP=off` turns them off).
pub fn enabled() -> bool {
    std::env::var("SILO_SECCOMP").map_or(true, |v| v != "off")
}

/// Installs the filter for `kind` on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    if !enabled() {
        return Ok(());
    }
    let prog = filter(kind)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError {
        kind,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_and_none_allows_spawning_or_opening() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Devices, ThreadKind::Main] {
            assert!(!filter(kind).unwrap().is_empty());
            let allowed: Vec<_> = COMMON
                .iter()
                .chain(match kind {
                    ThreadKind::Vcpu => VCPU,
                    ThreadKind::Devices => DEVICES,
                    ThreadKind::Main => MAIN,
                })
                .collect();
            for forbidden in [
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_execve,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_ptrace,
            ] {
                assert!(
                    !allowed.contains(&&forbidden),
                    "{kind:?} allows {forbidden}"
                );
            }
        }
    }

    /// A forked child installs the vCPU filter and makes a forbidden call:
    /// the kernel kills it with SIGSYS.
    #[test]
    fn a_forbidden_call_kills_the_process() {
        let prog = filter(ThreadKind::Vcpu).unwrap();
        // SAFETY: the child only installs the prebuilt filter (no
        // allocation) and makes raw syscalls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&prog).is_ok() {
                // SAFETY: a raw syscall in the forked child.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(3) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x}"
        );
    }

    /// `_IO(KVMIO, 0x01)`: creates a VM; never made after start.
    const KVM_CREATE_VM: libc::c_ulong = 0xae01;
    /// `_IO(KVMIO, 0x80)`.
    const KVM_RUN_NR: libc::c_ulong = 0xae80;

    const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Devices, ThreadKind::Main];

    /// The filter for `kind` as the VMM would build it for this (test)
    /// process.
    fn prog(kind: ThreadKind) -> BpfProgram {
        filter(kind).unwrap()
    }

    /// Forks a child that installs `prog`, runs `body` and `_exit`s with its
    /// result; returns the child's wait status. `body` runs after `fork` in
    /// a multi-threaded process: raw system calls only, no allocation.
    fn in_child(prog: &BpfProgram, body: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only installs the prebuilt filter (no
        // allocation), runs `body` (raw system calls) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = if seccompiler::apply_filter(prog).is_ok() {
                body()
            } else {
                100
            };
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        status
    }

    /// Asserts the child was killed by SIGSYS (its forbidden call).
    #[track_caller]
    fn assert_killed(status: i32, what: &str) {
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "{what}: expected death by SIGSYS, got {}",
            describe(status)
        );
    }

    fn describe(status: i32) -> String {
        if libc::WIFEXITED(status) {
            format!("exit code {} (an allowed call failed if not 0)", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("signal {}", libc::WTERMSIG(status))
        } else {
            format!("status {status:#x}")
        }
    }

    /// `ioctl` on fd -1: the filter decides before the kernel looks at the
    /// fd, so an allowed request fails with EBADF and a forbidden one kills.
    fn ioctl_ebadf(request: libc::c_ulong) -> bool {
        // SAFETY: a raw ioctl on an invalid fd; no memory is passed.
        let r = unsafe { libc::syscall(libc::SYS_ioctl, -1, request, 0) };
        // SAFETY: reading errno right after the call.
        r == -1 && unsafe { *libc::__errno_location() } == libc::EBADF
    }

    #[test]
    fn ioctl_requests_outside_a_threads_list_kill() {
        // (filter, requests that must pass, request that must kill)
        let cases: [(ThreadKind, &[libc::c_ulong], libc::c_ulong); 5] = [
            (ThreadKind::Vcpu, &[KVM_RUN_NR], KVM_CREATE_VM),
            (ThreadKind::Vcpu, &[KVM_RUN_NR], libc::TIOCSTI),
            (ThreadKind::Devices, &[libc::FIONBIO], libc::TIOCSTI),
            (ThreadKind::Devices, &[libc::FIONBIO], KVM_RUN_NR),
            (ThreadKind::Main, &[], libc::TIOCSTI),
        ];
        for (kind, allowed, forbidden) in cases {
            let status = in_child(&prog(kind), || {
                if !allowed.iter().all(|&r| ioctl_ebadf(r)) {
                    return 1;
                }
                ioctl_ebadf(forbidden);
                0
            });
            assert_killed(status, &format!("{kind:?} ioctl {forbidden:#x}"));
        }
    }

    #[test]
    fn only_the_devices_thread_opens_sockets_and_only_unix_ones() {
        let socket = |domain: libc::c_int, ty: libc::c_int| {
            // SAFETY: a raw socket call; the fd is closed again.
            let fd = unsafe { libc::syscall(libc::SYS_socket, domain, ty, 0) };
            if fd >= 0 {
                // SAFETY: closing the fd just opened.
                unsafe { libc::close(fd as libc::c_int) };
            }
            fd >= 0
        };
        for (domain, name) in [(libc::AF_INET, "AF_INET"), (libc::AF_INET6, "AF_INET6")] {
            let status = in_child(&prog(ThreadKind::Devices), || {
                for ty in [
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                ] {
                    if !socket(libc::AF_UNIX, ty) {
                        return 1;
                    }
                }
                socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC);
                0
            });
            assert_killed(status, &format!("Devices socket({name})"));
        }
        for kind in [ThreadKind::Vcpu, ThreadKind::Main] {
            let status = in_child(&prog(kind), || {
                socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC);
                0
            });
            assert_killed(status, &format!("{kind:?} socket(AF_UNIX)"));
        }
    }

    /// Maps one anonymous page with `prot`; true if it worked.
    fn mmap_page(prot: libc::c_int) -> bool {
        // SAFETY: a fresh anonymous private mapping, unmapped again.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            p != libc::MAP_FAILED && libc::munmap(p, 4096) == 0
        }
    }

    #[test]
    fn no_thread_maps_executable_memory() {
        for kind in ALL {
            let status = in_child(&prog(kind), || {
                if !mmap_page(libc::PROT_READ | libc::PROT_WRITE) || !mmap_page(libc::PROT_NONE) {
                    return 1;
                }
                mmap_page(libc::PROT_READ | libc::PROT_EXEC);
                0
            });
            assert_killed(status, &format!("{kind:?} mmap(PROT_EXEC)"));
        }
    }

    #[test]
    fn no_thread_makes_memory_executable() {
        for kind in ALL {
            let status = in_child(&prog(kind), || {
                // SAFETY: a fresh anonymous mapping whose protection changes;
                // nothing else uses it.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if p == libc::MAP_FAILED
                        || libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_WRITE) != 0
                    {
                        return 1;
                    }
                    libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC);
                }
                0
            });
            assert_killed(status, &format!("{kind:?} mprotect(PROT_EXEC)"));
        }
    }

    #[test]
    fn signals_go_only_to_this_process() {
        // The filters are built for this (parent) process: its pid is the
        // only one the child may signal; pid 1 stands for any other process.
        let own = std::process::id() as libc::c_long;
        let main = prog(ThreadKind::Main);
        // SAFETY (all closures below): raw signal calls with signal 0, which
        // only checks that the target exists and may be signalled.
        let status = in_child(&main, || unsafe {
            if libc::syscall(libc::SYS_tgkill, own, own, 0) != 0 {
                return 1;
            }
            libc::syscall(libc::SYS_tgkill, 1, 1, 0);
            0
        });
        assert_killed(status, "Main tgkill(other process)");
        let status = in_child(&main, || unsafe {
            libc::syscall(libc::SYS_tkill, 1, 0);
            0
        });
        assert_killed(status, "Main tkill");
        for kind in ALL {
            let status = in_child(&prog(kind), || unsafe {
                libc::syscall(libc::SYS_kill, 1, 0);
                0
            });
            assert_killed(status, &format!("{kind:?} kill"));
        }
        for kind in [ThreadKind::Vcpu, ThreadKind::Devices] {
            let status = in_child(&prog(kind), || unsafe {
                libc::syscall(libc::SYS_tgkill, own, own, 0);
                0
            });
            assert_killed(status, &format!("{kind:?} tgkill"));
        }
    }
}
