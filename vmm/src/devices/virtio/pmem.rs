//! The virtio-pmem device (id 27), read-only: it tells the guest where a
//! shared image sits in guest physical memory and answers its flush
//! requests.
//!
//! The image itself never passes through the device: the VMM maps the host
//! file read-only and shared ([`crate::memory::ImageMapping`]) and gives it
//! to KVM as a read-only memory slot above RAM, so guest loads go straight
//! to the host's page cache (with DAX in the guest, straight into guest
//! processes), and every VM mapping the same file shares one copy of it.
//! A guest store to the region cannot reach the file: KVM turns it into an
//! MMIO exit, which [`PmemRegionGuard`] discards and counts (logging a
//! bounded number of lines), like a write to ROM.
//!
//! The device's only queue carries Linux's flush requests: one readable
//! 4-byte `virtio_pmem_req { le32 type }` followed by one writable 4-byte
//! `virtio_pmem_resp { le32 ret }`. Nothing can be dirty in a read-only
//! mapping, so a flush is answered at once with success and no system call.
//! Anything else (unknown types, short or out-of-range buffers, chains in
//! the wrong order) is answered with an error where a response buffer
//! exists, and otherwise returned unused; no request can make the device
//! fail or touch memory outside the guest's RAM.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::virtio::{
    check_activation, read_config_space, ActivateError, Interrupt, VirtioDevice,
};
use crate::memory::GuestMemory;

/// Virtio device id of pmem.
pub const VIRTIO_ID_PMEM: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_PMEM;
/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 128;
/// `VIRTIO_PMEM_REQ_TYPE_FLUSH`.
pub const REQ_TYPE_FLUSH: u32 = 0;
/// Response status: the request succeeded.
pub const RESP_OK: u32 = 0;
/// Response status: the request failed (`VIRTIO_PMEM_RESP_TYPE_EIO`).
pub const RESP_EIO: u32 = 1;
/// Size of the device configuration space: `le64 start; le64 size`.
pub const CONFIG_SIZE: usize = 16;

const REQ_QUEUE: usize = 0;
const TOKEN_REQ: u32 = 0;

/// Logs the first few occurrences of an event, then only at powers of two:
/// a guest can repeat a bad request forever, the log stays bounded
/// (at most [`LogLimit::FIRST`] + 64 lines over the VMM's life).
#[derive(Debug, Default)]
pub struct LogLimit {
    count: u64,
}

impl LogLimit {
    /// Lines logged in full before thinning out.
    pub const FIRST: u64 = 8;

    /// Counts one occurrence; returns its number if it should be logged.
    pub fn note(&mut self) -> Option<u64> {
        self.count = self.count.saturating_add(1);
        (self.count <= Self::FIRST || self.count.is_power_of_two()).then_some(self.count)
    }

    /// Occurrences so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Why a request was not a well-formed flush.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("descriptor chain outside guest memory or malformed: {0}")]
    Chain(virtio_queue::Error),
    #[error("request shorter than 4 bytes ({0})")]
    ShortRequest(usize),
    #[error("no writable response buffer of 4 bytes ({0})")]
    ShortResponse(usize),
    #[error("unknown request type {0}")]
    UnknownType(u32),
    #[error("cannot access the request or response buffer: {0}")]
    Access(std::io::Error),
    #[error("a device-readable descriptor follows a device-writable one")]
    Order,
}

/// What the device did with one request, for its counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PmemStats {
    /// Flush requests answered with success.
    pub flushes: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Requests returned without a response (no usable response buffer).
    pub dropped: u64,
}

/// The virtio-pmem device for one image at `[start, start + size)` in
/// guest physical memory.
pub struct Pmem {
    start: u64,
    size: u64,
    interrupt: Interrupt,
    queue_evts: [EventFd; 1],
    mem: Option<GuestMemory>,
    queue: Option<Queue>,
    stats: PmemStats,
    bad_requests: LogLimit,
}

impl Pmem {
    /// A device describing the region `[start, start + size)`, raising
    /// `interrupt`; queue notifications arrive on a fresh eventfd.
    pub fn new(start: u64, size: u64, interrupt: Interrupt) -> std::io::Result<Self> {
        Ok(Self {
            start,
            size,
            interrupt,
            queue_evts: [EventFd::new(libc::EFD_NONBLOCK)?],
            mem: None,
            queue: None,
            stats: PmemStats::default(),
            bad_requests: LogLimit::default(),
        })
    }

    /// Guest physical start of the region.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length of the region.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What the device answered so far.
    pub fn stats(&self) -> PmemStats {
        self.stats
    }

    /// Answers every request the guest made available.
    pub fn process_queue(&mut self) {
        let (Some(mem), Some(queue)) = (self.mem.as_ref(), self.queue.as_mut()) else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let (written, outcome) = answer(mem, chain);
            match outcome {
                Ok(()) => self.stats.flushes += 1,
                Err(e) => {
                    if written > 0 {
                        self.stats.errors += 1;
                    } else {
                        self.stats.dropped += 1;
                    }
                    if let Some(n) = self.bad_requests.note() {
                        tracing::warn!(error = %e, count = n, answered = written > 0, "bad virtio-pmem request");
                    }
                }
            }
            if queue.add_used(mem, head, written).is_err() {
                tracing::warn!("virtio-pmem used ring update failed");
            }
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
    }
}

