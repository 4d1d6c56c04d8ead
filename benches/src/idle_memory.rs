//! `silo-bench bench-idle-memory`: host memory held by one idle function
//! environment, right after its first invoke and after idle periods
//! (`--idle-s`, default 60, 300 and 900 s: the issue asks 1, 5 and 15
//! minutes), for each runtime (`--runtimes`) and memory size (`--mem-mib`).
//!
//! Variants, one VM each, all booted first and then idle together:
//! - `silo`: silo-vmm as the daemon runs it (`--balloon`: virtio-balloon
//!   with free page reporting), the current guest kernel, whose agent drops
//!   caches and compacts once the VM is idle;
//! - `silo_today` (with `--baseline-kernel`, e.g. the previous build's
//!   vmlinux without a balloon driver): what an idle VM held before;
//! - `silo_small_oN` (with `--small-pages-orders N,...`): silo-vmm with
//!   `--small-pages` (guest RAM on 4 KiB host pages, 4 KiB discards) and
//!   the guest reporting free blocks of 2^N pages;
//! - `silo_huge_oN` (with `--huge-pages-orders N,...`): huge pages, the
//!   guest reporting free blocks of 2^N pages;
//! - `firecracker` (with `--firecracker`): the same kernel, initramfs and
//!   runtime image (virtio-pmem) under Firecracker with its balloon device
//!   (no inflation, `free_page_reporting: true`);
//! - `silo_reclaim` (with `--reclaim-after-s N`): `silo` jailed as the
//!   daemon runs it with idle reclaim, paged out to the host's swap (zram
//!   in the test host) once idle N s; its `held_kib` counts the compressed
//!   pool. Then the wake-up cost (`wake`): warm invoke p50 of a reclaimed
//!   environment against a normal warm invoke and a cold start
//!   ([`reclaim`]).
//!
//! Memory is read from the VMM process's `/proc/PID/smaps_rollup`: `Rss`
//! and `Pss` (guest RAM included; `Pss_File` is its share of the pmem
//! image's page cache), `Pss_Anon`, `AnonHugePages`; `held_kib` is `Pss`
//! plus, for `silo_reclaim`, zram's compressed pool. Only `silo_reclaim`
//! is jailed (its figures: the jailer's and the VMM's, summed). Without hardware KVM it runs inside the KVM test host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_daemon::vm_env::{VmEnv, VmSpec};
use silo_images::placement::{
    between_markers, run_checked, run_here_or_in_test_host, test_host_with_this_program,
};
use silo_images::runtime::RuntimeImage;
use silo_proto::{AgentConfig, Message, Outcome};

use crate::guest_files::{GuestFileArgs, GuestFiles};

mod firecracker;
mod reclaim;
mod summary;
use firecracker::boot_firecracker;
use summary::{boot_summary, summary};

/// Flags for `silo-bench bench-idle-memory`.
#[derive(clap::Args, Debug)]
pub struct IdleMemoryArgs {
    /// Runtimes: `python3.11`, `nodejs22.x`, `provided.al2023` (the Rust counter).
    #[arg(long, value_delimiter = ',', default_value = "python3.11")]
    runtimes: Vec<String>,
    /// Guest memory sizes, MiB.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    mem_mib: Vec<u32>,
    /// Idle times to measure at, seconds since the first invoke's answer.
    #[arg(long, value_delimiter = ',', default_value = "60,300,900")]
    idle_s: Vec<u64>,
    /// A baseline guest kernel (today's, without a balloon driver): adds
    /// the `silo_today` variant.
    #[arg(long)]
    baseline_kernel: Option<PathBuf>,
    /// Firecracker's binary: adds the `firecracker` variant.
    #[arg(long)]
    firecracker: Option<PathBuf>,
    /// Variants on 4 KiB host pages, one per guest reporting order.
    #[arg(long, value_delimiter = ',')]
    small_pages_orders: Vec<u8>,
    /// Variants on huge pages, one per guest reporting order.
    #[arg(long, value_delimiter = ',')]
    huge_pages_orders: Vec<u8>,
    /// Adds `silo_reclaim`: paged out once idle this many seconds.
    #[arg(long)]
    reclaim_after_s: Option<u64>,
    /// With `--reclaim-after-s`: invokes per kind for the wake-up cost
    /// (warm, reclaimed); cold starts: a third as many, at least 3.
    #[arg(long, default_value = "10")]
    wake_rounds: usize,
    /// Extra boots per silo variant, timed (agent hello) and shut down,
    /// for the boot cost of each variant in the same run.
    #[arg(long, default_value = "0")]
    boots: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-idle-memory.json")]
    out: PathBuf,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    #[command(flatten)]
    guest: GuestFileArgs,
    /// Directory holding `<runtime>/rt.img` (set by the harness in the
    /// test host).
    #[arg(long, hide = true)]
    runtime_root: Option<PathBuf>,
}

