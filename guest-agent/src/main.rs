//! `silo-guest-agent`: PID 1 of a silo microVM.
//!
//! It prepares the guest (mounts, loopback), connects to the host over vsock,
//! says hello with its boot timing, and then serves invocations: each one is
//! handed to the function's runtime through the Lambda Runtime API it serves
//! on 127.0.0.1:9001, and the result goes back to the host. In host mode
//! (`--host-mode`) it skips the PID 1 duties and talks over a Unix socket, for
//! tests and benchmarks.

mod credentials;
mod host;
mod idle;
use silo_guest_agent::http;
mod pid1;
mod runtime;
mod runtime_api;

use std::path::PathBuf;
use std::process::ExitCode;

use silo_proto::AgentConfig;

/// Where the settings live in the guest.
const CONFIG_PATH: &str = "/silo/agent.json";

struct Args {
    host_mode: bool,
    config: PathBuf,
    connect_unix: Option<PathBuf>,
    api_addr: String,
    /// A managed runtime's tree (host mode; a guest finds it at /rt).
    runtime_root: Option<PathBuf>,
    /// The kernel command line to read `silo.dns=` from (`/proc/cmdline`).
    kernel_cmdline: Option<PathBuf>,
    /// Where to write the resolver configuration (`/etc/resolv.conf`).
    resolv_conf: Option<PathBuf>,
}

impl Args {
    /// The settings of the agent as a guest's PID 1.
    fn guest() -> Self {
        Self {
            host_mode: false,
            config: PathBuf::from(CONFIG_PATH),
            connect_unix: None,
            api_addr: "127.0.0.1:9001".into(),
            runtime_root: None,
            kernel_cmdline: Some(PathBuf::from("/proc/cmdline")),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        kernel_cmdline: None,
        resolv_conf: None,
        ..Args::guest()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--host-mode" => a.host_mode = true,
            "--config" => a.config = it.next().ok_or("--config needs a path")?.into(),
            "--connect-unix" => {
                a.connect_unix = Some(it.next().ok_or("--connect-unix needs a path")?.into())
            }
            "--api-addr" => a.api_addr = it.next().ok_or("--api-addr needs HOST:PORT")?,
            "--runtime-root" => {
                a.runtime_root = Some(it.next().ok_or("--runtime-root needs a path")?.into())
            }
            "--kernel-cmdline" => {
                a.kernel_cmdline = Some(it.next().ok_or("--kernel-cmdline needs a path")?.into())
            }
            "--resolv-conf" => {
                a.resolv_conf = Some(it.next().ok_or("--resolv-conf needs a path")?.into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.host_mode && a.connect_unix.is_none() {
        return Err("--host-mode needs --connect-unix PATH".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let started_ns = pid1::uptime_ns();
    let pid1 = std::process::id() == 1;
    // As PID 1 the kernel hands init any boot parameters it did not know:
    // there are no flags to read, only the settings file.
    let parsed = if pid1 {
        Ok(Args::guest())
    } else {
        parse_args()
    };
    let args = match parsed {
        Ok(a) => a,
        Err(e) => {
            eprintln!("silo-guest-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if pid1 {
        if let Err(e) = pid1::setup() {
            eprintln!("silo-guest-agent: guest setup failed: {e}");
            pid1::reboot();
        }
    }
    let result = run(&args, started_ns, pid1);
    if let Err(e) = &result {
        eprintln!("silo-guest-agent: {e}");
    }
    if pid1 {
        // The VM ends when PID 1 is done, whatever happened.
        pid1::reboot();
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes the resolver configuration from `silo.dns=` on the kernel command
/// line (the kernel configured eth0 from `ip=` before init), before any
/// runtime starts. In host mode only with `--kernel-cmdline` and
/// `--resolv-conf` (tests).
fn configure_dns(args: &Args) -> Result<(), String> {
    let (Some(cmdline), Some(resolv)) = (&args.kernel_cmdline, &args.resolv_conf) else {
        return Ok(());
    };
    silo_guest_agent::dns::configure(cmdline, resolv)
        .map(|_| ())
        .map_err(|e| format!("resolver configuration: {e}"))
}

fn run(args: &Args, started_ns: u64, pid1: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read settings {}: {e}", args.config.display()))?;
    let config: AgentConfig = serde_json::from_str(&text)
        .map_err(|e| format!("bad settings in {}: {e}", args.config.display()))?;
    if pid1 {
        pid1::mount_tmp(config.tmp_mib).map_err(|e| format!("mounting /tmp: {e}"))?;
    }
    configure_dns(args)?;
    let stream = match &args.connect_unix {
        Some(path) => host::connect_unix(path),
        None => host::connect_vsock(config.host_port),
    }
    .map_err(|e| format!("cannot reach the host: {e}"))?;
    let managed = if pid1 {
        pid1::mount_runtime_image().map_err(|e| format!("runtime image: {e}"))?;
        let root = std::path::Path::new(runtime::GUEST_RUNTIME_ROOT);
        match runtime::ManagedRuntime::load(root)? {
            Some(mut m) => {
                m.link()?;
                Some(m)
            }
            None => None,
        }
    } else {
        match &args.runtime_root {
            Some(root) => Some(
                runtime::ManagedRuntime::load(root)?
                    .ok_or_else(|| format!("no {} in {}", runtime::DESCRIPTOR, root.display()))?,
            ),
            None => None,
        }
    };
    let reaper = runtime::start_reaper(pid1);
    let api =
        runtime_api::RuntimeApi::start(&args.api_addr).map_err(|e| format!("runtime API: {e}"))?;
    let mut agent = host::Agent::new(stream, config, api, reaper, args.api_addr.clone(), managed);
    if pid1 {
        agent.reclaim_when_idle(idle::IdleReclaim::start());
    }
    agent.serve(started_ns)
}
