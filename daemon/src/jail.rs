//! The daemon's side of the per-VM jail (the VMM's side is `silo_vmm::jail`):
//! what the host must offer, one unprivileged uid/gid per live VM, and one
//! cgroup v2 directory per VM with its limits, made before the VMM starts and
//! removed after its last process is gone.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[jail]` in the daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailSettings {
    /// First uid (and gid) handed to VMs; each live VM has its own.
    pub uid_base: u32,
    /// How many ids from `uid_base` on may be used (VMs alive at once).
    pub uid_count: u32,
    /// cgroup v2 directory under which each VM gets its own.
    pub cgroup_parent: PathBuf,
    /// `memory.max` is the guest's memory plus this (measured VMM overhead
    /// with room to spare).
    pub memory_overhead_mib: u32,
    /// A VM gets one full CPU (`cpu.max`) at this much memory and a
    /// proportional share below it, as Lambda does (1769 MB = 1 vCPU).
    /// Applied once the environment is ready: boot and runtime init run at
    /// up to a full CPU, so cold starts are not stretched by the share.
    /// 0: no CPU share (each VM may use up to one CPU per vCPU).
    pub cpu_full_at_mib: u32,
    /// The smallest CPU share, in percent of one CPU.
    pub cpu_min_percent: u32,
    /// `pids.max`: processes and threads in the VM's cgroup.
    pub pids_max: u32,
    /// Idle reclaim (issue 25): a VM idle this many seconds is paged out
    /// to the host's swap (`memory.reclaim` on its cgroup, which then may
    /// swap); 0: off, VMs never swap (`memory.swap.max` 0).
    pub idle_reclaim_after_s: u64,
}

impl Default for JailSettings {
    fn default() -> Self {
        Self {
            uid_base: 1_000_000_000,
            uid_count: 65_536,
            cgroup_parent: PathBuf::from("/sys/fs/cgroup/silo"),
            memory_overhead_mib: 64,
            cpu_full_at_mib: 1769,
            cpu_min_percent: 5,
            pids_max: 32,
            idle_reclaim_after_s: 0,
        }
    }
}

impl JailSettings {
    /// Checks the values, naming the field that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.uid_base == 0 {
            return Err("jail.uid_base must not be 0 (root)".into());
        }
        if self.uid_count == 0 || self.uid_base.checked_add(self.uid_count).is_none() {
            return Err("jail.uid_count must be at least 1 and keep ids below 2^32".into());
        }
        if !self.cgroup_parent.is_absolute() {
            return Err("jail.cgroup_parent must be an absolute path".into());
        }
        if !(1..=100).contains(&self.cpu_min_percent) {
            return Err("jail.cpu_min_percent must be 1..=100".into());
        }
        if self.pids_max < 8 {
            return Err("jail.pids_max must be at least 8 (VMM threads)".into());
        }
        Ok(())
    }
}

/// How this daemon starts VMMs.
#[derive(Debug, Clone)]
pub enum JailMode {
    /// Every VMM jailed.
    Jailed(Arc<Jailer>),
    /// `--insecure-no-jail`: VMMs run as the daemon's user (logged on every
    /// boot).
    Insecure,
    /// The host cannot jail and the operator did not opt out: no VM boots.
    Unavailable(String),
}

impl JailMode {
    /// Probes the host for `settings`; `insecure` is `--insecure-no-jail`.
    pub fn new(settings: &JailSettings, insecure: bool) -> Self {
        if insecure {
            tracing::warn!(
                "--insecure-no-jail: microVM processes will run UNJAILED as the daemon's user, \
                 in the host's namespaces; a guest escape would own this host"
            );
            if settings.idle_reclaim_after_s > 0 {
                tracing::warn!(
                    "jail.idle_reclaim_after_s is set but idle reclaim works on the jail's \
                     per-VM cgroups: unjailed VMs are never paged out"
                );
            }
            return Self::Insecure;
        }
        match Jailer::probe(settings) {
            Ok(j) => Self::Jailed(Arc::new(j)),
            Err(why) => {
                tracing::error!(
                    reason = %why,
                    "this host cannot jail microVMs: no VM will boot; fix the cause, or start \
                     the daemon with --insecure-no-jail to run them unjailed"
                );
                Self::Unavailable(why)
            }
        }
    }
}

