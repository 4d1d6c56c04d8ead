//! `silo demo`: the mission in one command. It starts the daemon (`silo
//! serve`) on the embedded defaults, creates a `PER_TENANT` function from the
//! launch post's Python code, verbatim (runtime `python3.11`: it counts its
//! invocations in `/tmp`), through the Lambda API, and invokes it as
//! tenant-A twice and tenant-B once over HTTP: the counters read 1, 2, 1,
//! because tenant-B never shares tenant-A's microVM. Then the same with a
//! custom runtime (`provided.al2023`): the Rust counter of
//! `functions/counter`, on the official `lambda_runtime` crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use silo_benches::guest_files::{GuestFileArgs, GuestFiles};
use silo_client::{InvokeOptions, LambdaClient};
use silo_daemon::config::{DaemonConfig, RuntimeDelivery};
use silo_daemon::serve;
use silo_daemon::Images;
use silo_images::placement::{run_checked, run_here_or_in_test_host, test_host_with_this_program};
use silo_images::runtime::RuntimeImage;

/// Flags for `silo demo`.
#[derive(clap::Args, Debug)]
#[command(mut_arg("kernel", |a| a.help("Guest kernel (default: build silo's guest kernel)")))]
#[command(mut_arg("agent", |a| a.help("Static guest agent (default: build it from this source tree)")))]
#[command(mut_arg("function", |a| a.help("The counter function's binary (default: build functions/counter)")))]
pub struct DemoArgs {
    /// Run here even without hardware KVM (normally the demo moves into the
    /// KVM test host then).
    #[arg(long)]
    here: bool,
    #[command(flatten)]
    guest: GuestFileArgs,
    /// Override `jail.cpu_full_at_mib` (0: no CPU share). The demo passes 0
    /// inside the test host, whose one emulated CPU is tens of times slower
    /// than hardware: 7% of it would time out a 128 MB function's invokes.
    #[arg(long)]
    cpu_full_at_mib: Option<u32>,
    /// The `python3.11` runtime's built image (default: build it from
    /// Debian's and PyPI's packages, cached).
    #[arg(long)]
    python_runtime: Option<PathBuf>,
    /// How the Python runtime reaches the VMs: `initramfs` (a copy in each)
    /// or `pmem` (one shared read-only image).
    #[arg(long, default_value = "pmem")]
    runtime_delivery: String,
}

/// The launch post's function, exactly as published.
const LAUNCH_POST_PY: &str = include_str!("../tests/python/launch_post/lambda_function.py");

/// Runs the demo.
pub fn run(args: DemoArgs) -> ExitCode {
    silo_benches::exit_code("silo demo", run_inner(args))
}

fn run_inner(args: DemoArgs) -> Result<(), String> {
    let files = args.guest.resolve()?;
    let delivery = match args.runtime_delivery.as_str() {
        "initramfs" => RuntimeDelivery::Initramfs,
        "pmem" => RuntimeDelivery::Pmem,
        other => {
            return Err(format!(
                "--runtime-delivery {other:?}: expected initramfs or pmem"
            ))
        }
    };
    let python = match args.python_runtime {
        Some(dir) => RuntimeImage::at("python3.11", dir),
        None => {
            eprintln!("[images] python3.11 runtime (Debian's CPython, awslambdaric from PyPI)");
            silo_images::runtime::runtime_image("python3.11").map_err(|e| e.to_string())?
        }
    };
    let d = Demo {
        files,
        python,
        delivery,
        cpu_full_at_mib: args.cpu_full_at_mib,
    };
    run_here_or_in_test_host(
        args.here,
        || {
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(demo(&d))
        },
        || in_test_host(&d, &args.runtime_delivery),
    )
}

/// What the demo runs with.
struct Demo {
    files: GuestFiles,
    python: RuntimeImage,
    delivery: RuntimeDelivery,
    cpu_full_at_mib: Option<u32>,
}

