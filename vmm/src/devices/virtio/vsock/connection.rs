//! One vsock stream connection bridged to a host Unix stream: state,
//! buffering and credit-based flow control.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

/// Bytes of guest data the host side buffers per connection (advertised to
/// the guest as `buf_alloc`).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this much guest data was forwarded since the
/// guest last heard our `fwd_cnt`.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Largest chunk read from the host stream at once.
pub const READ_CHUNK: usize = 64 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host asked (CONNECT), REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows both ways.
    Established,
    /// The host stream ended and the guest was told (SHUTDOWN, SEND flag);
    /// guest data still flows to the host until the guest shuts down too.
    Closing,
}

/// A connection between guest port `peer_port` and host-side port `local_port`.
pub struct Connection {
    /// The host end.
    pub stream: UnixStream,
    /// Lifecycle state.
    pub state: ConnState,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    /// Guest's receive buffer size.
    pub peer_buf_alloc: u32,
    /// Bytes the guest has consumed of what we sent.
    pub peer_fwd_cnt: u32,
    /// Bytes we sent to the guest.
    pub tx_cnt: u32,
    /// Bytes of guest data we forwarded to the host stream.
    pub fwd_cnt: u32,
    /// `fwd_cnt` the guest last heard from us.
    pub last_fwd_cnt_sent: u32,
    /// Bytes not yet accepted by the host stream: transport bytes (see
    /// `raw_pending`) then guest data (bounded by BUF_ALLOC). The device
    /// asks for EPOLLOUT only while this is not empty.
    pub to_host: Vec<u8>,
    /// How many bytes at the front of `to_host` are transport bytes (the
    /// `OK <port>` line) rather than guest data: they use no guest credit
    /// and do not count in `fwd_cnt`.
    pub raw_pending: usize,
    /// Host data read but not yet delivered to the guest.
    pub to_guest: Vec<u8>,
    /// The host stream may have more to read.
    pub readable: bool,
    /// The host stream reached end of file.
    pub host_eof: bool,
    /// The guest said it will send no more.
    pub guest_shut_send: bool,
    /// The guest said it will receive no more.
    pub guest_shut_rcv: bool,
}

