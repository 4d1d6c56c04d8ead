//! vsock packets over the `virtio-vsock` crate: the header fields the device
//! and its backend exchange, reading a guest TX chain, and filling a guest
//! RX buffer.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::Bytes;

use crate::memory::GuestMemory;

/// A packet in a guest buffer (guest memory has no dirty bitmap).
pub type GuestPacket<'a> = VsockPacket<'a, ()>;

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Largest data payload of one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// `type` of a stream socket packet (the only type silo supports).
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

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

/// A vsock packet header, copied out of (or to be written into) guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (see [`op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN's direction bits).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

impl Header {
    /// A host-to-guest stream packet header between two ports; the device
    /// fills in the context ids.
    pub fn stream(src_port: u32, dst_port: u32, op: u16, flags: u32) -> Self {
        Self {
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            flags,
            ..Self::default()
        }
    }
}

/// Reads the packet the guest put in a TX descriptor chain: its header and,
/// for data packets, a copy of its payload.
pub fn read_tx(
    mem: &GuestMemory,
    chain: &mut DescriptorChain<&GuestMemory>,
) -> Result<(Header, Vec<u8>), virtio_vsock::packet::Error> {
    let pkt = VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_DATA)?;
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
    Ok((hdr, data))
}

/// Room for payload in a guest RX buffer.
pub fn rx_room(pkt: &GuestPacket<'_>) -> usize {
    pkt.data_slice().map_or(0, |s| s.len())
}

/// Writes `hdr` and `data` into a guest RX buffer; returns the bytes used
/// (header plus payload). `data` must fit in [`rx_room`].
pub fn write_rx(pkt: &mut GuestPacket<'_>, hdr: &Header, data: &[u8]) -> u32 {
    let mut sent = 0usize;
    if let Some(slice) = pkt.data_slice() {
        sent = data.len().min(slice.len());
        if sent > 0 {
            let _ = slice.write_slice(&data[..sent], 0);
        }
    }
    pkt.set_src_cid(hdr.src_cid)
        .set_dst_cid(hdr.dst_cid)
        .set_src_port(hdr.src_port)
        .set_dst_port(hdr.dst_port)
        .set_type(hdr.type_)
        .set_op(hdr.op)
        .set_flags(hdr.flags)
        .set_len(sent as u32)
        .set_buf_alloc(hdr.buf_alloc)
        .set_fwd_cnt(hdr.fwd_cnt);
    (PKT_HEADER_SIZE + sent) as u32
}
