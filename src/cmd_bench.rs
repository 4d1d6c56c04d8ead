//! `silo bench`: cold boots of silo's VMM side by side with a peer VMM (QEMU
//! `-M microvm` by default) on the same kernel and initramfs, interleaved;
//! warm invoke round trips through a VM against the same agent in host mode
//! over a Unix socket; the VMM's memory overhead. Results as JSON and an SVG
//! plot. Without hardware KVM it runs inside the KVM test host, where times
//! are emulated: read the ratios.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use silo_proto::{AgentConfig, Message, Outcome};

/// Flags for `silo bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Cold boots per VMM.
    #[arg(long, default_value_t = 5)]
    boots: usize,
    /// Warm invocations per environment.
    #[arg(long, default_value_t = 200)]
    invokes: usize,
    /// VMs booted at once to measure environment creations per second.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "bench-results.svg")]
    plot: PathBuf,
    /// Peer VMM binary (QEMU-compatible command line).
    #[arg(long, default_value = "qemu-system-x86_64")]
    peer: String,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    /// Guest kernel (default: silo's bzImage, which both VMMs can boot).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Busybox guest initramfs that prints its uptime and reboots.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Static guest agent.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Counter function binary.
    #[arg(long)]
    function: Option<PathBuf>,
    /// Directory holding the peer's firmware (qboot as bios-microvm.bin).
    #[arg(long)]
    peer_firmware: Option<PathBuf>,
    /// How to drive the peer: `qemu` (QEMU `-M microvm` command line) or
    /// `firecracker` (`--no-api --config-file`, booting the ELF vmlinux from
    /// --peer-kernel; bring your own Firecracker build).
    #[arg(long, default_value = "qemu", value_parser = ["qemu", "firecracker"])]
    peer_kind: String,
    /// Kernel for the peer [default: the bench kernel for qemu, silo's ELF
    /// vmlinux for firecracker].
    #[arg(long)]
    peer_kernel: Option<PathBuf>,
    /// Invocations in flight at once for the concurrent warm invokes (one
    /// VM, or one host-mode agent, per slot).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

const GUEST_INIT: &str = r#"
/bin/busybox mount -t proc proc /proc
echo "SILO_GUEST_INIT uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox reboot -f
"#;
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 pci=off tsc=reliable no_timer_check quiet";

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: BenchArgs) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => {
            silo_images::kernel::guest_kernel()
                .map_err(|x| e(&x))?
                .bz_image
        }
    };
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => silo_images::artifacts::guest_agent().map_err(|x| e(&x))?,
    };
    let function = match &args.function {
        Some(f) => f.clone(),
        None => silo_images::artifacts::counter_function().map_err(|x| e(&x))?,
    };
    let abs = |p: PathBuf| std::fs::canonicalize(&p).map_err(|x| format!("{}: {x}", p.display()));
    let (kernel, agent, function) = (abs(kernel)?, abs(agent)?, abs(function)?);
    let peer_kernel = match (&args.peer_kernel, args.peer_kind.as_str()) {
        (Some(k), _) => abs(k.clone())?,
        (None, "firecracker") => {
            silo_images::kernel::guest_kernel()
                .map_err(|x| e(&x))?
                .vmlinux
        }
        (None, _) => kernel.clone(),
    };
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if !args.here && !silo_images::testhost::hardware_kvm_usable() {
        return in_test_host(&args, &kernel, &peer_kernel, &agent, &function);
    }
    let initrd = match &args.initrd {
        Some(i) => i.clone(),
        None => {
            let p =
                std::env::temp_dir().join(format!("silo-bench-guest-{}.cpio", std::process::id()));
            let img = silo_images::guest::busybox_initramfs(GUEST_INIT).map_err(|x| e(&x))?;
            std::fs::write(&p, img).map_err(|x| e(&x))?;
            p
        }
    };
    let mut results = json!({
        "host": if silo_images::testhost::hardware_kvm_usable() { "hardware KVM" } else { "KVM test host (emulated: compare ratios)" },
        "boots": args.boots, "invokes": args.invokes, "peer": args.peer, "peer_kind": args.peer_kind,
        "concurrency": args.concurrency,
    });
    eprintln!(
        "[bench] {} interleaved cold boots each: silo vs {}",
        args.boots, args.peer
    );
    let (silo, peer) = cold_boots(&args, &kernel, &peer_kernel, &initrd)?;
    results["cold_boot"] = json!({ "silo": silo, "peer": peer });
    eprintln!("[bench] warm invokes: VM over vsock vs host-mode agent over a Unix socket");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|x| e(&x))?;
    eprintln!(
        "[bench] {} function VM cold boots: every phase to the first invocation",
        args.boots
    );
    results["function_vm_timeline"] =
        rt.block_on(function_timelines(args.boots, &kernel, &agent, &function))?;
    results["warm_invoke"] = rt.block_on(warm_invokes(&args, &kernel, &agent, &function))?;
    eprintln!(
        "[bench] warm invokes, {} in flight: VMs vs host-mode agents",
        args.concurrency
    );
    results["warm_invoke_concurrent"] =
        rt.block_on(concurrent_invokes(&args, &kernel, &agent, &function))?;
    eprintln!("[bench] {} function VMs created at once", args.parallel);
    results["creations"] = rt.block_on(creations(args.parallel, &kernel, &agent, &function))?;
    let text = serde_json::to_string_pretty(&results).map_err(|x| e(&x))?;
    std::fs::write(&args.out, &text).map_err(|x| format!("{}: {x}", args.out.display()))?;
    std::fs::write(&args.plot, svg(&results))
        .map_err(|x| format!("{}: {x}", args.plot.display()))?;
    println!("{text}");
    println!(
        "BENCH_RESULTS_WRITTEN {} {}",
        args.out.display(),
        args.plot.display()
    );
    Ok(())
}

