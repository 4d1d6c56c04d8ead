//! Flags of the `silo-vmm` binary, parsed by hand: the same flags, defaults
//! and checks as the former `silo vmm` subcommand.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::vm::{SerialOutput, DEFAULT_CMDLINE};

mod net;
pub use net::parse_rate;

/// Usage text printed by `--help`.
pub const USAGE: &str = "\
Boot one microVM (one process per VM; normally spawned by the daemon)

Usage: silo-vmm [OPTIONS] --kernel <KERNEL>

Options:
      --kernel <KERNEL>                Guest kernel: ELF vmlinux or bzImage (told apart by content)
      --initrd <INITRD>                Initial ramdisk (uncompressed newc cpio)
      --cmdline <CMDLINE>              Kernel command line (virtio device declarations are appended)
                                       [default: console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check quiet
                                       pty.legacy_count=0]
      --mem-mib <MEM_MIB>              Guest memory in MiB [default: 128]
      --vcpus <VCPUS>                  Number of vCPUs [default: 1]
      --serial <SERIAL>                Serial console: `stdout`, `off`, or `file:PATH` [default: stdout]
      --vsock-cid <VSOCK_CID>          Guest context id of the vsock device (>= 3); needs --vsock-uds
      --vsock-uds <VSOCK_UDS>          Host Unix socket of the vsock device; guest connections to host
                                       port P reach `<PATH>_<P>`
      --net-tap <NAME>                 Give the guest a virtio-net interface (eth0) on the existing tap NAME
                                       (opened before the jail; without it the guest has no network interface)
      --net-mac <MAC>                  The guest's MAC address [default: 06:00:a9:fe:00:02]
      --net-rx-rate <BYTES_PER_S[,BURST_BYTES]>
                                       Limit what the guest receives: a token bucket of BYTES_PER_S bytes
                                       refilled every second, plus BURST_BYTES once at start (Firecracker's
                                       size, one-time burst, refill time = 1 s). Needs --net-tap
      --net-tx-rate <BYTES_PER_S[,BURST_BYTES]>
                                       Limit what the guest sends, likewise. Needs --net-tap
      --net-pps <PACKETS_PER_S>        Limit frames per second in each direction (a bucket of PACKETS_PER_S
                                       operations refilled every second). Needs --net-tap
      --pmem <PATH>                    Share a read-only image with the guest through virtio-pmem (the file is
                                       mapped read-only and shared: VMs mapping the same file share the host's
                                       page cache; the guest sees /dev/pmem0, /dev/pmem1, ... in flag order and
                                       can mount it with DAX). Repeatable, up to 8
      --balloon                        Give the guest a virtio-balloon device with free page reporting: the
                                       2 MiB blocks the guest reports free go back to the host (madvise)
      --balloon-stats-file <PATH>      Publish the balloon's counters to this file (created, one page, read
                                       by the daemon). Needs --balloon
      --balloon-report-order <N>       The guest reports free blocks of 2^N pages (0..=9; the kernel's own is
                                       10 on silo's kernel; the agent applies it). Needs --balloon
      --small-pages                    Back guest RAM with 4 KiB host pages (MADV_NOHUGEPAGE), not huge pages:
                                       the balloon then gives back every whole free 4 KiB page reported
      --timeline                       Print the boot timeline as one `SILO_TIMELINE {json}` line on stderr
      --timeline-file <TIMELINE_FILE>  Write the boot timeline (JSON, phases up to the first KVM_RUN) to
                                       this file as soon as the guest starts running
      --allow-pvm                      Try to boot a standard kernel even on a PVM-backed /dev/kvm
      --managed                        Started by the daemon: SILO_SECCOMP=off is ignored (with a warning)
      --jail-root <DIR>                Jail this VMM first (needs root): DIR becomes its `/`; the kernel and
                                       initrd are bound read-only at /kernel and /initrd, and --vsock-uds
                                       and --timeline-file are paths inside DIR. Needs --jail-uid, --jail-gid
      --jail-uid <UID>                 The VM's own unprivileged user id (not 0)
      --jail-gid <GID>                 The VM's own group id (not 0)
      --jail-cgroup <DIR>              cgroup v2 directory (limits written by the caller) to join first
      --jail-netns <PATH>              Join this network namespace (an nsfs file such as /run/netns/NAME)
                                       instead of a new empty one; --net-tap is opened there
  -h, --help                           Print help

Environment:
  SILO_LOG      log level on stderr: error, warn, info (default), debug, trace
  SILO_SECCOMP  `off` disables the per-thread seccomp filters (debugging only; not with --managed)
";

/// Parsed flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmArgs {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// vCPU count.
    pub vcpus: u8,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// vsock guest context id.
    pub vsock_cid: Option<u64>,
    /// vsock host socket.
    pub vsock_uds: Option<PathBuf>,
    /// Read-only images for virtio-pmem, in order.
    pub pmem: Vec<PathBuf>,
    /// Attach a virtio-balloon device with free page reporting.
    pub balloon: bool,
    /// Where the balloon publishes its counters.
    pub balloon_stats_file: Option<PathBuf>,
    /// The guest's page reporting order (added to the command line).
    pub balloon_report_order: Option<u8>,
    /// Back guest RAM with 4 KiB host pages.
    pub small_pages: bool,
    /// The virtio-net device, if any.
    pub net: Option<crate::device_manager::NetConfig>,
    /// Print the timeline on stderr at the end.
    pub timeline: bool,
    /// Write the early timeline to this file.
    pub timeline_file: Option<PathBuf>,
    /// Boot a standard kernel on a PVM host anyway.
    pub allow_pvm: bool,
    /// Started by the daemon: the seccomp off switch is refused.
    pub managed: bool,
    /// Enter this jail before anything else.
    pub jail: Option<crate::jail::JailConfig>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Boot a VM.
    Run(Box<VmmArgs>),
    /// Print [`USAGE`] and exit successfully.
    Help,
}

