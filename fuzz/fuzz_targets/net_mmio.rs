//! The guest-facing virtio-net device as a hostile guest drives it:
//! virtio-mmio register reads and writes, descriptor tables, rings and
//! frames written into a small guest memory, queue notifications through
//! the queue eventfds and the real device event loop, with and without
//! rate limits (whose timer the loop serves); and the host side as a
//! datagram socket pair standing for the tap (frames of any size, from
//! empty to 64 KiB, written to the guest; frames from the guest read),
//! plain or, like the tap, with a virtio-net header each way (then the
//! device offers the TX and RX offloads; headers both ways are built from
//! the input: any flags, segmentation type, `hdr_len`, checksum position).
//! The driver takes or leaves `VIRTIO_RING_F_EVENT_IDX` (then it also
//! writes `used_event` anywhere), `VIRTIO_NET_F_MRG_RXBUF` (then frames
//! span RX buffers of any size), the TX offloads and the RX offloads
//! (`GUEST_CSUM`, `GUEST_TSO4/6`: without them the device completes
//! checksums itself and drops segments).
//!
//! Findings: any panic; the device holding more than one host frame
//! (`Net::buffered_bytes`); a frame reaching the host that is shorter than
//! an Ethernet header or longer than `MAX_FRAME_LEN` (with headers: a
//! header that `check_tx_header` refuses for all offloads, or a TCP
//! segment longer than `MAX_GSO_FRAME_LEN`). (That RX headers carry only
//! what the driver took is checked by `offload.rs`'s unit tests and
//! `vmm/tests/net_offload.rs`: here the fuzzer's own memory writes would
//! make such a check report its own bytes.)
#![no_main]

mod common;

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use silo_vmm::bandwidth::BucketConfig;
use silo_vmm::devices::virtio::net::offload::{
    check_tx_header, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, OFFLOAD_FEATURES,
    RX_OFFLOAD_FEATURES,
};
use silo_vmm::devices::virtio::net::{
    Net, NetBackend, NetLimits, MAX_FRAME_LEN, NET_HDR_LEN, TAP_READ_LEN,
};
use silo_vmm::devices::virtio::Interrupt;
use silo_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use common::{Driver, Input, MEM};

/// The tap's stand-in: one end of a datagram socket pair (frame
/// boundaries kept, non-blocking), with virtio-net headers or without.
struct PairBackend(UnixDatagram, bool);

impl NetBackend for PairBackend {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.0.send(frame)
    }
    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn vnet_hdr(&self) -> bool {
        self.1
    }
}

struct Rig {
    d: Driver<Net<PairBackend>>,
    host: UnixDatagram,
    vnet: bool,
}

