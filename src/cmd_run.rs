//! `silo run`: boot one function VM, send it invocations, print each result
//! as a JSON line. A low-level tool for testing and measuring one
//! environment; the daemon does the same through the scheduler.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use silo_proto::{AgentConfig, Message, Outcome};

use silo_daemon::jail::{JailMode, JailSettings};
use silo_daemon::vm_env::{VmEnv, VmSpec};

/// Flags for `silo run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Guest kernel (vmlinux or bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// Static guest agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// Function package: a zip with `bootstrap` at its root.
    #[arg(long)]
    zip: PathBuf,
    /// Tenant id sent with every invocation.
    #[arg(long)]
    tenant: Option<String>,
    /// Event payloads, one invocation each, in order.
    #[arg(long = "payload", default_value = "{}")]
    payloads: Vec<String>,
    /// Function timeout in seconds.
    #[arg(long, default_value_t = 3)]
    timeout_s: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// Directory for the VM's sockets and images.
    #[arg(long, default_value = "/tmp/silo-run")]
    work_dir: PathBuf,
    /// Run the VMM unjailed, as this user (else it needs root: see
    /// docs/SECURITY.md).
    #[arg(long)]
    insecure_no_jail: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the invocations and prints one JSON line per event.
pub fn run(args: RunArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("silo run: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo run: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(args: RunArgs) -> Result<(), String> {
    let zip =
        std::fs::read(&args.zip).map_err(|e| format!("cannot read {}: {e}", args.zip.display()))?;
    let config = AgentConfig {
        function_name: "function".into(),
        timeout_s: args.timeout_s,
        memory_mib: args.mem_mib,
        ..AgentConfig::default()
    };
    let image =
        silo_initramfs::image::build(&args.agent, &config, &zip).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.work_dir)
        .map_err(|e| format!("{}: {e}", args.work_dir.display()))?;
    let initrd = args
        .work_dir
        .join(format!("function-{}.cpio", std::process::id()));
    std::fs::write(&initrd, &image).map_err(|e| format!("{}: {e}", initrd.display()))?;
    let spec = VmSpec {
        kernel: args.kernel.clone(),
        initrd: initrd.clone(),
        mem_mib: args.mem_mib,
        vcpus: 1,
        boot_timeout: Duration::from_secs(120),
        // One VM by hand: no neighbours for a CPU share to protect.
        jail: JailMode::new(
            &JailSettings {
                cpu_full_at_mib: 0,
                ..JailSettings::default()
            },
            args.insecure_no_jail,
        ),
        pmem: None,
        console_bytes: silo_daemon::console::DEFAULT_CONSOLE_BYTES,
        memory: Default::default(),
    };
    let booted = VmEnv::boot(&spec, &args.work_dir).await;
    let _ = std::fs::remove_file(&initrd);
    let mut env = booted.map_err(|e| e.to_string())?;
    println!(
        "{}",
        json!({
            "event": "ready",
            "spawn_to_ready_ms": env.boot.spawn_to_ready.as_secs_f64() * 1e3,
            "guest_agent_start_ms": env.boot.guest.kernel_uptime_at_agent_start_ns as f64 / 1e6,
            "guest_ready_ms": env.boot.guest.kernel_uptime_at_ready_ns as f64 / 1e6,
            "timeline": env.boot.timeline,
        })
    );
    for (n, payload) in args.payloads.iter().enumerate() {
        let budget = Duration::from_secs(u64::from(args.timeout_s));
        let msg = Message::Invoke {
            request_id: format!("run-{}-{n}", std::process::id()),
            tenant_id: args.tenant.clone(),
            deadline_unix_ms: now_ms() + budget.as_millis() as u64,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:function".into(),
            trace_id: format!("Root=1-{:08x}-{:024x}", now_ms() / 1000, n),
            payload: payload.as_bytes().to_vec(),
        };
        let r = env.invoke(msg, budget).await.map_err(|e| e.to_string())?;
        let line = match &r.outcome {
            Outcome::Ok(body) => json!({
                "event": "result", "n": n + 1, "ok": true,
                "payload": payload_json(body),
                "ms": r.duration.as_secs_f64() * 1e3,
                "log_tail_bytes": r.log_tail.len(),
            }),
            Outcome::Err(e) => json!({
                "event": "result", "n": n + 1, "ok": false,
                "error_type": e.error_type, "error_message": e.error_message,
                "ms": r.duration.as_secs_f64() * 1e3,
                "log_tail_bytes": r.log_tail.len(),
            }),
        };
        println!("{line}");
    }
    env.shutdown().await;
    println!("{}", json!({"event": "shutdown"}));
    Ok(())
}

/// The payload as JSON if it is JSON, else as a string.
fn payload_json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()))
}
