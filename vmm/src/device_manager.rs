//! Virtio-mmio device placement: a 4 KiB MMIO window and an IRQ per device,
//! irqfd and ioeventfd registration with KVM, the kernel command line
//! declarations, and the event loop that drives device work off the vCPUs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::Bus;
use crate::devices::virtio::balloon::stats_file::StatsFile;
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, QUEUE_NOTIFY};
use crate::devices::virtio::net::{Net, NetError, NetLimits};
use crate::devices::virtio::pmem::Pmem;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice, VirtioSubscriber};
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

/// Host side of a VM's virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The existing tap interface (in the VMM's network namespace).
    pub tap: String,
    /// The guest's MAC address ([`crate::devices::virtio::net::DEFAULT_MAC`]
    /// when `None`).
    pub mac: Option<[u8; 6]>,
    /// Rate limits.
    pub limits: NetLimits,
}

/// Errors from creating or wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// The net device could not be created (its tap, its descriptors).
    #[error(transparent)]
    Net(#[from] NetError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which registration.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// The device's interrupt eventfd could not be created.
    #[error("cannot create the interrupt eventfd of a virtio device: {0}")]
    EventFd(#[source] std::io::Error),
    /// The MMIO window overlaps another device.
    #[error("virtio-mmio window: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    /// The device declaration does not fit on the kernel command line.
    #[error("cannot declare the virtio-mmio device on the kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The device event loop thread could not be started.
    #[error("cannot start the device event loop: {0}")]
    EventLoop(#[source] std::io::Error),
    /// The balloon's stats file could not be created or mapped.
    #[error("balloon stats file {path}: {source}")]
    BalloonStats {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where one virtio-mmio device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest physical base of its 4 KiB register window.
    pub base: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// Places virtio-mmio devices and runs their event loop.
pub struct MmioDeviceManager {
    next_addr: u64,
    next_irq: u32,
    slots: Vec<MmioSlot>,
    subscribers: Vec<Subscriber>,
}

impl MmioDeviceManager {
    /// A manager with no devices; windows start at `mmio_base`, IRQs at `first_irq`.
    pub fn new(mmio_base: u64, first_irq: u32) -> Self {
        Self {
            next_addr: mmio_base,
            next_irq: first_irq,
            slots: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// Attaches any virtio device: allocates its window and IRQ, registers
    /// an irqfd for the IRQ, builds the device with `build` (given the
    /// interrupt it must raise), registers one ioeventfd per queue on the
    /// QueueNotify register, places the transport on `mmio_bus`, and hands
    /// the device to the event loop. Returns the shared transport.
    pub fn attach_virtio_device<D, F>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        mmio_bus: &mut Bus,
        build: F,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, DeviceError>
    where
        D: VirtioDevice + 'static,
        F: FnOnce(Interrupt) -> Result<D, DeviceError>,
    {
        let slot = MmioSlot {
            base: self.next_addr,
            irq: self.next_irq,
        };
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irqfd, slot.irq)
            .map_err(|source| DeviceError::Kvm {
                op: "KVM_IRQFD",
                source,
            })?;
        let interrupt = Interrupt::new(irqfd);
        let device = build(interrupt.clone())?;
        for (q, evt) in device.queue_events().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY),
                q as u32,
            )
            .map_err(|source| DeviceError::Kvm {
                op: "KVM_IOEVENTFD",
                source,
            })?;
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem.clone(),
            interrupt,
        )));
        mmio_bus.insert(transport.clone(), slot.base, MMIO_WINDOW)?;
        self.subscribers
            .push(Arc::new(Mutex::new(VirtioSubscriber(transport.clone()))));
        self.slots.push(slot);
        self.next_addr += MMIO_WINDOW;
        self.next_irq += 1;
        Ok(transport)
    }

    /// Creates the vsock device and attaches it (see
    /// [`MmioDeviceManager::attach_virtio_device`]).
    pub fn attach_vsock(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        mmio_bus: &mut Bus,
        cfg: &VsockConfig,
    ) -> Result<Arc<Mutex<MmioTransport<Vsock>>>, DeviceError> {
        let transport = self.attach_virtio_device(vm, mem, mmio_bus, |interrupt| {
            Ok(Vsock::new(cfg.guest_cid, &cfg.uds_path, interrupt)?)
        })?;
        let slot = self.slots.last().copied().expect("slot just allocated");
        tracing::debug!(base = slot.base, irq = slot.irq, cid = cfg.guest_cid, uds = %cfg.uds_path.display(), "vsock attached");
        Ok(transport)
    }

    /// Creates the virtio-net device on its tap and attaches it (see
    /// [`MmioDeviceManager::attach_virtio_device`]).
    pub fn attach_net(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        mmio_bus: &mut Bus,
        cfg: &NetConfig,
    ) -> Result<Arc<Mutex<MmioTransport<Net>>>, DeviceError> {
        let transport = self.attach_virtio_device(vm, mem, mmio_bus, |interrupt| {
            Ok(Net::new(&cfg.tap, cfg.mac, cfg.limits, interrupt)?)
        })?;
        let slot = self.slots.last().copied().expect("slot just allocated");
        tracing::debug!(base = slot.base, irq = slot.irq, tap = %cfg.tap, "virtio-net attached");
        Ok(transport)
    }

    /// Creates a virtio-pmem device describing the guest region
    /// `[start, start + size)` and attaches it (see
    /// [`MmioDeviceManager::attach_virtio_device`]). The region itself (the
    /// read-only memory slot) is the caller's.
    pub fn attach_pmem(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        mmio_bus: &mut Bus,
        start: u64,
        size: u64,
    ) -> Result<Arc<Mutex<MmioTransport<Pmem>>>, DeviceError> {
        let transport = self.attach_virtio_device(vm, mem, mmio_bus, |interrupt| {
            Pmem::new(start, size, interrupt).map_err(DeviceError::EventFd)
        })?;
        let slot = self.slots.last().copied().expect("slot just allocated");
        tracing::debug!(
            base = slot.base,
            irq = slot.irq,
            start,
            size,
            "virtio-pmem attached"
        );
        Ok(transport)
    }

    /// Creates the virtio-balloon device (free page reporting) and
    /// attaches it (see [`MmioDeviceManager::attach_virtio_device`]): it
    /// discards in `granule` blocks and publishes its counters to
    /// `stats_file` if given.
    pub fn attach_balloon(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        mmio_bus: &mut Bus,
        granule: u64,
        stats_file: Option<&std::path::Path>,
    ) -> Result<Arc<Mutex<MmioTransport<Balloon>>>, DeviceError> {
        let stats = stats_file
            .map(|path| {
                StatsFile::create(path).map_err(|source| DeviceError::BalloonStats {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        let transport = self.attach_virtio_device(vm, mem, mmio_bus, |interrupt| {
            let b = Balloon::new(interrupt)
                .map_err(DeviceError::EventFd)?
                .with_granule(granule);
            Ok(match stats {
                Some(f) => b.with_stats_file(f),
                None => b,
            })
        })?;
        let slot = self.slots.last().copied().expect("slot just allocated");
        tracing::debug!(base = slot.base, irq = slot.irq, "virtio-balloon attached");
        Ok(transport)
    }

    /// Where each attached device sits, in attach order.
    pub fn slots(&self) -> &[MmioSlot] {
        &self.slots
    }

    /// Declares every attached device on `cmdline` (`virtio_mmio.device=4K@<base>:<irq>`).
    pub fn declare_on(&self, cmdline: &mut Cmdline) -> Result<(), DeviceError> {
        for slot in &self.slots {
            cmdline
                .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(slot.base), slot.irq, None)
                .map_err(DeviceError::Cmdline)?;
        }
        Ok(())
    }

    /// Starts the device event loop thread (none when there are no devices);
    /// stopping happens when the handle drops.
    pub fn start(self) -> Result<Option<EventLoopHandle>, DeviceError> {
        if self.subscribers.is_empty() {
            return Ok(None);
        }
        event_loop::start(self.subscribers)
            .map(Some)
            .map_err(DeviceError::EventLoop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_use_linux_loader_format() {
        let mut m = MmioDeviceManager::new(0xd000_0000, 5);
        m.slots.push(MmioSlot {
            base: 0xd000_0000,
            irq: 5,
        });
        m.slots.push(MmioSlot {
            base: 0xd000_1000,
            irq: 6,
        });
        let mut c = Cmdline::new(256).unwrap();
        c.insert_str("console=ttyS0").unwrap();
        m.declare_on(&mut c).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
