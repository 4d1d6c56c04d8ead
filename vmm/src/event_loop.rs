//! The device event loop: one thread running an event-manager epoll loop
//! over every device's file descriptors, off the vCPU threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

/// A subscriber the loop can hold.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the loop so it notices the stop flag.
struct StopSubscriber(EventFd);

impl MutEventSubscriber for StopSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.0, EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}

/// Keeps the device event loop running; dropping it stops and joins the thread.
pub struct EventLoopHandle {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Starts the loop thread with `subscribers`. Returns once the thread runs
/// under its seccomp filter, so that no guest instruction can run before
/// it; an error if the filter could not be installed.
pub fn start(subscribers: Vec<Subscriber>) -> std::io::Result<EventLoopHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    let wake_sub = wake.try_clone()?;
    let mut manager =
        EventManager::<Subscriber>::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    manager.add_subscriber(Arc::new(Mutex::new(StopSubscriber(wake_sub))));
    for s in subscribers {
        manager.add_subscriber(s);
    }
    let flag = stop.clone();
    let (filtered_tx, filtered_rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("devices".into())
        .spawn(move || {
            let filtered = crate::seccomp::install(crate::seccomp::ThreadKind::Devices)
                .map_err(|e| e.to_string());
            let ok = filtered.is_ok();
            let _ = filtered_tx.send(filtered);
            if !ok {
                return;
            }
            while !flag.load(Ordering::Acquire) {
                if let Err(e) = manager.run() {
                    tracing::error!(error = ?e, "device event loop failed");
                    break;
                }
            }
        })?;
    let handle = EventLoopHandle {
        stop,
        wake,
        thread: Some(thread),
    };
    match filtered_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        // Dropping the handle joins the thread, which has returned.
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(
            "the device thread ended before installing its seccomp filter",
        )),
    }
}

impl Drop for EventLoopHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