impl Connection {
    /// A new connection over `stream` (set non-blocking).
    pub fn new(
        stream: UnixStream,
        state: ConnState,
        local_port: u32,
        peer_port: u32,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_host: Vec::new(),
            raw_pending: 0,
            to_guest: Vec::new(),
            readable: true,
            host_eof: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
        })
    }

    /// Bytes the guest can still take from us.
    /// Zero when the guest shrank its buffer below what is in flight, or
    /// reports a `fwd_cnt` ahead of what we sent.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Both directions are done: the guest sends no more and all its data
    /// reached the host, and either the guest receives no more or the host
    /// stream ended. The connection can be reset and dropped.
    pub fn finished(&self) -> bool {
        self.guest_shut_send
            && self.to_host.is_empty()
            && (self.guest_shut_rcv || self.state == ConnState::Closing)
    }

    /// Records the guest's view of its buffer from any packet header.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Accepts guest data for the host. Returns false if the guest ignored
    /// our credit (more pending data than `BUF_ALLOC`): a protocol violation.
    /// Data the host stream does not take now stays buffered (flushed on
    /// EPOLLOUT); the guest's credit bounds it, so nothing ever waits.
    pub fn push_to_host(&mut self, data: &[u8]) -> bool {
        let guest_bytes = self.to_host.len() - self.raw_pending;
        if guest_bytes + data.len() > BUF_ALLOC as usize {
            return false;
        }
        self.to_host.extend_from_slice(data);
        // A broken stream shows up as end of stream or an error on the next
        // event; the data is accepted either way.
        self.flush_to_host();
        true
    }

    /// Queues transport bytes (the `OK <port>` line) for the host ahead of
    /// any guest data, and writes as much as the stream takes. Returns false
    /// when the stream is broken.
    pub fn push_raw_to_host(&mut self, data: &[u8]) -> bool {
        let at = self.raw_pending;
        self.to_host.splice(at..at, data.iter().copied());
        self.raw_pending += data.len();
        self.flush_to_host()
    }

    /// Writes buffered bytes to the host stream as far as it takes them,
    /// without blocking. Returns false when the stream is broken.
    pub fn flush_to_host(&mut self) -> bool {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    let raw = n.min(self.raw_pending);
                    self.raw_pending -= raw;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - raw) as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Whether the guest should hear our `fwd_cnt` now.
    pub fn needs_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD
    }

    /// Reads host data into `to_guest` if it is empty and the guest has
    /// credit. Sets `host_eof` at end of stream.
    pub fn fill_from_host(&mut self) {
        if !self.to_guest.is_empty()
            || !self.readable
            || self.host_eof
            || self.guest_shut_rcv
            || self.state != ConnState::Established
        {
            return;
        }
        let want = (self.peer_credit() as usize).min(READ_CHUNK);
        if want == 0 {
            return;
        }
        let mut buf = vec![0u8; want];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.host_eof = true;
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    self.to_guest = buf;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.host_eof = true;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accounting_wraps_and_limits() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, ConnState::Established, 1, 2).unwrap();
        assert_eq!(c.peer_credit(), 0, "no credit before the guest speaks");
        c.update_peer_credit(1000, 0);
        assert_eq!(c.peer_credit(), 1000);
        c.tx_cnt = 600;
        assert_eq!(c.peer_credit(), 400);
        c.update_peer_credit(1000, 600);
        assert_eq!(c.peer_credit(), 1000);
        c.tx_cnt = 5u32.wrapping_sub(10);
        c.update_peer_credit(1000, 10u32.wrapping_sub(20));
        assert_eq!(c.peer_credit(), 995);
        // The guest shrank its buffer below what is in flight: no credit.
        c.update_peer_credit(2, 10u32.wrapping_sub(20));
        assert_eq!(c.peer_credit(), 0);
        // A fwd_cnt ahead of what we sent is nonsense: no credit either.
        c.update_peer_credit(1000, 10);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_beyond_our_buffer_is_a_violation() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, ConnState::Established, 1, 2).unwrap();
        assert!(c.push_to_host(b"hello"));
        let mut got = [0u8; 5];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(c.fwd_cnt, 5);
        // The host end stops reading: data piles up until the credit is gone.
        let chunk = vec![7u8; 64 * 1024];
        let mut accepted = 0usize;
        while c.push_to_host(&chunk) {
            accepted += chunk.len();
            assert!(accepted < 4 * 1024 * 1024, "buffer must be bounded");
        }
        assert!(c.to_host.len() <= BUF_ALLOC as usize);
    }

    #[test]
    fn a_full_host_socket_buffers_instead_of_blocking() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, ConnState::Connecting, 1, 2).unwrap();
        // Fill the socket so the next write would block.
        let chunk = vec![1u8; 64 * 1024];
        while c.stream.write(&chunk).is_ok() {}
        assert!(
            c.push_raw_to_host(b"OK 1\n"),
            "a would-block write is not an error"
        );
        assert_eq!((c.raw_pending, c.to_host.len()), (5, 5));
        assert!(c.push_to_host(b"data"));
        assert_eq!(c.to_host.len(), 9);
        assert_eq!(c.fwd_cnt, 0, "nothing reached the host yet");
        // The host drains its socket: the buffered bytes follow in order and
        // only guest data counts as forwarded.
        b.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut tail = Vec::new();
        loop {
            while let Ok(n) = (&b).read(&mut sink) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&sink[..n]);
            }
            assert!(c.flush_to_host());
            if c.to_host.is_empty() {
                while let Ok(n) = (&b).read(&mut sink) {
                    tail.extend_from_slice(&sink[..n]);
                }
                break;
            }
        }
        assert!(tail.ends_with(b"OK 1\ndata"));
        assert_eq!((c.fwd_cnt, c.raw_pending), (4, 0));
    }
}
