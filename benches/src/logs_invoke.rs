//! `silo-bench bench-logs-invoke`: what keeping function logs costs a warm
//! invoke. The counter function prints 10 lines per invoke (`{"action":
//! "flood", "lines": 9}` and its own line); the daemon runs with `[logs]`
//! on (the default, or with each `--write-delays-ms` given: the log
//! writer's batching) and with `enabled = false`, in alternating rounds of
//! the same run (each round a fresh daemon, a cold start, warm-up, then
//! `--warm` invokes of one tenant through the HTTP API), so drift of the
//! machine falls on both. Reports p50/p95 of each and their ratio (the
//! goal: p50 on <= 1.05x off). Without hardware KVM the run moves into the
//! KVM test host, where times are emulated: compare the ratio.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};
use silo_client::{InvokeOptions, LambdaClient};
use silo_daemon::serve;
use silo_daemon::Images;
use silo_images::placement::run_here_or_in_test_host;

use crate::guest_files::{GuestFileArgs, GuestFiles};

/// Flags of `silo-bench bench-logs-invoke`.
#[derive(clap::Args, Debug)]
pub struct LogsInvokeArgs {
    /// Rounds per setting (logs on, logs off, alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured warm invokes per round.
    #[arg(long, default_value_t = 60)]
    warm: usize,
    /// Logs on with each of these `[logs] write_delay_ms` (the first is
    /// reported as `logs_on_ms`); logs off beside them.
    #[arg(long, value_delimiter = ',', default_value = "250")]
    write_delays_ms: Vec<u64>,
    /// JSON results file.
    #[arg(long, default_value = "bench-logs-invoke.json")]
    out: PathBuf,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    #[command(flatten)]
    guest: GuestFileArgs,
}

/// The payload that makes the counter print 10 lines.
const TEN_LINES: &[u8] = br#"{"action":"flood","lines":9}"#;

/// Runs the benchmark.
pub fn run(args: LogsInvokeArgs) -> ExitCode {
    crate::exit_code("silo bench-logs-invoke", run_inner(args))
}

fn run_inner(args: LogsInvokeArgs) -> Result<(), String> {
    if args.rounds == 0 || args.warm == 0 || args.write_delays_ms.is_empty() {
        return Err("--rounds, --warm and --write-delays-ms must be at least 1".into());
    }
    let files = args.guest.resolve()?;
    run_here_or_in_test_host(
        args.here,
        || {
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let results = rt.block_on(bench(&args, &files))?;
            write_results(&args, &results)
        },
        || in_test_host(&args, &files),
    )
}

fn in_test_host(args: &LogsInvokeArgs, files: &GuestFiles) -> Result<(), String> {
    let results = files.bench_json_in_test_host(&format!(
        "bench-logs-invoke --rounds {} --warm {} --write-delays-ms {}",
        args.rounds,
        args.warm,
        args.write_delays_ms
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    ))?;
    write_results(args, &results)
}

fn write_results(args: &LogsInvokeArgs, results: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, &text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("{text}");
    Ok(())
}

/// p50 and p95 (ms) of `v`.
fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    json!({"n": v.len(), "p50": q(0.5), "p95": q(0.95), "min": v[0], "max": v[v.len() - 1]})
}

/// One invoke printing 10 lines as `tenant`: its latency (ms) and whether
/// it was a cold start.
fn invoke(c: &LambdaClient, tenant: &str) -> Result<(f64, bool), String> {
    let opts = InvokeOptions {
        tenant: Some(tenant.into()),
        ..Default::default()
    };
    let t = Instant::now();
    let r = c
        .invoke("counter", TEN_LINES, &opts)
        .map_err(|e| e.to_string())?;
    let took = t.elapsed().as_secs_f64() * 1e3;
    if r.status != 200 || r.header("x-amz-function-error").is_some() {
        return Err(format!("invoke: HTTP {} {}", r.status, r.text()));
    }
    Ok((took, r.header("x-silo-cold-start") == Some("true")))
}

