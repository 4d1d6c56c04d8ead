//! The virtio-net device proper: its two queues, configuration space (the
//! MAC address), and the moving of frames between the guest's queues and a
//! [`NetBackend`], under the per-direction rate limiters.
//!
//! Hostile input is consumed and counted, never fatal: a TX chain with a
//! device-writable descriptor, outside guest memory, shorter than a header
//! and an Ethernet header, carrying more than [`MAX_FRAME_LEN`] bytes (a
//! TCP segment for the host to cut: [`MAX_GSO_FRAME_LEN`]), or with a
//! header the guest did not negotiate ([`super::offload`]) is returned
//! unused; an RX chain that is read-only, outside guest memory or
//! too small for the waiting frame (with mergeable buffers: for a header)
//! is returned unused and the frame waits for the next one ([`rx`]). The
//! device holds at most one frame from the host (in
//! a buffer allocated once); while the guest posts no RX buffers, further
//! frames stay in the tap's kernel queue, which drops beyond its length, so
//! a guest that never refills RX costs nothing but its own traffic.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::gather::{copy_frame, gather, GatherError, Gathered};
use super::offload::{check_tx_header, HeaderFault, OFFLOAD_FEATURES, RX_OFFLOAD_FEATURES};
use super::tap::{self, Tap};
use super::{
    NetBackend, NetError, DEFAULT_MAC, MAX_CHAINS_PER_EVENT, MAX_FRAME_LEN, MAX_GSO_FRAME_LEN,
    NET_HDR_LEN, QUEUE_SIZE, TAP_READ_LEN,
};

mod rx;
use crate::bandwidth::{BucketConfig, Limiter};
use crate::devices::virtio::{
    check_activation, read_config_space, ActivateError, Interrupt, VirtioDevice,
};
use crate::memory::GuestMemory;

/// Virtio device id of net.
pub const VIRTIO_ID_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// `VIRTIO_NET_F_MAC`: the configuration space holds the MAC address.
const F_MAC: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// `VIRTIO_NET_F_MRG_RXBUF`: a frame to the guest may span several RX
/// chains (the header's `num_buffers`).
pub const F_MRG_RXBUF: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
/// `VIRTIO_RING_F_EVENT_IDX`: each side says at which ring index it wants
/// to be notified (`used_event`, `avail_event`), so the guest kicks and is
/// interrupted only when the other side would otherwise stall.
pub const F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

const RXQ: usize = 0;
const TXQ: usize = 1;
const QUEUE_COUNT: usize = 2;
const TOKEN_RX: u32 = RXQ as u32;
const TOKEN_TX: u32 = TXQ as u32;
const TOKEN_TAP: u32 = 2;
const TOKEN_TIMER: u32 = 3;
/// Shortest Ethernet frame the device passes on (destination, source, type).
const ETH_HLEN: usize = 14;

/// Rate limits of one device: bytes per direction, and packets (applied to
/// each direction separately).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetLimits {
    /// Bytes the guest may receive.
    pub rx_bytes: Option<BucketConfig>,
    /// Bytes the guest may send.
    pub tx_bytes: Option<BucketConfig>,
    /// Frames per direction.
    pub packets: Option<BucketConfig>,
}

/// What the device did so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (frames only, no headers).
    pub rx_bytes: u64,
    /// Frames sent to the host.
    pub tx_frames: u64,
    /// Bytes sent to the host.
    pub tx_bytes: u64,
    /// RX chains returned unused (read-only, outside memory, too small).
    pub rx_bad_chains: u64,
    /// TX chains returned unused (writable, outside memory, too short).
    pub tx_bad_chains: u64,
    /// Frames from the host larger than [`MAX_FRAME_LEN`] (a segment: than
    /// [`MAX_GSO_FRAME_LEN`]), dropped.
    pub rx_oversized: u64,
    /// Frames from the host whose virtio-net header was refused (an
    /// offload the driver did not take, a checksum or `hdr_len` outside
    /// the frame), dropped.
    pub rx_bad_headers: u64,
    /// Guest frames larger than [`MAX_FRAME_LEN`], dropped.
    pub tx_oversized: u64,
    /// Guest frames the host refused (tap queue full or interface down).
    pub tx_send_errors: u64,
    /// Times a frame had to wait for the RX limiter.
    pub rx_throttled: u64,
    /// Times a frame had to wait for the TX limiter.
    pub tx_throttled: u64,
}

