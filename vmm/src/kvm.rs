//! Opening `/dev/kvm` and telling what kind of KVM this host has.

use std::path::Path;
use std::sync::Mutex;

/// Path of the KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// What kind of virtualization `/dev/kvm` provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware virtualization (Intel VMX or AMD SVM): standard guest kernels boot.
    Hardware,
    /// PVM (pagetable-based virtualization, module `kvm_pvm`): only guest
    /// kernels built with `CONFIG_PVM_GUEST` run at speed; standard kernels
    /// run CPL 0 code emulated and die on unemulated instructions.
    Pvm,
}

/// Errors opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No `/dev/kvm` on this host.
    #[error(
        "{KVM_DEVICE} does not exist: this host has no KVM. Load the module \
         (`modprobe kvm_intel` or `modprobe kvm_amd`), enable virtualization in \
         the firmware, or use a cloud VM with nested virtualization"
    )]
    Missing,
    /// `/dev/kvm` exists but this user may not open it.
    #[error(
        "permission denied opening {KVM_DEVICE}: add this user to the `kvm` group \
         (`sudo usermod -aG kvm $USER`, then log in again) or run as root"
    )]
    PermissionDenied,
    /// Any other failure from KVM.
    #[error("KVM error during {op}: {source}")]
    Ioctl {
        /// What was being done.
        op: &'static str,
        /// The errno from KVM.
        source: kvm_ioctls::Error,
    },
    /// The host kernel's KVM lacks a capability silo needs.
    #[error("this host's KVM lacks the {0} capability")]
    MissingCapability(&'static str),
}

fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// Tells which kind of KVM this host has, from the loaded modules.
pub fn host_kind() -> HostKvm {
    let pvm = module_loaded("kvm_pvm");
    let hw = module_loaded("kvm_intel") || module_loaded("kvm_amd");
    if pvm && !hw {
        HostKvm::Pvm
    } else {
        HostKvm::Hardware
    }
}

/// A KVM handle opened before the VMM entered its jail (see
/// [`crate::jail`]): inside, there is no `/dev` and no `/sys`.
static PREOPENED: Mutex<Option<(kvm_ioctls::Kvm, HostKvm)>> = Mutex::new(None);

/// Opens KVM now, as [`open`] does, and keeps the handle for the next
/// [`open`]: the jail calls this while `/dev/kvm` and `/sys/module` are
/// still in reach.
pub fn preopen() -> Result<(), KvmError> {
    let opened = open_device()?;
    *PREOPENED.lock().unwrap_or_else(|e| e.into_inner()) = Some(opened);
    Ok(())
}

/// Opens `/dev/kvm` (or takes the handle [`preopen`] kept), checks the
/// capabilities the VMM relies on, and reports the host's kind of KVM.
pub fn open() -> Result<(kvm_ioctls::Kvm, HostKvm), KvmError> {
    let kept = PREOPENED.lock().unwrap_or_else(|e| e.into_inner()).take();
    match kept {
        Some(opened) => Ok(opened),
        None => open_device(),
    }
}

fn open_device() -> Result<(kvm_ioctls::Kvm, HostKvm), KvmError> {
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) if e.errno() == libc::ENOENT => return Err(KvmError::Missing),
        Err(e) if e.errno() == libc::EACCES || e.errno() == libc::EPERM => {
            return Err(KvmError::PermissionDenied)
        }
        Err(source) => {
            return Err(KvmError::Ioctl {
                op: "open /dev/kvm",
                source,
            })
        }
    };
    use kvm_ioctls::Cap;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCapability(name));
        }
    }
    Ok((kvm, host_kind()))
}

/// Probes the host: can this process use KVM, and which kind is it?
pub fn probe() -> Result<HostKvm, KvmError> {
    open().map(|(_, kind)| kind)
}