/// Runs the benchmark.
pub fn run(args: IdleMemoryArgs) -> ExitCode {
    crate::exit_code("silo bench-idle-memory", run_inner(args))
}

pub(crate) fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn managed(runtime: &str) -> bool {
    runtime != "provided.al2023"
}

fn run_inner(args: IdleMemoryArgs) -> Result<(), String> {
    for r in &args.runtimes {
        if !["python3.11", "nodejs22.x", "provided.al2023"].contains(&r.as_str()) {
            return Err(format!("unknown runtime {r}"));
        }
    }
    let files = args.guest.resolve()?;
    let images = args
        .runtimes
        .iter()
        .filter(|r| managed(r))
        .map(|r| {
            let img = match &args.runtime_root {
                Some(root) => RuntimeImage::at(r, root.join(r)),
                None => silo_images::runtime::runtime_image(r).map_err(e)?,
            };
            Ok((r.clone(), img))
        })
        .collect::<Result<Vec<_>, String>>()?;
    run_here_or_in_test_host(
        args.here,
        || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(e)?;
            let results = rt.block_on(measure(&args, &files, &images))?;
            write_results(&args.out, &results)
        },
        || in_test_host(&args, &files, &images),
    )
}

fn write_results(out: &Path, results: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(results).map_err(e)?;
    std::fs::write(out, &text).map_err(|x| format!("{}: {x}", out.display()))?;
    println!("{text}");
    Ok(())
}

fn in_test_host(
    args: &IdleMemoryArgs,
    files: &GuestFiles,
    images: &[(String, RuntimeImage)],
) -> Result<(), String> {
    eprintln!("[idle-memory] no hardware KVM here: running inside the KVM test host");
    let longest = args.idle_s.iter().max().copied().unwrap_or(0);
    let mut host = test_host_with_this_program()
        .map_err(e)?
        .memory_mib(3072)
        .timeout(Duration::from_secs(1800 + longest));
    host = files.copied_into(host, "kernel");
    for (name, img) in images {
        let src = img
            .shared_image()
            .ok_or_else(|| format!("{name}: no rt.img"))?;
        host = host.file(src, &format!("/work/rt/{name}/rt.img"), 0o644);
    }
    let mut extra = String::new();
    let orders = |v: &[u8]| v.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    if !args.small_pages_orders.is_empty() {
        extra += &format!(" --small-pages-orders {}", orders(&args.small_pages_orders));
    }
    if !args.huge_pages_orders.is_empty() {
        extra += &format!(" --huge-pages-orders {}", orders(&args.huge_pages_orders));
    }
    if args.boots > 0 {
        extra += &format!(" --boots {}", args.boots);
    }
    let mut setup = String::new();
    if let Some(after) = args.reclaim_after_s {
        for (path, name) in silo_images::testhost::swap_files().map_err(e)? {
            host = host.file(path, &format!("/work/swap/{name}"), 0o644);
        }
        setup = silo_images::testhost::zram_swap_script("/work/swap");
        extra += &format!(
            " --reclaim-after-s {after} --wake-rounds {}",
            args.wake_rounds
        );
    }
    if let Some(b) = &args.baseline_kernel {
        host = host.file(b, "/work/baseline-kernel", 0o644);
        extra += " --baseline-kernel baseline-kernel";
    }
    if let Some(fc) = &args.firecracker {
        host = host
            .binary_with_libs(fc, "/bin/peer-firecracker")
            .map_err(e)?;
        extra += " --firecracker /bin/peer-firecracker";
    }
    let list = |v: &[String]| v.join(",");
    let nums = |v: Vec<String>| v.join(",");
    let cmd = format!(
        "{setup}SILO_LOG=warn silo bench-idle-memory --here --kernel kernel --agent agent --function counter \
         --runtime-root rt --runtimes {} --mem-mib {} --idle-s {}{extra} --out r.json \
         && echo IDLE_JSON_BEGIN && cat r.json && echo IDLE_JSON_END",
        list(&args.runtimes),
        nums(args.mem_mib.iter().map(u32::to_string).collect()),
        nums(args.idle_s.iter().map(u64::to_string).collect()),
    );
    let out = run_checked(&host, "the idle memory benchmark", &cmd).map_err(e)?;
    let text = between_markers(&out.output, "IDLE_JSON_BEGIN", "IDLE_JSON_END")
        .ok_or("no results in the test host output")?;
    let mut results: Value =
        serde_json::from_str(&text).map_err(|x| format!("results from the test host: {x}"))?;
    results["host"] = json!(crate::boot::TEST_HOST);
    write_results(&args.out, &results)
}

