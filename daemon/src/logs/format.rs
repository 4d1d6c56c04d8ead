//! Lambda's two log formats, chosen per function with `LoggingConfig`:
//! `Text` (Lambda's line shapes: `START RequestId: ...`, the function's
//! lines as written) and `JSON` (Lambda's JSON shapes: `platform.start`,
//! `platform.report`..., the runtime's JSON records), with `tenantId` in
//! every JSON record and Lambda's `ApplicationLogLevel`/`SystemLogLevel`
//! filtering.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Largest event CloudWatch Logs takes (256 KiB less its 26 bytes of
/// per-event overhead): a longer line is cut and marked.
pub const MAX_EVENT_BYTES: usize = 262_144 - 26;

/// A function's log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LogFormat {
    /// Plain lines, as Lambda's default.
    #[default]
    Text,
    /// Structured JSON records.
    #[serde(rename = "JSON")]
    Json,
}

/// A log level, in Lambda's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Finest.
    Trace,
    /// Debugging.
    Debug,
    /// Informational (Lambda's default).
    Info,
    /// Warnings.
    Warn,
    /// Errors.
    Error,
    /// Fatal errors.
    Fatal,
}

impl Level {
    /// The level named `s` (Lambda's names; `WARNING` and `CRITICAL` as
    /// Python's `logging` writes them), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "TRACE" => Self::Trace,
            "DEBUG" => Self::Debug,
            "INFO" => Self::Info,
            "WARN" | "WARNING" => Self::Warn,
            "ERROR" => Self::Error,
            "FATAL" | "CRITICAL" => Self::Fatal,
            _ => return None,
        })
    }

    /// Lambda's name of the level.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// A function's `LoggingConfig`, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoggingConfig {
    /// `LogFormat`.
    #[serde(default)]
    pub format: LogFormat,
    /// `ApplicationLogLevel` (JSON only; `None`: INFO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_level: Option<Level>,
    /// `SystemLogLevel` (JSON only; `None`: INFO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_level: Option<Level>,
}

impl LoggingConfig {
    /// The application level in force (JSON: the one set, else INFO;
    /// Text: none, every line is kept).
    pub fn app_min(&self) -> Option<Level> {
        (self.format == LogFormat::Json).then(|| self.application_level.unwrap_or(Level::Info))
    }

    /// The system level in force, as [`LoggingConfig::app_min`].
    pub fn system_min(&self) -> Option<Level> {
        (self.format == LogFormat::Json).then(|| self.system_level.unwrap_or(Level::Info))
    }

    /// The environment variables Lambda gives the runtime, which its
    /// runtime interface clients (awslambdaric, the Node.js client) read
    /// to write their records in the format and filter them at the level.
    pub fn runtime_environment(&self, function: &str) -> Vec<(String, String)> {
        let mut v = vec![
            (
                "AWS_LAMBDA_LOG_GROUP_NAME".to_string(),
                format!("/aws/lambda/{function}"),
            ),
            (
                "AWS_LAMBDA_LOG_FORMAT".to_string(),
                match self.format {
                    LogFormat::Text => "Text",
                    LogFormat::Json => "JSON",
                }
                .to_string(),
            ),
        ];
        if let Some(l) = self.app_min() {
            v.push(("AWS_LAMBDA_LOG_LEVEL".into(), l.as_str().into()));
        }
        v
    }

    /// The `LoggingConfig` shape of the API, for function `name`.
    pub fn api_shape(&self, name: &str) -> Value {
        let mut v = json!({
            "LogFormat": match self.format { LogFormat::Text => "Text", LogFormat::Json => "JSON" },
            "LogGroup": format!("/aws/lambda/{name}"),
        });
        if let (Some(a), Some(s)) = (self.app_min(), self.system_min()) {
            v["ApplicationLogLevel"] = a.as_str().into();
            v["SystemLogLevel"] = s.as_str().into();
        }
        v
    }
}

