//! The i8042 keyboard controller (ports 0x60 and 0x64), emulated by
//! vm-superio. Linux with `reboot=k` resets the machine through it; the VMM
//! turns that reset into the end of the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;

/// Stops the vCPUs and tells the VMM's main thread that the guest asked
/// for a reset.
pub struct ResetTrigger<E: Clone + Send> {
    tx: Sender<E>,
    event: E,
    stop: Arc<AtomicBool>,
}

impl<E: Clone + Send> Trigger for ResetTrigger<E> {
    type E = std::sync::mpsc::SendError<E>;
    fn trigger(&self) -> Result<(), Self::E> {
        // The resetting vCPU leaves its loop at once instead of running the
        // guest's reset retry loop (a port I/O exit per try) until the main
        // thread gets to stop it: under many concurrent boots that spin
        // took CPU from the VMs still booting.
        self.stop.store(true, Ordering::Release);
        self.tx.send(self.event.clone())
    }
}

/// First i8042 port (data); the command port is 0x64, offset 4.
pub const I8042_PORT: u64 = 0x60;
/// Ports covered (0x60..=0x64).
pub const I8042_LEN: u64 = 5;

/// The i8042 on the port I/O bus; a guest reset fires the trigger.
pub struct I8042<E: Clone + Send> {
    dev: I8042Device<ResetTrigger<E>>,
}

impl<E: Clone + Send> I8042<E> {
    /// A controller that, when the guest asks for a CPU reset, sets `stop`
    /// (the vCPUs' stop flag) and sends `event` on `reset`.
    pub fn new(reset: Sender<E>, event: E, stop: Arc<AtomicBool>) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger {
                tx: reset,
                event,
                stop,
            }),
        }
    }
}

impl<E: Clone + Send> BusDevice for I8042<E> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            data[0] = self.dev.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1
            && (offset == 0 || offset == 4)
            && self.dev.write(offset as u8, data[0]).is_err()
        {
            tracing::warn!("i8042 reset signal lost: the VMM is already stopping");
        }
    }
}

/// Ports the guest probes that silo does not emulate (POST code 0x80, PCI
/// config space, the second PIC's ELCR, ...): reads return all ones and
/// writes are dropped, quietly.
pub struct IgnoredPorts;

impl BusDevice for IgnoredPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_vmm() {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut dev = I8042::new(tx, "reset", stop.clone());
        dev.write(4, &[0x20]); // read command byte: not a reset
        assert!(rx.try_recv().is_err(), "no reset yet");
        assert!(!stop.load(Ordering::Acquire));
        dev.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), "reset");
        assert!(stop.load(Ordering::Acquire), "the vCPUs are told to stop");
    }
}
