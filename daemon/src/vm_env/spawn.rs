//! Starting a VM: its directory, the jail handoff and the VMM process, up to
//! the agent's hello.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use silo_proto::AGENT_PORT;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

use super::agent::{accept_agent, AcceptError, ExpectedVmm};
use super::guest_text::guest_text_tail;
use super::timeline::{monotonic_ns, read_timeline, BootReport};
use super::{EnvError, VmEnv, VmLabel, VmSpec};
use crate::console::Console;
use crate::jail::{JailLease, JailMode};

static NEXT_VM: AtomicU64 = AtomicU64::new(0);

/// Where the VMM program is: `$SILO_VMM` if set, else `silo-vmm` beside
/// this executable (as `cargo build` and `cargo install` place them).
pub fn vmm_binary() -> Result<PathBuf, EnvError> {
    if let Some(p) = std::env::var_os("SILO_VMM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(EnvError::Setup(format!(
                "SILO_VMM={} is not a file",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| EnvError::Setup(format!("cannot find this executable: {e}")))?;
    let vmm = exe.with_file_name("silo-vmm");
    if vmm.is_file() {
        Ok(vmm)
    } else {
        Err(EnvError::Setup(format!(
            "the VMM program {} is missing: build it with `cargo build --release -p silo-vmm` \
             (or `cargo install --path vmm`) so that it sits beside {}, or set SILO_VMM",
            vmm.display(),
            exe.display()
        )))
    }
}

/// A new VM's directory under `run_dir`: `vm-<daemon pid>-<counter>`. Built
/// from numbers only: nothing from the request (tenant id, function name)
/// ever becomes part of a VM's paths.
pub(crate) fn new_vm_dir(run_dir: &Path) -> PathBuf {
    let n = NEXT_VM.fetch_add(1, Ordering::Relaxed);
    run_dir.join(format!("vm-{}-{n}", std::process::id()))
}

impl VmEnv {
    /// Boots a VM from `spec` under `run_dir` and waits for its agent.
    pub async fn boot(spec: &VmSpec, run_dir: &Path) -> Result<Self, EnvError> {
        Self::boot_for(spec, run_dir, &VmLabel::default()).await
    }

    /// [`VmEnv::boot`] for a VM of `label`'s function and tenant (named in
    /// the logs only: never in a path or an argument).
    pub async fn boot_for(
        spec: &VmSpec,
        run_dir: &Path,
        label: &VmLabel,
    ) -> Result<Self, EnvError> {
        Self::boot_networked(spec, run_dir, label, None).await
    }

