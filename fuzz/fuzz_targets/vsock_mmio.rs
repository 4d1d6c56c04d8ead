//! The guest-facing vsock device as a hostile guest drives it: virtio-mmio
//! register reads and writes, descriptor tables, rings and packets written
//! into a small guest memory, queue notifications through the queue
//! eventfds and the real device event loop; and host processes on the
//! muxer's Unix sockets in a temporary directory (CONNECT lines, listeners
//! at `<uds>_<port>`, reads, writes and closes).
//!
//! Findings: any panic; a guest connection attempt to any host path other
//! than `<uds>_<port>` (seen through the muxer's connect hook); the muxer
//! holding more bytes than its per-connection credit allows; too many
//! connections. Run with `-rss_limit_mb` (see fuzz/README.md) for the
//! process-wide memory bound.
#![no_main]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use silo_vmm::devices::virtio::vsock::connection::{BUF_ALLOC, READ_CHUNK};
use silo_vmm::devices::virtio::vsock::{Vsock, VsockMuxer, MAX_CONNECTIONS};
use silo_vmm::devices::virtio::Interrupt;
use silo_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use common::{Driver, Input, MEM};

const GUEST_CID: u64 = 3;
/// Ports that may get a host listener (guest connections to others are reset).
const LISTEN_PORTS: [u32; 3] = [1024, 1025, 52];
/// Host streams kept at once.
const MAX_STREAMS: usize = 8;

/// The process's scratch directory (sockets are replaced per input).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("silo-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

struct Rig {
    d: Driver<Vsock>,
    uds: PathBuf,
    listeners: Vec<(u32, UnixListener)>,
    streams: Vec<UnixStream>,
}

