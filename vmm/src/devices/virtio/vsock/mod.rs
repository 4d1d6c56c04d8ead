//! The virtio-vsock device (id 19), stream sockets only.
//!
//! Host side, per VM: a Unix listener at `uds_path`. A host process connects,
//! writes `CONNECT <port>\n` and, once the guest accepts, reads
//! `OK <host_port>\n`; the stream is then bridged to the guest's port. A
//! guest connection to host CID 2, port P reaches the Unix socket
//! `<uds_path>_<P>` if the host created it, and is reset otherwise: the guest
//! can reach nothing else on the host.

pub mod connection;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Interrupt, VirtioDevice};
use crate::memory::GuestMemory;
use connection::{ConnState, Connection, BUF_ALLOC};

/// Virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data payload of one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Most host connections waiting to send their `CONNECT` line.
pub const MAX_PENDING_CONNECTS: usize = 64;
/// Most live connections per VM.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets (RESPONSE, RST, CREDIT_UPDATE, ...) owed to the guest;
/// past this the TX queue is left alone until the guest posts RX buffers.
pub const MAX_PENDING_CONTROL: usize = 2 * QUEUE_SIZE as usize;

const TYPE_STREAM: u16 = 1;
/// vsock packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Reset.
    pub const RST: u16 = 3;
    /// Orderly shutdown.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Credit update.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Credit request.
    pub const CREDIT_REQUEST: u16 = 7;
}
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
// Event-loop tokens.
const TOKEN_RX: u32 = 0;
const TOKEN_TX: u32 = 1;
const TOKEN_EV: u32 = 2;
const TOKEN_LISTENER: u32 = 3;
const TOKEN_CONN: u32 = 4;
const TOKEN_PENDING: u32 = 5;

/// A packet header the device owes the guest (no data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    local_port: u32,
    peer_port: u32,
    op: u16,
    flags: u32,
}

/// A host stream that has not yet sent its `CONNECT <port>` line.
struct PendingConnect {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    interrupt: Interrupt,
    queue_evts: [EventFd; 3],
    mem: Option<GuestMemory>,
    queues: Vec<Queue>,
    /// Keyed by (host-side port, guest port).
    conns: HashMap<(u32, u32), Connection>,
    pending: HashMap<i32, PendingConnect>,
    control: VecDeque<Control>,
    /// Connections dropped by a reset, still registered with the event loop.
    stale: Vec<Connection>,
    next_local_port: u32,
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved (use 3 or more)")]
    Cid(u64),
    /// The host socket could not be created.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
}

