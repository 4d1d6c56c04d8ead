//! The scheduler's backend for real microVMs: one function version's
//! initramfs is built once; each environment is a [`VmEnv`] bound to one
//! (function, tenant) binding for its life. A function on a managed runtime
//! (`python3.11`, `nodejs22.x`) gets the runtime's tree too: appended to its initramfs, or
//! as a read-only image (`--pmem`) which, by default, only one tenant's VMs
//! share ([`crate::runtime_copies`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use silo_proto::{AgentConfig, Message, Outcome};
use silo_scheduler::{Backend, Binding, Environment, FunctionKey};

use crate::config::RuntimeDelivery;
use crate::jail::JailMode;
use crate::runtime_copies::{ImageLease, ImageUser, RuntimeCopies, RuntimeSharing};
use crate::vm_env::{EnvError, InvokeResult, VmEnv, VmLabel, VmSpec, RESULT_GRACE};
use silo_images::runtime::{RuntimeImage, ARCHIVE, MANAGED_RUNTIMES, SHARED_IMAGE};

/// Why a function version's image could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The initramfs cannot be built from the agent and the package.
    #[error(transparent)]
    Image(#[from] silo_initramfs::image::ImageError),
    /// The function's managed runtime cannot be prepared.
    #[error("runtime {runtime}: {reason}")]
    Runtime {
        /// The runtime id.
        runtime: String,
        /// What failed.
        reason: String,
    },
    /// With `runtime_delivery = "initramfs"` the VM unpacks its whole
    /// initramfs (the runtime's tree included) into its memory, and would
    /// not boot with this little.
    #[error(
        "MemorySize {memory_mib} MiB is too small for runtime {runtime} with runtime_delivery = \"initramfs\": \
         each VM unpacks its {initrd_mib} MiB initramfs (the runtime's tree) into its memory; \
         use MemorySize {needed_mib} or more, or runtime_delivery = \"pmem\""
    )]
    MemoryTooSmall {
        /// The runtime id.
        runtime: String,
        /// The function's memory.
        memory_mib: u32,
        /// The VM's initramfs with the runtime's tree.
        initrd_mib: u64,
        /// The least memory that boots it.
        needed_mib: u64,
    },
    /// The run directory or the initramfs file cannot be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Guest memory the kernel keeps for itself while it unpacks the
/// initramfs, beside the archive (calibrated: python3.11's 34 MiB
/// initramfs boots in 128 MiB; nodejs22.x's 110 MiB one fails at 328 MiB,
/// with node missing from a silently truncated tree, and boots at 360).
const INITRAMFS_KERNEL_MIB: f64 = 24.0;

/// Refuses a function whose VM could not unpack its `initrd_bytes`
/// initramfs in `memory_mib`: the kernel unpacks it into a tmpfs that may
/// hold half of the memory left beside the archive (which is freed only
/// afterwards), so the memory must be 3x the archive plus the kernel's.
fn check_initramfs_fits(
    runtime: &str,
    initrd_bytes: usize,
    memory_mib: u32,
) -> Result<(), RegisterError> {
    let initrd = initrd_bytes as f64 / f64::from(1 << 20);
    let needed_mib = (3.0 * initrd + INITRAMFS_KERNEL_MIB).ceil() as u64;
    if u64::from(memory_mib) < needed_mib {
        return Err(RegisterError::MemoryTooSmall {
            runtime: runtime.to_string(),
            memory_mib,
            initrd_mib: initrd.ceil() as u64,
            needed_mib,
        });
    }
    Ok(())
}

/// A function the backend can boot.
#[derive(Debug, Clone)]
pub struct FunctionImage {
    /// Agent settings (name, ARN, handler, memory, timeout, environment).
    pub config: AgentConfig,
    /// The initramfs built from the agent and the function package.
    pub initrd: PathBuf,
    /// The managed runtime's shared image, when delivered by pmem.
    pub pmem: Option<PathBuf>,
    /// The runtime id.
    pub runtime: String,
    /// The function's log format and levels.
    pub logging: crate::logs::LoggingConfig,
    /// The function's tenant role, if any ([`crate::creds`]).
    pub tenant_role: Option<crate::creds::TenantRole>,
}

