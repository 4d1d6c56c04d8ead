//! The virtio-net device's offloads, driven as Linux drives it through a
//! real tap (see `net_rig`): checksums left to the guest (receive
//! offloads), or completed by the device for a driver that did not take
//! them; TX frames gathered from guest memory in many pieces; offload
//! headers from the guest that must never reach the tap.

mod common;
mod net_rig;

use net_rig::*;

/// The UDP checksum of an IPv4 frame (from `frame[14..]`) is right: the
/// sum over the pseudo-header and the datagram is all ones.
fn udp_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[14..34];
    let udp = &frame[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    checksum(&pseudo) == 0
}

/// What Linux does with `NEEDS_CSUM` before checking: the sum from
/// `csum_start` on, the field holding the pseudo-header's partial sum.
fn complete(frame: &mut [u8], start: usize, offset: usize) {
    let c = checksum(&frame[start..]);
    frame[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
}

fn le(h: &[u8], i: usize) -> usize {
    usize::from(u16::from_le_bytes([h[i], h[i + 1]]))
}

/// Receives one UDP datagram from the host into the guest: its frame and
/// the header the device wrote.
fn host_to_guest(rig: &mut Rig, sock: &UdpSocket, payload: &[u8]) -> ([u8; NET_HDR_LEN], Vec<u8>) {
    rig.post_rx(0, 8, 1526 + 4);
    host_send(sock, payload);
    let mut frames = Vec::new();
    rig.until("a datagram in an RX buffer", |r| {
        frames.extend(r.rx_frames_with_hdr());
        frames.iter().any(|(_, f, _)| udp_payload(f).is_some())
    });
    let (h, f, _) = frames
        .into_iter()
        .find(|(_, f, _)| udp_payload(f).is_some())
        .unwrap();
    (h, f)
}

/// With `VIRTIO_NET_F_GUEST_CSUM` taken, the host leaves a datagram's
/// checksum undone and says where it goes (`NEEDS_CSUM`, `csum_start` at
/// the UDP header, `csum_offset` 6): the guest's stack then trusts the
/// frame without summing it, as behind Firecracker's device.
#[test]
fn a_guest_that_took_guest_csum_gets_the_checksum_left_to_it() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        assert_eq!(rig.accepted & RX_OFFLOADS, RX_OFFLOADS);
        let (h, mut f) = host_to_guest(&mut rig, &sock, b"sum it yourself");
        assert_eq!(udp_payload(&f).unwrap(), b"sum it yourself");
        assert_eq!(h[0] & 1, 1, "NEEDS_CSUM: {h:?}");
        assert_eq!((le(&h, 6), le(&h, 8)), (34, 6), "csum_start, csum_offset");
        assert!(le(&h, 2) <= f.len(), "hdr_len inside the frame");
        complete(&mut f, 34, 6);
        assert!(udp_checksum_ok(&f), "the completed checksum is right");
        assert_eq!(rig.stats().rx_bad_headers, 0);
    });
}

/// A driver that did not take the receive offloads still gets frames with
/// a right checksum and a plain header: the tap was told at build time
/// that it may leave sums undone, so the device completes them.
#[test]
fn a_driver_without_guest_csum_gets_checksums_completed_by_the_device() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::with_features(NetLimits::default(), BASIC | MRG_RXBUF | EVENT_IDX);
        for i in 0..3u8 {
            let payload = [b'x', i, 0x55, 0xaa, i];
            let (h, f) = host_to_guest(&mut rig, &sock, &payload);
            assert_eq!(&h[..10], &[0; 10], "a plain header");
            assert_eq!(udp_payload(&f).unwrap(), payload);
            assert!(udp_checksum_ok(&f), "checksum completed: {:?}", &f[34..42]);
        }
    });
}

/// Offload headers that the host's tap driver must never see: `hdr_len`
/// beyond the frame, a segment's checksum position past its end, an
/// unknown segmentation type, checksum flags the guest invented. Each is
/// refused by the device (counted as a bad chain, not handed to the tap to
/// refuse) and the next frame goes out.
#[test]
fn hostile_offload_headers_never_reach_the_tap() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        let frame = udp_frame(b"hostile header");
        let n = frame.len() as u16;
        let hdr = |flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16| {
            let mut h = [0u8; NET_HDR_LEN];
            h[0] = flags;
            h[1] = gso;
            h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
            h[4..6].copy_from_slice(&gso_size.to_le_bytes());
            h[6..8].copy_from_slice(&start.to_le_bytes());
            h[8..10].copy_from_slice(&off.to_le_bytes());
            h
        };
        let bad = [
            // hdr_len beyond the frame (with and without segmentation).
            hdr(0, 0, n + 1, 0, 0, 0),
            hdr(1, 1, 0xffff, 1448, 34, 16),
            // A segment whose checksum field lies past the frame's end.
            hdr(1, 1, 54, 1448, n - 4, 16),
            // An unknown segmentation type (2), UDP fragmentation (3,
            // never offered), invented flags.
            hdr(1, 2, 54, 1448, 34, 6),
            hdr(1, 3, 0, 1448, 34, 6),
            hdr(0x81, 0, 0, 0, 34, 6),
        ];
        for (i, h) in bad.iter().enumerate() {
            rig.send_with_hdr(i as u64, *h, &frame);
        }
        rig.send(8, &udp_frame(b"after"));
        assert_eq!(host_recv(&mut rig, &sock), b"after");
        assert!(
            host_quiet(&mut rig, &sock),
            "a bad header's frame reached the host"
        );
        let s = rig.stats();
        assert_eq!(
            (s.tx_frames, s.tx_bad_chains, s.tx_send_errors),
            (1, bad.len() as u64, 0),
            "{s:?}"
        );
    });
}

