//! Checksum and segmentation offloads from the guest to the host: with a
//! backend that carries virtio-net headers (the tap, opened with
//! `IFF_VNET_HDR`), the device offers `VIRTIO_NET_F_CSUM`,
//! `VIRTIO_NET_F_HOST_TSO4` and `VIRTIO_NET_F_HOST_TSO6`, as Firecracker
//! does for TX, so the guest hands over TCP segments of up to 64 KiB with
//! their checksum left to the host, instead of one 1.5 KiB frame at a time.
//! Towards the guest the device offers `VIRTIO_NET_F_GUEST_CSUM`,
//! `VIRTIO_NET_F_GUEST_TSO4` and `VIRTIO_NET_F_GUEST_TSO6` (the tap is told
//! `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` when it is opened, at build
//! time): the host hands over frames whose checksum is left undone
//! (`NEEDS_CSUM`) or already verified (`DATA_VALID`), and TCP segments of
//! up to 64 KiB, so the guest neither computes nor verifies those sums.
//!
//! Every header the guest writes is checked here before the host's tap
//! driver sees it ([`check_tx_header`]): only what was negotiated, a
//! checksum position inside the frame, a segment size for segmentation
//! offload, `hdr_len` inside the frame, frames without segmentation no
//! larger than [`MAX_FRAME_LEN`]. Every header the tap writes is checked
//! before the guest sees it ([`check_rx_header`]); for a driver that did
//! not take the receive offloads the device completes a left-undone
//! checksum itself and drops segments it cannot take.

use super::{MAX_FRAME_LEN, MAX_GSO_FRAME_LEN, NET_HDR_LEN};
use virtio_bindings::virtio_net as vn;

/// `VIRTIO_NET_F_CSUM`: the guest may leave a checksum to the host.
pub const F_CSUM: u64 = 1 << vn::VIRTIO_NET_F_CSUM;
/// `VIRTIO_NET_F_HOST_TSO4`: the guest may send TCP/IPv4 segments for the
/// host to cut.
pub const F_HOST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO4;
/// `VIRTIO_NET_F_HOST_TSO6`: likewise for TCP/IPv6.
pub const F_HOST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO6;
/// TX offloads the device offers with a backend that carries headers.
pub const OFFLOAD_FEATURES: u64 = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6;
/// `VIRTIO_NET_F_GUEST_CSUM`: the guest takes frames with a checksum left
/// undone or already verified.
pub const F_GUEST_CSUM: u64 = 1 << vn::VIRTIO_NET_F_GUEST_CSUM;
/// `VIRTIO_NET_F_GUEST_TSO4`: the guest takes TCP/IPv4 segments of up to
/// 64 KiB.
pub const F_GUEST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO4;
/// `VIRTIO_NET_F_GUEST_TSO6`: likewise for TCP/IPv6.
pub const F_GUEST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO6;
/// RX offloads the device offers with a backend that carries headers.
pub const RX_OFFLOAD_FEATURES: u64 = F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6;
/// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`: what the tap is told it may
/// hand over (`TUNSETOFFLOAD`), matching [`RX_OFFLOAD_FEATURES`].
pub const TUN_OFFLOADS: libc::c_uint = 0x01 | 0x02 | 0x04;

const NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;
const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;

/// Why a TX frame's header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderFault {
    /// Flags other than `NEEDS_CSUM`, or `NEEDS_CSUM` not negotiated.
    #[error("header flags {0:#x} not allowed")]
    Flags(u8),
    /// A checksum position outside the frame.
    #[error("checksum at {start}+{offset} outside a {len}-byte frame")]
    Checksum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame's length.
        len: usize,
    },
    /// A segmentation type not negotiated or unknown (ECN included).
    #[error("segmentation type {0:#x} not negotiated")]
    GsoType(u8),
    /// Segmentation without a segment size or without `NEEDS_CSUM`.
    #[error("segmentation with segment size {0} (or without NEEDS_CSUM)")]
    GsoSize(u16),
    /// A header length (`hdr_len`) beyond the frame.
    #[error("header length {hdr_len} beyond a {len}-byte frame")]
    HdrLen {
        /// `hdr_len`.
        hdr_len: u16,
        /// The frame's length.
        len: usize,
    },
    /// A frame larger than its kind may be.
    #[error("{len}-byte frame larger than {max}")]
    Oversized {
        /// The frame's length.
        len: usize,
        /// Its limit.
        max: usize,
    },
}

