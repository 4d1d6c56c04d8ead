//! `silo-bench bench-cluster`: the cluster of issue 24 measured in one run.
//! Real PostgreSQL (`initdb`, on loopback), three `silo serve --registry`
//! nodes with real jailed VMs in ONE KVM test host (QEMU reaches
//! PostgreSQL at 10.0.2.2), and real HAProxy on this host configured by
//! [`silo_daemon::cluster::haproxy::config`] (what `silo cluster
//! haproxy-config` prints), one HAProxy per bounded-load factor measured.
//!
//! Measures ([`measure`]): warm invoke p50/p99 through HAProxy against
//! direct to the tenant's node; the warm-hit share of tenants' repeat
//! invokes while new tenants cold-start meanwhile, per
//! `hash-balance-factor`; and how long a function change takes to be
//! visible on every node (p50/p99). Times are emulated (TCG): compare the
//! ratios and shares.

mod measure;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_client::{Credentials, LambdaClient};
use silo_images::testhost::{HostSlot, TestHost, TestHostError, TestHostOutput};

use crate::guest_files::GuestFileArgs;

#[path = "../../daemon/tests/pg/mod.rs"]
#[allow(clippy::all, missing_docs)]
mod pg;

/// Nodes in the cluster.
const NODES: usize = 3;
/// The nodes' admin key (set in each node's configuration).
const ADMIN: (&str, &str) = ("AKIDSILOBENCHCLUSTER", "bench-cluster-admin-secret");

/// `silo-bench bench-cluster` flags.
#[derive(clap::Args, Debug)]
pub struct ClusterBenchArgs {
    /// Bounded-load factors to compare (`hash-balance-factor`, 0:
    /// unbounded), one HAProxy each in front of the same nodes.
    #[arg(long = "factor", default_values_t = vec![150u32, 0])]
    pub factors: Vec<u32>,
    /// Tenants that repeat-invoke during the mixed load (per factor).
    #[arg(long, default_value_t = 6)]
    pub repeat_tenants: usize,
    /// New tenants that cold-start during the mixed load (per factor).
    #[arg(long, default_value_t = 4)]
    pub new_tenants: usize,
    /// Concurrent clients sending the repeat invokes.
    #[arg(long, default_value_t = 3)]
    pub clients: usize,
    /// Warm invokes timed each way (direct, through HAProxy), interleaved.
    #[arg(long, default_value_t = 200)]
    pub warm: usize,
    /// Function changes timed until visible on every node.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-cluster.json")]
    pub out: PathBuf,
    #[command(flatten)]
    files: GuestFileArgs,
}

/// Runs the benchmark.
pub fn run(args: ClusterBenchArgs) -> std::process::ExitCode {
    crate::exit_code("silo-bench bench-cluster", run_inner(&args))
}

fn run_inner(args: &ClusterBenchArgs) -> Result<(), String> {
    for f in &args.factors {
        if *f != 0 && !(101..=65535).contains(f) {
            return Err(format!("factor {f}: 0 or 101..=65535"));
        }
    }
    let files = args.files.resolve()?;
    let code = std::fs::read(&files.function).map_err(|e| e.to_string())?;
    let zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let pg = pg::PgServer::start();
    let mut nodes = Nodes::start(pg.port(), &files)?;
    let result = measure::all(args, &nodes.endpoints(), &zip);
    let out = nodes.stop();
    let mut results = match result {
        Ok(r) => r,
        Err(e) => {
            let tail = match &out {
                Ok(o) => o.output.chars().rev().take(20_000).collect::<String>(),
                Err(e) => e.to_string(),
            };
            let tail: String = tail.chars().rev().collect();
            return Err(format!("{e}\nnodes' output (end):\n{tail}"));
        }
    };
    results["where"] = json!(
        "3 nodes in one KVM test host (QEMU TCG), HAProxy and PostgreSQL on this host: emulated times, compare ratios"
    );
    let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, &text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("{text}");
    Ok(())
}

/// Node `i`'s configuration: its own jail uids and cgroup and a third of
/// the test host's memory.
fn node_config(i: usize) -> String {
    format!(
        "[jail]\ncpu_full_at_mib = 0\nuid_base = {}\nuid_count = 1000\ncgroup_parent = \"/sys/fs/cgroup/silo-n{i}\"\n\n\
         [limits]\nmemory_mib = 1000\n\n\
         [[credentials]]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        1_000_000_000 + i * 100_000,
        ADMIN.0,
        ADMIN.1
    )
}

/// The script that runs the nodes in the test host until `/tmp/stop`.
fn script(pg_port: u16) -> String {
    let mut s = String::from(
        "mkdir -p /srv/cgi-bin && cp /work/stop.cgi /srv/cgi-bin/stop && chmod 755 /srv/cgi-bin/stop\n\
         httpd -p 8081 -h /srv\n\
         ( while sleep 5; do echo \"HEARTBEAT $(cut -d' ' -f1 /proc/uptime) s up\"; done ) &\n\
         beat=$!\n",
    );
    for i in 1..=NODES {
        s.push_str(&format!(
            "SILO_LOG=warn silo serve --config n{i}.toml --listen 0.0.0.0:900{i} --data-dir /tmp/n{i} \
             --kernel vmlinux --agent agent --registry postgres://silo@10.0.2.2:{pg_port}/postgres \
             --node-id n{i} > /tmp/n{i}.log 2>&1 &\npid{i}=$!\n"
        ));
    }
    s.push_str(
        "i=0; while [ ! -f /tmp/stop ] && [ $i -lt 18000 ]; do sleep 0.1; i=$((i+1)); done\n\
         kill $beat\n",
    );
    for i in 1..=NODES {
        s.push_str(&format!(
            "kill -TERM $pid{i}; wait $pid{i}; echo \"NODE_EXIT n{i} $?\"; tail -c 8000 /tmp/n{i}.log\n"
        ));
    }
    s
}

