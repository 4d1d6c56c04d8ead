//! The filters tested: what each thread may and may not call, under the
//! real filters (see the parent module).

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
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
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
