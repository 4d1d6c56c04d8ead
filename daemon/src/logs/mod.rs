//! Function logs that carry the tenant: every line a function writes, and
//! Lambda's platform records (INIT_START, START, END, REPORT), kept on the
//! host with the function, the environment (log stream), the request id,
//! the tenant and a timestamp; readable through a CloudWatch Logs subset
//! ([`crate::api`]'s `logs` module) and exported as JSON lines.
//!
//! - [`format`]: Lambda's Text and JSON shapes, level filtering, the
//!   event size limit;
//! - [`sink`]: the bounded buffer between invocations and the writer
//!   thread (never blocks an invocation; drops are counted);
//! - [`store`]: segments on disk, per function and tenant, with the
//!   per-tenant share, the function's bound and retention;
//! - [`query`]: reading them back (streams, events, filter patterns),
//!   only the tenants a caller may see;
//! - [`usage`]: usage per (function, tenant).
//!
//! A [`LogTap`] is what an environment holds: its function, its stream and
//! its format; the VM's agent channel feeds it (see `vm_env::invoke`).

pub mod format;
pub mod pattern;
pub mod prefilter;
pub mod query;
pub mod sink;
pub mod store;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use silo_proto::LogStream;

pub use format::{Level, LogFormat, LoggingConfig, Platform, Report};
pub use sink::{Entry, Export, LogSink};
pub use usage::UsageBook;

/// The `[logs]` section of the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Keep function logs at all (off: only the invoke's 4 KB tail).
    pub enabled: bool,
    /// Most bytes of log one function keeps on disk.
    pub max_function_bytes: u64,
    /// Most bytes one tenant keeps of one function's log (its share: its
    /// flood evicts its own oldest lines).
    pub max_tenant_bytes: u64,
    /// Events the buffer between invocations and the writer holds.
    pub buffer_events: usize,
    /// Bytes of messages that buffer holds.
    pub buffer_bytes: usize,
    /// Every record also as one JSON line: `""` (off), `"stdout"`, or a
    /// file path to append to.
    pub export: String,
    /// How long the writer waits after a first line to take the lines
    /// that follow in one write (1 to 10,000 ms): lines are searchable
    /// this long after they are printed.
    pub write_delay_ms: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_function_bytes: 256 << 20,
            max_tenant_bytes: 64 << 20,
            buffer_events: 65_536,
            buffer_bytes: 32 << 20,
            export: String::new(),
            write_delay_ms: sink::LINGER.as_millis() as u64,
        }
    }
}

impl LogsConfig {
    /// The export sink named by `export`.
    pub fn export_sink(&self) -> Export {
        match self.export.as_str() {
            "" => Export::Off,
            "stdout" | "-" => Export::Stdout,
            p => Export::File(PathBuf::from(p)),
        }
    }
}

