//! Bulk egress and small round trips from a guest to a server on the host:
//! silo's virtio-net against Firecracker's, each VMM on a tap of its own in
//! the host's namespace, the same kernel, command line and guest program
//! (`silo-netprobe` as `/init`), and the same program on the host itself
//! (over loopback) as the ceiling. The server is this process; it times
//! everything on the host's clock.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::boot::results_stats as stats;

/// The server's ports: bulk (sink) and round trips (echo).
const BULK_PORT: u16 = 5201;
const ECHO_PORT: u16 = 5202;
/// Bytes of one round trip's request and answer (as the probe sends).
const MSG: usize = 64;
/// How long one run may take, from the VMM's start to both results: a run
/// took 2 to 5 s in the test host (boot, 16 MiB, 300 round trips); one
/// that takes this long has hung (it is recorded as failed, the others go
/// on).
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The command line both VMMs give the guest (silo-vmm's default), before
/// the guest's `ip=` and the probe's parameters.
const CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check quiet pty.legacy_count=0";

/// One side's tap: its name, the host's address (the server's, the guest's
/// gateway) and the guest's.
struct Link {
    tap: &'static str,
    host: Ipv4Addr,
    guest: Ipv4Addr,
}

const SILO_LINK: Link = Link {
    tap: "sbtap0",
    host: Ipv4Addr::new(10, 201, 0, 1),
    guest: Ipv4Addr::new(10, 201, 0, 2),
};
const FC_LINK: Link = Link {
    tap: "sbtap1",
    host: Ipv4Addr::new(10, 201, 0, 5),
    guest: Ipv4Addr::new(10, 201, 0, 6),
};

/// What the server measured of one client run.
#[derive(Debug, Clone)]
pub(super) struct Measured {
    /// Bytes received on the bulk connection.
    pub bytes: u64,
    /// From the bulk connection's accept to the client's end of stream.
    pub bulk_ms: f64,
    /// Each round trip: from one request's arrival to the next's.
    pub rtt_us: Vec<f64>,
}

impl Measured {
    fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / (self.bulk_ms / 1e3) / 1e6
    }
}

/// The benchmark's server: a bulk sink and an echo listener on every
/// address, each connection's measurement sent to the bench.
struct Server {
    bulk: mpsc::Receiver<Result<(u64, f64), String>>,
    echo: mpsc::Receiver<Result<Vec<f64>, String>>,
}

impl Server {
    fn start() -> Result<Self, String> {
        let listen = |port| {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .map_err(|e| format!("listening on port {port}: {e}"))
        };
        let (bulk_l, echo_l) = (listen(BULK_PORT)?, listen(ECHO_PORT)?);
        let (btx, brx) = mpsc::channel();
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in bulk_l.incoming() {
                let r = conn.map_err(|e| e.to_string()).and_then(sink);
                if btx.send(r).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for conn in echo_l.incoming() {
                let r = conn.map_err(|e| e.to_string()).and_then(echo);
                if etx.send(r).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            bulk: brx,
            echo: erx,
        })
    }

    /// Drops what earlier runs left (a run that failed half-way).
    fn drain(&self) {
        while self.bulk.try_recv().is_ok() {}
        while self.echo.try_recv().is_ok() {}
    }

    /// Both measurements of one client run, or why not by `deadline`;
    /// `alive` fails once the client has ended without them.
    fn wait(
        &self,
        deadline: Instant,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Measured, String> {
        fn next<T>(
            rx: &mpsc::Receiver<Result<T, String>>,
            deadline: Instant,
            alive: &mut dyn FnMut() -> Result<(), String>,
        ) -> Result<T, String> {
            loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(r) => return r,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err("the server stopped".into())
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                alive()?;
                if Instant::now() > deadline {
                    return Err("timed out".into());
                }
            }
        }
        let (bytes, bulk_ms) = next(&self.bulk, deadline, &mut alive)?;
        let rtt_us = next(&self.echo, deadline, &mut alive)?;
        Ok(Measured {
            bytes,
            bulk_ms,
            rtt_us,
        })
    }
}

