//! `silo bench`: cold boots of silo's VMM side by side with a peer VMM (QEMU
//! `-M microvm` by default) on the same kernel and initramfs, interleaved;
//! warm invoke round trips through a VM against the same agent in host mode
//! over a Unix socket; the VMM's memory overhead. Results as JSON and an SVG
//! plot. Without hardware KVM it runs inside the KVM test host, where times
//! are emulated: read the ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use silo_images::placement::{
    between_markers, run_checked, run_here_or_in_test_host, test_host_with_this_program,
};

use crate::guest_files::{agent_or_build, built_kernel, function_or_build, GuestFiles};

mod args;
mod cold;
mod function_vms;
mod invokes;
pub(crate) mod network_cost;
mod plot;
mod results;

use args::Peer;
pub use args::{BenchArgs, PeerKind};
use cold::{boots_at_once, cold_boots};
use function_vms::{agent_ready_vs_firecracker, function_timelines, jail_cost};
use invokes::{concurrent_invokes, creations, warm_invokes};
use plot::svg;
pub use results::PHASES;
pub(crate) use results::{median as results_median, stats as results_stats};

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
    eprintln!(
        "[bench] {} function VM cold starts each, with and without a network, interleaved",
        args.boots
    );
    results["network_cost"] = rt.block_on(network_cost::network_cost(args.boots, files, true))?;
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
    // `network_cost` needs nft, ip and their kernel modules; without them
    // on this host it is skipped and says so.
    if crate::net::netfilter_tools_here() {
        host = host.with_netfilter().map_err(|e| e.to_string())?;
    }
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
pub(crate) fn is_elf(path: &Path) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
