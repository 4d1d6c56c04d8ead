//! Virtio devices over the virtio-mmio transport (virtio 1.x).

pub mod balloon;
pub mod mmio;
pub mod net;
pub mod pmem;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// VIRTIO_F_VERSION_1 as a feature mask: the device speaks virtio 1.x
/// (modern) only.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Interrupt status bit: a used buffer was added.
pub const VIRTIO_MMIO_INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;

/// Raises the device's interrupt: sets the status bit the driver reads and
/// kicks the irqfd KVM injects.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt that signals `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    /// Tells the driver a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!(error = %e, "virtio interrupt lost");
        }
    }

    /// The pending interrupt bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd (for registration with KVM and for tests).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a queue the device cannot use.
    #[error("virtio queue {0} is not valid")]
    BadQueue(usize),
    /// Any other problem.
    #[error("{0}")]
    Other(String),
}

/// Reads `data.len()` bytes at `offset` of a device's configuration
/// space `cfg`; bytes past its end read as 0.
pub fn read_config_space(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| cfg.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// What a device checks on activation: the driver set up the `want`
/// queues `device` (its name in the error) uses, and there is guest memory.
pub fn check_activation(
    device: &str,
    want: usize,
    queues: &[Queue],
    mem: &GuestMemory,
) -> Result<(), ActivateError> {
    if queues.len() != want {
        return Err(ActivateError::Other(format!(
            "{device} needs {want} queue{}, got {}",
            if want == 1 { "" } else { "s" },
            queues.len()
        )));
    }
    if mem.num_regions() == 0 {
        return Err(ActivateError::Other("no guest memory".into()));
    }
    Ok(())
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 for net, 5 for the balloon, 19 for vsock, 27 for pmem).
    fn device_type(&self) -> u32;
    /// Feature bits offered.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// How many of the queues the driver sets up with `features`
    /// negotiated (the first ones; by default all): the balloon's
    /// reporting queue exists only with free page reporting.
    fn queue_count(&self, _features: u64) -> usize {
        self.queue_max_sizes().len()
    }
    /// Reads device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Starts the device with the driver's queues and negotiated features.
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError>;
    /// Returns the device to its initial state (driver wrote status 0).
    fn reset(&mut self);
    /// The eventfds signalled when the driver notifies each queue (KVM
    /// ioeventfds on the transport's QueueNotify register), in queue order.
    fn queue_events(&self) -> &[EventFd];
    /// Registers the device's file descriptors with the device event loop.
    fn init_events(&mut self, ops: &mut EventOps);
    /// Handles one ready file descriptor registered by the device.
    fn process_event(&mut self, events: Events, ops: &mut EventOps);
}

/// A virtio device behind its MMIO transport, as an event-loop subscriber:
/// the loop hands the device its ready fds under the transport's lock.
pub struct VirtioSubscriber<D: VirtioDevice>(pub Arc<Mutex<mmio::MmioTransport<D>>>);

impl<D: VirtioDevice> MutEventSubscriber for VirtioSubscriber<D> {
    fn init(&mut self, ops: &mut EventOps) {
        self.0
            .lock()
            .expect("virtio device lock poisoned")
            .device_mut()
            .init_events(ops);
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0
            .lock()
            .expect("virtio device lock poisoned")
            .device_mut()
            .process_event(events, ops);
    }
}