/// Where managed runtimes' images come from and how they reach VMs.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// Copy per VM or one shared image.
    pub delivery: RuntimeDelivery,
    /// Built images by runtime id (a function on another managed runtime
    /// is refused: the daemon never builds one).
    pub dirs: BTreeMap<String, PathBuf>,
    /// Which VMs may map the same pmem image pages.
    pub sharing: RuntimeSharing,
}

/// Boots microVMs for the scheduler.
pub struct VmBackend {
    kernel: PathBuf,
    run_dir: PathBuf,
    boot_timeout: Duration,
    jail: JailMode,
    runtimes: RuntimeSettings,
    /// Managed runtimes' images found or built so far (once per daemon).
    runtime_images: Mutex<HashMap<String, RuntimeImage>>,
    /// The copies of pmem images VMs map (per tenant by default).
    copies: RuntimeCopies,
    console_bytes: usize,
    /// How VMs' guest memory is backed and given back.
    guest_memory: crate::vm_env::GuestMemoryMode,
    /// The live VMs' host memory, for `/metrics`.
    pub(crate) memory: Arc<crate::vm_memory::MemoryRegistry>,
    pub(crate) functions: Mutex<HashMap<String, Arc<FunctionImage>>>,
    /// VMs' networks (`[network]`), if enabled.
    network: Option<Arc<crate::net::Network>>,
    /// Where VMs' function logs go, if kept.
    logs: Option<crate::logs::LogSink>,
    /// Tenants' credentials for functions with a tenant role.
    pub(crate) broker: Arc<crate::creds::Broker>,
}

/// One invocation for a VM environment.
pub struct VmRequest {
    /// The Invoke message (request id, tenant, deadline, payload...).
    pub message: Message,
    /// How long the function may run.
    pub timeout: Duration,
}

impl VmBackend {
    /// A backend booting `kernel`, keeping per-VM sockets under `run_dir`,
    /// starting VMMs as `jail` says.
    pub fn new(kernel: PathBuf, run_dir: PathBuf, boot_timeout: Duration, jail: JailMode) -> Self {
        let memory: Arc<crate::vm_memory::MemoryRegistry> = Default::default();
        if let JailMode::Jailed(j) = &jail {
            let after = j.settings().idle_reclaim_after_s;
            if after > 0 {
                crate::vm_reclaim::spawn(&memory, Duration::from_secs(after));
            }
        }
        Self {
            kernel,
            copies: RuntimeCopies::new(run_dir.join("runtime-copies"), RuntimeSharing::default()),
            run_dir,
            boot_timeout,
            jail,
            runtimes: RuntimeSettings::default(),
            runtime_images: Mutex::new(HashMap::new()),
            console_bytes: crate::console::DEFAULT_CONSOLE_BYTES,
            guest_memory: Default::default(),
            memory,
            functions: Mutex::new(HashMap::new()),
            network: None,
            logs: None,
            broker: crate::creds::Broker::new(),
        }
    }

    /// Takes managed runtimes from `settings`.
    pub fn with_runtimes(mut self, settings: RuntimeSettings) -> Self {
        self.copies = RuntimeCopies::swept(self.run_dir.join("runtime-copies"), settings.sharing);
        self.runtimes = settings;
        self
    }

    /// Whether `runtime` is one this backend runs from its own image.
    pub fn is_managed(runtime: &str) -> bool {
        MANAGED_RUNTIMES.contains(&runtime)
    }

    /// The built image of managed runtime `name`: the configured one, its
    /// file for this delivery checked against the manifest written when it
    /// was built (first use only; cached). Never builds: `silo images
    /// build` does.
    fn runtime_image(&self, name: &str) -> Result<RuntimeImage, RegisterError> {
        let mut known = self.runtime_images.lock().expect("runtime images lock");
        if let Some(image) = known.get(name) {
            return Ok(image.clone());
        }
        let fail = |reason: String| RegisterError::Runtime {
            runtime: name.to_string(),
            reason,
        };
        let Some(dir) = self.runtimes.dirs.get(name) else {
            return Err(fail(
                "not built: run `silo images build` (`silo serve` finds its builds at start) \
                 or name a built one in [runtimes]"
                    .into(),
            ));
        };
        let image = RuntimeImage::at(name, dir);
        let file = match self.runtimes.delivery {
            RuntimeDelivery::Pmem => SHARED_IMAGE,
            RuntimeDelivery::Initramfs => ARCHIVE,
        };
        let checked = image.verified(file).map_err(|e| {
            tracing::error!(runtime = %name, error = %e, "refusing the managed runtime: it is not as it was built");
            fail(e.to_string())
        })?;
        tracing::info!(runtime = %name, file = %checked.display(), "managed runtime checked against its manifest");
        known.insert(name.to_string(), image.clone());
        Ok(image)
    }

