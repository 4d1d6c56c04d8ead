//! Giving memory back when the VM goes idle: once no invocation has come
//! for [`IDLE_DELAY`] after the last one ended (or after boot or the
//! runtime's init), the agent drops the guest's clean caches and compacts
//! its memory, once per idle period. The freed pages gather into free
//! 2 MiB blocks, which the kernel's free page reporting hands to the VMM's
//! virtio-balloon device, which gives them back to the host. Without a
//! balloon driver bound (no device, or a kernel without it) nothing is
//! done: compaction alone would only move pages and touch more host memory.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How long the VM must stay without an invocation before reclaiming.
pub const IDLE_DELAY: Duration = Duration::from_secs(2);
/// Where the balloon driver lists its devices.
const BALLOON_DRIVER: &str = "/sys/bus/virtio/drivers/virtio_balloon";
/// The kernel's free page reporting order (free blocks of 2^N pages).
const REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
/// The command line parameter the VMM sets (`--balloon-report-order`).
const ORDER_PARAM: &str = "page_reporting.page_reporting_order=";

/// The reporting order asked for on the kernel command line `cmdline`.
fn order_from_cmdline(cmdline: &str) -> Option<u32> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(ORDER_PARAM))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= 10)
}

/// Applies the command line's reporting order. Linux 6.1's
/// `page_reporting_register` overwrites the parameter with the driver's
/// order (the pageblock order, 2 MiB) when the balloon driver binds, and
/// reports a zone only while it has 32 blocks of that order free above
/// its low watermark (64 MiB at 2 MiB): a 128 MiB guest never does. Set
/// again after the driver bound, the order takes effect at the next free.
fn apply_reporting_order() {
    let Some(n) = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .as_deref()
        .and_then(order_from_cmdline)
    else {
        return;
    };
    if let Err(e) = std::fs::write(REPORTING_ORDER, n.to_string()) {
        eprintln!("[silo] idle: cannot set the page reporting order to {n}: {e}");
    }
}

enum Event {
    Busy,
    Idle,
}

/// The reclaimer thread's handle: tell it when the VM is busy or idle.
pub struct IdleReclaim {
    tx: Sender<Event>,
}

/// Whether a virtio-balloon device is bound to its driver.
fn balloon_bound() -> bool {
    std::fs::read_dir(BALLOON_DRIVER)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        })
        .unwrap_or(false)
}

/// Drops clean caches (page cache, dentries, inodes) and compacts memory;
/// returns how long it took.
fn reclaim() -> Result<Duration, std::io::Error> {
    let t = Instant::now();
    std::fs::write("/proc/sys/vm/drop_caches", b"3")?;
    std::fs::write("/proc/sys/vm/compact_memory", b"1")?;
    Ok(t.elapsed())
}

impl IdleReclaim {
    /// Starts the reclaimer if a balloon is bound (else `None`).
    pub fn start() -> Option<Self> {
        if !balloon_bound() {
            return None;
        }
        apply_reporting_order();
        Self::with_action(IDLE_DELAY, || match reclaim() {
            Ok(d) => eprintln!(
                "[silo] idle: caches dropped, memory compacted in {} ms",
                d.as_millis()
            ),
            Err(e) => eprintln!("[silo] idle: reclaim failed: {e}"),
        })
    }

    /// A thread that runs `action` once each time the VM has stayed idle
    /// for `delay`.
    fn with_action(delay: Duration, mut action: impl FnMut() + Send + 'static) -> Option<Self> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("idle-reclaim".into())
            .spawn(move || {
                let mut idle_since: Option<Instant> = None;
                loop {
                    let ev = match idle_since {
                        Some(t) => rx.recv_timeout(delay.saturating_sub(t.elapsed())),
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match ev {
                        Ok(Event::Busy) => idle_since = None,
                        Ok(Event::Idle) => idle_since = Some(Instant::now()),
                        Err(RecvTimeoutError::Timeout) => {
                            idle_since = None;
                            action();
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .ok()?;
        Some(Self { tx })
    }

    /// An invocation starts: do not reclaim now.
    pub fn busy(&self) {
        let _ = self.tx.send(Event::Busy);
    }

    /// The VM has nothing to do: reclaim after [`IDLE_DELAY`] unless it
    /// gets busy first.
    pub fn idle(&self) {
        let _ = self.tx.send(Event::Idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn counting(delay_ms: u64) -> (IdleReclaim, Arc<AtomicU32>) {
        let n = Arc::new(AtomicU32::new(0));
        let c = n.clone();
        let r = IdleReclaim::with_action(Duration::from_millis(delay_ms), move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        (r, n)
    }

    #[test]
    fn the_reporting_order_comes_from_the_command_line() {
        let c = "console=ttyS0 page_reporting.page_reporting_order=5 quiet";
        assert_eq!(order_from_cmdline(c), Some(5));
        assert_eq!(order_from_cmdline("quiet"), None);
        assert_eq!(
            order_from_cmdline("page_reporting.page_reporting_order=x"),
            None
        );
        assert_eq!(
            order_from_cmdline("page_reporting.page_reporting_order=11"),
            None
        );
    }

    #[test]
    fn reclaims_once_per_idle_period_and_never_while_busy() {
        let (r, n) = counting(50);
        r.idle();
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(n.load(Ordering::SeqCst), 1, "once after going idle");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(n.load(Ordering::SeqCst), 1, "not again while still idle");
        r.idle();
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            n.load(Ordering::SeqCst),
            2,
            "once more after the next invoke"
        );
        // An invoke that starts before the delay is up cancels the reclaim.
        let (r, n) = counting(400);
        r.idle();
        r.busy();
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }
}
