//! `silo-bench bench-logs`: the function-log pipeline without VMs.
//!
//! 1. Sustained ingest: producer threads hand lines to the real sink (the
//!    bounded buffer and the writer thread of `silo_daemon::logs`) at a
//!    target rate for a while; reports lines written per second, lines
//!    dropped, and this process's peak resident memory.
//! 2. Flat out: the same with no rate limit, to see the writer's ceiling.
//! 3. FilterLogEvents' query over a store of `--lines` lines of one tenant
//!    (beside as many of another): the first page of `{ $.tenantId = ...}`,
//!    terms and JSON patterns that look at every line of the tenant.
//!
//! Prints one JSON object.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use silo_daemon::logs::pattern::Pattern;
use silo_daemon::logs::query::{self, EventQuery, Scope};
use silo_daemon::logs::sink::{self, Entry, Export, LogSink, PipelineSettings};
use silo_daemon::logs::store::{tenant_key, Bounds, StoreWriter, Stored};
use silo_daemon::logs::UsageBook;

/// Flags of `silo-bench bench-logs`.
#[derive(clap::Args, Debug)]
pub struct LogsBenchArgs {
    /// Lines per second the producers aim at in the sustained run.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of the sustained run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Lines of the queried tenant in the store (as many of another).
    #[arg(long, default_value_t = 1_000_000)]
    lines: u64,
    /// Where the store is made (a fresh directory under it).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Feeds `sink` `rate` lines a second (0: flat out) from 4 threads for
/// `secs`, as 4 tenants; returns lines offered.
fn feed(sink: &LogSink, rate: u64, secs: u64) -> u64 {
    let threads = 4u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let (function, stream): (Arc<str>, Arc<str>) =
                    ("bench".into(), format!("2026/12/07/[$LATEST]{t:032x}").into());
                let tenant: Arc<str> = format!("tenant-{t}").into();
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(secs) {
                    if rate > 0 {
                        let due = start.elapsed().as_secs_f64() * (rate / threads) as f64;
                        if (n as f64) >= due {
                            std::thread::sleep(Duration::from_micros(500));
                            continue;
                        }
                    }
                    sink.send(Entry {
                        function: function.clone(),
                        stream: stream.clone(),
                        tenant: Some(tenant.clone()),
                        ts_ms: now_ms(),
                        message: format!(
                            "line {n} of tenant-{t}: the function printed this, about a hundred bytes long"
                        ),
                    });
                    n += 1;
                }
                n
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
}

fn settle(sink: &LogSink, offered: u64) {
    let c = &sink.counters;
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let done = c.written.load(std::sync::atomic::Ordering::Relaxed)
            + c.dropped.load(std::sync::atomic::Ordering::Relaxed);
        if done >= offered {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the benchmark.
pub fn run(args: LogsBenchArgs) -> std::process::ExitCode {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("silo-bench-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = |root: PathBuf| PipelineSettings {
        root,
        buffer_events: 65_536,
        buffer_bytes: 32 << 20,
        bounds: Bounds {
            max_function_bytes: 256 << 20,
            max_tenant_bytes: 64 << 20,
        },
        export: Export::Off,
        linger: silo_daemon::logs::sink::LINGER,
    };
    let mut out = json!({});
    for (name, rate, secs) in [("sustained", args.rate, args.seconds), ("flat_out", 0, 5)] {
        let root = dir.join(name);
        let sink = match sink::start(settings(root.clone()), Arc::new(UsageBook::open(root))) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench-logs: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let t = Instant::now();
        let offered = feed(&sink, rate, secs);
        settle(&sink, offered);
        let wall = t.elapsed().as_secs_f64();
        let c = &sink.counters;
        out[name] = json!({
            "target_lines_per_s": rate,
            "offered": offered,
            "written": c.written.load(Relaxed),
            "dropped": c.dropped.load(Relaxed),
            "written_per_s": c.written.load(Relaxed) as f64 / wall,
            "segments_evicted": c.evicted_segments.load(Relaxed),
            "peak_rss_kib": peak_rss_kib(),
        });
        eprintln!("{name}: {}", out[name]);
    }

    // A store of `lines` lines of tenant-A and as many of tenant-B.
    let root = dir.join("query");
    let mut w = StoreWriter::new(
        root.clone(),
        Bounds {
            max_function_bytes: u64::MAX,
            max_tenant_bytes: u64::MAX,
        },
    );
    let t = Instant::now();
    for tenant in ["tenant-A", "tenant-B"] {
        let key = tenant_key(Some(tenant));
        let mut buf = Vec::with_capacity(8 << 20);
        for i in 0..args.lines {
            let s = Stored {
                t: 1_765_000_000_000 + i,
                i: 1_765_000_000_000 + i,
                s: "2026/12/07/[$LATEST]00000000000000000000000000000001".into(),
                n: Some(tenant.into()),
                m: format!("{{\"level\":\"INFO\",\"message\":\"request {i} done\",\"tenantId\":\"{tenant}\"}}"),
            };
            let _ = serde_json::to_writer(&mut buf, &s);
            buf.push(b'\n');
            if buf.len() > (4 << 20) {
                let _ = w.append("bench", &key, &buf);
                buf.clear();
            }
        }
        let _ = w.append("bench", &key, &buf);
    }
    let written_s = t.elapsed().as_secs_f64();
    let stored = w.usage("bench").0;
    let all = Scope::All;
    let narrowed = Scope::Tenants(["tenant-A".to_string()].into());
    let mut q = json!({
        "lines_per_tenant": args.lines,
        "stored_bytes": stored,
        "store_written_in_s": written_s,
    });
    // (name, scope, pattern): FilterLogEvents' first page (10,000 events)
    // as the admin key (every tenant) or tenant-A's key asks it.
    let one_line = format!("\"request {} done\"", args.lines / 2);
    let cases: [(&str, &Scope, &str); 7] = [
        // One tenant's events by a JSON pattern (the tenant's directory).
        (
            "tenant_pattern_first_page",
            &all,
            "{ $.tenantId = \"tenant-A\" }",
        ),
        // A term matching one of tenant-A's lines: every line looked at.
        ("term_one_line", &narrowed, one_line.as_str()),
        // JSON patterns matching none of tenant-A's lines (every line
        // looked at): the raw-line test answers for each line.
        (
            "json_level_none",
            &narrowed,
            "{ $.level = \"ERROR\" || $.level = \"FATAL\" }",
        ),
        (
            "json_tenant_and_level_none",
            &all,
            "{ $.tenantId = \"tenant-A\" && $.level = \"ERROR\" }",
        ),
        (
            "json_missing_field_none",
            &narrowed,
            "{ $.latencyMs > 100 }",
        ),
        // A JSON pattern that must parse every line (its field is in
        // every line and `!=` has no text to look for).
        (
            "json_parse_every_line_none",
            &narrowed,
            "{ $.level != \"INFO\" }",
        ),
        // Every one of tenant-A's lines, by message text: the first page.
        (
            "json_message_first_page",
            &all,
            "{ $.message = \"request *\" }",
        ),
    ];
    for (name, scope, pattern) in cases {
        let p = Pattern::parse(pattern).expect("pattern");
        let t = Instant::now();
        let (found, more) = query::events(
            &root,
            &EventQuery {
                function: "bench",
                scope,
                streams: &[],
                stream_prefix: "",
                start_ms: None,
                end_ms: None,
                pattern: &p,
                limit: 10_000,
                after: None,
            },
        );
        q[name] = json!({
            "pattern": pattern,
            "s": t.elapsed().as_secs_f64(),
            "events": found.len(),
            "more": more,
        });
        eprintln!("{name}: {}", q[name]);
    }
    out["query"] = q;
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    std::process::ExitCode::SUCCESS
}
