//! The virtio-net device driven as Linux's `virtio_net` drives it, through
//! a real tap (see `net_rig`): probe, frames both ways, offload headers,
//! hostile chains, a guest that never refills RX, rate limits, the seccomp
//! filter. Notification suppression and mergeable RX buffers:
//! `net_device_rings.rs`.

mod common;
mod net_rig;

use net_rig::*;

#[test]
fn driver_ok_with_a_queue_missing_needs_reset_and_a_reset_recovers() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::unprobed(NetLimits::default(), OFFERED);
        rig.probe(1, "net");
        rig.accept_version_1();
        rig.setup_queue(RX);
        // No TX queue: DRIVER_OK must not activate the device.
        rig.w(reg::STATUS, 15);
        assert_eq!(rig.r(reg::STATUS) & 0x40, 0x40, "DEVICE_NEEDS_RESET");
        assert!(!rig.dev.lock().unwrap().is_activated());
        rig.w(reg::STATUS, 0);
        rig.clear_queues();
        rig.driver_init();
        rig.send(0, &udp_frame(b"after the reset"));
        assert_eq!(host_recv(&mut rig, &sock), b"after the reset");
    });
}

#[test]
fn a_missing_tap_is_refused_not_created() {
    in_netns(|| {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let e = Net::new(TAP, None, NetLimits::default(), irq)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no tap interface"), "{e}");
        let out = Command::new("ip")
            .args(["link", "show", TAP])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the VMM created {TAP}");
    });
}

#[test]
fn linux_probe_then_frames_both_ways_through_a_real_tap() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        // Guest to host.
        rig.send(0, &udp_frame(b"hello from the guest"));
        assert_eq!(host_recv(&mut rig, &sock), b"hello from the guest");
        assert_eq!(rig.used(TX), vec![(0, 0)]);
        // Host to guest.
        rig.post_rx(0, 8, 1526 + 4);
        host_send(&sock, b"hello from the host");
        let mut frames = Vec::new();
        rig.until("a frame in an RX buffer", |r| {
            frames.extend(r.rx_frames());
            frames.iter().any(|f| udp_payload(f).is_some())
        });
        let f = frames.iter().find(|f| udp_payload(f).is_some()).unwrap();
        assert_eq!(udp_payload(f).unwrap(), b"hello from the host");
        assert_eq!(&f[6..12], &HOST_MAC, "source MAC is the tap's");
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_bad_chains, s.rx_bad_chains), (1, 0, 0));
        assert!(s.rx_frames >= 1);
    });
}

/// A guest that negotiated `VIRTIO_NET_F_CSUM` leaves checksums to the host
/// (`NEEDS_CSUM`, the partial sum in the field, as Linux does): the header
/// must reach the tap, or the host drops the datagram as corrupt. Headers
/// the guest did not negotiate or that point outside the frame never reach
/// it.
#[test]
fn a_partial_checksum_reaches_the_host_and_bad_offload_headers_do_not() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        let mut frame = udp_frame(b"checksum left to the host");
        // A partial sum, not the real checksum: only the host completes it.
        frame[40..42].copy_from_slice(&0x1234u16.to_be_bytes());
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[0] = 1; // NEEDS_CSUM
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: UDP header
        hdr[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: its checksum
        rig.send_with_hdr(0, hdr, &frame);
        assert_eq!(host_recv(&mut rig, &sock), b"checksum left to the host");
        // Checksum position past the frame, unknown flags, UDP fragmentation
        // offload (never offered), segmentation without a segment size.
        let mut bad = Vec::new();
        let mut h = hdr;
        h[6..8].copy_from_slice(&(frame.len() as u16).to_le_bytes());
        bad.push(h);
        let mut h = hdr;
        h[0] = 0x3;
        bad.push(h);
        let mut h = hdr;
        h[1] = 3;
        h[4..6].copy_from_slice(&1000u16.to_le_bytes());
        bad.push(h);
        let mut h = hdr;
        h[1] = 1;
        bad.push(h);
        for (i, h) in bad.into_iter().enumerate() {
            rig.send_with_hdr(1 + i as u64, h, &frame);
        }
        rig.send(9, &udp_frame(b"after"));
        assert_eq!(host_recv(&mut rig, &sock), b"after");
        assert!(
            host_quiet(&mut rig, &sock),
            "a bad header's frame reached the host"
        );
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_bad_chains), (2, 4), "{s:?}");
    });
}