    /// The shared read-only image of `runtime` for `--pmem` (checked by
    /// [`VmBackend::runtime_image`]).
    fn pmem_image(&self, image: &RuntimeImage) -> Result<PathBuf, RegisterError> {
        image.shared_image().ok_or_else(|| RegisterError::Runtime {
            runtime: image.name.clone(),
            reason: format!("{} has no {SHARED_IMAGE}", image.dir.display()),
        })
    }

    /// Keeps `bytes` of each VM's serial console in memory (0: console off).
    pub fn with_console_bytes(mut self, bytes: usize) -> Self {
        self.console_bytes = bytes;
        self
    }

    /// Backs and gives back VMs' guest memory as `mode` says.
    pub fn with_guest_memory(mut self, mode: crate::vm_env::GuestMemoryMode) -> Self {
        self.guest_memory = mode;
        self
    }

    /// Gives VMs networks from `network` (`[network] enabled`).
    pub fn with_network(mut self, network: Option<Arc<crate::net::Network>>) -> Self {
        self.network = network;
        self
    }

    /// The VMs' networking, if enabled.
    pub fn network(&self) -> Option<&Arc<crate::net::Network>> {
        self.network.as_ref()
    }

    /// How VMMs are jailed.
    pub fn jail(&self) -> &JailMode {
        &self.jail
    }

    /// Sends every VM's function log to `logs` (`None`: kept nowhere).
    pub fn with_logs(mut self, logs: Option<crate::logs::LogSink>) -> Self {
        self.logs = logs;
        self
    }

    /// Builds and registers the image of a function version.
    pub fn register(
        &self,
        version_key: &str,
        agent: &std::path::Path,
        config: AgentConfig,
        package: &[u8],
        runtime: &str,
        logging: crate::logs::LoggingConfig,
    ) -> Result<(), RegisterError> {
        let managed = Self::is_managed(runtime);
        let mut image = if managed {
            silo_initramfs::image::build_managed(agent, &config, package)?
        } else {
            silo_initramfs::image::build(agent, &config, package)?
        };
        let mut pmem = None;
        if managed {
            let rt = self.runtime_image(runtime)?;
            match self.runtimes.delivery {
                RuntimeDelivery::Pmem => pmem = Some(self.pmem_image(&rt)?),
                RuntimeDelivery::Initramfs => {
                    // A second newc archive after the first (the kernel
                    // unpacks concatenated archives; each starts 4-aligned).
                    let tree = std::fs::read(rt.cpio()).map_err(|source| RegisterError::Io {
                        path: rt.cpio(),
                        source,
                    })?;
                    image.resize(image.len().next_multiple_of(4), 0);
                    image.extend_from_slice(&tree);
                    check_initramfs_fits(runtime, image.len(), config.memory_mib)?;
                }
            }
        }
        make_run_dir(&self.run_dir)?;
        let initrd = self
            .run_dir
            .join(format!("{}-{version_key}.cpio", config.function_name));
        std::fs::write(&initrd, image).map_err(|source| RegisterError::Io {
            path: initrd.clone(),
            source,
        })?;
        self.functions.lock().expect("functions lock").insert(
            version_key.to_string(),
            Arc::new(FunctionImage {
                config,
                initrd,
                pmem,
                runtime: runtime.to_string(),
                logging,
                tenant_role: None,
            }),
        );
        Ok(())
    }

    /// Forgets a function version's image and removes its initramfs
    /// (running VMs have theirs in guest memory already).
    pub fn unregister(&self, version_key: &str) {
        let image = self
            .functions
            .lock()
            .expect("functions lock")
            .remove(version_key);
        if let Some(image) = image {
            let _ = std::fs::remove_file(&image.initrd);
        }
    }
}

