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
use silo_images::placement::{
    between_markers, run_checked, run_here_or_in_test_host, test_host_with_this_program,
};
use silo_proto::{AgentConfig, Message, Outcome};

use silo_daemon::vm_env::{InvokeResult, VmEnv, VmSpec};

use crate::guest_files::{agent_or_build, built_kernel, function_or_build, GuestFiles};

mod plot;
mod results;

use plot::svg;
use results::quantile_sorted;
pub use results::PHASES;

/// Flags for `silo bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Cold boots per VMM.
    #[arg(long, default_value_t = 5)]
    boots: usize,
    /// Warm invocations timed: serially on one VM and on one host-mode agent,
    /// and in all over the --concurrency slots. Each VM and agent first
    /// answers one untimed invocation (its first belongs to the cold start).
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
    /// The peer VMMs of the cold boots, comma-separated: `qemu`,
    /// `firecracker` or both, measured in the same run, each boot of a peer
    /// next to a silo boot of the same kernel image.
    ///
    /// qemu: `<qemu> -M microvm -enable-kvm -cpu host -m 128 -smp 1
    /// -nodefaults -no-user-config -display none -serial stdio -no-reboot
    /// -kernel K -initrd I -append CMDLINE`, K silo's bzImage (QEMU boots
    /// an ELF vmlinux only through PVH, which silo's kernel leaves out).
    ///
    /// firecracker (bring your own build, `--firecracker ./firecracker`):
    /// silo writes a configuration file with `boot-source`
    /// (kernel_image_path, initrd_path, boot_args: the same command line
    /// with `reboot=k`, so the guest's reboot ends the process through the
    /// i8042 reset) and `machine-config` (vcpu_count 1, mem_size_mib 128),
    /// and runs `<firecracker> --no-api --config-file <file>`; the guest
    /// console is Firecracker's stdout. K is silo's ELF vmlinux (the only
    /// format Firecracker boots on x86_64); with Firecracker the function
    /// VMs boot it too, and run under both VMMs (`agent_ready`).
    ///
    /// Every VMM is timed from process start to the guest's marker (its
    /// /init printing its uptime, read from the console as it comes) and
    /// to exit. Without hardware KVM the peers run in the KVM test host too
    /// (with their shared libraries).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "qemu",
        verbatim_doc_comment
    )]
    peer_kind: Vec<PeerKind>,
    /// The peer's binary when --peer-kind names one peer (the same as
    /// --qemu or --firecracker).
    #[arg(long)]
    peer: Option<String>,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Firecracker binary.
    #[arg(long, default_value = "firecracker")]
    firecracker: String,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    /// Kernel of the function VMs (default: silo's ELF vmlinux with
    /// Firecracker among the peers, else its bzImage).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Kernel silo and QEMU boot for their cold boots [default: silo's
    /// bzImage].
    #[arg(long)]
    qemu_kernel: Option<PathBuf>,
    /// Kernel silo and Firecracker boot for their cold boots [default:
    /// silo's ELF vmlinux].
    #[arg(long)]
    firecracker_kernel: Option<PathBuf>,
    /// Busybox guest initramfs that prints its uptime and reboots.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Static guest agent.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Counter function binary.
    #[arg(long)]
    function: Option<PathBuf>,
    /// Directory holding QEMU's firmware (qboot as bios-microvm.bin).
    #[arg(long)]
    peer_firmware: Option<PathBuf>,
    /// Invocations in flight at once for the concurrent warm invokes: as
    /// many VMs against as many host-mode agents, one per slot.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Boots at once, silo against as many of each peer, for each count in
    /// turn (comma-separated); each pair boots its peer's kernel image.
    /// Wall time from spawn to all exited, boots finished, boots per second.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 10])]
    boots_at_once: Vec<usize>,
    /// Rounds of each --boots-at-once count, alternating which VMM goes
    /// first; the median wall time is reported.
    #[arg(long, default_value_t = 3)]
    boots_at_once_rounds: usize,
}

/// A peer VMM silo's cold boots are compared against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerKind {
    /// QEMU `-M microvm`.
    Qemu,
    /// Firecracker, built by the user from its public source.
    Firecracker,
}

impl PeerKind {
    /// The name in flags and results.
    fn name(self) -> &'static str {
        match self {
            PeerKind::Qemu => "qemu",
            PeerKind::Firecracker => "firecracker",
        }
    }
}

/// One peer of a run: which VMM, its binary, and the kernel image both it
/// and silo boot for their pair of cold boots.
#[derive(Clone, Debug)]
struct Peer {
    kind: PeerKind,
    binary: String,
    kernel: PathBuf,
    /// QEMU's firmware directory (`-L`).
    firmware: Option<PathBuf>,
}

impl BenchArgs {
    /// The binary of `kind`: `--peer` when it is the only peer, else
    /// `--qemu` or `--firecracker`.
    fn binary(&self, kind: PeerKind) -> Result<String, String> {
        match (&self.peer, self.peer_kind.as_slice()) {
            (Some(p), [only]) if *only == kind => Ok(p.clone()),
            (Some(_), [_, _, ..]) => Err(
                "--peer names the binary of a single --peer-kind; with several, use --qemu and --firecracker"
                    .into(),
            ),
            _ => Ok(match kind {
                PeerKind::Qemu => self.qemu.clone(),
                PeerKind::Firecracker => self.firecracker.clone(),
            }),
        }
    }

    /// Whether Firecracker is among the peers.
    fn with_firecracker(&self) -> bool {
        self.peer_kind.contains(&PeerKind::Firecracker)
    }

