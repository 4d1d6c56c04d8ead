//! The virtio-balloon device as a hostile guest drives it: virtio-mmio
//! register reads and writes (features with and without free page
//! reporting, two or three queues), descriptor tables and rings written
//! into guest RAM as the VMM maps it (anonymous, 2 MiB-aligned), reporting
//! chains of ranges mostly near 2 MiB blocks of RAM and sometimes anywhere
//! (outside RAM, overlapping, unaligned, huge), kicks through the queue
//! eventfds and the real device event loop.
//!
//! Findings: any panic; a discard that is not whole, 2 MiB-aligned 2 MiB
//! blocks (whole 4 KiB pages when the input picks `--small-pages` RAM)
//! wholly inside one guest RAM mapping (checked by the backend before it
//! calls the real `madvise`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use silo_vmm::devices::virtio::balloon::{Balloon, Discard, Madvise, DISCARD_ALIGN, PAGE_SIZE};
use silo_vmm::devices::virtio::Interrupt;
use silo_vmm::memory::{create_guest_memory, GuestRam};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use common::{Driver, Input};

/// Guest RAM in MiB (the smallest the VMM maps).
const RAM_MIB: u32 = 32;
const RAM: u64 = (RAM_MIB as u64) << 20;

/// Checks every discard against the RAM mappings, then really discards.
struct Checked {
    /// (host start, length) of each RAM region.
    regions: Vec<(u64, u64)>,
    /// The device's discard granule.
    granule: u64,
    inner: Madvise,
}

impl Discard for Checked {
    fn discard(&mut self, host: *mut u8, len: usize, shared: bool) -> std::io::Result<()> {
        let (h, l) = (host as u64, len as u64);
        assert!(!shared, "guest RAM is private");
        assert!(
            l > 0 && h % self.granule == 0 && l % self.granule == 0,
            "{h:#x}+{l:#x}"
        );
        assert!(
            self.regions.iter().any(|&(s, n)| h >= s && h + l <= s + n),
            "discard {h:#x}+{l:#x} outside guest RAM {:x?}",
            self.regions
        );
        self.inner.discard(host, len, shared)
    }
}

struct Rig {
    d: Driver<Balloon<Checked>>,
    // Dropped after the device.
    _ram: GuestRam,
}

impl Rig {
    /// A rig on huge-page RAM, or on 4 KiB pages (`small`).
    fn new(small: bool) -> Self {
        let ram = create_guest_memory(RAM_MIB).expect("guest RAM");
        let granule = if small {
            ram.use_small_pages().expect("MADV_NOHUGEPAGE");
            PAGE_SIZE
        } else {
            DISCARD_ALIGN
        };
        let mem = ram.memory().clone();
        let regions = mem.iter().map(|r| (r.as_ptr() as u64, r.len())).collect();
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let balloon = Balloon::with_discard(
            Checked {
                regions,
                granule,
                inner: Madvise,
            },
            interrupt.clone(),
        )
        .expect("balloon")
        .with_granule(granule);
        Rig {
            d: Driver::new(balloon, mem, interrupt),
            _ram: ram,
        }
    }

    /// Linux's probe: features (with reporting if `reporting`), queues.
    fn driver_init(&mut self, size: u16, reporting: bool) {
        let features = 1 << 32 | if reporting { 1 << 5 } else { 0 };
        self.d.init(features, if reporting { 3 } else { 2 }, size);
    }

    /// A reported range: mostly 2 MiB blocks of RAM, sometimes anything.
    fn range(inp: &mut Input<'_>) -> (u64, u32) {
        match inp.u8() % 6 {
            0 => (inp.u64(), inp.u32()),
            1 => (
                u64::from(inp.u32()) % (RAM + (4 << 20)),
                inp.u32() % (8 << 20),
            ),
            2 => (
                u64::from(inp.u8() % 20) << 20,
                (u32::from(inp.u8() % 8) + 1) << 20,
            ),
            _ => (
                u64::from(inp.u8() % 18) << 21,
                (u32::from(inp.u8() % 3) + 1) << 21,
            ),
        }
    }

    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 10 {
            0 => self.d.reg_write(inp),
            1 => self.d.any_read(inp),
            2 => self.d.any_write(inp),
            3 => {
                let q = usize::from(inp.u8() % 3);
                let (idx, (addr, len)) = (inp.u16(), Self::range(inp));
                let (flags, next) = (inp.u16(), inp.u16());
                self.d.write_desc(q, idx, addr, len, flags, next);
            }
            4 => {
                let q = usize::from(inp.u8() % 3);
                let head = inp.u16();
                self.d.publish(q, head);
            }
            5 => {
                // A well-formed report of up to 40 ranges, published, kicked.
                let n = u16::from(inp.u8() % 40) + 1;
                let first = u16::from(inp.u8());
                for i in 0..n {
                    let (addr, len) = Self::range(inp);
                    let flags = if i + 1 < n { 3 } else { 2 };
                    let idx = first.wrapping_add(i);
                    self.d
                        .write_desc(2, idx, addr, len, flags, idx.wrapping_add(1));
                }
                self.d.publish(2, first);
                self.d.kick(2);
            }
            6 => {
                let q = usize::from(inp.u8() % 3);
                self.d.kick(q);
            }
            7 => {
                // The guest writes into its RAM (touching pages).
                let at = u64::from(inp.u32()) % RAM;
                let n = usize::from(inp.u8());
                let data = inp.bytes(n).to_vec();
                let _ = self.d.mem.write_slice(&data, GuestAddress(at));
            }
            8 => {
                let size = 1u16 << (inp.u8() % 9);
                let reporting = inp.u8() % 4 != 0;
                self.driver_init(size, reporting);
            }
            _ => self.d.pump(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let first = inp.u8();
    let mut rig = Rig::new(first & 2 == 2);
    if first & 1 == 1 {
        rig.driver_init(128, true);
    }
    let mut steps = 0;
    while !inp.empty() && steps < 256 {
        rig.step(&mut inp);
        steps += 1;
    }
    rig.d.pump();
});