/// Makes the run directory (and missing parents) 0700, owned by the
/// daemon's user: the function images in it hold environment variables.
/// They are 0644 themselves only so that a jailed VMM, running as its VM's
/// own uid, can read its image through the read-only bind mount its jail
/// makes of it; no other user can reach them through this directory.
pub fn make_run_dir(dir: &std::path::Path) -> Result<(), RegisterError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| RegisterError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

impl VmBackend {
    /// What a VM of `binding` boots: from the function version only (the
    /// tenant is not part of any path or argument).
    /// The registered image of a function version.
    fn image(&self, version: &str) -> Option<Arc<FunctionImage>> {
        self.functions
            .lock()
            .expect("functions lock")
            .get(version)
            .cloned()
    }

    fn spec_for(&self, binding: &Binding) -> Result<VmSpec, EnvError> {
        let image = self
            .functions
            .lock()
            .expect("functions lock")
            .get(&binding.function.version)
            .cloned()
            .ok_or_else(|| EnvError::Setup(format!("no image for {:?}", binding.function)))?;
        Ok(VmSpec {
            kernel: self.kernel.clone(),
            initrd: image.initrd.clone(),
            mem_mib: image.config.memory_mib,
            vcpus: 1,
            boot_timeout: self.boot_timeout,
            jail: self.jail.clone(),
            pmem: image.pmem.clone(),
            console_bytes: self.console_bytes,
            memory: self.guest_memory,
        })
    }
}

/// Who may share a VM's runtime image pages: its tenant's VMs; every VM
/// of its function when that is not `PER_TENANT` (no tenant); none when it
/// is pooled (bound to a tenant only at its first invoke).
fn image_user(binding: &Binding, pooled: bool) -> ImageUser<'_> {
    match (&binding.tenant, pooled) {
        (_, true) => ImageUser::Private,
        (Some(t), false) => ImageUser::Tenant(t.as_str()),
        (None, false) => ImageUser::Function(&binding.function.name),
    }
}

/// A VM bound to one binding.
pub struct VmEnvironment {
    env: VmEnv,
    binding: Binding,
    /// The runtime image copy the VM maps, removed after its last VM.
    _runtime: Option<ImageLease>,
    /// Its tenant's credentials, if the function has a tenant role.
    creds: Option<crate::creds::vm::VmCredentials>,
    /// Its place in the memory figures of `/metrics`.
    held: crate::vm_memory::Registration,
}

impl Backend for VmBackend {
    type Env = VmEnvironment;
    type Error = EnvError;
    type Request = VmRequest;
    type Response = InvokeResult;

    /// Boots the VM, then waits for the function's runtime to finish its
    /// init (at most the function's timeout plus [`RESULT_GRACE`]): a
    /// runtime that cannot start never enters the pool.
    async fn create_pooled(&self, function: &FunctionKey) -> Result<VmEnvironment, EnvError> {
        let binding = Binding {
            function: function.clone(),
            tenant: None,
        };
        let mut vm = self.boot(&binding, true).await?;
        let timeout_s = self
            .functions
            .lock()
            .expect("functions lock")
            .get(&function.version)
            .map_or(3, |image| image.config.timeout_s);
        let limit = Duration::from_secs(u64::from(timeout_s)) + RESULT_GRACE;
        if let Err(e) = vm.env.await_init(limit).await {
            vm.env.shutdown().await;
            return Err(e);
        }
        Ok(vm)
    }

    async fn create(&self, binding: &Binding) -> Result<VmEnvironment, EnvError> {
        self.boot(binding, false).await
    }
}