impl Rig {
    fn new(limits: NetLimits, vnet: bool) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("memory");
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let (dev_end, host) = UnixDatagram::pair().expect("socketpair");
        dev_end.set_nonblocking(true).expect("nonblocking");
        host.set_nonblocking(true).expect("nonblocking");
        let net = Net::with_backend(PairBackend(dev_end, vnet), None, limits, interrupt.clone())
            .expect("net device");
        Rig {
            d: Driver::new(net, mem, interrupt),
            host,
            vnet,
        }
    }

    /// The Linux driver's setup sequence (MAC and VERSION_1 accepted, and
    /// EVENT_IDX, MRG_RXBUF, the TX offloads, GUEST_CSUM and GUEST_TSO4/6
    /// as `extra`'s low bits say), queues of `size` at fixed places.
    fn driver_init(&mut self, size: u16, extra: u8) {
        let mut features = 1 << 32 | 1 << 5;
        if extra & 1 != 0 {
            features |= 1 << 29;
        }
        if extra & 2 != 0 {
            features |= 1 << 15;
        }
        if extra & 4 != 0 {
            features |= OFFLOAD_FEATURES;
        }
        if extra & 8 != 0 {
            features |= F_GUEST_CSUM;
        }
        if extra & 16 != 0 {
            features |= F_GUEST_TSO4 | F_GUEST_TSO6;
        }
        self.d.init(features, 2, size);
    }

    /// A virtio-net header from the input: flags, segmentation type,
    /// `hdr_len`, segment size, checksum start and offset, each sometimes
    /// plausible and sometimes anything.
    fn any_hdr(inp: &mut Input<'_>) -> [u8; NET_HDR_LEN] {
        let mut h = [0u8; NET_HDR_LEN];
        let pick = inp.u8();
        h[0] = if pick & 1 == 0 {
            inp.u8() % 4
        } else {
            inp.u8()
        };
        h[1] = if pick & 2 == 0 {
            [0, 1, 3, 4, 0x81][usize::from(inp.u8() % 5)]
        } else {
            inp.u8()
        };
        for at in [2, 4, 6, 8] {
            let v = if pick & 4 == 0 {
                inp.u16() % 128
            } else {
                inp.u16()
            };
            h[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        h
    }

    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 12 {
            0 => self.d.reg_write(inp),
            1 => self.d.any_read(inp),
            2 => {
                let at = inp.addr();
                let n = usize::from(inp.u8());
                let data = inp.bytes(n).to_vec();
                let _ = self.d.mem.write_slice(&data, GuestAddress(at));
            }
            3 => {
                let q = usize::from(inp.u8() % 2);
                let (idx, addr, len) = (inp.u16(), inp.addr(), inp.u32());
                let (flags, next) = (inp.u16(), inp.u16());
                self.d.write_desc(q, idx, addr, len, flags, next);
            }
            4 => {
                let q = usize::from(inp.u8() % 2);
                let head = inp.u16();
                self.d.publish(q, head);
            }
            5 => {
                // A TX frame: header and frame of input size (sometimes
                // split in two descriptors), published and kicked.
                let idx = u16::from(inp.u8()) * 2;
                let at = 0x4_0000 + u64::from(idx % 64) * 0x800;
                let len = match inp.u8() % 8 {
                    0 => inp.u32() % 0x1_0000,
                    _ => u32::from(inp.u16() % 1600),
                };
                let fill = inp.u8();
                let _ = self
                    .d
                    .mem
                    .write_slice(&vec![fill; (len as usize).min(0x800)], GuestAddress(at));
                if inp.u8().is_multiple_of(2) {
                    let _ = self
                        .d
                        .mem
                        .write_slice(&Self::any_hdr(inp), GuestAddress(at));
                }
                if inp.u8() % 2 == 0 {
                    self.d.write_desc(1, idx, at, len, 0, 0);
                } else {
                    let first = len.min(NET_HDR_LEN as u32);
                    self.d.write_desc(1, idx, at, first, 1, idx + 1);
                    self.d
                        .write_desc(1, idx + 1, at + u64::from(first), len - first, 0, 0);
                }
                self.d.publish(1, idx);
                self.d.kick(1);
            }
            6 => {
                // RX buffers: write-only descriptors of input size.
                let n = inp.u8() % 8 + 1;
                for _ in 0..n {
                    let idx = u16::from(inp.u8());
                    let len = match inp.u8() % 8 {
                        0 => inp.u32(),
                        // Mergeable-sized parts, down to nothing.
                        1 => u32::from(inp.u16() % 512),
                        _ => 1530,
                    };
                    let at = 0x8_0000 + u64::from(idx % 64) * 0x800;
                    self.d.write_desc(0, idx, at, len, 2, 0);
                    self.d.publish(0, idx);
                }
                self.d.kick(0);
            }
            7 => {
                let q = usize::from(inp.u8() % 2);
                self.d.kick(q);
            }
            8 => {
                // The host sends frames of any size to the guest.
                let n = inp.u8() % 8 + 1;
                for _ in 0..n {
                    let len = match inp.u8() % 8 {
                        0 => usize::from(inp.u16()),
                        1 => 0,
                        _ => usize::from(inp.u16() % 1600),
                    };
                    let fill = inp.u8();
                    let mut frame = vec![fill; len];
                    if self.vnet && len >= NET_HDR_LEN && inp.u8().is_multiple_of(2) {
                        frame[..NET_HDR_LEN].copy_from_slice(&Self::any_hdr(inp));
                    }
                    let _ = self.host.send(&frame);
                }
                self.d.pump();
            }
            9 => self.drain_host(),
            10 => {
                let size = 1u16 << (inp.u8() % 9);
                let extra = inp.u8();
                self.driver_init(size, extra);
            }
            _ => {
                // Let a rate limiter's timer fire.
                self.d.run_for(2);
                self.d.pump();
            }
        }
        self.check_bounds();
    }

    /// Reads what the guest sent; every frame is a sane Ethernet frame.
    fn drain_host(&mut self) {
        let mut b = vec![0u8; 70_000];
        loop {
            match self.host.recv(&mut b) {
                Ok(n) if self.vnet => {
                    assert!(n >= NET_HDR_LEN + 14, "a {n}-byte frame reached the host");
                    let hdr = &b[..NET_HDR_LEN];
                    assert!(
                        check_tx_header(
                            hdr,
                            n - NET_HDR_LEN,
                            OFFLOAD_FEATURES | RX_OFFLOAD_FEATURES
                        )
                        .is_ok(),
                        "a refused header reached the host: {hdr:?} ({n} bytes)"
                    );
                }
                Ok(n) => assert!(
                    (14..=MAX_FRAME_LEN).contains(&n),
                    "a {n}-byte frame reached the host"
                ),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("host side: {e}"),
            }
        }
    }

    fn check_bounds(&mut self) {
        {
            let dev = self.d.dev.lock().unwrap();
            let held = dev.device().buffered_bytes();
            assert!(held <= TAP_READ_LEN, "device holds {held} bytes");
        }
        self.drain_host();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let select = inp.u8();
    let limits = match select % 4 {
        0 => NetLimits {
            rx_bytes: Some(BucketConfig::per_second(u64::from(inp.u16()) + 1, 0)),
            tx_bytes: Some(BucketConfig::per_second(u64::from(inp.u16()) + 1, 0)),
            packets: Some(BucketConfig {
                size: u64::from(inp.u8()) + 1,
                one_time_burst: u64::from(inp.u8()),
                refill_time: Duration::from_millis(1),
            }),
        },
        _ => NetLimits::default(),
    };
    let mut rig = Rig::new(limits, select & 4 != 0);
    let init = inp.u8();
    if init & 1 == 1 {
        rig.driver_init(16, init >> 1);
    }
    let mut steps = 0;
    while !inp.empty() && steps < 256 {
        rig.step(&mut inp);
        steps += 1;
    }
    rig.d.pump();
    rig.check_bounds();
});
