//! A network slot recycled for the next VM (`[network] recycle_slots`, on by
//! default) carries nothing of the VM that held it before: with one slot,
//! a VM of a function with an allow-list opens flows (a UDP exchange and a
//! TCP connection to a private address it may reach) and ends; the next
//! VM, of another function on the default policy, gets the same namespace
//! and must see none of it: the old flows' late packets are not delivered
//! to it (conntrack flushed), the old allow-list no longer applies (rules
//! reset), its counters start from zero and `/metrics` keeps each tenant's
//! own traffic apart; a tap recycled from one VM's uid is not left to it.
//!
//! The stand-in world of `tests/net_isolation.rs` (namespaces for the
//! guests and the internet). Needs root (network namespaces, nftables,
//! ctnetlink); skipped otherwise.

// Not every helper of the shared world is used here.
#[allow(dead_code)]
mod net_world;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use net_world::*;
use silo_daemon::net::slot::{self, Names};
use silo_daemon::net::traffic::{self, Traffic};
use silo_daemon::net::{sweep, EgressPolicy, GuestLink, NetError, Network, NetworkConfig};

const PREFIX: &str = "silor";
/// The guests' UDP port (fixed: the next VM listens where the old flow
/// pointed).
const GUEST_UDP: u16 = 40123;

fn bind_err(e: std::io::Error) -> NetError {
    NetError::Command("socket".into(), e.to_string())
}

