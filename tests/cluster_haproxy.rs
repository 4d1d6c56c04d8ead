//! `silo cluster haproxy-config` prints a configuration Debian's HAProxy
//! (2.6) accepts (`haproxy -c`), with the routing the cluster relies on.

use std::process::Command;

#[test]
fn the_printed_haproxy_configuration_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["cluster", "haproxy-config", "--listen", "127.0.0.1:19000"])
        .args(["--node", "127.0.0.1:19001", "--node", "10.0.0.2:9000"])
        .args(["--node", "localhost:19003"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = String::from_utf8(out.stdout).unwrap();
    for line in [
        "balance hash var(txn.silo_key)",
        "hash-type consistent",
        "hash-balance-factor 150",
        "http-check send meth GET uri /readyz",
        "server node3 localhost:19003",
    ] {
        assert!(cfg.contains(line), "{line:?} missing:\n{cfg}");
    }
    let dir = std::env::temp_dir().join(format!("silo-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, &cfg).unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("haproxy is not installed: apt-get install haproxy");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check.status.success(),
        "haproxy -c refused it:\n{said}\n{cfg}"
    );
    // The checker would warn about, e.g., an unknown keyword it ignores.
    assert!(!said.contains("[WARNING]"), "{said}");
    // Bad input is refused, not printed.
    let bad = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["cluster", "haproxy-config", "--node", "no-port"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not host:port"));
    let _ = std::fs::remove_dir_all(&dir);
}
