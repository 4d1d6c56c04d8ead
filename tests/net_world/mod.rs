//! The stand-in world of `tests/net_isolation.rs`: namespaces standing for
//! guests and for the internet, servers in them, and probes from a guest.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use silo_daemon::net::slot::{self, run};

pub const INET_NS: &str = "silotinet";
pub const INET_HOST_VETH: &str = "silotih";
pub const GUESTS: [&str; 2] = ["silotg0", "silotg1"];
pub const RULE_TABLE: &str = "7781";
pub const BODY: &str = "hello from the internet";

/// A path that should be open answers within this (namespaces on one host:
/// milliseconds).
pub const OPEN: Duration = Duration::from_secs(10);
/// A path that should be closed: no answer within this.
pub const CLOSED: Duration = Duration::from_secs(2);

pub fn ns_path(name: &str) -> PathBuf {
    Path::new(slot::NETNS_DIR).join(name)
}

pub fn sh(args: &[&str]) {
    run(args[0], &args[1..], None).unwrap_or_else(|e| panic!("{e}"));
}

pub fn cleanup_world() {
    let _ = run("ip", &["rule", "del", "lookup", RULE_TABLE], None);
    let _ = run("ip", &["rule", "del", "lookup", RULE_TABLE], None);
    let _ = run("ip", &["link", "del", INET_HOST_VETH], None);
    for ns in GUESTS.iter().chain([&INET_NS]) {
        let _ = run("ip", &["netns", "del", ns], None);
    }
}

/// An HTTP server answering `BODY` to every connection, on `port` of every
/// address of the namespace at `ns` (or the host's, for `None`).
pub fn serve(ns: Option<PathBuf>, port: u16) {
    let listener = match ns {
        Some(p) => slot::in_netns(&p, move || {
            TcpListener::bind(("0.0.0.0", port))
                .map_err(|e| silo_daemon::net::NetError::Command("bind".into(), e.to_string()))
        })
        .unwrap(),
        None => TcpListener::bind(("0.0.0.0", port)).unwrap(),
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let n = c.read(&mut buf).unwrap_or(0);
                if buf[..n].starts_with(b"ECHO") {
                    // Echoes every read until the peer closes.
                    let _ = c.write_all(&buf[..n]);
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        let _ = c.write_all(&buf[..n]);
                    }
                    return;
                }
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{BODY}",
                    BODY.len()
                );
            });
        }
    });
}

/// Datagrams received on UDP `port` in the namespace at `ns`.
pub fn udp_sink(ns: PathBuf, port: u16) -> Arc<Mutex<Vec<String>>> {
    let socket = slot::in_netns(&ns, move || {
        UdpSocket::bind(("0.0.0.0", port))
            .map_err(|e| silo_daemon::net::NetError::Command("bind".into(), e.to_string()))
    })
    .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = socket.recv(&mut buf) {
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    got
}

/// Sends `msg` three times from the guest namespace `guest` to `dst` over
/// UDP (the source address is the guest's route's).
pub fn send_udp(guest: &str, dst: SocketAddrV4, msg: &str) {
    let msg = msg.to_owned();
    slot::in_netns(&ns_path(guest), move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for _ in 0..3 {
            let _ = s.send_to(msg.as_bytes(), dst);
        }
        Ok(())
    })
    .unwrap();
}

/// Whether `msg` arrives in `sink` within `limit`.
pub fn arrives(sink: &Mutex<Vec<String>>, msg: &str, limit: Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if sink.lock().unwrap().iter().any(|m| m == msg) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether a GET from the guest namespace `guest` to `dst` gets `BODY`
/// back within `limit`.
pub fn fetch(guest: &str, dst: SocketAddrV4, limit: Duration) -> bool {
    slot::in_netns(&ns_path(guest), move || {
        let answered = (|| -> std::io::Result<bool> {
            let mut c = TcpStream::connect_timeout(&SocketAddr::V4(dst), limit)?;
            c.set_read_timeout(Some(limit))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out.ends_with(BODY))
        })();
        Ok(answered.unwrap_or(false))
    })
    .unwrap()
}

/// Checks every `(what, dst, open)` at once (closed ones take [`CLOSED`]
/// each); panics naming the ones that differ.
pub fn check(guest: &str, stage: &str, cases: &[(&str, SocketAddrV4, bool)]) {
    let handles: Vec<_> = cases
        .iter()
        .map(|&(what, dst, open)| {
            let guest = guest.to_owned();
            let h =
                std::thread::spawn(move || fetch(&guest, dst, if open { OPEN } else { CLOSED }));
            (what, dst, open, h)
        })
        .collect();
    let wrong: Vec<String> = handles
        .into_iter()
        .filter_map(|(what, dst, open, h)| {
            let got = h.join().unwrap();
            (got != open).then(|| {
                format!(
                    "{what} ({dst}): {}",
                    if got {
                        "OPEN, should be closed"
                    } else {
                        "closed, should be open"
                    }
                )
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{stage}: {wrong:#?}");
}

/// Configures a stand-in guest as the real guest configures `eth0`.
pub fn configure_guest(guest: &str) {
    let batch = "link set lo up\naddr add 169.254.0.2/30 dev eth0\nlink set eth0 up\n\
                 route add default via 169.254.0.1\n";
    slot::in_netns(&ns_path(guest), move || {
        run("ip", &["-b", "-"], Some(batch))
    })
    .unwrap();
}

pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

pub fn euid() -> u32 {
    // /proc/self/status: "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Makes the world: a namespace per guest and the "internet" namespace
/// behind a veth from the host (203.0.113.1 here, 203.0.113.10 there),
/// holding a public (192.88.99.10) and a private (10.99.0.10) address and
/// the link-local metadata address (169.254.169.254), and the route the
/// slots' veth traffic takes to it (table [`RULE_TABLE`]).
pub fn make_world() {
    for ns in GUESTS.iter().chain([&INET_NS]) {
        sh(&["ip", "netns", "add", ns]);
    }
    sh(&[
        "ip",
        "link",
        "add",
        INET_HOST_VETH,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        INET_NS,
    ]);
    sh(&["ip", "addr", "add", "203.0.113.1/24", "dev", INET_HOST_VETH]);
    sh(&["ip", "link", "set", INET_HOST_VETH, "up"]);
    slot::in_netns(&ns_path(INET_NS), || {
        run(
            "ip",
            &["-b", "-"],
            Some(
                "link set lo up\naddr add 203.0.113.10/24 dev eth0\naddr add 192.88.99.10/32 dev eth0\n\
                 addr add 10.99.0.10/32 dev eth0\naddr add 169.254.169.254/32 dev eth0\n\
                 link set eth0 up\nroute add default via 203.0.113.1\n",
            ),
        )
    })
    .unwrap();
    sh(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "203.0.113.10",
        "table",
        RULE_TABLE,
    ]);
}
