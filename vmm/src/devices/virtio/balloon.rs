//! The virtio-balloon device (id 5) with free page reporting: pages the
//! guest frees go back to the host.
//!
//! The device offers `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING` (and
//! `VIRTIO_F_VERSION_1`), nothing else: no statistics queue, no free page
//! hinting, no page poisoning. Linux's driver then sets up three queues
//! (inflate, deflate, reporting: virtio-mmio numbers only the queues of
//! negotiated features, so reporting is queue 2), or two without the
//! feature ([`VirtioDevice::queue_count`]). The device never asks for
//! inflation (`num_pages` stays 0): a chain on the inflate or deflate queue
//! is returned unused and counted, never acted on.
//!
//! **Free page reporting.** Linux's page reporting hands the driver free
//! buddy blocks of at least `page_reporting_order` (on x86_64 the pageblock
//! order: 2 MiB, naturally aligned), up to 32 per chain, each one
//! descriptor (guest physical address, length). The device gives each
//! range back to the host with `madvise`: `MADV_DONTNEED` on silo's
//! private anonymous guest RAM (the next guest touch faults in a zeroed
//! page), `MADV_REMOVE` were the region shared. Only whole
//! [`DISCARD_ALIGN`] (2 MiB) blocks at 2 MiB-aligned host addresses are
//! discarded, so a transparent huge page backing guest memory is dropped
//! whole or not at all, never split: what the guest still uses keeps its
//! huge pages, and a range refaulted later gets a fresh one. The rest of an
//! unaligned range is kept and counted. A VMM started with `--small-pages`
//! backs guest RAM with 4 KiB host pages (`MADV_NOHUGEPAGE`, see
//! `memory::use_small_pages`): there is no huge page to keep whole, so its
//! balloon discards every whole 4 KiB page of a range
//! ([`Balloon::with_granule`]).
//!
//! **Counters** ([`BalloonStats`]) live on the device and, with
//! `--balloon-stats-file`, are published after every batch to a file the
//! daemon reads ([`stats_file`]).
//!
//! **Hostile chains.** A range is discarded only if it is 4 KiB-aligned,
//! non-empty, a multiple of 4 KiB and wholly inside one RAM region (never a
//! pmem image or any other mapping); anything else is counted and skipped.
//! A chain is never read or written (the addresses are the message), gets a
//! used entry of length 0, and at most [`MAX_RANGES_PER_CHAIN`] of its
//! descriptors are looked at; at most [`MAX_CHAINS_PER_EVENT`] chains are
//! served per event before the device yields the thread (it re-kicks
//! itself for the rest). Discarding a range the guest still uses only
//! zeroes that guest's own memory: the guest can hurt nothing but itself.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{
    check_activation, read_config_space, ActivateError, Interrupt, VirtioDevice,
};

pub mod stats_file;
use crate::memory::GuestMemory;

/// Virtio device id of the balloon.
pub const VIRTIO_ID_BALLOON: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
/// `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING` (feature bit 5) as a mask.
pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u64 = 1 << 5;
/// Size of each queue (Linux needs at least 32 on the reporting queue).
pub const QUEUE_SIZE: u16 = 128;
/// Size of the configuration space: `le32 num_pages; le32 actual;`.
pub const CONFIG_SIZE: usize = 8;
/// Granularity of what is given back: a host huge page.
pub const DISCARD_ALIGN: u64 = 2 << 20;
/// Smallest page of a reported range's alignment and length.
pub const PAGE_SIZE: u64 = 4096;
/// Descriptors of one reporting chain looked at (Linux sends at most 32).
pub const MAX_RANGES_PER_CHAIN: usize = 64;
/// Chains served per queue per event before the device yields the thread.
pub const MAX_CHAINS_PER_EVENT: usize = 64;

/// Queue index of inflate.
pub const INFLATE_QUEUE: usize = 0;
/// Queue index of deflate.
pub const DEFLATE_QUEUE: usize = 1;
/// Queue index of reporting (when negotiated).
pub const REPORTING_QUEUE: usize = 2;

/// What the device did, for its counters (the layout the daemon reads).
pub use silo_vmm_abi::balloon_stats::BalloonCounters as BalloonStats;

