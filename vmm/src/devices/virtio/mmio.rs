//! The virtio-mmio transport, register layout version 2 (virtio 1.x): the
//! driver discovers, negotiates and configures a device through a 4 KiB MMIO
//! window; queue notifications arrive as ioeventfds and interrupts leave as
//! irqfds, so neither involves the vCPU thread in device work.

use virtio_bindings::virtio_config as cfg;
use virtio_bindings::virtio_mmio as regs;
use virtio_queue::{Queue, QueueT};

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMemory;

/// Size of one device window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of the QueueNotify register (ioeventfds are registered here).
pub const QUEUE_NOTIFY: u64 = regs::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device configuration space.
pub const CONFIG_SPACE: u64 = regs::VIRTIO_MMIO_CONFIG as u64;

// Register offsets (virtio 1.x MMIO layout), as the bus hands them over.
const MAGIC_VALUE: u64 = regs::VIRTIO_MMIO_MAGIC_VALUE as u64;
const VERSION_REG: u64 = regs::VIRTIO_MMIO_VERSION as u64;
const DEVICE_ID: u64 = regs::VIRTIO_MMIO_DEVICE_ID as u64;
const VENDOR_ID: u64 = regs::VIRTIO_MMIO_VENDOR_ID as u64;
const DEVICE_FEATURES: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const DEVICE_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const DRIVER_FEATURES: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const DRIVER_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const QUEUE_SEL: u64 = regs::VIRTIO_MMIO_QUEUE_SEL as u64;
const QUEUE_NUM_MAX: u64 = regs::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const QUEUE_NUM: u64 = regs::VIRTIO_MMIO_QUEUE_NUM as u64;
const QUEUE_READY: u64 = regs::VIRTIO_MMIO_QUEUE_READY as u64;
const INTERRUPT_STATUS: u64 = regs::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const INTERRUPT_ACK: u64 = regs::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const STATUS: u64 = regs::VIRTIO_MMIO_STATUS as u64;
const QUEUE_DESC_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const QUEUE_DESC_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const QUEUE_AVAIL_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const QUEUE_AVAIL_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const QUEUE_USED_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const QUEUE_USED_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const CONFIG_GENERATION: u64 = regs::VIRTIO_MMIO_CONFIG_GENERATION as u64;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4f4c_4953; // "SILO"

/// Driver status bits (from virtio-bindings).
pub mod status {
    use super::cfg;
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = cfg::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = cfg::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = cfg::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = cfg::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = cfg::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up.
    pub const FAILED: u32 = cfg::VIRTIO_CONFIG_S_FAILED;
}

/// Transport state for one device.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    activated: bool,
    config_generation: u32,
}

fn new_queues<D: VirtioDevice>(device: &D) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&s| Queue::new(s).expect("queue sizes are powers of two"))
        .collect()
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a transport.
    pub fn new(device: D, mem: GuestMemory, interrupt: Interrupt) -> Self {
        let queues = new_queues(&device);
        Self {
            device,
            mem,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            activated: false,
            config_generation: 0,
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device behind the transport, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The driver status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (driver set DRIVER_OK with valid queues).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue setup is only legal between FEATURES_OK and DRIVER_OK.
        let configurable =
            self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0;
        if !configurable {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn features(&self) -> u64 {
        self.device.avail_features() | VIRTIO_F_VERSION_1
    }

    fn reset(&mut self) {
        self.device.reset();
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.activated = false;
        self.queues = new_queues(&self.device);
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, never removed, except by a reset.
        if value & self.status != self.status {
            crate::guest_fault!(
                old = self.status,
                new = value,
                "virtio driver cleared status bits; ignored"
            );
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 && self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            // A legacy driver: refuse FEATURES_OK so it fails cleanly.
            self.status = value & !status::FEATURES_OK;
            return;
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = &self.mem;
        // Only the queues of the negotiated features must be set up.
        let needed = self
            .device
            .queue_count(self.driver_features)
            .min(self.queues.len());
        if let Some(bad) = self.queues[..needed]
            .iter()
            .position(|q| !q.ready() || !q.is_valid(mem))
        {
            crate::guest_fault!(
                queue = bad,
                "virtio driver set DRIVER_OK with an invalid queue"
            );
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        let mut queues = std::mem::take(&mut self.queues);
        queues.truncate(needed);
        match self
            .device
            .activate(self.mem.clone(), queues, self.driver_features)
        {
            Ok(()) => self.activated = true,
            Err(e) => {
                crate::guest_fault!(error = %e, "virtio device activation failed");
                self.status |= status::DEVICE_NEEDS_RESET;
            }
        }
    }

    fn read_u32(&mut self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self
                .device
                .queue_max_sizes()
                .get(self.queue_sel as usize)
                .map_or(0, |&s| u32::from(s)),
            QUEUE_READY => match self.queues.get(self.queue_sel as usize) {
                Some(q) => u32::from(q.ready()),
                None => u32::from(self.activated),
            },
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(offset, "read of unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_u32(&mut self, offset: u64, v: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK == 0 {
                    let shift = match self.driver_features_sel {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    let offered = self.features();
                    let mask = 0xffff_ffffu64 << shift;
                    // Keep only features the device offered.
                    self.driver_features =
                        (self.driver_features & !mask) | ((u64::from(v) << shift) & offered & mask);
                }
            }
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                // Handled by ioeventfd in KVM; a write reaching here is harmless.
            }
            INTERRUPT_ACK => self.interrupt.ack(v),
            STATUS => self.set_status(v),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_AVAIL_LOW | QUEUE_AVAIL_HIGH
            | QUEUE_USED_LOW | QUEUE_USED_HIGH => {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = match offset {
                        QUEUE_DESC_LOW | QUEUE_AVAIL_LOW | QUEUE_USED_LOW => (Some(v), None),
                        _ => (None, Some(v)),
                    };
                    match offset {
                        QUEUE_DESC_LOW | QUEUE_DESC_HIGH => q.set_desc_table_address(lo, hi),
                        QUEUE_AVAIL_LOW | QUEUE_AVAIL_HIGH => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => tracing::debug!(offset, "write to unknown or read-only virtio-mmio register"),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        tracing::trace!(offset, len = data.len(), "virtio-mmio read");
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        tracing::trace!(offset, ?data, "virtio-mmio write");
        if offset < CONFIG_SPACE && data.len() == 4 && offset.is_multiple_of(4) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_u32(offset, v);
        }
        // Config space writes are ignored: vsock's config is read-only.
    }
}
