//! Virtio-mmio device placement: a 4 KiB MMIO window and an IRQ per device,
//! irqfd and ioeventfd registration with KVM, the kernel command line
//! declarations, and the event loop that drives device work off the vCPUs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::Bus;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, QUEUE_NOTIFY};
use crate::devices::virtio::vsock::{Vsock, VsockError, VsockSubscriber};
use crate::devices::virtio::Interrupt;
use crate::event_loop::{self, Subscriber};
use crate::memory::GuestMemory;

pub use crate::event_loop::EventLoopHandle;

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
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which registration.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// An eventfd or thread could not be created.
    #[error("device setup: {0}")]
    Io(#[from] std::io::Error),
    /// The MMIO window overlaps another device.
    #[error("device window: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
}

/// Places virtio-mmio devices and runs their event loop.
pub struct MmioDeviceManager {
    next_addr: u64,
    next_irq: u32,
    cmdline: Vec<String>,
    subscribers: Vec<Subscriber>,
}

impl MmioDeviceManager {
    /// A manager with no devices; windows start at `mmio_base`, IRQs at `first_irq`.
    pub fn new(mmio_base: u64, first_irq: u32) -> Self {
        Self {
            next_addr: mmio_base,
            next_irq: first_irq,
            cmdline: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// Creates the vsock device, registers its MMIO window on `mmio_bus`, and its
    /// irqfd and ioeventfds with the VM.
    pub fn attach_vsock(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        mmio_bus: &mut Bus,
        cfg: &VsockConfig,
    ) -> Result<(), DeviceError> {
        let (base, irq) = (self.next_addr, self.next_irq);
        let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|source| DeviceError::Kvm {
                op: "KVM_IRQFD",
                source,
            })?;
        let interrupt = Interrupt::new(irqfd);
        let vsock = Vsock::new(cfg.guest_cid, &cfg.uds_path, interrupt.clone())?;
        for (q, evt) in vsock.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32)
                .map_err(|source| DeviceError::Kvm {
                    op: "KVM_IOEVENTFD",
                    source,
                })?;
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            vsock,
            mem.clone(),
            interrupt,
        )));
        mmio_bus.insert(transport.clone(), base, MMIO_WINDOW)?;
        self.subscribers
            .push(Arc::new(Mutex::new(VsockSubscriber(transport))));
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.next_addr += MMIO_WINDOW;
        self.next_irq += 1;
        tracing::debug!(base, irq, cid = cfg.guest_cid, uds = %cfg.uds_path.display(), "vsock attached");
        Ok(())
    }

    /// `virtio_mmio.device=...` arguments declaring every attached device.
    pub fn kernel_cmdline_args(&self) -> Vec<String> {
        self.cmdline.clone()
    }

    /// Starts the device event loop thread (none when there are no devices);
    /// stopping happens when the handle drops.
    pub fn start(self) -> Result<Option<EventLoopHandle>, DeviceError> {
        if self.subscribers.is_empty() {
            return Ok(None);
        }
        Ok(Some(event_loop::start(self.subscribers)?))
    }
}