fn free_port() -> u16 {
    TcpListener::bind(("0.0.0.0", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn counters(s: u32) -> Traffic {
    traffic::read(&Names::new(PREFIX), s, false).unwrap()
}

fn metric(net: &Network, function: &str, tenant: &str, name: &str) -> Option<u64> {
    let key = format!("{name}{{function=\"{function}\",tenant_id=\"{tenant}\"}} ");
    net.render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_recycled_slot_carries_nothing_of_its_previous_vm() {
    if euid() != 0 {
        eprintln!("needs root (network namespaces, nftables): skipped");
        return;
    }
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    cleanup_world();
    sweep(PREFIX);
    make_world();
    let (http, hold) = (free_port(), free_port());
    serve(Some(ns_path(INET_NS)), http);
    // UDP on the private address (answers leave from it).
    let responder = slot::in_netns(&ns_path(INET_NS), move || {
        UdpSocket::bind(("10.99.0.10", http)).map_err(bind_err)
    })
    .unwrap();
    // TCP: keeps the connections it accepts, for the test to write on.
    let holder = slot::in_netns(&ns_path(INET_NS), move || {
        TcpListener::bind(("10.99.0.10", hold)).map_err(bind_err)
    })
    .unwrap();
    let (held_tx, held) = mpsc::channel::<TcpStream>();
    std::thread::spawn(move || {
        for c in holder.incoming().flatten() {
            let _ = held_tx.send(c);
        }
    });

    let private = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 10), http);
    let public = SocketAddrV4::new(Ipv4Addr::new(192, 88, 99, 10), http);
    let net = Network::start(NetworkConfig {
        enabled: true,
        egress: EgressPolicy::Internet,
        functions: [(
            "fn-old".to_owned(),
            EgressPolicy::allow(&[
                format!("10.99.0.10/32:{http}"),
                format!("10.99.0.10/32:{hold}"),
            ])
            .unwrap(),
        )]
        .into(),
        dns: Some(Vec::new()),
        name_prefix: PREFIX.into(),
        first_slot: 8150,
        slots: 1,
        ready_slots: 1,
        ..NetworkConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let wait_ready = || {
        let until = Instant::now() + Duration::from_secs(60);
        while net.ready_slots() < 1 {
            assert!(Instant::now() < until, "no slot was prepared");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_ready();

    // The old VM: its function's allow-list, its tenant's flows.
    let old = net
        .lease(
            "fn-old",
            &GuestLink::Veth {
                peer_netns: GUESTS[0].into(),
            },
        )
        .unwrap()
        .expect("an interface");
    old.set_tenant("tenant-old");
    let (s, ns) = (old.slot(), old.netns());
    sh(&[
        "ip",
        "rule",
        "add",
        "iif",
        &old.host_veth(),
        "lookup",
        RULE_TABLE,
        "priority",
        "7782",
    ]);
    configure_guest(GUESTS[0]);
    check(
        GUESTS[0],
        "the old VM's allow-list",
        &[
            ("its private server", private, true),
            ("a public address", public, false),
        ],
    );
    // A UDP exchange, answered (an established flow)...
    let old_udp = slot::in_netns(&ns_path(GUESTS[0]), || {
        UdpSocket::bind(("0.0.0.0", GUEST_UDP)).map_err(bind_err)
    })
    .unwrap();
    old_udp.set_read_timeout(Some(OPEN)).unwrap();
    old_udp.send_to(b"old hello", private).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = responder.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"old hello");
    responder.send_to(b"old answer", from).unwrap();
    let n = old_udp.recv(&mut buf).expect("the old VM's UDP answer");
    assert_eq!(&buf[..n], b"old answer");
    // ...and a TCP connection, open in both directions.
    let mut old_tcp = slot::in_netns(&ns_path(GUESTS[0]), move || {
        TcpStream::connect_timeout(&SocketAddr::from(([10, 99, 0, 10], hold)), OPEN)
            .map_err(bind_err)
    })
    .unwrap();
    let mut server_side = held.recv_timeout(OPEN).expect("the held connection");
    server_side.write_all(b"to the old VM").unwrap();
    old_tcp.set_read_timeout(Some(OPEN)).unwrap();
    let mut got = [0u8; 13];
    old_tcp.read_exact(&mut got).unwrap();
    assert!(counters(s).egress_packets > 0);

    // It ends; its slot is recycled, not removed.
    old.release();
    assert!(
        ns_path(&ns).exists() && net.ready_slots() == 1,
        "the slot was not recycled"
    );
    let old_egress = metric(
        &net,
        "fn-old",
        "tenant-old",
        "silo_network_egress_bytes_total",
    )
    .expect("the old tenant's traffic is counted");
    assert!(old_egress > 0);

    // The next VM, another function (default policy) and tenant, the same
    // namespace.
    let new = net
        .lease(
            "fn-new",
            &GuestLink::Veth {
                peer_netns: GUESTS[1].into(),
            },
        )
        .unwrap()
        .expect("an interface");
    new.set_tenant("tenant-new");
    assert_eq!(new.netns(), ns, "not the recycled slot");
    assert_eq!(
        counters(s),
        Traffic::default(),
        "the recycled slot's counters carry the old VM's traffic"
    );
    configure_guest(GUESTS[1]);
    let new_udp = slot::in_netns(&ns_path(GUESTS[1]), || {
        UdpSocket::bind(("0.0.0.0", GUEST_UDP)).map_err(bind_err)
    })
    .unwrap();
    // The old flows' late packets: never delivered to the new VM.
    responder.send_to(b"old late answer", from).unwrap();
    let _ = server_side.write_all(b"late, to the old VM");
    new_udp.set_read_timeout(Some(CLOSED)).unwrap();
    if let Ok(n) = new_udp.recv(&mut buf) {
        panic!(
            "the new VM received the old VM's flow: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    assert_eq!(
        counters(s).ingress_packets,
        0,
        "packets of the old VM's connections were let in to the new VM"
    );
    // The old allow-list is gone: the default policy, and only it.
    check(
        GUESTS[1],
        "the next VM, on the default policy",
        &[
            ("a public address", public, true),
            ("the old VM's private server", private, false),
        ],
    );
    new.release();
    let new_egress = metric(
        &net,
        "fn-new",
        "tenant-new",
        "silo_network_egress_bytes_total",
    )
    .expect("the new tenant's traffic is counted");
    assert!(new_egress > 0);
    assert_eq!(
        metric(
            &net,
            "fn-old",
            "tenant-old",
            "silo_network_egress_bytes_total"
        ),
        Some(old_egress),
        "the new VM's traffic was counted for the old tenant"
    );

    // A real VM's tap: given to its uid, taken back when it ends.
    let tap_vm = net
        .lease("fn-new", &GuestLink::Tap { uid: 4245 })
        .unwrap()
        .expect("an interface");
    assert_eq!(tap_vm.netns(), ns);
    let tap = || {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns, "-d", "link", "show", "tap0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(tap().contains("user 4245"), "{}", tap());
    tap_vm.release();
    let shown = tap();
    assert!(
        shown.contains("tun type tap") && !shown.contains("user 4245"),
        "the recycled tap is still the old VM's: {shown}"
    );
    wait_ready();

    net.close();
    sweep(PREFIX);
    assert!(!ns_path(&ns).exists(), "{ns} is left");
    cleanup_world();
    std::fs::write("/proc/sys/net/ipv4/ip_forward", forwarding).unwrap();
}
