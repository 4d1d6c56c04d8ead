//! `silo logs` and `silo usage`: a function's log (one tenant's, with
//! `--tenant`) through the daemon's CloudWatch Logs subset, and usage per
//! tenant through its usage extension. What a function printed is the
//! guest's text: it is printed with control characters escaped, so it
//! cannot drive the terminal.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use crate::cmd_client::Connection;

/// Flags for `silo logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The function.
    #[arg(long)]
    function: String,
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// A CloudWatch Logs filter pattern (terms, or `{ $.field = "..." }`);
    /// with `--tenant`, a plain text every event shown must contain.
    #[arg(long)]
    filter: Option<String>,
    /// Events of the last this many seconds (0: all kept).
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Keep printing new events as they come.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    conn: Connection,
}

/// The guest's text made safe for a terminal: control characters (but
/// tabs) escaped.
fn escaped(s: &str) -> String {
    s.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() && c != '\t' {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Runs `silo logs`.
pub fn logs(args: LogsArgs) -> ExitCode {
    let client = args.conn.client();
    let group = format!("/aws/lambda/{}", args.function);
    let (pattern, text) = match (&args.tenant, &args.filter) {
        (Some(t), f) => (
            format!("{{ $.tenantId = \"{}\" }}", t.replace('"', "")),
            f.clone(),
        ),
        (None, Some(f)) => (f.clone(), None),
        (None, None) => (String::new(), None),
    };
    let mut start = if args.since > 0 {
        now_ms().saturating_sub(args.since * 1000)
    } else {
        0
    };
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let mut token: Option<String> = None;
        let mut newest = start;
        loop {
            let mut input =
                json!({"logGroupName": group, "filterPattern": pattern, "startTime": start});
            if let Some(t) = &token {
                input["nextToken"] = t.clone().into();
            }
            let r = match client.logs("FilterLogEvents", &input) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("silo logs: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if r.status != 200 {
                eprintln!("silo logs: HTTP {}: {}", r.status, r.text());
                return ExitCode::FAILURE;
            }
            let v = r.json();
            for e in v["events"].as_array().into_iter().flatten() {
                let id = e["eventId"].as_str().unwrap_or("").to_string();
                let ts = e["timestamp"].as_u64().unwrap_or(0);
                newest = newest.max(ts);
                let message = e["message"].as_str().unwrap_or("");
                if !seen.insert(id) || text.as_deref().is_some_and(|t| !message.contains(t)) {
                    continue;
                }
                println!(
                    "{} {} {}",
                    silo_daemon::logs::format::iso_time(ts),
                    escaped(e["logStreamName"].as_str().unwrap_or("")),
                    escaped(message)
                );
            }
            token = v["nextToken"].as_str().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        if !args.follow {
            return ExitCode::SUCCESS;
        }
        // Events of the newest millisecond are asked for again (more may
        // come in it); those already shown are skipped by their id.
        if newest > start {
            start = newest;
            seen.retain(|id| id.starts_with(&format!("{newest}_")));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Flags for `silo usage`.
#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    /// Only this function (else every function).
    #[arg(long)]
    function: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// From this day (`YYYY-MM-DD`) or time (ms since the epoch).
    #[arg(long)]
    from: Option<String>,
    /// To this day or time.
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    conn: Connection,
}

/// Runs `silo usage`: usage per (function, tenant), then summed per tenant.
pub fn usage(args: UsageArgs) -> ExitCode {
    let client = args.conn.client();
    let functions: Vec<String> = match &args.function {
        Some(f) => vec![f.clone()],
        None => match client.request("GET", "/2015-03-31/functions", &[], b"") {
            Ok(r) if r.status == 200 => r.json()["Functions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["FunctionName"].as_str().map(str::to_string))
                .collect(),
            Ok(r) => {
                eprintln!("silo usage: ListFunctions: HTTP {}: {}", r.status, r.text());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("silo usage: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut query = Vec::new();
    for (k, v) in [
        ("tenant", &args.tenant),
        ("from", &args.from),
        ("to", &args.to),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(v)));
        }
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let keys = [
        "EnvironmentsCreated",
        "Invocations",
        "GBSeconds",
        "Errors",
        "Throttles",
    ];
    println!(
        "{:<24} {:<24} {:>12} {:>12} {:>14} {:>8} {:>10}",
        "FUNCTION", "TENANT", "ENVIRONMENTS", "INVOCATIONS", "GB-SECONDS", "ERRORS", "THROTTLES"
    );
    let mut totals: BTreeMap<String, [f64; 5]> = BTreeMap::new();
    let row = |f: &str, t: &str, v: &[f64; 5]| {
        println!(
            "{:<24} {:<24} {:>12} {:>12} {:>14.3} {:>8} {:>10}",
            escaped(f),
            escaped(t),
            v[0],
            v[1],
            v[2],
            v[3],
            v[4]
        )
    };
    for f in &functions {
        let r = match client.request(
            "GET",
            &format!("/2015-03-31/functions/{f}/usage{query}"),
            &[],
            b"",
        ) {
            Ok(r) if r.status == 200 => r.json(),
            Ok(r) => {
                eprintln!("silo usage: {f}: HTTP {}: {}", r.status, r.text());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("silo usage: {e}");
                return ExitCode::FAILURE;
            }
        };
        for t in r["Tenants"].as_array().into_iter().flatten() {
            let tenant = t["TenantId"].as_str().unwrap_or("-").to_string();
            let v: [f64; 5] = keys.map(|k| t[k].as_f64().unwrap_or(0.0));
            row(f, &tenant, &v);
            let sum = totals.entry(tenant).or_default();
            for (s, x) in sum.iter_mut().zip(v) {
                *s += x;
            }
        }
    }
    if functions.len() > 1 {
        for (t, v) in &totals {
            row("(all functions)", t, v);
        }
    }
    ExitCode::SUCCESS
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(escaped("a\u{1b}[2Jb\r\nc\td"), "a\\u{1b}[2Jb\\r\\nc\td");
        assert_eq!(encode("tenant A/b"), "tenant%20A%2Fb");
    }
}
