//! `silo-benches`: silo's benchmarks, as a library the `silo` CLI calls
//! (`silo bench`, `silo bench-api`) and as the `silo-bench` program
//! (`cargo run -p silo-benches --bin silo-bench -- bench ...`).
//!
//! - [`boot`]: cold boots of silo's VMM against a peer VMM, warm invokes
//!   through a VM against host mode, the VMM's memory overhead; JSON and an
//!   SVG plot;
//! - [`api`]: the daemon through its Lambda HTTP API (cold, warm, creations
//!   per second, bursts of new tenants) against direct scheduler calls; JSON
//!   and an SVG plot of the bursts;
//! - [`python`]: cold starts of a Python function (managed runtime) against
//!   a custom-runtime function, phase by phase (`silo-bench bench-python`).
//! - [`pmem_memory`]: host memory of N VMs reading the same files from one
//!   shared virtio-pmem image against the files in each VM's initramfs,
//!   and against a copy of the image per tenant ([`pmem_tenants`]);
//! - [`idle_memory`]: host memory held by an idle function VM after its
//!   first invoke and after idle periods, against today's kernel and
//!   Firecracker with free page reporting;
//! - [`logs_store`]: the function-log pipeline's ingest rate and queries
//!   (`silo-bench bench-logs`); [`logs_invoke`]: what keeping logs costs a
//!   warm invoke (`silo-bench bench-logs-invoke`).
//! - [`events`]: an Event invoke's 202 (synced to the durable queue)
//!   against a DryRun (`silo-bench bench-events`).
//!
//! - [`cluster`]: three nodes behind HAProxy on PostgreSQL: warm invokes
//!   through HAProxy against direct, warm-hit share per bounded-load
//!   factor, change visibility (`silo-bench bench-cluster`).
//!
//! - [`net`]: guest egress throughput and round trips against Firecracker
//!   and the host, and what a network adds to a cold start.
//!
//! Without hardware KVM both run again inside the KVM test host
//! ([`silo_images::placement`]).

pub mod api;
pub mod boot;
pub mod cluster;
pub mod events;
pub mod guest_files;
pub mod idle_memory;
pub mod logs_invoke;
pub mod logs_store;
pub mod net;
pub mod pmem_memory;
pub mod pmem_tenants;
pub mod python;

/// Logs to stderr, filtered by `SILO_LOG` (default `info`), in colour on a
/// terminal: the logging of `silo` and `silo-bench`.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// [`init_tracing`] with one JSON object per line (`silo serve
/// --log-format json`): timestamp, level, message, fields and the spans'
/// fields (`tenant_id`, `request_id`...).
pub fn init_tracing_json() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The daemon configuration the API benchmarks run with: loopback on any
/// port, `data_dir`, no authentication, and no CPU share per VM (the
/// benchmarks measure silo's own path; on the test host's emulated CPU the
/// share would dominate every figure).
pub(crate) fn bench_daemon_config(
    data_dir: std::path::PathBuf,
) -> silo_daemon::config::DaemonConfig {
    let mut config = silo_daemon::config::DaemonConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir,
        allow_unauthenticated: true,
        ..silo_daemon::config::DaemonConfig::default()
    };
    config.jail.cpu_full_at_mib = 0;
    config
}

/// `<temp dir>/<prefix>-<this process's id>`: a path of this run's own.
pub(crate) fn scratch_path(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()))
}

/// A command's exit code: success, or its error on stderr after `name`
/// (`silo bench: ...`) and failure.
pub fn exit_code(name: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The benchmarks as subcommands, the same in `silo` and in `silo-bench`
/// (inside the KVM test host the program runs as `/bin/silo bench --here`).
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Measure cold boots against a peer VMM and warm invokes against host mode.
    Bench(boot::BenchArgs),
    /// Measure the daemon through its HTTP API: cold and warm invokes, creations/s.
    BenchApi(api::BenchApiArgs),
    /// Measure Python (managed runtime) against custom-runtime cold starts,
    /// phase by phase.
    BenchPython(python::PythonBenchArgs),
    /// Measure host memory of N VMs sharing one pmem image vs the same files in each initramfs.
    BenchPmemMemory(pmem_memory::PmemMemoryArgs),
    /// Measure networking: guest egress throughput and round trips against
    /// Firecracker and the host, and what a network adds to a cold start.
    BenchNet(net::NetBenchArgs),
    /// Measure the function-log pipeline: sustained ingest, and queries over a large store.
    BenchLogs(logs_store::LogsBenchArgs),
    /// Measure an Event invoke's 202 (synced to the durable queue) against a DryRun.
    BenchEvents(events::EventsBenchArgs),
    /// Measure host memory held by an idle function VM over time (balloon,
    /// free page reporting) against today's kernel and Firecracker.
    BenchIdleMemory(idle_memory::IdleMemoryArgs),
    /// Measure what keeping function logs costs a warm invoke (a handler
    /// printing 10 lines): logs on against off, in the same run.
    BenchLogsInvoke(logs_invoke::LogsInvokeArgs),
    /// Measure a cluster (3 nodes, HAProxy, PostgreSQL): warm invokes
    /// through HAProxy against direct, warm-hit share per bounded-load
    /// factor under a mixed load, and how fast a change reaches every node.
    BenchCluster(cluster::ClusterBenchArgs),
}

impl BenchCommand {
    /// Runs the benchmark.
    pub fn run(self) -> std::process::ExitCode {
        match self {
            BenchCommand::Bench(args) => boot::run(args),
            BenchCommand::BenchApi(args) => api::run(args),
            BenchCommand::BenchPython(args) => python::run(args),
            BenchCommand::BenchPmemMemory(args) => pmem_memory::run(args),
            BenchCommand::BenchNet(args) => net::run(args),
            BenchCommand::BenchLogs(args) => logs_store::run(args),
            BenchCommand::BenchEvents(args) => events::run(args),
            BenchCommand::BenchIdleMemory(args) => idle_memory::run(args),
            BenchCommand::BenchLogsInvoke(args) => logs_invoke::run(args),
            BenchCommand::BenchCluster(args) => cluster::run(args),
        }
    }
}
