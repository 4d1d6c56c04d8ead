//! Capturing log lines in a unit test while other tests of the same process
//! run the same code on their own threads.
//!
//! `tracing` caches, per callsite and for the whole process, whether any
//! subscriber wants its events (its `Interest`), computed once, when the
//! callsite is first reached. While at most one dispatcher is registered,
//! tracing-core 0.1 computes it from the default subscriber of *the thread
//! that first reaches the callsite*. A test capturing with a thread-local
//! subscriber (`set_default`) is then the only dispatcher, and a sibling
//! test that first reaches one of the same log lines on a thread with no
//! subscriber caches `never` for it: the line is silent on every thread,
//! the capturing test's included, and the capture misses it.
//!
//! [`capture`] first registers two inert dispatchers kept for the life of
//! the process: with more than one registered, every callsite's interest
//! is computed from all live dispatchers (the capture's included),
//! whichever thread reaches it first.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::dispatcher::{DefaultGuard, Dispatch};
use tracing::subscriber::NoSubscriber;

/// A log buffer shared with a `tracing` subscriber's writer.
#[derive(Clone, Default)]
pub(crate) struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    /// What was written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes `subscriber` this thread's default until the guard is dropped,
/// after pinning the interest cache (see the module's doc). It sees the
/// events of this thread only: capture on a current-thread runtime.
pub(crate) fn capture<S>(subscriber: S) -> DefaultGuard
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A log line reached only by this test.
    fn the_line() {
        tracing::warn!(marker = "pinned", "a line first reached elsewhere");
    }

    /// The capture is in place when another thread, with no subscriber,
    /// is the first to reach a log line: the capturing thread still gets
    /// that line afterwards.
    #[test]
    fn a_line_first_reached_by_a_thread_without_a_subscriber_is_still_captured() {
        let buf = LogBuf::default();
        let sink = buf.clone();
        let _log = capture(
            tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .finish(),
        );
        std::thread::spawn(the_line).join().unwrap();
        the_line();
        let out = buf.text();
        assert_eq!(out.lines().count(), 1, "{out:?}");
        assert!(out.contains(r#"marker="pinned""#), "{out}");
    }
}
