//! The 8250 UART on COM1 (ports 0x3f8-0x3ff, IRQ 4), emulated by vm-superio;
//! its output goes to the VMM's stdout, a host file, or nowhere.

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1 port count.
pub const COM1_LEN: u64 = 8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Raises an interrupt by writing to an EventFd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// A writer that records when the guest printed its first byte.
pub struct TimedWriter {
    inner: Box<dyn Write + Send>,
    first_byte: Arc<OnceLock<Instant>>,
}

impl TimedWriter {
    /// Wraps `inner`; the first write sets `first_byte`.
    pub fn new(inner: Box<dyn Write + Send>, first_byte: Arc<OnceLock<Instant>>) -> Self {
        Self { inner, first_byte }
    }
}

impl Write for TimedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.first_byte.get_or_init(Instant::now);
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The COM1 device on the port I/O bus.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, TimedWriter>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: EventFd, out: TimedWriter) -> Self {
        Self {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            // Output errors (a closed stdout) must not stop the guest.
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                tracing::debug!(error = ?e, "serial write failed");
            }
        }
    }
}