#[test]
fn hostile_tx_chains_are_returned_unused_and_the_next_frame_goes_out() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        let good = |rig: &mut Rig, n: u8| {
            rig.send(100 + u64::from(n), &udp_frame(&[n; 32]));
            assert_eq!(host_recv(rig, &sock), vec![n; 32], "good frame {n}");
        };
        let addr = buf_addr(TX, 1);
        rig.mem
            .write_slice(&udp_frame(b"bad"), GuestAddress(addr + 12))
            .unwrap();
        let len = (NET_HDR_LEN + udp_frame(b"bad").len()) as u32;
        // Device-writable descriptor in a TX chain.
        rig.push_chain(TX, &[(addr, len, true)]);
        rig.kick(TX);
        good(&mut rig, 1);
        // Zero length, then header only (no Ethernet header).
        rig.push_chain(TX, &[(addr, 0, false)]);
        rig.push_chain(TX, &[(addr, NET_HDR_LEN as u32, false)]);
        rig.kick(TX);
        good(&mut rig, 2);
        // Outside guest RAM, and straddling its end.
        rig.push_chain(TX, &[(0xffff_0000_0000, 100, false)]);
        rig.push_chain(TX, &[((64 << 20) - 8, 100, false)]);
        rig.kick(TX);
        good(&mut rig, 3);
        // A descriptor that points at itself (short: the loop stays under
        // the frame size limit).
        let idx = rig.queues[TX].next_desc;
        rig.write_desc(TX, idx, addr, 16, 1, idx);
        rig.queues[TX].next_desc = (idx + 1) % QSIZE;
        rig.make_available(TX, idx);
        rig.kick(TX);
        good(&mut rig, 4);
        // A head index beyond the queue.
        rig.make_available(TX, QSIZE + 5);
        rig.kick(TX);
        good(&mut rig, 5);
        // An oversized frame (1600 bytes of Ethernet) is dropped whole.
        let mut big = udp_frame(&[0xee; 1600 - 42]);
        big.truncate(1600);
        rig.send(2, &big);
        good(&mut rig, 6);
        assert!(host_quiet(&mut rig, &sock), "no bad frame reached the host");
        let s = rig.stats();
        assert_eq!(s.tx_frames, 6);
        assert_eq!(s.tx_oversized, 1);
        assert_eq!(s.tx_bad_chains, 7, "{s:?}");
        // Every chain with a valid head got a used entry of length 0.
        let used = rig.used(TX);
        assert_eq!(used.len(), 13, "{used:?}");
        assert!(used.iter().all(|&(_, len)| len == 0));
    });
}

#[test]
fn hostile_rx_chains_are_returned_unused_and_the_frame_waits_for_a_good_one() {
    in_netns(|| {
        let sock = host_side();
        // Without mergeable buffers a 20-byte chain is too small for any
        // frame (with them it may hold a part: `net_device_rings.rs`).
        let mut rig = Rig::with_features(NetLimits::default(), BASIC);
        let a = buf_addr(RX, 0);
        rig.push_chain(RX, &[(a, 2048, false)]);
        rig.push_chain(RX, &[(a, 20, true)]);
        rig.push_chain(RX, &[(0xffff_0000_0000, 2048, true)]);
        rig.push_chain(RX, &[(a, 1024, false), (a + 1024, 2048, true)]);
        rig.kick(RX);
        host_send(&sock, b"to a good buffer");
        rig.until("four bad RX chains returned", |r| {
            r.stats().rx_bad_chains == 4
        });
        assert_eq!(rig.used(RX), vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(rig.stats().rx_frames, 0);
        assert!(
            rig.dev.lock().unwrap().device().buffered_bytes() > 0,
            "frame held"
        );
        rig.post_rx(10, 1, 2048);
        let mut frames = Vec::new();
        rig.until("the frame in the good buffer", |r| {
            frames.extend(r.rx_frames());
            !frames.is_empty()
        });
        assert_eq!(udp_payload(&frames[0]).unwrap(), b"to a good buffer");
    });
}

#[test]
fn a_guest_that_never_refills_rx_holds_one_frame_and_tx_still_flows() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        for i in 0..500u32 {
            host_send(&sock, &i.to_be_bytes());
        }
        // The kernel may hand the frames to the tap a little later.
        rig.until("a frame held", |r| {
            r.dev.lock().unwrap().device().buffered_bytes() > 0
        });
        rig.pump();
        {
            let dev = rig.dev.lock().unwrap();
            let held = dev.device().buffered_bytes();
            assert!(held > 0 && held <= MAX_FRAME_LEN, "held {held}");
            assert_eq!(dev.device().stats().rx_frames, 0);
        }
        // The loop is idle: nothing wakes it while frames wait in the tap.
        assert_eq!(rig.manager.run_with_timeout(200).unwrap(), 0, "loop spins");
        rig.send(0, &udp_frame(b"tx while rx is stuck"));
        assert_eq!(host_recv(&mut rig, &sock), b"tx while rx is stuck");
        // Buffers at last: the held frame (the first datagram) comes first.
        rig.post_rx(0, 32, 2048);
        let mut frames = Vec::new();
        rig.until("32 frames", |r| {
            frames.extend(r.rx_frames());
            frames.len() == 32
        });
        // In order from the first datagram (the one held), none lost.
        let got: Vec<u32> = frames
            .iter()
            .filter_map(|f| udp_payload(f))
            .map(|p| u32::from_be_bytes(p.try_into().unwrap()))
            .collect();
        assert!(got.len() >= 30, "{} UDP frames of 32", got.len());
        assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>());
    });
}

