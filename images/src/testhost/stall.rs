//! Recognising a stalled test host from outside, through QEMU's monitor.
//!
//! With QEMU 7.2's TCG emulating AMD SVM for nested guests, the test host's
//! only CPU was caught halted (`HLT=1`) with interrupts enabled (`IF` in
//! `RFLAGS`) and its local APIC timer's interrupt pending in `IRR`, never
//! delivered, not even woken by an NMI from the monitor: as if the SVM
//! global interrupt flag had stayed clear. Every timer in the test host
//! stops then (the daemon's deadlines, busybox `timeout`, `sleep`), so a
//! command waits until the run's timeout with the machine idle. A CPU
//! halted with a deliverable interrupt pending for seconds is never a
//! command's doing: [`probe`] reports it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// What the monitor showed of the CPU.
pub(super) struct Probe {
    /// Halted, interrupts enabled, an interrupt pending in the LAPIC's IRR.
    pub stalled: bool,
    /// The instruction pointer (a stall stays at one).
    pub rip: String,
    /// The relevant lines of `info registers` and `info lapic`.
    pub state: String,
}

/// Reads from the monitor until its prompt.
fn until_prompt(s: &mut UnixStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"(qemu) ") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Asks the monitor at `socket` for CPU 0's registers and local APIC.
pub(super) fn probe(socket: &Path) -> std::io::Result<Probe> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    until_prompt(&mut s)?;
    s.write_all(b"info registers\n")?;
    let regs = until_prompt(&mut s)?;
    s.write_all(b"info lapic\n")?;
    let lapic = until_prompt(&mut s)?;
    Ok(parse(&regs, &lapic))
}

/// Reads [`Probe`] from the text of `info registers` and `info lapic`.
fn parse(regs: &str, lapic: &str) -> Probe {
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.contains(key))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let rip_line = line(regs, "RIP=");
    let rip = rip_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("RIP="))
        .unwrap_or("")
        .to_string();
    let rflags = rip_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("RFL="))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    let irr = line(lapic, "IRR");
    let pending = irr
        .strip_prefix("IRR")
        .is_some_and(|v| !v.trim().is_empty() && !v.contains("(none)"));
    let stalled = rip_line.contains("HLT=1") && rflags & 0x200 != 0 && pending;
    let state = [
        rip_line,
        line(lapic, "LVTT"),
        line(lapic, "Timer"),
        line(lapic, "ISR"),
        irr,
    ]
    .join("\n");
    Probe {
        stalled,
        rip,
        state,
    }
}

/// The CPU state if the test host behind `monitor` is stalled: halted with a
/// deliverable interrupt pending, at the same instruction, in three probes
/// five seconds apart (a CPU that halts while waiting for a timer has none
/// pending; one pending is delivered within microseconds).
pub(super) fn stalled(monitor: &Path) -> Option<String> {
    let first = probe(monitor).ok().filter(|p| p.stalled)?;
    let mut last = first.state.clone();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(5));
        let next = probe(monitor).ok().filter(|p| p.stalled)?;
        if next.rip != first.rip {
            return None;
        }
        last = next.state;
    }
    Some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `info lapic` of the test host caught stalled (2026-12-07, QEMU
    /// 7.2.22): the timer's vector pending in IRR.
    const STALLED_LAPIC: &str = "dumping local APIC state for CPU 0 \n\n\
        LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)\n\
        Timer\t DCR=0x3 (divide by 16) initial_count = 135458 current_count = 0\n\
        ISR\t (none)\n\
        IRR\t 236 \n\n\
        APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x10\n(qemu) ";
    /// Its `info registers`: halted in the kernel with IF set.
    const STALLED_REGS: &str = "CPU#0\n\
        RIP=ffffffffbc617a0b RFL=00000206 [-----P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n(qemu) ";

    #[test]
    fn the_stall_caught_in_a_test_host_reads_as_one() {
        let p = parse(STALLED_REGS, STALLED_LAPIC);
        assert!(p.stalled);
        assert_eq!(p.rip, "ffffffffbc617a0b");
        assert!(p.state.contains("IRR\t 236"), "{}", p.state);
    }

    #[test]
    fn a_running_or_idle_test_host_does_not() {
        // Running user code (a healthy test host, same session).
        let running = "RIP=00005640c1ac9c41 RFL=00000246 [---Z-P-] CPL=3 II=0 A20=1 SMM=0 HLT=0\n";
        let none = STALLED_LAPIC.replace("IRR\t 236 ", "IRR\t (none)");
        assert!(!parse(running, STALLED_LAPIC).stalled);
        // Halted waiting for its timer: nothing pending.
        assert!(!parse(STALLED_REGS, &none).stalled);
        // Halted with interrupts disabled: a pending one waits rightly.
        let cli = STALLED_REGS.replace("RFL=00000206", "RFL=00000006");
        assert!(!parse(&cli, STALLED_LAPIC).stalled);
    }
}