/// Reads one request from `chain` and writes its response; returns the
/// bytes written to the guest (4 or 0) and whether it was a good flush.
fn answer(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> (u32, Result<(), RequestError>) {
    let mut seen_writable = false;
    let misordered = chain.clone().any(|d| {
        seen_writable |= d.is_write_only();
        seen_writable && !d.is_write_only()
    });
    let request = if misordered {
        Err(RequestError::Order)
    } else {
        read_request(mem, chain.clone())
    };
    let mut writer = match Writer::new(mem, chain) {
        Ok(w) if w.available_bytes() >= 4 => w,
        Ok(w) => {
            let e = request
                .err()
                .unwrap_or(RequestError::ShortResponse(w.available_bytes()));
            return (0, Err(e));
        }
        Err(e) => return (0, Err(request.err().unwrap_or(RequestError::Chain(e)))),
    };
    let status = match request {
        Ok(REQ_TYPE_FLUSH) => Ok(()),
        Ok(other) => Err(RequestError::UnknownType(other)),
        Err(e) => Err(e),
    };
    let code = if status.is_ok() { RESP_OK } else { RESP_EIO };
    match writer.write_obj(code.to_le()) {
        Ok(()) => (4, status),
        Err(e) => (0, Err(RequestError::Access(e))),
    }
}

fn read_request(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<u32, RequestError> {
    let mut reader = Reader::new(mem, chain).map_err(RequestError::Chain)?;
    let have = reader.available_bytes();
    if have < 4 {
        return Err(RequestError::ShortRequest(have));
    }
    reader
        .read_obj::<u32>()
        .map(u32::from_le)
        .map_err(RequestError::Access)
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_PMEM
    }
    fn avail_features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_pmem_config { le64 start; le64 size; }
        let mut cfg = [0u8; CONFIG_SIZE];
        cfg[..8].copy_from_slice(&self.start.to_le_bytes());
        cfg[8..].copy_from_slice(&self.size.to_le_bytes());
        read_config_space(&cfg, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        mut queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        check_activation("virtio-pmem", 1, &queues, &mem)?;
        self.queue = queues.pop();
        self.mem = Some(mem);
        Ok(())
    }
    fn reset(&mut self) {
        self.mem = None;
        self.queue = None;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn init_events(&mut self, ops: &mut EventOps) {
        let fd = self.queue_evts[REQ_QUEUE].as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, TOKEN_REQ, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot register the virtio-pmem queue with the event loop");
        }
    }
    fn process_event(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_REQ {
            let _ = self.queue_evts[REQ_QUEUE].read();
            self.process_queue();
        }
    }
}

/// Sits on the MMIO bus over a read-only pmem region. Guest loads never get
/// here (KVM serves them from the read-only memory slot); a guest store
/// does, as an MMIO exit, and is discarded: the image file cannot be
/// written through the VM. Each store is counted; the log is bounded.
pub struct PmemRegionGuard {
    start: u64,
    writes: Arc<AtomicU64>,
    write_log: LogLimit,
    read_log: LogLimit,
}

impl PmemRegionGuard {
    /// A guard for the region starting at guest address `start`.
    pub fn new(start: u64) -> Self {
        Self {
            start,
            writes: Arc::new(AtomicU64::new(0)),
            write_log: LogLimit::default(),
            read_log: LogLimit::default(),
        }
    }

    /// Counter of discarded guest stores (shared, for tests and reports).
    pub fn discarded_writes(&self) -> Arc<AtomicU64> {
        self.writes.clone()
    }
}

impl BusDevice for PmemRegionGuard {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Not expected: reads are served by KVM from the memory slot.
        data.fill(0xff);
        if let Some(n) = self.read_log.note() {
            tracing::warn!(
                addr = self.start.saturating_add(offset),
                len = data.len(),
                count = n,
                "guest read of a pmem region reached the VMM; answered with ones"
            );
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.write_log.note() {
            tracing::warn!(
                addr = self.start.saturating_add(offset),
                len = data.len(),
                count = n,
                "guest write to a read-only pmem image discarded"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_is_bounded() {
        let mut l = LogLimit::default();
        let logged = (0..1_000_000).filter(|_| l.note().is_some()).count();
        // 8 in full, then 16, 32, ..., 524288: 8 + 16 = 24 lines.
        assert_eq!(logged, 24);
        assert_eq!(l.count(), 1_000_000);
    }

    #[test]
    fn config_space_is_start_then_size_little_endian() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let p = Pmem::new(0x1_0000_0000, 0x60_0000, irq).unwrap();
        let mut b = [0u8; 16];
        p.read_config(0, &mut b);
        assert_eq!(
            u64::from_le_bytes(b[..8].try_into().unwrap()),
            0x1_0000_0000
        );
        assert_eq!(u64::from_le_bytes(b[8..].try_into().unwrap()), 0x60_0000);
        // Reads past the end, and at absurd offsets, are zeros.
        let mut tail = [0xaau8; 8];
        p.read_config(12, &mut tail);
        assert_eq!(tail, [0, 0, 0, 0, 0, 0, 0, 0]);
        p.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 8]);
    }

    #[test]
    fn guard_counts_and_discards_writes() {
        let mut g = PmemRegionGuard::new(0x1_0000_0000);
        let c = g.discarded_writes();
        for _ in 0..100 {
            g.write(8, &[1, 2, 3, 4]);
        }
        assert_eq!(c.load(Ordering::Relaxed), 100);
        let mut b = [0u8; 4];
        g.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
    }
}
