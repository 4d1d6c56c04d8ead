//! What the virtio-mmio fuzz targets share: the guest memory and queue
//! layout they drive, the input reader, writing descriptors and
//! available-ring entries into guest memory, and the [`Driver`].

#![allow(dead_code)]

mod driver;

pub use driver::Driver;

use silo_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// Guest memory: 1 MiB (pages are only touched where the input writes).
pub const MEM: u64 = 1 << 20;

fn qbase(q: usize) -> u64 {
    0x1_0000 + q as u64 * 0x1_0000
}
/// Queue `q`'s descriptor table.
pub fn desc_addr(q: usize) -> u64 {
    qbase(q)
}
/// Queue `q`'s available ring.
pub fn avail_addr(q: usize) -> u64 {
    qbase(q) + 0x1000
}
/// Queue `q`'s used ring.
pub fn used_addr(q: usize) -> u64 {
    qbase(q) + 0x2000
}

/// Publishes descriptor `head` on queue `q`'s available ring, whose index
/// the driver keeps in `avail_idx`.
pub fn publish(mem: &GuestMemory, avail_idx: &mut u16, q: usize, head: u16) {
    let slot = u64::from(*avail_idx % 256);
    let _ = mem.write_obj(head, GuestAddress(avail_addr(q) + 4 + slot * 2));
    *avail_idx = avail_idx.wrapping_add(1);
    let _ = mem.write_obj(*avail_idx, GuestAddress(avail_addr(q) + 2));
}

/// Writes descriptor `idx` of queue `q`.
pub fn write_desc(
    mem: &GuestMemory,
    q: usize,
    idx: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let d = desc_addr(q) + u64::from(idx % 256) * 16;
    let _ = mem.write_obj(addr, GuestAddress(d));
    let _ = mem.write_obj(len, GuestAddress(d + 8));
    let _ = mem.write_obj(flags, GuestAddress(d + 12));
    let _ = mem.write_obj(next, GuestAddress(d + 14));
}

/// Reads the input as a stream of small integers; zeros once exhausted.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// An address mostly inside guest memory, sometimes anywhere.
    pub fn addr(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => self.u64(),
            _ => u64::from(self.u32()) % MEM,
        }
    }
}