/// The `LoggingConfig` of CreateFunction and UpdateFunctionConfiguration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoggingInput {
    /// `Text` or `JSON`.
    pub log_format: Option<String>,
    /// `TRACE` to `FATAL` (JSON only).
    pub application_log_level: Option<String>,
    /// `DEBUG`, `INFO` or `WARN` (JSON only).
    pub system_log_level: Option<String>,
    /// Only `/aws/lambda/<function>` (silo keeps one group per function).
    pub log_group: Option<String>,
}

impl LoggingConfig {
    /// Applies `input` to this configuration of function `function`, as
    /// Lambda: levels need the JSON format; switching to Text clears them.
    pub fn apply(&mut self, input: &LoggingInput, function: &str) -> Result<(), String> {
        let mut next = self.clone();
        match input.log_format.as_deref() {
            None => {}
            Some("Text") => {
                next = LoggingConfig::default();
            }
            Some("JSON") => next.format = LogFormat::Json,
            Some(other) => return Err(format!("LogFormat {other:?} is not valid: Text or JSON")),
        }
        if let Some(a) = &input.application_log_level {
            next.application_level = Some(Level::parse(a).filter(|_| a == &a.to_ascii_uppercase() && a != "WARNING" && a != "CRITICAL").ok_or_else(|| {
                format!("ApplicationLogLevel {a:?} is not valid: TRACE, DEBUG, INFO, WARN, ERROR or FATAL")
            })?);
        }
        if let Some(s) = &input.system_log_level {
            next.system_level = Some(match s.as_str() {
                "DEBUG" => Level::Debug,
                "INFO" => Level::Info,
                "WARN" => Level::Warn,
                _ => {
                    return Err(format!(
                        "SystemLogLevel {s:?} is not valid: DEBUG, INFO or WARN"
                    ))
                }
            });
        }
        if next.format == LogFormat::Text
            && (next.application_level.is_some() || next.system_level.is_some())
        {
            return Err(
                "To use ApplicationLogLevel or SystemLogLevel, set LogFormat to JSON".into(),
            );
        }
        if let Some(g) = &input.log_group {
            if *g != format!("/aws/lambda/{function}") {
                return Err(format!(
                    "LogGroup {g:?} is not supported: silo keeps function {function}'s log in /aws/lambda/{function}"
                ));
            }
        }
        *self = next;
        Ok(())
    }
}

/// ISO 8601 with milliseconds, UTC (`2026-12-07T14:08:52.123Z`).
pub fn iso_time(ms: u64) -> String {
    let d = silo_aws::date::format_amz_date((ms / 1000) as i64);
    format!(
        "{}-{}-{}T{}:{}:{}.{:03}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15],
        ms % 1000
    )
}

/// `text` cut to at most `max` bytes (on a character boundary) with a
/// note saying how many bytes were cut.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let note_room = 96;
    let mut end = max.saturating_sub(note_room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [silo: {} bytes cut: line over the {max}-byte event limit]",
        &text[..end],
        text.len() - end
    )
    .into()
}

/// Who an event belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The tenant, if the function has tenants.
    pub tenant: Option<&'a str>,
    /// The request in flight, if any.
    pub request_id: Option<&'a str>,
    /// When the daemon received it, ms since the epoch.
    pub ts_ms: u64,
}

