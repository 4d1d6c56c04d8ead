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
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_and_none_allows_spawning_opening_or_killing() {
        let pid = std::process::id() as libc::pid_t;
        for kind in ALL {
            assert!(!filter(kind, pid).unwrap().is_empty());
            let allowed = rules(kind, pid).unwrap();
            for forbidden in [
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_execve,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_ptrace,
                libc::SYS_kill,
                libc::SYS_tkill,
                libc::SYS_pkey_mprotect,
            ] {
                assert!(
                    !allowed.contains_key(&forbidden),
                    "{kind:?} allows {forbidden}"
                );
            }
            assert_eq!(
                allowed.contains_key(&libc::SYS_socket),
                kind == ThreadKind::Devices
            );
            assert_eq!(
                allowed.contains_key(&libc::SYS_ioctl),
                !matches!(kind, ThreadKind::Main | ThreadKind::Jailer)
            );
        }
    }

    /// A forked child installs the vCPU filter and makes a forbidden call:
    /// the kernel kills it with SIGSYS.
    #[test]
    fn a_forbidden_call_kills_the_process() {
        let prog = prog(ThreadKind::Vcpu);
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

    const ALL: [ThreadKind; 4] = [
        ThreadKind::Vcpu,
        ThreadKind::Devices,
        ThreadKind::Main,
        ThreadKind::Jailer,
    ];

    /// The filter for `kind` as the VMM would build it for this (test)
    /// process.
    fn prog(kind: ThreadKind) -> BpfProgram {
        filter(kind, std::process::id() as libc::pid_t).unwrap()
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
            format!(
                "exit code {} (an allowed call failed if not 0)",
                libc::WEXITSTATUS(status)
            )
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

    /// The jailer parent may wait for its child and nothing that reaches
    /// out: a socket, even `AF_UNIX`, kills it.
    #[test]
    fn the_jailer_only_waits() {
        let jailer = prog(ThreadKind::Jailer);
        let status = in_child(&jailer, || {
            // SAFETY: wait4 with no children: returns ECHILD at once.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_wait4,
                    -1,
                    std::ptr::null_mut::<i32>(),
                    libc::WNOHANG,
                    std::ptr::null_mut::<libc::rusage>(),
                )
            };
            i32::from(r != -1)
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{}",
            describe(status)
        );
        let status = in_child(&jailer, || {
            // SAFETY: a raw socket call in the forked child.
            unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            0
        });
        assert_killed(status, "Jailer socket(AF_UNIX)");
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

    /// Sends signal 0 (which only checks that the target exists and may be
    /// signalled) with `tgkill(pid, pid, 0)`, `tkill(pid, 0)` or
    /// `kill(pid, 0)`; returns the raw result.
    fn probe_signal(nr: libc::c_long, pid: libc::c_long) -> libc::c_long {
        // SAFETY: a raw signal call with signal 0: nothing is delivered.
        unsafe {
            if nr == libc::SYS_tgkill {
                libc::syscall(nr, pid, pid, 0)
            } else {
                libc::syscall(nr, pid, 0)
            }
        }
    }

    #[test]
    fn signals_go_only_to_this_process() {
        // The filters are built for this (parent) process: its pid is the
        // only one the child may signal; pid 1 stands for any other process.
        let own = std::process::id() as libc::c_long;
        let main = prog(ThreadKind::Main);
        let status = in_child(&main, || {
            if probe_signal(libc::SYS_tgkill, own) != 0 {
                return 1;
            }
            probe_signal(libc::SYS_tgkill, 1);
            0
        });
        assert_killed(status, "Main tgkill(other process)");
        for kind in ALL {
            for (nr, name) in [(libc::SYS_tkill, "tkill"), (libc::SYS_kill, "kill")] {
                let status = in_child(&prog(kind), || {
                    probe_signal(nr, 1);
                    0
                });
                assert_killed(status, &format!("{kind:?} {name}"));
            }
        }
        for kind in [ThreadKind::Vcpu, ThreadKind::Devices] {
            let status = in_child(&prog(kind), || {
                probe_signal(libc::SYS_tgkill, own);
                0
            });
            assert_killed(status, &format!("{kind:?} tgkill"));
        }
    }

    /// What the vsock backend does with std on the devices thread (connect
    /// to `<uds>_<port>`, accept, set non-blocking, read, write, shut down)
    /// passes the devices filter. Runs on a thread of this test process,
    /// which a violation kills.
    #[test]
    fn std_unix_sockets_pass_the_devices_filter() {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = std::env::temp_dir().join(format!("silo-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock_52");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let prog = prog(ThreadKind::Devices);
        let p = path.clone();
        let echoed = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            let mut out = UnixStream::connect(&p).unwrap();
            out.set_nonblocking(true).unwrap();
            let (mut inc, _) = listener.accept().unwrap();
            inc.set_nonblocking(true).unwrap();
            out.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                match inc.read(&mut buf[got..]) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::yield_now()
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            out.shutdown(std::net::Shutdown::Both).unwrap();
            buf
        })
        .join()
        .unwrap();
        assert_eq!(&echoed, b"ping");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