/// One round: a fresh daemon with logs on with this write delay (`None`:
/// off), the counter created, its cold start and 5 warm-up invokes, then
/// `warm` measured invokes.
async fn round(
    files: &GuestFiles,
    delay_ms: Option<u64>,
    warm: usize,
) -> Result<(Vec<f64>, u64), String> {
    let data_dir = crate::scratch_path(&format!("silo-bench-logs-invoke-{delay_ms:?}"));
    let mut config = crate::bench_daemon_config(data_dir.clone());
    config.logs.enabled = delay_ms.is_some();
    if let Some(ms) = delay_ms {
        config.logs.write_delay_ms = ms;
    }
    let running = serve::start(
        config,
        Images {
            kernel: files.kernel.clone(),
            agent: files.agent.clone(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let client = LambdaClient::new(&format!("http://{}", running.addr), None);
    let function = files.function.clone();
    let measured = tokio::task::spawn_blocking(move || -> Result<Vec<f64>, String> {
        let code = std::fs::read(&function).map_err(|e| format!("{}: {e}", function.display()))?;
        let zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
        let r = client
            .create_function("counter", &zip, true, json!({"Timeout": 30}))
            .map_err(|e| e.to_string())?;
        if r.status != 201 {
            return Err(format!("CreateFunction: HTTP {} {}", r.status, r.text()));
        }
        for _ in 0..6 {
            invoke(&client, "tenant-A")?;
        }
        let mut v = Vec::with_capacity(warm);
        for _ in 0..warm {
            let (t, cold) = invoke(&client, "tenant-A")?;
            if cold {
                return Err("a warm invoke was a cold start".into());
            }
            v.push(t);
        }
        Ok(v)
    })
    .await
    .map_err(|e| e.to_string())?;
    let written = running.daemon.logs.sink().map_or(0, |s| {
        s.counters
            .written
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    running.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok((measured?, written))
}

async fn bench(args: &LogsInvokeArgs, files: &GuestFiles) -> Result<Value, String> {
    let settings: Vec<Option<u64>> = std::iter::once(None)
        .chain(args.write_delays_ms.iter().copied().map(Some))
        .collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    let mut written = 0;
    for r in 0..args.rounds {
        // Rotate which goes first, so none always follows a stop.
        for k in 0..settings.len() {
            let i = (k + r) % settings.len();
            let (v, w) = round(files, settings[i], args.warm).await?;
            eprintln!(
                "[bench-logs-invoke] round {}/{} logs {}: p50 {:.1} ms",
                r + 1,
                args.rounds,
                settings[i].map_or("off".to_string(), |ms| format!("on ({ms} ms)")),
                summary(v.clone())["p50"]
            );
            if i == 1 {
                written += w;
            }
            times[i].extend(v);
        }
    }
    let summaries: Vec<Value> = times.into_iter().map(summary).collect();
    let off = &summaries[0];
    let ratio = |on: &Value, k: &str| {
        let (a, b) = (
            on[k].as_f64().unwrap_or(0.0),
            off[k].as_f64().unwrap_or(0.0),
        );
        json!(if b > 0.0 {
            (a / b * 1000.0).round() / 1000.0
        } else {
            0.0
        })
    };
    let by_delay: serde_json::Map<String, Value> = args
        .write_delays_ms
        .iter()
        .zip(&summaries[1..])
        .map(|(ms, on)| {
            (
                ms.to_string(),
                json!({
                    "logs_on_ms": on,
                    "p50_ratio_on_over_off": ratio(on, "p50"),
                    "p95_ratio_on_over_off": ratio(on, "p95"),
                }),
            )
        })
        .collect();
    let on = &summaries[1];
    Ok(json!({
        "lines_per_invoke": 10,
        "rounds_per_setting": args.rounds,
        "warm_invokes_per_round": args.warm,
        "write_delay_ms": args.write_delays_ms[0],
        "logs_on_ms": on,
        "logs_off_ms": off,
        "p50_ratio_on_over_off": ratio(on, "p50"),
        "p95_ratio_on_over_off": ratio(on, "p95"),
        "by_write_delay_ms": by_delay,
        "log_events_written_with_logs_on": written,
    }))
}
