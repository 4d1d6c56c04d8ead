//! `silo-bench bench-net`: networking, in one run.
//!
//! - what a network adds to a cold start: function VMs jailed with and
//!   without a network, alternating ([`crate::boot::network_cost`], also
//!   part of `silo bench`);
//! - guest egress throughput and 64-byte round trips to a server on the
//!   host: silo-vmm against Firecracker (`--firecracker`, bring your own
//!   build) on the same kernel, command line and static client, and the
//!   host itself over loopback as the ceiling ([`throughput`]).
//!
//! Results as JSON and an SVG plot. Without hardware KVM it runs inside the
//! KVM test host (with nft, ip and their kernel modules), where times are
//! emulated: read the ratios.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use silo_images::placement::{
    between_markers, run_checked, run_here_or_in_test_host, test_host_with_this_program,
};

use crate::guest_files::{GuestFileArgs, GuestFiles};

mod plot;
mod throughput;

/// Flags for `silo-bench bench-net`.
#[derive(clap::Args, Debug)]
#[command(mut_arg("kernel", |a| a.help("Guest kernel, an ELF vmlinux (default: silo's)")))]
pub struct NetBenchArgs {
    /// Function VMs with a network and as many without (interleaved).
    #[arg(long, default_value_t = 6)]
    boots: usize,
    /// Throughput and round-trip runs per client (interleaved).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bytes each bulk run sends.
    #[arg(long, default_value_t = 64 << 20)]
    bytes: u64,
    /// Round trips per run.
    #[arg(long, default_value_t = 1000)]
    round_trips: u32,
    /// A Firecracker binary to compare against (see benches/README.md,
    /// "Bringing your own Firecracker").
    #[arg(long)]
    firecracker: Option<PathBuf>,
    /// The static client (default: build benches/netprobe).
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Skip the cold-start comparison.
    #[arg(long)]
    no_cold: bool,
    /// Skip the throughput and round-trip runs.
    #[arg(long)]
    no_throughput: bool,
    /// Also measure the cold-start comparison with every ended VM's slot
    /// removed and a new one prepared (`recycle_slots = false`, as before
    /// slots were recycled), first, in the same run
    /// (`network_cost_fresh_slots`).
    #[arg(long)]
    fresh_slots_too: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-net.json")]
    out: PathBuf,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "bench-net.svg")]
    plot: PathBuf,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    #[command(flatten)]
    guest: GuestFileArgs,
}

/// Whether this host has the `nft` and `ip` programs a network needs (and
/// the KVM test host copies in).
pub(crate) fn netfilter_tools_here() -> bool {
    ["nft", "ip"].iter().all(|name| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(name).is_file())
    })
}

/// Runs the benchmark.
pub fn run(args: NetBenchArgs) -> ExitCode {
    crate::exit_code("silo-bench bench-net", run_inner(args))
}

fn run_inner(args: NetBenchArgs) -> Result<(), String> {
    let abs = |p: PathBuf| std::fs::canonicalize(&p).map_err(|x| format!("{}: {x}", p.display()));
    let files = args.guest.resolve()?;
    let files = GuestFiles {
        kernel: abs(files.kernel)?,
        agent: abs(files.agent)?,
        function: abs(files.function)?,
    };
    if !crate::boot::is_elf(&files.kernel) {
        return Err(format!(
            "{} is not an ELF vmlinux (Firecracker boots only that; pass --kernel path/to/vmlinux)",
            files.kernel.display()
        ));
    }
    let probe = match &args.probe {
        Some(p) => abs(p.clone())?,
        None => throughput::build_probe()?,
    };
    run_here_or_in_test_host(
        args.here,
        || run_here(&args, &files, &probe),
        || in_test_host(&args, &files, &probe),
    )
}