/// The initramfs of `runtime` (agent, settings, the function's zip).
fn initramfs(
    dir: &Path,
    runtime: &str,
    mem_mib: u32,
    files: &GuestFiles,
) -> Result<PathBuf, String> {
    let config = AgentConfig {
        function_name: "idle".into(),
        handler: match runtime {
            "python3.11" => "lambda_function.lambda_handler".into(),
            "nodejs22.x" => "index.handler".into(),
            _ => "bootstrap".into(),
        },
        memory_mib: mem_mib,
        timeout_s: 120,
        ..AgentConfig::default()
    };
    let image = match runtime {
        "python3.11" | "nodejs22.x" => {
            let (file, code) = if runtime == "python3.11" {
                ("lambda_function.py", crate::python::LAUNCH_POST_PY)
            } else {
                ("index.js", crate::python::LAUNCH_POST_JS)
            };
            let zip = silo_initramfs::package::make_zip(&[(file, 0o644, code.as_bytes())]);
            silo_initramfs::image::build_managed(&files.agent, &config, &zip)
        }
        _ => {
            let code = std::fs::read(&files.function).map_err(e)?;
            let zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
            silo_initramfs::image::build(&files.agent, &config, &zip)
        }
    }
    .map_err(e)?;
    let path = dir.join(format!("{runtime}-{mem_mib}.cpio"));
    std::fs::write(&path, image).map_err(e)?;
    Ok(path)
}

pub(crate) fn invoke_msg(n: usize) -> Message {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Message::Invoke {
        request_id: format!("idle-{n}"),
        tenant_id: Some("tenant-A".into()),
        deadline_unix_ms: now + 120_000,
        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:idle".into(),
        trace_id: "Root=1-0-0".into(),
        payload: b"{}".to_vec(),
    }
}

/// `Rss`, `Pss`, `Pss_Anon`, `Pss_File`, `AnonHugePages` of `pid`, KiB.
fn smaps_rollup(pid: u32) -> Result<Value, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|x| format!("smaps_rollup of {pid}: {x}"))?;
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            let k = k.trim_end_matches(':');
            if ["Rss", "Pss", "Pss_Anon", "Pss_File", "AnonHugePages"].contains(&k) {
                out.insert(
                    format!("{}_kib", k.to_lowercase()),
                    json!(v.parse::<u64>().ok()),
                );
            }
        }
    }
    Ok(Value::Object(out))
}

/// One idle VM of a variant (a handful per run: their size does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Vm {
    Silo(VmEnv),
    Firecracker {
        child: tokio::process::Child,
        _conn: tokio::net::UnixStream,
        dir: PathBuf,
    },
}

impl Vm {
    fn pid(&self) -> Option<u32> {
        match self {
            Vm::Silo(env) => env.vmm_pid(),
            Vm::Firecracker { child, .. } => child.id(),
        }
    }

