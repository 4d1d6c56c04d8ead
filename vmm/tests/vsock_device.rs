//! The vsock device driven as Linux's driver drives it: MMIO register
//! programming, split virtqueues laid out in guest memory, kicks through the
//! queue eventfds (what KVM's ioeventfds signal), the real event loop, and
//! real Unix sockets on the host side. No KVM needed.

mod common;

use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use common::logs::{capture, LogMeter};
use common::MmioRig;
use silo_vmm::devices::bus::BusDevice;
use silo_vmm::devices::virtio::vsock::{op, Vsock};
use silo_vmm::devices::virtio::Interrupt;
use silo_vmm::memory::create_guest_memory;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;
const GUEST_CID: u64 = 3;
const HDR: usize = 44;
const RX: usize = 0;
const TX: usize = 1;

fn buf_addr(q: usize, i: u16) -> u64 {
    0x80_0000 + q as u64 * 0x10_0000 + u64::from(i) * 0x2000
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Pkt {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

fn encode(p: &Pkt) -> Vec<u8> {
    let mut h = Vec::with_capacity(HDR);
    h.extend_from_slice(&p.src_cid.to_le_bytes());
    h.extend_from_slice(&p.dst_cid.to_le_bytes());
    h.extend_from_slice(&p.src_port.to_le_bytes());
    h.extend_from_slice(&p.dst_port.to_le_bytes());
    h.extend_from_slice(&(p.data.len() as u32).to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&p.op.to_le_bytes());
    h.extend_from_slice(&p.flags.to_le_bytes());
    h.extend_from_slice(&p.buf_alloc.to_le_bytes());
    h.extend_from_slice(&p.fwd_cnt.to_le_bytes());
    h
}

fn decode(b: &[u8]) -> Pkt {
    let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let len = u32at(24);
    Pkt {
        src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        src_port: u32at(16),
        dst_port: u32at(20),
        len,
        op: u16::from_le_bytes(b[30..32].try_into().unwrap()),
        flags: u32at(32),
        buf_alloc: u32at(36),
        fwd_cnt: u32at(40),
        data: b[HDR..HDR + len as usize].to_vec(),
    }
}

/// The fake guest driver of [`MmioRig`] with a vsock device whose host
/// side is the Unix socket at `path` (and `<path>_<port>` listeners).
struct Rig {
    mmio: MmioRig<Vsock>,
    path: PathBuf,
    _dir: TempDir,
}

/// The rig's registers, queues and memory are the [`MmioRig`]'s.
impl Deref for Rig {
    type Target = MmioRig<Vsock>;
    fn deref(&self) -> &MmioRig<Vsock> {
        &self.mmio
    }
}

impl DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut MmioRig<Vsock> {
        &mut self.mmio
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Rig {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("silo-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let mem = create_guest_memory(64).unwrap();
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let vsock = Vsock::new(GUEST_CID, &path, interrupt.clone()).unwrap();
        let mut rig = Rig {
            mmio: MmioRig::new(vsock, mem, interrupt, QSIZE),
            path,
            _dir: TempDir(dir),
        };
        rig.driver_init();
        rig
    }

    fn driver_init(&mut self) {
        self.probe(19, "vsock");
        self.w(0x14, 1);
        assert_eq!(self.r(0x10) & 1, 1, "VERSION_1 offered");
        self.accept_version_1();
        for q in 0..3 {
            self.setup_queue(q);
        }
        self.driver_ok();
        let mut cid = [0u8; 8];
        self.dev.lock().unwrap().read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    }

    fn add_rx_buffers(&mut self, n: u16) {
        for _ in 0..n {
            let i = self.queues[RX].next_desc;
            self.push_chain(RX, &[(buf_addr(RX, i), 0x2000, true)]);
        }
        self.kick(RX);
    }

    fn send(&mut self, p: Pkt) {
        self.queue_pkt(p);
        self.kick(TX);
    }

    /// Makes a packet available on TX without kicking.
    fn queue_pkt(&mut self, p: Pkt) {
        let i = self.queues[TX].next_desc;
        let hdr_at = buf_addr(TX, i);
        let data_at = hdr_at + 0x100;
        self.mem
            .write_slice(&encode(&p), GuestAddress(hdr_at))
            .unwrap();
        self.mem
            .write_slice(&p.data, GuestAddress(data_at))
            .unwrap();
        if p.data.is_empty() {
            self.push_chain(TX, &[(hdr_at, HDR as u32, false)]);
        } else {
            self.push_chain(
                TX,
                &[
                    (hdr_at, HDR as u32, false),
                    (data_at, p.data.len() as u32, false),
                ],
            );
        }
    }

    /// The driver resets the device (status 0) and sets it up again from scratch.
    fn restart_driver(&mut self) {
        self.w(0x70, 0);
        self.clear_queues();
        self.pump();
        self.driver_init();
    }

    fn tx_used(&self) -> u16 {
        self.used_idx(TX)
    }

    /// Packets the device put in the RX used ring since last call.
    fn received(&mut self) -> Vec<Pkt> {
        self.pump();
        let used = self.used(RX);
        used.into_iter()
            .map(|(id, len)| {
                let d = self.queues[RX].desc + u64::from(id) * 16;
                let addr: u64 = self.mem.read_obj(GuestAddress(d)).unwrap();
                let mut buf = vec![0u8; len as usize];
                self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
                decode(&buf)
            })
            .collect()
    }

    /// The guest shuts its connection from `gport` to `hport` down in both
    /// directions.
    fn guest_shutdown(&mut self, gport: u32, hport: u32) {
        self.send(Pkt {
            flags: 3,
            ..self.guest_pkt(gport, hport, op::SHUTDOWN, b"")
        });
    }

    /// Whether the packets received since the last call include a reset.
    fn received_rst(&mut self) -> bool {
        self.received().iter().any(|p| p.op == op::RST)
    }

    /// How many data bytes (RW packets) were received since the last call.
    fn received_data_len(&mut self) -> usize {
        self.received()
            .iter()
            .filter(|p| p.op == op::RW)
            .map(|p| p.data.len())
            .sum()
    }

    /// How many connections the device keeps.
    fn connections(&self) -> usize {
        self.dev.lock().unwrap().device().connection_count()
    }

    fn guest_pkt(&self, src_port: u32, dst_port: u32, op: u16, data: &[u8]) -> Pkt {
        Pkt {
            src_cid: GUEST_CID,
            dst_cid: 2,
            src_port,
            dst_port,
            op,
            buf_alloc: 64 * 1024,
            data: data.to_vec(),
            ..Default::default()
        }
    }
}

#[test]
fn guest_connects_to_a_host_port_and_data_flows_both_ways() {
    let mut rig = Rig::new("g2h");
    let listener = UnixListener::bind(format!("{}_1234", rig.path.display())).unwrap();
    rig.add_rx_buffers(8);
    rig.send(rig.guest_pkt(50_000, 1234, op::REQUEST, b""));
    let (mut host, _) = listener.accept().unwrap();
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].op, got[0].dst_port, got[0].src_port, got[0].dst_cid),
        (op::RESPONSE, 50_000, 1234, GUEST_CID)
    );

    rig.send(rig.guest_pkt(50_000, 1234, op::RW, b"ping"));
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    host.write_all(b"pong").unwrap();
    rig.pump();
    let got = rig.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].op, &got[0].data[..]), (op::RW, &b"pong"[..]));
    assert_eq!(
        got[0].fwd_cnt, 4,
        "the host reports the 4 bytes it forwarded"
    );

    rig.guest_shutdown(50_000, 1234);
    let got = rig.received();
    assert!(got.iter().any(|p| p.op == op::RST), "{got:?}");
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(host.read(&mut buf).unwrap(), 0, "host stream closed");
    assert_eq!(rig.connections(), 0);
}