    /// [`VmEnv::boot_for`] with a network from `network` (`[network]`;
    /// `None`: loopback only), per the function's egress policy.
    pub async fn boot_networked(
        spec: &VmSpec,
        run_dir: &Path,
        label: &VmLabel,
        network: Option<&std::sync::Arc<crate::net::Network>>,
    ) -> Result<Self, EnvError> {
        let dir = new_vm_dir(run_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| EnvError::Setup(format!("{}: {e}", dir.display())))?;
        let lease = match &spec.jail {
            JailMode::Jailed(jailer) => Some(
                jailer
                    .lease(&dir, spec.mem_mib, spec.vcpus)
                    .map_err(|e| EnvError::Setup(format!("jail: {e}")))?,
            ),
            JailMode::Insecure => {
                tracing::warn!(
                    function = %label.function,
                    tenant_id = ?label.tenant_id.as_deref().unwrap_or("-"),
                    "booting an UNJAILED microVM (--insecure-no-jail)"
                );
                None
            }
            JailMode::Unavailable(why) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(EnvError::NoJail(why.clone()));
            }
        };
        // Its network (prepared ahead), before the VMM that joins it.
        let net = crate::net::attach(network, label, lease.as_ref().map(JailLease::id))
            .await
            .map_err(|e| EnvError::Setup(format!("network: {e}")))?;
        // Inside a jail the VM's directory is the VMM's `/`.
        let inside = |name: &str| match &lease {
            Some(_) => Path::new("/").join(name),
            None => dir.join(name),
        };
        let uds = dir.join("vsock");
        let agent_socket = PathBuf::from(format!("{}_{AGENT_PORT}", uds.display()));
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| EnvError::Setup(format!("agent socket: {e}")))?;
        if let Some(lease) = &lease {
            // The directory is the VM's uid's: never follow a link put there.
            let id = Some(lease.id());
            std::os::unix::fs::lchown(&agent_socket, id, id)
                .map_err(|e| EnvError::Setup(format!("agent socket: {e}")))?;
        }
        let started = Instant::now();
        let mut cmd = Command::new(vmm_binary()?);
        if let Some(lease) = &lease {
            cmd.args(lease.vmm_args(&dir));
        }
        cmd.env_clear()
            .arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initrd")
            .arg(&spec.initrd)
            .arg("--mem-mib")
            .arg(spec.mem_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--vsock-cid")
            .arg("3")
            .arg("--vsock-uds")
            .arg(inside("vsock"))
            .arg("--serial")
            .arg(if spec.console_bytes > 0 {
                "stdout"
            } else {
                "off"
            })
            .arg("--timeline-file")
            .arg(inside("timeline.json"))
            .arg("--managed")
            // Free page reporting: pages the guest frees go back to the host.
            .arg("--balloon")
            .arg("--balloon-stats-file")
            .arg(inside(super::balloon::STATS_FILE))
            .args(spec.memory.vmm_args())
            .args(net.iter().flat_map(crate::net::VmNet::vmm_args))
            .args(
                spec.pmem
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--pmem"), p.as_os_str()]),
            )
            .env("SILO_LOG", "warn")
            .stdin(Stdio::null())
            // Console and VMM log go to bounded rings (crate::console).
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (prctl, getppid); no allocation, no locks. A VMM must not
        // outlive the daemon that owns it, even if the daemon is SIGKILLed.
        // (A jailed VMM's uid change clears this death signal: its jail sets
        // it again after the change and re-checks its parent.)
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the parent exited"));
                }
                Ok(())
            });
        }
        let spawn_ns = monotonic_ns();
        let mut child = cmd
            .spawn()
            .map_err(|e| EnvError::Boot(format!("cannot start the VMM: {e}")))?;
        let console = Console::start(child.stdout.take(), child.stderr.take(), spec.console_bytes);
        let mut env_guard = Guard {
            child: Some(child),
            dir: Some(dir.clone()),
            jail: lease,
        };
        let expected = ExpectedVmm {
            pid: env_guard
                .child
                .as_ref()
                .and_then(Child::id)
                .ok_or_else(|| EnvError::Boot("the VMM exited at once".into()))?,
            uid: env_guard.jail.as_ref().map(JailLease::id),
        };
        // A VMM that exits before its agent connects (a bad flag, a jail
        // step that failed, a guest that died at once) fails the boot now,
        // not at the boot timeout.
        let accepted = {
            let child = env_guard.child.as_mut().expect("child");
            tokio::select! {
                r = accept_agent(&listener, expected, spec.boot_timeout, label) => Some(r),
                _ = child.wait() => None,
            }
        };
        let (conn, boot) = match accepted {
            Some(r) => r.map_err(|e| match e {
                AcceptError::TimedOut { .. } => EnvError::Boot(format!(
                    "{e}; console tail: {}",
                    guest_text_tail(&console.tail(20))
                )),
                e => EnvError::Boot(e.to_string()),
            })?,
            None => {
                let status = env_guard
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map_or_else(|| "unknown".into(), |s| s.to_string());
                // Its pipes are closed: the rings hold all it wrote.
                let mut console = console;
                console.finish(Duration::from_secs(1)).await;
                return Err(EnvError::Boot(format!(
                    "the VMM exited ({status}) before the guest agent connected; console tail: {}",
                    guest_text_tail(&console.tail(20))
                )));
            }
        };
        let spawn_to_ready = started.elapsed();
        if let Some(net) = &net {
            net.booted();
        }
        let timeline = read_timeline(&dir.join("timeline.json"), spawn_ns, spawn_to_ready, &boot);
        let (child, dir, jail) = env_guard.disarm();
        if let Some(lease) = &jail {
            if let Err(e) = lease.limit_cpu() {
                tracing::warn!(
                    function = %label.function,
                    tenant_id = ?label.tenant_id.as_deref().unwrap_or("-"),
                    error = %e, "cannot apply the VM's CPU share"
                );
            }
        }
        Ok(Self {
            child,
            conn,
            dir,
            started,
            broken: false,
            jail,
            console,
            label: label.clone(),
            init_tail: Vec::new(),
            boot: BootReport {
                spawn_to_ready,
                guest: boot,
                timeline,
            },
            net,
            logs: None,
            pooled: false,
            reports: Default::default(),
        })
    }
}

/// Kills the VMM, removes its directory and gives back its jail unless
/// disarmed.
struct Guard {
    child: Option<Child>,
    dir: Option<PathBuf>,
    jail: Option<JailLease>,
}

impl Guard {
    fn disarm(&mut self) -> (Child, PathBuf, Option<JailLease>) {
        (
            self.child.take().expect("child"),
            self.dir.take().expect("dir"),
            self.jail.take(),
        )
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
        if let Some(lease) = &self.jail {
            lease.kill();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
        drop(self.jail.take());
    }
}
