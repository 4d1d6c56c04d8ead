//! The virtio-net device's notification suppression (`VIRTIO_RING_F_EVENT_IDX`)
//! and mergeable RX buffers (`VIRTIO_NET_F_MRG_RXBUF`), negotiated and
//! driven as Linux drives them, through a real tap (see `net_rig`): the
//! guest is interrupted only when its `used_event` asks, the device asks
//! for a kick (`avail_event`) whenever it stops for want of chains, a
//! frame spans as many buffers as it needs (`num_buffers`), a frame larger
//! than what is posted waits whole, and hostile chains among mergeable
//! buffers are returned unused without losing the frame.

mod common;
mod net_rig;

use net_rig::*;

/// Where the driver's `used_event` is (after the available ring).
fn used_event_addr(rig: &Rig, q: usize) -> GuestAddress {
    GuestAddress(rig.queues[q].avail + 4 + 2 * u64::from(rig.queues[q].size))
}

/// The device's `avail_event` (after the used ring): the available index
/// at which it wants the next kick.
fn avail_event(rig: &Rig, q: usize) -> u16 {
    let at = rig.queues[q].used + 4 + 8 * u64::from(rig.queues[q].size);
    rig.mem.read_obj(GuestAddress(at)).unwrap()
}

/// Whether the device raised the interrupt since the last call.
fn interrupted(rig: &Rig) -> bool {
    rig.irq.read().is_ok()
}

#[test]
fn linux_takes_event_idx_and_mergeable_buffers_and_frames_flow_both_ways() {
    in_netns(|| {
        let sock = host_side();
        // Rig::new checks the offer (MRG_RXBUF and EVENT_IDX included) and
        // takes every feature, as Linux does.
        let mut rig = Rig::new(NetLimits::default());
        rig.send(0, &udp_frame(b"out"));
        assert_eq!(host_recv(&mut rig, &sock), b"out");
        assert_eq!(
            avail_event(&rig, TX),
            rig.queues[TX].avail_idx,
            "TX drained: the device asks for a kick at the guest's next chain"
        );
        // 256-byte buffers; a 1,000-byte datagram is a 1,042-byte frame,
        // 1,054 bytes with its header: five buffers.
        rig.post_rx(0, 16, 256);
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        host_send(&sock, &payload);
        let mut frames = Vec::new();
        rig.until("the datagram in mergeable buffers", |r| {
            frames.extend(r.rx_frames_counted());
            frames.iter().any(|(f, _)| udp_payload(f).is_some())
        });
        let (f, n) = frames
            .iter()
            .find(|(f, _)| udp_payload(f).is_some())
            .unwrap();
        assert_eq!(udp_payload(f).unwrap(), &payload[..]);
        assert_eq!(*n, 5, "num_buffers");
        let s = rig.stats();
        assert_eq!((s.rx_bad_chains, s.tx_bad_chains), (0, 0));
    });
}

#[test]
fn with_event_idx_the_guest_is_interrupted_only_when_its_used_event_is_passed() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        // The driver wants an interrupt once the used index passes 2.
        rig.mem.write_obj(2u16, used_event_addr(&rig, TX)).unwrap();
        let _ = interrupted(&rig);
        for i in 0..3u8 {
            rig.send(u64::from(i), &udp_frame(&[i]));
            assert_eq!(host_recv(&mut rig, &sock), vec![i]);
            assert_eq!(rig.used_idx(TX), u16::from(i) + 1);
            assert_eq!(
                interrupted(&rig),
                i == 2,
                "interrupt after used index {}",
                i + 1
            );
            assert_eq!(avail_event(&rig, TX), rig.queues[TX].avail_idx);
        }
        // A driver without EVENT_IDX is interrupted for every batch.
        let mut rig2 = {
            drop(rig);
            Rig::with_features(NetLimits::default(), OFFERED & !EVENT_IDX)
        };
        let _ = interrupted(&rig2);
        for i in 0..3u8 {
            rig2.send(u64::from(i), &udp_frame(&[i]));
            assert_eq!(host_recv(&mut rig2, &sock), vec![i]);
            assert!(interrupted(&rig2), "interrupt for frame {i}");
        }
    });
}