    /// The peers, in --peer-kind order without repeats, each with its
    /// binary and kernel (given, or built from this source tree).
    fn peers(&self) -> Result<Vec<Peer>, String> {
        let mut peers: Vec<Peer> = Vec::new();
        for &kind in &self.peer_kind {
            if peers.iter().any(|p| p.kind == kind) {
                continue;
            }
            let kernel = match kind {
                PeerKind::Qemu => match &self.qemu_kernel {
                    Some(k) => k.clone(),
                    None => built_kernel()?.bz_image,
                },
                PeerKind::Firecracker => match &self.firecracker_kernel {
                    Some(k) => k.clone(),
                    None => built_kernel()?.vmlinux,
                },
            };
            let kernel =
                std::fs::canonicalize(&kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
            if kind == PeerKind::Firecracker && !is_elf(&kernel) {
                return Err(format!(
                    "Firecracker boots an uncompressed ELF vmlinux on x86_64, and {} is not one \
                     (pass --firecracker-kernel path/to/vmlinux)",
                    kernel.display()
                ));
            }
            peers.push(Peer {
                kind,
                binary: self.binary(kind)?,
                kernel,
                firmware: self.peer_firmware.clone(),
            });
        }
        Ok(peers)
    }
}

/// The `host` of results measured in the KVM test host.
pub(crate) const TEST_HOST: &str = "KVM test host (emulated: compare ratios)";

/// `/init` of the tiny busybox guest the cold boots time: it prints its
/// uptime (`SILO_GUEST_INIT uptime=<s>`) and reboots.
pub(crate) const GUEST_INIT: &str = r#"
/bin/busybox mount -t proc proc /proc
echo "SILO_GUEST_INIT uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox reboot -f
"#;
/// silo's default command line (`silo_vmm::vm::DEFAULT_CMDLINE`) with
/// `reboot=t`; both VMMs get it (Firecracker with `reboot=k`).
const CMDLINE: &str =
    "console=ttyS0 reboot=t panic=-1 pci=off tsc=reliable no_timer_check quiet pty.legacy_count=0";

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> ExitCode {
    crate::exit_code("silo bench", run_inner(args))
}

fn run_inner(args: BenchArgs) -> Result<(), String> {
    // Equal work: each peer's cold boots are paired with silo's of the same
    // kernel image; the function VMs boot the vmlinux when Firecracker is a
    // peer (it runs them too), else the bzImage.
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None if args.with_firecracker() => built_kernel()?.vmlinux,
        None => built_kernel()?.bz_image,
    };
    let agent = agent_or_build(args.agent.as_ref())?;
    let function = function_or_build(args.function.as_ref())?;
    let abs = |p: PathBuf| std::fs::canonicalize(&p).map_err(|x| format!("{}: {x}", p.display()));
    let files = GuestFiles {
        kernel: abs(kernel)?,
        agent: abs(agent)?,
        function: abs(function)?,
    };
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if args.with_firecracker() && !is_elf(&files.kernel) {
        return Err(format!(
            "with Firecracker among the peers the function VMs run under it too, and it boots only \
             an ELF vmlinux on x86_64: {} is not one (pass --kernel path/to/vmlinux)",
            files.kernel.display()
        ));
    }
    let peers = args.peers()?;
    run_here_or_in_test_host(
        args.here,
        || run_here(&args, &files, &peers),
        || in_test_host(&args, &files, &peers),
    )
}

/// The benchmark on this machine.
fn run_here(args: &BenchArgs, files: &GuestFiles, peers: &[Peer]) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let initrd = match &args.initrd {
        Some(i) => i.clone(),
        None => {
            let p = crate::scratch_path("silo-bench-guest").with_extension("cpio");
            let img = silo_images::guest::busybox_initramfs(GUEST_INIT).map_err(|x| e(&x))?;
            std::fs::write(&p, img).map_err(|x| e(&x))?;
            p
        }
    };
    let mut results = json!({
        "host": if silo_images::testhost::hardware_kvm_usable() { "hardware KVM" } else { TEST_HOST },
        "boots": args.boots, "invokes": args.invokes,
        "function_vm_kernel": { "path": files.kernel.display().to_string(), "format": kernel_format(&files.kernel) },
        "concurrency": args.concurrency,
    });
    let mut by_peer = serde_json::Map::new();
    for p in peers {
        by_peer.insert(
            p.kind.name().into(),
            json!({
                "binary": p.binary, "version": peer_version(&p.binary),
                "kernel": { "path": p.kernel.display().to_string(), "format": kernel_format(&p.kernel) },
            }),
        );
    }
    eprintln!(
        "[bench] {} interleaved cold boots each: silo vs {}",
        args.boots,
        peers
            .iter()
            .map(|p| format!("{} ({})", p.binary, p.kind.name()))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    for (kind, cold) in cold_boots(args.boots, peers, &initrd)? {
        by_peer[kind]["cold_boot"] = cold;
    }
    for p in peers {
        by_peer[p.kind.name()]["boots_at_once"] = boots_at_once(args, p, &initrd)?;
    }
    results["peers"] = Value::Object(by_peer);
    eprintln!("[bench] warm invokes: VM over vsock vs host-mode agent over a Unix socket");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|x| e(&x))?;
    eprintln!(
        "[bench] {} function VM cold boots: every phase to the first invocation",
        args.boots
    );
    results["function_vm_timeline"] = rt.block_on(function_timelines(args.boots, files))?;
    eprintln!(
        "[bench] {} function VM cold starts each, jailed and unjailed, interleaved",
        args.boots
    );
    results["jail_cost"] = rt.block_on(jail_cost(args.boots, files))?;
    if let Some(fc) = peers.iter().find(|p| p.kind == PeerKind::Firecracker) {
        eprintln!(
            "[bench] {} function VMs each, silo and Firecracker, interleaved: spawn to agent ready and first answer",
            args.boots
        );
        results["agent_ready"] = rt.block_on(agent_ready_vs_firecracker(args.boots, files, fc))?;
    }
    results["warm_invoke"] = rt.block_on(warm_invokes(args, files))?;
    eprintln!(
        "[bench] warm invokes, {} in flight: VMs vs host-mode agents",
        args.concurrency
    );
    results["warm_invoke_concurrent"] = rt.block_on(concurrent_invokes(args, files))?;
    eprintln!("[bench] {} function VMs created at once", args.parallel);
    results["creations"] = rt.block_on(creations(args.parallel, files))?;
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

/// "ELF vmlinux" or "bzImage".
fn kernel_format(k: &Path) -> &'static str {
    if is_elf(k) {
        "ELF vmlinux"
    } else {
        "bzImage"
    }
}

