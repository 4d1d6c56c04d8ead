//! The host side of vsock over Unix sockets: a listener where host
//! processes connect and write `CONNECT <port>\n`, per-port sockets
//! `<uds_path>_<port>` that guest connections reach, and the multiplexing of
//! every [`Connection`] onto the device's packets.
//!
//! Host-bound writes never block: bytes a socket does not take stay in the
//! connection's buffer (bounded by the credit advertised to the guest) and
//! are flushed when the socket reports EPOLLOUT, which is asked for only
//! while bytes are pending.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events};

use super::connection::{ConnState, Connection, BUF_ALLOC};
use super::packet::{op, Header, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{VsockBackend, VsockError, FIRST_BACKEND_TOKEN, QUEUE_SIZE};

/// Most host connections waiting to send their `CONNECT` line.
pub const MAX_PENDING_CONNECTS: usize = 64;
/// Most live connections per VM.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets (RESPONSE, RST, CREDIT_UPDATE, ...) owed to the guest;
/// past this the TX queue is left alone until the guest posts RX buffers.
pub const MAX_PENDING_CONTROL: usize = 2 * QUEUE_SIZE as usize;

// Event-loop tokens of the muxer's fds.
const TOKEN_LISTENER: u32 = FIRST_BACKEND_TOKEN;
const TOKEN_CONN: u32 = FIRST_BACKEND_TOKEN + 1;
const TOKEN_PENDING: u32 = FIRST_BACKEND_TOKEN + 2;

/// Connections are keyed by (host-side port, guest port).
type Key = (u32, u32);

/// A packet header the muxer owes the guest (no data).
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

/// Observer of the host paths guest connections try (see
/// [`VsockMuxer::set_connect_hook`]).
pub type ConnectHook = Box<dyn FnMut(&Path) + Send>;

/// The Unix-socket vsock backend.
pub struct VsockMuxer {
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    pending: HashMap<i32, PendingConnect>,
    control: VecDeque<Control>,
    /// Connections dropped by a reset, still registered with the event loop.
    stale: Vec<Connection>,
    next_local_port: u32,
    connect_hook: Option<ConnectHook>,
}

impl VsockMuxer {
    /// Listens on `uds_path` (replacing a stale socket file).
    pub fn new(uds_path: &Path) -> Result<Self, VsockError> {
        let _ = std::fs::remove_file(uds_path);
        let listen_err = |source| VsockError::Listen {
            path: uds_path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Self {
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            stale: Vec::new(),
            next_local_port: 1 << 30,
            connect_hook: None,
        })
    }

    /// Bytes the muxer holds for its connections (guest data waiting for
    /// host streams, host data waiting for the guest, partial `CONNECT`
    /// lines) plus owed control packets: bounded by the per-connection
    /// credit and the connection limits whatever the guest does.
    pub fn buffered_bytes(&self) -> usize {
        let conns: usize = self
            .conns
            .values()
            .chain(self.stale.iter())
            .map(|c| c.to_host.len() + c.to_guest.len())
            .sum();
        let pending: usize = self.pending.values().map(|p| p.line.len()).sum();
        conns + pending + self.control.len() * std::mem::size_of::<Control>()
    }

    /// Test hook: `hook` sees every host path a guest connection is about
    /// to connect to, before the connect. For the fuzz target and tests,
    /// which check that a guest reaches nothing but `<uds_path>_<port>`; the
    /// VMM itself never sets one.
    pub fn set_connect_hook(&mut self, hook: ConnectHook) {
        self.connect_hook = Some(hook);
    }

    fn register_conn(ops: &mut EventOps, c: &Connection) -> bool {
        ops.add(Events::with_data_raw(
            c.stream.as_raw_fd(),
            TOKEN_CONN,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        ))
        .is_ok()
    }

    fn guest_connect(&mut self, key: Key, h: &Header, ops: &mut EventOps) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.send_control(key, op::RST, 0);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), key.0));
        if let Some(hook) = &mut self.connect_hook {
            hook(&path);
        }
        let conn = UnixStream::connect(&path)
            .and_then(|s| Connection::new(s, ConnState::Established, key.0, key.1));
        match conn {
            Ok(mut c) => {
                c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
                if !Self::register_conn(ops, &c) {
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

    /// Asks for EPOLLOUT exactly while bytes wait for the host stream.
    fn update_write_interest(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(c) = self.conns.get(&key) {
            let mut set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            if !c.to_host.is_empty() {
                set |= EventSet::OUT;
            }
            let _ = ops.modify(Events::with_data_raw(c.stream.as_raw_fd(), TOKEN_CONN, set));
        }
    }

    /// Resets and drops the connection once both directions are done.
    fn close_if_finished(&mut self, key: Key, ops: &mut EventOps) {
        if self.conns.get(&key).is_some_and(Connection::finished) {
            self.close(key, ops, true);
        }
    }

    fn close(&mut self, key: Key, ops: &mut EventOps, send_rst: bool) {
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

    fn send_control(&mut self, key: Key, op: u16, flags: u32) {
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

    /// Host streams that ended with everything delivered: tells the guest
    /// once that the host sends no more (it may still write: half-close), or
    /// resets if the guest is done too. Returns whether anything was queued.
    fn announce_host_eof(&mut self, ops: &mut EventOps) -> bool {
        let ended: Vec<Key> = self
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

    /// The next chunk (at most `room` bytes) of host data some connection
    /// can send; the connection counts it as sent.
    fn next_data(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if room == 0 {
            return None;
        }
        for (key, c) in self.conns.iter_mut() {
            c.fill_from_host();
            if c.to_guest.is_empty() {
                continue;
            }
            let credit = c.peer_credit() as usize;
            if credit == 0 {
                continue;
            }
            let n = c
                .to_guest
                .len()
                .min(credit)
                .min(MAX_PKT_DATA as usize)
                .min(room);
            let data: Vec<u8> = c.to_guest.drain(..n).collect();
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            c.last_fwd_cnt_sent = c.fwd_cnt;
            let mut hdr = Header::stream(key.0, key.1, op::RW, 0);
            hdr.buf_alloc = BUF_ALLOC;
            hdr.fwd_cnt = c.fwd_cnt;
            return Some((hdr, data));
        }
        None
    }

    /// The header of an owed control packet, with the connection's current
    /// credit (none once the connection is gone).
    fn control_header(&mut self, ctl: Control) -> Header {
        let mut hdr = Header::stream(ctl.local_port, ctl.peer_port, ctl.op, ctl.flags);
        if let Some(c) = self.conns.get_mut(&(ctl.local_port, ctl.peer_port)) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
            hdr.buf_alloc = BUF_ALLOC;
            hdr.fwd_cnt = c.fwd_cnt;
        }
        hdr
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
        if !Self::register_conn(ops, &c) {
            return;
        }
        self.conns.insert(key, c);
        self.send_control(key, op::REQUEST, 0);
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
    }
}

impl VsockBackend for VsockMuxer {
    fn init_events(&mut self, ops: &mut EventOps) {
        let listener =
            Events::with_data_raw(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN);
        if let Err(e) = ops.add(listener) {
            tracing::error!(error = ?e, "cannot register the vsock listener with the event loop");
        }
    }

    fn process_event(&mut self, events: Events, ops: &mut EventOps, active: bool) {
        match events.data() {
            TOKEN_LISTENER => self.accept_host_connections(ops),
            TOKEN_PENDING if active => self.read_connect_line(events.fd(), ops),
            TOKEN_PENDING => {
                // The guest has no driver yet: drop the early connection.
                let fd = events.fd();
                let _ = ops.remove(Events::with_data_raw(fd, TOKEN_PENDING, EventSet::IN));
                self.pending.remove(&fd);
            }
            TOKEN_CONN if active => self.conn_event(events.fd(), events.event_set(), ops),
            _ => {}
        }
    }

    fn send_pkt(&mut self, h: &Header, data: &[u8], ops: &mut EventOps) {
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
                    if !c.push_raw_to_host(reply.as_bytes()) {
                        self.close(key, ops, true);
                    } else {
                        self.update_write_interest(key, ops);
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
                    crate::guest_fault!(
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
                crate::guest_fault!(op = other, "unknown vsock op; reset");
                self.close(key, ops, true);
            }
        }
    }

    fn recv_pkt(&mut self, room: usize, ops: &mut EventOps) -> Option<(Header, Vec<u8>)> {
        loop {
            if let Some(ctl) = self.control.pop_front() {
                return Some((self.control_header(ctl), Vec::new()));
            }
            if let Some(data) = self.next_data(room) {
                return Some(data);
            }
            // Reading may just have met a host end of stream.
            if !self.announce_host_eof(ops) {
                return None;
            }
        }
    }

    fn accepts_tx(&self) -> bool {
        self.control.len() < MAX_PENDING_CONTROL
    }

    fn reset(&mut self) -> bool {
        self.control.clear();
        self.stale.extend(self.conns.drain().map(|(_, c)| c));
        !self.stale.is_empty()
    }

    fn release_stale(&mut self, ops: &mut EventOps) {
        for c in self.stale.drain(..) {
            let _ = ops.remove(Events::with_data_raw(
                c.stream.as_raw_fd(),
                TOKEN_CONN,
                EventSet::IN,
            ));
        }
    }

    fn connection_count(&self) -> usize {
        self.conns.len()
    }
}

// No `Drop` removing the socket file: by the time the muxer is dropped the
// VMM runs under its seccomp filters, which allow no unlink (a removal here
// ended VMMs with SIGSYS). The socket lives in the VM's run directory, which
// its owner (the daemon) removes; a stale file is replaced on the next start.

/// Parses `CONNECT <port>\n`.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\n')?;
    let port = s.strip_prefix("CONNECT ")?;
    port.trim_end_matches('\r').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r\n"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52"), None);
        assert_eq!(parse_connect(b"connect 52\n"), None);
        assert_eq!(parse_connect(b"CONNECT x\n"), None);
    }
}