/// The virtio-net device, with its host side behind backend `B`.
pub struct Net<B: NetBackend = Tap> {
    mac: [u8; 6],
    backend: B,
    interrupt: Interrupt,
    queue_evts: [EventFd; QUEUE_COUNT],
    timer: TimerFd,
    timer_armed: bool,
    mem: Option<GuestMemory>,
    queues: Vec<Queue>,
    /// The features the driver acknowledged (at activation).
    acked: u64,
    /// A guest frame on its way to the tap, behind its checked header.
    tx_buf: Vec<u8>,
    /// The one frame from the host the device may hold, and its length.
    rx_buf: Vec<u8>,
    rx_pending: Option<usize>,
    /// The header the guest gets with the held frame (checked).
    rx_hdr: [u8; NET_HDR_LEN],
    /// Whether the held frame was already charged to the RX limiter.
    rx_charged: bool,
    rx_limit: Limiter,
    tx_limit: Limiter,
    stats: NetStats,
}

impl Net<Tap> {
    /// A device on the tap interface `tap_name` (the one the jail opened
    /// before changing root, or opened now), guest MAC `mac`.
    pub fn new(
        tap_name: &str,
        mac: Option<[u8; 6]>,
        limits: NetLimits,
        interrupt: Interrupt,
    ) -> Result<Self, NetError> {
        let tap = match tap::take_preopened(tap_name) {
            Some(t) => t,
            None => Tap::open(tap_name)?,
        };
        Self::with_backend(tap, mac, limits, interrupt)
    }
}