/// Checks the `virtio_net_hdr_v1` the guest put before a TX frame of
/// `frame_len` bytes, against the features it acknowledged (`acked`).
/// Returns the header to hand the tap (the guest's, `num_buffers` zeroed).
pub fn check_tx_header(
    hdr: &[u8],
    frame_len: usize,
    acked: u64,
) -> Result<[u8; NET_HDR_LEN], HeaderFault> {
    let mut out = [0u8; NET_HDR_LEN];
    out[..10].copy_from_slice(&hdr[..10]);
    let le = |i: usize| u16::from_le_bytes([hdr[i], hdr[i + 1]]);
    let (flags, gso_type, hdr_len, gso_size) = (hdr[0], hdr[1], le(2), le(4));
    if usize::from(hdr_len) > frame_len {
        return Err(HeaderFault::HdrLen {
            hdr_len,
            len: frame_len,
        });
    }
    if flags & !NEEDS_CSUM != 0 || (flags & NEEDS_CSUM != 0 && acked & F_CSUM == 0) {
        return Err(HeaderFault::Flags(flags));
    }
    if flags & NEEDS_CSUM != 0 {
        let (start, offset) = (le(6), le(8));
        if usize::from(start) + usize::from(offset) + 2 > frame_len {
            return Err(HeaderFault::Checksum {
                start,
                offset,
                len: frame_len,
            });
        }
    }
    let max = match gso_type {
        GSO_NONE => MAX_FRAME_LEN,
        GSO_TCPV4 | GSO_TCPV6 => {
            let feature = if gso_type == GSO_TCPV4 {
                F_HOST_TSO4
            } else {
                F_HOST_TSO6
            };
            if acked & feature == 0 {
                return Err(HeaderFault::GsoType(gso_type));
            }
            if gso_size == 0 || flags & NEEDS_CSUM == 0 {
                return Err(HeaderFault::GsoSize(gso_size));
            }
            MAX_GSO_FRAME_LEN
        }
        other => return Err(HeaderFault::GsoType(other)),
    };
    if frame_len > max {
        return Err(HeaderFault::Oversized {
            len: frame_len,
            max,
        });
    }
    Ok(out)
}

/// What the device does with a frame from the host, by its header
/// ([`check_rx_header`]).
#[derive(Debug, PartialEq, Eq)]
pub enum RxHeader {
    /// Deliver it behind this header (`num_buffers` still 0).
    Pass([u8; NET_HDR_LEN]),
    /// Complete its checksum first ([`complete_checksum`] at `start`, the
    /// sum at `start + offset`), then deliver it behind a plain header: the
    /// driver did not take `VIRTIO_NET_F_GUEST_CSUM`.
    Complete {
        /// `csum_start`.
        start: usize,
        /// `csum_offset`.
        offset: usize,
    },
}

