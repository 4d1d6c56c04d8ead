//! The jail a daemon-started VMM enters first thing, while it is still root
//! and before it reads anything a guest can influence.
//!
//! In order:
//! 1. the process joins the per-VM cgroup v2 directory the daemon made (its
//!    `memory.max`, `cpu.max` and `pids.max` then bound everything below);
//! 2. it leaves the host's mount, pid, network, IPC, UTS and cgroup
//!    namespaces (the new network namespace is empty: not even `lo` is up),
//!    or, with `--jail-netns`, joins the VM's network namespace the daemon
//!    prepared (its tap inside) instead of creating an empty one;
//! 3. it forks: the child is pid 1 of the new pid namespace and becomes the
//!    VMM; the parent stays behind only to wait for it and pass on its exit
//!    status, so the daemon's handle on "the VMM process" keeps working. The
//!    parent dies with the daemon and the child with the parent
//!    (`PR_SET_PDEATHSIG`, set after each one's last uid change, which would
//!    clear it, then the parent re-checked), and everything in the namespace
//!    dies with the child;
//! 4. the child opens `/dev/kvm` and the VM's tap (in the joined network
//!    namespace; the jail's root has no `/dev/net/tun`), binds each input file (kernel, initrd)
//!    read-only into the per-VM directory and makes that directory its root
//!    (`pivot_root`; on a host whose root is the initial ramfs, which cannot
//!    be pivoted, the directory is moved over `/` and chrooted into);
//! 5. it lowers its rlimits (open files, file size, processes, no core),
//!    drops to the per-VM uid and gid with no supplementary groups, which
//!    clears every capability, and sets `no_new_privs`.
//!
//! What is left inside: an open KVM handle, the tap if any, the read-only inputs at
//! `/<name>`, and the directory's own sockets and timeline file.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};

/// Where and as whom a VMM is jailed (the daemon's `--jail-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// Host directory that becomes the VMM's `/` (made by the daemon, owned
    /// by `uid`, holding the VM's sockets).
    pub root: PathBuf,
    /// The VM's own unprivileged user id.
    pub uid: u32,
    /// The VM's own group id.
    pub gid: u32,
    /// The cgroup v2 directory the VMM joins, limits already written.
    pub cgroup: Option<PathBuf>,
    /// The network namespace (an nsfs file such as `/run/netns/NAME`) the
    /// VMM joins instead of a new, empty one.
    pub netns: Option<PathBuf>,
    /// The tap interface opened inside, before the root change.
    pub tap: Option<String>,
}

/// A file the VMM reads inside the jail, bound read-only at `/<name>`.
#[derive(Debug, Clone)]
pub struct ReadOnlyInput {
    /// Its host path.
    pub source: PathBuf,
    /// Its name inside the jail (one path component).
    pub name: String,
}

impl ReadOnlyInput {
    /// Its path inside the jail.
    pub fn jailed_path(&self) -> PathBuf {
        Path::new("/").join(&self.name)
    }
}

/// The rlimits of a jailed VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE`: KVM, VM and vCPU handles, eventfds, the event loop,
    /// vsock connections.
    pub open_files: u64,
    /// `RLIMIT_FSIZE`: the largest file the VMM may write (its timeline).
    pub file_size: u64,
    /// `RLIMIT_NPROC`: threads of the VM's uid (main, device loop, vCPUs).
    pub processes: u64,
}

impl Limits {
    /// Limits for a VMM with `vcpus` vCPUs.
    pub fn for_vcpus(vcpus: u8) -> Self {
        Self {
            open_files: 256,
            file_size: 1 << 20,
            processes: u64::from(vcpus) + 8,
        }
    }
}

