//! The fake guest of the virtio-net device tests (`net_device.rs`,
//! `net_device_rings.rs`): the device driven as Linux's `virtio_net` drives
//! it (probe, feature negotiation, two queues, RX buffers posted, TX chains
//! with a `virtio_net_hdr_v1`), with the real event loop and a real tap
//! interface on this machine: each test runs on its own thread in a private
//! network namespace (root needed), where `ip` creates a persistent tap
//! with 10.0.0.1/24 on it, as the daemon does for a VM. Frames go both ways
//! through host UDP sockets.

#![allow(dead_code, unused_imports)]

pub use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::ops::{Deref, DerefMut};
pub use std::process::Command;
pub use std::time::{Duration, Instant};

pub use crate::common::{reg, MmioRig};
pub use silo_vmm::bandwidth::BucketConfig;
pub use silo_vmm::devices::virtio::net::{
    Net, NetLimits, NetStats, DEFAULT_MAC, MAX_FRAME_LEN, NET_HDR_LEN,
};
pub use silo_vmm::devices::virtio::Interrupt;
pub use silo_vmm::memory::create_guest_memory;
pub use vm_memory::{Bytes, GuestAddress};
pub use vmm_sys_util::eventfd::EventFd;

pub const QSIZE: u16 = 64;
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const TAP: &str = "silotap0";
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const HOST_PORT: u16 = 5000;
pub const GUEST_PORT: u16 = 6000;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const MRG_RXBUF: u32 = 1 << 15;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const EVENT_IDX: u32 = 1 << 29;
/// Features 0-31 the device offered on a tap before notification
/// suppression and mergeable buffers: CSUM (0), MAC (5), HOST_TSO4 (11),
/// HOST_TSO6 (12). A driver may still take only these.
pub const BASIC: u32 = 1 | 1 << 5 | 1 << 11 | 1 << 12;
/// The receive offloads: GUEST_CSUM (1), GUEST_TSO4 (7), GUEST_TSO6 (8).
pub const RX_OFFLOADS: u32 = 1 << 1 | 1 << 7 | 1 << 8;
/// `VIRTIO_NET_F_GUEST_CSUM`.
pub const GUEST_CSUM: u32 = 1 << 1;
/// Features 0-31 the device offers on a tap: [`BASIC`], [`RX_OFFLOADS`],
/// MRG_RXBUF (15) and EVENT_IDX (29); Linux takes them all.
pub const OFFERED: u32 = BASIC | RX_OFFLOADS | MRG_RXBUF | EVENT_IDX;
/// Generous: the machine is shared and slow.
pub const WAIT: Duration = Duration::from_secs(20);

/// Runs `body` on a fresh thread in a new, private network namespace (a
/// thread's namespace is its own: the test process is not affected).
pub fn in_netns(body: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): the net device tests need root");
        body();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the kernel's link watch has brought the tap's queue up
