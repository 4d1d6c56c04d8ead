//! `silo-bench bench-python`: cold start to first answer of a function on
//! the managed `python3.11` runtime (the launch post's handler) against the
//! same function shape on a custom runtime (`provided.al2023`, the Rust
//! counter), in the same run, boots interleaved, phase by phase:
//!
//! - `vm_boot_ms`: the VMM spawned to the agent's hello (host clock);
//! - `runtime_init_ms`: the runtime started to its first
//!   `invocation/next` (the agent reports it with the first invoke; the
//!   guest's clock);
//! - `first_invoke_ms`: the rest of the first answer after the hello;
//! - `cold_start_ms`: the VMM spawned to the first answer (host clock);
//! - `warm_invoke_ms`: the second invoke's round trip.
//!
//! The managed runtime reaches the VM as `--delivery` says: copied into each
//! VM's initramfs, or one shared read-only image (virtio-pmem).
//! `--runtime nodejs22.x` measures the launch post's counter in Node.js
//! (`tests/nodejs/launch_post/index.js`) instead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use silo_daemon::vm_env::{VmEnv, VmSpec};
use silo_images::placement::{
    between_markers, run_checked, run_here_or_in_test_host, test_host_with_this_program,
};
use silo_images::runtime::RuntimeImage;
use silo_proto::{AgentConfig, Message, Outcome};

use crate::guest_files::{GuestFileArgs, GuestFiles};

/// Flags for `silo-bench bench-python`.
#[derive(clap::Args, Debug)]
#[command(mut_arg("kernel", |a| a.help("Guest kernel (default: silo's vmlinux)")))]
#[command(mut_arg("agent", |a| a.help("Static guest agent")))]
#[command(mut_arg("function", |a| a.help("Counter function binary (the custom runtime's function)")))]
pub struct PythonBenchArgs {
    /// Cold starts per runtime (interleaved).
    #[arg(long, default_value_t = 5)]
    boots: usize,
    /// The managed runtime: `python3.11` (the launch post's handler) or
    /// `nodejs22.x` (its Node.js counterpart).
    #[arg(long, default_value = "python3.11", value_parser = ["python3.11", "nodejs22.x"])]
    runtime: String,
    /// How the managed runtime reaches the VMs: `initramfs` or `pmem`.
    #[arg(long, default_value = "initramfs", value_parser = ["initramfs", "pmem"])]
    delivery: String,
    /// Guest memory of every VM, MiB.
    #[arg(long, default_value_t = 256)]
    mem_mib: u32,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-python.json")]
    out: PathBuf,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    #[command(flatten)]
    guest: GuestFileArgs,
    /// The managed runtime's built image (default: build it).
    #[arg(long, alias = "runtime-dir")]
    python_runtime: Option<PathBuf>,
}

/// The launch post's handler.
pub(crate) const LAUNCH_POST_PY: &str =
    include_str!("../../tests/python/launch_post/lambda_function.py");

/// The launch post's handler in Node.js.
pub(crate) const LAUNCH_POST_JS: &str = include_str!("../../tests/nodejs/launch_post/index.js");

/// The managed function of `runtime`: (file, code, handler).
fn managed_function(runtime: &str) -> (&'static str, &'static str, &'static str) {
    if runtime.starts_with("nodejs") {
        ("index.js", LAUNCH_POST_JS, "index.handler")
    } else {
        (
            "lambda_function.py",
            LAUNCH_POST_PY,
            "lambda_function.lambda_handler",
        )
    }
}

/// The results' key for the managed runtime's samples.
fn managed_key(runtime: &str) -> &'static str {
    if runtime.starts_with("nodejs") {
        "nodejs"
    } else {
        "python"
    }
}

/// Runs the benchmark.
pub fn run(args: PythonBenchArgs) -> ExitCode {
    crate::exit_code("silo bench-python", run_inner(args))
}

fn run_inner(args: PythonBenchArgs) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let files = args.guest.resolve()?;
    let python = match &args.python_runtime {
        Some(d) => RuntimeImage::at(&args.runtime, d),
        None => silo_images::runtime::runtime_image(&args.runtime).map_err(|x| e(&x))?,
    };
    run_here_or_in_test_host(
        args.here,
        || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|x| e(&x))?;
            let results = rt.block_on(measure(&args, &files, &python))?;
            let text = serde_json::to_string_pretty(&results).map_err(|x| e(&x))?;
            std::fs::write(&args.out, &text).map_err(|x| format!("{}: {x}", args.out.display()))?;
            println!("{text}");
            Ok(())
        },
        || in_test_host(&args, &files, &python),
    )
}