#[test]
fn host_connects_to_a_guest_port_with_the_connect_handshake() {
    let mut rig = Rig::new("h2g");
    rig.add_rx_buffers(8);
    let mut host = UnixStream::connect(&rig.path).unwrap();
    rig.pump();
    host.write_all(b"CONNECT 5000\n").unwrap();
    rig.pump();
    let got = rig.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].op, got[0].dst_port), (op::REQUEST, 5000));
    let host_port = got[0].src_port;
    rig.send(rig.guest_pkt(5000, host_port, op::RESPONSE, b""));
    let mut line = [0u8; 64];
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = host.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {host_port}\n")
    );
}

#[test]
fn refused_and_malformed_traffic_gets_rst_or_is_dropped_without_harm() {
    let mut rig = Rig::new("bad");
    rig.add_rx_buffers(8);
    // No host socket for port 9: reset.
    rig.send(rig.guest_pkt(40_000, 9, op::REQUEST, b""));
    let got = rig.received();
    assert_eq!((got.len(), got[0].op), (1, op::RST));
    // Spoofed source CID: dropped silently.
    rig.send(Pkt {
        src_cid: 99,
        ..rig.guest_pkt(40_001, 9, op::REQUEST, b"")
    });
    assert!(rig.received().is_empty());
    // Data on a connection that does not exist: reset.
    rig.send(rig.guest_pkt(40_002, 9, op::RW, b"x"));
    assert_eq!(rig.received()[0].op, op::RST);
    // A TX chain whose header is device-writable, and one pointing outside
    // guest memory: both consumed and dropped.
    let i = rig.queues[TX].next_desc;
    rig.push_chain(TX, &[(buf_addr(TX, i), HDR as u32, true)]);
    rig.push_chain(TX, &[(0xffff_ff00_0000, HDR as u32, false)]);
    rig.push_chain(TX, &[(buf_addr(TX, i), 8, false)]);
    rig.kick(TX);
    let used = rig.used_idx(TX);
    assert_eq!(used, 6, "every TX chain is returned to the guest");
    // The device still works afterwards.
    let listener = UnixListener::bind(format!("{}_77", rig.path.display())).unwrap();
    rig.send(rig.guest_pkt(40_003, 77, op::REQUEST, b""));
    listener.accept().unwrap();
    assert_eq!(rig.received()[0].op, op::RESPONSE);
}