impl<B: NetBackend> Net<B> {
    /// A device over `backend`. Creates every descriptor it will use (queue
    /// eventfds, the limiter timer) now, at build time.
    pub fn with_backend(
        backend: B,
        mac: Option<[u8; 6]>,
        limits: NetLimits,
        interrupt: Interrupt,
    ) -> Result<Self, NetError> {
        let fd = |what| move |source| NetError::Fd { what, source };
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(fd("queue eventfd"));
        let timer = TimerFd::new().map_err(|e| fd("timerfd")(std::io::Error::from(e)))?;
        // SAFETY: F_SETFL on a descriptor this function owns; no memory is
        // passed. Non-blocking: a read after a re-arm must not wait.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(fd("timerfd")(std::io::Error::last_os_error()));
        }
        Ok(Self {
            mac: mac.unwrap_or(DEFAULT_MAC),
            backend,
            interrupt,
            queue_evts: [evt()?, evt()?],
            timer,
            timer_armed: false,
            mem: None,
            queues: Vec::new(),
            acked: 0,
            tx_buf: vec![0; NET_HDR_LEN + MAX_GSO_FRAME_LEN],
            rx_buf: vec![0; TAP_READ_LEN],
            rx_pending: None,
            rx_hdr: [0; NET_HDR_LEN],
            rx_charged: false,
            rx_limit: Limiter::new(limits.rx_bytes, limits.packets),
            tx_limit: Limiter::new(limits.tx_bytes, limits.packets),
            stats: NetStats::default(),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// What the device did so far.
    pub fn stats(&self) -> NetStats {
        NetStats {
            rx_throttled: self.rx_limit.throttled(),
            tx_throttled: self.tx_limit.throttled(),
            ..self.stats
        }
    }

    /// Bytes of host frames the device holds (at most one frame, at most
    /// [`TAP_READ_LEN`] bytes): the fuzzer checks the bound.
    pub fn buffered_bytes(&self) -> usize {
        self.rx_pending.map_or(0, |n| n - self.rx_hdr_len())
    }

    /// Bytes of header before each frame read from the backend.
    fn rx_hdr_len(&self) -> usize {
        if self.backend.vnet_hdr() {
            NET_HDR_LEN
        } else {
            0
        }
    }

    /// The host-side backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether the limiter timer is armed.
    pub fn throttled(&self) -> bool {
        self.timer_armed
    }

    fn arm_timer(&mut self, wait: Duration) {
        if self.timer_armed {
            return;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => self.timer_armed = true,
            Err(e) => tracing::warn!(error = %e, "virtio-net limiter timer could not be armed"),
        }
    }

    /// Sends the guest's TX frames to the host, as long as the TX budget
    /// allows (at most [`MAX_CHAINS_PER_EVENT`] chains, then the device
    /// re-kicks itself).
    pub fn process_tx(&mut self) {
        let Some(mem) = self.mem.clone() else { return };
        let mut used_any = false;
        // No kicks while the device is taking chains anyway; asked for
        // again once the ring is empty.
        let _ = self.queues[TXQ].disable_notification(&mem);
        for served in 0.. {
            if served == MAX_CHAINS_PER_EVENT {
                let _ = self.queue_evts[TXQ].write(1);
                break;
            }
            let Some(chain) = self.queues[TXQ].pop_descriptor_chain(&mem) else {
                // Empty: ask for a kick, unless the guest posted meanwhile.
                match self.queues[TXQ].enable_notification(&mem) {
                    Ok(false) => break,
                    _ => continue,
                }
            };
            let head = chain.head_index();
            let max = if self.acked & OFFLOAD_FEATURES != 0 {
                MAX_GSO_FRAME_LEN
            } else {
                MAX_FRAME_LEN
            };
            match tx_frame(&mem, chain, max) {
                Ok(g) => {
                    if let Err(wait) = self.tx_limit.consume(g.frame_len as u64, Instant::now()) {
                        // Served when the timer fires.
                        self.queues[TXQ].go_to_previous_position();
                        self.arm_timer(wait);
                        break;
                    }
                    self.send_tx(g);
                }
                Err(TxFault::Oversized(len)) => {
                    self.stats.tx_oversized += 1;
                    crate::guest_fault!(
                        len,
                        max = NET_HDR_LEN + max,
                        "virtio-net: oversized TX frame dropped"
                    );
                }
                Err(e) => {
                    self.stats.tx_bad_chains += 1;
                    crate::guest_fault!(error = %e, head, "virtio-net: malformed TX descriptor chain dropped");
                }
            }
            self.add_used(&mem, TXQ, head, 0);
            used_any = true;
        }
        if used_any {
            self.notify(&mem, TXQ);
        }
    }

    /// Returns chain `head` of queue `q` with `len` bytes written.
    fn add_used(&mut self, mem: &GuestMemory, q: usize, head: u16, len: u32) {
        if self.queues[q].add_used(mem, head, len).is_err() {
            crate::guest_fault!(queue = q, head, "virtio-net: used ring update failed");
        }
    }

    /// Interrupts the guest for the used chains of queue `q`, unless it
    /// said (`used_event`) that it does not need to be yet.
    fn notify(&mut self, mem: &GuestMemory, q: usize) {
        if !matches!(self.queues[q].needs_notification(mem), Ok(false)) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Sends a gathered TX frame behind its checked header, copied into the
    /// bounce buffer ([`gather`](super::gather)).
    fn send_tx(&mut self, g: Gathered<'_>) {
        let hdr = match check_tx_header(&g.hdr, g.frame_len, self.acked) {
            Ok(hdr) => hdr,
            Err(e) => {
                if matches!(e, HeaderFault::Oversized { .. }) {
                    self.stats.tx_oversized += 1;
                } else {
                    self.stats.tx_bad_chains += 1;
                }
                crate::guest_fault!(error = %e, "virtio-net: TX frame's header refused");
                return;
            }
        };
        let hdr = self.backend.vnet_hdr().then_some(&hdr);
        // The header check bounded the frame to the buffer's size.
        let n = copy_frame(hdr, &g.parts, &mut self.tx_buf);
        match self.backend.send(&self.tx_buf[..n]) {
            Ok(_) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += g.frame_len as u64;
            }
            Err(e) => {
                // A full tap queue or a down interface: the frame is lost,
                // as on a wire.
                self.stats.tx_send_errors += 1;
                crate::guest_fault!(error = %e, "virtio-net: the host refused a frame");
            }
        }
    }
}

/// Why a TX chain was not sent.
#[derive(Debug, thiserror::Error)]
enum TxFault {
    #[error("{0}")]
    Gather(#[from] GatherError),
    #[error("{0} bytes: shorter than a virtio-net and an Ethernet header")]
    Short(usize),
    #[error("{0} bytes: larger than the negotiated frame size")]
    Oversized(usize),
}

/// Takes a TX chain apart ([`gather`](super::gather)): a chain that ends
/// where it says, readable descriptors only, all inside guest memory, a
/// header and an Ethernet frame of at most `max` bytes.
fn tx_frame<'m>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<&'m GuestMemory>,
    max: usize,
) -> Result<Gathered<'m>, TxFault> {
    let g = gather(mem, chain)?;
    if g.frame_len < ETH_HLEN {
        return Err(TxFault::Short(NET_HDR_LEN + g.frame_len));
    }
    if g.frame_len > max {
        return Err(TxFault::Oversized(NET_HDR_LEN + g.frame_len));
    }
    Ok(g)
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn avail_features(&self) -> u64 {
        let base = F_MAC | F_MRG_RXBUF | F_EVENT_IDX;
        if self.backend.vnet_hdr() {
            base | OFFLOAD_FEATURES | RX_OFFLOAD_FEATURES
        } else {
            base
        }
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUE_COUNT]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { u8 mac[6]; ... } (only MAC offered).
        read_config_space(&self.mac, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        check_activation("virtio-net", QUEUE_COUNT, &queues, &mem)?;
        self.queues = queues;
        for q in &mut self.queues {
            q.set_event_idx(features & F_EVENT_IDX != 0);
        }
        self.mem = Some(mem);
        self.acked = features;
        Ok(())
    }
    fn reset(&mut self) {
        // Runs on a vCPU thread: no system calls. The limiters keep their
        // state (a reset refills no bucket); a timer still armed fires into
        // an inactive device and is ignored.
        self.mem = None;
        self.queues.clear();
        self.rx_pending = None;
        self.rx_charged = false;
        self.timer_armed = false;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn init_events(&mut self, ops: &mut EventOps) {
        let fds = [
            (self.queue_evts[RXQ].as_raw_fd(), TOKEN_RX, EventSet::IN),
            (self.queue_evts[TXQ].as_raw_fd(), TOKEN_TX, EventSet::IN),
            // Edge-triggered: frames left in the tap (no RX buffer, no
            // budget) do not wake the loop again; an RX kick or the timer
            // resumes reading.
            (
                self.backend.raw_fd(),
                TOKEN_TAP,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
            (self.timer.as_raw_fd(), TOKEN_TIMER, EventSet::IN),
        ];
        for (fd, token, set) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, set)) {
                tracing::error!(error = ?e, token, "cannot register a virtio-net fd with the event loop");
            }
        }
    }
    fn process_event(&mut self, events: Events, _ops: &mut EventOps) {
        // The device is active exactly while it holds the driver's memory.
        let active = self.mem.is_some();
        match events.data() {
            token @ (TOKEN_RX | TOKEN_TX) => {
                let _ = self.queue_evts[token as usize].read();
                if active && token == TOKEN_RX {
                    self.process_rx();
                } else if active {
                    self.process_tx();
                }
            }
            TOKEN_TAP if active => self.process_rx(),
            TOKEN_TIMER => {
                let _ = self.timer.wait();
                self.timer_armed = false;
                if active {
                    self.process_rx();
                    self.process_tx();
                }
            }
            _ => {}
        }
    }
}