/// A command line that cannot be parsed; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// A flag silo-vmm does not know, or a stray argument.
    #[error("unexpected argument '{0}' found")]
    Unexpected(String),
    /// A flag given without its value.
    #[error("a value is required for '{0}' but none was supplied")]
    MissingValue(&'static str),
    /// A switch given a value.
    #[error("unexpected value '{value}' for '{flag}' found; no more were expected")]
    UnexpectedValue {
        /// The switch.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A flag given twice.
    #[error("the argument '{0}' cannot be used multiple times")]
    Repeated(&'static str),
    /// A value that does not parse.
    #[error("invalid value '{value}' for '{flag}': {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// A required flag is absent.
    #[error("the following required arguments were not provided: {0}")]
    Required(&'static str),
    /// An argument that is not UTF-8 where text is needed.
    #[error("invalid UTF-8 was detected in the value of '{0}'")]
    NotUtf8(String),
}

/// Every flag: name, takes a value.
const FLAGS: &[(&str, bool)] = &[
    ("--kernel", true),
    ("--initrd", true),
    ("--cmdline", true),
    ("--mem-mib", true),
    ("--vcpus", true),
    ("--serial", true),
    ("--vsock-cid", true),
    ("--vsock-uds", true),
    ("--pmem", true),
    ("--balloon", false),
    ("--balloon-stats-file", true),
    ("--balloon-report-order", true),
    ("--small-pages", false),
    ("--net-tap", true),
    ("--net-mac", true),
    ("--net-rx-rate", true),
    ("--net-tx-rate", true),
    ("--net-pps", true),
    ("--timeline", false),
    ("--timeline-file", true),
    ("--allow-pvm", false),
    ("--managed", false),
    ("--jail-root", true),
    ("--jail-uid", true),
    ("--jail-gid", true),
    ("--jail-cgroup", true),
    ("--jail-netns", true),
];

/// Flags that may be given more than once (each use adds a value).
const REPEATABLE: &[&str] = &["--pmem"];

/// Parses `--serial`: `stdout`, `off` or `file:PATH`.
pub fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "off" => Ok(SerialOutput::Off),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
            _ => Err(format!("`{s}` is not stdout, off or file:PATH")),
        },
    }
}

