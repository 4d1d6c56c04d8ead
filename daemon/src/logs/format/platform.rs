//! Lambda's platform records (INIT_START, INIT_REPORT, START, END,
//! REPORT) in both formats.

use std::time::Duration;

use serde_json::json;

use super::{cut, iso_time, Ctx, Level, LogFormat, LoggingConfig, MAX_EVENT_BYTES};

/// A platform record's kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Platform<'a> {
    /// The environment's init began (cold start).
    InitStart {
        /// The function's runtime id.
        runtime: &'a str,
        /// The function's name.
        function: &'a str,
    },
    /// The environment's init failed (Lambda's `INIT_REPORT`; a successful
    /// init's duration is on the first REPORT instead).
    InitReport {
        /// From the environment's start to the failure.
        duration: Duration,
        /// Lambda's status word (`error`, `timeout`).
        status: &'a str,
        /// The runtime's error type, if it gave one.
        error_type: Option<&'a str>,
    },
    /// An invocation began.
    Start,
    /// An invocation ended (`status`: success, error, timeout, failure).
    End {
        /// Lambda's status word.
        status: &'a str,
    },
    /// The invocation's figures.
    Report(Report<'a>),
    /// A line of silo's guest agent (`[silo] ...`).
    Agent(&'a str),
}

/// The figures of a REPORT record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report<'a> {
    /// The daemon's measure of the invocation.
    pub duration: Duration,
    /// The function's memory size.
    pub memory_mib: u32,
    /// The VM's peak memory, if read.
    pub max_memory_mib: Option<u64>,
    /// The environment's init (cold starts only).
    pub init: Option<Duration>,
    /// Lambda's status word.
    pub status: &'a str,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// A platform record as stored in `cfg`'s format, or `None` when under the
/// system level.
pub fn platform(cfg: &LoggingConfig, ctx: Ctx<'_>, p: Platform<'_>) -> Option<String> {
    if cfg.system_min().is_some_and(|min| min > Level::Info) {
        return None;
    }
    let id = ctx.request_id.unwrap_or("-");
    match cfg.format {
        LogFormat::Text => Some(match p {
            Platform::InitStart { runtime, .. } => {
                format!("INIT_START Runtime Version: {runtime}.silo\tRuntime Version ARN: -")
            }
            Platform::InitReport {
                duration,
                status,
                error_type,
            } => {
                let mut t = format!(
                    "INIT_REPORT Init Duration: {:.2} ms\tPhase: init\tStatus: {status}",
                    ms(duration)
                );
                if let Some(e) = error_type {
                    t.push_str(&format!("\tError Type: {}", error_type_text(e)));
                }
                t
            }
            Platform::Start => format!("START RequestId: {id} Version: $LATEST"),
            Platform::End { .. } => format!("END RequestId: {id}"),
            Platform::Report(r) => {
                let mut t = format!(
                    "REPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
                    ms(r.duration),
                    billed_ms(r.duration),
                    r.memory_mib
                );
                if let Some(m) = r.max_memory_mib {
                    t.push_str(&format!("\tMax Memory Used: {m} MB"));
                }
                if let Some(i) = r.init {
                    t.push_str(&format!("\tInit Duration: {:.2} ms", ms(i)));
                }
                if r.status != "success" {
                    t.push_str(&format!("\tStatus: {}", r.status));
                }
                t
            }
            Platform::Agent(line) => cut(line, MAX_EVENT_BYTES).into_owned(),
        }),
        LogFormat::Json => {
            let (kind, record) = match p {
                Platform::InitStart { runtime, function } => (
                    "platform.initStart",
                    json!({"initializationType": "on-demand", "phase": "init",
                           "runtimeVersion": format!("{runtime}.silo"), "functionName": function,
                           "functionVersion": "$LATEST"}),
                ),
                Platform::InitReport {
                    duration,
                    status,
                    error_type,
                } => {
                    let mut record = json!({"initializationType": "on-demand", "phase": "init",
                           "status": status, "metrics": {"durationMs": ms(duration)}});
                    if let Some(e) = error_type {
                        record["errorType"] = error_type_text(e).into();
                    }
                    ("platform.initReport", record)
                }
                Platform::Start => (
                    "platform.start",
                    json!({"requestId": id, "version": "$LATEST"}),
                ),
                Platform::End { status } => (
                    "platform.runtimeDone",
                    json!({"requestId": id, "status": status}),
                ),
                Platform::Report(r) => {
                    let mut metrics = json!({
                        "durationMs": ms(r.duration),
                        "billedDurationMs": billed_ms(r.duration),
                        "memorySizeMB": r.memory_mib,
                    });
                    if let Some(m) = r.max_memory_mib {
                        metrics["maxMemoryUsedMB"] = m.into();
                    }
                    if let Some(i) = r.init {
                        metrics["initDurationMs"] = ms(i).into();
                    }
                    (
                        "platform.report",
                        json!({"requestId": id, "metrics": metrics, "status": r.status}),
                    )
                }
                Platform::Agent(line) => (
                    "silo.agent",
                    json!({"message": cut(line, MAX_EVENT_BYTES - 512)}),
                ),
            };
            let mut v = json!({"time": iso_time(ctx.ts_ms), "type": kind, "record": record});
            if let Some(t) = ctx.tenant {
                v["tenantId"] = t.into();
            }
            Some(v.to_string())
        }
    }
}

/// A runtime's error type as a record shows it: one line, at most 128
/// characters (it is the guest's text).
fn error_type_text(e: &str) -> String {
    e.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// Lambda's billed duration: the duration rounded up to the millisecond.
pub fn billed_ms(d: Duration) -> u64 {
    (d.as_secs_f64() * 1000.0).ceil() as u64
}
