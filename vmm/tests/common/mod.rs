//! A fake guest driver for the virtio device tests: a device behind its
//! virtio-mmio transport with the real device event loop, driven as Linux's
//! `virtio_mmio` driver drives it (register programming, feature
//! negotiation, split virtqueues laid out in guest memory, kicks through the
//! queue eventfds, which is what KVM's ioeventfds signal).

#![allow(dead_code)]

pub mod logs;

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use silo_vmm::devices::bus::BusDevice;
use silo_vmm::devices::virtio::mmio::MmioTransport;
use silo_vmm::devices::virtio::{Interrupt, VirtioDevice, VirtioSubscriber};
use silo_vmm::memory::GuestRam;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// The virtio-mmio registers the driver programs (offsets in the window).
pub mod reg {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const DEVICE_ID: u64 = 0x08;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    pub const QUEUE_AVAIL_LOW: u64 = 0x90;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x94;
    pub const QUEUE_USED_LOW: u64 = 0xa0;
    pub const QUEUE_USED_HIGH: u64 = 0xa4;
    pub const CONFIG: u64 = 0x100;
}

/// Where queue `q`'s descriptor table starts: 64 KiB per queue from 1 MiB,
/// with the available ring 4 KiB and the used ring 8 KiB above the table.
fn queue_base(q: usize) -> u64 {
    0x10_0000 + q as u64 * 0x1_0000
}

/// The driver's side of one split virtqueue: where its parts are in guest
/// memory and the indices the driver keeps.
pub struct DriverQueue {
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    /// The queue size the driver sets (descriptors, ring entries).
    pub size: u16,
    /// The available index the driver published last.
    pub avail_idx: u16,
    /// How many used entries the driver has read.
    pub used_seen: u16,
    /// The next descriptor to fill (descriptors are filled round-robin).
    pub next_desc: u16,
}

impl DriverQueue {
    /// Queue `q` of `size` entries, at its place in guest memory.
    pub fn new(q: usize, size: u16) -> Self {
        let base = queue_base(q);
        DriverQueue {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
        }
    }
}

/// A virtio device behind its MMIO transport, its queue eventfds, the
/// device event loop and guest memory, with one [`DriverQueue`] per queue
/// the device has.
pub struct MmioRig<D: VirtioDevice + 'static> {
    /// The transport (and the device behind it).
    pub dev: Arc<Mutex<MmioTransport<D>>>,
    /// Queue notification eventfds, in queue order.
    pub evts: Vec<EventFd>,
    /// The device event loop.
    pub manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// The driver's queues, in queue order.
    pub queues: Vec<DriverQueue>,
    // After the device and event loop: they hold views of this memory.
    /// Guest memory.
    pub mem: GuestRam,
}