impl JailMode {
    /// [`JailMode::new`] for the daemon, which owns `cgroup_parent`: before
    /// any id is leased, the VM cgroups a killed predecessor left there are
    /// killed and removed (a VMM left behind would otherwise keep running
    /// as an id handed to another VM). If one cannot be removed, no VM
    /// boots. (`silo run` and the benchmarks use [`JailMode::new`]: they
    /// must not kill a running daemon's VMs.)
    pub fn for_daemon(settings: &JailSettings, insecure: bool) -> Self {
        let mode = Self::new(settings, insecure);
        if !matches!(mode, Self::Jailed(_)) {
            return mode;
        }
        match sweep_leftover_cgroups(&settings.cgroup_parent) {
            Ok(()) => mode,
            Err(why) => {
                tracing::error!(
                    reason = %why,
                    "this host cannot jail microVMs safely: no VM will boot"
                );
                Self::Unavailable(why)
            }
        }
    }
}

/// Hands out per-VM ids and cgroups.
#[derive(Debug)]
pub struct Jailer {
    settings: JailSettings,
    used: Mutex<BTreeSet<u32>>,
}

/// Why a VM's jail could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum JailSetupError {
    /// Every id in `uid_base..uid_base+uid_count` belongs to a live VM.
    #[error("no free jail uid: all {0} ids of jail.uid_count are in use")]
    NoFreeId(u32),
    /// A file or cgroup operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JailSetupError + '_ {
    move |source| JailSetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