fn number<T: std::str::FromStr>(flag: &'static str, value: &OsString) -> Result<T, CliError>
where
    T::Err: std::fmt::Display,
{
    let s = text(flag, value)?;
    s.parse().map_err(|e: T::Err| CliError::Invalid {
        flag,
        value: s.to_string(),
        reason: e.to_string(),
    })
}

fn text<'v>(flag: &'static str, value: &'v OsString) -> Result<&'v str, CliError> {
    value.to_str().ok_or(CliError::NotUtf8(flag.to_string()))
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut seen: Vec<(&'static str, Option<OsString>)> = Vec::new();
    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            return Err(CliError::Unexpected(arg.to_string_lossy().into_owned()));
        };
        if s == "-h" || s == "--help" {
            return Ok(Command::Help);
        }
        let (name, inline) = match s.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
            _ => (s, None),
        };
        let Some(&(flag, takes_value)) = FLAGS.iter().find(|(f, _)| *f == name) else {
            return Err(CliError::Unexpected(s.to_string()));
        };
        if !REPEATABLE.contains(&flag) && seen.iter().any(|(f, _)| *f == flag) {
            return Err(CliError::Repeated(flag));
        }
        let value = match (takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => match it.next() {
                Some(v) if !v.to_str().is_some_and(|v| v.starts_with("--")) => Some(v),
                _ => return Err(CliError::MissingValue(flag)),
            },
            (false, Some(v)) => {
                return Err(CliError::UnexpectedValue {
                    flag,
                    value: v.to_string_lossy().into_owned(),
                })
            }
            (false, None) => None,
        };
        seen.push((flag, value));
    }
    let get = |flag: &str| {
        seen.iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.clone().unwrap_or_default())
    };
    let has = |flag: &str| seen.iter().any(|(f, _)| *f == flag);
    let kernel = get("--kernel").ok_or(CliError::Required("--kernel <KERNEL>"))?;
    let vsock_cid = get("--vsock-cid")
        .map(|v| number::<u64>("--vsock-cid", &v))
        .transpose()?;
    let vsock_uds = get("--vsock-uds").map(PathBuf::from);
    match (&vsock_cid, &vsock_uds) {
        (Some(_), None) => return Err(CliError::Required("--vsock-uds <VSOCK_UDS>")),
        (None, Some(_)) => return Err(CliError::Required("--vsock-cid <VSOCK_CID>")),
        _ => {}
    }
    let serial = match get("--serial") {
        None => SerialOutput::Stdout,
        Some(v) => {
            let s = text("--serial", &v)?;
            parse_serial(s).map_err(|reason| CliError::Invalid {
                flag: "--serial",
                value: s.to_string(),
                reason,
            })?
        }
    };
    let cmdline = match get("--cmdline") {
        None => DEFAULT_CMDLINE.to_string(),
        Some(v) => text("--cmdline", &v)?.to_string(),
    };
    let net = net::parse_net(&get)?;
    for flag in ["--balloon-stats-file", "--balloon-report-order"] {
        if has(flag) && !has("--balloon") {
            return Err(CliError::Required("--balloon"));
        }
    }
    let balloon_report_order = get("--balloon-report-order")
        .map(|v| number::<u8>("--balloon-report-order", &v))
        .transpose()?;
    if let Some(n) = balloon_report_order.filter(|n| *n > 9) {
        return Err(CliError::Invalid {
            flag: "--balloon-report-order",
            value: n.to_string(),
            reason: "at most 9 (2 MiB)".into(),
        });
    }
    let jail = match get("--jail-root") {
        None => {
            for flag in ["--jail-uid", "--jail-gid", "--jail-cgroup", "--jail-netns"] {
                if has(flag) {
                    return Err(CliError::Required("--jail-root <DIR>"));
                }
            }
            None
        }
        Some(root) => Some(crate::jail::JailConfig {
            root: PathBuf::from(root),
            uid: number(
                "--jail-uid",
                &get("--jail-uid").ok_or(CliError::Required("--jail-uid <UID>"))?,
            )?,
            gid: number(
                "--jail-gid",
                &get("--jail-gid").ok_or(CliError::Required("--jail-gid <GID>"))?,
            )?,
            cgroup: get("--jail-cgroup").map(PathBuf::from),
            netns: get("--jail-netns").map(PathBuf::from),
            tap: net.as_ref().map(|n| n.tap.clone()),
        }),
    };
    Ok(Command::Run(Box::new(VmmArgs {
        kernel: PathBuf::from(kernel),
        initrd: get("--initrd").map(PathBuf::from),
        cmdline,
        mem_mib: get("--mem-mib")
            .map(|v| number("--mem-mib", &v))
            .transpose()?
            .unwrap_or(128),
        vcpus: get("--vcpus")
            .map(|v| number("--vcpus", &v))
            .transpose()?
            .unwrap_or(1),
        serial,
        vsock_cid,
        vsock_uds,
        pmem: seen
            .iter()
            .filter(|(f, _)| *f == "--pmem")
            .map(|(_, v)| PathBuf::from(v.clone().unwrap_or_default()))
            .collect(),
        balloon: has("--balloon"),
        balloon_stats_file: get("--balloon-stats-file").map(PathBuf::from),
        balloon_report_order,
        small_pages: has("--small-pages"),
        net,
        timeline: has("--timeline"),
        timeline_file: get("--timeline-file").map(PathBuf::from),
        allow_pvm: has("--allow-pvm"),
        managed: has("--managed"),
        jail,
    })))
}