fn in_test_host(d: &Demo, delivery: &str) -> Result<(), String> {
    println!(
        "No hardware KVM here (this host's /dev/kvm is PVM-backed or missing), so the demo runs\n\
         inside the KVM test host: a QEMU TCG machine with nested SVM. Times are emulated; compare\n\
         ratios only."
    );
    let host = test_host_with_this_program()
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(600));
    let host = d
        .files
        .copied_into(host, "vmlinux")
        .file(d.python.cpio(), "/work/python3.11/rt.cpio", 0o644)
        .file(
            d.python.manifest(),
            "/work/python3.11/MANIFEST.sha256",
            0o644,
        );
    let host = match d.python.shared_image() {
        Some(img) => host.file(img, "/work/python3.11/rt.img", 0o644),
        None => host,
    };
    run_checked(
        &host,
        "demo",
        &format!(
            "SILO_LOG=warn silo demo --here --kernel vmlinux --agent agent --function counter \
             --python-runtime /work/python3.11 --runtime-delivery {delivery} --cpu-full-at-mib 0"
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

async fn demo(d: &Demo) -> Result<(), String> {
    let data_dir = std::env::temp_dir().join(format!("silo-demo-{}", std::process::id()));
    let mut config = DaemonConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.clone(),
        allow_unauthenticated: true,
        runtimes: [("python3.11".to_string(), d.python.dir.clone())].into(),
        runtime_delivery: d.delivery,
        ..DaemonConfig::default()
    };
    if let Some(n) = d.cpu_full_at_mib {
        config.jail.cpu_full_at_mib = n;
    }
    let images = Images {
        kernel: d.files.kernel.clone(),
        agent: d.files.agent.clone(),
    };
    let running = serve::start(config, images)
        .await
        .map_err(|e| e.to_string())?;
    let endpoint = format!("http://{}", running.addr);
    println!("\nsilo daemon on {endpoint} (Lambda API; any AWS SDK works with this endpoint)");
    let function = d.files.function.clone();
    let result = tokio::task::spawn_blocking(move || {
        let python = python_calls(&endpoint)?;
        let custom = custom_calls(&endpoint, &function)?;
        Ok::<_, String>((python, custom))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let destroyed = running.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    println!("\n{destroyed} microVMs shut down.");
    let (python, custom) = result?;
    for (what, counts) in [("python3.11", python), ("provided.al2023", custom)] {
        if counts != [1, 2, 1] {
            return Err(format!("{what}: expected counters 1, 2, 1, got {counts:?}"));
        }
    }
    println!("Counters 1, 2, 1 on both runtimes: tenant-B got its own environment; tenant-A's was reused warm.");
    Ok(())
}

/// The launch post's function, as the post deploys it: a zip holding
/// `lambda_function.py`, Runtime python3.11, Handler
/// `lambda_function.lambda_handler`; the count is in its response body.
fn python_calls(endpoint: &str) -> Result<Vec<u64>, String> {
    let client = LambdaClient::new(endpoint, None);
    let package = silo_initramfs::package::make_zip(&[(
        "lambda_function.py",
        0o644,
        LAUNCH_POST_PY.as_bytes(),
    )]);
    let r = client
        .create_function(
            "tenant-counter",
            &package,
            true,
            serde_json::json!({
                "Runtime": "python3.11",
                "Handler": "lambda_function.lambda_handler",
                "Timeout": 60,
                "MemorySize": 256,
            }),
        )
        .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Err(format!("CreateFunction: HTTP {}: {}", r.status, r.text()));
    }
    println!(
        "\nCreateFunction tenant-counter (python3.11, lambda_function.lambda_handler, TenancyConfig PER_TENANT):\n\
         the launch post's code, verbatim: it counts its invocations in /tmp/tenant_data.json\n"
    );
    invoke_three("tenant-counter", &client, |body| {
        // The handler returns {"statusCode": 200, "body": "<JSON text>"}.
        let inner: serde_json::Value =
            serde_json::from_str(body["body"].as_str().unwrap_or_default()).ok()?;
        inner["file_data"]["request_count"].as_u64()
    })
}

/// The custom-runtime example: the Rust counter (`functions/counter`) as
/// the zip's `bootstrap`.
fn custom_calls(endpoint: &str, function: &Path) -> Result<Vec<u64>, String> {
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
    println!(
        "\nCreateFunction counter (provided.al2023: a Rust bootstrap on the lambda_runtime crate, TenancyConfig PER_TENANT):\n\
         counts its invocations in /tmp\n"
    );
    invoke_three("counter", &client, |body| body["count"].as_u64())
}

/// The demo's own number for the environment the daemon calls `id` (an
/// opaque id per function and tenant): 1 for the first one it saw, and so
/// on.
fn environment_number(id: &str) -> usize {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    match seen.iter().position(|s| s == id) {
        Some(i) => i + 1,
        None => {
            seen.push(id.to_string());
            seen.len()
        }
    }
}

/// Invokes `name` as tenant-A, tenant-A, tenant-B, printing a table; the
/// counts `count` reads from each response.
fn invoke_three(
    name: &str,
    client: &LambdaClient,
    count: impl Fn(&serde_json::Value) -> Option<u64>,
) -> Result<Vec<u64>, String> {
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
            .invoke(name, b"{}", &opts)
            .map_err(|e| e.to_string())?;
        if r.status != 200 || r.header("x-amz-function-error").is_some() {
            return Err(format!(
                "Invoke as {tenant}: HTTP {}: {}",
                r.status,
                r.text()
            ));
        }
        let count = count(&r.json())
            .ok_or_else(|| format!("Invoke as {tenant}: no count in the response: {}", r.text()))?;
        counts.push(count);
        println!(
            "{:<6} {:<10} #{:<4} {:<6} {:>5} {:>10}",
            n + 1,
            tenant,
            r.header("x-silo-environment-id")
                .map_or("?".to_string(), |id| environment_number(id).to_string()),
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