fn in_test_host(
    args: &PythonBenchArgs,
    files: &GuestFiles,
    python: &RuntimeImage,
) -> Result<(), String> {
    eprintln!(
        "[bench] no hardware KVM here: running inside the KVM test host (emulated; ratios only)"
    );
    let mut host = test_host_with_this_program()
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(1800))
        .memory_mib(3072);
    host = files.copied_into(host, "kernel");
    // Only what the delivery needs (the nodejs22.x tree is 108 MiB).
    match python.shared_image() {
        Some(img) if args.delivery == "pmem" => host = host.file(img, "/work/rt/rt.img", 0o644),
        _ => host = host.file(python.cpio(), "/work/rt/rt.cpio", 0o644),
    }
    let cmd = format!(
        "SILO_LOG=warn silo bench-python --here --boots {} --delivery {} --mem-mib {} \
         --kernel kernel --agent agent --function counter --runtime {} --python-runtime rt \
         --out r.json && echo BENCH_JSON_BEGIN && cat r.json && echo BENCH_JSON_END",
        args.boots, args.delivery, args.mem_mib, args.runtime
    );
    let out = run_checked(&host, "benchmark", &cmd).map_err(|e| e.to_string())?;
    let text = between_markers(&out.output, "BENCH_JSON_BEGIN", "BENCH_JSON_END")
        .ok_or("no results in the test host output")?;
    let mut results: Value =
        serde_json::from_str(&text).map_err(|e| format!("results from the test host: {e}"))?;
    results["host"] = json!(crate::boot::TEST_HOST);
    let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, &text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("{text}");
    Ok(())
}

/// A VM spec for `package` (managed runtime `python`, else custom).
fn spec(
    dir: &Path,
    name: &str,
    args: &PythonBenchArgs,
    kernel: &Path,
    agent: &Path,
    package: &[u8],
    python: Option<&RuntimeImage>,
) -> Result<VmSpec, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let config = AgentConfig {
        function_name: name.into(),
        handler: if python.is_some() {
            managed_function(&args.runtime).2.into()
        } else {
            "bootstrap".into()
        },
        memory_mib: args.mem_mib,
        timeout_s: 120,
        ..AgentConfig::default()
    };
    let mut image = match python {
        Some(_) => silo_initramfs::image::build_managed(agent, &config, package),
        None => silo_initramfs::image::build(agent, &config, package),
    }
    .map_err(|x| e(&x))?;
    let mut pmem = None;
    if let Some(rt) = python {
        if args.delivery == "pmem" {
            pmem = Some(rt.shared_image().ok_or_else(|| {
                format!("{} has no shared image (rt.img) for pmem", rt.dir.display())
            })?);
        } else {
            let tree = std::fs::read(rt.cpio()).map_err(|x| e(&x))?;
            image.resize(image.len().next_multiple_of(4), 0);
            image.extend_from_slice(&tree);
        }
    }
    let initrd = dir.join(format!("{name}.cpio"));
    std::fs::write(&initrd, image).map_err(|x| e(&x))?;
    Ok(VmSpec {
        kernel: kernel.to_path_buf(),
        initrd,
        mem_mib: args.mem_mib,
        vcpus: 1,
        boot_timeout: Duration::from_secs(300),
        pmem,
        jail: silo_daemon::jail::JailMode::Insecure,
        console_bytes: silo_daemon::console::DEFAULT_CONSOLE_BYTES,
        memory: Default::default(),
    })
}

fn invoke_msg(n: usize) -> Message {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Message::Invoke {
        request_id: format!("bench-{n}"),
        tenant_id: Some("tenant-A".into()),
        deadline_unix_ms: now + 120_000,
        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:bench".into(),
        trace_id: "Root=1-0-0".into(),
        payload: b"{}".to_vec(),
    }
}

/// The runtime's init time from the agent's report in the first invoke's log.
fn runtime_init_ms(log: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(log);
    let line = text
        .lines()
        .find(|l| l.starts_with("[silo] runtime init: "))?;
    line.split(" ready in ")
        .nth(1)?
        .trim_end_matches(" ms")
        .parse()
        .ok()
}

