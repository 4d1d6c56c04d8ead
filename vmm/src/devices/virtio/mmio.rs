//! The virtio-mmio transport, register layout version 2 (virtio 1.x): the
//! driver discovers, negotiates and configures a device through a 4 KiB MMIO
//! window; queue notifications arrive as ioeventfds and interrupts leave as
//! irqfds, so neither involves the vCPU thread in device work.

use virtio_queue::{Queue, QueueT};

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMemory;

/// Size of one device window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of the QueueNotify register (ioeventfds are registered here).
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4f4c_4953; // "SILO"

/// Driver status bits.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up.
    pub const FAILED: u32 = 128;
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
            tracing::warn!(
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
        if let Some(bad) = self
            .queues
            .iter()
            .position(|q| !q.ready() || !q.is_valid(mem))
        {
            tracing::warn!(
                queue = bad,
                "virtio driver set DRIVER_OK with an invalid queue"
            );
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        let queues = std::mem::take(&mut self.queues);
        match self
            .device
            .activate(self.mem.clone(), queues, self.driver_features)
        {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!(error = %e, "virtio device activation failed");
                self.status |= status::DEVICE_NEEDS_RESET;
            }
        }
    }

    fn read_u32(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .device
                .queue_max_sizes()
                .get(self.queue_sel as usize)
                .map_or(0, |&s| u32::from(s)),
            0x44 => match self.queues.get(self.queue_sel as usize) {
                Some(q) => u32::from(q.ready()),
                None => u32::from(self.activated),
            },
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                tracing::debug!(offset, "read of unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_u32(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
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
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                // Handled by ioeventfd in KVM; a write reaching here is harmless.
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if offset & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !4 {
                        0x80 => q.set_desc_table_address(lo, hi),
                        0x90 => q.set_avail_ring_address(lo, hi),
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
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        tracing::trace!(offset, ?data, "virtio-mmio write");
        if offset < 0x100 && data.len() == 4 && offset.is_multiple_of(4) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_u32(offset, v);
        }
        // Config space writes are ignored: vsock's config is read-only.
    }
}