/// The most verbose level named in `SILO_LOG` (`warn`, or directives such
/// as `silo_vmm=debug,info`); `info` when unset or unreadable.
pub fn log_level(spec: Option<&str>) -> tracing::Level {
    use tracing::Level;
    let level = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "error" => Some(Level::ERROR),
        "warn" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    };
    spec.and_then(|spec| {
        spec.split(',')
            .filter_map(|d| level(d.rsplit('=').next().unwrap_or(d)))
            // Level orders TRACE as the largest: the most verbose wins.
            .max()
    })
    .unwrap_or(Level::INFO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<VmmArgs, CliError> {
        match parse(args.iter().copied())? {
            Command::Run(a) => Ok(*a),
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults_match_silo_vmm() {
        let a = run(&["--kernel", "/k"]).unwrap();
        assert_eq!(a.kernel, PathBuf::from("/k"));
        assert_eq!(a.cmdline, DEFAULT_CMDLINE);
        assert_eq!((a.mem_mib, a.vcpus), (128, 1));
        assert_eq!(a.serial, SerialOutput::Stdout);
        assert!(a.initrd.is_none() && a.vsock_cid.is_none() && a.timeline_file.is_none());
        assert!(a.pmem.is_empty());
        assert!(!a.timeline && !a.allow_pvm && !a.managed);
    }

    #[test]
    fn jail_flags_come_together() {
        let a = run(&[
            "--kernel",
            "/k",
            "--jail-root",
            "/run/vm-1",
            "--jail-uid",
            "1000000001",
            "--jail-gid=1000000001",
            "--jail-cgroup",
            "/sys/fs/cgroup/silo/vm-1",
        ])
        .unwrap();
        let j = a.jail.unwrap();
        assert_eq!(j.root, PathBuf::from("/run/vm-1"));
        assert_eq!((j.uid, j.gid), (1_000_000_001, 1_000_000_001));
        assert_eq!(j.cgroup, Some(PathBuf::from("/sys/fs/cgroup/silo/vm-1")));
        assert!(run(&["--kernel", "/k"]).unwrap().jail.is_none());
        let e = |args: &[&str]| run(args).unwrap_err().to_string();
        assert!(e(&["--kernel", "/k", "--jail-uid", "5"]).contains("--jail-root"));
        assert!(
            e(&["--kernel", "/k", "--jail-root", "/r", "--jail-gid", "5"]).contains("--jail-uid")
        );
        assert!(
            e(&["--kernel", "/k", "--jail-root", "/r", "--jail-uid", "5"]).contains("--jail-gid")
        );
        assert!(e(&[
            "--kernel",
            "/k",
            "--jail-root",
            "/r",
            "--jail-uid",
            "x",
            "--jail-gid",
            "5"
        ])
        .contains("'--jail-uid'"));
    }

    #[test]
    fn every_flag_in_both_spellings() {
        let a = run(&[
            "--kernel=/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--mem-mib=256",
            "--vcpus",
            "2",
            "--serial",
            "file:/tmp/c.log",
            "--vsock-cid",
            "3",
            "--vsock-uds=/tmp/v",
            "--timeline",
            "--timeline-file",
            "/tmp/t.json",
            "--allow-pvm",
            "--managed",
        ])
        .unwrap();
        assert_eq!(a.initrd, Some(PathBuf::from("/i")));
        assert_eq!(a.cmdline, "console=ttyS0 quiet");
        assert_eq!((a.mem_mib, a.vcpus), (256, 2));
        assert_eq!(a.serial, SerialOutput::File("/tmp/c.log".into()));
        assert_eq!(a.vsock_cid, Some(3));
        assert_eq!(a.vsock_uds, Some(PathBuf::from("/tmp/v")));
        assert!(a.timeline && a.allow_pvm && a.managed);
        assert_eq!(a.timeline_file, Some(PathBuf::from("/tmp/t.json")));
        assert_eq!(
            run(&["--kernel", "/k", "--serial", "off"]).unwrap().serial,
            SerialOutput::Off
        );
    }

    #[test]
    fn balloon_flags_need_the_balloon_and_a_sane_order() {
        let a = run(&[
            "--kernel",
            "/k",
            "--balloon",
            "--balloon-stats-file",
            "/s",
            "--balloon-report-order",
            "5",
            "--small-pages",
        ])
        .unwrap();
        assert!(a.balloon && a.small_pages);
        assert_eq!(a.balloon_stats_file, Some(PathBuf::from("/s")));
        assert_eq!(a.balloon_report_order, Some(5));
        assert!(run(&["--kernel", "/k", "--balloon-report-order", "5"]).is_err());
        assert!(run(&["--kernel", "/k", "--balloon-stats-file", "/s"]).is_err());
        let e = run(&[
            "--kernel",
            "/k",
            "--balloon",
            "--balloon-report-order",
            "10",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("at most 9"), "{e}");
    }

    #[test]
    fn pmem_is_repeatable_and_keeps_order() {
        let a = run(&["--kernel", "/k", "--pmem", "/a.img", "--pmem=/b.img"]).unwrap();
        assert_eq!(
            a.pmem,
            vec![PathBuf::from("/a.img"), PathBuf::from("/b.img")]
        );
        let e = run(&["--kernel", "/k", "--pmem"]).unwrap_err().to_string();
        assert!(e.contains("'--pmem'"), "{e}");
        assert!(USAGE.contains("--pmem <PATH>"));
    }

    #[test]
    fn help_wins() {
        assert_eq!(parse(["--help"]).unwrap(), Command::Help);
        assert_eq!(parse(["--kernel", "/k", "-h"]).unwrap(), Command::Help);
    }

    #[test]
    fn errors_name_the_flag() {
        let e = |args: &[&str]| run(args).unwrap_err().to_string();
        assert!(e(&[]).contains("--kernel"));
        assert!(e(&["--kernel"]).contains("'--kernel'"));
        assert!(e(&["--kernel", "--initrd", "/i"]).contains("'--kernel'"));
        assert!(e(&["--kernel", "/k", "--mem-mib", "lots"]).contains("'--mem-mib'"));
        assert!(e(&["--kernel", "/k", "--vcpus", "300"]).contains("'--vcpus'"));
        assert!(e(&["--kernel", "/k", "--serial", "tty"]).contains("not stdout, off or file:PATH"));
        assert!(e(&["--kernel", "/k", "--serial", "file:"]).contains("'--serial'"));
        assert!(e(&["--kernel", "/k", "--vsock-cid", "3"]).contains("--vsock-uds"));
        assert!(e(&["--kernel", "/k", "--vsock-uds", "/v"]).contains("--vsock-cid"));
        assert!(e(&["--kernel", "/k", "--kernel", "/j"]).contains("multiple times"));
        assert!(e(&["--kernel", "/k", "--timeline=yes"]).contains("'--timeline'"));
        assert!(e(&["--kernel", "/k", "--managed=no"]).contains("'--managed'"));
        assert!(e(&["--kernel", "/k", "--bogus"]).contains("'--bogus'"));
        assert!(e(&["--kernel", "/k", "stray"]).contains("'stray'"));
    }

    #[test]
    fn reserved_cid_parses_and_is_refused_later() {
        // Like `silo vmm`: the value parses, the run refuses it (exit 1).
        let a = run(&["--kernel", "/k", "--vsock-cid", "2", "--vsock-uds", "/v"]).unwrap();
        assert_eq!(a.vsock_cid, Some(2));
    }

    #[test]
    fn log_levels() {
        use tracing::Level;
        assert_eq!(log_level(None), Level::INFO);
        assert_eq!(log_level(Some("warn")), Level::WARN);
        assert_eq!(log_level(Some("ERROR")), Level::ERROR);
        assert_eq!(log_level(Some("silo_vmm=debug,warn")), Level::DEBUG);
        assert_eq!(log_level(Some("nonsense")), Level::INFO);
    }
}
