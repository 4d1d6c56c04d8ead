//! Cold boots of silo's VMM against the peer VMMs: one at a time,
//! interleaved, timed from the process's spawn to the guest's marker and to
//! its exit; and many at once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use super::args::{BenchArgs, Peer, PeerKind};
use super::results::{median, median_ratio, stats};
use super::CMDLINE;

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

/// Firecracker's configuration for one boot of `kernel` + `initrd` with the
/// same memory, vCPUs and kernel command line as silo (`--config-file`
/// format: the API's request bodies under their resource names). `drives`
/// has no default in Firecracker's parser, so it is given, empty: the
/// initramfs is the root file system. `reboot=k` instead of `reboot=t`: on
/// x86_64 Firecracker ends its process when the guest resets the CPU
/// through the i8042 controller, which is what `reboot=k` makes Linux do.
pub(super) fn firecracker_config(kernel: &Path, initrd: &Path) -> Value {
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
pub(super) fn cold_boots(
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
pub(super) fn boots_at_once(args: &BenchArgs, peer: &Peer, initrd: &Path) -> Result<Value, String> {
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
}
