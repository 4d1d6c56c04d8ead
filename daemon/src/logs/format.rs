//! Lambda's two log formats, chosen per function with `LoggingConfig`:
//! `Text` (Lambda's line shapes: `START RequestId: ...`, the function's
//! lines as written) and `JSON` (Lambda's JSON shapes: `platform.start`,
//! `platform.report`..., the runtime's JSON records), with `tenantId` in
//! every JSON record and Lambda's `ApplicationLogLevel`/`SystemLogLevel`
//! filtering.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod config;
mod platform;

pub use config::{LoggingConfig, LoggingInput};
pub use platform::{billed_ms, platform, Platform, Report};

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
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

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