/// after the device attached (operational state UP; with `IFF_VNET_HDR` it
/// takes up to a second, and frames sent before are dropped).
pub fn tap_ready() {
    let start = Instant::now();
    loop {
        let out = Command::new("ip")
            .args(["-o", "link", "show", TAP])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("state UP") {
            return;
        }
        assert!(start.elapsed() < WAIT, "the tap never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host side in this namespace: a persistent tap with HOST_IP and a
/// fixed MAC, the guest's MAC as a permanent neighbour (no ARP), and a UDP
/// socket on HOST_IP:HOST_PORT.
pub fn host_side() -> UdpSocket {
    // No IPv6 chatter (router solicitations, MLD) on the new interface.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    ip(&["link", "set", "dev", TAP, "address", "02:00:00:00:00:01"]);
    ip(&["addr", "add", "10.0.0.1/24", "dev", TAP]);
    ip(&["link", "set", "dev", TAP, "up"]);
    ip(&[
        "neigh",
        "replace",
        "10.0.0.2",
        "lladdr",
        "06:00:a9:fe:00:02",
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
    let sock = UdpSocket::bind(SocketAddrV4::new(HOST_IP, HOST_PORT)).unwrap();
    sock.set_nonblocking(true).unwrap();
    sock
}

pub fn buf_addr(q: usize, i: u64) -> u64 {
    0x80_0000 + q as u64 * 0x40_0000 + i * 0x1000
}

pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying a UDP datagram from the guest to the host.
pub fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    iph.extend_from_slice(&GUEST_IP.octets());
    iph.extend_from_slice(&HOST_IP.octets());
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&GUEST_PORT.to_be_bytes());
    f.extend_from_slice(&HOST_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The device on the tap behind its transport, with the guest's side, the
/// features the driver took and the interrupt's eventfd.
pub struct Rig {
    rig: MmioRig<Net>,
    /// Features 0-31 the driver accepted.
    pub accepted: u32,
    /// The interrupt line's eventfd (what KVM's irqfd would get).
    pub irq: EventFd,
}

impl Deref for Rig {
    type Target = MmioRig<Net>;
    fn deref(&self) -> &Self::Target {
        &self.rig
    }
}

impl DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rig
    }
}

impl Rig {
    /// A net device on the tap, probed as Linux probes it (every feature
    /// offered taken).
    pub fn new(limits: NetLimits) -> Self {
        Self::with_features(limits, OFFERED)
    }

    /// A net device on the tap, probed by a driver that takes `accept` of
    /// features 0-31 (and VERSION_1).
    pub fn with_features(limits: NetLimits, accept: u32) -> Self {
        let mut rig = Self::unprobed(limits, accept);
        rig.driver_init();
        tap_ready();
        rig
    }

    /// The device behind its transport, not probed yet.
    pub fn unprobed(limits: NetLimits, accept: u32) -> Self {
        let mem = create_guest_memory(64).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        let dev = Net::new(TAP, None, limits, interrupt.clone()).unwrap();
        Rig {
            rig: MmioRig::new(dev, mem, interrupt, QSIZE),
            accepted: accept,
            irq,
        }
    }

    /// virtio_mmio + virtio_net at probe: reset, ACKNOWLEDGE, DRIVER; MAC,
    /// the TX offloads (CSUM, HOST_TSO4, HOST_TSO6), mergeable RX buffers,
    /// EVENT_IDX and VERSION_1 offered and (as Linux does) accepted, or the
    /// rig's own choice of them; FEATURES_OK; the MAC read from config
    /// space; RX and TX queues (no control queue); DRIVER_OK.
    pub fn driver_init(&mut self) {
        self.probe(1, "net");
        self.w(reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            self.r(reg::DEVICE_FEATURES),
            OFFERED,
            "MAC, the TX and RX offloads, MRG_RXBUF and EVENT_IDX in bits 0-31"
        );
        self.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(self.r(reg::DEVICE_FEATURES), 1, "VERSION_1");
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, self.accepted);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, 1);
        self.w(reg::STATUS, 11);
        assert_eq!(self.r(reg::STATUS) & 8, 8, "FEATURES_OK accepted");
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            silo_vmm::devices::bus::BusDevice::read(
                &mut *self.dev.lock().unwrap(),
                reg::CONFIG + i as u64,
                &mut one,
            );
            *b = one[0];
        }
        assert_eq!(mac, DEFAULT_MAC);
        self.w(reg::QUEUE_SEL, 2);
        assert_eq!(self.r(reg::QUEUE_NUM_MAX), 0, "no control queue");
        self.setup_queue(RX);
        self.setup_queue(TX);
        self.driver_ok();
    }

    pub fn stats(&self) -> NetStats {
        self.dev.lock().unwrap().device().stats()
    }

    /// Posts `n` RX buffers of `len` bytes starting at buffer `first`.
    pub fn post_rx(&mut self, first: u64, n: u64, len: u32) {
        for i in first..first + n {
            self.push_chain(RX, &[(buf_addr(RX, i), len, true)]);
        }
        self.kick(RX);
    }

    /// Puts `hdr + frame` at TX buffer `slot` and sends it as one chain.
    pub fn send(&mut self, slot: u64, frame: &[u8]) -> u16 {
        self.send_with_hdr(slot, [0; NET_HDR_LEN], frame)
    }

    /// [`Rig::send`] with the guest's header `hdr`.
    pub fn send_with_hdr(&mut self, slot: u64, hdr: [u8; NET_HDR_LEN], frame: &[u8]) -> u16 {
        let addr = buf_addr(TX, slot);
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        let head = self.push_chain(TX, &[(addr, bytes.len() as u32, false)]);
        self.kick(TX);
        head
    }

    /// Pumps the loop until `done` or [`WAIT`]; panics with `what`.
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            self.manager.run_with_timeout(10).unwrap();
        }
    }

    /// The bytes the device wrote into used RX chain `head` (its first
    /// descriptor, `len` bytes).
    pub fn rx_bytes(&self, head: u32, len: u32) -> Vec<u8> {
        let d = self.queues[RX].desc + u64::from(head) * 16;
        let addr: u64 = self.mem.read_obj(GuestAddress(d)).unwrap();
        let mut b = vec![0u8; len as usize];
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    /// The RX frames (without the virtio-net header) delivered since the
    /// last call, as Linux reassembles them: each header checked to carry
    /// no offload the driver did not take (with GUEST_CSUM: only the
    /// checksum flags and the TCP segmentation it took) and
    /// `num_buffers` (1 without mergeable buffers), that many used chains
    /// making up the frame. Chains returned unused (length 0) are skipped,
    /// as Linux drops them.
    pub fn rx_frames(&mut self) -> Vec<Vec<u8>> {
        self.rx_frames_counted()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    /// [`Rig::rx_frames`] with each frame's `num_buffers`.
    pub fn rx_frames_counted(&mut self) -> Vec<(Vec<u8>, u16)> {
        self.rx_frames_with_hdr()
            .into_iter()
            .map(|(_, f, n)| (f, n))
            .collect()
    }

    /// [`Rig::rx_frames_counted`] with each frame's header.
    pub fn rx_frames_with_hdr(&mut self) -> Vec<([u8; NET_HDR_LEN], Vec<u8>, u16)> {
        let mut used = self.used(RX).into_iter().filter(|&(_, len)| len > 0);
        let mut out = Vec::new();
        while let Some((head, len)) = used.next() {
            let mut b = self.rx_bytes(head, len);
            if self.accepted & GUEST_CSUM != 0 {
                assert_eq!(b[0] & !3, 0, "only NEEDS_CSUM and DATA_VALID");
                let tso = match b[1] {
                    0 => 0,
                    1 => 1 << 7,
                    4 => 1 << 8,
                    other => panic!("segmentation type {other}"),
                };
                assert_eq!(self.accepted & tso, tso, "segmentation not taken");
            } else {
                assert_eq!(&b[..10], &[0; 10], "no offload the driver did not take");
            }
            let hdr: [u8; NET_HDR_LEN] = b[..NET_HDR_LEN].try_into().unwrap();
            let n = u16::from_le_bytes([b[10], b[11]]);
            if self.accepted & MRG_RXBUF == 0 {
                assert_eq!(n, 1, "one buffer without MRG_RXBUF");
            }
            let mut frame = b.split_off(NET_HDR_LEN);
            for _ in 1..n {
                let (h, l) = used.next().expect("num_buffers chains used");
                frame.extend(self.rx_bytes(h, l));
            }
            out.push((hdr, frame, n));
        }
        out
    }
}

/// Waits for a datagram on the host socket.
pub fn host_recv(rig: &mut Rig, sock: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let mut got = None;
    rig.until("a datagram on the host", |_| match sock.recv(&mut buf) {
        Ok(n) => {
            got = Some(buf[..n].to_vec());
            true
        }
        Err(_) => false,
    });
    got.unwrap()
}

/// Whether the host socket has nothing waiting (after pumping the loop).
pub fn host_quiet(rig: &mut Rig, sock: &UdpSocket) -> bool {
    rig.pump();
    let mut buf = [0u8; 2048];
    sock.recv(&mut buf).is_err()
}

/// Sends a datagram from the host to the guest's address.
pub fn host_send(sock: &UdpSocket, payload: &[u8]) {
    sock.send_to(payload, SocketAddrV4::new(GUEST_IP, GUEST_PORT))
        .unwrap();
}

/// The UDP payload of a frame the host sent to the guest (None for other
/// frames).
pub fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    (frame.len() >= 42 && frame[..6] == DEFAULT_MAC && frame[12..14] == [8, 0] && frame[23] == 17)
        .then(|| &frame[42..])
}