/// A jail step that failed; the message names the step.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Only root can build a jail.
    #[error("jail: silo-vmm must start as root to jail itself (it runs as uid {0})")]
    NotRoot(u32),
    /// uid or gid 0 asked for: the jail is for an unprivileged id.
    #[error("jail: --jail-uid and --jail-gid must not be 0")]
    RootId,
    /// A system call failed.
    #[error("jail: {step}: {source}")]
    Sys {
        /// What was being done.
        step: String,
        /// The errno.
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("jail: {step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The error.
        source: std::io::Error,
    },
    /// KVM could not be opened before entering the jail.
    #[error("jail: opening KVM: {0}")]
    Kvm(#[from] crate::kvm::KvmError),
    /// The tap could not be opened before entering the jail.
    #[error("jail: opening the tap: {0}")]
    Tap(#[from] crate::devices::virtio::net::NetError),
    /// After dropping privileges the process could still become root.
    #[error("jail: privileges were not dropped (setresuid(0) succeeded)")]
    StillPrivileged,
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Sys { step, source }
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Io { step, source }
}

/// Enters the jail described by `cfg`, binding `inputs` read-only inside.
///
/// Returns in the jailed child only. The parent waits for the child and
/// exits the process with the child's status (128 + signal if it was
/// killed); it never returns. Call before any thread is started.
pub fn enter(cfg: &JailConfig, inputs: &[ReadOnlyInput], limits: Limits) -> Result<(), JailError> {
    let euid = Uid::effective();
    if !euid.is_root() {
        return Err(JailError::NotRoot(euid.as_raw()));
    }
    // The daemon: the jailer parent must die with it (re-checked once its
    // death signal is set for good, after the last credential change).
    let daemon = nix::unistd::getppid();
    if cfg.uid == 0 || cfg.gid == 0 {
        return Err(JailError::RootId);
    }
    close_inherited_descriptors()?;
    if let Some(cgroup) = &cfg.cgroup {
        let procs = cgroup.join("cgroup.procs");
        std::fs::write(&procs, "0")
            .map_err(io(format!("joining the cgroup {}", procs.display())))?;
    }
    // Opened before the mount namespace changes, joined right after.
    let netns = cfg
        .netns
        .as_ref()
        .map(|p| {
            std::fs::File::open(p)
                .map_err(io(format!("opening the network namespace {}", p.display())))
        })
        .transpose()?;
    let mut namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if netns.is_none() {
        namespaces |= CloneFlags::CLONE_NEWNET;
    }
    unshare(namespaces).map_err(sys(
        "unshare (mount, pid, net, ipc, uts, cgroup namespaces)",
    ))?;
    if let (Some(file), Some(path)) = (netns, &cfg.netns) {
        nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(sys(format!(
            "joining the network namespace {}",
            path.display()
        )))?;
    }
    // Nothing mounted from here on propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making every mount private"))?;
    let (alive_r, alive_w) = nix::unistd::pipe().map_err(sys("pipe"))?;
    // SAFETY: the process is single-threaded here (the jail is entered
    // before any thread starts), so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            wait_and_exit(cfg, child, alive_w, daemon)
        }
        ForkResult::Child => {
            drop(alive_w);
            crate::kvm::preopen()?;
            if let Some(tap) = &cfg.tap {
                crate::devices::virtio::net::tap::preopen(tap)?;
            }
            nix::unistd::sethostname("silo-vm").map_err(sys("sethostname"))?;
            change_root(&cfg.root, inputs)?;
            lower_limits(limits)?;
            drop_privileges(cfg.uid, cfg.gid)?;
            // A uid change clears the death signal: it is set only now,
            // after the last one.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("PR_SET_PDEATHSIG"))?;
            // The parent may have died before the line above (as pid 1 of
            // its namespace the child cannot ask getppid): then the pipe's
            // write end is gone and there is nobody to report to.
            let mut fds = [nix::poll::PollFd::new(
                alive_r.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap_or(0) > 0 {
                std::process::exit(1);
            }
            drop(alive_r);
            Ok(())
        }
    }
}

/// Closes every descriptor above stderr: the VMM keeps only what it opens.
fn close_inherited_descriptors() -> Result<(), JailError> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(io("listing /proc/self/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is among them and already closed:
        // EBADF is expected once.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// The jailer parent: drops to the VM's ids, sets its death signal again
/// (the uid change cleared the one the daemon set before exec) and checks
/// that `daemon` is still its parent, filters itself down to `wait4` and
/// exit, waits for the VMM and exits with its status.
fn wait_and_exit(
    cfg: &JailConfig,
    child: nix::unistd::Pid,
    alive: std::os::fd::OwnedFd,
    daemon: nix::unistd::Pid,
) -> ! {
    if let Err(e) = drop_privileges(cfg.uid, cfg.gid) {
        eprintln!("silo-vmm: {e}");
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        std::process::exit(1);
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("silo-vmm: jail: PR_SET_PDEATHSIG: {e}");
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        std::process::exit(1);
    }
    // The daemon died before the line above: nobody would kill this VMM.
    if nix::unistd::getppid() != daemon {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        std::process::exit(1);
    }
    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Jailer) {
        eprintln!("silo-vmm: {e}");
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        std::process::exit(1);
    }
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => break 1,
        }
    };
    drop(alive);
    std::process::exit(code)
}

/// Binds `inputs` read-only into `root` and makes `root` the process's `/`.
fn change_root(root: &Path, inputs: &[ReadOnlyInput]) -> Result<(), JailError> {
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(root), root, None::<&str>, bind, None::<&str>)
        .map_err(sys(format!("binding {} onto itself", root.display())))?;
    let sealed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | sealed,
        None::<&str>,
    )
    .map_err(sys(format!(
        "remounting {} nosuid,nodev,noexec",
        root.display()
    )))?;
    for input in inputs {
        let target = root.join(&input.name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io(format!("creating the mount point {}", target.display())))?;
        mount(
            Some(input.source.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("binding {}", input.source.display())))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | sealed,
            None::<&str>,
        )
        .map_err(sys(format!("making {} read-only", target.display())))?;
    }
    nix::unistd::chdir(root).map_err(sys(format!("chdir {}", root.display())))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root is stacked under the new one: detach it.
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
        }
        // The initial ramfs cannot be pivoted away from: move the jail over
        // `/` instead. Without CAP_SYS_CHROOT (dropped below) the old root
        // stays out of reach.
        Err(nix::Error::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(sys("moving the jail over /"))?;
            nix::unistd::chroot(".").map_err(sys("chroot"))?;
        }
        Err(e) => return Err(sys("pivot_root")(e)),
    }
    nix::unistd::chdir("/").map_err(sys("chdir /"))
}

