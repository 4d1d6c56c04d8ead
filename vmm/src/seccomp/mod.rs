//! Per-thread seccomp filters: once the guest runs, each VMM thread may make
//! only the system calls its job needs, and for the dangerous ones only with
//! the arguments it uses; any other call kills the process (SIGSYS).
//!
//! - vCPU threads: `ioctl(KVM_RUN)` and what their exits need (port I/O and
//!   MMIO to the serial port, i8042 and virtio-mmio registers; irqfd kicks
//!   are `write`s on eventfds). Every other KVM ioctl (creating the VM,
//!   memory slots, vCPUs, CPUID, registers, irqfds, ioeventfds) happens
//!   before the filters, while the VM is built.
//! - the `devices` thread: epoll, eventfds and the vsock device's Unix
//!   sockets: `socket` only as `AF_UNIX` stream sockets (it connects to
//!   `<uds>_<port>` when the guest asks), `ioctl` only `FIONBIO` (std sets
//!   accepted and connected sockets non-blocking with it).
//!   The virtio-net device adds only `timerfd_settime` with flags 0 (a
//!   relative time: arming its rate limiter's timer); its tap reads and
//!   writes are `read`/`write` on an fd opened before the filters, and the
//!   timer's expiry is a `read` (checked under this filter in
//!   `vmm/tests/net_device.rs`). `strace -f` of a jailed VMM in the test
//!   host, a guest pinging and sending TCP through the tap with `--net-pps`
//!   throttling it, showed on the devices thread only `epoll_wait`, `read`,
//!   `write`, `clock_gettime`, `futex`, `fcntl`, `close`, `madvise`,
//!   `munmap`, `rt_sigprocmask`, `sigaltstack`, `exit` and
//!   `timerfd_settime(fd, 0, ...)`; `open` of `/dev/net/tun`, `TUNSETIFF`
//!   and `timerfd_create` came before the filters, in the jail.
//!   The virtio-pmem device adds nothing: a flush is answered without a
//!   system call (the image is mapped read-only), and a guest store to a
//!   pmem region is an MMIO exit the vCPU thread discards (both checked
//!   under these filters in `vmm/tests/pmem_device.rs`).
//!   The virtio-balloon device adds nothing either: a free page report is
//!   `madvise(MADV_DONTNEED)` (already in the common list) on guest RAM,
//!   the used ring and the irqfd `write` (checked under the devices filter
//!   in `vmm/tests/balloon_device.rs`); its counters are stores into a
//!   page of `--balloon-stats-file` mapped before the filters (checked
//!   there too). `strace -f` of a VMM with `--balloon --balloon-stats-file
//!   --balloon-report-order 5` in the test host, its guest freeing 40 MiB
//!   (3 reports, 110 MiB discarded), showed on the devices thread only
//!   `epoll_wait`, `read`, `write`, `madvise(MADV_DONTNEED)`, `futex`,
//!   `close`, `munmap`, `mmap`/`mprotect` without `PROT_EXEC` (malloc),
//!   `rt_sigprocmask`, `sigaltstack`, `exit` and its start-up calls before
//!   the filter; the stats file's open, `ftruncate` and `mmap` came before.
//! - the jailer parent (a jailed VMM's first process, see `crate::jail`):
//!   `wait4` for the VMM and exit; nothing else.
//! - the main thread: waits for the VM's end, kicks the vCPUs out of
//!   `KVM_RUN` (`tgkill` to its own process only), joins them, writes the
//!   log and exits. No `ioctl` at all.
//!
//! On every thread `mmap` and `mprotect` are allowed only without
//! `PROT_EXEC`; `kill`, `tkill`, `socket` outside the devices thread, and
//! `clone`, `execve` or opening files anywhere are not allowed.
//!
//! Filters are installed by each thread on itself before the guest runs its
//! first instruction: the devices thread first thing (its start waits for
//! that), each vCPU thread first thing, and the main thread right after
//! spawning them; the vCPU threads wait for the main thread's filter before
//! their first `KVM_RUN` (see `VmBuilder::start`).
//!
//! `SILO_SECCOMP=off` disables the filters for debugging (logged as a
//! warning), but only in a VMM started by hand: the daemon starts every VMM
//! with `--managed`, and a managed VMM ignores the variable (see
//! [`refuse_off_switch`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// The device event loop.
    Devices,
    /// The VMM's main thread after start-up.
    Main,
    /// The jailer parent (see `crate::jail`): it only waits for the VMM.
    Jailer,
}

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = ((kvm_bindings::KVMIO as u64) << 8) | 0x80;
const _: () = assert!(KVM_RUN == 0xae80);

/// Calls every thread makes with any arguments: memory, locks, signal
/// masks, time, reads and writes on its fds, exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
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

