//! The virtio-balloon device driven as Linux's `virtio_balloon` drives it
//! over virtio-mmio (feature negotiation, two or three queues, a reporting
//! queue with free 2 MiB blocks), on real guest RAM (anonymous, 2 MiB
//! aligned, as the VMM maps it): reported blocks must leave the host's
//! memory (`mincore`) and read back as zeroes, everything else must keep its
//! contents; then hostile reporting chains, each followed by a good report.

mod common;

use std::ops::{Deref, DerefMut};

use common::MmioRig;
use silo_vmm::devices::virtio::balloon::stats_file::{self, StatsFile};
use silo_vmm::devices::virtio::balloon::{
    Balloon, BalloonStats, DISCARD_ALIGN, MAX_RANGES_PER_CHAIN, PAGE_SIZE,
    VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
};
use silo_vmm::devices::virtio::Interrupt;
use silo_vmm::memory::create_guest_memory;
use silo_vmm::seccomp::{filter, ThreadKind};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 128;
const RAM_MIB: u32 = 64;
const MIB: u64 = 1 << 20;
const REPORTING: usize = 2;

struct Rig {
    mmio: MmioRig<Balloon>,
}

impl Deref for Rig {
    type Target = MmioRig<Balloon>;
    fn deref(&self) -> &MmioRig<Balloon> {
        &self.mmio
    }
}

impl DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut MmioRig<Balloon> {
        &mut self.mmio
    }
}

impl Rig {
    /// A balloon on 64 MiB of guest RAM, probed as Linux probes it, with
    /// free page reporting negotiated if `reporting`.
    fn new(reporting: bool) -> Self {
        Self::with(reporting, DISCARD_ALIGN, None)
    }

    /// A balloon discarding in `granule` blocks (guest RAM on 4 KiB host
    /// pages, as `--small-pages` maps it, when `granule` is 4 KiB),
    /// publishing to `stats` if given.
    fn with(reporting: bool, granule: u64, stats: Option<StatsFile>) -> Self {
        let mem = create_guest_memory(RAM_MIB).unwrap();
        if granule == PAGE_SIZE {
            mem.use_small_pages().unwrap();
        }
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut balloon = Balloon::new(interrupt.clone())
            .unwrap()
            .with_granule(granule);
        if let Some(f) = stats {
            balloon = balloon.with_stats_file(f);
        }
        let mut rig = Rig {
            mmio: MmioRig::new(balloon, mem, interrupt, QSIZE),
        };
        rig.driver_init(reporting);
        rig
    }

    /// virtio_mmio + virtio_balloon's probe: reset, ACKNOWLEDGE, DRIVER,
    /// the device's features, the driver's (VERSION_1, and REPORTING if
    /// asked), FEATURES_OK, inflate and deflate queues and (with
    /// reporting) the reporting queue as queue 2 (virtio-mmio numbers only
    /// the named queues), a read of `num_pages`, DRIVER_OK.
    fn driver_init(&mut self, reporting: bool) {
        self.probe(5, "balloon");
        self.w(0x14, 0);
        assert_eq!(
            u64::from(self.r(0x10)),
            VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
            "free page reporting offered, nothing else in bits 0-31"
        );
        self.w(0x14, 1);
        assert_eq!(self.r(0x10), 1, "VERSION_1");
        self.w(0x24, 0);
        self.w(0x20, if reporting { 1 << 5 } else { 0 });
        self.accept_version_1();
        let queues = if reporting { 3 } else { 2 };
        for q in 0..queues {
            self.setup_queue(q);
        }
        self.w(0x30, 3);
        assert_eq!(self.r(0x34), 0, "no fourth queue");
        assert_eq!(
            self.r(0x100),
            0,
            "num_pages: the device never asks for pages"
        );
        // Linux writes `actual` when it (never here) changes the balloon.
        self.w(0x104, 77);
        assert_eq!(self.r(0x104), 0, "config writes are ignored");
        self.driver_ok();
        let t = self.dev.lock().unwrap();
        assert!(t.is_activated());
        assert_eq!(t.device().reporting(), reporting);
    }

    fn stats(&self) -> BalloonStats {
        self.dev.lock().unwrap().device().stats()
    }

    /// Reports `ranges` as one chain (device-writable descriptors, as
    /// Linux's `virtqueue_add_inbuf`), kicks, and checks the one used entry
    /// (head, length 0).
    fn report(&mut self, ranges: &[(u64, u32)]) {
        let descs: Vec<(u64, u32, bool)> = ranges.iter().map(|&(a, l)| (a, l, true)).collect();
        let head = self.push_chain(REPORTING, &descs);
        self.kick(REPORTING);
        assert_eq!(self.used(REPORTING), vec![(u32::from(head), 0)]);
    }

