//! `silo demo`: the mission in one command. A `PER_TENANT` function that
//! counts its invocations in `/tmp` (the launch post's example) is invoked as
//! tenant-A twice and tenant-B once through the tenant scheduler and real
//! microVMs: the counters read 1, 2, 1, because tenant-B never shares
//! tenant-A's environment.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use silo_proto::{AgentConfig, Message, Outcome};
use silo_scheduler::{Binding, FunctionKey, Limits, Scheduler, TenantId};

use crate::vm_backend::{VmBackend, VmRequest};

/// Flags for `silo demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Run here even without hardware KVM (normally the demo moves into the
    /// KVM test host then).
    #[arg(long)]
    here: bool,
    /// Guest kernel (default: build silo's guest kernel).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Static guest agent (default: build it from this source tree).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The counter function's binary (default: build functions/counter).
    #[arg(long)]
    function: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: DemoArgs) -> Result<(), String> {
    let kernel = match args.kernel {
        Some(k) => k,
        None => {
            silo_images::kernel::guest_kernel()
                .map_err(|e| e.to_string())?
                .vmlinux
        }
    };
    let agent = match args.agent {
        Some(a) => a,
        None => silo_images::artifacts::guest_agent().map_err(|e| e.to_string())?,
    };
    let function = match args.function {
        Some(f) => f,
        None => silo_images::artifacts::counter_function().map_err(|e| e.to_string())?,
    };
    if !args.here && !silo_images::testhost::hardware_kvm_usable() {
        return in_test_host(&kernel, &agent, &function);
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(demo(kernel, agent, function))
}

fn in_test_host(kernel: &PathBuf, agent: &PathBuf, function: &PathBuf) -> Result<(), String> {
    println!(
        "No hardware KVM here (this host's /dev/kvm is PVM-backed or missing), so the demo runs\n\
         inside the KVM test host: a QEMU TCG machine with nested SVM. Times are emulated; compare\n\
         ratios only."
    );
    let silo = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = silo_images::testhost::TestHost::new()
        .timeout(Duration::from_secs(600))
        .binary_with_libs(&silo, "/bin/silo")
        .map_err(|e| e.to_string())?
        .file(kernel, "/work/vmlinux", 0o644)
        .file(agent, "/work/agent", 0o755)
        .file(function, "/work/counter", 0o755)
        .run("SILO_LOG=warn silo demo --here --kernel vmlinux --agent agent --function counter")
        .map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "the demo failed in the test host (exit {})",
            out.exit_code
        ));
    }
    Ok(())
}

async fn demo(kernel: PathBuf, agent: PathBuf, function: PathBuf) -> Result<(), String> {
    let run_dir = std::env::temp_dir().join(format!("silo-demo-{}", std::process::id()));
    let backend = VmBackend::new(kernel, run_dir.clone(), Duration::from_secs(120));
    let code = std::fs::read(&function).map_err(|e| format!("{}: {e}", function.display()))?;
    let package = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let config = AgentConfig {
        function_name: "counter".into(),
        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:counter".into(),
        timeout_s: 10,
        ..AgentConfig::default()
    };
    let key = FunctionKey {
        name: "counter".into(),
        version: "demo-v1".into(),
    };
    backend.register(&key.version, &agent, config.clone(), &package)?;
    let scheduler = Scheduler::new(backend);
    println!(
        "\nfunction `counter` (TenantIsolationMode PER_TENANT): counts its invocations in /tmp\n"
    );
    println!(
        "{:<6} {:<10} {:<5} {:<6} {:>5} {:>10}",
        "call", "tenant", "env", "start", "count", "latency"
    );
    let mut counts = Vec::new();
    for (n, tenant) in ["tenant-A", "tenant-A", "tenant-B"].iter().enumerate() {
        let tid = TenantId::parse(tenant).map_err(|e| e.to_string())?;
        let binding = Binding {
            function: key.clone(),
            tenant: Some(tid),
        };
        let deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(10);
        let message = Message::Invoke {
            request_id: format!("demo-{n}"),
            tenant_id: Some(tenant.to_string()),
            deadline_unix_ms: deadline.as_millis() as u64,
            function_arn: config.function_arn.clone(),
            trace_id: format!("Root=1-00000000-{n:024x}"),
            payload: b"{}".to_vec(),
        };
        let started = Instant::now();
        let report = scheduler
            .invoke(
                binding,
                Limits::default(),
                VmRequest {
                    message,
                    timeout: Duration::from_secs(10),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let body = match &report.response.outcome {
            Outcome::Ok(b) => b.clone(),
            Outcome::Err(e) => {
                return Err(format!(
                    "function error {}: {}",
                    e.error_type, e.error_message
                ))
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let count = v["count"].as_u64().unwrap_or(0);
        counts.push(count);
        println!(
            "{:<6} {:<10} #{:<4} {:<6} {:>5} {:>10}",
            n + 1,
            tenant,
            report.env_id,
            if report.cold_start { "cold" } else { "warm" },
            count,
            format!("{:.1?}", started.elapsed())
        );
    }
    let destroyed = scheduler.shutdown().await;
    let _ = std::fs::remove_dir_all(&run_dir);
    println!("\n{destroyed} microVMs shut down.");
    if counts != [1, 2, 1] {
        return Err(format!("expected counters 1, 2, 1, got {counts:?}"));
    }
    println!("Counters 1, 2, 1: tenant-B got its own environment; tenant-A's was reused warm.");
    Ok(())
}
