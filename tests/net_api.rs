//! The network extension of the API and the daemon's network start:
//! `PUT/GET /2015-03-31/functions/{name}/network` (admin keys only,
//! validated, stored with the function, the configuration's per-function
//! policy below it); with `[network] enabled`, ready slots prepared at start
//! and a restarted daemon's sweep of what a killed one left; a host without
//! `nft` refuses to start rather than run VMs without their rules. None of
//! this needs a VM.

mod common;

use common::daemon::{config, scratch, TestDaemon, TENANT_A};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn package() -> Vec<u8> {
    silo_initramfs::package::make_zip(&[("bootstrap", 0o755, b"#!/bin/sh\nexit 0\n")])
}

fn put(c: &silo_client::LambdaClient, name: &str, body: Value) -> silo_client::HttpResponse {
    c.request(
        "PUT",
        &format!("/2015-03-31/functions/{name}/network"),
        &[],
        body.to_string().as_bytes(),
    )
    .unwrap()
}

fn get(c: &silo_client::LambdaClient, name: &str) -> silo_client::HttpResponse {
    c.request(
        "GET",
        &format!("/2015-03-31/functions/{name}/network"),
        &[],
        b"",
    )
    .unwrap()
}

#[test]
fn the_network_policy_api_is_admin_only_validated_and_stored() {
    let data = scratch("net-api");
    let cfg = config("[network.functions]\n\"quiet\" = \"none\"\n");
    let mut d = TestDaemon::on_host(&cfg, &data, &[]);
    let admin = d.admin();
    for name in ["f", "quiet"] {
        let r = admin
            .create_function(name, &package(), true, json!({}))
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = get(&admin, "f");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"Egress": "internet", "Source": "default", "NetworkEnabled": false})
    );
    let r = get(&admin, "quiet");
    assert_eq!(r.json()["Egress"], "none");
    assert_eq!(r.json()["Source"], "configuration");

    // Tenant keys can neither read nor change it.
    let a = d.client(TENANT_A);
    assert_eq!(get(&a, "f").status, 403, "{}", get(&a, "f").text());
    let r = put(&a, "f", json!({"Egress": "none"}));
    assert_eq!(r.status, 403, "{}", r.text());

    // Invalid values never get in.
    for bad in [
        json!({"Egress": "everything"}),
        json!({"Egress": {"Allow": ["10.1.2.3/33:5432"]}}),
        json!({"Egress": {"Allow": ["10.1.2.3/32:0"]}}),
        json!({"Egress": {"Allow": ["10.0.0.0/8:80; flush ruleset"]}}),
        json!({"Egress": {"Allow": ["::1/128:80"]}}),
        json!({"Egress": {"Allow": "10.1.2.3/32:5432"}}),
    ] {
        let r = put(&admin, "f", bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(
            r.error_type(),
            Some("InvalidParameterValueException"),
            "{bad}: {}",
            r.text()
        );
    }
    let r = put(&admin, "f", json!({"Egress": "internet", "Other": 1}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_type(), Some("InvalidRequestContentException"));
    assert_eq!(get(&admin, "f").json()["Egress"], "internet");
    assert_eq!(put(&admin, "nope", json!({"Egress": "none"})).status, 404);

    let r = put(
        &admin,
        "f",
        json!({"Egress": {"Allow": ["10.1.2.3/24:5432", "203.0.113.10:443"]}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let want = json!({"Allow": ["10.1.2.0/24:5432", "203.0.113.10/32:443"]});
    assert_eq!(r.json()["Egress"], want);
    assert_eq!(r.json()["Source"], "api");
    assert_eq!(r.json()["RunningVmsUpdated"], 0);
    let r = put(&admin, "quiet", json!({"Egress": "internet"}));
    assert_eq!(r.json()["Source"], "api");

    // Stored with the function: a restarted daemon serves it.
    d.stop();
    let d = TestDaemon::on_host(&cfg, &data, &[]);
    let admin = d.admin();
    assert_eq!(get(&admin, "f").json()["Egress"], want);
    assert_eq!(get(&admin, "quiet").json()["Egress"], "internet");
    // Deleted and created again: the policy went with the function.
    assert_eq!(
        admin
            .request("DELETE", "/2015-03-31/functions/f", &[], b"")
            .unwrap()
            .status,
        204
    );
    admin
        .create_function("f", &package(), true, json!({}))
        .unwrap();
    assert_eq!(get(&admin, "f").json()["Egress"], "internet");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// The nsfs inode of a named namespace (another namespace: another inode).
fn ns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(Path::new("/run/netns").join(name))
        .ok()
        .map(|m| m.ino())
}

fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_enabled_daemon_prepares_slots_ahead_and_sweeps_what_a_killed_one_left() {
    if !is_root() {
        eprintln!("needs root (network namespaces, nftables): skipped");
        return;
    }
    let cfg = config(
        "[network]\nenabled = true\nname_prefix = \"silota\"\nfirst_slot = 8100\nslots = 4\nready_slots = 2\ndns = []\n",
    );
    // The daemon turns IPv4 forwarding on; the test puts back what it found.
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let data = scratch("net-start");
    let mut d = TestDaemon::on_host(&cfg, &data, &[]);
    let ready = || {
        (8100..8104)
            .filter(|s| ns_inode(&format!("silota-{s}")).is_some())
            .count()
    };
    wait_for("two slots prepared", Duration::from_secs(60), || {
        ready() == 2
    });
    assert!(Path::new("/sys/class/net/silotav8100").exists());
    assert!(common_nft_table("silota"), "the host's table is missing");
    let r = get(&d.admin(), "f");
    assert_eq!(r.status, 404, "{}", r.text());
    // A mark in the old namespace (nsfs inode numbers are reused).
    let ip = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ip(&[
        "-n",
        "silota-8100",
        "addr",
        "add",
        "192.0.2.77/32",
        "dev",
        "lo",
    ]);
    let marked = || ip(&["-n", "silota-8100", "addr", "show", "dev", "lo"]).contains("192.0.2.77");
    assert!(marked());
    // Killed: nothing of it is removed. Leftovers of another kind too.
    d.kill_hard();
    std::process::Command::new("ip")
        .args([
            "link",
            "add",
            "silotav8103",
            "type",
            "veth",
            "peer",
            "name",
            "silotax8103",
        ])
        .status()
        .unwrap();
    assert!(Path::new("/sys/class/net/silotav8103").exists());
    let mut d = TestDaemon::on_host(&cfg, &data, &[]);
    assert!(
        !Path::new("/sys/class/net/silotav8103").exists(),
        "a leftover veth was not swept"
    );
    wait_for("two slots prepared again", Duration::from_secs(60), || {
        ready() == 2
    });
    assert!(!marked(), "the old namespace was kept");
    assert_eq!(
        d.admin()
            .request("GET", "/metrics", &[], b"")
            .unwrap()
            .status,
        200
    );
    d.stop();
    silo_daemon::net::sweep("silota");
    assert_eq!(ready(), 0);
    assert!(!common_nft_table("silota"));
    std::fs::write("/proc/sys/net/ipv4/ip_forward", forwarding).unwrap();
}

fn common_nft_table(name: &str) -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "inet", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn a_host_without_nft_refuses_to_start_with_networking_enabled() {
    let dir = scratch("net-nonft");
    // An `nft` that is not there (first on PATH: exits 127 as a missing
    // command does in a shell).
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let nft = bin.join("nft");
    std::fs::write(&nft, "#!/bin/sh\necho 'nft: not found' >&2\nexit 127\n").unwrap();
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::fs::write(
        dir.join("c.toml"),
        config("[network]\nenabled = true\nname_prefix = \"silotb\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("c.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {err}");
    assert!(err.contains("`nft`") && err.contains("nftables"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