fn lower_limits(limits: Limits) -> Result<(), JailError> {
    for (resource, value, name) in [
        (Resource::RLIMIT_NOFILE, limits.open_files, "RLIMIT_NOFILE"),
        (Resource::RLIMIT_FSIZE, limits.file_size, "RLIMIT_FSIZE"),
        (Resource::RLIMIT_NPROC, limits.processes, "RLIMIT_NPROC"),
        (Resource::RLIMIT_CORE, 0, "RLIMIT_CORE"),
    ] {
        setrlimit(resource, value, value).map_err(sys(format!("setrlimit {name}")))?;
    }
    // A write past RLIMIT_FSIZE then fails with EFBIG instead of killing
    // the VMM with SIGXFSZ.
    // SAFETY: SIG_IGN installs no handler code; nothing else in the process
    // handles SIGXFSZ.
    unsafe { nix::sys::signal::signal(Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) }
        .map_err(sys("ignoring SIGXFSZ"))?;
    Ok(())
}

/// Drops to `uid`/`gid` with no supplementary groups: leaving uid 0 clears
/// every capability. Then no exec can regain any.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    let root = Uid::from_raw(0);
    if nix::unistd::setresuid(root, root, root).is_ok() {
        return Err(JailError::StillPrivileged);
    }
    Ok(())
}