/// Why a reported range was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    /// Address or length not a multiple of 4 KiB, or zero length.
    #[error("range {addr:#x}+{len:#x} is empty or not page-aligned")]
    Unaligned {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The range is not wholly inside one RAM region.
    #[error("range {addr:#x}+{len:#x} is not inside guest RAM")]
    OutsideRam {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
}

/// Gives pages back to the host: the VMM's real backend calls `madvise`;
/// tests and the fuzzer may record instead.
pub trait Discard: Send {
    /// Discards `len` bytes at host address `host` (2 MiB-aligned, a
    /// multiple of 2 MiB, inside a mapping of guest RAM); `shared` says the
    /// mapping is `MAP_SHARED` (then `MADV_REMOVE`).
    fn discard(&mut self, host: *mut u8, len: usize, shared: bool) -> std::io::Result<()>;
}

/// The real backend: `madvise(MADV_DONTNEED)` on private memory,
/// `madvise(MADV_REMOVE)` on shared memory.
#[derive(Debug, Default)]
pub struct Madvise;

impl Discard for Madvise {
    fn discard(&mut self, host: *mut u8, len: usize, shared: bool) -> std::io::Result<()> {
        let advice = if shared {
            libc::MADV_REMOVE
        } else {
            libc::MADV_DONTNEED
        };
        // SAFETY: `balloon::discard_range` passes only a range wholly inside
        // one guest RAM mapping that the device's `GuestMemory` keeps mapped;
        // madvise changes the range's contents (to zeroes), never the
        // mapping, so no Rust reference into guest memory is invalidated
        // (guest memory is only ever accessed through volatile copies).
        let r = unsafe { libc::madvise(host.cast(), len, advice) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The virtio-balloon device; `D` gives pages back ([`Madvise`]).
pub struct Balloon<D: Discard = Madvise> {
    discard: D,
    interrupt: Interrupt,
    queue_evts: [EventFd; 3],
    mem: Option<GuestMemory>,
    queues: Vec<Queue>,
    reporting: bool,
    stats: BalloonStats,
    granule: u64,
    sink: Option<stats_file::StatsFile>,
}

impl Balloon<Madvise> {
    /// A balloon that gives reported pages back with `madvise`.
    pub fn new(interrupt: Interrupt) -> std::io::Result<Self> {
        Self::with_discard(Madvise, interrupt)
    }
}

impl<D: Discard> Balloon<D> {
    /// A balloon with its own discard backend.
    pub fn with_discard(discard: D, interrupt: Interrupt) -> std::io::Result<Self> {
        Ok(Self {
            discard,
            interrupt,
            queue_evts: [
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            ],
            mem: None,
            queues: Vec::new(),
            reporting: false,
            stats: BalloonStats::default(),
            granule: DISCARD_ALIGN,
            sink: None,
        })
    }

    /// Discards in `granule`-sized, `granule`-aligned blocks: [`PAGE_SIZE`]
    /// when guest RAM has no host huge pages, [`DISCARD_ALIGN`] (the
    /// default) when it may. Any other value is rounded up to a power of
    /// two between the two.
    pub fn with_granule(mut self, granule: u64) -> Self {
        self.granule = granule.clamp(PAGE_SIZE, DISCARD_ALIGN).next_power_of_two();
        self
    }

    /// Publishes the counters to `file` after every batch (and now).
    pub fn with_stats_file(mut self, file: stats_file::StatsFile) -> Self {
        file.publish(&self.stats);
        self.sink = Some(file);
        self
    }

    /// The discard granule (see [`Balloon::with_granule`]).
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// What the device did so far.
    pub fn stats(&self) -> BalloonStats {
        self.stats
    }

    /// The discard backend.
    pub fn backend(&self) -> &D {
        &self.discard
    }

    /// Whether the driver negotiated free page reporting (while active).
    pub fn reporting(&self) -> bool {
        self.reporting && self.mem.is_some()
    }

    /// Serves queue `q`: reporting chains are discarded, inflate and
    /// deflate chains returned unused. At most [`MAX_CHAINS_PER_EVENT`]
    /// chains; if more wait, the queue's eventfd is signalled again.
    pub fn process_queue(&mut self, q: usize) {
        let Some(mem) = self.mem.as_ref() else {
            return;
        };
        let reporting = self.reporting && q == REPORTING_QUEUE;
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        let mut served = 0;
        while served < MAX_CHAINS_PER_EVENT {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            if reporting {
                self.stats.reports += 1;
                report(mem, chain, self.granule, &mut self.discard, &mut self.stats);
            } else {
                self.stats.ignored_chains += 1;
                crate::guest_fault!(
                    queue = q,
                    "virtio-balloon chain on a queue the device never asked for; returned unused"
                );
            }
            if queue.add_used(mem, head, 0).is_err() {
                crate::guest_fault!(queue = q, head, "virtio-balloon used ring update failed");
            }
            served += 1;
        }
        if served == MAX_CHAINS_PER_EVENT {
            // Yield to the other devices; come back for the rest.
            let _ = self.queue_evts[q].write(1);
        }
        if served > 0 {
            self.interrupt.signal_used_queue();
            if let Some(sink) = &self.sink {
                sink.publish(&self.stats);
            }
        }
    }
}

/// Discards every valid range of one reporting chain.
fn report<D: Discard>(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    granule: u64,
    discard: &mut D,
    stats: &mut BalloonStats,
) {
    for (i, desc) in chain.enumerate() {
        if i >= MAX_RANGES_PER_CHAIN {
            stats.skipped_ranges += 1;
            continue;
        }
        let (addr, len) = (desc.addr().0, u64::from(desc.len()));
        match discard_range(mem, addr, len, granule, discard) {
            Ok((done, kept, result)) => {
                stats.ranges += 1;
                stats.pages_reported += len / PAGE_SIZE;
                if done > 0 {
                    stats.discards += 1;
                }
                stats.discarded_bytes += done;
                stats.kept_bytes += kept;
                if let Err(e) = result {
                    stats.discard_errors += 1;
                    crate::guest_fault!(error = %e, addr, len, "virtio-balloon: madvise failed");
                }
            }
            Err(e) => {
                stats.bad_ranges += 1;
                crate::guest_fault!(error = %e, "virtio-balloon: reported range refused");
            }
        }
    }
}

/// Checks the guest range `[addr, addr + len)` and discards the whole
/// `granule` blocks (a power of two, [`PAGE_SIZE`] to [`DISCARD_ALIGN`],
/// aligned in the host) inside it; returns (bytes discarded, bytes kept,
/// the backend's result). Public for the fuzzer's own checks.
pub fn discard_range<D: Discard>(
    mem: &GuestMemory,
    addr: u64,
    len: u64,
    granule: u64,
    discard: &mut D,
) -> Result<(u64, u64, std::io::Result<()>), BalloonError> {
    if len == 0 || !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(BalloonError::Unaligned { addr, len });
    }
    let outside = BalloonError::OutsideRam { addr, len };
    let end = addr.checked_add(len).ok_or_else(|| outside.clone())?;
    let region = mem
        .find_region(GuestAddress(addr))
        .ok_or_else(|| outside.clone())?;
    let offset = addr - region.start_addr().0;
    if end - region.start_addr().0 > region.len() {
        return Err(outside);
    }
    let base = region.as_ptr() as u64;
    let host = base.checked_add(offset).ok_or_else(|| outside.clone())?;
    let host_end = host.checked_add(len).ok_or(outside)?;
    let granule = granule.clamp(PAGE_SIZE, DISCARD_ALIGN).next_power_of_two();
    let first = host.div_ceil(granule) * granule;
    let last = host_end / granule * granule;
    if first >= last {
        return Ok((0, len, Ok(())));
    }
    let shared = region.flags() & libc::MAP_SHARED != 0;
    let n = last - first;
    let result = discard.discard(first as *mut u8, n as usize, shared);
    let done = if result.is_ok() { n } else { 0 };
    Ok((done, len - done, result))
}

impl<D: Discard> VirtioDevice for Balloon<D> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_BALLOON_F_FREE_PAGE_REPORTING
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn queue_count(&self, features: u64) -> usize {
        if features & VIRTIO_BALLOON_F_FREE_PAGE_REPORTING != 0 {
            3
        } else {
            2
        }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_balloon_config { le32 num_pages; le32 actual; }:
        // the device never asks for pages, so both read as 0; the driver's
        // writes of `actual` are ignored by the transport.
        let cfg = [0u8; CONFIG_SIZE];
        read_config_space(&cfg, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        let want = self.queue_count(features);
        check_activation("virtio-balloon", want, &queues, &mem)?;
        self.reporting = features & VIRTIO_BALLOON_F_FREE_PAGE_REPORTING != 0;
        self.queues = queues;
        self.mem = Some(mem);
        // Kicks that came before DRIVER_OK.
        for q in 0..want {
            self.process_queue(q);
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.mem = None;
        self.queues.clear();
        self.reporting = false;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn init_events(&mut self, ops: &mut EventOps) {
        for (q, evt) in self.queue_evts.iter().enumerate() {
            let ev = Events::with_data_raw(evt.as_raw_fd(), q as u32, EventSet::IN);
            if let Err(e) = ops.add(ev) {
                tracing::error!(error = ?e, queue = q, "cannot register a virtio-balloon queue with the event loop");
            }
        }
    }
    fn process_event(&mut self, events: Events, _ops: &mut EventOps) {
        let q = events.data() as usize;
        if let Some(evt) = self.queue_evts.get(q) {
            let _ = evt.read();
            self.process_queue(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_zero_everywhere() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let b = Balloon::new(irq).unwrap();
        for off in [0, 4, 7, 100, u64::MAX] {
            let mut d = [0xaau8; 4];
            b.read_config(off, &mut d);
            assert_eq!(d, [0; 4], "offset {off}");
        }
    }

    #[test]
    fn queue_count_follows_the_reporting_feature() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let b = Balloon::new(irq).unwrap();
        assert_eq!(b.queue_count(0), 2);
        assert_eq!(b.queue_count(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING), 3);
    }
}