impl Jailer {
    /// Checks that this host can jail VMMs (root, cgroup v2 with the memory,
    /// cpu and pids controllers, namespaces) and prepares the cgroup parent.
    pub fn probe(settings: &JailSettings) -> Result<Self, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(format!(
                "the daemon runs as uid {}, not root: it needs root to give each VMM its own \
                 uid, namespaces and cgroup",
                nix::unistd::Uid::effective()
            ));
        }
        for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
            if !Path::new("/proc/self/ns").join(ns).exists() {
                return Err(format!("this kernel has no {ns} namespaces"));
            }
        }
        let parent = &settings.cgroup_parent;
        let above = parent
            .parent()
            .ok_or_else(|| format!("jail.cgroup_parent {} has no parent", parent.display()))?;
        let available = std::fs::read_to_string(above.join("cgroup.controllers")).map_err(|e| {
            format!(
                "{} is not a cgroup v2 directory ({e}): mount cgroup2 on /sys/fs/cgroup",
                above.display()
            )
        })?;
        for c in CONTROLLERS {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(format!(
                    "the cgroup v2 controller `{c}` is not available in {}",
                    above.display()
                ));
            }
        }
        let enable = |dir: &Path| -> Result<(), String> {
            let f = dir.join("cgroup.subtree_control");
            std::fs::write(&f, "+memory +cpu +pids")
                .map_err(|e| format!("enabling memory, cpu and pids in {}: {e}", f.display()))
        };
        enable(above)?;
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        enable(parent)?;
        if settings.idle_reclaim_after_s > 0 {
            crate::vm_reclaim::check_host(parent).map_err(|e| e.to_string())?;
        }
        Ok(Self {
            settings: settings.clone(),
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// The settings this jailer was probed with.
    pub fn settings(&self) -> &JailSettings {
        &self.settings
    }

    /// Prepares the jail of one VM: a free id, `root` (the VM's directory,
    /// which must exist) owned by it, and a cgroup named after `root` with
    /// `memory.max`, `pids.max`, `cpu.weight` and no swap (swap up to
    /// `memory.max` with idle reclaim on).
    pub fn lease(
        self: &Arc<Self>,
        root: &Path,
        mem_mib: u32,
        vcpus: u8,
    ) -> Result<JailLease, JailSetupError> {
        let s = &self.settings;
        let id = {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            let id = (s.uid_base..s.uid_base + s.uid_count)
                .find(|id| !used.contains(id))
                .ok_or(JailSetupError::NoFreeId(s.uid_count))?;
            used.insert(id);
            id
        };
        let name = root
            .file_name()
            .map(OsString::from)
            .unwrap_or_else(|| OsString::from("vm"));
        let cgroup = s.cgroup_parent.join(name);
        let lease = JailLease {
            jailer: self.clone(),
            id,
            cgroup: cgroup.clone(),
            mem_mib,
            vcpus,
            reservation: Some(Reservation {
                jailer: self.clone(),
                id,
                cgroup,
            }),
        };
        let owner = Some(nix::unistd::Uid::from_raw(id));
        let group = Some(nix::unistd::Gid::from_raw(id));
        nix::unistd::chown(root, owner, group).map_err(|e| JailSetupError::Io {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        std::fs::create_dir(&lease.cgroup).map_err(io(&lease.cgroup))?;
        let memory = (u64::from(mem_mib) + u64::from(s.memory_overhead_mib)) << 20;
        lease.write("memory.max", &memory.to_string())?;
        // Swap only for idle reclaim; up to what the VM may hold in RAM.
        let swap = if s.idle_reclaim_after_s > 0 {
            memory.to_string()
        } else {
            "0".to_string()
        };
        lease.write("memory.swap.max", &swap).or_else(|e| match e {
            // No swap accounting on this host: nothing to forbid.
            JailSetupError::Io { ref source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            e => Err(e),
        })?;
        lease.write("pids.max", &s.pids_max.to_string())?;
        lease.write("cpu.weight", &lease.cpu_weight().to_string())?;
        Ok(lease)
    }
}

/// How long killing and removing one VM's cgroup may take.
const CGROUP_REMOVE_LIMIT: Duration = Duration::from_secs(5);

/// Kills every process in `cgroup` (`cgroup.kill`) and removes it once they
/// are gone, waiting up to [`CGROUP_REMOVE_LIMIT`]. Gone already is fine.
fn kill_and_remove(cgroup: &Path) -> std::io::Result<()> {
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if start.elapsed() < CGROUP_REMOVE_LIMIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
}

/// The VM cgroups (`vm-*`) under `parent` that a previous daemon left (it
/// was killed before it could remove them): each is killed and removed,
/// and what was found is logged. A VM cgroup that cannot be removed is an
/// error: its processes would keep ids this daemon is about to hand out.
fn sweep_leftover_cgroups(parent: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(parent).map_err(|e| format!("listing {}: {e}", parent.display()))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_vm = name.to_str().is_some_and(|n| n.starts_with("vm-"));
        if is_vm && entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.push(entry.path());
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let processes: usize = found
        .iter()
        .map(|c| {
            std::fs::read_to_string(c.join("cgroup.procs"))
                .map(|p| p.lines().count())
                .unwrap_or(0)
        })
        .sum();
    tracing::warn!(
        cgroups = found.len(),
        processes,
        names = ?found.iter().filter_map(|c| c.file_name()).collect::<Vec<_>>(),
        "VM cgroups left by an earlier daemon: killing and removing them before any VM boots"
    );
    for cgroup in &found {
        kill_and_remove(cgroup).map_err(|e| {
            format!(
                "cannot remove the leftover VM cgroup {} ({e}): its processes may still run \
                 with ids this daemon would hand out",
                cgroup.display()
            )
        })?;
    }
    Ok(())
}

/// One VM's jail: its id and cgroup, given back when dropped or
/// [`JailLease::release`]d.
pub struct JailLease {
    jailer: Arc<Jailer>,
    id: u32,
    cgroup: PathBuf,
    mem_mib: u32,
    vcpus: u8,
    /// What is given back; `None` once it was.
    reservation: Option<Reservation>,
}

/// A VM's id and cgroup, held until the VM is gone.
struct Reservation {
    jailer: Arc<Jailer>,
    id: u32,
    cgroup: PathBuf,
}

impl Reservation {
    /// Kills whatever is left in the cgroup, removes it and frees the id.
    /// Blocks up to a few seconds.
    fn give_back(self) {
        let removed = match kill_and_remove(&self.cgroup) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    cgroup = %self.cgroup.display(), error = %e,
                    "cannot remove a VM's cgroup: its id stays reserved"
                );
                false
            }
        };
        // An id goes back only once no process of that VM can be left.
        if removed {
            self.jailer
                .used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
        }
    }
}

/// The CPU period `cpu.max` is written for.
const CPU_PERIOD_US: u64 = 100_000;

/// The weight of one task (the kernel's default `cpu.weight`).
const CPU_WEIGHT_PER_THREAD: u32 = 100;

/// The largest `cpu.weight` the kernel accepts.
const CPU_WEIGHT_MAX: u32 = 10_000;

impl JailLease {
    /// The VM's uid and gid.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The VM's cgroup directory.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The `silo-vmm` flags that jail it in `root`.
    pub fn vmm_args(&self, root: &Path) -> Vec<OsString> {
        vec![
            "--jail-root".into(),
            root.into(),
            "--jail-uid".into(),
            self.id.to_string().into(),
            "--jail-gid".into(),
            self.id.to_string().into(),
            "--jail-cgroup".into(),
            self.cgroup.clone().into(),
        ]
    }

    /// The `cpu.max` value for this VM: a share of one CPU proportional to
    /// its memory (never below `cpu_min_percent`), at most one CPU per vCPU.
    pub fn cpu_max(&self) -> String {
        let s = &self.jailer.settings;
        let all = u64::from(self.vcpus.max(1)) * CPU_PERIOD_US;
        let share = match s.cpu_full_at_mib {
            0 => all,
            full => (u64::from(self.mem_mib) * CPU_PERIOD_US / u64::from(full))
                .max(u64::from(s.cpu_min_percent) * CPU_PERIOD_US / 100)
                .min(all),
        };
        format!("{share} {CPU_PERIOD_US}")
    }

    /// The `cpu.weight` for this VM: what its busy threads (one per vCPU and
    /// the devices thread) would weigh unjailed, where each competes as a
    /// task of its own, instead of the one task's weight a cgroup has.
    pub fn cpu_weight(&self) -> u32 {
        let threads = u32::from(self.vcpus.max(1)) + 1;
        (threads * CPU_WEIGHT_PER_THREAD).clamp(1, CPU_WEIGHT_MAX)
    }

    /// Applies the VM's CPU share (once it is ready: its boot ran at up to
    /// one CPU per vCPU).
    pub fn limit_cpu(&self) -> Result<(), JailSetupError> {
        self.write("cpu.max", &self.cpu_max())
    }

    /// Kills every process left in the VM's cgroup (`cgroup.kill`) without
    /// waiting: done before the VM's directory is removed, so that no
    /// process of the VM is left to use it.
    pub fn kill(&self) {
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
    }

    fn write(&self, file: &str, value: &str) -> Result<(), JailSetupError> {
        let path = self.cgroup.join(file);
        std::fs::write(&path, value).map_err(io(&path))
    }

    /// Kills whatever is left in the VM's cgroup, removes it and frees the
    /// id. Blocks up to a few seconds; call off the async runtime.
    pub fn release(mut self) {
        if let Some(r) = self.reservation.take() {
            r.give_back();
        }
    }
}

impl Drop for JailLease {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            // Drop may run on the async runtime: do the waiting elsewhere.
            std::thread::spawn(move || r.give_back());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mem_mib: u32, vcpus: u8, settings: JailSettings) -> JailLease {
        JailLease {
            jailer: Arc::new(Jailer {
                settings,
                used: Mutex::new(BTreeSet::new()),
            }),
            id: 1,
            cgroup: PathBuf::from("/nonexistent/silo-test"),
            mem_mib,
            vcpus,
            reservation: None,
        }
    }

    #[test]
    fn cpu_share_is_proportional_to_memory_like_lambda() {
        let s = JailSettings::default();
        assert_eq!(lease(1769, 1, s.clone()).cpu_max(), "100000 100000");
        assert_eq!(lease(3538, 2, s.clone()).cpu_max(), "200000 100000");
        // Capped at one CPU per vCPU.
        assert_eq!(lease(3538, 1, s.clone()).cpu_max(), "100000 100000");
        // 128 MiB: 7.2% of a CPU.
        assert_eq!(lease(128, 1, s.clone()).cpu_max(), "7235 100000");
        // Never below the floor.
        assert_eq!(lease(16, 1, s.clone()).cpu_max(), "5000 100000");
        // 0: no share, one CPU per vCPU.
        let off = JailSettings {
            cpu_full_at_mib: 0,
            ..s
        };
        assert_eq!(lease(128, 2, off).cpu_max(), "200000 100000");
    }

    #[test]
    fn cpu_weight_is_that_of_the_vmms_busy_threads() {
        let s = JailSettings::default();
        assert_eq!(lease(128, 1, s.clone()).cpu_weight(), 200);
        assert_eq!(lease(128, 2, s.clone()).cpu_weight(), 300);
        assert_eq!(lease(128, 99, s.clone()).cpu_weight(), 10_000);
        // The kernel's maximum.
        assert_eq!(lease(128, u8::MAX, s).cpu_weight(), 10_000);
    }

    #[test]
    fn settings_are_checked_naming_the_field() {
        let bad = [
            (
                JailSettings {
                    uid_base: 0,
                    ..Default::default()
                },
                "uid_base",
            ),
            (
                JailSettings {
                    uid_count: 0,
                    ..Default::default()
                },
                "uid_count",
            ),
            (
                JailSettings {
                    uid_base: u32::MAX - 1,
                    ..Default::default()
                },
                "uid_count",
            ),
            (
                JailSettings {
                    cgroup_parent: "silo".into(),
                    ..Default::default()
                },
                "cgroup_parent",
            ),
            (
                JailSettings {
                    pids_max: 2,
                    ..Default::default()
                },
                "pids_max",
            ),
        ];
        for (s, field) in bad {
            let e = s.check().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        JailSettings::default().check().unwrap();
    }
}
