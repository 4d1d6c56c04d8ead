//! The virtio-vsock device proper: its three queues, configuration space,
//! and the moving of packets between the guest's queues and a
//! [`VsockBackend`]. It knows nothing of how the host side is reached.

use std::os::fd::AsRawFd;
use std::path::Path;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::VsockMuxer;
use super::packet::{self, Header, HOST_CID, MAX_PKT_DATA};
use super::{VsockBackend, VsockError, QUEUE_SIZE};
use crate::devices::virtio::{ActivateError, Interrupt, VirtioDevice};
use crate::memory::GuestMemory;

/// Virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
const QUEUE_COUNT: usize = 3;
// Event-loop tokens of the queue eventfds; backends use the ones above.
const TOKEN_RX: u32 = RXQ as u32;
const TOKEN_TX: u32 = TXQ as u32;
const TOKEN_EV: u32 = EVQ as u32;

/// The vsock device, with its host side behind backend `B`.
pub struct Vsock<B: VsockBackend = VsockMuxer> {
    cid: u64,
    backend: B,
    interrupt: Interrupt,
    queue_evts: [EventFd; QUEUE_COUNT],
    mem: Option<GuestMemory>,
    queues: Vec<Queue>,
}

impl Vsock<VsockMuxer> {
    /// A vsock device for guest `cid` whose host side listens on
    /// `uds_path` (see [`VsockMuxer`]), raising `interrupt`, with queue
    /// notifications arriving on fresh eventfds (see [`Vsock::queue_evts`]).
    pub fn new(cid: u64, uds_path: &Path, interrupt: Interrupt) -> Result<Self, VsockError> {
        check_cid(cid)?;
        Self::with_backend(cid, VsockMuxer::new(uds_path)?, interrupt)
    }
}

fn check_cid(cid: u64) -> Result<(), VsockError> {
    if cid < 3 || cid > u64::from(u32::MAX) {
        return Err(VsockError::Cid(cid));
    }
    Ok(())
}

impl<B: VsockBackend> Vsock<B> {
    /// A vsock device for guest `cid` over `backend`.
    pub fn with_backend(cid: u64, backend: B, interrupt: Interrupt) -> Result<Self, VsockError> {
        check_cid(cid)?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            cid,
            backend,
            interrupt,
            queue_evts: [evt()?, evt()?, evt()?],
            mem: None,
            queues: Vec::new(),
        })
    }

    /// The eventfds signalled when the guest notifies queue 0 (RX), 1 (TX), 2 (event).
    pub fn queue_evts(&self) -> &[EventFd; QUEUE_COUNT] {
        &self.queue_evts
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.backend.connection_count()
    }

    /// The host-side backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Handles the guest's TX queue: every packet the guest sent, as long as
    /// the backend takes more (it holds back while too many replies wait for
    /// RX buffers; the rest stays queued until the guest's next RX kick).
    pub fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(mem) = self.mem.clone() else { return };
        let mut used_any = false;
        while self.backend.accepts_tx() {
            let Some(mut chain) = self.queues[TXQ].pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            match packet::read_tx(&mem, &mut chain) {
                Ok((hdr, data)) => self.deliver_to_host(&hdr, &data, ops),
                Err(e) => {
                    crate::guest_fault!(error = ?e, "malformed vsock TX descriptor chain dropped")
                }
            }
            if self.queues[TXQ].add_used(&mem, head, 0).is_err() {
                crate::guest_fault!("vsock TX used ring update failed");
            }
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
        self.process_rx(ops);
    }

    /// Passes a guest packet to the backend if it comes from this guest and
    /// goes to the host.
    fn deliver_to_host(&mut self, h: &Header, data: &[u8], ops: &mut EventOps) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            crate::guest_fault!(
                src_cid = h.src_cid,
                dst_cid = h.dst_cid,
                "vsock packet with wrong CIDs dropped"
            );
            return;
        }
        self.backend.send_pkt(h, data, ops);
    }

    /// Fills the guest's RX queue with what the backend has for the guest:
    /// owed control packets first, then data as far as each connection's
    /// credit allows.
    pub fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(mem) = self.mem.clone() else { return };
        let mut used_any = false;
        while let Some(mut chain) = self.queues[RXQ].pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let used = match VsockPacket::from_rx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    let Some((mut hdr, data)) = self.backend.recv_pkt(packet::rx_room(&pkt), ops)
                    else {
                        // Nothing to send: the buffer waits for the next packet.
                        self.queues[RXQ].go_to_previous_position();
                        break;
                    };
                    hdr.src_cid = HOST_CID;
                    hdr.dst_cid = self.cid;
                    packet::write_rx(&mut pkt, &hdr, &data)
                }
                Err(e) => {
                    // Any owed packet waits for the next (valid) buffer.
                    crate::guest_fault!(error = ?e, "malformed vsock RX descriptor chain");
                    0
                }
            };
            if self.queues[RXQ].add_used(&mem, head, used).is_err() {
                crate::guest_fault!("vsock RX used ring update failed");
            }
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
    }
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn avail_features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUE_COUNT]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let cfg = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_COUNT {
            return Err(ActivateError::Other(format!(
                "vsock needs 3 queues, got {}",
                queues.len()
            )));
        }
        self.mem = Some(mem);
        self.queues = queues;
        Ok(())
    }
    fn reset(&mut self) {
        self.mem = None;
        self.queues.clear();
        // Runs on a vCPU thread without the event loop's ops: the backend
        // parks its connections and the loop, woken here, deregisters them.
        if self.backend.reset() {
            let _ = self.queue_evts[EVQ].write(1);
        }
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn init_events(&mut self, ops: &mut EventOps) {
        for (q, token) in [(RXQ, TOKEN_RX), (TXQ, TOKEN_TX), (EVQ, TOKEN_EV)] {
            let fd = self.queue_evts[q].as_raw_fd();
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                tracing::error!(error = ?e, "cannot register vsock fd with the event loop");
            }
        }
        self.backend.init_events(ops);
    }
    fn process_event(&mut self, events: Events, ops: &mut EventOps) {
        // The device is active exactly while it holds the driver's memory.
        let active = self.mem.is_some();
        self.backend.release_stale(ops);
        match events.data() {
            token @ (TOKEN_RX | TOKEN_TX | TOKEN_EV) => {
                let _ = self.queue_evts[token as usize].read();
                if !active {
                    return;
                }
                match token {
                    TOKEN_TX => self.process_tx(ops),
                    TOKEN_RX => {
                        // New buffers take owed replies first, which may let
                        // TX packets held back by the backend through.
                        self.process_rx(ops);
                        self.process_tx(ops);
                    }
                    _ => {}
                }
            }
            _ => {
                self.backend.process_event(events, ops, active);
                if active {
                    self.process_rx(ops);
                }
            }
        }
    }
}
