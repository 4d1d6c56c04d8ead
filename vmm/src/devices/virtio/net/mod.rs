//! The virtio-net device (id 1): one RX and one TX queue between the guest
//! and a tap interface on the host ([`tap::Tap`]), served on the devices
//! thread, with token-bucket rate limiting per direction
//! ([`crate::bandwidth`]).
//!
//! The device offers `VIRTIO_NET_F_MAC` (and `VIRTIO_F_VERSION_1`),
//! `VIRTIO_RING_F_EVENT_IDX` (the guest kicks only when the device asked,
//! at the `avail_event` it writes once it runs out of chains, and is
//! interrupted only past the `used_event` it wrote), `VIRTIO_NET_F_MRG_RXBUF`
//! (a frame to the guest may span several RX chains, `num_buffers` in its
//! header) and, on a backend that carries virtio-net headers (the tap), the
//! offloads of [`offload`] both ways: checksum and TCP segmentation left to
//! the host (TX) and to the guest (RX). No control queue. So every frame is
//! an Ethernet frame of at most [`MAX_FRAME_LEN`] bytes or a TCP segment of
//! at most [`MAX_GSO_FRAME_LEN`], behind a 12-byte `virtio_net_hdr_v1`.
//! Each direction goes through one bounce buffer allocated once: the tap's
//! header is checked there before the guest sees it, and a guest frame is
//! copied there from the chain [`gather`] took apart in one walk, behind
//! the device's checked copy of its header, so no system call ever points
//! into guest memory.

mod device;
pub mod gather;
pub mod offload;
pub mod tap;

use std::os::fd::RawFd;

pub use device::{Net, NetLimits, NetStats, VIRTIO_ID_NET};

/// Queue size of RX and TX.
pub const QUEUE_SIZE: u16 = 256;
/// Length of `virtio_net_hdr_v1` (with `num_buffers`), which a virtio 1.x
/// driver puts before every frame in both directions.
pub const NET_HDR_LEN: usize = 12;
/// The largest frame the device passes without segmentation offload: an
/// Ethernet frame with a 1500-byte payload and one VLAN tag (1514 + 4).
/// Larger frames from either side without a segmentation header are
/// dropped and counted.
pub const MAX_FRAME_LEN: usize = 1518;
/// The largest TCP segment either side may hand over for the other to cut
/// (segmentation offload): Linux's 64 KiB limit on a GSO packet plus an
/// Ethernet header and a VLAN tag.
pub const MAX_GSO_FRAME_LEN: usize = 65_536 + 18;
/// Size of the bounce buffer reads from the tap go into: a header and the
/// largest segment, plus one byte, so that a larger frame is seen as one
/// (and dropped), never split.
pub const TAP_READ_LEN: usize = NET_HDR_LEN + MAX_GSO_FRAME_LEN + 1;
/// Chains served per queue per event before the device yields the thread
/// to other devices (it re-kicks itself for the rest).
pub const MAX_CHAINS_PER_EVENT: usize = 256;
/// The guest's MAC address when none is given.
pub const DEFAULT_MAC: [u8; 6] = [0x06, 0x00, 0xa9, 0xfe, 0x00, 0x02];

/// Where frames go to and come from on the host: the tap in the VMM, a
/// socket pair in tests and the fuzzer. Both calls are non-blocking.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Sends one frame (its virtio-net header first when
    /// [`NetBackend::vnet_hdr`]).
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    /// The descriptor the device loop waits on for frames.
    fn raw_fd(&self) -> RawFd;
    /// Whether every frame both ways carries a [`NET_HDR_LEN`]-byte
    /// virtio-net header (a tap with `IFF_VNET_HDR` and `TUNSETOFFLOAD`
    /// [`offload::TUN_OFFLOADS`]): then the device offers the guest the
    /// offloads of [`offload`].
    fn vnet_hdr(&self) -> bool {
        false
    }
}

/// Errors creating the net device (never caused by the guest).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap name is not a valid interface name.
    #[error("invalid tap interface name \"{0}\" (1 to 15 printable bytes, no '/' or ':')")]
    TapName(String),
    /// No interface of that name in the VMM's network namespace.
    #[error("no tap interface {0} in this network namespace (the daemon creates it)")]
    NoSuchTap(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    /// `TUNSETIFF` refused the interface.
    #[error("cannot attach to tap interface {name}: {source}")]
    Attach {
        /// The interface.
        name: String,
        /// The errno.
        source: std::io::Error,
    },
    /// An eventfd or timerfd could not be created.
    #[error("cannot create the virtio-net {what}: {source}")]
    Fd {
        /// Which descriptor.
        what: &'static str,
        /// The errno.
        source: std::io::Error,
    },
}

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff`; it must be unicast.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("`{s}` is not six colon-separated hex bytes"));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!("`{s}` is not six colon-separated hex bytes"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("`{p}` is not a hex byte"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("`{s}` is a multicast address"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_multicast_is_refused() {
        assert_eq!(parse_mac("06:00:a9:fe:00:02").unwrap(), DEFAULT_MAC);
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        for bad in ["", "06:00:a9:fe:00", "06:00:a9:fe:00:0g", "6:0:a9:fe:0:2"] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
