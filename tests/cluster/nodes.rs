//! The cluster end-to-end test's nodes: three `silo serve --registry`
//! nodes in one KVM test host boot (or on this host with hardware KVM),
//! started, reached and stopped.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::daemon::{free_port, scratch, TestDaemon, ADMIN};
use silo_client::LambdaClient;
use silo_images::testhost::{
    hardware_kvm_usable, HostSlot, TestHost, TestHostError, TestHostOutput,
};

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// Node `i`'s configuration: its own jail uids and cgroup (nodes in one
/// host must not reap each other's VMs at start) and room for 10 guests of
/// 128 MiB (admission counts guest memory in full; an idle guest touches a
/// few tens of MiB of the test host's 3072).
pub fn node_config(i: usize) -> String {
    format!(
        "[jail]\ncpu_full_at_mib = 0\nuid_base = {}\nuid_count = 1000\ncgroup_parent = \"/sys/fs/cgroup/silo-n{i}\"\n\n\
         [limits]\nmemory_mib = 1400\n\n\
         [cluster]\nevent_lease_s = {lease}\n\n\
         [[credentials]]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        1_000_000_000 + i * 100_000,
        ADMIN.0,
        ADMIN.1,
        lease = crate::kill_node::EVENT_LEASE_S,
    )
}

/// The three nodes, wherever they run.
pub enum Nodes {
    TestHost {
        run: Option<JoinHandle<Result<TestHostOutput, TestHostError>>>,
        ports: Vec<u16>,
        control: u16,
    },
    Host(Vec<TestDaemon>),
}

/// The script that runs the nodes in the test host until `/tmp/stop`.
fn script(pg_port: u16) -> String {
    let mut s = String::from(
        "mkdir -p /srv/cgi-bin && cp /work/stop.cgi /srv/cgi-bin/stop && chmod 755 /srv/cgi-bin/stop\n\
         cp /work/node.cgi /srv/cgi-bin/node && chmod 755 /srv/cgi-bin/node\n\
         httpd -p 8081 -h /srv\n\
         ( while sleep 5; do echo \"HEARTBEAT $(cut -d' ' -f1 /proc/uptime) s up, load $(cut -d' ' -f1-3 /proc/loadavg)\"; done ) &\n\
         beat=$!\n",
    );
    // Node n's start (again after a kill: same node id and data directory).
    s.push_str(&format!(
        "start() {{ SILO_LOG=info silo serve --config n$1.toml --listen 0.0.0.0:900$1 --data-dir /tmp/n$1 \
         --kernel vmlinux --agent agent --registry postgres://silo@10.0.2.2:{pg_port}/postgres \
         --node-id n$1 >> /tmp/n$1.log 2>&1 & eval pid$1=\\$!; }}\n"
    ));
    for i in 1..=NODES {
        s.push_str(&format!("start {i}\n"));
    }
    s.push_str(&crate::kill_node::control_loop(NODES));
    s.push_str("kill $beat\n");
    for i in 1..=NODES {
        s.push_str(&format!(
            "kill -TERM $pid{i}; wait $pid{i}; echo \"NODE_EXIT n{i} $?\"\n\
             echo NODE_LOG_BEGIN n{i}; tail -c 40000 /tmp/n{i}.log; echo NODE_LOG_END n{i}\n"
        ));
    }
    s
}

impl Nodes {
    /// Starts the nodes on PostgreSQL at this host's `pg_port` and waits
    /// until each answers.
    pub fn start(pg_port: u16) -> Self {
        if hardware_kvm_usable() {
            let url = format!("postgres://silo@127.0.0.1:{pg_port}/postgres");
            return Nodes::Host(
                (1..=NODES)
                    .map(|i| {
                        let id = format!("n{i}");
                        TestDaemon::on_host(
                            &node_config(i),
                            &scratch(&format!("cluster-e2e-{id}")),
                            &["--registry", &url, "--node-id", &id],
                        )
                    })
                    .collect(),
            );
        }
        let (kernel, agent) = common::daemon::images();
        let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let control = free_port();
        // Wait for the machine's one test-host slot before any clock starts.
        let slot = HostSlot::acquire().expect("test host slot");
        let mut host = TestHost::new()
            .in_slot(slot)
            .timeout(Duration::from_secs(1200))
            .memory_mib(3072)
            .silo_binaries(env!("CARGO_BIN_EXE_silo"))
            .expect("include silo")
            .file(&kernel, "/work/vmlinux", 0o644)
            .file(&agent, "/work/agent", 0o755)
            .bytes(
                "/work/stop.cgi",
                b"#!/bin/sh\ntouch /tmp/stop\nprintf 'Content-Type: text/plain\\r\\n\\r\\nstopping\\n'\n"
                    .to_vec(),
                0o755,
            )
            .bytes("/work/node.cgi", crate::kill_node::NODE_CGI.to_vec(), 0o755)
            .port_forward(control, 8081)
            .heartbeat(Duration::from_secs(5));
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
        // One attempt: a stall is retried by the test, scenario and all.
        let run = std::thread::spawn(move || host.run_once(&script));
        let mut nodes = Nodes::TestHost {
            run: Some(run),
            ports,
            control,
        };
        let start = Instant::now();
        for e in nodes.endpoints() {
            let c = LambdaClient::new(&e, None).with_timeout(Duration::from_secs(10));
            loop {
                if c.request("GET", "/readyz", &[], b"")
                    .is_ok_and(|r| r.status == 200)
                {
                    break;
                }
                let gone =
                    matches!(&nodes, Nodes::TestHost { run: Some(r), .. } if r.is_finished());
                if gone || start.elapsed() > Duration::from_secs(300) {
                    let out = nodes.stop();
                    panic!("node {e} did not come up: {}", describe(&out));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        println!("3 nodes ready after {:.1?}", start.elapsed());
        nodes
    }

    /// The nodes' API endpoints as seen from here.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Nodes::TestHost { ports, .. } => ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            Nodes::Host(d) => d.iter().map(|d| d.endpoint.clone()).collect(),
        }
    }

    /// Stops the nodes; the test host's outcome (with hardware KVM: the
    /// nodes' logs as its output).
    pub fn stop(&mut self) -> Result<TestHostOutput, TestHostError> {
        match self {
            Nodes::TestHost { run, control, .. } => {
                let Some(run) = run.take() else {
                    return Err(TestHostError::NoExitMarker {
                        tail: "already stopped".into(),
                    });
                };
                let c = LambdaClient::new(&format!("http://127.0.0.1:{control}"), None);
                let _ = c.request("GET", "/cgi-bin/stop", &[], b"");
                run.join().expect("test host thread")
            }
            Nodes::Host(d) => {
                let logs: Vec<String> = d.iter_mut().map(|d| d.stop()).collect();
                Ok(TestHostOutput {
                    output: logs.join("\n"),
                    exit_code: 0,
                    console: String::new(),
                    boot_time: Duration::ZERO,
                    total_time: Duration::ZERO,
                })
            }
        }
    }
}

/// What the nodes printed, or why the test host failed.
pub fn describe(out: &Result<TestHostOutput, TestHostError>) -> String {
    match out {
        Ok(o) => o.output.clone(),
        Err(e) => format!("test host failed: {e}"),
    }
}