#[test]
fn host_to_guest_data_respects_the_guest_credit() {
    let mut rig = Rig::new("credit");
    let listener = UnixListener::bind(format!("{}_1", rig.path.display())).unwrap();
    rig.add_rx_buffers(8);
    rig.send(Pkt {
        buf_alloc: 1000,
        ..rig.guest_pkt(60_000, 1, op::REQUEST, b"")
    });
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(rig.received()[0].op, op::RESPONSE);
    host.write_all(&vec![b'z'; 5000]).unwrap();
    rig.pump();
    let delivered = rig.received_data_len();
    assert_eq!(delivered, 1000, "never more than the guest's buf_alloc");
    // The guest consumed it all and says so: the rest may flow.
    rig.send(Pkt {
        buf_alloc: 1000,
        fwd_cnt: 1000,
        ..rig.guest_pkt(60_000, 1, op::CREDIT_UPDATE, b"")
    });
    let delivered = rig.received_data_len();
    assert_eq!(delivered, 1000);
}

#[test]
fn transport_refuses_legacy_drivers_and_resets_on_status_zero() {
    let rig = Rig::new("transport");
    rig.w(0x70, 0);
    assert_eq!(rig.r(0x70), 0);
    assert!(!rig.dev.lock().unwrap().is_activated());
    rig.w(0x70, 1);
    rig.w(0x70, 3);
    // Accept no features (no VERSION_1): FEATURES_OK must not stick.
    rig.w(0x70, 11);
    assert_eq!(rig.r(0x70) & 8, 0);
}

