//! `silo-vmm`: boot one microVM from flags (one process per VM), with the
//! flags, exit codes and messages of the former `silo vmm` subcommand: 0 when the guest rebooted
//! or shut down, 1 on any error, 2 on a bad command line.

use std::process::ExitCode;

use silo_vmm::cli::{self, Command, VmmArgs};
use silo_vmm::jail::{JailConfig, Limits, ReadOnlyInput};
use silo_vmm::{VmConfig, VmExit, VsockConfig};

fn main() -> ExitCode {
    silo_vmm::timeline::mark_process_start();
    silo_vmm::keep_heaps_unshrunk();
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "error: {e}\n\nUsage: silo-vmm [OPTIONS] --kernel <KERNEL>\n\n\
                 For more information, try '--help'."
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(cli::log_level(std::env::var("SILO_LOG").ok().as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if args.managed && silo_vmm::seccomp::refuse_off_switch() {
        tracing::warn!("SILO_SECCOMP=off ignored: this VMM was started by the daemon (--managed)");
    }
    let mut args = *args;
    if let Some(jail) = args.jail.take() {
        if let Err(e) = enter_jail(&jail, &mut args) {
            eprintln!("silo-vmm: {e}");
            return ExitCode::FAILURE;
        }
    }
    run(args)
}

/// Jails this process (see `silo_vmm::jail`) and points the input paths at
/// their read-only binds inside.
fn enter_jail(jail: &JailConfig, args: &mut VmmArgs) -> Result<(), silo_vmm::jail::JailError> {
    let input = |source: &std::path::Path, name: String| ReadOnlyInput {
        source: source.to_path_buf(),
        name,
    };
    let mut inputs = vec![input(&args.kernel, "kernel".into())];
    inputs.extend(args.initrd.iter().map(|i| input(i, "initrd".into())));
    let first_pmem = inputs.len();
    inputs.extend(
        args.pmem
            .iter()
            .enumerate()
            .map(|(n, p)| input(p, format!("pmem{n}"))),
    );
    silo_vmm::jail::enter(jail, &inputs, Limits::for_vcpus(args.vcpus))?;
    args.kernel = inputs[0].jailed_path();
    if args.initrd.is_some() {
        args.initrd = Some(inputs[1].jailed_path());
    }
    args.pmem = inputs[first_pmem..]
        .iter()
        .map(ReadOnlyInput::jailed_path)
        .collect();
    tracing::debug!(uid = jail.uid, root = %jail.root.display(), "jailed");
    Ok(())
}

/// Runs one VM to completion and maps its end to a process exit code.
fn run(args: VmmArgs) -> ExitCode {
    let vsock = match (args.vsock_cid, args.vsock_uds) {
        (Some(cid), _) if cid < 3 => {
            eprintln!("silo-vmm: --vsock-cid {cid} is reserved; use 3 or more");
            return ExitCode::FAILURE;
        }
        (Some(guest_cid), Some(uds_path)) => Some(VsockConfig {
            guest_cid,
            uds_path,
        }),
        _ => None,
    };
    let cfg = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: match args.balloon_report_order {
            // The guest's page reporting order (free blocks of 2^N pages).
            Some(n) => format!("{} page_reporting.page_reporting_order={n}", args.cmdline),
            None => args.cmdline,
        },
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        serial: args.serial,
        vsock,
        net: args.net,
        pmem: args.pmem,
        balloon: args.balloon,
        balloon_stats_file: args.balloon_stats_file,
        small_pages: args.small_pages,
        allow_pvm: args.allow_pvm,
        timeline_file: args.timeline_file,
    };
    match silo_vmm::run(&cfg) {
        Ok(report) => {
            if args.timeline {
                eprintln!("SILO_TIMELINE {}", report.timeline.to_json());
            }
            let how = match report.exit {
                VmExit::Reset => "guest reset",
                VmExit::Shutdown => "guest shutdown",
            };
            tracing::info!(how, "VM ended cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("silo-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}
