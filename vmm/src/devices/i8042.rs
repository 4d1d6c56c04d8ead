//! The i8042 keyboard controller (ports 0x60 and 0x64), emulated by
//! vm-superio. Linux with `reboot=k` resets the machine through it; the VMM
//! turns that reset into the end of the VM.

use std::sync::mpsc::Sender;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;

/// Tells the VMM's main thread that the guest asked for a reset.
pub struct ResetTrigger<E: Clone + Send>(pub Sender<E>, pub E);

impl<E: Clone + Send> Trigger for ResetTrigger<E> {
    type E = std::sync::mpsc::SendError<E>;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.send(self.1.clone())
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
    /// A controller that sends `event` on `reset` when the guest asks for a CPU reset.
    pub fn new(reset: Sender<E>, event: E) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger(reset, event)),
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
        let mut dev = I8042::new(tx, "reset");
        dev.write(4, &[0x20]); // read command byte: not a reset
        assert!(rx.try_recv().is_err(), "no reset yet");
        dev.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), "reset");
    }
}
