//! Capturing log lines in a test while the other tests of the same binary
//! run the same code on their own threads.
//!
//! `tracing` caches, per callsite and for the whole process, whether any
//! subscriber wants its events (its `Interest`), computed once, when the
//! callsite is first reached. While at most one dispatcher is registered,
//! tracing-core 0.1 computes it from the default subscriber of *the thread
//! that first reaches the callsite*. A test capturing with a thread-local
//! subscriber (`with_default`, `set_default`) is then the only dispatcher,
//! and a sibling test that first reaches one of the same log lines on a
//! thread with no subscriber caches `never` for it: the line is silent on
//! every thread, the capturing test's included, and the capture misses it.
//!
//! [`capture`] first registers two inert dispatchers kept for the life of
//! the process: with more than one registered, every callsite's interest
//! is computed from all live dispatchers (the capture's included),
//! whichever thread reaches it first.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::dispatcher::{DefaultGuard, Dispatch};
use tracing::subscriber::NoSubscriber;

/// Makes `subscriber` this thread's default until the guard is dropped,
/// after pinning the interest cache (see the module's doc). It sees the
/// events of this thread only.
pub fn capture<S>(subscriber: S) -> DefaultGuard
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    static PINS: OnceLock<[Dispatch; 2]> = OnceLock::new();
    PINS.get_or_init(|| {
        [
            Dispatch::new(NoSubscriber::default()),
            Dispatch::new(NoSubscriber::default()),
        ]
    });
    tracing::dispatcher::set_default(&Dispatch::new(subscriber))
}

/// Counts the bytes and lines of log output written through it, and keeps
/// the first 64 KiB.
#[derive(Clone, Default)]
pub struct LogMeter(Arc<Mutex<(usize, usize, Vec<u8>)>>);

impl LogMeter {
    /// Bytes and lines written so far, and the text kept.
    pub fn read(&self) -> (usize, usize, String) {
        let m = self.0.lock().unwrap();
        (m.0, m.1, String::from_utf8_lossy(&m.2).into_owned())
    }
}

impl Write for LogMeter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut m = self.0.lock().unwrap();
        m.0 += buf.len();
        m.1 += buf.iter().filter(|&&b| b == b'\n').count();
        if m.2.len() < 64 * 1024 {
            m.2.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
