//! Off the invoke path: invocations hand their log events to a bounded
//! buffer ([`LogSink::send`] never blocks); one writer thread takes them
//! in batches and appends them to the [store](super::store) and the export
//! sink. The writer lingers after a first line ([`LINGER`]) so that a
//! steady trickle of invocations costs it one wake-up and one write per
//! linger, not one per invocation; a buffer filling past a quarter of its
//! bounds wakes it at once, and so does [`LogSink::flush`]. When the buffer
//! is full (by events or by bytes) the event is
//! dropped and counted (`silo_log_events_dropped_total` in `/metrics`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::store::{tenant_key, Bounds, StoreWriter, Stored};
use super::usage::UsageBook;

/// One log event on its way to the store.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The function (log group `/aws/lambda/<function>`).
    pub function: Arc<str>,
    /// The environment's log stream.
    pub stream: Arc<str>,
    /// The tenant, if any.
    pub tenant: Option<Arc<str>>,
    /// Event time, ms since the epoch.
    pub ts_ms: u64,
    /// The message in the function's format.
    pub message: String,
}

/// Counters of the log pipeline, for `/metrics`.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// Events accepted into the buffer.
    pub accepted: AtomicU64,
    /// Events dropped because the buffer was full.
    pub dropped: AtomicU64,
    /// Events written to the store.
    pub written: AtomicU64,
    /// Segments evicted to keep the store's bounds.
    pub evicted_segments: AtomicU64,
    /// Writes to the store or the export sink that failed.
    pub write_errors: AtomicU64,
}

/// Where every record also goes, as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Nowhere.
    Off,
    /// The daemon's standard output.
    Stdout,
    /// Appended to this file (log shippers tail it).
    File(PathBuf),
}

/// The invoke path's handle on the buffer (cheap to clone).
#[derive(Clone)]
pub struct LogSink {
    tx: SyncSender<Entry>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Events handed over and not yet written.
    events: Arc<AtomicUsize>,
    /// Waking the writer: at this many events or bytes in the buffer.
    wake_events: usize,
    wake_bytes: usize,
    writer: Thread,
    wake: Arc<AtomicBool>,
    /// The pipeline's counters.
    pub counters: Arc<LogCounters>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink").finish_non_exhaustive()
    }
}

