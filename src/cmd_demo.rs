//! `silo demo`: the mission in one command. It starts the daemon (`silo
//! serve`) on the embedded defaults, creates a `PER_TENANT` function that
//! counts its invocations in `/tmp` (the launch post's example) through the
//! Lambda API, and invokes it as tenant-A twice and tenant-B once over HTTP:
//! the counters read 1, 2, 1, because tenant-B never shares tenant-A's
//! microVM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use silo_client::{InvokeOptions, LambdaClient};
use silo_daemon::config::DaemonConfig;
use silo_daemon::serve;
use silo_daemon::Images;
use silo_images::placement::{run_checked, run_here_or_in_test_host, test_host_with_this_program};

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
    /// Override `jail.cpu_full_at_mib` (0: no CPU share). The demo passes 0
    /// inside the test host, whose one emulated CPU is tens of times slower
    /// than hardware: 7% of it would time out a 128 MB function's invokes.
    #[arg(long)]
    cpu_full_at_mib: Option<u32>,
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
    run_here_or_in_test_host(
        args.here,
        || {
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(demo(
                kernel.clone(),
                agent.clone(),
                function.clone(),
                args.cpu_full_at_mib,
            ))
        },
        || in_test_host(&kernel, &agent, &function),
    )
}

fn in_test_host(kernel: &PathBuf, agent: &PathBuf, function: &PathBuf) -> Result<(), String> {
    println!(
        "No hardware KVM here (this host's /dev/kvm is PVM-backed or missing), so the demo runs\n\
         inside the KVM test host: a QEMU TCG machine with nested SVM. Times are emulated; compare\n\
         ratios only."
    );
    let host = test_host_with_this_program()
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(600))
        .file(kernel, "/work/vmlinux", 0o644)
        .file(agent, "/work/agent", 0o755)
        .file(function, "/work/counter", 0o755);
    run_checked(
        &host,
        "demo",
        "SILO_LOG=warn silo demo --here --kernel vmlinux --agent agent --function counter \
         --cpu-full-at-mib 0",
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

async fn demo(
    kernel: PathBuf,
    agent: PathBuf,
    function: PathBuf,
    cpu_full_at_mib: Option<u32>,
) -> Result<(), String> {
    let data_dir = std::env::temp_dir().join(format!("silo-demo-{}", std::process::id()));
    let mut config = DaemonConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.clone(),
        allow_unauthenticated: true,
        ..DaemonConfig::default()
    };
    if let Some(n) = cpu_full_at_mib {
        config.jail.cpu_full_at_mib = n;
    }
    let running = serve::start(config, Images { kernel, agent })
        .await
        .map_err(|e| e.to_string())?;
    let endpoint = format!("http://{}", running.addr);
    println!("\nsilo daemon on {endpoint} (Lambda API; any AWS SDK works with this endpoint)");
    let result = tokio::task::spawn_blocking(move || calls(&endpoint, &function))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let destroyed = running.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    println!("\n{destroyed} microVMs shut down.");
    let counts = result?;
    if counts != [1, 2, 1] {
        return Err(format!("expected counters 1, 2, 1, got {counts:?}"));
    }
    println!("Counters 1, 2, 1: tenant-B got its own environment; tenant-A's was reused warm.");
    Ok(())
}

/// The demo's API calls, as any Lambda client would make them.
fn calls(endpoint: &str, function: &Path) -> Result<Vec<u64>, String> {
    let client = LambdaClient::new(endpoint, None);
    let code = std::fs::read(function).map_err(|e| format!("{}: {e}", function.display()))?;
    let package = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let r = client
        .create_function(
            "counter",
            &package,
            true,
            serde_json::json!({"Timeout": 10}),
        )
        .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Err(format!("CreateFunction: HTTP {}: {}", r.status, r.text()));
    }
    println!("CreateFunction counter (TenancyConfig PER_TENANT): counts its invocations in /tmp\n");
    println!(
        "{:<6} {:<10} {:<5} {:<6} {:>5} {:>10}",
        "call", "tenant", "env", "start", "count", "latency"
    );
    let mut counts = Vec::new();
    for (n, tenant) in ["tenant-A", "tenant-A", "tenant-B"].iter().enumerate() {
        let started = Instant::now();
        let opts = InvokeOptions {
            tenant: Some(tenant.to_string()),
            ..InvokeOptions::default()
        };
        let r = client
            .invoke("counter", b"{}", &opts)
            .map_err(|e| e.to_string())?;
        if r.status != 200 || r.header("x-amz-function-error").is_some() {
            return Err(format!(
                "Invoke as {tenant}: HTTP {}: {}",
                r.status,
                r.text()
            ));
        }
        let count = r.json()["count"].as_u64().unwrap_or(0);
        counts.push(count);
        println!(
            "{:<6} {:<10} #{:<4} {:<6} {:>5} {:>10}",
            n + 1,
            tenant,
            r.header("x-silo-environment-id").unwrap_or("?"),
            if r.header("x-silo-cold-start") == Some("true") {
                "cold"
            } else {
                "warm"
            },
            count,
            format!("{:.1?}", started.elapsed())
        );
    }
    Ok(counts)
}