/// Checks the header the tap put before a frame of `frame_len` bytes
/// against the features the driver acknowledged (`acked`): a checksum
/// position inside the frame, `hdr_len` inside it, only TCP segmentation
/// (what the tap was told it may send) and only to a driver that took it,
/// frames without segmentation no larger than [`MAX_FRAME_LEN`]. Flags the
/// driver did not negotiate are dropped or done by the device
/// ([`RxHeader::Complete`]).
pub fn check_rx_header(hdr: &[u8], frame_len: usize, acked: u64) -> Result<RxHeader, HeaderFault> {
    let le = |i: usize| u16::from_le_bytes([hdr[i], hdr[i + 1]]);
    let (flags, gso_type, hdr_len, gso_size) = (hdr[0], hdr[1], le(2), le(4));
    let (start, offset) = (le(6), le(8));
    if flags & !(NEEDS_CSUM | DATA_VALID) != 0 {
        return Err(HeaderFault::Flags(flags));
    }
    if usize::from(hdr_len) > frame_len {
        return Err(HeaderFault::HdrLen {
            hdr_len,
            len: frame_len,
        });
    }
    if flags & NEEDS_CSUM != 0 && usize::from(start) + usize::from(offset) + 2 > frame_len {
        return Err(HeaderFault::Checksum {
            start,
            offset,
            len: frame_len,
        });
    }
    let max = match gso_type {
        GSO_NONE => MAX_FRAME_LEN,
        GSO_TCPV4 | GSO_TCPV6 => {
            let feature = if gso_type == GSO_TCPV4 {
                F_GUEST_TSO4
            } else {
                F_GUEST_TSO6
            };
            if acked & feature == 0 || acked & F_GUEST_CSUM == 0 {
                return Err(HeaderFault::GsoType(gso_type));
            }
            if gso_size == 0 || flags & NEEDS_CSUM == 0 {
                return Err(HeaderFault::GsoSize(gso_size));
            }
            MAX_GSO_FRAME_LEN
        }
        other => return Err(HeaderFault::GsoType(other)),
    };
    if frame_len > max {
        return Err(HeaderFault::Oversized {
            len: frame_len,
            max,
        });
    }
    if acked & F_GUEST_CSUM == 0 {
        return Ok(if flags & NEEDS_CSUM != 0 {
            RxHeader::Complete {
                start: start.into(),
                offset: offset.into(),
            }
        } else {
            // DATA_VALID is a hint the driver did not ask for: dropped.
            RxHeader::Pass([0; NET_HDR_LEN])
        });
    }
    let mut out = [0u8; NET_HDR_LEN];
    out[..10].copy_from_slice(&hdr[..10]);
    Ok(RxHeader::Pass(out))
}

