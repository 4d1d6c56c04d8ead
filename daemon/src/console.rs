//! What a VMM writes, kept in bounded rings in the daemon's memory instead
//! of files: the guest's serial console (the VMM's stdout, `--serial
//! stdout`) and the VMM's own log (its stderr).
//!
//! A guest decides how much it prints, so nothing it prints may grow
//! without bound: each VM has a console ring of
//! [`DaemonConfig::console_bytes`](crate::config::DaemonConfig::console_bytes)
//! (0: console off, the VMM discards it) and a VMM log ring of
//! [`VMM_LOG_BYTES`]; older bytes are overwritten.
//!
//! Back-pressure: one task per pipe reads at most [`DRAIN_RATE`] bytes a
//! second into its ring. A guest that prints faster fills its pipe, and
//! then its VMM's serial write blocks: that guest's vCPU waits, nothing
//! else does. The daemon's memory per VM is the two rings plus one read
//! buffer, and its CPU per VM is bounded by the drain rate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default size of a VM's console ring.
pub const DEFAULT_CONSOLE_BYTES: usize = 64 * 1024;
/// Largest console ring the configuration accepts.
pub const MAX_CONSOLE_BYTES: usize = 16 * 1024 * 1024;
/// Size of a VM's VMM log ring (the VMM's stderr; its guest-fault lines are
/// rate-limited in the VMM already).
pub const VMM_LOG_BYTES: usize = 64 * 1024;
/// Bytes per second one pipe is drained at most.
pub const DRAIN_RATE: usize = 4 * 1024 * 1024;
/// Bytes read from a pipe at once.
const READ_CHUNK: usize = 16 * 1024;

/// The last `capacity` bytes written, and how many were written in all.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    capacity: usize,
    total: u64,
}

impl Ring {
    /// An empty ring keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(capacity.min(READ_CHUNK)),
            capacity,
            total: 0,
        }
    }

    /// Appends `data`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let keep = &data[data.len().saturating_sub(self.capacity)..];
        let over = (self.buf.len() + keep.len()).saturating_sub(self.capacity);
        self.buf.drain(..over);
        self.buf.extend(keep);
    }

    /// The bytes kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }

    /// Bytes kept now (at most the capacity).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The most bytes kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes written since the ring was made (kept or not).
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// A ring shared between the task filling it and its readers.
#[derive(Debug, Clone)]
pub struct SharedRing(Arc<Mutex<Ring>>);

impl SharedRing {
    /// An empty shared ring of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Mutex::new(Ring::new(capacity))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The ring is plain bytes: a panic elsewhere leaves it usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().contents()
    }

    /// (bytes written in all, bytes kept now, capacity).
    pub fn stats(&self) -> (u64, usize, usize) {
        let r = self.lock();
        (r.total(), r.len(), r.capacity())
    }

    fn push(&self, data: &[u8]) {
        self.lock().push(data);
    }
}

/// Reads `pipe` into `ring` until end of file or error, at most
/// [`DRAIN_RATE`] bytes a second (beyond that the writer blocks).
pub fn drain<R>(mut pipe: R, ring: SharedRing) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut window = Instant::now();
        let mut in_window = 0usize;
        loop {
            if in_window >= DRAIN_RATE {
                tokio::time::sleep_until(window + Duration::from_secs(1)).await;
            }
            if window.elapsed() >= Duration::from_secs(1) {
                window = Instant::now();
                in_window = 0;
            }
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    ring.push(&buf[..n]);
                    in_window += n;
                }
            }
        }
    })
}

/// A VM's console and VMM log rings and the tasks filling them.
#[derive(Debug)]
pub struct Console {
    /// The guest's serial console; `None` when the console is off.
    pub serial: Option<SharedRing>,
    /// The VMM's own log (stderr).
    pub vmm_log: SharedRing,
    tasks: Vec<JoinHandle<()>>,
}

impl Console {
    /// Starts draining a VMM's stdout (the serial console, if any) and
    /// stderr into rings of `console_bytes` and [`VMM_LOG_BYTES`].
    pub fn start<O, E>(stdout: Option<O>, stderr: Option<E>, console_bytes: usize) -> Self
    where
        O: AsyncRead + Unpin + Send + 'static,
        E: AsyncRead + Unpin + Send + 'static,
    {
        let mut tasks = Vec::new();
        let serial = match stdout {
            Some(out) if console_bytes > 0 => {
                let ring = SharedRing::new(console_bytes);
                tasks.push(drain(out, ring.clone()));
                Some(ring)
            }
            _ => None,
        };
        let vmm_log = SharedRing::new(VMM_LOG_BYTES);
        if let Some(err) = stderr {
            tasks.push(drain(err, vmm_log.clone()));
        }
        Self {
            serial,
            vmm_log,
            tasks,
        }
    }

    /// The last `lines` lines of the console, then of the VMM's log (for
    /// boot failure reports).
    pub fn tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Some(s) = &self.serial {
            text.push_str(&String::from_utf8_lossy(&s.contents()));
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
        }
        text.push_str(&String::from_utf8_lossy(&self.vmm_log.contents()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Bytes the guest wrote to its console, and bytes kept of them.
    pub fn serial_stats(&self) -> Option<(u64, usize)> {
        self.serial.as_ref().map(|s| {
            let (total, kept, _) = s.stats();
            (total, kept)
        })
    }

    /// Waits (at most `limit`) for the pipes to reach end of file, once the
    /// VMM is gone, so the rings hold everything it wrote.
    pub async fn finish(&mut self, limit: Duration) {
        let tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(limit, async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn a_ring_keeps_the_last_bytes_and_counts_all() {
        let mut r = Ring::new(8);
        r.push(b"abc");
        assert_eq!(r.contents(), b"abc");
        r.push(b"defgh");
        assert_eq!(r.contents(), b"abcdefgh");
        r.push(b"ij");
        assert_eq!(r.contents(), b"cdefghij");
        r.push(b"0123456789abcdef");
        assert_eq!(r.contents(), b"89abcdef");
        assert_eq!((r.len(), r.total()), (8, 26));
        let mut off = Ring::new(0);
        off.push(b"anything");
        assert!(off.is_empty());
        assert_eq!(off.total(), 8);
    }

    #[tokio::test]
    async fn a_flooding_writer_is_kept_to_the_ring_and_the_tail_is_the_newest() {
        let (mut w, r) = tokio::io::duplex(4096);
        let mut console = Console::start(Some(r), None::<tokio::io::Empty>, 1024);
        let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
        for _ in 0..16 * 1024 {
            w.write_all(line).await.unwrap();
        }
        w.write_all(b"the last line\n").await.unwrap();
        drop(w);
        console.finish(Duration::from_secs(30)).await;
        let (total, kept) = console.serial_stats().unwrap();
        assert_eq!(total, 16 * 1024 * 64 + 14);
        assert_eq!(kept, 1024);
        let tail = console.tail(2);
        assert!(tail.ends_with("the last line"), "{tail}");
    }

    #[tokio::test]
    async fn console_off_keeps_nothing() {
        let (_w, r) = tokio::io::duplex(64);
        let console = Console::start(Some(r), None::<tokio::io::Empty>, 0);
        assert!(console.serial.is_none());
        assert_eq!(console.tail(20), "");
    }
}