/// Connects guest port `gport` to a fresh host listener at `<path>_<hport>`.
fn guest_connect(rig: &mut Rig, gport: u32, hport: u32) -> UnixStream {
    let listener = UnixListener::bind(format!("{}_{hport}", rig.path.display())).unwrap();
    rig.send(rig.guest_pkt(gport, hport, op::REQUEST, b""));
    let (host, _) = listener.accept().unwrap();
    let got = rig.received();
    assert_eq!(
        got.iter().map(|p| p.op).collect::<Vec<_>>(),
        [op::RESPONSE],
        "{got:?}"
    );
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host
}

/// A fresh rig named `name` with 8 RX buffers and guest port `gport`
/// connected to host port `hport` (see [`guest_connect`]).
fn rig_with_connection(name: &str, gport: u32, hport: u32) -> (Rig, UnixStream) {
    let mut rig = Rig::new(name);
    rig.add_rx_buffers(8);
    let host = guest_connect(&mut rig, gport, hport);
    (rig, host)
}

#[test]
fn guest_data_written_before_close_reaches_a_slow_host_in_full() {
    let (mut rig, host) = rig_with_connection("linger", 50_001, 2000);
    // More than a Unix socket buffer holds (wmem_default is 208 KiB), within
    // the 256 KiB the device advertised: the host is not reading yet.
    let total = 250 * 1024;
    let chunk = 0x1e00;
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    for part in payload.chunks(chunk) {
        rig.send(rig.guest_pkt(50_001, 2000, op::RW, part));
    }
    rig.guest_shutdown(50_001, 2000);
    assert!(
        !rig.received_rst(),
        "no reset while guest data is still buffered for the host"
    );
    assert_eq!(rig.connections(), 1);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        (&host).read_to_end(&mut got).map(|_| got)
    });
    for _ in 0..500 {
        if reader.is_finished() {
            break;
        }
        rig.pump();
    }
    let got = reader.join().unwrap().expect("host reads to end of stream");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "host received the guest's bytes in order");
    assert!(rig.received_rst());
    assert_eq!(rig.connections(), 0);
}

#[test]
fn host_half_close_still_lets_the_guest_answer() {
    let (mut rig, mut host) = rig_with_connection("halfclose", 50_002, 2001);
    host.write_all(b"request").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    rig.pump();
    let got = rig.received();
    let ops: Vec<u16> = got.iter().map(|p| p.op).collect();
    assert_eq!(ops, [op::RW, op::SHUTDOWN], "{got:?}");
    assert_eq!(&got[0].data[..], b"request");
    assert_eq!(
        got[1].flags, 2,
        "the host sends no more, but still receives"
    );
    rig.send(rig.guest_pkt(50_002, 2001, op::RW, b"response"));
    let mut buf = [0u8; 8];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"response");
    rig.guest_shutdown(50_002, 2001);
    assert!(rig.received_rst());
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(rig.connections(), 0);
}

#[test]
fn device_reset_closes_host_streams_and_later_connections_work() {
    let (mut rig, mut first) = rig_with_connection("reset", 50_003, 2002);
    rig.restart_driver();
    let mut buf = [0u8; 1];
    assert_eq!(
        first.read(&mut buf).unwrap(),
        0,
        "reset closed the host stream"
    );
    assert_eq!(rig.connections(), 0);
    // New connections (whose fds reuse the numbers just freed) register fine.
    rig.add_rx_buffers(8);
    let mut hosts = Vec::new();
    for i in 0..3 {
        let mut host = guest_connect(&mut rig, 50_010 + i, 2010 + i);
        rig.send(rig.guest_pkt(50_010 + i, 2010 + i, op::RW, b"k"));
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"k");
        hosts.push(host);
    }
    assert_eq!(rig.connections(), 3);
}