/// A function's output line as stored in `cfg`'s format, or `None` when
/// its level is under the application level.
///
/// JSON: a line that is a JSON object is the runtime's record (awslambdaric
/// and the Node.js client write them in JSON mode); its `tenantId` is
/// always set to the daemon's (a guest cannot claim another tenant), and a
/// `level` under `ApplicationLogLevel` drops it. Any other line (`print`)
/// is wrapped in a record with `timestamp`, `message`, `requestId` and
/// `tenantId`, without a level (so never filtered, as Lambda).
pub fn application(cfg: &LoggingConfig, ctx: Ctx<'_>, line: &str) -> Option<String> {
    match cfg.format {
        LogFormat::Text => Some(cut(line, MAX_EVENT_BYTES).into_owned()),
        LogFormat::Json => {
            let mut obj = match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(o)) => o,
                _ => {
                    let mut o = Map::new();
                    o.insert("timestamp".into(), iso_time(ctx.ts_ms).into());
                    o.insert("message".into(), cut(line, MAX_EVENT_BYTES - 256).into());
                    if let Some(r) = ctx.request_id {
                        o.insert("requestId".into(), r.into());
                    }
                    o
                }
            };
            if let (Some(min), Some(level)) = (
                cfg.app_min(),
                obj.get("level")
                    .and_then(Value::as_str)
                    .and_then(Level::parse),
            ) {
                if level < min {
                    return None;
                }
            }
            if let Some(t) = ctx.tenant {
                obj.insert("tenantId".into(), t.into());
            }
            Some(fit_json(obj))
        }
    }
}