impl VmBackend {
    /// Boots a VM for `binding` (`pooled`: bound to a tenant only later).
    /// Its pmem image is the one its users may share: its tenant's copy,
    /// its function's when not `PER_TENANT`, its own when pooled.
    async fn boot(&self, binding: &Binding, pooled: bool) -> Result<VmEnvironment, EnvError> {
        let mut spec = self.spec_for(binding)?;
        // The tenant's credentials are fetched while the VM boots, not after.
        let creds = self.vm_credentials(binding);
        let runtime = match &spec.pmem {
            Some(source) => {
                let lease = self
                    .copies
                    .image_for(source, image_user(binding, pooled))
                    .await
                    .map_err(|e| EnvError::Setup(e.to_string()))?;
                spec.pmem = Some(lease.path().to_path_buf());
                Some(lease)
            }
            None => None,
        };
        let label = VmLabel {
            function: binding.function.name.clone(),
            tenant_id: binding.tenant.as_ref().map(|t| t.as_str().to_string()),
        };
        let mut env =
            VmEnv::boot_networked(&spec, &self.run_dir, &label, self.network.as_ref()).await?;
        if let (Some(sink), Some(image)) = (&self.logs, self.image(&binding.function.version)) {
            env.set_log_tap(crate::logs::LogTap::new(
                sink.clone(),
                &binding.function.name,
                &image.runtime,
                image.config.memory_mib,
                image.logging.clone(),
            ));
        }
        let t = &env.boot.timeline;
        tracing::info!(
            function = %binding.function.name,
            tenant_id = ?binding.tenant.as_ref().map(|t| t.as_str()).unwrap_or("-"),
            vmm_process_start_ms = t.vmm_process_start_ms,
            kernel_loaded_ms = t.kernel_loaded_ms,
            vm_created_ms = t.vm_created_ms,
            first_kvm_run_ms = t.first_kvm_run_ms,
            guest_init_ms = t.guest_init_ms,
            agent_ready_ms = t.agent_ready_ms,
            "microVM ready (boot timeline, ms since VMM spawn)"
        );
        let held = self.memory.register(
            &binding.function.name,
            env.memory_source(),
            env.dir().to_path_buf(),
        );
        Ok(VmEnvironment {
            env,
            binding: binding.clone(),
            _runtime: runtime,
            creds,
            held,
        })
    }
}

impl Environment for VmEnvironment {
    type Error = EnvError;
    type Request = VmRequest;
    type Response = InvokeResult;

    /// A runtime that crashed or timed out ends the VM: the scheduler
    /// destroys it, and the next invocation of that tenant boots a fresh one.
    /// The deadline starts now, when the environment is ready: as in Lambda,
    /// a cold start does not eat into the function's timeout.
    async fn invoke(&mut self, mut req: VmRequest) -> Result<InvokeResult, EnvError> {
        if let Message::Invoke {
            deadline_unix_ms, ..
        } = &mut req.message
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            *deadline_unix_ms = (now + req.timeout).as_millis() as u64;
        }
        // A pooled VM taken by a tenant: its traffic is that tenant's from
        // now on (docs/DAEMON.md, one network per VM).
        if let (
            Some(net),
            Message::Invoke {
                tenant_id: Some(t), ..
            },
        ) = (self.env.network(), &req.message)
        {
            net.bind(t);
        }
        if let Some(creds) = &mut self.creds {
            creds
                .push(&mut self.env, &self.binding, &req.message)
                .await?;
        }
        let first = self
            .env
            .boot
            .timeline
            .first_invocation_answered_ms
            .is_none();
        self.held.set_busy(true);
        let result = self.env.invoke(req.message, req.timeout).await;
        self.held.set_busy(false);
        let result = result?;
        if first {
            tracing::info!(
                function = %self.binding.function.name,
                tenant_id = ?self.binding.tenant.as_ref().map(|t| t.as_str()).unwrap_or("-"),
                first_invocation_answered_ms = self.env.boot.timeline.first_invocation_answered_ms,
                agent_ready_ms = self.env.boot.timeline.agent_ready_ms,
                "first invocation answered (ms since VMM spawn)"
            );
        }
        match &result.outcome {
            Outcome::Err(e)
                if e.error_type == "Runtime.ExitError" || e.error_type == "Sandbox.Timedout" =>
            {
                Err(EnvError::FunctionCrashed(Box::new(result)))
            }
            _ => Ok(result),
        }
    }

    async fn destroy(self) {
        self.env.shutdown().await;
    }

    /// What idle reclaim left it holding (its charge in the host's budget
    /// while idle).
    fn held_mib(&self) -> Option<u64> {
        self.held.held_mib()
    }
}

#[cfg(test)]
mod tests;