impl<D: VirtioDevice + 'static> MmioRig<D> {
    /// Puts `device` behind a transport on `mem`, serves it with an event
    /// loop, and lays out each of its queues with `queue_size` entries.
    pub fn new(device: D, mem: GuestRam, interrupt: Interrupt, queue_size: u16) -> Self {
        let evts = device
            .queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        let queues = (0..device.queue_max_sizes().len())
            .map(|q| DriverQueue::new(q, queue_size))
            .collect();
        let dev = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem.clone(),
            interrupt,
        )));
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(VirtioSubscriber(dev.clone()))));
        MmioRig {
            dev,
            evts,
            manager,
            queues,
            mem,
        }
    }

    /// Writes the 32-bit register at `off`.
    pub fn w(&self, off: u64, v: u32) {
        self.dev.lock().unwrap().write(off, &v.to_le_bytes());
    }

    /// Reads the 32-bit register at `off`.
    pub fn r(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.lock().unwrap().read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// The start of probing: checks the magic value, the modern transport
    /// (version 2) and `device_id`, then resets the device and sets
    /// ACKNOWLEDGE and DRIVER.
    pub fn probe(&self, device_id: u32, what: &str) {
        assert_eq!(self.r(reg::MAGIC), 0x7472_6976, "magic");
        assert_eq!(self.r(reg::VERSION), 2, "modern virtio-mmio");
        assert_eq!(self.r(reg::DEVICE_ID), device_id, "{what} device id");
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, 1);
        self.w(reg::STATUS, 3);
    }

    /// Accepts VERSION_1 (feature bit 32) and nothing else, and checks that
    /// the device takes it (FEATURES_OK sticks).
    pub fn accept_version_1(&self) {
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, 1);
        self.w(reg::STATUS, 11);
        assert_eq!(self.r(reg::STATUS) & 8, 8, "FEATURES_OK accepted");
    }

    /// Selects queue `q`, checks the device offers at least its size, sets
    /// the size and the ring addresses, and marks it ready.
    pub fn setup_queue(&self, q: usize) {
        let queue = &self.queues[q];
        self.w(reg::QUEUE_SEL, q as u32);
        assert!(
            self.r(reg::QUEUE_NUM_MAX) >= u32::from(queue.size),
            "queue {q} exists with {} entries",
            queue.size
        );
        self.w(reg::QUEUE_NUM, u32::from(queue.size));
        for (low, high, addr) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, queue.desc),
            (reg::QUEUE_AVAIL_LOW, reg::QUEUE_AVAIL_HIGH, queue.avail),
            (reg::QUEUE_USED_LOW, reg::QUEUE_USED_HIGH, queue.used),
        ] {
            self.w(low, addr as u32);
            self.w(high, (addr >> 32) as u32);
        }
        self.w(reg::QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK and checks the device did not ask for a reset.
    pub fn driver_ok(&self) {
        self.w(reg::STATUS, 15);
        assert_eq!(self.r(reg::STATUS), 15, "driver OK, no NEEDS_RESET");
    }

    /// Forgets the driver's queue indices and zeroes every queue's
    /// descriptor table and rings, as a driver starting over does.
    pub fn clear_queues(&mut self) {
        for queue in &mut self.queues {
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(queue.desc))
                .unwrap();
            queue.avail_idx = 0;
            queue.used_seen = 0;
            queue.next_desc = 0;
        }
    }

    /// Writes descriptor `idx` of queue `q`.
    pub fn write_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.queues[q].desc + u64::from(idx) * 16;
        self.mem.write_obj(addr, GuestAddress(d)).unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// Publishes the chain at `head` in queue `q`'s available ring (no kick).
    pub fn make_available(&mut self, q: usize, head: u16) {
        let queue = &mut self.queues[q];
        let slot = queue.avail_idx % queue.size;
        self.mem
            .write_obj(head, GuestAddress(queue.avail + 4 + u64::from(slot) * 2))
            .unwrap();
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(queue.avail_idx, GuestAddress(queue.avail + 2))
            .unwrap();
    }

    /// Writes a chain of (address, length, device-writable) descriptors
    /// into queue `q`'s next free descriptors and makes it available (no
    /// kick); returns its head.
    pub fn push_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let (head, size) = (self.queues[q].next_desc, self.queues[q].size);
        for (i, &(addr, len, wo)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let next = (idx + 1) % size;
            let mut flags = if wo { 2u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= 1;
            }
            self.write_desc(q, idx, addr, len, flags, next);
        }
        self.queues[q].next_desc = (head + descs.len() as u16) % size;
        self.make_available(q, head);
        head
    }

    /// Notifies queue `q` and lets the event loop run.
    pub fn kick(&mut self, q: usize) {
        self.evts[q].write(1).unwrap();
        self.pump();
    }

    /// Runs the event loop until it finds nothing to do (20 rounds at most).
    pub fn pump(&mut self) {
        for _ in 0..20 {
            if self.manager.run_with_timeout(20).unwrap() == 0 {
                break;
            }
        }
    }

    /// Queue `q`'s used index as the device last wrote it.
    pub fn used_idx(&self, q: usize) -> u16 {
        let used = self.queues[q].used;
        self.mem.read_obj(GuestAddress(used + 2)).unwrap()
    }

    /// The used entries (head, length) queue `q` got since the last call.
    pub fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let idx = self.used_idx(q);
        let queue = &mut self.queues[q];
        let mut out = Vec::new();
        while queue.used_seen != idx {
            let slot = u64::from(queue.used_seen % queue.size);
            let at = queue.used + 4 + slot * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            queue.used_seen = queue.used_seen.wrapping_add(1);
        }
        out
    }
}