/// The three nodes in the test host.
struct Nodes {
    run: Option<JoinHandle<Result<TestHostOutput, TestHostError>>>,
    ports: Vec<u16>,
    control: u16,
}

impl Nodes {
    fn start(pg_port: u16, files: &crate::guest_files::GuestFiles) -> Result<Self, String> {
        // The daemon is `silo`, beside this program.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let silo = exe.with_file_name("silo");
        if !silo.is_file() {
            return Err(format!(
                "{}: build it (cargo build -p silo)",
                silo.display()
            ));
        }
        let ports: Vec<u16> = (0..NODES).map(|_| pg::free_port()).collect();
        let control = pg::free_port();
        let slot = HostSlot::acquire().map_err(|e| e.to_string())?;
        let mut host = TestHost::new()
            .in_slot(slot)
            .timeout(Duration::from_secs(2400))
            .memory_mib(4096)
            .silo_binaries(&silo)
            .map_err(|e| e.to_string())?
            .bytes(
                "/work/stop.cgi",
                b"#!/bin/sh\ntouch /tmp/stop\nprintf 'Content-Type: text/plain\\r\\n\\r\\nstopping\\n'\n"
                    .to_vec(),
                0o755,
            )
            .port_forward(control, 8081)
            .heartbeat(Duration::from_secs(5));
        host = files.copied_into(host, "vmlinux");
        for (i, port) in ports.iter().enumerate() {
            host = host
                .bytes(
                    &format!("/work/n{}.toml", i + 1),
                    node_config(i + 1).into_bytes(),
                    0o644,
                )
                .port_forward(*port, 9001 + i as u16);
        }
        let script = script(pg_port);
        let run = std::thread::spawn(move || host.run_once(&script));
        let mut nodes = Nodes {
            run: Some(run),
            ports,
            control,
        };
        let start = Instant::now();
        for e in nodes.endpoints() {
            let c = LambdaClient::new(&e, None).with_timeout(Duration::from_secs(10));
            while !c
                .request("GET", "/readyz", &[], b"")
                .is_ok_and(|r| r.status == 200)
            {
                let gone = nodes.run.as_ref().is_some_and(|r| r.is_finished());
                if gone || start.elapsed() > Duration::from_secs(600) {
                    let out = nodes.stop();
                    return Err(format!("node {e} did not come up: {out:?}"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        eprintln!("3 nodes ready after {:.1?}", start.elapsed());
        Ok(nodes)
    }

    fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn stop(&mut self) -> Result<TestHostOutput, TestHostError> {
        let Some(run) = self.run.take() else {
            return Err(TestHostError::NoExitMarker {
                tail: "already stopped".into(),
            });
        };
        let c = LambdaClient::new(&format!("http://127.0.0.1:{}", self.control), None);
        let _ = c.request("GET", "/cgi-bin/stop", &[], b"");
        run.join().unwrap_or_else(|_| {
            Err(TestHostError::NoExitMarker {
                tail: "panicked".into(),
            })
        })
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if self.run.is_some() {
            let _ = self.stop();
        }
    }
}

/// A client signing with the nodes' admin key for `endpoint`.
fn signed(endpoint: &str) -> LambdaClient {
    LambdaClient::new(
        endpoint,
        Some(Credentials {
            access_key: ADMIN.0.into(),
            secret: ADMIN.1.into(),
        }),
    )
    .with_timeout(Duration::from_secs(300))
}

/// A running HAProxy with one bounded-load factor, killed on drop.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Haproxy {
    fn start(nodes: &[String], factor: u32) -> Result<Self, String> {
        let front = pg::free_port();
        let dir = crate::scratch_path(&format!("silo-bench-cluster-haproxy-{factor}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cfg =
            silo_daemon::cluster::haproxy::config(&silo_daemon::cluster::haproxy::HaproxyOptions {
                nodes: nodes
                    .iter()
                    .map(|e| e.trim_start_matches("http://").to_string())
                    .collect(),
                listen: format!("127.0.0.1:{front}"),
                balance_factor: factor,
                check_interval_ms: 300,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("haproxy.cfg"), cfg).map_err(|e| e.to_string())?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).map_err(|e| e.to_string())?)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("haproxy (apt-get install haproxy): {e}"))?;
        Ok(Self {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{front}"),
        })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// p50 and p99 (nearest rank) of `v`, sorted in place.
fn percentiles(v: &mut [f64]) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return json!({"n": 0});
    }
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    json!({"n": v.len(), "p50": at(0.5), "p99": at(0.99), "max": v[v.len() - 1]})
}