impl Vsock {
    /// A vsock device for guest `cid`, listening on `uds_path`, raising
    /// `interrupt`, with queue notifications arriving on fresh eventfds (see
    /// [`Vsock::queue_evts`]).
    pub fn new(cid: u64, uds_path: &Path, interrupt: Interrupt) -> Result<Self, VsockError> {
        if cid < 3 || cid > u64::from(u32::MAX) {
            return Err(VsockError::Cid(cid));
        }
        let _ = std::fs::remove_file(uds_path);
        let listener = UnixListener::bind(uds_path).map_err(|source| VsockError::Listen {
            path: uds_path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Listen {
                path: uds_path.to_path_buf(),
                source,
            })?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            interrupt,
            queue_evts: [evt()?, evt()?, evt()?],
            mem: None,
            queues: Vec::new(),
            conns: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            stale: Vec::new(),
            next_local_port: 1 << 30,
        })
    }

    /// The eventfds signalled when the guest notifies queue 0 (RX), 1 (TX), 2 (event).
    pub fn queue_evts(&self) -> &[EventFd; 3] {
        &self.queue_evts
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn mem(&self) -> Option<GuestMemory> {
        self.mem.clone()
    }

    /// Handles the guest's TX queue: every packet the guest sent, as long as
    /// fewer than [`MAX_PENDING_CONTROL`] replies are waiting for RX buffers
    /// (the rest stays queued until the guest's next RX kick).
    pub fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(mem) = self.mem() else { return };
        let mut used_any = false;
        while self.control.len() < MAX_PENDING_CONTROL {
            let Some(mut chain) = self.queues[TXQ].pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let data = match pkt.data_slice() {
                        Some(s) if pkt.op() == op::RW => {
                            let n = (pkt.len() as usize).min(s.len());
                            let mut buf = vec![0u8; n];
                            s.subslice(0, n).map(|s| s.copy_to(&mut buf[..])).ok();
                            buf
                        }
                        _ => Vec::new(),
                    };
                    let hdr = Header {
                        src_cid: pkt.src_cid(),
                        dst_cid: pkt.dst_cid(),
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        type_: pkt.type_(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    self.handle_guest_packet(hdr, &data, ops);
                }
                Err(e) => tracing::warn!(error = ?e, "malformed vsock TX descriptor chain dropped"),
            }
            if self.queues[TXQ].add_used(&mem, head, 0).is_err() {
                tracing::warn!("vsock TX used ring update failed");
            }
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
        self.process_rx(ops);
    }

    fn handle_guest_packet(&mut self, h: Header, data: &[u8], ops: &mut EventOps) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            tracing::warn!(
                src_cid = h.src_cid,
                dst_cid = h.dst_cid,
                "vsock packet with wrong CIDs dropped"
            );
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != op::RST {
                self.send_control(key, op::RST, 0);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        }
        match h.op {
            op::REQUEST => self.guest_connect(key, h, ops),
            op::RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == ConnState::Connecting => {
                    c.state = ConnState::Established;
                    let reply = format!("OK {}\n", c.local_port);
                    if !c.push_to_host_raw(reply.as_bytes()) {
                        self.close(key, ops, true);
                    }
                }
                _ => self.close(key, ops, true),
            },
            op::RW => {
                let ok = match self.conns.get_mut(&key) {
                    Some(c) if c.state != ConnState::Connecting && !c.guest_shut_send => {
                        c.push_to_host(data)
                    }
                    _ => {
                        self.close(key, ops, true);
                        return;
                    }
                };
                if !ok {
                    tracing::warn!(
                        port = h.dst_port,
                        "vsock peer overran its credit or host stream broke; reset"
                    );
                    self.close(key, ops, true);
                    return;
                }
                self.update_write_interest(key, ops);
                if self
                    .conns
                    .get(&key)
                    .is_some_and(|c| c.needs_credit_update())
                {
                    self.send_control(key, op::CREDIT_UPDATE, 0);
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.send_control(key, op::CREDIT_UPDATE, 0);
                }
            }
            op::SHUTDOWN => {
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.guest_shut_send = true;
                    if c.to_host.is_empty() {
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                if h.flags & SHUTDOWN_RCV != 0 {
                    c.guest_shut_rcv = true;
                    c.to_guest.clear();
                }
                // Guest data still buffered for the host is delivered first:
                // the reset then follows from the flush in `conn_event`.
                self.close_if_finished(key, ops);
            }
            op::RST => self.close(key, ops, false),
            other => {
                tracing::warn!(op = other, "unknown vsock op; reset");
                self.close(key, ops, true);
            }
        }
    }

    fn guest_connect(&mut self, key: (u32, u32), _h: Header, ops: &mut EventOps) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.send_control(key, op::RST, 0);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), key.0));
        let conn = UnixStream::connect(&path)
            .and_then(|s| Connection::new(s, ConnState::Established, key.0, key.1));
        match conn {
            Ok(mut c) => {
                c.update_peer_credit(_h.buf_alloc, _h.fwd_cnt);
                let fd = c.stream.as_raw_fd();
                if ops
                    .add(Events::with_data_raw(
                        fd,
                        TOKEN_CONN,
                        EventSet::IN | EventSet::EDGE_TRIGGERED,
                    ))
                    .is_err()
                {
                    self.send_control(key, op::RST, 0);
                    return;
                }
                self.conns.insert(key, c);
                self.send_control(key, op::RESPONSE, 0);
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "guest connection refused");
                self.send_control(key, op::RST, 0);
            }
        }
    }

    fn update_write_interest(&mut self, key: (u32, u32), ops: &mut EventOps) {
        if let Some(c) = self.conns.get(&key) {
            let mut set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            if !c.to_host.is_empty() {
                set |= EventSet::OUT;
            }
            let _ = ops.modify(Events::with_data_raw(c.stream.as_raw_fd(), TOKEN_CONN, set));
        }
    }

    /// Resets and drops the connection once both directions are done.
    fn close_if_finished(&mut self, key: (u32, u32), ops: &mut EventOps) {
        if self.conns.get(&key).is_some_and(Connection::finished) {
            self.close(key, ops, true);
        }
    }

    /// Deregisters and drops connections a device reset left behind.
    fn drop_stale(&mut self, ops: &mut EventOps) {
        for c in self.stale.drain(..) {
            let _ = ops.remove(Events::with_data_raw(
                c.stream.as_raw_fd(),
                TOKEN_CONN,
                EventSet::IN,
            ));
        }
    }

    fn close(&mut self, key: (u32, u32), ops: &mut EventOps, send_rst: bool) {
        if let Some(c) = self.conns.remove(&key) {
            let _ = ops.remove(Events::with_data_raw(
                c.stream.as_raw_fd(),
                TOKEN_CONN,
                EventSet::IN,
            ));
        }
        if send_rst {
            self.send_control(key, op::RST, 0);
        }
    }

    fn send_control(&mut self, key: (u32, u32), op: u16, flags: u32) {
        let ctl = Control {
            local_port: key.0,
            peer_port: key.1,
            op,
            flags,
        };
        // A queued credit update carries the current fwd_cnt when sent: one is enough.
        if op == op::CREDIT_UPDATE && self.control.contains(&ctl) {
            return;
        }
        self.control.push_back(ctl);
    }

    /// Fills the guest's RX queue: owed control packets first, then data from
    /// host streams as far as each connection's credit allows.
    pub fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(mem) = self.mem() else { return };
        self.announce_host_eof(ops);
        let mut used_any = false;
        loop {
            let next = if let Some(ctl) = self.control.front().copied() {
                Some((ctl, Vec::new()))
            } else {
                // Reading may just have met a host end of stream.
                match self.next_data() {
                    None if self.announce_host_eof(ops) => continue,
                    next => next,
                }
            };
            let Some((ctl, data)) = next else { break };
            let Some(mut chain) = self.queues[RXQ].pop_descriptor_chain(&mem) else {
                // No buffers: put data back and wait for the guest's kick.
                self.unsend(ctl, data);
                break;
            };
            let head = chain.head_index();
            let used = match VsockPacket::from_rx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    let (buf_alloc, fwd_cnt) =
                        match self.conns.get_mut(&(ctl.local_port, ctl.peer_port)) {
                            Some(c) => {
                                c.last_fwd_cnt_sent = c.fwd_cnt;
                                (BUF_ALLOC, c.fwd_cnt)
                            }
                            None => (0, 0),
                        };
                    let mut sent = 0usize;
                    if let Some(slice) = pkt.data_slice() {
                        sent = data.len().min(slice.len());
                        if sent > 0 {
                            let _ = slice.write_slice(&data[..sent], 0);
                        }
                    }
                    if sent < data.len() {
                        if let Some(c) = self.conns.get_mut(&(ctl.local_port, ctl.peer_port)) {
                            let mut rest = data[sent..].to_vec();
                            rest.extend_from_slice(&c.to_guest);
                            c.to_guest = rest;
                        }
                    }
                    if let Some(c) = self.conns.get_mut(&(ctl.local_port, ctl.peer_port)) {
                        c.tx_cnt = c.tx_cnt.wrapping_add(sent as u32);
                    }
                    if ctl.op != op::RW {
                        self.control.pop_front();
                    }
                    pkt.set_src_cid(HOST_CID)
                        .set_dst_cid(self.cid)
                        .set_src_port(ctl.local_port)
                        .set_dst_port(ctl.peer_port)
                        .set_type(TYPE_STREAM)
                        .set_op(ctl.op)
                        .set_flags(ctl.flags)
                        .set_len(sent as u32)
                        .set_buf_alloc(buf_alloc)
                        .set_fwd_cnt(fwd_cnt);
                    (PKT_HEADER_SIZE + sent) as u32
                }
                Err(e) => {
                    // The packet waits for the next (valid) buffer.
                    tracing::warn!(error = ?e, "malformed vsock RX descriptor chain");
                    self.unsend(ctl, data);
                    0
                }
            };
            if self.queues[RXQ].add_used(&mem, head, used).is_err() {
                tracing::warn!("vsock RX used ring update failed");
            }
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
    }

    /// Host streams that ended with everything delivered: tells the guest
    /// once that the host sends no more (it may still write: half-close), or
    /// resets if the guest is done too. Returns whether anything was queued.
    fn announce_host_eof(&mut self, ops: &mut EventOps) -> bool {
        let ended: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.state == ConnState::Established && c.host_eof && c.to_guest.is_empty()
            })
            .map(|(k, _)| *k)
            .collect();
        let any = !ended.is_empty();
        for key in ended {
            if let Some(c) = self.conns.get_mut(&key) {
                c.state = ConnState::Closing;
                if c.finished() {
                    self.close(key, ops, true);
                } else {
                    self.send_control(key, op::SHUTDOWN, SHUTDOWN_SEND);
                }
            }
        }
        any
    }

    /// Returns host data that could not be delivered to the front of its
    /// connection's buffer (control packets stay queued until delivered).
    fn unsend(&mut self, ctl: Control, data: Vec<u8>) {
        if ctl.op != op::RW {
            return;
        }
        if let Some(c) = self.conns.get_mut(&(ctl.local_port, ctl.peer_port)) {
            let mut d = data;
            d.extend_from_slice(&c.to_guest);
            c.to_guest = d;
        }
    }

    /// The next chunk of host data some connection can send.
    fn next_data(&mut self) -> Option<(Control, Vec<u8>)> {
        for (key, c) in self.conns.iter_mut() {
            c.fill_from_host();
            if !c.to_guest.is_empty() {
                let credit = c.peer_credit() as usize;
                if credit == 0 {
                    continue;
                }
                let n = c.to_guest.len().min(credit).min(MAX_PKT_DATA as usize);
                let data: Vec<u8> = c.to_guest.drain(..n).collect();
                return Some((
                    Control {
                        local_port: key.0,
                        peer_port: key.1,
                        op: op::RW,
                        flags: 0,
                    },
                    data,
                ));
            }
        }
        None
    }

    fn accept_host_connections(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING_CONNECTS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if ops
                        .add(Events::with_data_raw(fd, TOKEN_PENDING, EventSet::IN))
                        .is_ok()
                    {
                        self.pending.insert(
                            fd,
                            PendingConnect {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock accept failed");
                    break;
                }
            }
        }
    }

    fn read_connect_line(&mut self, fd: i32, ops: &mut EventOps) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; 64];
        let done = loop {
            match p.stream.read(&mut buf) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(n) => {
                    p.line.extend_from_slice(&buf[..n]);
                    if p.line.contains(&b'\n') {
                        break Ok(());
                    }
                    if p.line.len() > 32 {
                        break Err("CONNECT line too long");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break Err("read error"),
            }
        };
        let p = self.pending.remove(&fd).expect("pending entry");
        let _ = ops.remove(Events::with_data_raw(fd, TOKEN_PENDING, EventSet::IN));
        let port = done.and_then(|()| parse_connect(&p.line).ok_or("malformed CONNECT line"));
        let port = match port {
            Ok(port) => port,
            Err(why) => {
                tracing::debug!(why, "host vsock connection dropped");
                return;
            }
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let local = self.next_local_port;
        self.next_local_port = self.next_local_port.wrapping_add(1).max(1 << 30);
        let key = (local, port);
        let Ok(c) = Connection::new(p.stream, ConnState::Connecting, local, port) else {
            return;
        };
        if ops
            .add(Events::with_data_raw(
                c.stream.as_raw_fd(),
                TOKEN_CONN,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ))
            .is_err()
        {
            return;
        }
        self.conns.insert(key, c);
        self.send_control(key, op::REQUEST, 0);
        self.process_rx(ops);
    }

    fn conn_event(&mut self, fd: i32, set: EventSet, ops: &mut EventOps) {
        let Some(key) = self
            .conns
            .iter()
            .find(|(_, c)| c.stream.as_raw_fd() == fd)
            .map(|(k, _)| *k)
        else {
            return;
        };
        let c = self.conns.get_mut(&key).expect("connection");
        if set.contains(EventSet::IN)
            || set.contains(EventSet::HANG_UP)
            || set.contains(EventSet::READ_HANG_UP)
        {
            c.readable = true;
        }
        if set.contains(EventSet::OUT) {
            if !c.flush_to_host() {
                self.close(key, ops, true);
                self.process_rx(ops);
                return;
            }
            if c.to_host.is_empty() && c.guest_shut_send {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
            let update = c.needs_credit_update() && !c.guest_shut_send;
            self.update_write_interest(key, ops);
            if update {
                self.send_control(key, op::CREDIT_UPDATE, 0);
            }
            self.close_if_finished(key, ops);
        }
        self.process_rx(ops);
    }
}

trait PushRaw {
    fn push_to_host_raw(&mut self, data: &[u8]) -> bool;
}

impl PushRaw for Connection {
    /// Writes transport bytes (the `OK` line) that do not count as guest data.
    fn push_to_host_raw(&mut self, data: &[u8]) -> bool {
        let mut off = 0;
        while off < data.len() {
            match self.stream.write(&data[off..]) {
                Ok(0) => return false,
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// A vsock packet header, copied out of guest memory.
#[derive(Debug, Clone, Copy)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

/// Parses `CONNECT <port>\n`.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\n')?;
    let port = s.strip_prefix("CONNECT ")?;
    port.trim_end_matches('\r').parse().ok()
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn avail_features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
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
        if queues.len() != 3 {
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
        self.control.clear();
        // Runs on a vCPU thread without the event loop's ops: park the
        // connections and wake the loop to deregister their fds.
        self.stale.extend(self.conns.drain().map(|(_, c)| c));
        if !self.stale.is_empty() {
            let _ = self.queue_evts[EVQ].write(1);
        }
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn init_events(&mut self, ops: &mut EventOps) {
        let regs = [
            (self.queue_evts[RXQ].as_raw_fd(), TOKEN_RX),
            (self.queue_evts[TXQ].as_raw_fd(), TOKEN_TX),
            (self.queue_evts[EVQ].as_raw_fd(), TOKEN_EV),
            (self.listener.as_raw_fd(), TOKEN_LISTENER),
        ];
        for (fd, token) in regs {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                tracing::error!(error = ?e, "cannot register vsock fd with the event loop");
            }
        }
    }
    fn process_event(&mut self, events: Events, ops: &mut EventOps) {
        // The device is active exactly while it holds the driver's memory.
        let activated = self.mem.is_some();
        self.drop_stale(ops);
        match events.data() {
            TOKEN_RX | TOKEN_TX | TOKEN_EV => {
                let q = events.data() as usize;
                let _ = self.queue_evts[q].read();
                if !activated {
                    return;
                }
                match events.data() {
                    TOKEN_TX => self.process_tx(ops),
                    TOKEN_RX => {
                        // New buffers take owed replies first, which may let
                        // TX packets held back by MAX_PENDING_CONTROL through.
                        self.process_rx(ops);
                        self.process_tx(ops);
                    }
                    _ => {}
                }
            }
            TOKEN_LISTENER => self.accept_host_connections(ops),
            TOKEN_PENDING if activated => self.read_connect_line(events.fd(), ops),
            TOKEN_PENDING => {
                // The guest has no driver yet: drop the early connection.
                let fd = events.fd();
                let _ = ops.remove(Events::with_data_raw(fd, TOKEN_PENDING, EventSet::IN));
                self.pending.remove(&fd);
            }
            TOKEN_CONN if activated => self.conn_event(events.fd(), events.event_set(), ops),
            _ => {}
        }
    }
}
