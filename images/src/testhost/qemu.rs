//! Running QEMU for one test host run: its command line, and the console
//! read to the command's exit marker, a stall or the timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{stall, TestHost, TestHostError, TestHostOutput, VERBOSE_ENV};

const BEGIN: &str = "SILO_TESTHOST_BEGIN";
const EXIT: &str = "SILO_TESTHOST_EXIT=";

/// Console silence after which the harness asks QEMU's monitor whether the
/// test host stalled (see [`stall`]); asked again at this interval.
const STALL_CHECK: Duration = Duration::from_secs(60);

/// Kills and reaps QEMU when dropped.
struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl TestHost {
    /// The QEMU command line for one run.
    fn qemu_command(&self, image: &Path, cpio: &Path, monitor: &Path) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        let cpu = std::env::var("SILO_TESTHOST_CPU").unwrap_or_else(|_| "EPYC,+svm,+npt".into());
        cmd.args(["-accel", "tcg,thread=multi", "-M", "q35"])
            .args(["-cpu", &cpu])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(cpio)
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init clocksource=hpet",
            ]);
        if !self.port_forwards.is_empty() {
            let mut netdev = String::from("user,id=net0");
            for (h, g) in &self.port_forwards {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
            }
            // No option ROM: the test host boots its kernel directly.
            cmd.args(["-netdev", &netdev])
                .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        }
        // QEMU's monitor on a Unix socket: the harness recognises a stalled
        // test host through it ([`stall`]), and so can a person
        // (`info registers`, `info lapic`).
        let mut arg = std::ffi::OsString::from("unix:");
        arg.push(monitor);
        arg.push(",server=on,wait=off");
        cmd.arg("-monitor").arg(arg);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs QEMU to the end of the command, streaming and logging its console.
    pub(super) fn boot(
        &self,
        image: &Path,
        cpio: &Path,
        mut log: std::fs::File,
    ) -> Result<TestHostOutput, TestHostError> {
        let started = Instant::now();
        eprintln!(
            "[testhost] booting QEMU TCG test host (nested SVM, {} MiB, {} CPU{}); timeout {:?}",
            self.memory_mib,
            self.cpus,
            if self.port_forwards.is_empty() {
                ""
            } else {
                ", port forwarding"
            },
            self.timeout
        );
        // In the run directory (removed with it), unless that path is too
        // long for a Unix socket (108 bytes).
        let monitor = std::env::var_os("SILO_TESTHOST_MONITOR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cpio.with_file_name("monitor.sock"));
        let monitor = if monitor.as_os_str().len() < 100 {
            monitor
        } else {
            std::env::temp_dir().join(format!("silo-testhost-{}.sock", std::process::id()))
        };
        let child = self
            .qemu_command(image, cpio, &monitor)
            .spawn()
            .map_err(TestHostError::Spawn)?;
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().expect("piped stdout");
        let mut stderr = child.0.stderr.take().expect("piped stderr");
        let verbose = std::env::var_os(VERBOSE_ENV).is_some();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).replace('\r', "");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let deadline = started + self.timeout;
        let mut console = Vec::new();
        let mut begun_at = None;
        let mut exit_code = None;
        let mut last_line = Instant::now();
        let mut last_check = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    last_line = Instant::now();
                    let _ = writeln!(log, "{line}");
                    if line.starts_with(BEGIN) && begun_at.is_none() {
                        begun_at = Some(started.elapsed());
                        eprintln!(
                            "[testhost] up after {:.1?}; running the command",
                            started.elapsed()
                        );
                    } else if let Some(rc) = line.strip_prefix(EXIT) {
                        exit_code = rc.trim().parse::<i32>().ok();
                    } else if verbose || begun_at.is_some() {
                        eprintln!("[testhost] {line}");
                    } else if line.starts_with("[testhost] ") {
                        // The init's own notes (TSC calibration, a module
                        // that failed to load) before the command starts.
                        eprintln!("{line}");
                    }
                    console.push(line);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if last_line.elapsed() >= STALL_CHECK && last_check.elapsed() >= STALL_CHECK {
                        last_check = Instant::now();
                        if let Some(state) = stall::stalled(&monitor) {
                            drop(child);
                            eprintln!("[testhost] stalled (QEMU did not deliver a pending interrupt); QEMU killed:\n{state}");
                            return Err(TestHostError::Stalled {
                                how:
                                    "its CPU stayed halted with interrupts enabled and an \
                                      interrupt pending in its local APIC that QEMU never delivered",
                                silent: last_line.elapsed(),
                                state,
                                tail: tail(&console),
                            });
                        }
                    }
                    if let Some(every) = self.heartbeat {
                        if begun_at.is_some() && last_line.elapsed() >= every * 4 {
                            drop(child);
                            let state = format!(
                                "no heartbeat for {:?} from a command that prints one every {every:?}: \
                                 the test host stopped running its timers",
                                last_line.elapsed()
                            );
                            eprintln!("[testhost] stalled ({state}); QEMU killed");
                            return Err(TestHostError::Stalled {
                                how: "the command's console heartbeat stopped (its CPU ran \
                                      without running its timers)",
                                silent: last_line.elapsed(),
                                state,
                                tail: tail(&console),
                            });
                        }
                    }
                    if Instant::now() >= deadline {
                        drop(child);
                        eprintln!("[testhost] timed out after {:?}; QEMU killed", self.timeout);
                        return Err(TestHostError::Timeout {
                            timeout: self.timeout,
                            tail: tail(&console),
                        });
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = child.0.wait();
        let _ = reader.join();
        let qemu_err = err_reader.join().unwrap_or_default();
        let _ = writeln!(log, "--- qemu stderr ---\n{qemu_err}");
        let total_time = started.elapsed();
        let Some(exit_code) = exit_code else {
            let mut t = tail(&console);
            if !qemu_err.trim().is_empty() {
                t.push_str("\nqemu stderr: ");
                t.push_str(qemu_err.trim());
            }
            return Err(TestHostError::NoExitMarker { tail: t });
        };
        let begin = console
            .iter()
            .position(|l| l.starts_with(BEGIN))
            .map_or(0, |i| i + 1);
        let end = console
            .iter()
            .rposition(|l| l.starts_with(EXIT))
            .unwrap_or(console.len());
        let output = console[begin..end.max(begin)].join("\n");
        eprintln!("[testhost] command exited {exit_code} after {total_time:.1?}");
        Ok(TestHostOutput {
            output,
            exit_code,
            console: console.join("\n"),
            boot_time: begun_at.unwrap_or_default(),
            total_time,
        })
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(30)..].join("\n")
}