/// The daemon's log service.
#[derive(Debug)]
pub struct Logs {
    root: PathBuf,
    sink: Option<LogSink>,
    usage: Arc<UsageBook>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Logs {
    /// Opens the store under `<data_dir>/logs` and starts its writer (none
    /// if logs are off).
    pub fn start(data_dir: &Path, cfg: &LogsConfig) -> std::io::Result<Self> {
        let root = data_dir.join("logs");
        std::fs::create_dir_all(&root)?;
        let usage = Arc::new(UsageBook::open(root.clone()));
        let sink = if cfg.enabled {
            Some(sink::start(
                sink::PipelineSettings {
                    root: root.clone(),
                    buffer_events: cfg.buffer_events,
                    buffer_bytes: cfg.buffer_bytes,
                    bounds: store::Bounds {
                        max_function_bytes: cfg.max_function_bytes,
                        max_tenant_bytes: cfg.max_tenant_bytes.min(cfg.max_function_bytes),
                    },
                    export: cfg.export_sink(),
                    linger: Duration::from_millis(cfg.write_delay_ms),
                },
                usage.clone(),
            )?)
        } else {
            None
        };
        Ok(Self { root, sink, usage })
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The buffer's sink, if logs are on.
    pub fn sink(&self) -> Option<&LogSink> {
        self.sink.as_ref()
    }

    /// The usage book.
    pub fn usage(&self) -> &UsageBook {
        &self.usage
    }

    /// Counts one invocation of `function` for `tenant` in the usage book,
    /// from its outcome.
    pub fn record_usage(
        &self,
        function: &str,
        tenant: Option<&str>,
        memory_mib: u32,
        result: &crate::InvokeOutcome,
    ) {
        use silo_proto::Outcome as O;
        use silo_scheduler::ScheduleError as E;
        use usage::Outcome;
        let (outcome, duration) = match result {
            Ok(r) if matches!(r.response.outcome, O::Ok(_)) => {
                (Outcome::Ok, Some(r.response.duration))
            }
            Ok(r) => (Outcome::Error, Some(r.response.duration)),
            Err(E::Throttled(_)) => (Outcome::Throttled, None),
            Err(E::Environment(crate::vm_env::EnvError::FunctionCrashed(r))) => {
                (Outcome::Error, Some(r.duration))
            }
            Err(_) => (Outcome::Error, None),
        };
        let cold = result.as_ref().is_ok_and(|r| r.cold_start);
        self.usage.record(
            function,
            tenant,
            outcome,
            cold,
            duration,
            memory_mib,
            now_ms(),
        );
    }

    /// Writes out the buffered lines (at most 2 s) and saves what must
    /// outlive the daemon (the usage book).
    pub fn shutdown(&self) {
        if let Some(s) = &self.sink {
            if !s.flush(std::time::Duration::from_secs(2)) {
                tracing::warn!("function log lines still buffered at shutdown were not written");
            }
        }
        self.usage.sweep_and_save();
    }

    /// The pipeline's series in Prometheus text.
    pub fn render_metrics(&self) -> String {
        let Some(s) = &self.sink else {
            return String::new();
        };
        let c = &s.counters;
        let mut out = String::new();
        for (name, help, v) in [
            (
                "silo_log_events_total",
                "Function log events accepted into the log buffer.",
                &c.accepted,
            ),
            (
                "silo_log_events_dropped_total",
                "Function log events dropped because the log buffer was full.",
                &c.dropped,
            ),
            (
                "silo_log_events_written_total",
                "Function log events written to the log store.",
                &c.written,
            ),
            (
                "silo_log_segments_evicted_total",
                "Log segments deleted to keep the store within its bounds.",
                &c.evicted_segments,
            ),
            (
                "silo_log_write_errors_total",
                "Failed writes to the log store or the export sink.",
                &c.write_errors,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// What an environment needs to write its function's log.
#[derive(Debug, Clone)]
pub struct LogTap {
    sink: LogSink,
    function: Arc<str>,
    stream: Arc<str>,
    runtime: Arc<str>,
    memory_mib: u32,
    cfg: Arc<LoggingConfig>,
}

/// Lambda's stream name of a new environment:
/// `YYYY/MM/DD/[$LATEST]` and 32 hex digits.
pub fn new_stream_name(now_ms: u64) -> String {
    let day = format::iso_time(now_ms);
    let id = silo_aws::id::random_uuid().replace('-', "");
    format!(
        "{}/{}/{}/[$LATEST]{id}",
        &day[0..4],
        &day[5..7],
        &day[8..10]
    )
}

impl LogTap {
    /// A tap for a new environment of `function`.
    pub fn new(
        sink: LogSink,
        function: &str,
        runtime: &str,
        memory_mib: u32,
        cfg: LoggingConfig,
    ) -> Self {
        Self {
            sink,
            function: function.into(),
            stream: new_stream_name(now_ms()).into(),
            runtime: runtime.into(),
            memory_mib,
            cfg: Arc::new(cfg),
        }
    }

    /// The environment's log stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The function's memory size.
    pub fn memory_mib(&self) -> u32 {
        self.memory_mib
    }

    fn send(&self, tenant: Option<&str>, ts_ms: u64, message: Option<String>) {
        if let Some(message) = message {
            self.sink.send(Entry {
                function: self.function.clone(),
                stream: self.stream.clone(),
                tenant: tenant.map(Arc::from),
                ts_ms,
                message,
            });
        }
    }

    /// A line of the function's output (or of silo's agent: only its
    /// `[silo]` lines are kept, as in the log tail).
    pub fn line(
        &self,
        tenant: Option<&str>,
        request_id: Option<&str>,
        stream: LogStream,
        line: &str,
    ) {
        let ctx = format::Ctx {
            tenant,
            request_id,
            ts_ms: now_ms(),
        };
        let message = match stream {
            LogStream::Agent if line.starts_with("[silo]") => {
                format::platform(&self.cfg, ctx, Platform::Agent(line))
            }
            LogStream::Agent => None,
            _ => format::application(&self.cfg, ctx, line),
        };
        self.send(tenant, ctx.ts_ms, message);
    }

    /// A platform record, `ago` before now.
    pub fn platform(
        &self,
        tenant: Option<&str>,
        request_id: Option<&str>,
        ago: Duration,
        p: Platform<'_>,
    ) {
        let ts_ms = now_ms().saturating_sub(ago.as_millis() as u64);
        let ctx = format::Ctx {
            tenant,
            request_id,
            ts_ms,
        };
        self.send(tenant, ts_ms, format::platform(&self.cfg, ctx, p));
    }

    /// INIT_START of this environment, which began `ago`.
    pub fn init_start(&self, tenant: Option<&str>, ago: Duration) {
        let runtime = self.runtime.clone();
        let function = self.function.clone();
        self.platform(
            tenant,
            None,
            ago,
            Platform::InitStart {
                runtime: &runtime,
                function: &function,
            },
        );
    }
}