#[test]
fn replies_waiting_for_rx_buffers_hold_back_the_tx_queue() {
    use silo_vmm::devices::virtio::vsock::MAX_PENDING_CONTROL;
    let mut rig = Rig::new("backpressure");
    // No RX buffers: every refused REQUEST owes the guest an RST.
    let mut sent = 0u32;
    while (sent as usize) < MAX_PENDING_CONTROL + usize::from(QSIZE) {
        for _ in 0..QSIZE {
            rig.queue_pkt(rig.guest_pkt(1000 + sent, 9, op::REQUEST, b""));
            sent += 1;
        }
        rig.kick(TX);
    }
    assert_eq!(
        usize::from(rig.tx_used()),
        MAX_PENDING_CONTROL,
        "TX stops at the bound on owed replies"
    );
    rig.add_rx_buffers(QSIZE);
    let got = rig.received();
    assert_eq!(got.len(), usize::from(QSIZE));
    assert!(got.iter().all(|p| p.op == op::RST));
    assert_eq!(
        usize::from(rig.tx_used()),
        MAX_PENDING_CONTROL + usize::from(QSIZE),
        "delivered replies let held-back TX packets through"
    );
}

#[test]
fn a_million_malformed_packets_and_bad_accesses_leave_a_bounded_log_and_a_working_device() {
    const PACKETS: usize = 1_000_000;
    let meter = LogMeter::default();
    let writer = meter.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .finish();
    let started = std::time::Instant::now();
    {
        // Sibling tests reach the same log lines on their own threads.
        let _log = capture(subscriber);
        let mut rig = Rig::new("flood");
        let mut sent = 0usize;
        while sent < PACKETS {
            // One queue's worth of malformed packets per kick, three kinds:
            // wrong CIDs, a header descriptor too short for a header, and a
            // device-writable header in the TX queue.
            for i in 0..QSIZE {
                let at = buf_addr(TX, rig.queues[TX].next_desc);
                match (sent + usize::from(i)) % 3 {
                    0 => {
                        let p = Pkt {
                            src_cid: 77,
                            ..rig.guest_pkt(50_000, 1234, op::REQUEST, b"")
                        };
                        rig.mem.write_slice(&encode(&p), GuestAddress(at)).unwrap();
                        rig.push_chain(TX, &[(at, HDR as u32, false)]);
                    }
                    1 => {
                        rig.push_chain(TX, &[(at, 10, false)]);
                    }
                    _ => {
                        rig.push_chain(TX, &[(at, HDR as u32, true)]);
                    }
                }
            }
            rig.evts[TX].write(1).unwrap();
            rig.manager.run_with_timeout(0).unwrap();
            sent += usize::from(QSIZE);
            // A bad register access per packet: the driver clearing status
            // bits without a reset (ignored, and a guest fault).
            for _ in 0..QSIZE {
                rig.w(0x70, 1);
            }
        }
        assert_eq!(
            usize::from(rig.tx_used()),
            PACKETS % 65536,
            "every packet consumed"
        );

        // The device still works: a guest connection and data both ways.
        let listener = UnixListener::bind(format!("{}_1234", rig.path.display())).unwrap();
        rig.add_rx_buffers(8);
        rig.send(rig.guest_pkt(50_000, 1234, op::REQUEST, b""));
        let (mut host, _) = listener.accept().unwrap();
        let got = rig.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].op, op::RESPONSE);
        rig.send(rig.guest_pkt(50_000, 1234, op::RW, b"ping"));
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
    let elapsed = started.elapsed().as_secs() + 1;
    let (bytes, lines, head) = meter.read();
    // Four fault kinds (three packet kinds, one register access) each log
    // at most a burst plus one line per second, and a summary line before
    // each line that follows a suppression.
    let kinds = 4;
    let per_kind =
        silo_vmm::ratelimit::BURST as u64 + silo_vmm::ratelimit::PER_SECOND as u64 * elapsed;
    let max_lines = (kinds * 2 * per_kind) as usize;
    assert!(
        lines <= max_lines,
        "{lines} log lines for {} faults in {elapsed} s (cap {max_lines}):\n{head}",
        2 * PACKETS
    );
    assert!(
        bytes <= max_lines * 300,
        "{bytes} log bytes for {lines} lines"
    );
    assert!(
        head.contains("wrong CIDs") && head.contains("malformed vsock TX"),
        "the faults are logged, within the limit:\n{head}"
    );
    eprintln!(
        "{} guest faults in {elapsed} s: {lines} log lines, {bytes} bytes",
        2 * PACKETS
    );
}
