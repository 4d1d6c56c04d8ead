//! What the cluster tests share: HAProxy configured by `silo cluster
//! haproxy-config` (Debian's package, started by the test) and a signed
//! client of it; `silo serve --registry` nodes without VMs, a package for
//! them, and polling.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use silo_client::LambdaClient;

use crate::common::daemon::TestDaemon;

/// A function package whose bootstrap exits at once (these nodes run no
/// VM: the tests read what the registry and the API make of it).
pub fn package() -> Vec<u8> {
    silo_initramfs::package::make_zip(&[("bootstrap", 0o755, b"#!/bin/sh\nexit 0\n")])
}

/// `silo serve --registry <pg_url> --node-id <id>` on this host (no VM),
/// its data in `data`, with `config_toml` and `extra` arguments.
pub fn registry_node(
    config_toml: &str,
    pg_url: &str,
    id: &str,
    data: &Path,
    extra: &[&str],
) -> TestDaemon {
    let mut args = vec!["--registry", pg_url, "--node-id", id];
    args.extend_from_slice(extra);
    TestDaemon::on_host(config_toml, data, &args)
}

/// Polls `ok` every `every` until it holds, for at most `limit` (a change
/// reaches a node in milliseconds; the limit is for slow machines);
/// returns how long it took.
pub fn until(what: &str, limit: Duration, every: Duration, ok: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(every);
    }
    start.elapsed()
}

/// A running HAProxy, killed on drop.
pub struct Haproxy {
    child: Child,
    dir: PathBuf,
    /// Where it listens: `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Haproxy {
    /// Starts HAProxy on 127.0.0.1:`front` in front of `nodes`
    /// (`host:port`), health-checking every `check_ms`, with the
    /// configuration `silo cluster haproxy-config` prints; files in `dir`.
    pub fn start(dir: &Path, front: u16, nodes: &[String], check_ms: u32) -> Self {
        let mut args = vec!["cluster".to_string(), "haproxy-config".into()];
        args.extend(["--listen".into(), format!("127.0.0.1:{front}")]);
        args.extend(["--check-interval-ms".into(), check_ms.to_string()]);
        for a in nodes {
            args.extend(["--node".into(), a.clone()]);
        }
        let out = crate::common::cli::run_ok(Command::new(env!("CARGO_BIN_EXE_silo")).args(&args));
        std::fs::write(dir.join("haproxy.cfg"), &out.stdout).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(std::fs::File::create(dir.join("haproxy.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("haproxy is not installed: apt-get install haproxy");
        Self {
            child,
            dir: dir.to_path_buf(),
            endpoint: format!("http://127.0.0.1:{front}"),
        }
    }

    /// An admin client signing for HAProxy's address (the node verifies the
    /// signature: HAProxy passes every header through).
    pub fn admin(&self) -> LambdaClient {
        crate::common::cli::signed_client(&self.endpoint, crate::common::daemon::ADMIN)
    }

    /// What HAProxy logged (its requests and its health checks' verdicts).
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("haproxy.out")).unwrap_or_default());
        s
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median of `v` (sorted in place).
pub fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
