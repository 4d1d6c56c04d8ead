//! vCPU threads: run KVM_RUN in a loop and dispatch port I/O and MMIO exits
//! to the buses until the VM ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::bus::Bus;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The VMM asked it to stop.
    Stopped,
    /// The guest reset the machine (KVM system event).
    Reset,
    /// Triple fault or guest shutdown (`reboot=t`).
    Shutdown,
    /// HLT reached user space (only without an in-kernel irqchip).
    Halted,
    /// KVM could not continue; the text says why.
    Error(String),
}

/// One vCPU with what it needs to handle its exits.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Bus,
    mmio: Bus,
    stop: Arc<AtomicBool>,
    first_run: Arc<OnceLock<Instant>>,
}

impl Vcpu {
    /// Wraps a configured vCPU. `stop` ends the loop at the next exit;
    /// `first_run` records the first KVM_RUN.
    pub fn new(
        fd: VcpuFd,
        index: u8,
        pio: Bus,
        mmio: Bus,
        stop: Arc<AtomicBool>,
        first_run: Arc<OnceLock<Instant>>,
    ) -> Self {
        Self {
            fd,
            index,
            pio,
            mmio,
            stop,
            first_run,
        }
    }

    /// Runs until the guest stops this vCPU or the VMM asks it to.
    pub fn run(&mut self) -> VcpuStop {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return VcpuStop::Stopped;
            }
            self.first_run.get_or_init(Instant::now);
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(stop) = handle_exit(exit, self.index, &self.pio, &self.mmio) {
                        return stop;
                    }
                }
                // A kick from the VMM (signal) or a transient condition.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    return VcpuStop::Error(format!("vCPU {} KVM_RUN failed: {e}", self.index))
                }
            }
        }
    }
}

/// Handles one exit; `Some` ends the vCPU's loop.
fn handle_exit(exit: VcpuExit<'_>, index: u8, pio: &Bus, mmio: &Bus) -> Option<VcpuStop> {
    {
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut(port, data) => {
                pio.write(u64::from(port), data);
            }
            VcpuExit::MmioRead(addr, data) => {
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                mmio.write(addr, data);
            }
            VcpuExit::Hlt => return Some(VcpuStop::Halted),
            VcpuExit::Shutdown => return Some(VcpuStop::Shutdown),
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => return Some(VcpuStop::Reset),
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => return Some(VcpuStop::Shutdown),
            VcpuExit::FailEntry(reason, cpu) => {
                return Some(VcpuStop::Error(format!(
                    "vCPU {} failed to enter the guest: hardware reason {reason:#x} on cpu {cpu}",
                    index
                )))
            }
            VcpuExit::InternalError => {
                return Some(VcpuStop::Error(format!(
                "vCPU {}: KVM internal error (on a PVM host, an instruction PVM cannot emulate)",
                index
            )))
            }
            VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
            other => {
                return Some(VcpuStop::Error(format!(
                    "vCPU {}: unexpected exit {other:?}",
                    index
                )))
            }
        }
        None
    }
}