const VCPU: &[libc::c_long] = &[libc::SYS_lseek, libc::SYS_fsync];

const DEVICES: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_readv,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

const MAIN: &[libc::c_long] = &[
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_fsync,
];

/// The jailer parent waits for the VMM and exits with its status.
const JAILER: &[libc::c_long] = &[libc::SYS_wait4];

/// The `ioctl` requests each thread may make (none: no `ioctl`).
fn ioctls(kind: ThreadKind) -> &'static [u64] {
    match kind {
        ThreadKind::Vcpu => &[KVM_RUN],
        ThreadKind::Devices => &[libc::FIONBIO],
        ThreadKind::Main | ThreadKind::Jailer => &[],
    }
}

/// The `socket` types the devices thread may create, always `AF_UNIX`
/// (std's `UnixStream::connect` uses `SOCK_STREAM | SOCK_CLOEXEC`).
const UNIX_SOCKET_TYPES: [libc::c_int; 2] = [
    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
    libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
];

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter for the {kind:?} thread: {reason}")]
pub struct SeccompError {
    kind: ThreadKind,
    reason: String,
}

/// `arg` (a 32-bit argument) equals `value`.
fn arg_eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// The rules of `kind`'s filter: syscall number to the rules one of which
/// must match (an empty list allows any arguments).
fn rules(
    kind: ThreadKind,
    pid: libc::pid_t,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let extra = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Devices => DEVICES,
        ThreadKind::Main => MAIN,
        ThreadKind::Jailer => JAILER,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|&n| (n, Vec::new()))
        .collect();
    // mmap(addr, len, prot, ...) and mprotect(addr, len, prot): never
    // PROT_EXEC.
    let no_exec = || {
        SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])
    };
    rules.insert(libc::SYS_mmap, vec![no_exec()?]);
    rules.insert(libc::SYS_mprotect, vec![no_exec()?]);
    // ioctl(fd, request, ...): the kernel reads the request as 32 bits.
    let requests = ioctls(kind)
        .iter()
        .map(|&r| SeccompRule::new(vec![arg_eq(1, r)?]))
        .collect::<Result<Vec<_>, _>>()?;
    if !requests.is_empty() {
        rules.insert(libc::SYS_ioctl, requests);
    }
    match kind {
        ThreadKind::Devices => {
            // timerfd_settime(fd, flags, new, old): relative times only.
            rules.insert(
                libc::SYS_timerfd_settime,
                vec![SeccompRule::new(vec![arg_eq(1, 0)?])?],
            );
            let sockets = UNIX_SOCKET_TYPES
                .iter()
                .map(|&ty| {
                    SeccompRule::new(vec![
                        arg_eq(0, libc::AF_UNIX as u64)?,
                        arg_eq(1, ty as u64)?,
                    ])
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(libc::SYS_socket, sockets);
        }
        ThreadKind::Main => {
            // tgkill(tgid, tid, sig): only threads of this process (the
            // vCPU kick). No tkill (its target need not be ours), no kill.
            rules.insert(
                libc::SYS_tgkill,
                vec![SeccompRule::new(vec![arg_eq(0, pid as u64)?])?],
            );
        }
        ThreadKind::Vcpu | ThreadKind::Jailer => {}
    }
    Ok(rules)
}

/// The compiled filter for `kind` in the process `pid` (the only process
/// the main thread may signal).
pub fn filter(kind: ThreadKind, pid: libc::pid_t) -> Result<BpfProgram, SeccompError> {
    let err = |reason: String| SeccompError { kind, reason };
    let f = SeccompFilter::new(
        rules(kind, pid).map_err(|e| err(e.to_string()))?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| err(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| err(e.to_string()))
}

/// Set once this VMM is known to be started by the daemon.
static MANAGED: AtomicBool = AtomicBool::new(false);

/// Makes `SILO_SECCOMP=off` ineffective for the rest of the process: the
/// daemon passes `--managed` to every VMM it starts, and `silo-vmm` calls
/// this first thing, so a guest-facing VMM always runs filtered whatever
/// environment the daemon was started with. Returns whether the off switch
/// was set (and is now ignored), for the caller to warn.
pub fn refuse_off_switch() -> bool {
    MANAGED.store(true, Ordering::Release);
    off_requested()
}

fn off_requested() -> bool {
    std::env::var("SILO_SECCOMP").is_ok_and(|v| v == "off")
}

/// Whether filters are wanted: yes unless `SILO_SECCOMP=off` in a VMM not
/// started with `--managed`.
pub fn enabled() -> bool {
    MANAGED.load(Ordering::Acquire) || !off_requested()
}

/// Installs the filter for `kind` on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    if !enabled() {
        return Ok(());
    }
    let prog = filter(kind, std::process::id() as libc::pid_t)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError {
        kind,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
