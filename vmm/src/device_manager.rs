//! Virtio-mmio device placement: MMIO windows, IRQs, kernel command line
//! declarations, and the event loop that drives device work off the vCPUs.

use std::path::PathBuf;

/// Host side of a VM's vsock device.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// The guest's context id (>= 3).
    pub guest_cid: u64,
    /// Host Unix socket path: host processes connect here and write
    /// `CONNECT <port>\n`; guest connections to host port P reach `<path>_<P>`.
    pub uds_path: PathBuf,
}

/// Errors from creating or wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Placeholder until the virtio devices land.
    #[error("virtio devices are not available yet")]
    Unavailable,
}

/// Places virtio-mmio devices and runs their event loop.
pub struct MmioDeviceManager {}

impl MmioDeviceManager {
    /// A manager with no devices; windows start at `mmio_base`, IRQs at `first_irq`.
    pub fn new(_mmio_base: u64, _first_irq: u32) -> Self {
        Self {}
    }

    /// Creates the vsock device, registers its MMIO window on `mmio_bus`, and its
    /// irqfd and ioeventfd with the VM.
    pub fn attach_vsock(
        &mut self,
        _vm: &kvm_ioctls::VmFd,
        _mem: &crate::memory::GuestMemory,
        _mmio_bus: &mut crate::devices::bus::Bus,
        _cfg: &VsockConfig,
    ) -> Result<(), DeviceError> {
        Err(DeviceError::Unavailable)
    }

    /// `virtio_mmio.device=...` arguments declaring every attached device.
    pub fn kernel_cmdline_args(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts the device event loop thread; stopping happens when the handle drops.
    pub fn start(self) -> Result<Option<EventLoopHandle>, DeviceError> {
        Ok(None)
    }
}

/// Keeps the device event loop running; dropping it stops and joins the thread.
pub struct EventLoopHandle {}
