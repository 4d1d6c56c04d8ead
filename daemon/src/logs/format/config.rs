//! A function's `LoggingConfig`: as stored with it, as CreateFunction and
//! UpdateFunctionConfiguration give it, and what the runtime is told.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Level, LogFormat};

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
