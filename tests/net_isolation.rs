//! One network per VM, without a guest: the daemon's network slots (as
//! `[network]` makes them for VMs) with a stand-in guest. Each VM's tap is
//! replaced by a veth whose other end is `eth0` of a "guest" namespace
//! configured as the real guest configures itself (169.254.0.2/30, default
//! route through 169.254.0.1); an "internet" namespace holds a small HTTP
//! server on a documentation address (203.0.113.10), a public address
//! (192.88.99.10), a private one (10.99.0.10) and 169.254.169.254, reached
//! from the slots' host veths by a policy routing rule (so the rest of the
//! host's routing is untouched). The host itself listens on the same port
//! (standing for the daemon's API), as does the second VM's namespace.
//!
//! Needs root (network namespaces, nftables); skipped otherwise.

mod net_world;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use net_world::*;
use silo_daemon::net::slot::{self, run};
use silo_daemon::net::{sweep, EgressPolicy, GuestLink, Network, NetworkConfig};

const PREFIX: &str = "silot";

/// The tests of this file one at a time: each turns IPv4 forwarding on and
/// puts back what it found.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_vm_reaches_its_allowed_destinations_and_nothing_else() {
    if euid() != 0 {
        eprintln!("needs root (network namespaces, nftables): skipped");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    cleanup_world();
    sweep(PREFIX);
    // The daemon turns IPv4 forwarding on; the test puts back what it found.
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    // The "internet": a namespace behind a veth from the host.
    make_world();

    // The host's "API" (any free port), and the same port everywhere else.
    let host_api = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = host_api.local_addr().unwrap().port();
    drop(host_api);
    serve(None, port);
    serve(Some(ns_path(INET_NS)), port);
    let sink = udp_sink(ns_path(INET_NS), port);

    let allow_server = EgressPolicy::allow(&[format!("203.0.113.0/24:{port}")]).unwrap();
    let mut functions = std::collections::BTreeMap::new();
    functions.insert("fn-none".to_owned(), EgressPolicy::None);
    functions.insert("fn-a".to_owned(), allow_server.clone());
    let net = Network::start(NetworkConfig {
        enabled: true,
        egress: EgressPolicy::Internet,
        functions,
        dns: Some(Vec::new()),
        name_prefix: PREFIX.into(),
        first_slot: 8000,
        slots: 4,
        ready_slots: 2,
        ..NetworkConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // What the daemon gives a real VM: a persistent tap owned by its uid,
    // and the VMM's flags and kernel command line naming it.
    let prepared = std::time::Instant::now() + Duration::from_secs(60);
    while net.ready_slots() < 2 {
        assert!(
            std::time::Instant::now() < prepared,
            "slots were not prepared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    let vm = net
        .lease("fn-tap", &GuestLink::Tap { uid: 4242 })
        .unwrap()
        .expect("an interface");
    eprintln!(
        "a VM's network from a prepared slot took {:?}",
        started.elapsed()
    );
    let out = std::process::Command::new("ip")
        .args(["-n", &vm.netns(), "-d", "link", "show", "tap0"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("tun type tap")
            && shown.contains("persist on")
            && shown.contains("user 4242"),
        "{shown}"
    );
    assert!(
        shown.contains("169.254.0.1") || {
            let a = std::process::Command::new("ip")
                .args(["-n", &vm.netns(), "addr", "show", "tap0"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&a.stdout).contains("169.254.0.1/30")
        }
    );
    let args: Vec<String> = vm
        .vmm_args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let ns_file = vm.netns_path().display().to_string();
    assert_eq!(
        &args[..4],
        ["--jail-netns", ns_file.as_str(), "--net-tap", "tap0"],
        "{args:?}"
    );
    let cmdline = &args[args.iter().position(|a| a == "--cmdline").unwrap() + 1];
    assert!(
        cmdline.contains(" ip=169.254.0.2::169.254.0.1:255.255.255.252::eth0:off"),
        "{cmdline}"
    );
    assert!(
        !cmdline.contains("silo.dns"),
        "no resolvers configured: {cmdline}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--net-bandwidth")),
        "no limit configured: {args:?}"
    );
    vm.release();

    // Policy `none`: no interface at all.
    assert!(net
        .lease(
            "fn-none",
            &GuestLink::Veth {
                peer_netns: GUESTS[0].into()
            }
        )
        .unwrap()
        .is_none());

    let vm_a = net
        .lease(
            "fn-a",
            &GuestLink::Veth {
                peer_netns: GUESTS[0].into(),
            },
        )
        .unwrap()
        .expect("an interface");
    // Only traffic arriving from this VM's veth is routed to the "internet"
    // (the host's own routing is untouched).
    let veth = vm_a.host_veth();
    sh(&[
        "ip", "rule", "add", "iif", &veth, "lookup", RULE_TABLE, "priority", "7781",
    ]);
    let vm_b = net
        .lease(
            "fn-b",
            &GuestLink::Veth {
                peer_netns: GUESTS[1].into(),
            },
        )
        .unwrap()
        .expect("an interface");
    configure_guest(GUESTS[0]);
    configure_guest(GUESTS[1]);
    // The second VM's namespace listens too (its address is all another VM
    // could name).
    serve(Some(vm_b.netns_path()), port);
    // And so does the first VM's own namespace (its gateway address).
    serve(Some(vm_a.netns_path()), port);

    let at = |a: [u8; 4]| SocketAddrV4::new(Ipv4Addr::from(a), port);
    let server = at([203, 0, 113, 10]);
    let public = at([192, 88, 99, 10]);
    let private = at([10, 99, 0, 10]);
    let metadata = at([169, 254, 169, 254]);
    let host_inet = at([203, 0, 113, 1]);
    let host_veth = SocketAddrV4::new(slot::host_addr(vm_a.slot()), port);
    let other_vm = SocketAddrV4::new(slot::ns_addr(vm_b.slot()), port);
    let gateway = SocketAddrV4::new(slot::GATEWAY_ADDR, port);
    let always_closed = [
        (
            "the host's address on an allowed network (its API port)",
            host_inet,
            false,
        ),
        ("the host's end of the VM's veth", host_veth, false),
        ("another VM's namespace", other_vm, false),
        ("the VM's own namespace (its gateway)", gateway, false),
        ("169.254.169.254", metadata, false),
    ];

    let mut cases = vec![
        ("the allowed server", server, true),
        ("a public address not allowed", public, false),
        ("a private address not allowed", private, false),
    ];
    cases.extend(always_closed);
    check(GUESTS[0], "allow-list with the server", &cases);

    // Traffic so far was the VM's before a tenant took it: counted as
    // unbound; from binding on, as the tenant's.
    vm_a.bind("tenant-A");
    let until = std::time::Instant::now() + OPEN;
    while !net
        .render_metrics()
        .contains("function=\"fn-a\",tenant_id=\"(unbound)\"")
    {
        assert!(
            std::time::Instant::now() < until,
            "binding did not count the unbound traffic"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A connection open when the policy changes is cut: its next packets
    // meet the new policy.
    let mut open = slot::in_netns(&ns_path(GUESTS[0]), move || {
        TcpStream::connect_timeout(&SocketAddr::V4(server), OPEN)
            .map_err(|e| silo_daemon::net::NetError::Command("connect".into(), e.to_string()))
    })
    .unwrap();
    open.set_read_timeout(Some(CLOSED)).unwrap();
    let mut echo = |msg: &[u8]| -> bool {
        let mut got = vec![0u8; msg.len()];
        open.write_all(msg).is_ok() && open.read_exact(&mut got).is_ok() && got == msg
    };
    assert!(echo(b"ECHO one"), "the open connection does not echo");

    // Changed live: the allow-list without the server.
    assert_eq!(
        net.set_policy(
            "fn-a",
            Some(EgressPolicy::allow(&[format!("192.0.2.1/32:{port}")]).unwrap())
        )
        .unwrap(),
        1
    );
    assert!(
        !echo(b"ECHO two"),
        "a connection opened before the change still passes"
    );
    drop(open);
    check(
        GUESTS[0],
        "allow-list without the server",
        &[("the server", server, false)],
    );

    // `internet`: public addresses only.
    net.set_policy("fn-a", Some(EgressPolicy::Internet))
        .unwrap();
    let mut cases = vec![
        ("a public address", public, true),
        ("a documentation address", server, false),
        ("a private address", private, false),
    ];
    cases.extend(always_closed);
    check(GUESTS[0], "internet", &cases);

    // An allow-list naming a private address reaches it (a tenant's
    // database), and still not the always-denied ones.
    net.set_policy(
        "fn-a",
        Some(
            EgressPolicy::allow(&[
                format!("10.99.0.10/32:{port}"),
                format!("169.254.0.0/16:{port}"),
                format!("203.0.113.1/32:{port}"),
            ])
            .unwrap(),
        ),
    )
    .unwrap();
    let mut cases = vec![
        ("an allowed private address", private, true),
        ("a public address", public, false),
    ];
    cases.extend(always_closed);
    check(
        GUESTS[0],
        "allow-list naming private and always-denied addresses",
        &cases,
    );

    // A spoofed source address is dropped (the same destination answers
    // with the guest's own).
    net.set_policy("fn-a", Some(EgressPolicy::Internet))
        .unwrap();
    let spoof = |src: Option<&str>| {
        let batch = match src {
            Some(a) => {
                format!("addr add {a}/32 dev eth0\nroute replace default via 169.254.0.1 src {a}\n")
            }
            None => "route replace default via 169.254.0.1 src 169.254.0.2\n".to_owned(),
        };
        slot::in_netns(&ns_path(GUESTS[0]), move || {
            run("ip", &["-b", "-"], Some(&batch))
        })
        .unwrap();
    };
    // (UDP: a spoofed packet's answer could never come back anyway; what
    // must not happen is the packet leaving.)
    for src in ["10.0.0.99", "169.254.0.6"] {
        spoof(Some(src));
        send_udp(GUESTS[0], public, &format!("from {src}"));
    }
    spoof(None);
    send_udp(GUESTS[0], public, "from the guest");
    assert!(
        arrives(&sink, "from the guest", OPEN),
        "the guest's own datagram did not arrive"
    );
    let got = sink.lock().unwrap().clone();
    assert!(
        got.iter().all(|m| m == "from the guest"),
        "spoofed datagrams arrived: {got:?}"
    );
    check(
        GUESTS[0],
        "the guest's own source again",
        &[("a public address", public, true)],
    );

    // `none` set live: nothing passes.
    net.set_policy("fn-a", Some(EgressPolicy::None)).unwrap();
    check(
        GUESTS[0],
        "none, set live",
        &[("a public address", public, false)],
    );

    // Released: its traffic is counted (live policy changes did not reset the counters).
    let (ns_a, veth_a) = (vm_a.netns_path(), vm_a.host_veth());
    vm_a.release();
    let metrics = net.render_metrics();
    let counted = |tenant: &str, name: &str| -> u64 {
        let key = format!("{name}{{function=\"fn-a\",tenant_id=\"{tenant}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {metrics}"))
    };
    for tenant in ["(unbound)", "tenant-A"] {
        for name in [
            "silo_network_egress_bytes_total",
            "silo_network_ingress_bytes_total",
        ] {
            assert!(counted(tenant, name) > 0, "{tenant} {name}: {metrics}");
        }
    }
    // What was counted before each policy change is in there too: more
    // than the last stage alone (one HTTP exchange and three datagrams).
    assert!(
        counted("tenant-A", "silo_network_egress_packets_total") > 20,
        "{metrics}"
    );
    // Its slot is recycled (`tests/net_recycle.rs`): kept, with the
    // default policy in place of the live-set `none`.
    assert!(ns_a.exists() && exists(&format!("/sys/class/net/{veth_a}")));
    let egress = slot::in_netns(&ns_a, || {
        slot::run_output("nft", &["list", "chain", "inet", PREFIX, "egress"])
    })
    .unwrap();
    assert!(egress.contains("192.168.0.0/16"), "{egress}");

    // A daemon that ended without releasing (killed): the next start's
    // sweep removes its namespaces, veths and table.
    let (ns_b, veth_b) = (vm_b.netns_path(), vm_b.host_veth());
    std::mem::forget(vm_b);
    drop(net);
    assert!(ns_b.exists());
    sweep(PREFIX);
    assert!(!ns_b.exists(), "{} is left after the sweep", ns_b.display());
    assert!(
        !exists(&format!("/sys/class/net/{veth_b}")),
        "{veth_b} is left after the sweep"
    );
    let left: Vec<_> = std::fs::read_dir(slot::NETNS_DIR)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("silot-"))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(
        run("nft", &["list", "table", "inet", PREFIX], None).is_err(),
        "the host's table is left after the sweep"
    );
    cleanup_world();
    std::fs::write("/proc/sys/net/ipv4/ip_forward", forwarding).unwrap();
}

/// A VM's cold start does no network work a slot could do ahead: a
/// prepared slot already holds the guest's tap (up, with the gateway's
/// address) and the default policy's rules, so taking it for a VM of a
/// function on the default policy only gives the tap to the VM's uid (two
/// ioctls, no program run); a function with another policy has it in place
/// when `lease_for_boot` returns (before its VMM would start); the slot's
/// replacement is prepared only once the VM is up (`booted`).
#[test]
fn a_prepared_slot_holds_the_guests_tap_before_any_vm_takes_it() {
    if euid() != 0 {
        eprintln!("needs root (network namespaces, nftables): skipped");
        return;
    }
    const P: &str = "silop";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    sweep(P);
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let net = Network::start(NetworkConfig {
        enabled: true,
        egress: EgressPolicy::Internet,
        dns: Some(Vec::new()),
        name_prefix: P.into(),
        first_slot: 8100,
        slots: 2,
        ready_slots: 1,
        functions: [(
            "fn-allow".to_owned(),
            EgressPolicy::allow(&["203.0.113.0/24:8080"]).unwrap(),
        )]
        .into(),
        ..NetworkConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while net.ready_slots() < 1 {
        assert!(std::time::Instant::now() < until, "no slot was prepared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let slot_namespaces = || -> Vec<String> {
        std::fs::read_dir(slot::NETNS_DIR)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("silop-"))
            .collect()
    };
    let prepared = slot_namespaces();
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    let ns = prepared[0].clone();
    let ip_out = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let egress = || {
        let ns = ns.clone();
        slot::in_netns(&ns_path(&ns), || {
            silo_daemon::net::slot::run_output("nft", &["list", "chain", "inet", "silop", "egress"])
        })
        .unwrap()
    };
    // Before any VM: the tap is there, up, addressed, owned by nobody yet.
    let link = ip_out(&["-d", "link", "show", "tap0"]);
    assert!(
        link.contains("tun type tap") && link.contains("persist on") && !link.contains("user "),
        "the prepared slot has no unowned tap: {link}"
    );
    assert!(
        ip_out(&["addr", "show", "tap0"]).contains("169.254.0.1/30"),
        "the prepared tap has no gateway address"
    );
    // The `internet` policy drops the private ranges, then accepts.
    let internet = "192.168.0.0/16";
    assert!(
        egress().contains(internet),
        "a prepared slot does not hold the default policy: {}",
        egress()
    );

    let started = std::time::Instant::now();
    let vm = net
        .lease_for_boot("fn", &GuestLink::Tap { uid: 4243 })
        .unwrap()
        .expect("an interface");
    let taken = started.elapsed();
    assert_eq!(vm.netns(), ns, "the prepared slot was not the one taken");
    assert!(
        ip_out(&["-d", "link", "show", "tap0"]).contains("user 4243"),
        "the tap was not given to the VM's uid"
    );
    // The slot's replacement is prepared only once the VM is up, not while
    // it boots (where it would compete for the CPU).
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        slot_namespaces(),
        vec![ns.clone()],
        "a replacement slot was prepared while the VM booted"
    );
    eprintln!("taking a prepared slot took {taken:?}");
    assert!(egress().contains(internet), "{}", egress());
    vm.booted();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while net.ready_slots() < 1 {
        assert!(
            std::time::Instant::now() < until,
            "no replacement slot once the VM was up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A function with its own policy: in place when the lease returns.
    let other = net
        .lease_for_boot("fn-allow", &GuestLink::Tap { uid: 4244 })
        .unwrap()
        .expect("an interface");
    let rules = slot::in_netns(&other.netns_path(), || {
        silo_daemon::net::slot::run_output("nft", &["list", "chain", "inet", "silop", "egress"])
    })
    .unwrap();
    assert!(
        rules.contains("203.0.113.0/24") && !rules.contains(internet),
        "the function's own policy is not in place: {rules}"
    );
    other.release();
    vm.release();
    net.close();
    sweep(P);
    assert!(!ns_path(&ns).exists(), "{ns} is left");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", forwarding).unwrap();
}