impl Rig {
    fn new() -> Self {
        let uds = scratch().join("v");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("memory");
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut muxer = VsockMuxer::new(&uds).expect("muxer");
        let prefix = format!("{}_", uds.display());
        muxer.set_connect_hook(Box::new(move |path: &Path| {
            let s = path.to_str().expect("connect path is UTF-8");
            let port = s
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("guest connect path {s:?} is not <uds>_<port>"));
            let n: u32 = port
                .parse()
                .unwrap_or_else(|_| panic!("guest connect path {s:?}: {port:?} is no port"));
            assert_eq!(n.to_string(), port, "port in canonical decimal");
        }));
        let vsock = Vsock::with_backend(GUEST_CID, muxer, interrupt.clone()).expect("vsock");
        Rig {
            d: Driver::new(vsock, mem, interrupt),
            uds,
            listeners: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// The Linux driver's setup sequence, queues of `size` at fixed places.
    fn driver_init(&mut self, size: u16) {
        self.d.init(1 << 32, 3, size);
    }

    fn pump(&mut self) {
        self.d.pump();
        self.accept_host();
    }

    fn accept_host(&mut self) {
        for (_, l) in &self.listeners {
            while self.streams.len() < MAX_STREAMS {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(true);
                        self.streams.push(s);
                    }
                    Err(_) => break,
                }
            }
        }
    }

    fn kick(&mut self, q: usize) {
        self.d.kick(q);
        self.accept_host();
    }

    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 14 {
            0 => self.d.reg_write(inp),
            1 => self.d.any_read(inp),
            2 => self.d.any_write(inp),
            3 => {
                let at = inp.addr();
                let n = usize::from(inp.u8());
                let data = inp.bytes(n).to_vec();
                let _ = self.d.mem.write_slice(&data, GuestAddress(at));
            }
            4 => {
                let q = usize::from(inp.u8() % 3);
                let (idx, addr, len) = (inp.u16(), inp.addr(), inp.u32());
                let (flags, next) = (inp.u16(), inp.u16());
                self.d.write_desc(q, idx, addr, len, flags, next);
            }
            5 => {
                let q = usize::from(inp.u8() % 3);
                let head = inp.u16();
                self.d.publish(q, head);
            }
            6 => {
                // A well-formed TX packet (header, optional data), fields
                // from the input, published and kicked.
                let idx = u16::from(inp.u8()) * 2;
                let hdr_at = 0x4_0000 + u64::from(idx) * 0x100;
                let data_len = usize::from(inp.u8());
                let src_cid = if inp.u8() % 8 == 0 {
                    inp.u64()
                } else {
                    GUEST_CID
                };
                let dst_cid = if inp.u8() % 8 == 0 { inp.u64() } else { 2 };
                let src_port = u32::from(inp.u8() % 4) + 50_000;
                let dst_port = match inp.u8() % 6 {
                    0 => inp.u32(),
                    n => LISTEN_PORTS[usize::from(n) % 3] + u32::from(n / 3) * (1 << 30),
                };
                let type_ = if inp.u8() % 8 == 0 { inp.u16() } else { 1 };
                let op = u16::from(inp.u8() % 9);
                let flags = u32::from(inp.u8() % 4);
                let buf_alloc = if inp.u8() % 4 == 0 {
                    inp.u32()
                } else {
                    64 * 1024
                };
                let fwd_cnt = inp.u32() % 4096;
                let len = if inp.u8() % 8 == 0 {
                    inp.u32()
                } else {
                    data_len as u32
                };
                let mut h = Vec::with_capacity(44);
                h.extend_from_slice(&src_cid.to_le_bytes());
                h.extend_from_slice(&dst_cid.to_le_bytes());
                h.extend_from_slice(&src_port.to_le_bytes());
                h.extend_from_slice(&dst_port.to_le_bytes());
                h.extend_from_slice(&len.to_le_bytes());
                h.extend_from_slice(&type_.to_le_bytes());
                h.extend_from_slice(&op.to_le_bytes());
                h.extend_from_slice(&flags.to_le_bytes());
                h.extend_from_slice(&buf_alloc.to_le_bytes());
                h.extend_from_slice(&fwd_cnt.to_le_bytes());
                let _ = self.d.mem.write_slice(&h, GuestAddress(hdr_at));
                let data = inp.bytes(data_len).to_vec();
                let _ = self.d.mem.write_slice(&data, GuestAddress(hdr_at + 0x80));
                if data_len == 0 {
                    self.d.write_desc(1, idx, hdr_at, 44, 0, 0);
                } else {
                    self.d.write_desc(1, idx, hdr_at, 44, 1, idx + 1);
                    self.d
                        .write_desc(1, idx + 1, hdr_at + 0x80, data_len as u32, 0, 0);
                }
                self.d.publish(1, idx);
                self.kick(1);
            }
            7 => {
                // RX buffers: write-only descriptors of input size.
                let n = inp.u8() % 8 + 1;
                for _ in 0..n {
                    let idx = u16::from(inp.u8());
                    let len = if inp.u8() % 8 == 0 { inp.u32() } else { 0x1000 };
                    let at = 0x8_0000 + u64::from(idx) * 0x400;
                    self.d.write_desc(0, idx, at, len, 2, 0);
                    self.d.publish(0, idx);
                }
                self.kick(0);
            }
            8 => {
                let q = usize::from(inp.u8() % 3);
                self.kick(q);
            }
            9 => {
                if self.streams.len() < MAX_STREAMS {
                    if let Ok(mut s) = UnixStream::connect(&self.uds) {
                        let _ = s.set_nonblocking(true);
                        let line = match inp.u8() % 4 {
                            0 => {
                                let n = usize::from(inp.u8() % 48);
                                inp.bytes(n).to_vec()
                            }
                            n => format!("CONNECT {}\n", [inp.u32(), 1024, 52][usize::from(n - 1)])
                                .into_bytes(),
                        };
                        let _ = s.write(&line);
                        self.streams.push(s);
                    }
                }
                self.pump();
            }
            10 => {
                let port = LISTEN_PORTS[usize::from(inp.u8()) % 3];
                if !self.listeners.iter().any(|(p, _)| *p == port) {
                    let path = format!("{}_{port}", self.uds.display());
                    let _ = std::fs::remove_file(&path);
                    if let Ok(l) = UnixListener::bind(&path) {
                        let _ = l.set_nonblocking(true);
                        self.listeners.push((port, l));
                    }
                }
            }
            11 => {
                if !self.streams.is_empty() {
                    let i = usize::from(inp.u8()) % self.streams.len();
                    match inp.u8() % 5 {
                        0 => {
                            let n = usize::from(inp.u16() % 4096);
                            let fill = inp.u8();
                            let _ = self.streams[i].write(&vec![fill; n]);
                        }
                        1 => {
                            let mut b = [0u8; 4096];
                            while let Ok(n) = self.streams[i].read(&mut b) {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        2 => {
                            let _ = self.streams[i].shutdown(std::net::Shutdown::Write);
                        }
                        3 => {
                            let _ = self.streams[i].shutdown(std::net::Shutdown::Read);
                        }
                        _ => {
                            self.streams.swap_remove(i);
                        }
                    }
                    self.pump();
                }
            }
            12 => {
                let size = 1u16 << (inp.u8() % 10);
                self.driver_init(size);
            }
            _ => self.pump(),
        }
        self.check_bounds();
    }

    fn check_bounds(&self) {
        let dev = self.d.dev.lock().unwrap();
        let conns = dev.device().connection_count();
        assert!(conns <= MAX_CONNECTIONS, "{conns} connections");
        let held = dev.device().backend().buffered_bytes();
        // Per connection: guest data within its credit, one host read chunk,
        // a CONNECT line; plus owed control packets.
        let bound = (conns + MAX_STREAMS) * (BUF_ALLOC as usize + READ_CHUNK + 64) + 64 * 1024;
        assert!(
            held <= bound,
            "muxer holds {held} bytes for {conns} connections"
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for (port, _) in &self.listeners {
            let _ = std::fs::remove_file(format!("{}_{port}", self.uds.display()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mut rig = Rig::new();
    if inp.u8() & 1 == 1 {
        rig.driver_init(16);
    }
    let mut steps = 0;
    while !inp.empty() && steps < 256 {
        rig.step(&mut inp);
        steps += 1;
    }
    rig.pump();
    rig.check_bounds();
});