/// Completes a checksum the host left undone (`NEEDS_CSUM`): the Internet
/// checksum of `frame[start..]`, whose field at `start + offset` holds the
/// pseudo-header's partial sum, written into that field. The caller has
/// checked both positions ([`check_rx_header`]).
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) {
    let mut sum: u64 = frame[start..]
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let at = start + offset;
    frame[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = flags;
        h[1] = gso;
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
        h[10] = 1;
        h
    }

    #[test]
    fn only_negotiated_well_formed_offloads_pass() {
        let all = OFFLOAD_FEATURES;
        // A plain frame, with or without offloads negotiated.
        assert!(check_tx_header(&hdr(0, 0, 0, 0, 0), 60, 0).is_ok());
        assert_eq!(
            check_tx_header(&hdr(0, 0, 0, 0, 0), 1600, all),
            Err(HeaderFault::Oversized {
                len: 1600,
                max: MAX_FRAME_LEN
            })
        );
        // A partial checksum: only negotiated, only inside the frame.
        assert!(check_tx_header(&hdr(1, 0, 0, 34, 6), 60, F_CSUM).is_ok());
        assert_eq!(
            check_tx_header(&hdr(1, 0, 0, 34, 6), 60, 0),
            Err(HeaderFault::Flags(1))
        );
        assert!(matches!(
            check_tx_header(&hdr(1, 0, 0, 58, 6), 60, all),
            Err(HeaderFault::Checksum { .. })
        ));
        assert!(matches!(
            check_tx_header(&hdr(2, 0, 0, 0, 0), 60, all),
            Err(HeaderFault::Flags(2))
        ));
        // Segmentation: negotiated per family, with a size and a checksum.
        let tso = hdr(1, GSO_TCPV4, 1448, 34, 16);
        let out = check_tx_header(&tso, 65_000, all).unwrap();
        assert_eq!(&out[..10], &tso[..10]);
        assert_eq!(&out[10..], &[0, 0], "num_buffers is not the tap's");
        assert_eq!(
            check_tx_header(&tso, 65_000, F_CSUM),
            Err(HeaderFault::GsoType(GSO_TCPV4))
        );
        assert!(check_tx_header(&hdr(1, GSO_TCPV6, 1428, 54, 16), 9000, all).is_ok());
        assert_eq!(
            check_tx_header(&hdr(1, GSO_TCPV6, 1428, 54, 16), 9000, F_CSUM | F_HOST_TSO4),
            Err(HeaderFault::GsoType(GSO_TCPV6))
        );
        assert_eq!(
            check_tx_header(&hdr(1, GSO_TCPV4, 0, 34, 16), 9000, all),
            Err(HeaderFault::GsoSize(0))
        );
        assert_eq!(
            check_tx_header(&hdr(0, GSO_TCPV4, 1448, 0, 0), 9000, all),
            Err(HeaderFault::GsoSize(1448))
        );
        assert!(matches!(
            check_tx_header(&hdr(1, GSO_TCPV4, 1448, 34, 16), MAX_GSO_FRAME_LEN + 1, all),
            Err(HeaderFault::Oversized { .. })
        ));
        // UDP fragmentation, ECN and unknown types: never offered.
        for t in [3u8, 0x80 | GSO_TCPV4, 5, 0xff] {
            assert_eq!(
                check_tx_header(&hdr(1, t, 1448, 34, 16), 9000, all),
                Err(HeaderFault::GsoType(t))
            );
        }
    }

    #[test]
    fn rx_headers_pass_only_what_the_driver_took() {
        let all = RX_OFFLOAD_FEATURES;
        let plain = [0u8; NET_HDR_LEN];
        // Partial checksum to a driver that took GUEST_CSUM: passed on.
        let h = hdr(1, 0, 0, 34, 6);
        let mut want = h;
        want[10] = 0;
        assert_eq!(check_rx_header(&h, 60, all), Ok(RxHeader::Pass(want)));
        // To one that did not: the device completes it.
        assert_eq!(
            check_rx_header(&h, 60, 0),
            Ok(RxHeader::Complete {
                start: 34,
                offset: 6
            })
        );
        // DATA_VALID alone: a hint, dropped for a driver without it.
        assert_eq!(
            check_rx_header(&hdr(2, 0, 0, 0, 0), 60, 0),
            Ok(RxHeader::Pass(plain))
        );
        // Checksum field past the frame, unknown flags, hdr_len past it.
        assert!(matches!(
            check_rx_header(&hdr(1, 0, 0, 58, 6), 60, all),
            Err(HeaderFault::Checksum { .. })
        ));
        assert_eq!(
            check_rx_header(&hdr(4, 0, 0, 0, 0), 60, all),
            Err(HeaderFault::Flags(4))
        );
        let mut long = hdr(0, 0, 0, 0, 0);
        long[2..4].copy_from_slice(&61u16.to_le_bytes());
        assert!(matches!(
            check_rx_header(&long, 60, all),
            Err(HeaderFault::HdrLen { .. })
        ));
        // Segments: only to a driver that took them, with a size and a
        // checksum; never UDP; no plain frame past MAX_FRAME_LEN.
        let seg = hdr(1, GSO_TCPV4, 1448, 34, 16);
        assert!(check_rx_header(&seg, 65_000, all).is_ok());
        assert_eq!(
            check_rx_header(&seg, 65_000, F_GUEST_CSUM | F_GUEST_TSO6),
            Err(HeaderFault::GsoType(GSO_TCPV4))
        );
        assert_eq!(
            check_rx_header(&seg, 65_000, F_GUEST_TSO4 | F_GUEST_TSO6),
            Err(HeaderFault::GsoType(GSO_TCPV4))
        );
        assert!(check_rx_header(&hdr(1, GSO_TCPV6, 1428, 54, 16), 9000, all).is_ok());
        assert_eq!(
            check_rx_header(&hdr(0, GSO_TCPV4, 1448, 0, 0), 9000, all),
            Err(HeaderFault::GsoSize(1448))
        );
        assert_eq!(
            check_rx_header(&hdr(1, 3, 1448, 34, 6), 9000, all),
            Err(HeaderFault::GsoType(3))
        );
        assert!(matches!(
            check_rx_header(&plain, MAX_FRAME_LEN + 1, all),
            Err(HeaderFault::Oversized { .. })
        ));
        assert!(matches!(
            check_rx_header(&seg, MAX_GSO_FRAME_LEN + 1, all),
            Err(HeaderFault::Oversized { .. })
        ));
    }

    #[test]
    fn a_completed_checksum_verifies() {
        // An odd-length datagram: the sum pads its last byte with zero.
        let mut f = vec![0u8; 34];
        f.extend_from_slice(&[
            0x13, 0x88, 0x17, 0x70, 0, 13, 0x12, 0x34, b'a', b'b', b'c', b'd', b'e',
        ]);
        complete_checksum(&mut f, 34, 6);
        // The receiver's check: the datagram (with the new field) plus the
        // pseudo-header (whose sum, 0x1234, the field held) sums to all ones.
        let mut sum: u32 = f[34..]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
            .sum();
        sum += 0x1234;
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }
}