/// One cold start of `spec`, phase by phase.
async fn cold_start(spec: &VmSpec, dir: &Path, n: usize) -> Result<Value, String> {
    let mut env = VmEnv::boot(spec, dir).await.map_err(|e| e.to_string())?;
    let first = env
        .invoke(invoke_msg(2 * n), Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    let second = env
        .invoke(invoke_msg(2 * n + 1), Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    let t = env.boot.timeline;
    env.shutdown().await;
    for r in [&first, &second] {
        if let Outcome::Err(e) = &r.outcome {
            return Err(format!("invoke failed: {e:?}"));
        }
    }
    let answered = t.first_invocation_answered_ms.ok_or("no first answer")?;
    let init = runtime_init_ms(&first.log_tail);
    let after_ready = answered - t.agent_ready_ms;
    Ok(json!({
        "vm_boot_ms": t.agent_ready_ms,
        "runtime_init_ms": init,
        "first_invoke_ms": init.map(|i| (after_ready - i).max(0.0)),
        "cold_start_ms": answered,
        "warm_invoke_ms": second.duration.as_secs_f64() * 1e3,
        "first_response": String::from_utf8_lossy(match &first.outcome {
            Outcome::Ok(b) => b,
            Outcome::Err(_) => b"",
        }),
    }))
}

const PHASES: [&str; 5] = [
    "vm_boot_ms",
    "runtime_init_ms",
    "first_invoke_ms",
    "cold_start_ms",
    "warm_invoke_ms",
];

fn p50(samples: &[Value], k: &str) -> Value {
    let mut v: Vec<f64> = samples.iter().filter_map(|s| s[k].as_f64()).collect();
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    json!({"p50": v[v.len() / 2], "min": v[0], "max": v[v.len() - 1], "n": v.len()})
}

async fn measure(
    args: &PythonBenchArgs,
    files: &GuestFiles,
    python: &RuntimeImage,
) -> Result<Value, String> {
    let (kernel, agent, function) = (&files.kernel, &files.agent, &files.function);
    let dir = crate::scratch_path("silo-bench-python");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let code = std::fs::read(function).map_err(|e| e.to_string())?;
    let custom_zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let (file, code, _) = managed_function(&args.runtime);
    let python_zip = silo_initramfs::package::make_zip(&[(file, 0o644, code.as_bytes())]);
    let custom = spec(&dir, "custom", args, kernel, agent, &custom_zip, None)?;
    let py = spec(
        &dir,
        "python",
        args,
        kernel,
        agent,
        &python_zip,
        Some(python),
    )?;
    let (mut c, mut p) = (Vec::new(), Vec::new());
    for i in 0..args.boots.max(1) {
        // Interleaved, alternating which goes first.
        let order: [(bool, &VmSpec); 2] = if i % 2 == 0 {
            [(false, &custom), (true, &py)]
        } else {
            [(true, &py), (false, &custom)]
        };
        for (is_py, s) in order {
            let r = cold_start(s, &dir, i).await?;
            eprintln!(
                "[bench] {} cold start {}: {r}",
                if is_py {
                    args.runtime.as_str()
                } else {
                    "provided.al2023"
                },
                i + 1
            );
            if is_py { &mut p } else { &mut c }.push(r);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let summary = |s: &[Value]| {
        PHASES
            .iter()
            .map(|k| (k.to_string(), p50(s, k)))
            .collect::<serde_json::Map<_, _>>()
    };
    let ratio = |k: &str| {
        let a = p50(&p, k)["p50"].as_f64()?;
        let b = p50(&c, k)["p50"].as_f64()?;
        Some(a / b)
    };
    let key = managed_key(&args.runtime);
    let mut out = json!({
        "what": format!("cold start to first answer, {} (the launch post's handler) vs provided.al2023 (Rust counter), interleaved in one run", args.runtime),
        "runtime": args.runtime,
        "delivery": args.delivery,
        "mem_mib": args.mem_mib,
        "runtime_tree_kib": python.size_kib(),
        "clock": "host CLOCK_MONOTONIC ms since the VMM was spawned; runtime_init_ms in the guest's clock",
        "provided": summary(&c),
    });
    out[key] = json!(summary(&p));
    out[format!("{key}_over_provided_cold_start_p50")] = json!(ratio("cold_start_ms"));
    out["samples"] = json!({ key: p, "provided": c });
    Ok(out)
}