/// Reads a bulk connection to its end: (bytes, ms from accept to the end).
fn sink(mut c: TcpStream) -> Result<(u64, f64), String> {
    let t = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => return Err(format!("bulk: {e}")),
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    Ok((total, ms))
}

/// Answers 64-byte requests until the client closes: the interval between
/// consecutive requests' arrivals (one round trip each, on the host clock).
fn echo(mut c: TcpStream) -> Result<Vec<f64>, String> {
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut msg = [0u8; MSG];
    let mut last: Option<Instant> = None;
    let mut rtts = Vec::new();
    loop {
        match c.read_exact(&mut msg) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("echo: {e}")),
        }
        let now = Instant::now();
        if let Some(prev) = last {
            rtts.push(now.duration_since(prev).as_secs_f64() * 1e6);
        }
        last = Some(now);
        c.write_all(&msg).map_err(|e| format!("echo: {e}"))?;
    }
    Ok(rtts)
}

/// Builds (if needed) the static `silo-netprobe` (`benches/netprobe`) and
/// returns its path.
pub(crate) fn build_probe() -> Result<PathBuf, String> {
    let root = silo_images::artifacts::source_root()
        .ok_or("building silo-netprobe needs a silo source checkout (SILO_SOURCE_DIR)")?;
    let target_dir = std::env::var_os("SILO_STATIC_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("static"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(root.join("benches/netprobe/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .map_err(|e| format!("building silo-netprobe: {e}"))?;
    if !status.success() {
        return Err(format!("building silo-netprobe: {status}"));
    }
    Ok(target_dir.join(TARGET).join("release/silo-netprobe"))
}

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// An initramfs with `/dev/console` and `probe` as `/init`.
fn probe_initramfs(probe: &Path) -> Result<Vec<u8>, String> {
    let bin = std::fs::read(probe).map_err(|e| format!("{}: {e}", probe.display()))?;
    let mut w = silo_initramfs::newc::NewcWriter::new(Vec::new());
    let e = |e: std::io::Error| format!("probe initramfs: {e}");
    w.dir("/dev", 0o755).map_err(e)?;
    w.char_device("/dev/console", 0o600, 5, 1).map_err(e)?;
    w.file("/init", 0o755, &bin).map_err(e)?;
    w.finish().map_err(e)
}

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The taps of both VMMs, removed when dropped.
struct Taps;

impl Taps {
    fn make() -> Result<Self, String> {
        let taps = Taps;
        for l in [&SILO_LINK, &FC_LINK] {
            let _ = ip(&["link", "del", l.tap]);
            ip(&["tuntap", "add", "dev", l.tap, "mode", "tap"])?;
            ip(&["addr", "add", &format!("{}/30", l.host), "dev", l.tap])?;
            ip(&["link", "set", l.tap, "up"])?;
        }
        Ok(taps)
    }
}

impl Drop for Taps {
    fn drop(&mut self) {
        for l in [&SILO_LINK, &FC_LINK] {
            let _ = ip(&["link", "del", l.tap]);
        }
    }
}

/// The guest's kernel command line on `link`: addressing, then the probe's
/// parameters (passed to `/init` as the environment variable `netprobe`).
fn guest_cmdline(link: &Link, bytes: u64, count: u32) -> String {
    format!(
        "{CMDLINE} ip={}::{}:255.255.255.252::eth0:off netprobe={},{BULK_PORT},{ECHO_PORT},{bytes},{count}",
        link.guest, link.host, link.host
    )
}

/// A started client (a VMM, or the probe on the host) and the last lines of
/// its output.
struct Client {
    child: Child,
    tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    exited_at: Option<Instant>,
}

impl Client {
    fn start(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut t = tail.lock().expect("tail");
                    t.push(line.chars().take(300).collect());
                    if t.len() > 20 {
                        t.remove(0);
                    }
                }
            });
        }
        Ok(Self {
            child,
            tail,
            exited_at: None,
        })
    }

    /// Fails once the client has been gone for 3 s (time for the server to
    /// report what it sent before it ended).
    fn alive(&mut self) -> Result<(), String> {
        if self.exited_at.is_none() {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.exited_at = Some(Instant::now());
            }
        }
        match self.exited_at {
            Some(t) if t.elapsed() > Duration::from_secs(3) => Err(format!(
                "the client ended without its results; its output: {}",
                self.tail.lock().expect("tail").join(" | ")
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client run against `server`: `cmd` started, both results awaited.
fn measure(server: &Server, cmd: Command) -> Result<Measured, String> {
    server.drain();
    let mut client = Client::start(cmd)?;
    let r = server.wait(Instant::now() + RUN_LIMIT, || client.alive());
    r.map_err(|e| {
        format!(
            "{e}; client output: {}",
            client.tail.lock().expect("tail").join(" | ")
        )
    })
}

/// What to run and how much.
pub(crate) struct Plan<'a> {
    /// The guest kernel (an ELF vmlinux: Firecracker boots only that).
    pub kernel: &'a Path,
    /// The static probe.
    pub probe: &'a Path,
    /// silo-vmm.
    pub vmm: &'a Path,
    /// Firecracker, if compared.
    pub firecracker: Option<&'a Path>,
    /// Bytes each bulk run sends.
    pub bytes: u64,
    /// Round trips per run.
    pub round_trips: u32,
    /// Runs per client, alternating.
    pub rounds: usize,
}

/// The benchmark: `plan.rounds` runs of each client, alternating (silo,
/// Firecracker, host), every figure on the host clock.
pub(crate) fn throughput_and_rtt(plan: &Plan, dir: &Path) -> Result<Value, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let initrd = dir.join("probe.cpio");
    std::fs::write(&initrd, probe_initramfs(plan.probe)?).map_err(|e| e.to_string())?;
    let _taps = Taps::make()?;
    let server = Server::start()?;
    let mut kinds: Vec<&str> = vec!["silo"];
    if plan.firecracker.is_some() {
        kinds.push("firecracker");
    }
    kinds.push("host");
    let mut runs: Vec<(&str, Measured)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for round in 0..plan.rounds.max(1) {
        for kind in &kinds {
            let cmd = match *kind {
                "silo" => {
                    let mut c = Command::new(plan.vmm);
                    c.arg("--kernel")
                        .arg(plan.kernel)
                        .arg("--initrd")
                        .arg(&initrd)
                        .args(["--mem-mib", "128", "--vcpus", "1", "--serial", "stdout"])
                        .args(["--net-tap", SILO_LINK.tap, "--cmdline"])
                        .arg(guest_cmdline(&SILO_LINK, plan.bytes, plan.round_trips))
                        .env("SILO_LOG", "warn");
                    c
                }
                "firecracker" => {
                    let fc = plan.firecracker.expect("firecracker");
                    let config = dir.join("fc.json");
                    let text = json!({
                        "boot-source": {
                            "kernel_image_path": plan.kernel,
                            "initrd_path": initrd,
                            "boot_args": guest_cmdline(&FC_LINK, plan.bytes, plan.round_trips),
                        },
                        "drives": [],
                        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
                        "network-interfaces": [{
                            "iface_id": "eth0",
                            "guest_mac": "06:00:0a:c9:00:06",
                            "host_dev_name": FC_LINK.tap,
                        }],
                    });
                    std::fs::write(&config, text.to_string()).map_err(|e| e.to_string())?;
                    let mut c = Command::new(fc);
                    c.args(["--no-api", "--config-file"]).arg(&config);
                    c
                }
                _ => {
                    let mut c = Command::new(plan.probe);
                    c.args([
                        "127.0.0.1".to_string(),
                        BULK_PORT.to_string(),
                        ECHO_PORT.to_string(),
                        plan.bytes.to_string(),
                        plan.round_trips.to_string(),
                    ]);
                    c
                }
            };
            let m = match measure(&server, cmd) {
                Ok(m) => m,
                Err(e) => {
                    let e = format!("{kind}, round {}: {e}", round + 1);
                    eprintln!("[bench-net] FAILED {e}");
                    failures.push(e);
                    continue;
                }
            };
            eprintln!(
                "[bench-net] {kind} round {}: {:.1} Mbit/s ({} bytes in {:.0} ms), round trip p50 {:.0} us",
                round + 1,
                m.mbit_per_s(),
                m.bytes,
                m.bulk_ms,
                crate::boot::results_median(&m.rtt_us)
            );
            runs.push((kind, m));
        }
    }
    let side = |kind: &str| {
        let ms: Vec<&Measured> = runs
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, m)| m)
            .collect();
        let rtt: Vec<f64> = ms.iter().flat_map(|m| m.rtt_us.iter().copied()).collect();
        json!({
            "egress_mbit_per_s": stats(ms.iter().map(|m| m.mbit_per_s()).collect()),
            "bulk_ms": stats(ms.iter().map(|m| m.bulk_ms).collect()),
            "bytes_per_run": ms.first().map(|m| m.bytes),
            "round_trip_us": stats(rtt),
            "runs": ms.len(),
        })
    };
    let mut out = serde_json::Map::new();
    for kind in &kinds {
        out.insert(kind.to_string(), side(kind));
    }
    let p50 = |k: &str, what: &str| out[k][what]["p50"].as_f64().unwrap_or(f64::NAN);
    let r = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    let mut ratios = json!({
        "egress_silo_to_host": r(p50("silo", "egress_mbit_per_s"), p50("host", "egress_mbit_per_s")),
        "round_trip_silo_to_host": r(p50("silo", "round_trip_us"), p50("host", "round_trip_us")),
    });
    if out.contains_key("firecracker") {
        ratios["egress_silo_to_firecracker"] = json!(r(
            p50("silo", "egress_mbit_per_s"),
            p50("firecracker", "egress_mbit_per_s")
        ));
        ratios["round_trip_silo_to_firecracker"] = json!(r(
            p50("silo", "round_trip_us"),
            p50("firecracker", "round_trip_us")
        ));
        // What the VMM adds to a round trip over the host's own.
        let host = p50("host", "round_trip_us");
        ratios["added_round_trip_us"] = json!({
            "silo": p50("silo", "round_trip_us") - host,
            "firecracker": p50("firecracker", "round_trip_us") - host,
        });
    }
    Ok(json!({
        "what": "guest -> server on the host: bulk egress (one TCP connection, host clock from accept to the client's end of stream) and 64-byte request/answer round trips (host clock between requests); silo-vmm and Firecracker unjailed, each on a tap in the host's namespace, the same kernel, command line and static client (silo-netprobe as /init); host: the same client over loopback",
        "bytes_per_run": plan.bytes,
        "round_trips_per_run": plan.round_trips,
        "rounds": plan.rounds,
        "clients": out,
        "ratios_p50": ratios,
        "failed_runs": failures,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_gets_its_address_and_the_probe_its_plan_on_the_command_line() {
        let c = guest_cmdline(&FC_LINK, 1 << 20, 50);
        assert!(c.starts_with(CMDLINE), "{c}");
        assert!(
            c.ends_with(" ip=10.201.0.6::10.201.0.5:255.255.255.252::eth0:off netprobe=10.201.0.5,5201,5202,1048576,50"),
            "{c}"
        );
        // The same base command line as silo-vmm's default.
        assert_eq!(CMDLINE, silo_daemon::net::VMM_BASE_CMDLINE);
    }
}
