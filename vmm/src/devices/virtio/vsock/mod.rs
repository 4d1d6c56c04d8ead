//! The virtio-vsock device (id 19), stream sockets only, split the way
//! Firecracker splits it:
//!
//! - [`device`]: the virtio device and its queues;
//! - [`packet`]: packet headers and buffers over the `virtio-vsock` crate;
//! - [`muxer`]: the host side over Unix sockets, behind [`VsockBackend`];
//! - [`connection`]: one connection's state machine, buffers and credit.
//!
//! Host side, per VM: a Unix listener at `uds_path`. A host process connects,
//! writes `CONNECT <port>\n` and, once the guest accepts, reads
//! `OK <host_port>\n`; the stream is then bridged to the guest's port. A
//! guest connection to host CID 2, port P reaches the Unix socket
//! `<uds_path>_<P>` if the host created it, and is reset otherwise: the guest
//! can reach nothing else on the host.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;

use std::path::PathBuf;

use event_manager::{EventOps, Events};

pub use device::{Vsock, VIRTIO_ID_VSOCK};
pub use muxer::{
    parse_connect, VsockMuxer, MAX_CONNECTIONS, MAX_PENDING_CONNECTS, MAX_PENDING_CONTROL,
};
pub use packet::{op, Header, HOST_CID, MAX_PKT_DATA};

/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// First event-loop token a backend may use for its fds (the device uses
/// the ones below for its queue eventfds).
pub const FIRST_BACKEND_TOKEN: u32 = 3;

/// The host side of a vsock device: where guest packets go and where
/// packets for the guest come from. The device moves packets between the
/// guest's queues and its backend; the backend owns connections and host
/// file descriptors (registered with the device's event loop under tokens
/// from [`FIRST_BACKEND_TOKEN`] up).
pub trait VsockBackend: Send {
    /// Registers the backend's host fds with the event loop.
    fn init_events(&mut self, ops: &mut EventOps);
    /// Handles one of its ready fds; `active` tells whether the guest
    /// driver has set the device up.
    fn process_event(&mut self, events: Events, ops: &mut EventOps, active: bool);
    /// Takes one stream packet the guest sent to the host (`data` is the
    /// payload of RW packets).
    fn send_pkt(&mut self, hdr: &Header, data: &[u8], ops: &mut EventOps);
    /// The next packet for the guest, with at most `room` bytes of payload;
    /// the device sets its context ids. `None` when nothing is owed.
    fn recv_pkt(&mut self, room: usize, ops: &mut EventOps) -> Option<(Header, Vec<u8>)>;
    /// Whether the backend takes more guest packets now: false while too
    /// many replies wait for guest RX buffers (back-pressure on TX).
    fn accepts_tx(&self) -> bool;
    /// Drops every connection (device reset), without the event loop at
    /// hand; returns whether fds now wait for [`VsockBackend::release_stale`].
    fn reset(&mut self) -> bool;
    /// Deregisters the fds of connections dropped by a reset.
    fn release_stale(&mut self, ops: &mut EventOps);
    /// Number of live connections.
    fn connection_count(&self) -> usize;
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
