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
    /// Guest data not yet accepted by the host stream (bounded by BUF_ALLOC).
    pub to_host: Vec<u8>,
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
    pub fn push_to_host(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return false;
        }
        self.to_host.extend_from_slice(data);
        self.flush_to_host();
        true
    }

    /// Writes buffered guest data to the host stream as far as it takes it.
    /// Returns false when the stream is broken.
    pub fn flush_to_host(&mut self) -> bool {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
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
}