#[test]
fn a_thousand_malformed_frames_leave_the_device_serving() {
    in_netns(|| {
        let sock = host_side();
        let mut rig = Rig::new(NetLimits::default());
        let addr = buf_addr(TX, 3);
        for i in 0..1000u32 {
            match i % 4 {
                0 => rig.push_chain(TX, &[(addr, 1600 + 12, false)]),
                1 => rig.push_chain(TX, &[(addr, 64, true)]),
                2 => rig.push_chain(TX, &[(addr, 3, false)]),
                _ => rig.push_chain(TX, &[(0xdead_0000_0000, 64, false)]),
            };
            if i % 32 == 31 {
                rig.kick(TX);
            }
        }
        rig.kick(TX);
        rig.send(0, &udp_frame(b"still serving"));
        assert_eq!(host_recv(&mut rig, &sock), b"still serving");
        let s = rig.stats();
        assert_eq!(s.tx_oversized + s.tx_bad_chains, 1000);
        assert_eq!(s.tx_frames, 1);
    });
}

#[test]
fn packet_limit_defers_tx_frames_until_the_bucket_refills() {
    in_netns(|| {
        let sock = host_side();
        let limits = NetLimits {
            packets: Some(BucketConfig::per_second(5, 0)),
            ..NetLimits::default()
        };
        let mut rig = Rig::new(limits);
        for i in 0..8u8 {
            let addr = buf_addr(TX, u64::from(i));
            let mut bytes = vec![0u8; NET_HDR_LEN];
            bytes.extend_from_slice(&udp_frame(&[i]));
            rig.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            rig.push_chain(TX, &[(addr, bytes.len() as u32, false)]);
        }
        rig.kick(TX);
        // Five frames pass at once; three wait (not returned to the guest).
        assert_eq!(rig.stats().tx_frames, 5);
        assert!(rig.stats().tx_throttled >= 1);
        assert!(rig.dev.lock().unwrap().device().throttled(), "timer armed");
        assert_eq!(rig.used(TX).len(), 5);
        // The timer lets the rest through, in order.
        let mut got = Vec::new();
        rig.until("eight datagrams", |r| {
            let mut b = [0u8; 16];
            while let Ok(n) = sock.recv(&mut b) {
                got.extend_from_slice(&b[..n]);
            }
            let _ = r;
            got.len() == 8
        });
        assert_eq!(got, (0..8).collect::<Vec<u8>>());
        assert_eq!(rig.used(TX).len(), 3);
    });
}

#[test]
fn rx_byte_limit_defers_frames_and_a_reset_refills_nothing() {
    in_netns(|| {
        let sock = host_side();
        let limits = NetLimits {
            rx_bytes: Some(BucketConfig::per_second(200, 0)),
            ..NetLimits::default()
        };
        let mut rig = Rig::new(limits);
        rig.post_rx(0, 8, 2048);
        for i in 0..3u8 {
            host_send(&sock, &[i; 100]);
        }
        // 142-byte frames, 200 bytes a second: the first passes now.
        rig.until("the first frame", |r| r.stats().rx_frames == 1);
        rig.pump();
        assert_eq!(rig.stats().rx_frames, 1);
        assert!(rig.stats().rx_throttled >= 1);
        let mut frames = rig.rx_frames();
        rig.until("all three frames", |r| {
            frames.extend(r.rx_frames());
            frames.len() == 3
        });
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(udp_payload(f).unwrap(), [i as u8; 100]);
        }
        // A driver reset and re-probe keep the limiter's state.
        rig.w(reg::STATUS, 0);
        rig.clear_queues();
        rig.driver_init();
        rig.post_rx(20, 4, 2048);
        host_send(&sock, &[9; 100]);
        host_send(&sock, &[10; 100]);
        rig.until("one frame after the reset", |r| r.stats().rx_frames == 4);
        rig.pump();
        assert_eq!(
            rig.stats().rx_frames,
            4,
            "the bucket was not refilled by the reset"
        );
    });
}

/// Everything the device does on the devices thread (tap reads and writes,
/// queue eventfds, arming and reading the limiter's timerfd, the interrupt)
/// passes that thread's seccomp filter; a violation kills the test process.
#[test]
fn net_traffic_passes_the_devices_seccomp_filter() {
    in_netns(|| {
        let sock = host_side();
        let limits = NetLimits {
            packets: Some(BucketConfig::per_second(2, 0)),
            ..NetLimits::default()
        };
        let mut rig = Rig::new(limits);
        let prog = silo_vmm::seccomp::filter(
            silo_vmm::seccomp::ThreadKind::Devices,
            std::process::id() as libc::pid_t,
        )
        .unwrap();
        seccompiler::apply_filter(&prog).unwrap();
        for i in 0..4u8 {
            rig.send(u64::from(i), &udp_frame(&[i]));
        }
        rig.post_rx(0, 4, 2048);
        host_send(&sock, b"in");
        let mut got = 0;
        let mut frames = Vec::new();
        rig.until("four datagrams out and one frame in", |r| {
            let mut b = [0u8; 16];
            while sock.recv(&mut b).is_ok() {
                got += 1;
            }
            frames.extend(r.rx_frames());
            got == 4 && !frames.is_empty()
        });
        assert!(rig.stats().tx_throttled >= 1, "the timer was used");
    });
}
