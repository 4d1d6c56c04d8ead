//! `silo vmm`: boot one microVM from flags (one process per VM).

use std::path::PathBuf;
use std::process::ExitCode;

use silo_vmm::{SerialOutput, VmConfig, VmExit, VsockConfig};

/// Flags for `silo vmm`.
#[derive(clap::Args, Debug)]
pub struct VmmArgs {
    /// Guest kernel: ELF vmlinux or bzImage (told apart by content).
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (uncompressed newc cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (virtio device declarations are appended).
    #[arg(long, default_value = silo_vmm::vm::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Serial console: `stdout`, `off`, or `file:PATH`.
    #[arg(long, default_value = "stdout", value_parser = parse_serial)]
    serial: SerialOutput,
    /// Guest context id of the vsock device (>= 3); needs --vsock-uds.
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Host Unix socket of the vsock device; guest connections to host port
    /// P reach `<PATH>_<P>`.
    #[arg(long, requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// Print the boot timeline as one `SILO_TIMELINE {json}` line on stderr.
    #[arg(long)]
    timeline: bool,
    /// Write the boot timeline (JSON, phases up to the first KVM_RUN) to this
    /// file as soon as the guest starts running.
    #[arg(long)]
    timeline_file: Option<PathBuf>,
    /// Try to boot a standard kernel even on a PVM-backed /dev/kvm.
    #[arg(long)]
    allow_pvm: bool,
}

fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "off" => Ok(SerialOutput::Off),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
            _ => Err(format!("`{s}` is not stdout, off or file:PATH")),
        },
    }
}

/// Runs one VM to completion and maps its end to a process exit code:
/// 0 when the guest rebooted or shut down, 1 on any error.
pub fn run(args: VmmArgs) -> ExitCode {
    let vsock = match (args.vsock_cid, args.vsock_uds) {
        (Some(cid), _) if cid < 3 => {
            eprintln!("silo vmm: --vsock-cid {cid} is reserved; use 3 or more");
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
        cmdline: args.cmdline,
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        serial: args.serial,
        vsock,
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
            eprintln!("silo vmm: {e}");
            ExitCode::FAILURE
        }
    }
}