/// A TX frame goes to the tap from where it lies in guest memory: a
/// header split over two descriptors and a frame over three arrive whole;
/// a chain with a piece outside guest RAM is returned unused and the next
/// frame still goes out.
#[test]
fn a_frame_in_many_pieces_goes_out_whole_and_a_piece_outside_ram_is_refused() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        let payload: Vec<u8> = (0..900u32).map(|i| (i * 7) as u8).collect();
        let mut bytes = vec![0u8; NET_HDR_LEN];
        bytes.extend(udp_frame(&payload));
        // Pieces: 5 + 7 bytes of header, then 20, 300 and the rest.
        let cuts = [0, 5, 12, 32, 332, bytes.len()];
        let mut pieces = Vec::new();
        for (i, w) in cuts.windows(2).enumerate() {
            let addr = buf_addr(TX, 2 * i as u64) + 3;
            rig.mem
                .write_slice(&bytes[w[0]..w[1]], GuestAddress(addr))
                .unwrap();
            pieces.push((addr, (w[1] - w[0]) as u32, false));
        }
        rig.push_chain(TX, &pieces);
        rig.kick(TX);
        assert_eq!(host_recv(&mut rig, &sock), payload);
        // The same frame with its last piece outside guest RAM.
        let mut outside = pieces.clone();
        outside.last_mut().unwrap().0 = 0x1_0000_0000;
        rig.push_chain(TX, &outside);
        rig.kick(TX);
        rig.send(20, &udp_frame(b"after"));
        assert_eq!(host_recv(&mut rig, &sock), b"after");
        assert!(host_quiet(&mut rig, &sock));
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_bad_chains), (2, 1), "{s:?}");
    });
}

/// A TCP segment from the guest's address to the host's listener, its
/// checksum computed (the host verifies it: no offload asked).
fn tcp_frame(seq: u32, ack: u32, flags: u8, options: &[u8]) -> Vec<u8> {
    let mut f = udp_frame(b"");
    f.truncate(34);
    let tcp_len = 20 + options.len();
    f[16..18].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    f[23] = 6;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let mut t = Vec::new();
    t.extend_from_slice(&GUEST_PORT.to_be_bytes());
    t.extend_from_slice(&7000u16.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(((tcp_len / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&0xffffu16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(options);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST_IP.octets());
    pseudo.extend_from_slice(&HOST_IP.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&t);
    let c = checksum(&pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&t);
    f
}

/// With `GUEST_TSO4` taken, a TCP stream from the host reaches the guest
/// as segments larger than one Ethernet frame (the header says TCPv4 and
/// the segment size the guest advertised), each in many mergeable
/// buffers: the guest's stack is handed 64 KiB at a time instead of 1.5.
/// The "guest" here opens the connection itself (SYN with MSS 1460 and a
/// window scale, then the ACK).
#[test]
fn a_guest_that_took_guest_tso4_gets_tcp_segments_larger_than_a_frame() {
    in_netns(|| {
        let _sock = host_side();
        let listener = std::net::TcpListener::bind(SocketAddrV4::new(HOST_IP, 7000)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut rig = Rig::new(NetLimits::default());
        rig.post_rx(0, 60, 4096);
        let mss_ws = [2, 4, 0x05, 0xb4, 1, 3, 3, 7];
        rig.send(0, &tcp_frame(1000, 0, 0x02, &mss_ws));
        let mut isn = None;
        rig.until("the SYN-ACK", |r| {
            for (_, f, _) in r.rx_frames_with_hdr() {
                if f.len() >= 54 && f[23] == 6 && f[47] & 0x12 == 0x12 {
                    isn = Some(u32::from_be_bytes(f[38..42].try_into().unwrap()));
                }
            }
            isn.is_some()
        });
        let isn = isn.unwrap();
        rig.send(1, &tcp_frame(1001, isn.wrapping_add(1), 0x10, &[]));
        let mut conn = None;
        rig.until("the connection accepted", |_| {
            conn = listener.accept().ok();
            conn.is_some()
        });
        let (mut conn, _) = conn.unwrap();
        use std::io::Write;
        conn.write_all(&vec![0x5a; 14_000]).unwrap();
        let mut biggest = (0usize, [0u8; NET_HDR_LEN]);
        let mut bytes = 0;
        rig.until("14,000 bytes in the guest", |r| {
            for (h, f, _) in r.rx_frames_with_hdr() {
                if f.len() > 54 && f[23] == 6 {
                    bytes += f.len() - 54;
                    if f.len() > biggest.0 {
                        biggest = (f.len(), h);
                    }
                }
            }
            bytes >= 14_000
        });
        let (len, h) = biggest;
        assert!(len > MAX_FRAME_LEN, "a {len}-byte frame at most");
        assert_eq!(h[1], 1, "GSO_TCPV4: {h:?}");
        assert_eq!(le(&h, 4), 1460, "the guest's MSS as segment size");
        assert_eq!(h[0] & 1, 1, "checksum left to the guest");
        let s = rig.stats();
        assert_eq!((s.rx_bad_headers, s.rx_oversized), (0, 0), "{s:?}");
    });
}