/// A JSON record serialized within [`MAX_EVENT_BYTES`]: an oversized one
/// keeps its small fields and has its `message` cut (or, if it has none,
/// becomes a note saying it was cut).
fn fit_json(mut obj: Map<String, Value>) -> String {
    let text = Value::Object(obj.clone()).to_string();
    if text.len() <= MAX_EVENT_BYTES {
        return text;
    }
    let over = text.len() - MAX_EVENT_BYTES + 96;
    let cut_message = obj
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| m.len() > over)
        .map(|m| cut(m, m.len() - over).into_owned());
    match cut_message {
        Some(m) => {
            obj.insert("message".into(), m.into());
        }
        None => {
            let keep: Map<String, Value> = obj
                .into_iter()
                .filter(|(k, v)| {
                    ["timestamp", "level", "requestId", "tenantId"].contains(&k.as_str())
                        && v.to_string().len() < 512
                })
                .collect();
            obj = keep;
            obj.insert(
                "message".into(),
                format!(
                    "[silo: record of {} bytes cut: over the event limit]",
                    text.len()
                )
                .into(),
            );
        }
    }
    let text = Value::Object(obj).to_string();
    cut(&text, MAX_EVENT_BYTES).into_owned()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn json_cfg(app: Option<Level>, sys: Option<Level>) -> LoggingConfig {
        LoggingConfig {
            format: LogFormat::Json,
            application_level: app,
            system_level: sys,
        }
    }

    const CTX: Ctx<'static> = Ctx {
        tenant: Some("tenant-A"),
        request_id: Some("r-1"),
        ts_ms: 1_765_000_000_123,
    };

    #[test]
    fn text_lines_are_lambdas() {
        let cfg = LoggingConfig::default();
        assert_eq!(application(&cfg, CTX, "hello").unwrap(), "hello");
        assert_eq!(
            platform(&cfg, CTX, Platform::Start).unwrap(),
            "START RequestId: r-1 Version: $LATEST"
        );
        let r = platform(
            &cfg,
            CTX,
            Platform::Report(Report {
                duration: Duration::from_micros(12_345),
                memory_mib: 128,
                max_memory_mib: Some(40),
                init: Some(Duration::from_millis(250)),
                status: "success",
            }),
        )
        .unwrap();
        assert_eq!(r, "REPORT RequestId: r-1\tDuration: 12.35 ms\tBilled Duration: 13 ms\tMemory Size: 128 MB\tMax Memory Used: 40 MB\tInit Duration: 250.00 ms");
    }

    #[test]
    fn a_failed_init_is_reported_as_lambda_does() {
        let failed = Platform::InitReport {
            duration: Duration::from_micros(262_061),
            status: "error",
            error_type: Some("Runtime.ImportModuleError\nforged line"),
        };
        assert_eq!(
            platform(&LoggingConfig::default(), CTX, failed).unwrap(),
            "INIT_REPORT Init Duration: 262.06 ms\tPhase: init\tStatus: error\tError Type: Runtime.ImportModuleErrorforged line"
        );
        let v: Value =
            serde_json::from_str(&platform(&json_cfg(None, None), CTX, failed).unwrap()).unwrap();
        assert_eq!(v["type"], "platform.initReport");
        assert_eq!(v["tenantId"], "tenant-A");
        assert_eq!(
            v["record"],
            json!({"initializationType": "on-demand", "phase": "init", "status": "error",
                   "errorType": "Runtime.ImportModuleErrorforged line",
                   "metrics": {"durationMs": 262.06}})
        );
        let start = Platform::InitStart {
            runtime: "python3.11",
            function: "f",
        };
        let v: Value =
            serde_json::from_str(&platform(&json_cfg(None, None), CTX, start).unwrap()).unwrap();
        assert_eq!(v["type"], "platform.initStart");
        assert_eq!(v["record"]["phase"], "init");
        assert_eq!(v["tenantId"], "tenant-A");
        assert!(platform(&json_cfg(None, Some(Level::Warn)), CTX, failed).is_none());
    }

    #[test]
    fn json_records_carry_the_daemons_tenant_whatever_the_guest_claims() {
        let cfg = json_cfg(None, None);
        let rec: Value = serde_json::from_str(
            &application(
                &cfg,
                CTX,
                r#"{"level":"INFO","message":"m","tenantId":"tenant-B"}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(rec["tenantId"], "tenant-A");
        let wrapped: Value =
            serde_json::from_str(&application(&cfg, CTX, "plain print").unwrap()).unwrap();
        assert_eq!(wrapped["message"], "plain print");
        assert_eq!(wrapped["requestId"], "r-1");
        assert_eq!(wrapped["tenantId"], "tenant-A");
        let start: Value =
            serde_json::from_str(&platform(&cfg, CTX, Platform::Start).unwrap()).unwrap();
        assert_eq!(start["type"], "platform.start");
        assert_eq!(start["tenantId"], "tenant-A");
        assert_eq!(start["time"], "2025-12-06T05:46:40.123Z");
    }

    #[test]
    fn levels_filter_as_lambda() {
        let cfg = json_cfg(Some(Level::Warn), Some(Level::Warn));
        assert!(application(&cfg, CTX, r#"{"level":"INFO","message":"x"}"#).is_none());
        assert!(application(&cfg, CTX, r#"{"level":"WARNING","message":"x"}"#).is_some());
        assert!(application(&cfg, CTX, "no level").is_some());
        assert!(platform(&cfg, CTX, Platform::Start).is_none());
        let debug = json_cfg(Some(Level::Debug), None);
        assert!(application(&debug, CTX, r#"{"level":"DEBUG","message":"x"}"#).is_some());
        assert!(application(&json_cfg(None, None), CTX, r#"{"level":"DEBUG"}"#).is_none());
        // Text keeps everything.
        let text = LoggingConfig::default();
        assert!(application(&text, CTX, r#"{"level":"DEBUG"}"#).is_some());
    }

    #[test]
    fn oversized_lines_are_cut_and_marked() {
        let long = "é".repeat(MAX_EVENT_BYTES);
        let t = application(&LoggingConfig::default(), CTX, &long).unwrap();
        assert!(
            t.len() <= MAX_EVENT_BYTES && t.ends_with("event limit]"),
            "{}",
            t.len()
        );
        let j = application(&json_cfg(None, None), CTX, &long).unwrap();
        assert!(j.len() <= MAX_EVENT_BYTES, "{}", j.len());
        let v: Value = serde_json::from_str(&j).unwrap();
        assert!(v["message"].as_str().unwrap().ends_with("event limit]"));
        let rec = format!(
            r#"{{"level":"ERROR","data":"{}"}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        let j = application(&json_cfg(None, None), CTX, &rec).unwrap();
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["tenantId"], "tenant-A");
    }
}