    /// Fills `[addr, addr + len)` with a non-zero pattern, page by page.
    fn fill(&self, addr: u64, len: u64) {
        for page in (addr..addr + len).step_by(4096) {
            self.mem
                .write_slice(&[0x5a; 4096], GuestAddress(page))
                .unwrap();
        }
    }

    /// Host pages of `[addr, addr + len)` resident in memory (`mincore`).
    fn resident(&self, addr: u64, len: u64) -> usize {
        let host = self.mem.get_host_address(GuestAddress(addr)).unwrap();
        let mut vec = vec![0u8; (len / 4096) as usize];
        // SAFETY: `host..host + len` lies inside the guest RAM mapping the
        // rig owns; mincore only reads the page tables and writes `vec`,
        // which has one byte per page.
        let r = unsafe { libc::mincore(host.cast(), len as usize, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// Whether every byte of `[addr, addr + len)` is `v`.
    fn all(&self, addr: u64, len: u64, v: u8) -> bool {
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().all(|&b| b == v)
    }
}

#[test]
fn linux_probe_with_and_without_free_page_reporting() {
    let rig = Rig::new(true);
    assert_eq!(rig.stats(), BalloonStats::default());
    // Without reporting, two queues are all Linux sets up: the transport
    // must activate the device anyway (it asked for a reset before).
    let rig = Rig::new(false);
    assert!(!rig.dev.lock().unwrap().device().reporting());
}

#[test]
fn reported_blocks_leave_host_memory_and_read_as_zero() {
    let mut rig = Rig::new(true);
    rig.fill(8 * MIB, 8 * MIB);
    assert_eq!(
        rig.resident(8 * MIB, 8 * MIB),
        2048,
        "filled pages resident"
    );
    // Two 2 MiB blocks and one 4 MiB block (order 9 and 10), one chain.
    rig.report(&[(8 * MIB, 2 << 20), (12 * MIB, 4 << 20)]);
    let s = rig.stats();
    assert_eq!((s.reports, s.ranges, s.bad_ranges), (1, 2, 0));
    assert_eq!(s.discarded_bytes, 6 * MIB);
    assert_eq!(rig.resident(8 * MIB, 2 * MIB), 0, "first block given back");
    assert_eq!(
        rig.resident(12 * MIB, 4 * MIB),
        0,
        "second block given back"
    );
    assert_eq!(
        rig.resident(10 * MIB, 2 * MIB),
        512,
        "unreported block kept"
    );
    assert!(rig.all(10 * MIB, 2 * MIB, 0x5a), "unreported block intact");
    assert!(
        rig.all(8 * MIB, 2 * MIB, 0),
        "a given-back block reads as zeroes"
    );
    // The guest uses the block again: it is memory like any other.
    rig.fill(8 * MIB, 2 * MIB);
    assert!(rig.all(8 * MIB, 2 * MIB, 0x5a));
}

#[test]
fn parts_of_huge_pages_are_kept_so_no_huge_page_is_split() {
    let mut rig = Rig::new(true);
    rig.fill(20 * MIB, 8 * MIB);
    // One 4 KiB page, and 3 MiB from 21 MiB: only the whole block 22-24
    // MiB may go; the rest stays (a discard there would split a host huge
    // page that still backs memory the guest uses).
    rig.report(&[(20 * MIB, 4096), (21 * MIB, 3 << 20)]);
    let s = rig.stats();
    assert_eq!(s.discarded_bytes, 2 * MIB);
    assert_eq!(s.kept_bytes, 4096 + MIB);
    assert!(rig.all(20 * MIB, 2 * MIB, 0x5a));
    assert!(rig.all(22 * MIB, 2 * MIB, 0));
    assert!(rig.all(24 * MIB, 4 * MIB, 0x5a));
}

#[test]
fn hostile_reports_are_refused_and_the_device_keeps_serving() {
    hostile_reports(DISCARD_ALIGN);
}

#[test]
fn hostile_reports_on_small_pages_are_refused_and_the_device_keeps_serving() {
    hostile_reports(PAGE_SIZE);
}

/// Each hostile chain is refused without touching guest memory, and the
/// next good report is served, with the device discarding in `granule`.
fn hostile_reports(granule: u64) {
    let mut rig = Rig::with(true, granule, None);
    let ram_end = u64::from(RAM_MIB) * MIB;
    rig.fill(30 * MIB, 4 * MIB);
    let cases: Vec<(&str, Vec<(u64, u32)>)> = vec![
        ("outside RAM", vec![(ram_end, 2 << 20)]),
        ("far outside RAM", vec![(1 << 40, 2 << 20)]),
        ("straddling the end of RAM", vec![(ram_end - MIB, 2 << 20)]),
        ("in the MMIO gap", vec![(0xd000_0000, 2 << 20)]),
        ("unaligned address", vec![(30 * MIB + 1, 2 << 20)]),
        ("unaligned length", vec![(30 * MIB, (2 << 20) + 1)]),
        ("zero length", vec![(30 * MIB, 0)]),
        ("huge length", vec![(30 * MIB, u32::MAX)]),
        ("huge page-aligned length", vec![(0, 0xffff_f000)]),
        ("address overflow", vec![(u64::MAX - 4095, 4096 * 2)]),
    ];
    for (what, ranges) in &cases {
        let before = rig.stats();
        rig.report(ranges);
        let s = rig.stats();
        assert_eq!(s.bad_ranges, before.bad_ranges + 1, "{what}: refused");
        assert_eq!(
            s.discarded_bytes, before.discarded_bytes,
            "{what}: nothing discarded"
        );
        assert!(
            rig.all(30 * MIB, 4 * MIB, 0x5a),
            "{what}: guest memory intact"
        );
        // A good report right after is served.
        rig.fill(40 * MIB, 2 * MIB);
        rig.report(&[(40 * MIB, 2 << 20)]);
        assert_eq!(
            rig.stats().discarded_bytes,
            before.discarded_bytes + 2 * MIB,
            "{what}: next report"
        );
        assert_eq!(rig.resident(40 * MIB, 2 * MIB), 0);
    }
    // Overlapping ranges in one chain: each is discarded (idempotent).
    let before = rig.stats();
    rig.report(&[
        (30 * MIB, 4 << 20),
        (32 * MIB, 2 << 20),
        (30 * MIB, 4 << 20),
    ]);
    assert_eq!(rig.stats().ranges, before.ranges + 3);
    assert!(rig.all(30 * MIB, 4 * MIB, 0));
    // A chain longer than Linux ever sends: the excess is skipped.
    let before = rig.stats();
    let many: Vec<(u64, u32)> = (0..100).map(|_| (44 * MIB, 2 << 20)).collect();
    rig.report(&many);
    let s = rig.stats();
    assert_eq!(s.ranges - before.ranges, MAX_RANGES_PER_CHAIN as u64);
    assert_eq!(
        s.skipped_ranges - before.skipped_ranges,
        100 - MAX_RANGES_PER_CHAIN as u64
    );
}

#[test]
fn malformed_chains_get_a_used_entry_and_the_queue_goes_on() {
    let mut rig = Rig::new(true);
    // A descriptor that chains to itself: the chain ends (virtio-queue's
    // TTL), the head gets its used entry.
    rig.write_desc(REPORTING, 0, 50 * MIB, 2 << 20, 1 | 2, 0);
    rig.queues[REPORTING].next_desc = 1;
    rig.make_available(REPORTING, 0);
    rig.kick(REPORTING);
    assert_eq!(rig.used(REPORTING).len(), 1);
    // A head index past the queue size: no chain, nothing used, no panic.
    rig.make_available(REPORTING, QSIZE + 5);
    rig.kick(REPORTING);
    rig.fill(52 * MIB, 2 * MIB);
    let before = rig.stats().discarded_bytes;
    // Chains on inflate and deflate are returned unused.
    let h = rig.push_chain(0, &[(52 * MIB, 4096, false)]);
    rig.kick(0);
    assert_eq!(rig.used(0), vec![(u32::from(h), 0)]);
    let h = rig.push_chain(1, &[(52 * MIB, 4096, false)]);
    rig.kick(1);
    assert_eq!(rig.used(1), vec![(u32::from(h), 0)]);
    assert_eq!(rig.stats().ignored_chains, 2);
    assert!(rig.all(52 * MIB, 2 * MIB, 0x5a), "inflate does not discard");
    assert_eq!(rig.stats().discarded_bytes, before);
}

#[test]
fn a_driver_reset_stops_the_device_and_a_new_probe_starts_it() {
    let mut rig = Rig::new(true);
    rig.w(0x70, 0);
    assert!(!rig.dev.lock().unwrap().is_activated());
    rig.clear_queues();
    rig.driver_init(true);
    rig.fill(8 * MIB, 2 * MIB);
    rig.report(&[(8 * MIB, 2 << 20)]);
    assert_eq!(rig.resident(8 * MIB, 2 * MIB), 0);
}

/// Serving reports (madvise, the used ring, the interrupt) passes the
/// devices thread's seccomp filter; a violation would kill this process.
#[test]
fn reports_pass_the_devices_seccomp_filter() {
    let mut rig = Rig::new(true);
    rig.fill(8 * MIB, 4 * MIB);
    let prog = filter(ThreadKind::Devices, std::process::id() as libc::pid_t).unwrap();
    let rig = std::thread::spawn(move || {
        seccompiler::apply_filter(&prog).unwrap();
        rig.report(&[(8 * MIB, 2 << 20), (10 * MIB, 2 << 20)]);
        rig.report(&[(1 << 40, 2 << 20)]);
        rig
    })
    .join()
    .unwrap();
    assert_eq!(rig.stats().discarded_bytes, 4 * MIB);
    assert_eq!(rig.resident(8 * MIB, 4 * MIB), 0);
}

#[test]
fn on_small_pages_every_reported_4k_page_leaves_host_memory() {
    let mut rig = Rig::with(true, PAGE_SIZE, None);
    assert_eq!(rig.dev.lock().unwrap().device().granule(), PAGE_SIZE);
    rig.fill(20 * MIB, 4 * MIB);
    // One 4 KiB page, 12 KiB at an odd page, and 1 MiB + 4 KiB straddling
    // the 2 MiB boundary at 22 MiB: all of it goes, nothing else does.
    rig.report(&[
        (20 * MIB, 4096),
        (20 * MIB + 5 * 4096, 3 * 4096),
        (22 * MIB - 512 * 1024, (1 << 20) + 4096),
    ]);
    let s = rig.stats();
    let given = 4096 + 3 * 4096 + MIB + 4096;
    assert_eq!((s.ranges, s.discards, s.kept_bytes), (3, 3, 0));
    assert_eq!(s.discarded_bytes, given);
    assert_eq!(s.pages_reported, given / 4096);
    assert_eq!(
        rig.resident(20 * MIB, 4 * MIB) as u64,
        (4 * MIB - given) / 4096
    );
    assert!(rig.all(20 * MIB, 4096, 0));
    assert!(
        rig.all(20 * MIB + 4096, 4 * 4096, 0x5a),
        "pages between kept"
    );
    assert!(rig.all(20 * MIB + 5 * 4096, 3 * 4096, 0));
    assert!(rig.all(20 * MIB + 8 * 4096, 2 * MIB - 512 * 1024 - 8 * 4096, 0x5a));
    assert!(rig.all(22 * MIB - 512 * 1024, MIB + 4096, 0));
    assert!(rig.all(22 * MIB + 512 * 1024 + 4096, 1536 * 1024 - 4096, 0x5a));
}

/// The counters reach the stats file after every batch, under the devices
/// thread's seccomp filter (publishing is stores into a shared mapping,
/// no system call), and read back as the daemon reads them.
#[test]
fn counters_are_published_to_the_stats_file_under_the_devices_filter() {
    let dir = std::env::temp_dir().join(format!("silo-balloon-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("balloon.stats");
    let file = StatsFile::create(&path).unwrap();
    let read = || stats_file::decode(&std::fs::read(&path).unwrap()).map(|c| c.to_words());
    assert_eq!(read(), Some([0; 10]), "published at creation");
    let mut rig = Rig::with(true, DISCARD_ALIGN, Some(file));
    rig.fill(8 * MIB, 4 * MIB);
    let prog = filter(ThreadKind::Devices, std::process::id() as libc::pid_t).unwrap();
    let rig = std::thread::spawn(move || {
        seccompiler::apply_filter(&prog).unwrap();
        rig.report(&[(8 * MIB, 2 << 20), (10 * MIB + 4096, 4096)]);
        rig.report(&[(1 << 40, 2 << 20)]);
        rig
    })
    .join()
    .unwrap();
    let s = rig.stats();
    let want = [
        s.reports,
        s.ranges,
        s.pages_reported,
        s.discards,
        s.discarded_bytes,
        s.kept_bytes,
        s.bad_ranges,
        s.skipped_ranges,
        s.discard_errors,
        s.ignored_chains,
    ];
    assert_eq!(want, [2, 2, 513, 1, 2 * MIB, 4096, 1, 0, 0, 0]);
    assert_eq!(read(), Some(want));
    drop(rig);
    std::fs::remove_dir_all(&dir).unwrap();
}