fn run_here(args: &NetBenchArgs, files: &GuestFiles, probe: &Path) -> Result<(), String> {
    let host = if silo_images::testhost::hardware_kvm_usable() {
        "hardware KVM"
    } else {
        crate::boot::TEST_HOST
    };
    let mut results = json!({
        "host": host,
        "kernel": files.kernel.display().to_string(),
        "firecracker": args.firecracker.as_ref().map(|p| p.display().to_string()),
    });
    let vmm = silo_daemon::vm_env::vmm_binary().map_err(|e| e.to_string())?;
    let plan = throughput::Plan {
        kernel: &files.kernel,
        probe,
        vmm: &vmm,
        firecracker: args.firecracker.as_deref(),
        bytes: args.bytes,
        round_trips: args.round_trips,
        rounds: args.rounds,
    };
    if !args.no_throughput {
        eprintln!(
            "[bench-net] throughput and round trips, {} rounds",
            args.rounds
        );
        let dir = crate::scratch_path("silo-bench-net-tp");
        let tp = throughput::throughput_and_rtt(&plan, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        results["throughput"] = tp?;
    }
    if !args.no_cold {
        eprintln!(
            "[bench-net] {} function VM cold starts each, with and without a network",
            args.boots
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        if args.fresh_slots_too {
            eprintln!("[bench-net] first with fresh slots (recycle_slots = false)");
            results["network_cost_fresh_slots"] = rt.block_on(
                crate::boot::network_cost::network_cost(args.boots, files, false),
            )?;
        }
        results["network_cost"] = rt.block_on(crate::boot::network_cost::network_cost(
            args.boots, files, true,
        ))?;
    }
    write(args, &results)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn write(args: &NetBenchArgs, results: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    std::fs::write(&args.plot, plot::svg(results))
        .map_err(|e| format!("{}: {e}", args.plot.display()))
}

/// The benchmark inside the KVM test host, with nft and ip, the guest
/// files, the client and Firecracker (with its libraries) copied in.
fn in_test_host(args: &NetBenchArgs, files: &GuestFiles, probe: &Path) -> Result<(), String> {
    eprintln!(
        "[bench-net] no hardware KVM here: running inside the KVM test host (emulated; ratios only)"
    );
    let mut host = test_host_with_this_program()
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(3600))
        .with_netfilter()
        .map_err(|e| e.to_string())?
        .file(probe, "/work/probe", 0o755);
    let mut fc_flag = String::new();
    if let Some(fc) = &args.firecracker {
        host = host
            .binary_with_libs(fc, "/bin/peer-firecracker")
            .map_err(|e| e.to_string())?;
        fc_flag = " --firecracker /bin/peer-firecracker".into();
    }
    let host = files.copied_into(host, "kernel");
    let cmd = format!(
        "SILO_LOG=warn silo bench-net --here --boots {} --rounds {} --bytes {} --round-trips {}{fc_flag}{}{} \
         --kernel kernel --agent agent --function counter --probe probe --out r.json --plot r.svg \
         && echo BENCH_JSON_BEGIN && cat r.json && echo BENCH_JSON_END",
        args.boots,
        args.rounds,
        args.bytes,
        args.round_trips,
        if args.no_cold {
            " --no-cold"
        } else if args.fresh_slots_too {
            " --fresh-slots-too"
        } else {
            ""
        },
        if args.no_throughput {
            " --no-throughput"
        } else {
            ""
        },
    );
    let out = run_checked(&host, "network benchmark", &cmd).map_err(|e| e.to_string())?;
    let text = between_markers(&out.output, "BENCH_JSON_BEGIN", "BENCH_JSON_END")
        .ok_or("no results in the test host output")?;
    let mut results: Value =
        serde_json::from_str(&text).map_err(|e| format!("results from the test host: {e}"))?;
    results["host"] = json!(crate::boot::TEST_HOST);
    results["kernel"] = json!(files.kernel.display().to_string());
    results["firecracker"] = json!(args.firecracker.as_ref().map(|p| p.display().to_string()));
    write(args, &results)?;
    println!(
        "results: {} and {}",
        args.out.display(),
        args.plot.display()
    );
    Ok(())
}
