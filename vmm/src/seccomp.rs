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
}