#[test]
fn a_frame_larger_than_the_posted_buffers_waits_whole_then_spans_the_next() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        rig.post_rx(0, 2, 200);
        let payload = vec![0x5a; 1000];
        host_send(&sock, &payload);
        rig.until("the frame held", |r| {
            r.dev.lock().unwrap().device().buffered_bytes() > 0
        });
        rig.pump();
        assert!(rig.used(RX).is_empty(), "the two buffers were put back");
        assert_eq!(rig.stats().rx_frames, 0);
        assert_eq!(
            avail_event(&rig, RX),
            rig.queues[RX].avail_idx,
            "the device asks for a kick at the guest's next buffer"
        );
        assert_eq!(rig.manager.run_with_timeout(200).unwrap(), 0, "loop spins");
        // Four more: 1,054 bytes in 200-byte buffers take six.
        rig.post_rx(2, 4, 200);
        let mut frames = Vec::new();
        rig.until("the frame across six buffers", |r| {
            frames.extend(r.rx_frames_counted());
            !frames.is_empty()
        });
        assert_eq!(udp_payload(&frames[0].0).unwrap(), &payload[..]);
        assert_eq!(frames[0].1, 6);
    });
}

#[test]
fn hostile_chains_among_mergeable_buffers_are_returned_unused_and_the_frame_lands_after() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        let a = |i| buf_addr(RX, i);
        rig.push_chain(RX, &[(a(0), 100, true)]);
        // Read-only: it and the good chain before it come back unused.
        rig.push_chain(RX, &[(a(1), 100, false)]);
        rig.push_chain(RX, &[(a(2), 100, true)]);
        // Too small for a header.
        rig.push_chain(RX, &[(a(3), 8, true)]);
        // Outside guest RAM.
        rig.push_chain(RX, &[(0xffff_0000_0000, 100, true)]);
        // A descriptor that points at itself.
        let idx = rig.queues[RX].next_desc;
        rig.write_desc(RX, idx, a(5), 100, 1 | 2, idx);
        rig.queues[RX].next_desc = (idx + 1) % QSIZE;
        rig.make_available(RX, idx);
        rig.kick(RX);
        // 300 bytes of payload: 354 bytes with the headers, four buffers.
        host_send(&sock, &[7; 300]);
        rig.until("four bad RX chains", |r| r.stats().rx_bad_chains == 4);
        let used = rig.used(RX);
        assert_eq!(used.len(), 6, "{used:?}");
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
        assert_eq!(rig.stats().rx_frames, 0);
        rig.post_rx(10, 4, 100);
        let mut frames = Vec::new();
        rig.until("the frame in four good buffers", |r| {
            frames.extend(r.rx_frames_counted());
            !frames.is_empty()
        });
        assert_eq!(udp_payload(&frames[0].0).unwrap(), &[7; 300][..]);
        assert_eq!(frames[0].1, 4);
    });
}

/// A ring full of chains each just large enough for a header can never
/// hold a full-size frame: the device puts them back, waits without
/// spinning, and TX still flows.
#[test]
fn a_ring_of_tiny_mergeable_buffers_cannot_make_the_device_spin() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        for i in 0..u64::from(QSIZE) {
            rig.push_chain(RX, &[(buf_addr(RX, i), NET_HDR_LEN as u32, true)]);
        }
        rig.kick(RX);
        host_send(&sock, &[1; 1400]);
        rig.until("the frame held", |r| {
            r.dev.lock().unwrap().device().buffered_bytes() > 0
        });
        rig.pump();
        assert!(rig.used(RX).is_empty());
        assert_eq!(rig.manager.run_with_timeout(200).unwrap(), 0, "loop spins");
        rig.send(0, &udp_frame(b"tx still flows"));
        assert_eq!(host_recv(&mut rig, &sock), b"tx still flows");
        assert_eq!(rig.stats().rx_frames, 0);
    });
}