/// The benchmark inside the KVM test host, with `files`, the peers and
/// their kernels copied in.
fn in_test_host(args: &BenchArgs, files: &GuestFiles, peers: &[Peer]) -> Result<(), String> {
    eprintln!(
        "[bench] no hardware KVM here: running inside the KVM test host (emulated; ratios only)"
    );
    let initrd = silo_images::guest::busybox_initramfs(GUEST_INIT).map_err(|e| e.to_string())?;
    let mut host = test_host_with_this_program()
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(2400))
        .file(
            "/usr/share/qemu/qboot.rom",
            "/work/fw/bios-microvm.bin",
            0o644,
        )
        .bytes("/work/guest.cpio", initrd, 0o644);
    let mut peer_flags = String::new();
    for p in peers {
        let name = p.kind.name();
        let binary = which(&p.binary).ok_or_else(|| match p.kind {
            PeerKind::Firecracker => format!(
                "peer VMM {} not found (build Firecracker and pass --firecracker path/to/firecracker)",
                p.binary
            ),
            PeerKind::Qemu => format!(
                "peer VMM {} not found (apt-get install qemu-system-x86)",
                p.binary
            ),
        })?;
        host = host
            .binary_with_libs(&binary, &format!("/bin/peer-{name}"))
            .map_err(|e| e.to_string())?
            .file(&p.kernel, &format!("/work/{name}-kernel"), 0o644);
        peer_flags += &format!(" --{name} /bin/peer-{name} --{name}-kernel {name}-kernel");
    }
    let host = files.copied_into(host, "kernel");
    let kinds: Vec<&str> = peers.iter().map(|p| p.kind.name()).collect();
    let cmd = format!(
        "SILO_LOG=warn silo bench --here --boots {} --invokes {} --peer-kind {}{peer_flags} --peer-firmware fw \
         --concurrency {} --parallel {} --boots-at-once {} --boots-at-once-rounds {} --kernel kernel --initrd guest.cpio \
         --agent agent --function counter --out r.json --plot r.svg && echo BENCH_JSON_BEGIN && cat r.json && echo BENCH_JSON_END",
        args.boots,
        args.invokes,
        kinds.join(","),
        args.concurrency,
        args.parallel,
        args.boots_at_once
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
        args.boots_at_once_rounds
    );
    let out = run_checked(&host, "benchmark", &cmd).map_err(|e| e.to_string())?;
    let json_text = between_markers(&out.output, "BENCH_JSON_BEGIN", "BENCH_JSON_END")
        .ok_or("no results in the test host output")?;
    let mut results: Value =
        serde_json::from_str(&json_text).map_err(|e| format!("results from the test host: {e}"))?;
    // Name the peers as the user knows them, not by their paths in the test
    // host, and say where the times come from (inside, KVM looks like
    // hardware).
    for p in peers {
        results["peers"][p.kind.name()]["binary"] = json!(p.binary);
        results["peers"][p.kind.name()]["kernel"]["path"] = json!(p.kernel.display().to_string());
    }
    results["function_vm_kernel"]["path"] = json!(files.kernel.display().to_string());
    results["host"] = json!(TEST_HOST);
    let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    std::fs::write(&args.plot, svg(&results))
        .map_err(|e| format!("{}: {e}", args.plot.display()))?;
    println!(
        "results: {} and {}",
        args.out.display(),
        args.plot.display()
    );
    Ok(())
}

/// Whether `path` starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The first line of `<peer> --version` (QEMU and Firecracker both have it).
fn peer_version(peer: &str) -> Value {
    Command::new(peer)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.lines().next().map(|l| json!(l.trim()))
        })
        .unwrap_or(Value::Null)
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

/// What one cold boot measured, on the host clock from the process's spawn.
struct TimedBoot {
    /// To the process's exit (ms).
    exit_ms: f64,
    /// To the guest's init marker on the console (ms).
    init_ms: f64,
    /// The guest's own uptime in the marker (ms).
    uptime_ms: f64,
    /// Everything it wrote, stdout then stderr.
    text: String,
}

/// The console line the guest's `/init` prints ([`GUEST_INIT`]).
const INIT_MARKER: &[u8] = b"SILO_GUEST_INIT uptime=";

/// Reads `r` to its end; returns what it read and when (ms since `t`) the
/// whole [`INIT_MARKER`] line had arrived, if it did.
fn read_until_marker(mut r: impl std::io::Read, t: Instant) -> (Vec<u8>, Option<f64>) {
    let (mut buf, mut chunk, mut at) = (Vec::new(), [0u8; 4096], None);
    while let Ok(n @ 1..) = r.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
        if at.is_none() {
            let line_done = buf
                .windows(INIT_MARKER.len())
                .position(|w| w == INIT_MARKER)
                .is_some_and(|i| buf[i..].contains(&b'\n'));
            if line_done {
                at = Some(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    (buf, at)
}

/// Runs `cmd` (cold boot `i` of `side`) to its exit, reading its console
/// as it comes; `spawn_err` words a failure to start it.
fn timed_boot(
    cmd: &mut Command,
    spawn_err: impl FnOnce(std::io::Error) -> String,
    side: &str,
    i: usize,
) -> Result<TimedBoot, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || read_until_marker(out, t));
    let err = std::thread::spawn(move || read_until_marker(err, t));
    let status = child.wait().map_err(|e| e.to_string())?;
    let exit_ms = t.elapsed().as_secs_f64() * 1e3;
    let (out, out_at) = out.join().map_err(|_| "console reader panicked")?;
    let (err, err_at) = err.join().map_err(|_| "console reader panicked")?;
    let text = String::from_utf8_lossy(&out).to_string() + &String::from_utf8_lossy(&err);
    let (Some(uptime_ms), Some(init_ms)) = (parse_uptime_ms(&text), out_at.or(err_at)) else {
        return Err(format!(
            "{side} boot {i} printed no marker ({status}):\n{text}"
        ));
    };
    // The line was written before the process ended; a reader thread that
    // ran only after the exit saw it late.
    let init_ms = init_ms.min(exit_ms);
    Ok(TimedBoot {
        exit_ms,
        init_ms,
        uptime_ms,
        text,
    })
}

/// A finished process's stdout, then its stderr, as text.
fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn parse_uptime_ms(out: &str) -> Option<f64> {
    let v = out.split("SILO_GUEST_INIT uptime=").nth(1)?;
    v.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .map(|s| s * 1000.0)
}

/// The `p` quantile of `v`, NaN when empty.
fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    quantile_sorted(&v, p)
}

fn stats(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| quantile_sorted(&v, p);
    json!({"n": v.len(), "min": v[0], "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": v[v.len() - 1]})
}

/// Firecracker's configuration for one boot of `kernel` + `initrd` with the
/// same memory, vCPUs and kernel command line as silo (`--config-file`
/// format: the API's request bodies under their resource names). `drives`
/// has no default in Firecracker's parser, so it is given, empty: the
/// initramfs is the root file system. `reboot=k` instead of `reboot=t`: on
/// x86_64 Firecracker ends its process when the guest resets the CPU
/// through the i8042 controller, which is what `reboot=k` makes Linux do.
fn firecracker_config(kernel: &Path, initrd: &Path) -> Value {
    json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "initrd_path": initrd,
            "boot_args": CMDLINE.replace("reboot=t", "reboot=k"),
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    })
}