    async fn stop(self) {
        match self {
            Vm::Silo(env) => env.shutdown().await,
            Vm::Firecracker { mut child, dir, .. } => {
                let _ = child.kill().await;
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Boots silo-vmm (as the daemon does: `--balloon`) and answers one invoke.
async fn boot_silo(spec: &VmSpec, dir: &Path, n: usize) -> Result<Vm, String> {
    let mut env = VmEnv::boot(spec, dir).await.map_err(e)?;
    eprintln!(
        "[idle-memory] boot {n}: agent ready in {:.1} ms",
        env.boot.timeline.agent_ready_ms
    );
    let r = env
        .invoke(invoke_msg(n), Duration::from_secs(120))
        .await
        .map_err(e)?;
    if let Outcome::Err(x) = &r.outcome {
        return Err(format!("silo VM: first invoke failed: {x:?}"));
    }
    Ok(Vm::Silo(env))
}

async fn measure(
    args: &IdleMemoryArgs,
    files: &GuestFiles,
    images: &[(String, RuntimeImage)],
) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench-idle");
    std::fs::create_dir_all(&dir).map_err(e)?;
    let mut idle = args.idle_s.clone();
    idle.sort_unstable();
    // (label, variant, VM, answered at)
    let mut vms: Vec<(String, &'static str, Vm, Instant)> = Vec::new();
    let mut n = 0;
    let mut boot_ms: Vec<Value> = Vec::new();
    let mut cold_specs: Vec<(String, VmSpec)> = Vec::new();
    for runtime in &args.runtimes {
        let pmem = images
            .iter()
            .find(|(r, _)| r == runtime)
            .and_then(|(_, i)| i.shared_image());
        for &mem_mib in &args.mem_mib {
            let initrd = initramfs(&dir, runtime, mem_mib, files)?;
            let spec = VmSpec {
                kernel: files.kernel.clone(),
                initrd,
                mem_mib,
                vcpus: 1,
                boot_timeout: Duration::from_secs(300),
                pmem: pmem.clone(),
                jail: silo_daemon::jail::JailMode::Insecure,
                console_bytes: silo_daemon::console::DEFAULT_CONSOLE_BYTES,
                memory: Default::default(),
            };
            let label = format!("{runtime}/{mem_mib}");
            n += 1;
            let vm = boot_silo(&spec, &dir, n).await?;
            vms.push((label.clone(), "silo", vm, Instant::now()));
            eprintln!("[idle-memory] {label}: silo VM up");
            if let Some(after) = args.reclaim_after_s {
                let s = reclaim::reclaim_spec(&spec, after)?;
                n += 1;
                let vm = boot_silo(&s, &dir, n).await?;
                vms.push((label.clone(), "silo_reclaim", vm, Instant::now()));
                cold_specs.push((label.clone(), s));
                eprintln!("[idle-memory] {label}: silo_reclaim VM up (jailed, swap allowed)");
            }
            if let Some(b) = &args.baseline_kernel {
                let spec = VmSpec {
                    kernel: b.clone(),
                    ..spec.clone()
                };
                n += 1;
                let vm = boot_silo(&spec, &dir, n).await?;
                vms.push((label.clone(), "silo_today", vm, Instant::now()));
                eprintln!("[idle-memory] {label}: silo VM with the baseline kernel up");
            }
            let mut variants: Vec<(&'static str, VmSpec)> = vec![("silo", spec.clone())];
            for (small, orders) in [
                (true, &args.small_pages_orders),
                (false, &args.huge_pages_orders),
            ] {
                for &order in orders {
                    let mut s = spec.clone();
                    s.memory = silo_daemon::vm_env::GuestMemoryMode {
                        small_pages: small,
                        report_order: Some(order),
                    };
                    let name = format!("silo_{}_o{order}", if small { "small" } else { "huge" });
                    // A handful of names per run, for the run's lifetime.
                    variants.push((Box::leak(name.into_boxed_str()), s));
                }
            }
            for (variant, s) in &variants[1..] {
                n += 1;
                let vm = boot_silo(s, &dir, n).await?;
                vms.push((label.clone(), variant, vm, Instant::now()));
                eprintln!("[idle-memory] {label}: {variant} VM up");
            }
            for i in 0..args.boots {
                for (variant, s) in &variants {
                    let env = VmEnv::boot(s, &dir).await.map_err(e)?;
                    let ms = env.boot.timeline.agent_ready_ms;
                    env.shutdown().await;
                    eprintln!("[idle-memory] {label} {variant} boot {i}: {ms:.1} ms");
                    boot_ms.push(json!({"vm": label, "variant": variant, "agent_ready_ms": ms}));
                }
            }
            if let Some(fc) = &args.firecracker {
                n += 1;
                let vm = boot_firecracker(fc, &spec, &dir.join(format!("fc-{n}")), n).await?;
                vms.push((label.clone(), "firecracker", vm, Instant::now()));
                eprintln!("[idle-memory] {label}: Firecracker VM up");
            }
        }
    }
    // Right after each first invoke (measured now, all at once: each VM has
    // been idle since its own answer, the last one for ~0 s).
    let mut samples: Vec<Value> = Vec::new();
    let mut sample =
        |at: &str, vms: &[(String, &'static str, Vm, Instant)]| -> Result<(), String> {
            for (label, variant, vm, answered) in vms {
                let pid = vm.pid().ok_or("a VMM exited")?;
                // A jailed VM's pid is its jailer's: the VMM is below it.
                let mut m = json!({});
                for p in reclaim::process_tree(pid) {
                    let one = smaps_rollup(p)?;
                    for (k, v) in one.as_object().into_iter().flatten() {
                        m[k] = json!(m[k].as_u64().unwrap_or(0) + v.as_u64().unwrap_or(0));
                    }
                }
                if let Vm::Silo(env) = vm {
                    m["balloon"] = json!(env.balloon_counters());
                }
                m["held_kib"] = m["pss_kib"].clone();
                if *variant == "silo_reclaim" {
                    let pool = reclaim::zram_pool_bytes().unwrap_or(0) / 1024;
                    m["zram_pool_kib"] = json!(pool);
                    m["held_kib"] = json!(m["pss_kib"].as_u64().unwrap_or(0) + pool);
                    if let Some(cg) = reclaim::cgroup(vm) {
                        let read = |f: &str| {
                            std::fs::read_to_string(cg.join(f))
                                .ok()
                                .and_then(|t| t.trim().parse::<u64>().ok())
                                .map(|b| b / 1024)
                        };
                        m["memory_current_kib"] = json!(read("memory.current"));
                        m["swap_current_kib"] = json!(read("memory.swap.current"));
                    }
                }
                m["idle_s"] = json!(answered.elapsed().as_secs_f64().round());
                m["at"] = json!(at);
                m["vm"] = json!(label);
                m["variant"] = json!(variant);
                eprintln!("[idle-memory] {at}: {m}");
                samples.push(m);
            }
            Ok(())
        };
    sample("after_first_invoke", &vms)?;
    let start = Instant::now();
    let mut reclaims: Vec<Value> = Vec::new();
    let mut pending = args.reclaim_after_s;
    for s in &idle {
        if let Some(after) = pending.filter(|a| a <= s) {
            if let Some(wait) = Duration::from_secs(after).checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            for (label, variant, vm, _) in &vms {
                if *variant == "silo_reclaim" {
                    let mut r = reclaim::page_out(vm)?;
                    r["vm"] = json!(label);
                    eprintln!("[idle-memory] paged out at {after} s idle: {r}");
                    reclaims.push(r);
                }
            }
            pending = None;
        }
        let until = Duration::from_secs(*s);
        if let Some(wait) = until.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        sample(&format!("idle_{s}s"), &vms)?;
    }
    let mut wake = serde_json::Map::new();
    for (label, cold) in &cold_specs {
        let at = |v: &str| vms.iter().position(|(l, x, _, _)| l == label && *x == v);
        let (Some(w), Some(r)) = (at("silo"), at("silo_reclaim")) else {
            continue;
        };
        let (lo, hi) = (w.min(r), w.max(r));
        let (a, b) = vms.split_at_mut(hi);
        let (first, second) = (&mut a[lo].2, &mut b[0].2);
        let (warm, reclaimed) = if w < r {
            (first, second)
        } else {
            (second, first)
        };
        let rounds = args.wake_rounds.max(1);
        let costs =
            reclaim::wake_costs(warm, reclaimed, cold, &dir, rounds, (rounds / 3).max(3)).await?;
        eprintln!("[idle-memory] {label} wake-up cost: {costs}");
        wake.insert(label.clone(), costs);
    }
    for (_, _, vm, _) in vms {
        vm.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "what": "host memory held by one idle function VM (VMM process, guest RAM included, smaps_rollup), KiB",
        "runtimes": args.runtimes,
        "mem_mib": args.mem_mib,
        "idle_s": idle,
        "delivery": "managed runtimes: one read-only runtime image over virtio-pmem (DAX), as the daemon does",
        "variants": {
            "silo": "silo-vmm --balloon (free page reporting), current kernel, agent reclaims when idle",
            "silo_today": args.baseline_kernel.as_ref().map(|k| format!("silo-vmm, baseline kernel {} (no balloon driver)", k.display())),
            "firecracker": args.firecracker.as_ref().map(|_| "Firecracker, balloon with free_page_reporting, same kernel, initramfs and pmem image"),
            "silo_reclaim": args.reclaim_after_s.map(|a| format!("silo, jailed, paged out to the host's swap (zram) at {a} s idle; held_kib = Pss + zram's compressed pool")),
        },
        "reclaims": reclaims,
        "wake": wake,
        "summary": summary(&samples),
        "boots": boot_summary(&boot_ms),
        "boot_samples": boot_ms,
        "samples": samples,
    }))
}
