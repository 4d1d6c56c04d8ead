//! The VM after [`VmBuilder::start`](super::VmBuilder::start): the gate
//! that holds the vCPU threads until every thread is filtered, and
//! [`RunningVm`], waited on until the guest ends, then stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN};

use super::Event;
use crate::device_manager::EventLoopHandle;
use crate::memory::{GuestRam, ImageMapping};
use crate::timeline::Timeline;
use crate::vcpu::VcpuStop;
use crate::vm::{VmExit, VmReport, VmmError};

/// Holds the vCPU threads before their first `KVM_RUN`: each arrives once
/// it has filtered itself; the main thread waits for every arrival, filters
/// itself, then opens the gate.
#[derive(Default)]
pub(super) struct StartGate {
    /// vCPU threads arrived, and whether the gate is open.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl StartGate {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by a vCPU thread: counts it in and blocks until the gate is
    /// open.
    pub(super) fn arrive_and_wait(&self) {
        let mut state = self.lock();
        state.0 += 1;
        self.changed.notify_all();
        while !state.1 {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until `n` vCPU threads have arrived.
    pub(super) fn wait_for_arrivals(&self, n: usize) {
        let mut state = self.lock();
        while state.0 < n {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Lets every arrived (and later) vCPU thread through.
    pub(super) fn open(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

/// A VM whose vCPUs run. [`RunningVm::wait`] returns when the guest resets
/// or shuts down; dropping it without waiting stops the VM too.
pub struct RunningVm {
    pub(super) timeline: Timeline,
    pub(super) kernel: std::path::PathBuf,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) event_loop: Option<EventLoopHandle>,
    pub(super) events: mpsc::Receiver<Event>,
    pub(super) first_run: Arc<OnceLock<Instant>>,
    pub(super) first_serial: Arc<OnceLock<Instant>>,
    // Declared last: dropped after the vCPU threads were joined above.
    pub(super) _vm: VmFd,
    /// Guest RAM; `None` once leaked because a vCPU thread could not be
    /// joined (it might still touch guest memory).
    pub(super) ram: Option<GuestRam>,
    /// The pmem images' mappings, kept (or leaked) with the RAM.
    pub(super) images: Vec<ImageMapping>,
}

impl RunningVm {
    /// Waits for the VM's end, stops every vCPU and the device loop, and
    /// reports how it ended with its boot timeline.
    pub fn wait(mut self) -> Result<VmReport, VmmError> {
        let outcome = wait_for_end(&self.events, &self.kernel);
        let timeline = self.shut_down();
        outcome.map(|exit| VmReport { exit, timeline })
    }

    /// The boot vCPU enters KVM_RUN microseconds after its thread is let
    /// through: wait for it (up to 1 s) and write the phases so far to
    /// `file`, opened at `path` before the main thread's seccomp filter.
    pub(super) fn write_early_timeline(&self, path: &std::path::Path, mut file: std::fs::File) {
        use std::io::Write;
        let waited = Instant::now();
        while self.first_run.get().is_none() && waited.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_micros(50));
        }
        let mut early = self.timeline.clone();
        early.first_kvm_run = self.first_run.get().map(|t| Timeline::since_start(*t));
        if let Err(e) = file.write_all(early.to_json().as_bytes()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the timeline file");
        }
    }

    /// Stops and joins the vCPUs, stops the device loop, completes and logs
    /// the timeline. Idempotent.
    pub(super) fn shut_down(&mut self) -> Timeline {
        if self.timeline.vm_exit.is_none() {
            if !stop_vcpus(&self.stop, std::mem::take(&mut self.threads)) {
                if let Some(ram) = self.ram.take() {
                    ram.leak();
                }
                for image in std::mem::take(&mut self.images) {
                    image.leak();
                }
            }
            drop(self.event_loop.take());
            self.timeline.first_kvm_run = self.first_run.get().map(|t| Timeline::since_start(*t));
            self.timeline.first_serial_byte =
                self.first_serial.get().map(|t| Timeline::since_start(*t));
            self.timeline.vm_exit = Some(Timeline::now());
            tracing::info!(timeline = %self.timeline.to_json(), "VM ended");
        }
        self.timeline.clone()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn wait_for_end(
    events: &mpsc::Receiver<Event>,
    kernel: &std::path::Path,
) -> Result<VmExit, VmmError> {
    loop {
        match events.recv() {
            Ok(Event::Reset) | Ok(Event::Vcpu(_, VcpuStop::Reset)) => return Ok(VmExit::Reset),
            Ok(Event::Vcpu(_, VcpuStop::Shutdown)) => return Ok(VmExit::Shutdown),
            Ok(Event::Vcpu(i, VcpuStop::Error(e))) => {
                tracing::error!(vcpu = i, error = %e, kernel = %kernel.display(), "vCPU failed");
                return Err(VmmError::Guest(e));
            }
            // A halted or stopped vCPU alone does not end the VM.
            Ok(Event::Vcpu(_, _)) => {}
            Err(_) => return Err(VmmError::Guest("every vCPU thread ended".into())),
        }
    }
}

/// Stops and joins the vCPU threads; `false` if one could not be joined.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) -> bool {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = true;
    for t in threads {
        // Kick until the thread leaves KVM_RUN and sees the stop flag.
        while !t.is_finished() && Instant::now() < deadline {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("a vCPU thread did not stop within 5 s");
            all = false;
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The main thread gets past `wait_for_arrivals` only once every vCPU
    /// thread arrived, and no vCPU thread gets past the gate before `open`.
    #[test]
    fn start_gate_holds_vcpus_until_opened() {
        use std::sync::atomic::AtomicUsize;
        let gate = Arc::new(StartGate::default());
        let passed = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (gate, passed) = (gate.clone(), passed.clone());
                std::thread::spawn(move || {
                    gate.arrive_and_wait();
                    passed.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        gate.wait_for_arrivals(3);
        assert_eq!(gate.lock().0, 3);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            passed.load(Ordering::SeqCst),
            0,
            "a vCPU passed a closed gate"
        );
        gate.open();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(passed.load(Ordering::SeqCst), 3);
    }
}