/// The command line of one boot of `peer` (its kernel, `initrd`) with the
/// same memory, vCPUs and kernel command line as silo. For Firecracker it
/// writes the configuration file first, at `config`.
fn peer_command(peer: &Peer, initrd: &Path, config: &Path) -> Result<Command, String> {
    let mut cmd = Command::new(&peer.binary);
    match peer.kind {
        PeerKind::Firecracker => {
            // `--no-api` needs `--config-file` and boots at once, without
            // an API socket; the guest's serial console goes to stdout, and
            // a stdin that is not a terminal or a FIFO is left alone.
            let text = firecracker_config(&peer.kernel, initrd).to_string();
            std::fs::write(config, text).map_err(|e| format!("{}: {e}", config.display()))?;
            cmd.args(["--no-api", "--config-file"]).arg(config);
        }
        PeerKind::Qemu => {
            cmd.args(["-M", "microvm", "-enable-kvm", "-cpu", "host"])
                .args(["-m", "128", "-smp", "1"])
                .args(["-nodefaults", "-no-user-config", "-display", "none"])
                .args(["-serial", "stdio", "-no-reboot"])
                .arg("-kernel")
                .arg(&peer.kernel)
                .arg("-initrd")
                .arg(initrd)
                .args(["-append", CMDLINE]);
            if let Some(fw) = &peer.firmware {
                cmd.arg("-L").arg(fw);
            }
        }
    }
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

/// silo-vmm's command line for one cold boot of `kernel` + `initrd`.
fn silo_command(silo: &Path, kernel: &Path, initrd: &Path) -> Command {
    let mut cmd = Command::new(silo);
    cmd.args(["--mem-mib", "128", "--cmdline", CMDLINE, "--kernel"])
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .env("SILO_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// `boots` cold boots of each peer, each next to a silo boot of the same
/// kernel image and `initrd` (silo, peer 1, silo, peer 2, ...): per peer,
/// both sides' figures and their ratios.
fn cold_boots(
    boots: usize,
    peers: &[Peer],
    initrd: &Path,
) -> Result<Vec<(&'static str, Value)>, String> {
    let silo = silo_daemon::vm_env::vmm_binary().map_err(|e| e.to_string())?;
    let fc_config = crate::scratch_path("silo-bench-fc").with_extension("json");
    // Per peer: silo's and the peer's exit, init and uptime samples, and
    // silo's own timeline points.
    let mut s: Vec<[Vec<f64>; 3]> = vec![Default::default(); peers.len()];
    let mut p: Vec<[Vec<f64>; 3]> = vec![Default::default(); peers.len()];
    let mut tl: Vec<[Vec<f64>; 4]> = vec![Default::default(); peers.len()];
    const TIMELINE: [&str; 4] = [
        "kernel_loaded_us",
        "first_kvm_run_us",
        "first_serial_byte_us",
        "vm_exit_us",
    ];
    for i in 0..boots {
        for (j, peer) in peers.iter().enumerate() {
            let mut cmd = silo_command(&silo, &peer.kernel, initrd);
            cmd.arg("--timeline");
            let silo_b = timed_boot(&mut cmd, |e| e.to_string(), "silo", i)?;
            let timeline = silo_b
                .text
                .split("SILO_TIMELINE ")
                .nth(1)
                .and_then(|l| l.lines().next())
                .and_then(|l| serde_json::from_str::<Value>(l).ok());
            if let Some(v) = timeline {
                for (k, samples) in TIMELINE.iter().zip(tl[j].iter_mut()) {
                    if let Some(x) = v[k].as_f64() {
                        samples.push(x / 1e3);
                    }
                }
            }
            let mut cmd = peer_command(peer, initrd, &fc_config)?;
            let spawn_err = |e: std::io::Error| format!("peer {}: {e}", peer.binary);
            let b = timed_boot(&mut cmd, spawn_err, peer.kind.name(), i)?;
            eprintln!(
                "[bench] boot {}: silo {:.0} ms to init ({:.0} ms to exit, guest uptime {:.0} ms), {} {:.0} ms to init ({:.0} ms to exit, guest uptime {:.0} ms)",
                i + 1,
                silo_b.init_ms,
                silo_b.exit_ms,
                silo_b.uptime_ms,
                peer.kind.name(),
                b.init_ms,
                b.exit_ms,
                b.uptime_ms
            );
            for (side, b) in [(&mut s[j], silo_b), (&mut p[j], b)] {
                side[0].push(b.exit_ms);
                side[1].push(b.init_ms);
                side[2].push(b.uptime_ms);
            }
        }
    }
    let _ = std::fs::remove_file(&fc_config);
    let side = |v: &[Vec<f64>; 3]| {
        json!({
            "process_to_exit_ms": stats(v[0].clone()),
            "process_to_guest_init_ms": stats(v[1].clone()),
            "guest_uptime_at_init_ms": stats(v[2].clone()),
        })
    };
    Ok(peers
        .iter()
        .enumerate()
        .map(|(j, peer)| {
            let mut silo = side(&s[j]);
            for (k, v) in TIMELINE.iter().zip(&tl[j]) {
                let name = format!("vmm_process_start_to_{}_ms", k.trim_end_matches("_us"));
                silo[name] = stats(v.clone());
            }
            let cold = json!({
                "silo": silo,
                "peer": side(&p[j]),
                "ratio_silo_to_peer": {
                    "process_to_exit": median_ratio(&s[j][0], &p[j][0]),
                    "process_to_guest_init": median_ratio(&s[j][1], &p[j][1]),
                    "guest_uptime_at_init": median_ratio(&s[j][2], &p[j][2]),
                },
            });
            (peer.kind.name(), cold)
        })
        .collect())
}

/// `n` VMMs booting `peer`'s kernel and `initrd` at once, for silo and for
/// the peer (alternating which goes first, `--boots-at-once-rounds` times),
/// for each count: wall time from spawning the first to the last one's
/// exit (median over rounds), how many reached the guest marker, boots per
/// second.
fn boots_at_once(args: &BenchArgs, peer: &Peer, initrd: &Path) -> Result<Value, String> {
    let silo = silo_daemon::vm_env::vmm_binary().map_err(|e| e.to_string())?;
    let rounds = args.boots_at_once_rounds.max(1);
    let mut rows = Vec::new();
    for &n in &args.boots_at_once {
        if n == 0 {
            return Err("--boots-at-once counts must be at least 1".into());
        }
        let mut walls = [Vec::new(), Vec::new()];
        let mut finished = [0usize, 0];
        let mut uptimes = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let (wall, done, ups) = boot_n_at_once(&silo, peer, side == 0, n, initrd)?;
                eprintln!(
                    "[bench] {n} at once, round {}: {} {done}/{n} finished in {wall:.2} s",
                    round + 1,
                    ["silo", peer.kind.name()][side]
                );
                walls[side].push(wall);
                finished[side] += done;
                uptimes[side].extend(ups);
            }
        }
        let mut row = json!({ "n": n, "rounds": rounds });
        for (side, name) in ["silo", "peer"].into_iter().enumerate() {
            let wall = median(&walls[side]);
            row[name] = json!({
                "wall_ms": wall * 1e3,
                "wall_ms_each_round": walls[side].iter().map(|w| w * 1e3).collect::<Vec<_>>(),
                "finished": finished[side],
                "started": n * rounds,
                "boots_per_second": finished[side] as f64 / walls[side].iter().sum::<f64>(),
                "guest_uptime_at_init_ms": stats(std::mem::take(&mut uptimes[side])),
            });
        }
        row["ratio_wall_silo_to_peer"] = json!(median_ratio(&walls[0], &walls[1]));
        rows.push(row);
    }
    Ok(json!(rows))
}

/// Boots `n` VMs of `peer`'s kernel at once with silo (`silo_side`) or the
/// peer; returns the wall time in seconds, how many reached the guest
/// marker, and their guest uptimes at init (ms).
fn boot_n_at_once(
    silo: &Path,
    peer: &Peer,
    silo_side: bool,
    n: usize,
    initrd: &Path,
) -> Result<(f64, usize, Vec<f64>), String> {
    let config = |i: usize| {
        std::env::temp_dir().join(format!("silo-bench-fc-{}-{i}.json", std::process::id()))
    };
    let mut cmds = Vec::with_capacity(n);
    for i in 0..n {
        let mut cmd = if silo_side {
            silo_command(silo, &peer.kernel, initrd)
        } else {
            peer_command(peer, initrd, &config(i))?
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmds.push(cmd);
    }
    let t = Instant::now();
    let children: Vec<_> = cmds
        .iter_mut()
        .map(|c| c.spawn().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut uptimes = Vec::new();
    for c in children {
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        let text = output_text(&out);
        if let Some(u) = parse_uptime_ms(&text) {
            uptimes.push(u);
        }
    }
    let wall = t.elapsed().as_secs_f64();
    for i in 0..n {
        let _ = std::fs::remove_file(config(i));
    }
    Ok((wall, uptimes.len(), uptimes))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of `a` over the median of `b`; NaN unless `b`'s is positive.
fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let (a, b) = (median(a), median(b));
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
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

/// One VM against one host-mode agent: `args.invokes` warm invokes each,
/// one after another, after an untimed one.
async fn warm_invokes(args: &BenchArgs, files: &GuestFiles) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench");

    // The VM.
    let spec = function_spec(&dir, files)?;
    let mut env = boot_vm(&spec, &dir).await?;
    let boot = env.boot;
    let overhead = env.vmm_memory_overhead_kib(128);
    // One untimed invocation first on each side: a runtime's first
    // invocation belongs to the cold start (the function VM timeline has it).
    let warmup = args.invokes;
    invoke_ok(&mut env, warmup, || "VM warm-up invoke failed".into()).await?;
    let mut vm = Vec::with_capacity(args.invokes);
    for n in 0..args.invokes {
        let r = invoke_ok(&mut env, n, || format!("VM invoke {n} failed")).await?;
        vm.push(r.duration.as_secs_f64() * 1e3);
    }
    env.shutdown().await;

    // The same agent and function on the host, over a Unix socket.
    let (mut child, mut conn) = host_agent(&dir, files, 0)?;
    let mut host = Vec::with_capacity(args.invokes);
    let mut run = || -> Result<(), String> {
        host_invoke(&mut conn, warmup)?;
        for n in 0..args.invokes {
            host.push(host_invoke(&mut conn, n)?);
        }
        Ok(())
    };
    if let Err(e) = run() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let _ = silo_proto::write_message(&mut conn, &Message::Shutdown);
    let _ = child.wait();
    conn.flush().ok();
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = vm_vs_host(vm, host);
    out["vm_spawn_to_agent_ready_ms"] = json!(boot.spawn_to_ready.as_secs_f64() * 1e3);
    out["guest_uptime_at_agent_start_ms"] =
        json!(boot.guest.kernel_uptime_at_agent_start_ns as f64 / 1e6);
    out["guest_uptime_at_agent_ready_ms"] =
        json!(boot.guest.kernel_uptime_at_ready_ns as f64 / 1e6);
    out["vmm_memory_overhead_kib"] = json!(overhead);
    Ok(out)
}

/// Boots `n` function VMs concurrently (to agent hello) and reports
/// environment creations per second, then shuts them all down.
async fn creations(n: usize, files: &GuestFiles) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench-create");
    let spec = counter_vm_spec(&dir, files, &AgentConfig::default())?;
    let started = Instant::now();
    let boots = (0..n.max(1)).map(|_| boot_vm(&spec, &dir));
    let mut envs = Vec::new();
    let mut ready_ms = Vec::new();
    for r in futures_join(boots).await {
        let env = r?;
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

/// A function VM image of the counter in `dir`, with the benchmark's agent
/// configuration.
fn function_spec(dir: &Path, files: &GuestFiles) -> Result<VmSpec, String> {
    counter_vm_spec(dir, files, &bench_agent_config())
}

/// A function VM of the counter (`dir/function.cpio`, the agent configured
/// by `config`): 128 MiB, 1 vCPU, not jailed.
fn counter_vm_spec(dir: &Path, files: &GuestFiles, config: &AgentConfig) -> Result<VmSpec, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let code = std::fs::read(&files.function).map_err(|e| e.to_string())?;
    let package = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let image =
        silo_initramfs::image::build(&files.agent, config, &package).map_err(|e| e.to_string())?;
    let initrd = dir.join("function.cpio");
    std::fs::write(&initrd, image).map_err(|e| e.to_string())?;
    Ok(VmSpec {
        kernel: files.kernel.clone(),
        initrd,
        mem_mib: 128,
        vcpus: 1,
        boot_timeout: Duration::from_secs(300),
        jail: silo_daemon::jail::JailMode::Insecure,
        pmem: None,
        console_bytes: silo_daemon::console::DEFAULT_CONSOLE_BYTES,
    })
}

/// Boots a function VM of `spec` (its files in `dir`) to the agent's hello.
async fn boot_vm(spec: &VmSpec, dir: &Path) -> Result<VmEnv, String> {
    VmEnv::boot(spec, dir).await.map_err(|e| e.to_string())
}

/// Invocation `n` (see [`invoke_msg`]) on `env`, which must answer without
/// a function error; else the error is `failed()` and the outcome.
async fn invoke_ok(
    env: &mut VmEnv,
    n: usize,
    failed: impl FnOnce() -> String,
) -> Result<InvokeResult, String> {
    let r = env
        .invoke(invoke_msg(n), Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    if !matches!(r.outcome, Outcome::Ok(_)) {
        return Err(format!("{}: {:?}", failed(), r.outcome));
    }
    Ok(r)
}

/// Warm invoke latencies through VMs (`vm`) against host-mode agents
/// (`host`), in ms: quantiles, ratios and every sample.
fn vm_vs_host(vm: Vec<f64>, host: Vec<f64>) -> Value {
    json!({
        "vm_over_vsock_ms": stats(vm.clone()),
        "host_mode_unix_socket_ms": stats(host.clone()),
        "ratio_p50": median(&vm) / median(&host),
        "ratio_p99": quantile(&vm, 0.99) / quantile(&host, 0.99),
        "warmup_invokes_per_environment": 1,
        "samples_ms": { "vm": vm, "host_mode": host },
    })
}

/// The agent configuration of the benchmark's function, in a VM or on the
/// host: the same for both sides.
fn bench_agent_config() -> AgentConfig {
    AgentConfig {
        timeout_s: 10,
        ..AgentConfig::default()
    }
}

/// `n` function VMs booted one after another, each to its first invocation:
/// every phase in one clock domain (ms since the VMM was spawned).
async fn function_timelines(n: usize, files: &GuestFiles) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench-timeline");
    let spec = function_spec(&dir, files)?;
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let mut samples = Vec::new();
    for i in 0..n.max(1) {
        let mut env = boot_vm(&spec, &dir).await?;
        invoke_ok(&mut env, i, || format!("first invocation of VM {i} failed")).await?;
        let t = serde_json::to_value(env.boot.timeline).map_err(|e| e.to_string())?;
        env.shutdown().await;
        for (k, v) in PHASES.iter().zip(phases.iter_mut()) {
            let x = t[k]
                .as_f64()
                .ok_or_else(|| format!("VM {i}: phase {k} missing: {t}"))?;
            v.push(x);
        }
        eprintln!("[bench] function VM {}: {t}", i + 1);
        samples.push(t);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = serde_json::Map::new();
    for (k, v) in PHASES.iter().zip(phases) {
        out.insert(k.to_string(), stats(v));
    }
    Ok(json!({
        "clock": "host CLOCK_MONOTONIC, ms since the VMM process was spawned",
        "phases": out,
        "order": PHASES,
        "samples": samples,
    }))
}

/// One function VM under Firecracker: the same function initramfs (the
/// agent as `/init`), memory, vCPU and command line (silo-vmm's default,
/// `reboot=k`, which `firecracker_config` gives) as silo's function VMs,
/// with Firecracker's vsock device, which forwards the agent's connection
/// to `<uds>_1024` as silo's does. Returns (spawn to the agent's Hello,
/// spawn to the first answer, the Hello's guest timing).
async fn firecracker_function_vm(
    firecracker: &str,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    n: usize,
) -> Result<(f64, f64, silo_proto::BootTiming), String> {
    use silo_proto::asynchronous::{read_message, write_message};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let uds = dir.join("vsock");
    let listener =
        tokio::net::UnixListener::bind(format!("{}_{}", uds.display(), silo_proto::AGENT_PORT))
            .map_err(|e| format!("agent socket: {e}"))?;
    let config = dir.join("fc.json");
    let mut text = firecracker_config(kernel, initrd);
    text["vsock"] = json!({ "guest_cid": 3, "uds_path": uds });
    std::fs::write(&config, text.to_string()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(firecracker)
        .args(["--no-api", "--config-file"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{firecracker}: {e}"))?;
    let limit = Duration::from_secs(300);
    let (mut conn, _) = tokio::time::timeout(limit, listener.accept())
        .await
        .map_err(|_| "Firecracker VM: the agent never connected".to_string())?
        .map_err(|e| e.to_string())?;
    let boot = match read_message(&mut conn).await.map_err(|e| e.to_string())? {
        Message::Hello { boot, .. } => boot,
        other => return Err(format!("Firecracker VM: expected Hello, got {other:?}")),
    };
    let ready = started.elapsed().as_secs_f64() * 1e3;
    write_message(&mut conn, &invoke_msg(n))
        .await
        .map_err(|e| e.to_string())?;
    let answered = loop {
        match tokio::time::timeout(limit, read_message(&mut conn))
            .await
            .map_err(|_| "Firecracker VM: no answer".to_string())?
            .map_err(|e| e.to_string())?
        {
            Message::Result {
                outcome: Outcome::Ok(_),
                ..
            } => break started.elapsed().as_secs_f64() * 1e3,
            Message::Result { outcome, .. } => {
                return Err(format!(
                    "Firecracker VM: first invocation failed: {outcome:?}"
                ))
            }
            _ => continue,
        }
    };
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok((ready, answered, boot))
}

/// Function VMs to the agent's Hello and to the first answer under silo
/// and under Firecracker, `n` each, alternating: the same kernel, function
/// initramfs (guest agent and the counter), memory, vCPU and command line,
/// neither jailed. The guest side of each (kernel uptime when the agent
/// started and when it said Hello) comes from the agent's Hello.
async fn agent_ready_vs_firecracker(
    boots: usize,
    files: &GuestFiles,
    firecracker: &Peer,
) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench-agent");
    let spec = function_spec(&dir, files)?;
    let fc_dir = dir.join("firecracker");
    let mut s = [vec![], vec![], vec![], vec![]];
    let mut p = [vec![], vec![], vec![], vec![]];
    for i in 0..boots.max(1) {
        let mut env = boot_vm(&spec, &dir).await?;
        let t = Instant::now();
        invoke_ok(&mut env, i, || {
            format!("silo VM {i}: first invocation failed")
        })
        .await?;
        let ready = env.boot.spawn_to_ready.as_secs_f64() * 1e3;
        s[0].push(ready);
        s[1].push(ready + t.elapsed().as_secs_f64() * 1e3);
        s[2].push(env.boot.guest.kernel_uptime_at_agent_start_ns as f64 / 1e6);
        s[3].push(env.boot.guest.kernel_uptime_at_ready_ns as f64 / 1e6);
        env.shutdown().await;
        let (ready, answered, boot) =
            firecracker_function_vm(&firecracker.binary, &files.kernel, &spec.initrd, &fc_dir, i)
                .await?;
        p[0].push(ready);
        p[1].push(answered);
        p[2].push(boot.kernel_uptime_at_agent_start_ns as f64 / 1e6);
        p[3].push(boot.kernel_uptime_at_ready_ns as f64 / 1e6);
        eprintln!(
            "[bench] function VM {}: agent ready silo {:.0} ms, Firecracker {:.0} ms",
            i + 1,
            s[0][i],
            p[0][i]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let side = |v: &[Vec<f64>; 4]| {
        json!({
            "spawn_to_agent_ready_ms": stats(v[0].clone()),
            "spawn_to_first_answer_ms": stats(v[1].clone()),
            "guest_uptime_at_agent_start_ms": stats(v[2].clone()),
            "guest_uptime_at_agent_ready_ms": stats(v[3].clone()),
        })
    };
    let ratio = |k: usize| (median(&s[k]) / median(&p[k]) * 100.0).round() / 100.0;
    Ok(json!({
        "what": "function VMs (guest agent + counter initramfs), neither jailed, alternating; host times from the VMM's spawn",
        "silo": side(&s),
        "firecracker": side(&p),
        "ratio_silo_to_firecracker": {
            "spawn_to_agent_ready": ratio(0),
            "spawn_to_first_answer": ratio(1),
            "guest_uptime_at_agent_start": ratio(2),
            "guest_uptime_at_agent_ready": ratio(3),
        },
    }))
}

/// What the jail costs a cold start: `n` function VMs booted jailed and `n`
/// unjailed, alternating, each to its first answered invocation.
async fn jail_cost(n: usize, files: &GuestFiles) -> Result<Value, String> {
    use silo_daemon::jail::{JailMode, JailSettings};
    // No CPU share: it starts only once the VM is ready and, on the test
    // host's emulated CPU, would dominate the first answer.
    let settings = JailSettings {
        cpu_full_at_mib: 0,
        ..JailSettings::default()
    };
    let jailed_mode = JailMode::new(&settings, false);
    if let JailMode::Unavailable(why) = &jailed_mode {
        return Ok(json!({ "skipped": format!("this host cannot jail: {why}") }));
    }
    let dir = crate::scratch_path("silo-bench-jail");
    let mut spec = function_spec(&dir, files)?;
    let (mut ready, mut first) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for i in 0..n.max(1) {
        // Alternate which goes first so drift favours neither.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            spec.jail = if side == 0 {
                jailed_mode.clone()
            } else {
                JailMode::Insecure
            };
            let mut env = boot_vm(&spec, &dir).await?;
            env.invoke(invoke_msg(i), Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            let t = &env.boot.timeline;
            ready[side].push(t.agent_ready_ms);
            first[side].push(t.first_invocation_answered_ms.unwrap_or(f64::NAN));
            env.shutdown().await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = |v: &[Vec<f64>; 2]| median(&v[0]) / median(&v[1]);
    Ok(json!({
        "clock": "ms since the VMM process was spawned",
        "jailed": { "agent_ready_ms": stats(ready[0].clone()), "first_answer_ms": stats(first[0].clone()) },
        "unjailed": { "agent_ready_ms": stats(ready[1].clone()), "first_answer_ms": stats(first[1].clone()) },
        "ratio_agent_ready_p50": ratio(&ready),
        "ratio_first_answer_p50": ratio(&first),
    }))
}

/// A host-mode agent (the peer for invokes) serving the counter from `dir`.
fn host_agent(
    dir: &Path,
    files: &GuestFiles,
    slot: usize,
) -> Result<(std::process::Child, UnixStream), String> {
    let root = dir.join(format!("host-{slot}"));
    std::fs::create_dir_all(root.join("task")).map_err(|e| e.to_string())?;
    std::fs::copy(&files.function, root.join("task/bootstrap")).map_err(|e| e.to_string())?;
    let mut cfg = bench_agent_config();
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
    let child = Command::new(&files.agent)
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

/// How many of `total` invokes slot `slot` of `c` makes (the remainder goes
/// to the first slots, so exactly `total` are made).
fn slot_share(total: usize, c: usize, slot: usize) -> usize {
    total / c + usize::from(slot < total % c)
}

/// `args.invokes` warm invokes (at least one per slot) with
/// `args.concurrency` in flight: against as many VMs, and against as many
/// host-mode agents. Each VM and agent first answers one untimed invocation,
/// so that its first invocation (a cold runtime's first
/// `/invocation/next`, part of the cold start) is not counted as warm.
async fn concurrent_invokes(args: &BenchArgs, files: &GuestFiles) -> Result<Value, String> {
    let c = args.concurrency.max(1);
    let total = args.invokes.max(c);
    let dir = crate::scratch_path("silo-bench-conc");
    let spec = function_spec(&dir, files)?;
    let boots = (0..c).map(|_| boot_vm(&spec, &dir));
    let mut envs = Vec::new();
    for r in futures_join(boots).await {
        envs.push(r?);
    }
    // Request ids: slot * (total + 1) + n, with n = 0 the warm-up.
    let id = move |slot: usize, n: usize| slot * (total + 1) + n;
    for (slot, env) in envs.iter_mut().enumerate() {
        invoke_ok(env, id(slot, 0), || "VM warm-up invoke failed".into()).await?;
    }
    let runs = envs.iter_mut().enumerate().map(|(slot, env)| async move {
        let share = slot_share(total, c, slot);
        let mut lat = Vec::with_capacity(share);
        for n in 1..=share {
            let r = invoke_ok(env, id(slot, n), || "VM invoke failed".into()).await?;
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
        let (child, mut conn) = host_agent(&dir, files, slot)?;
        host_invoke(&mut conn, id(slot, 0))?;
        agents.push((child, conn));
    }
    // Every thread starts invoking at once, after all are spawned.
    let go = std::sync::Arc::new(std::sync::Barrier::new(c + 1));
    let threads: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(slot, (child, mut conn))| {
            let go = go.clone();
            std::thread::spawn(move || {
                let share = slot_share(total, c, slot);
                let mut lat = Vec::with_capacity(share);
                go.wait();
                for n in 1..=share {
                    match host_invoke(&mut conn, id(slot, n)) {
                        Ok(ms) => lat.push(ms),
                        Err(e) => return (Err(e), child),
                    }
                }
                let _ = silo_proto::write_message(&mut conn, &Message::Shutdown);
                (Ok(lat), child)
            })
        })
        .collect();
    go.wait();
    let started = Instant::now();
    let mut host = Vec::new();
    let mut failed = None;
    for t in threads {
        let (lat, mut child) = t
            .join()
            .map_err(|_| "host-mode thread panicked".to_string())?;
        match lat {
            Ok(lat) => host.extend(lat),
            Err(e) => {
                let _ = child.kill();
                failed.get_or_insert(e);
            }
        }
        let _ = child.wait();
    }
    let host_wall = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(e) = failed {
        return Err(e);
    }
    let (vm_per_s, host_per_s) = (vm.len() as f64 / vm_wall, host.len() as f64 / host_wall);
    let mut out = vm_vs_host(vm, host);
    out["concurrency"] = json!(c);
    out["invokes"] = json!(total);
    out["vm_invokes_per_second"] = json!(vm_per_s);
    out["host_mode_invokes_per_second"] = json!(host_per_s);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_config_has_the_documented_shape() {
        let c = firecracker_config(Path::new("/k/vmlinux"), Path::new("/k/guest.cpio"));
        let boot = &c["boot-source"];
        assert_eq!(boot["kernel_image_path"], "/k/vmlinux");
        assert_eq!(boot["initrd_path"], "/k/guest.cpio");
        let args = boot["boot_args"].as_str().unwrap();
        assert!(
            args.contains("reboot=k") && !args.contains("reboot=t"),
            "{args}"
        );
        assert!(args.contains("console=ttyS0"), "{args}");
        assert_eq!(c["machine-config"]["vcpu_count"], 1);
        assert_eq!(c["machine-config"]["mem_size_mib"], 128);
        assert_eq!(c["drives"], json!([]));
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "only what Firecracker knows: {keys:?}");
    }

    /// A peer of `kind` with `binary` and kernel `/k/vmlinux`.
    fn peer(kind: PeerKind, binary: &str) -> Peer {
        Peer {
            kind,
            binary: binary.into(),
            kernel: "/k/vmlinux".into(),
            firmware: None,
        }
    }

    #[test]
    fn peer_command_lines() {
        let dir = crate::scratch_path("silo-bench-unit");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("fc.json");
        let argv = |cmd: &Command| -> Vec<String> {
            cmd.get_args()
                .map(|a| a.to_string_lossy().to_string())
                .collect()
        };
        let fc = peer(PeerKind::Firecracker, "/opt/fc");
        let cmd = peer_command(&fc, Path::new("/i"), &cfg).unwrap();
        assert_eq!(cmd.get_program(), "/opt/fc");
        assert_eq!(
            argv(&cmd),
            ["--no-api", "--config-file", &cfg.display().to_string()]
        );
        let written: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        assert_eq!(written["boot-source"]["kernel_image_path"], "/k/vmlinux");
        let _ = std::fs::remove_dir_all(&dir);
        let q = Peer {
            firmware: Some("fw".into()),
            ..peer(PeerKind::Qemu, "qemu-system-x86_64")
        };
        let a = argv(&peer_command(&q, Path::new("/i"), &cfg).unwrap());
        for (flag, value) in [
            ("-M", "microvm"),
            ("-kernel", "/k/vmlinux"),
            ("-initrd", "/i"),
            ("-append", CMDLINE),
            ("-L", "fw"),
        ] {
            let at = a
                .iter()
                .position(|x| x == flag)
                .unwrap_or_else(|| panic!("{flag} in {a:?}"));
            assert_eq!(a[at + 1], value);
        }
    }

    #[test]
    fn peers_and_their_binaries_from_flags() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let args =
            |a: &[&str]| Cli::parse_from(std::iter::once("bench").chain(a.iter().copied())).bench;
        let a = args(&[]);
        assert_eq!(a.peer_kind, [PeerKind::Qemu]);
        assert_eq!(a.binary(PeerKind::Qemu).unwrap(), "qemu-system-x86_64");
        assert!(!a.with_firecracker());
        let a = args(&["--peer-kind", "firecracker", "--peer", "/opt/fc"]);
        assert_eq!(a.binary(PeerKind::Firecracker).unwrap(), "/opt/fc");
        let a = args(&[
            "--peer-kind",
            "qemu,firecracker",
            "--firecracker",
            "/opt/fc",
            "--qemu",
            "/opt/q",
        ]);
        assert_eq!(a.peer_kind, [PeerKind::Qemu, PeerKind::Firecracker]);
        assert!(a.with_firecracker());
        assert_eq!(a.binary(PeerKind::Firecracker).unwrap(), "/opt/fc");
        assert_eq!(a.binary(PeerKind::Qemu).unwrap(), "/opt/q");
        let a = args(&["--peer-kind", "qemu,firecracker", "--peer", "/opt/fc"]);
        let e = a.binary(PeerKind::Firecracker).unwrap_err();
        assert!(e.contains("--firecracker"), "{e}");
        assert!(Cli::try_parse_from(["bench", "--peer-kind", "kvmtool"]).is_err());
    }

    #[test]
    fn the_marker_is_timed_when_its_line_is_complete() {
        let t = Instant::now();
        let (text, at) = read_until_marker(&b"boot\nSILO_GUEST_INIT uptime=0.45\nbye\n"[..], t);
        assert!(at.is_some());
        assert_eq!(
            parse_uptime_ms(&String::from_utf8(text).unwrap()),
            Some(450.0)
        );
        let (_, at) = read_until_marker(&b"SILO_GUEST_INIT uptime=0.4"[..], t);
        assert_eq!(at, None, "a cut-off line");
        let (_, at) = read_until_marker(&b"no marker\n"[..], t);
        assert_eq!(at, None);
    }

    #[test]
    fn elf_check() {
        let dir = crate::scratch_path("silo-bench-elf");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("elf"), b"\x7fELF\x02\x01").unwrap();
        std::fs::write(dir.join("bz"), b"MZ\x00\x00").unwrap();
        assert!(is_elf(&dir.join("elf")));
        assert!(!is_elf(&dir.join("bz")));
        assert!(!is_elf(&dir.join("missing")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn slot_shares_add_up() {
        for total in 1..40 {
            for c in 1..=total {
                let shares: Vec<usize> = (0..c).map(|s| slot_share(total, c, s)).collect();
                assert_eq!(shares.iter().sum::<usize>(), total);
                assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            }
        }
    }
}