impl LogSink {
    /// Hands `entry` to the writer, or drops and counts it if the buffer
    /// is full. Never blocks.
    pub fn send(&self, entry: Entry) {
        let size = entry.message.len() + 64;
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if before + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(entry) {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let events = self.events.fetch_add(1, Ordering::AcqRel) + 1;
                if events >= self.wake_events || before + size >= self.wake_bytes {
                    self.wake_writer();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends the writer's linger: it writes what it holds now.
    fn wake_writer(&self) {
        self.wake.store(true, Ordering::Release);
        self.writer.unpark();
    }

    /// Waits (at most `limit`) until every line handed over so far is
    /// written; `false` if some still were not. For a stopping daemon: the
    /// writer lingers before it writes ([`LINGER`]).
    pub fn flush(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.bytes.load(Ordering::Acquire) > 0 {
            if Instant::now() >= until {
                return false;
            }
            self.wake_writer();
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// The buffer's bounds and the store's.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// The store's root (`<data_dir>/logs`).
    pub root: PathBuf,
    /// Events the buffer holds at most.
    pub buffer_events: usize,
    /// Bytes of messages the buffer holds at most.
    pub buffer_bytes: usize,
    /// The store's bounds.
    pub bounds: Bounds,
    /// The export sink.
    pub export: Export,
    /// How long the writer waits after a first line before it writes,
    /// unless the buffer fills past a quarter first ([`LINGER`]).
    pub linger: Duration,
}

/// Starts the writer thread; returns the sink feeding it. The thread ends
/// once every sink is dropped.
pub fn start(settings: PipelineSettings, usage: Arc<UsageBook>) -> std::io::Result<LogSink> {
    let (tx, rx) = sync_channel(settings.buffer_events.max(1));
    let export: Option<Box<dyn Write + Send>> = match &settings.export {
        Export::Off => None,
        Export::Stdout => Some(Box::new(std::io::stdout())),
        Export::File(p) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
    };
    let writer = StoreWriter::new(settings.root.clone(), settings.bounds);
    let (bytes, events) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counters = Arc::new(LogCounters::default());
    let wake = Arc::new(AtomicBool::new(false));
    let shared = Shared {
        bytes: bytes.clone(),
        events: events.clone(),
        counters: counters.clone(),
        wake: wake.clone(),
        linger: settings.linger,
    };
    let thread = std::thread::Builder::new()
        .name("silo-logs".into())
        .spawn(move || write_loop(rx, writer, export, shared, usage))?;
    Ok(LogSink {
        tx,
        bytes,
        max_bytes: settings.buffer_bytes,
        events,
        wake_events: (settings.buffer_events / 4).max(1),
        wake_bytes: (settings.buffer_bytes / 4).max(1),
        writer: thread.thread().clone(),
        wake,
        counters,
    })
}

/// Events taken from the buffer at once, at most.
const BATCH: usize = 4096;
/// How long the writer waits after a first line before it takes the batch
/// (the daemon's setting): logs are searchable this long after they are
/// printed, and a function printing on every invocation wakes the writer
/// once per this, not per invocation.
pub const LINGER: Duration = Duration::from_millis(250);
/// How often the usage book is saved (if it changed).
const SAVE_USAGE_EVERY: Duration = Duration::from_secs(5);
/// How often retention is applied.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// What the writer thread shares with the sinks.
struct Shared {
    bytes: Arc<AtomicUsize>,
    events: Arc<AtomicUsize>,
    counters: Arc<LogCounters>,
    /// Set (then the writer unparked) to end its linger now.
    wake: Arc<AtomicBool>,
    linger: Duration,
}

fn write_loop(
    rx: Receiver<Entry>,
    mut store: StoreWriter,
    mut export: Option<Box<dyn Write + Send>>,
    shared: Shared,
    usage: Arc<UsageBook>,
) {
    store.sweep_retention(SystemTime::now());
    let mut last_sweep = Instant::now();
    let mut last_save = Instant::now();
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => {
                batch.push(e);
                // Let more lines arrive before writing: a parked writer is
                // not woken by the lines the invoke path sends, only by a
                // buffer a quarter full or a flush (or a spurious wake-up:
                // then it parks again until the linger is over).
                let until = Instant::now() + shared.linger;
                loop {
                    let now = Instant::now();
                    if shared.wake.swap(false, Ordering::AcqRel) || now >= until {
                        break;
                    }
                    std::thread::park_timeout(until - now);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                usage.sweep_and_save();
                return;
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let size: usize = batch.iter().map(|e| e.message.len() + 64).sum();
            let n = batch.len();
            write_batch(&mut batch, &mut store, &mut export, &shared.counters);
            shared.bytes.fetch_sub(size, Ordering::AcqRel);
            shared.events.fetch_sub(n, Ordering::AcqRel);
        }
        if last_save.elapsed() >= SAVE_USAGE_EVERY {
            usage.sweep_and_save();
            last_save = Instant::now();
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            store.sweep_retention(SystemTime::now());
            last_sweep = Instant::now();
        }
    }
}

fn write_batch(
    batch: &mut Vec<Entry>,
    store: &mut StoreWriter,
    export: &mut Option<Box<dyn Write + Send>>,
    counters: &LogCounters,
) {
    let ingest = now_ms();
    // Per (function, tenant), in arrival order.
    let mut lines: BTreeMap<(Arc<str>, String), Vec<u8>> = BTreeMap::new();
    let mut exported = Vec::new();
    let n = batch.len() as u64;
    for e in batch.drain(..) {
        let stored = Stored {
            t: e.ts_ms,
            i: ingest,
            s: e.stream.to_string(),
            n: e.tenant.as_deref().map(str::to_string),
            m: e.message,
        };
        if export.is_some() {
            let v = serde_json::json!({
                "logGroup": format!("/aws/lambda/{}", e.function),
                "logStream": stored.s,
                "timestamp": stored.t,
                "ingestionTime": ingest,
                "tenantId": stored.n,
                "message": stored.m,
            });
            let _ = serde_json::to_writer(&mut exported, &v);
            exported.push(b'\n');
        }
        let buf = lines
            .entry((e.function.clone(), tenant_key(e.tenant.as_deref())))
            .or_default();
        let _ = serde_json::to_writer(&mut *buf, &stored);
        buf.push(b'\n');
    }
    for ((function, key), buf) in lines {
        if store.append(&function, &key, &buf).is_err() {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(w) = export.as_mut() {
        if w.write_all(&exported).and_then(|()| w.flush()).is_err() {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    counters.written.fetch_add(n, Ordering::Relaxed);
    counters
        .evicted_segments
        .store(store.evicted_segments, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record also reaches the export file as one JSON line with
    /// its group, stream, tenant and message; and a full buffer drops and
    /// counts instead of blocking.
    #[test]
    fn records_are_exported_and_a_full_buffer_drops() {
        let dir = std::env::temp_dir().join(format!("silo-logs-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let export = dir.join("export.jsonl");
        let settings = |buffer_bytes| PipelineSettings {
            root: dir.join("store"),
            buffer_events: 16,
            buffer_bytes,
            bounds: Bounds {
                max_function_bytes: 1 << 20,
                max_tenant_bytes: 1 << 20,
            },
            export: Export::File(export.clone()),
            linger: LINGER,
        };
        let usage = Arc::new(UsageBook::open(dir.clone()));
        let sink = start(settings(1 << 20), usage.clone()).unwrap();
        let entry = |i: usize| Entry {
            function: "f".into(),
            stream: "s".into(),
            tenant: Some("tenant \"A\"".into()),
            ts_ms: 1_000 + i as u64,
            message: format!("line {i}\u{1b}[2J"),
        };
        for i in 0..3 {
            sink.send(entry(i));
        }
        let until = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        while Instant::now() < until && lines.len() < 3 {
            std::thread::sleep(Duration::from_millis(50));
            lines = std::fs::read_to_string(&export)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        // Handed over, then flushed: written when flush returns.
        sink.send(entry(3));
        assert!(sink.flush(Duration::from_secs(30)), "flushed in time");
        let written = std::fs::read_to_string(&export).unwrap_or_default();
        assert!(written.contains("line 3"), "{written}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["logGroup"], "/aws/lambda/f");
        assert_eq!(v["tenantId"], "tenant \"A\"");
        assert_eq!(v["message"], "line 0\u{1b}[2J");
        assert!(!lines[0].contains('\u{1b}'), "control characters escaped");
        // A buffer of 100 bytes holds one 64-byte-overhead event at most.
        let tight = start(settings(100), usage).unwrap();
        for i in 0..1000 {
            tight.send(entry(i));
        }
        assert!(tight.counters.dropped.load(Ordering::Relaxed) > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A writer lingering (here for an hour) is woken by a buffer a
    /// quarter full, and by a flush: neither waits out the linger, so a
    /// long linger never turns a burst into drops.
    #[test]
    fn a_filling_buffer_and_a_flush_end_the_linger() {
        let dir = std::env::temp_dir().join(format!("silo-logs-linger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let export = dir.join("export.jsonl");
        let usage = Arc::new(UsageBook::open(dir.clone()));
        let sink = start(
            PipelineSettings {
                root: dir.join("store"),
                buffer_events: 64,
                buffer_bytes: 1 << 20,
                bounds: Bounds {
                    max_function_bytes: 1 << 20,
                    max_tenant_bytes: 1 << 20,
                },
                export: Export::File(export.clone()),
                linger: Duration::from_secs(3600),
            },
            usage,
        )
        .unwrap();
        let entry = |i: usize| Entry {
            function: "f".into(),
            stream: "s".into(),
            tenant: Some("A".into()),
            ts_ms: i as u64,
            message: format!("line {i}"),
        };
        let written = || sink.counters.written.load(Ordering::Relaxed);
        let wait_written = |n: u64| {
            let until = Instant::now() + Duration::from_secs(60);
            while written() < n && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            written()
        };
        // Rounds of 40 (the buffer holds 64, a quarter is 16): each round
        // is written long before the hour, none dropped.
        for round in 0..5u64 {
            for i in 0..40 {
                sink.send(entry(round as usize * 40 + i));
            }
            assert_eq!(wait_written((round + 1) * 40), (round + 1) * 40);
        }
        assert_eq!(sink.counters.dropped.load(Ordering::Relaxed), 0);
        // One line lingers; a flush writes it.
        sink.send(entry(1000));
        assert!(sink.flush(Duration::from_secs(60)), "flushed");
        assert_eq!(written(), 201);
        let text = std::fs::read_to_string(&export).unwrap();
        assert!(text.contains("line 1000"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