fn in_test_host(
    args: &BenchArgs,
    kernel: &Path,
    peer_kernel: &Path,
    agent: &Path,
    function: &Path,
) -> Result<(), String> {
    eprintln!(
        "[bench] no hardware KVM here: running inside the KVM test host (emulated; ratios only)"
    );
    let silo = std::env::current_exe().map_err(|e| e.to_string())?;
    let peer = which(&args.peer).ok_or_else(|| {
        format!(
            "peer VMM {} not found (apt-get install qemu-system-x86)",
            args.peer
        )
    })?;
    let initrd = silo_images::guest::busybox_initramfs(GUEST_INIT).map_err(|e| e.to_string())?;
    let host = silo_images::testhost::TestHost::new()
        .timeout(Duration::from_secs(1800))
        .binary_with_libs(&silo, "/bin/silo")
        .map_err(|e| e.to_string())?
        .binary_with_libs(&peer, "/bin/peer-vmm")
        .map_err(|e| e.to_string())?
        .file(
            "/usr/share/qemu/qboot.rom",
            "/work/fw/bios-microvm.bin",
            0o644,
        )
        .file(kernel, "/work/bzImage", 0o644)
        .file(peer_kernel, "/work/peer-kernel", 0o644)
        .file(agent, "/work/agent", 0o755)
        .file(function, "/work/counter", 0o755)
        .bytes("/work/guest.cpio", initrd, 0o644);
    let cmd = format!(
        "SILO_LOG=warn silo bench --here --boots {} --invokes {} --peer /bin/peer-vmm --peer-firmware fw \
         --peer-kind {} --peer-kernel peer-kernel --concurrency {} \
         --parallel {} --kernel bzImage --initrd guest.cpio --agent agent --function counter --out r.json --plot r.svg \
         && echo BENCH_JSON_BEGIN && cat r.json && echo BENCH_JSON_END && echo BENCH_SVG_BEGIN && cat r.svg && echo BENCH_SVG_END",
        args.boots, args.invokes, args.peer_kind, args.concurrency, args.parallel
    );
    let out = host.run(&cmd).map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "the benchmark failed in the test host (exit {})",
            out.exit_code
        ));
    }
    let section = |a: &str, b: &str| -> Option<String> {
        let s = out.output.split_once(a)?.1;
        Some(s.split_once(b)?.0.trim().to_string())
    };
    let json_text = section("BENCH_JSON_BEGIN", "BENCH_JSON_END")
        .ok_or("no results in the test host output")?;
    let svg_text = section("BENCH_SVG_BEGIN", "BENCH_SVG_END").unwrap_or_default();
    std::fs::write(&args.out, &json_text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    std::fs::write(&args.plot, svg_text).map_err(|e| format!("{}: {e}", args.plot.display()))?;
    println!(
        "results: {} and {}",
        args.out.display(),
        args.plot.display()
    );
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn parse_uptime_ms(out: &str) -> Option<f64> {
    let v = out.split("SILO_GUEST_INIT uptime=").nth(1)?;
    v.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .map(|s| s * 1000.0)
}

fn stats(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    json!({"n": v.len(), "min": v[0], "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": v[v.len() - 1]})
}

/// The peer VMM's command line for one boot of `kernel` + `initrd` with
/// the same memory, vCPUs and kernel command line as silo.
fn peer_command(args: &BenchArgs, kernel: &Path, initrd: &Path) -> Result<Command, String> {
    let mut cmd = Command::new(&args.peer);
    if args.peer_kind == "firecracker" {
        // Firecracker's documented `--no-api --config-file` boot: the
        // guest's serial console goes to stdout; `reboot=k` makes the
        // guest's reboot (an i8042 reset) end the process.
        let config = json!({
            "boot-source": {
                "kernel_image_path": kernel,
                "initrd_path": initrd,
                "boot_args": CMDLINE.replace("reboot=t", "reboot=k"),
            },
            "drives": [],
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        });
        let path = std::env::temp_dir().join(format!("silo-bench-fc-{}.json", std::process::id()));
        std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
        cmd.args(["--no-api", "--config-file"]).arg(&path);
    } else {
        cmd.args([
            "-M",
            "microvm",
            "-enable-kvm",
            "-cpu",
            "host",
            "-m",
            "128",
            "-smp",
            "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", CMDLINE]);
        if let Some(fw) = &args.peer_firmware {
            cmd.arg("-L").arg(fw);
        }
    }
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

fn cold_boots(
    args: &BenchArgs,
    kernel: &Path,
    peer_kernel: &Path,
    initrd: &Path,
) -> Result<(Value, Value), String> {
    let silo = std::env::current_exe().map_err(|e| e.to_string())?;
    let (mut s_wall, mut s_guest, mut s_first_run, mut s_loaded) = (vec![], vec![], vec![], vec![]);
    let (mut p_wall, mut p_guest) = (vec![], vec![]);
    for i in 0..args.boots {
        // silo
        let t = Instant::now();
        let out = Command::new(&silo)
            .args([
                "vmm",
                "--timeline",
                "--mem-mib",
                "128",
                "--cmdline",
                CMDLINE,
                "--kernel",
            ])
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .env("SILO_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let uptime = parse_uptime_ms(&text)
            .ok_or_else(|| format!("silo boot {i} printed no marker:\n{text}"))?;
        s_wall.push(wall);
        s_guest.push(uptime);
        if let Some(tl) = text
            .split("SILO_TIMELINE ")
            .nth(1)
            .and_then(|l| l.lines().next())
        {
            if let Ok(v) = serde_json::from_str::<Value>(tl) {
                if let Some(x) = v["first_kvm_run_us"].as_f64() {
                    s_first_run.push(x / 1e3);
                }
                if let Some(x) = v["kernel_loaded_us"].as_f64() {
                    s_loaded.push(x / 1e3);
                }
            }
        }
        // peer
        let t = Instant::now();
        let mut cmd = peer_command(args, peer_kernel, initrd)?;
        let out = cmd
            .output()
            .map_err(|e| format!("peer {}: {e}", args.peer))?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let uptime = parse_uptime_ms(&text)
            .ok_or_else(|| format!("peer boot {i} printed no marker:\n{text}"))?;
        p_wall.push(wall);
        p_guest.push(uptime);
        eprintln!("[bench] boot {}: silo {:.0} ms (guest init at {:.0} ms), peer {:.0} ms (guest init at {:.0} ms)", i + 1, s_wall[i], s_guest[i], p_wall[i], p_guest[i]);
    }
    let ratio = |a: &[f64], b: &[f64]| {
        let (a, b) = (median(a), median(b));
        if b > 0.0 {
            a / b
        } else {
            f64::NAN
        }
    };
    let silo = json!({
        "process_to_exit_ms": stats(s_wall.clone()),
        "guest_uptime_at_init_ms": stats(s_guest.clone()),
        "vmm_process_start_to_kernel_loaded_ms": stats(s_loaded),
        "vmm_process_start_to_first_kvm_run_ms": stats(s_first_run),
        "ratio_to_peer": {
            "process_to_exit": ratio(&s_wall, &p_wall),
            "guest_uptime_at_init": ratio(&s_guest, &p_guest),
        }
    });
    let peer = json!({
        "process_to_exit_ms": stats(p_wall),
        "guest_uptime_at_init_ms": stats(p_guest),
    });
    Ok((silo, peer))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn invoke_msg(n: usize) -> Message {
    Message::Invoke {
        request_id: format!("bench-{n}"),
        tenant_id: Some("bench".into()),
        deadline_unix_ms: now_ms() + 10_000,
        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:counter".into(),
        trace_id: "Root=1-0-0".into(),
        payload: b"{}".to_vec(),
    }
}

async fn warm_invokes(
    args: &BenchArgs,
    kernel: &Path,
    agent: &Path,
    function: &Path,
) -> Result<Value, String> {
    let dir = std::env::temp_dir().join(format!("silo-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("task")).map_err(|e| e.to_string())?;
    std::fs::copy(function, dir.join("task/bootstrap")).map_err(|e| e.to_string())?;
    let code = std::fs::read(function).map_err(|e| e.to_string())?;
    let package = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let config = AgentConfig {
        timeout_s: 10,
        ..AgentConfig::default()
    };

    // The VM.
    let image =
        silo_initramfs::image::build(agent, &config, &package).map_err(|e| e.to_string())?;
    let initrd = dir.join("function.cpio");
    std::fs::write(&initrd, image).map_err(|e| e.to_string())?;
    let spec = crate::vm_env::VmSpec {
        kernel: kernel.to_path_buf(),
        initrd,
        mem_mib: 128,
        vcpus: 1,
        boot_timeout: Duration::from_secs(120),
    };
    let mut env = crate::vm_env::VmEnv::boot(&spec, &dir)
        .await
        .map_err(|e| e.to_string())?;
    let boot = env.boot;
    let overhead = env.vmm_memory_overhead_kib(128);
    let mut vm = Vec::with_capacity(args.invokes);
    for n in 0..args.invokes {
        let r = env
            .invoke(invoke_msg(n), Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(r.outcome, Outcome::Ok(_)) {
            return Err(format!("VM invoke {n} failed: {:?}", r.outcome));
        }
        vm.push(r.duration.as_secs_f64() * 1e3);
    }
    env.shutdown().await;

    // The same agent and function on the host, over a Unix socket.
    let mut host_cfg = config.clone();
    host_cfg.task_root = dir.join("task").display().to_string();
    host_cfg
        .environment
        .insert("TMPDIR".into(), dir.display().to_string());
    std::fs::write(
        dir.join("agent.json"),
        serde_json::to_vec(&host_cfg).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let sock = dir.join("host-agent.sock");
    let listener = UnixListener::bind(&sock).map_err(|e| e.to_string())?;
    let mut child = Command::new(agent)
        .args(["--host-mode", "--api-addr", "127.0.0.1:9109", "--config"])
        .arg(dir.join("agent.json"))
        .arg("--connect-unix")
        .arg(&sock)
        .spawn()
        .map_err(|e| format!("host-mode agent: {e}"))?;
    let (mut conn, _): (UnixStream, _) = listener.accept().map_err(|e| e.to_string())?;
    silo_proto::read_message(&mut conn).map_err(|e| e.to_string())?;
    let mut host = Vec::with_capacity(args.invokes);
    for n in 0..args.invokes {
        let t = Instant::now();
        silo_proto::write_message(&mut conn, &invoke_msg(n)).map_err(|e| e.to_string())?;
        loop {
            match silo_proto::read_message(&mut conn).map_err(|e| e.to_string())? {
                Message::Result {
                    outcome: Outcome::Ok(_),
                    ..
                } => break,
                Message::Result { outcome, .. } => {
                    return Err(format!("host-mode invoke failed: {outcome:?}"))
                }
                _ => {}
            }
        }
        host.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = silo_proto::write_message(&mut conn, &Message::Shutdown);
    let _ = child.wait();
    conn.flush().ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "vm_over_vsock_ms": stats(vm.clone()),
        "host_mode_unix_socket_ms": stats(host.clone()),
        "ratio_p50": median(&vm) / median(&host),
        "samples_ms": { "vm": vm, "host_mode": host },
        "vm_spawn_to_agent_ready_ms": boot.spawn_to_ready.as_secs_f64() * 1e3,
        "guest_uptime_at_agent_start_ms": boot.guest.kernel_uptime_at_agent_start_ns as f64 / 1e6,
        "guest_uptime_at_agent_ready_ms": boot.guest.kernel_uptime_at_ready_ns as f64 / 1e6,
        "vmm_memory_overhead_kib": overhead,
    }))
}

/// Boots `n` function VMs concurrently (to agent hello) and reports
/// environment creations per second, then shuts them all down.
async fn creations(
    n: usize,
    kernel: &Path,
    agent: &Path,
    function: &Path,
) -> Result<Value, String> {
    let dir = std::env::temp_dir().join(format!("silo-bench-create-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let code = std::fs::read(function).map_err(|e| e.to_string())?;
    let package = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let image = silo_initramfs::image::build(agent, &AgentConfig::default(), &package)
        .map_err(|e| e.to_string())?;
    let initrd = dir.join("function.cpio");
    std::fs::write(&initrd, image).map_err(|e| e.to_string())?;
    let spec = crate::vm_env::VmSpec {
        kernel: kernel.to_path_buf(),
        initrd,
        mem_mib: 128,
        vcpus: 1,
        boot_timeout: Duration::from_secs(300),
    };
    let started = Instant::now();
    let boots = (0..n.max(1)).map(|_| crate::vm_env::VmEnv::boot(&spec, &dir));
    let mut envs = Vec::new();
    let mut ready_ms = Vec::new();
    for r in futures_join(boots).await {
        let env = r.map_err(|e| e.to_string())?;
        ready_ms.push(env.boot.spawn_to_ready.as_secs_f64() * 1e3);
        envs.push(env);
    }
    let wall = started.elapsed().as_secs_f64();
    for env in envs {
        env.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "parallel": n.max(1),
        "wall_s": wall,
        "creations_per_second": n.max(1) as f64 / wall,
        "spawn_to_ready_ms": stats(ready_ms),
    }))
}

/// Polls all futures to completion concurrently on the current task.
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("completed")).collect()
}

/// The phases of a function VM's start, in the order they happen.
pub const PHASES: [&str; 7] = [
    "vmm_process_start_ms",
    "kernel_loaded_ms",
    "vm_created_ms",
    "first_kvm_run_ms",
    "guest_init_ms",
    "agent_ready_ms",
    "first_invocation_answered_ms",
];

/// A function VM image of the counter in `dir`.
fn function_spec(
    dir: &Path,
    kernel: &Path,
    agent: &Path,
    function: &Path,
) -> Result<crate::vm_env::VmSpec, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let code = std::fs::read(function).map_err(|e| e.to_string())?;
    let package = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let config = AgentConfig {
        timeout_s: 10,
        ..AgentConfig::default()
    };
    let image =
        silo_initramfs::image::build(agent, &config, &package).map_err(|e| e.to_string())?;
    let initrd = dir.join("function.cpio");
    std::fs::write(&initrd, image).map_err(|e| e.to_string())?;
    Ok(crate::vm_env::VmSpec {
        kernel: kernel.to_path_buf(),
        initrd,
        mem_mib: 128,
        vcpus: 1,
        boot_timeout: Duration::from_secs(300),
    })
}

/// `n` function VMs booted one after another, each to its first invocation:
/// every phase in one clock domain (ms since the VMM was spawned).
async fn function_timelines(
    n: usize,
    kernel: &Path,
    agent: &Path,
    function: &Path,
) -> Result<Value, String> {
    let dir = std::env::temp_dir().join(format!("silo-bench-timeline-{}", std::process::id()));
    let spec = function_spec(&dir, kernel, agent, function)?;
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    for i in 0..n.max(1) {
        let mut env = crate::vm_env::VmEnv::boot(&spec, &dir)
            .await
            .map_err(|e| e.to_string())?;
        let r = env
            .invoke(invoke_msg(i), Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(r.outcome, Outcome::Ok(_)) {
            return Err(format!(
                "first invocation of VM {i} failed: {:?}",
                r.outcome
            ));
        }
        let t = serde_json::to_value(env.boot.timeline).map_err(|e| e.to_string())?;
        env.shutdown().await;
        for (k, v) in PHASES.iter().zip(phases.iter_mut()) {
            let x = t[k]
                .as_f64()
                .ok_or_else(|| format!("VM {i}: phase {k} missing: {t}"))?;
            v.push(x);
        }
        eprintln!("[bench] function VM {}: {t}", i + 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = serde_json::Map::new();
    for (k, v) in PHASES.iter().zip(phases) {
        out.insert(k.to_string(), stats(v));
    }
    Ok(
        json!({ "clock": "host CLOCK_MONOTONIC, ms since the VMM process was spawned", "phases": out, "order": PHASES }),
    )
}

/// A host-mode agent (the peer for invokes) serving the counter from `dir`.
fn host_agent(
    dir: &Path,
    agent: &Path,
    function: &Path,
    slot: usize,
) -> Result<(std::process::Child, UnixStream), String> {
    let root = dir.join(format!("host-{slot}"));
    std::fs::create_dir_all(root.join("task")).map_err(|e| e.to_string())?;
    std::fs::copy(function, root.join("task/bootstrap")).map_err(|e| e.to_string())?;
    let mut cfg = AgentConfig {
        timeout_s: 10,
        ..AgentConfig::default()
    };
    cfg.task_root = root.join("task").display().to_string();
    cfg.environment
        .insert("TMPDIR".into(), root.display().to_string());
    std::fs::write(
        root.join("agent.json"),
        serde_json::to_vec(&cfg).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let sock = root.join("agent.sock");
    let listener = UnixListener::bind(&sock).map_err(|e| e.to_string())?;
    let child = Command::new(agent)
        .args([
            "--host-mode",
            "--api-addr",
            &format!("127.0.0.1:{}", 9200 + slot),
            "--config",
        ])
        .arg(root.join("agent.json"))
        .arg("--connect-unix")
        .arg(&sock)
        .spawn()
        .map_err(|e| format!("host-mode agent: {e}"))?;
    let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
    silo_proto::read_message(&mut conn).map_err(|e| e.to_string())?;
    Ok((child, conn))
}

/// One invoke on a host-mode agent; its round trip in ms.
fn host_invoke(conn: &mut UnixStream, n: usize) -> Result<f64, String> {
    let t = Instant::now();
    silo_proto::write_message(conn, &invoke_msg(n)).map_err(|e| e.to_string())?;
    loop {
        match silo_proto::read_message(conn).map_err(|e| e.to_string())? {
            Message::Result {
                outcome: Outcome::Ok(_),
                ..
            } => return Ok(t.elapsed().as_secs_f64() * 1e3),
            Message::Result { outcome, .. } => {
                return Err(format!("host-mode invoke failed: {outcome:?}"))
            }
            _ => {}
        }
    }
}

/// `args.invokes` warm invokes with `args.concurrency` in flight: against as
/// many VMs, and against as many host-mode agents.
async fn concurrent_invokes(
    args: &BenchArgs,
    kernel: &Path,
    agent: &Path,
    function: &Path,
) -> Result<Value, String> {
    let c = args.concurrency.max(1);
    let per_slot = (args.invokes / c).max(1);
    let dir = std::env::temp_dir().join(format!("silo-bench-conc-{}", std::process::id()));
    let spec = function_spec(&dir, kernel, agent, function)?;
    let boots = (0..c).map(|_| crate::vm_env::VmEnv::boot(&spec, &dir));
    let mut envs = Vec::new();
    for r in futures_join(boots).await {
        envs.push(r.map_err(|e| e.to_string())?);
    }
    let runs = envs.iter_mut().enumerate().map(|(slot, env)| async move {
        let mut lat = Vec::with_capacity(per_slot);
        for n in 0..per_slot {
            let r = env
                .invoke(invoke_msg(slot * per_slot + n), Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            if !matches!(r.outcome, Outcome::Ok(_)) {
                return Err(format!("VM invoke failed: {:?}", r.outcome));
            }
            lat.push(r.duration.as_secs_f64() * 1e3);
        }
        Ok::<_, String>(lat)
    });
    let started = Instant::now();
    let mut vm = Vec::new();
    for r in futures_join(runs).await {
        vm.extend(r?);
    }
    let vm_wall = started.elapsed().as_secs_f64();
    for env in envs {
        env.shutdown().await;
    }
    let mut agents = Vec::new();
    for slot in 0..c {
        agents.push(host_agent(&dir, agent, function, slot)?);
    }
    let started = Instant::now();
    let threads: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(slot, (child, mut conn))| {
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_slot);
                for n in 0..per_slot {
                    lat.push(host_invoke(&mut conn, slot * per_slot + n)?);
                }
                let _ = silo_proto::write_message(&mut conn, &Message::Shutdown);
                Ok::<_, String>((lat, child))
            })
        })
        .collect();
    let mut host = Vec::new();
    for t in threads {
        let (lat, mut child) = t
            .join()
            .map_err(|_| "host-mode thread panicked".to_string())??;
        host.extend(lat);
        let _ = child.wait();
    }
    let host_wall = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "concurrency": c,
        "vm_over_vsock_ms": stats(vm.clone()),
        "host_mode_unix_socket_ms": stats(host.clone()),
        "ratio_p50": median(&vm) / median(&host),
        "vm_invokes_per_second": vm.len() as f64 / vm_wall,
        "host_mode_invokes_per_second": host.len() as f64 / host_wall,
        "samples_ms": { "vm": vm, "host_mode": host },
    }))
}

/// The plot: p50 bars of each compared pair, a stacked bar of the function
/// VM's boot phases (p50 of each phase's end), and latency CDFs of the warm
/// invokes (serial and concurrent, VM and host-mode peer).
fn svg(r: &Value) -> String {
    let rows = [
        (
            "cold boot: process start to exit (ms)",
            &r["cold_boot"]["silo"]["process_to_exit_ms"]["p50"],
            &r["cold_boot"]["peer"]["process_to_exit_ms"]["p50"],
        ),
        (
            "cold boot: guest uptime at init (ms)",
            &r["cold_boot"]["silo"]["guest_uptime_at_init_ms"]["p50"],
            &r["cold_boot"]["peer"]["guest_uptime_at_init_ms"]["p50"],
        ),
        (
            "warm invoke round trip p50 (ms)",
            &r["warm_invoke"]["vm_over_vsock_ms"]["p50"],
            &r["warm_invoke"]["host_mode_unix_socket_ms"]["p50"],
        ),
    ];
    let (w, h) = (760, 960);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="16">silo bench: p50, silo (blue) vs peer (grey); peer for invokes = host-mode agent</text>"##
    );
    for (i, (label, a, b)) in rows.iter().enumerate() {
        let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
        let max = a.max(b).max(1e-9);
        let y = 50 + i as i32 * 90;
        let w = |v: f64| (v / max * 480.0) as i32;
        s.push_str(&format!(
            r##"<text x="10" y="{}">{label}</text><rect x="10" y="{}" width="{}" height="22" fill="#3b6fb6"/><text x="{}" y="{}">{a:.1}</text><rect x="10" y="{}" width="{}" height="22" fill="#999"/><text x="{}" y="{}">{b:.1}</text>"##,
            y, y + 8, w(a), w(a) + 16, y + 24, y + 34, w(b), w(b) + 16, y + 50
        ));
    }
    // Stacked bar: each segment is one phase (p50 end minus previous p50 end).
    let colors = [
        "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b",
    ];
    let phases = &r["function_vm_timeline"]["phases"];
    let ends: Vec<f64> = PHASES
        .iter()
        .map(|k| phases[k]["p50"].as_f64().unwrap_or(0.0))
        .collect();
    let total = ends.iter().cloned().fold(1e-9, f64::max);
    let y0 = 320;
    s.push_str(&format!(
        r##"<text x="10" y="{y0}" font-size="15">function VM cold start by phase (p50, ms since VMM spawn; total {total:.0} ms)</text>"##
    ));
    let mut prev = 0.0;
    for (i, (k, end)) in PHASES.iter().zip(&ends).enumerate() {
        let x = 10.0 + prev / total * 700.0;
        let wd = ((end - prev).max(0.0) / total * 700.0).max(1.0);
        s.push_str(&format!(
            r##"<rect class="phase" x="{x:.1}" y="{}" width="{wd:.1}" height="28" fill="{}"><title>{k}: {:.1} ms</title></rect>"##,
            y0 + 12,
            colors[i % colors.len()],
            end - prev
        ));
        s.push_str(&format!(
            r##"<rect x="10" y="{}" width="12" height="12" fill="{}"/><text x="28" y="{}">{} ends at {end:.1} ms (+{:.1})</text>"##,
            y0 + 52 + i as i32 * 18,
            colors[i % colors.len()],
            y0 + 62 + i as i32 * 18,
            k.trim_end_matches("_ms"),
            (end - prev).max(0.0)
        ));
        prev = prev.max(*end);
    }
    // CDFs of warm invoke latency.
    let series = [
        (
            "VM, serial",
            &r["warm_invoke"]["samples_ms"]["vm"],
            "#3b6fb6",
            "",
        ),
        (
            "host mode, serial",
            &r["warm_invoke"]["samples_ms"]["host_mode"],
            "#999",
            "",
        ),
        (
            "VM, concurrent",
            &r["warm_invoke_concurrent"]["samples_ms"]["vm"],
            "#3b6fb6",
            "6,4",
        ),
        (
            "host mode, concurrent",
            &r["warm_invoke_concurrent"]["samples_ms"]["host_mode"],
            "#999",
            "6,4",
        ),
    ];
    let (px, py, pw, ph) = (60.0, 560.0, 660.0, 330.0);
    let xmax = series
        .iter()
        .filter_map(|(_, v, _, _)| {
            let mut x: Vec<f64> = v.as_array()?.iter().filter_map(Value::as_f64).collect();
            x.sort_by(f64::total_cmp);
            x.get(((x.len() as f64) * 0.99) as usize)
                .or(x.last())
                .copied()
        })
        .fold(1e-9, f64::max)
        * 1.1;
    s.push_str(&format!(
        r##"<text x="10" y="{}" font-size="15">warm invoke latency CDF (x clipped at 1.1 x the largest p99)</text><line x1="{px}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{px}" y1="{py}" x2="{px}" y2="{}" stroke="black"/>"##,
        py - 20.0, py + ph, px + pw, py + ph, py + ph
    ));
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        s.push_str(&format!(
            r##"<text x="{}" y="{}" text-anchor="middle">{:.1}</text><text x="{}" y="{}" text-anchor="end">{f:.2}</text>"##,
            px + f * pw, py + ph + 16.0, f * xmax, px - 6.0, py + ph - f * ph + 4.0
        ));
    }
    s.push_str(&format!(
        r##"<text x="{}" y="{}" text-anchor="middle">latency (ms)</text>"##,
        px + pw / 2.0,
        py + ph + 34.0
    ));
    for (i, (label, v, color, dash)) in series.iter().enumerate() {
        let mut x: Vec<f64> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        x.sort_by(f64::total_cmp);
        let n = x.len().max(1) as f64;
        let pts: Vec<String> = x
            .iter()
            .enumerate()
            .map(|(j, v)| {
                format!(
                    "{:.1},{:.1}",
                    px + (v / xmax).min(1.0) * pw,
                    py + ph - (j + 1) as f64 / n * ph
                )
            })
            .collect();
        s.push_str(&format!(
            r##"<polyline class="cdf" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{label}</text>"##,
            pts.join(" "),
            px + pw - 200.0, py + ph - 90.0 + i as f64 * 18.0,
            px + pw - 170.0, py + ph - 90.0 + i as f64 * 18.0,
            px + pw - 164.0, py + ph - 86.0 + i as f64 * 18.0
        ));
    }
    s.push_str("</svg>\n");
    s
}
