//! The flags of `silo bench` and the peer VMMs they name.

use std::path::PathBuf;

use super::is_elf;
use crate::guest_files::built_kernel;

/// Flags for `silo bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Cold boots per VMM.
    #[arg(long, default_value_t = 5)]
    pub(super) boots: usize,
    /// Warm invocations timed: serially on one VM and on one host-mode agent,
    /// and in all over the --concurrency slots. Each VM and agent first
    /// answers one untimed invocation (its first belongs to the cold start).
    #[arg(long, default_value_t = 200)]
    pub(super) invokes: usize,
    /// VMs booted at once to measure environment creations per second.
    #[arg(long, default_value_t = 4)]
    pub(super) parallel: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    pub(super) out: PathBuf,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "bench-results.svg")]
    pub(super) plot: PathBuf,
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
    pub(super) peer_kind: Vec<PeerKind>,
    /// The peer's binary when --peer-kind names one peer (the same as
    /// --qemu or --firecracker).
    #[arg(long)]
    pub(super) peer: Option<String>,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub(super) qemu: String,
    /// Firecracker binary.
    #[arg(long, default_value = "firecracker")]
    pub(super) firecracker: String,
    /// Run here even without hardware KVM.
    #[arg(long)]
    pub(super) here: bool,
    /// Kernel of the function VMs (default: silo's ELF vmlinux with
    /// Firecracker among the peers, else its bzImage).
    #[arg(long)]
    pub(super) kernel: Option<PathBuf>,
    /// Kernel silo and QEMU boot for their cold boots [default: silo's
    /// bzImage].
    #[arg(long)]
    pub(super) qemu_kernel: Option<PathBuf>,
    /// Kernel silo and Firecracker boot for their cold boots [default:
    /// silo's ELF vmlinux].
    #[arg(long)]
    pub(super) firecracker_kernel: Option<PathBuf>,
    /// Busybox guest initramfs that prints its uptime and reboots.
    #[arg(long)]
    pub(super) initrd: Option<PathBuf>,
    /// Static guest agent.
    #[arg(long)]
    pub(super) agent: Option<PathBuf>,
    /// Counter function binary.
    #[arg(long)]
    pub(super) function: Option<PathBuf>,
    /// Directory holding QEMU's firmware (qboot as bios-microvm.bin).
    #[arg(long)]
    pub(super) peer_firmware: Option<PathBuf>,
    /// Invocations in flight at once for the concurrent warm invokes: as
    /// many VMs against as many host-mode agents, one per slot.
    #[arg(long, default_value_t = 4)]
    pub(super) concurrency: usize,
    /// Boots at once, silo against as many of each peer, for each count in
    /// turn (comma-separated); each pair boots its peer's kernel image.
    /// Wall time from spawn to all exited, boots finished, boots per second.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 10])]
    pub(super) boots_at_once: Vec<usize>,
    /// Rounds of each --boots-at-once count, alternating which VMM goes
    /// first; the median wall time is reported.
    #[arg(long, default_value_t = 3)]
    pub(super) boots_at_once_rounds: usize,
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
    pub(super) fn name(self) -> &'static str {
        match self {
            PeerKind::Qemu => "qemu",
            PeerKind::Firecracker => "firecracker",
        }
    }
}

/// One peer of a run: which VMM, its binary, and the kernel image both it
/// and silo boot for their pair of cold boots.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub(super) kind: PeerKind,
    pub(super) binary: String,
    pub(super) kernel: PathBuf,
    /// QEMU's firmware directory (`-L`).
    pub(super) firmware: Option<PathBuf>,
}

impl BenchArgs {
    /// The binary of `kind`: `--peer` when it is the only peer, else
    /// `--qemu` or `--firecracker`.
    pub(super) fn binary(&self, kind: PeerKind) -> Result<String, String> {
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
    pub(super) fn with_firecracker(&self) -> bool {
        self.peer_kind.contains(&PeerKind::Firecracker)
    }

    /// The peers, in --peer-kind order without repeats, each with its
    /// binary and kernel (given, or built from this source tree).
    pub(super) fn peers(&self) -> Result<Vec<Peer>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
