//! The driver side every virtio-mmio target shares: a device behind the
//! real MMIO transport and device event loop, register access, Linux's
//! probe sequence, descriptors and available rings in guest memory, queue
//! notifications.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use silo_vmm::devices::bus::BusDevice;
use silo_vmm::devices::virtio::mmio::MmioTransport;
use silo_vmm::devices::virtio::{Interrupt, VirtioDevice, VirtioSubscriber};
use silo_vmm::memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::{avail_addr, desc_addr, used_addr, Input};

/// A device on its transport, served by its own event loop, and the
/// driver's state (each queue's available index).
pub struct Driver<D: VirtioDevice + 'static> {
    /// The transport with the device behind it.
    pub dev: Arc<Mutex<MmioTransport<D>>>,
    evts: Vec<EventFd>,
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// Guest memory as the device sees it.
    pub mem: GuestMemory,
    avail_idx: Vec<u16>,
}

impl<D: VirtioDevice + 'static> Driver<D> {
    /// Puts `device` (raising `interrupt`) behind a transport on `mem` and
    /// subscribes it to a new event loop.
    pub fn new(device: D, mem: GuestMemory, interrupt: Interrupt) -> Self {
        let evts = device
            .queue_events()
            .iter()
            .map(|e| e.try_clone().expect("eventfd clone"))
            .collect::<Vec<_>>();
        let queues = evts.len();
        let dev = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem.clone(),
            interrupt,
        )));
        let mut manager =
            EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().expect("epoll");
        manager.add_subscriber(Arc::new(Mutex::new(VirtioSubscriber(dev.clone()))));
        Driver {
            dev,
            evts,
            manager,
            mem,
            avail_idx: vec![0; queues],
        }
    }

    /// Writes register `off` (32 bits).
    pub fn w(&self, off: u64, v: u32) {
        self.dev.lock().unwrap().write(off, &v.to_le_bytes());
    }

    /// The Linux driver's probe: reset, ACKNOWLEDGE and DRIVER, `features`
    /// (both words), FEATURES_OK, the first `queues` queues of `size` at
    /// fixed places, DRIVER_OK.
    pub fn init(&mut self, features: u64, queues: usize, size: u16) {
        self.w(0x70, 0);
        self.w(0x70, 1);
        self.w(0x70, 3);
        self.w(0x24, 0);
        self.w(0x20, features as u32);
        self.w(0x24, 1);
        self.w(0x20, (features >> 32) as u32);
        self.w(0x70, 11);
        for q in 0..queues {
            self.w(0x30, q as u32);
            self.w(0x38, u32::from(size));
            self.w(0x80, desc_addr(q) as u32);
            self.w(0x84, 0);
            self.w(0x90, avail_addr(q) as u32);
            self.w(0x94, 0);
            self.w(0xa0, used_addr(q) as u32);
            self.w(0xa4, 0);
            self.w(0x44, 1);
        }
        self.w(0x70, 15);
        self.avail_idx.iter_mut().for_each(|i| *i = 0);
    }

    /// A 32-bit write of an input value to an input register.
    pub fn reg_write(&self, inp: &mut Input<'_>) {
        let off = u64::from(inp.u8()) * 4 % 0x110;
        let v = inp.u32();
        self.w(off, v);
    }

    /// A read of 1, 2, 4 or 8 bytes at any offset of the window.
    pub fn any_read(&self, inp: &mut Input<'_>) {
        let off = u64::from(inp.u16() % 0x1000);
        let len = [1usize, 2, 4, 8][usize::from(inp.u8() % 4)];
        let mut b = [0u8; 8];
        self.dev.lock().unwrap().read(off, &mut b[..len]);
    }

    /// A write of 0 to 8 input bytes at any offset of the window.
    pub fn any_write(&self, inp: &mut Input<'_>) {
        let off = u64::from(inp.u16() % 0x1000);
        let n = usize::from(inp.u8() % 9);
        let data = inp.bytes(n).to_vec();
        self.dev.lock().unwrap().write(off, &data);
    }

    /// Writes descriptor `idx` of queue `q`.
    pub fn write_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        super::write_desc(&self.mem, q, idx, addr, len, flags, next);
    }

    /// Publishes descriptor `head` on queue `q`'s available ring.
    pub fn publish(&mut self, q: usize, head: u16) {
        super::publish(&self.mem, &mut self.avail_idx[q], q, head);
    }

    /// Runs the event loop until it has nothing ready (at most 8 rounds).
    pub fn pump(&mut self) {
        for _ in 0..8 {
            match self.manager.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Runs the event loop once, waiting up to `ms` (a timer's turn).
    pub fn run_for(&mut self, ms: i32) {
        let _ = self.manager.run_with_timeout(ms);
    }

    /// Notifies queue `q` (its eventfd, as KVM's ioeventfd would) and pumps.
    pub fn kick(&mut self, q: usize) {
        let _ = self.evts[q].write(1);
        self.pump();
    }
}
