//! `silo-bench bench-events`: how long an Event invoke takes to be answered
//! 202 now that the event is synced to the durable queue first
//! (`<data_dir>/events.sqlite`), against a DryRun of the same function and
//! tenant in the same run (the same HTTP, SigV4 and function lookup, no
//! queue: what the in-memory queue's 202 cost).
//!
//! A real `silo serve` (in this process) on a data directory under `--dir`
//! (the disk under test), reached over HTTP by the Rust client. No VM
//! boots: the function's reserved concurrency is 0, so its events stay
//! queued (their retries of a throttle write nothing), and what the store
//! does is the accepts.
//!
//! 1. One client, Event and DryRun interleaved, `--n` of each: p50s and
//!    their ratio (the goal: at most 2x).
//! 2. `--clients` clients at once sending Events (`--n` in all): each
//!    answer's latency, and the events accepted per second (concurrent
//!    accepts share one sync: group commit).
//!
//! Prints one JSON object.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};
use silo_client::{InvokeOptions, LambdaClient};
use silo_daemon::config::DaemonConfig;
use silo_daemon::{serve, Images};

/// Flags of `silo-bench bench-events`.
#[derive(clap::Args, Debug)]
pub struct EventsBenchArgs {
    /// Invokes of each kind (and Events in the concurrent phase).
    #[arg(long, default_value_t = 300)]
    n: usize,
    /// Clients at once in the concurrent phase.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Where the data directory is made (a fresh one under it; its disk is
    /// what the syncs measure). Default: the temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs the benchmark.
pub fn run(args: EventsBenchArgs) -> std::process::ExitCode {
    crate::exit_code("silo-bench bench-events", run_inner(args))
}

fn run_inner(args: EventsBenchArgs) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let data_dir = base.join(format!("silo-bench-events-{}", std::process::id()));
    let result = rt.block_on(bench(&args, data_dir.clone()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let r = result?;
    println!(
        "{}",
        serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    json!({ "n": ms.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": ms[ms.len() - 1] })
}

fn invoke(c: &LambdaClient, kind: &str, expect: u16) -> Result<f64, String> {
    let opts = InvokeOptions {
        tenant: Some("bench-tenant".into()),
        invocation_type: Some(kind.into()),
        ..Default::default()
    };
    let t = Instant::now();
    let r = c
        .invoke("counter", b"{}", &opts)
        .map_err(|e| e.to_string())?;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    if r.status != expect {
        return Err(format!("{kind}: HTTP {} {}", r.status, r.text()));
    }
    Ok(took)
}

async fn bench(args: &EventsBenchArgs, data_dir: PathBuf) -> Result<Value, String> {
    std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;
    // No guest boots here: the images only need to exist.
    let kernel = data_dir.join("no-kernel");
    let agent = data_dir.join("no-agent");
    for f in [&kernel, &agent] {
        std::fs::write(f, b"").map_err(|e| e.to_string())?;
    }
    let mut config = DaemonConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.join("data"),
        allow_unauthenticated: true,
        ..DaemonConfig::default()
    };
    // Room for every event of the run at once.
    config.limits.event_queue = (3 * args.n + 100).max(1000);
    config.limits.event_queue_per_tenant = (3 * args.n + 100).max(1000);
    let running = serve::start(config, Images { kernel, agent })
        .await
        .map_err(|e| e.to_string())?;
    let endpoint = format!("http://{}", running.addr);
    let n = args.n.max(10);
    let clients = args.clients.max(1);
    let measured = tokio::task::spawn_blocking(move || measure(&endpoint, n, clients))
        .await
        .map_err(|e| e.to_string())?;
    running.stop().await;
    measured
}

fn measure(endpoint: &str, n: usize, clients: usize) -> Result<Value, String> {
    let c = LambdaClient::new(endpoint, None);
    let code = b"#!/bin/sh\nexit 1\n".to_vec();
    let zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let r = c
        .create_function("counter", &zip, true, json!({"Timeout": 30}))
        .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Err(format!("CreateFunction: HTTP {} {}", r.status, r.text()));
    }
    // Reserved concurrency 0: the events wait in the queue (throttled,
    // retried without a write), so the store's work measured is the
    // accepts', as in a daemon whose events run for a while.
    let r = c
        .request(
            "PUT",
            "/2017-10-31/functions/counter/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("PutFunctionConcurrency: HTTP {}", r.status));
    }
    // Warm-up: connections, the database's pages, the WAL grown once.
    for _ in 0..20 {
        invoke(&c, "Event", 202)?;
        invoke(&c, "DryRun", 204)?;
    }
    let (mut events, mut dry) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        events.push(invoke(&c, "Event", 202)?);
        dry.push(invoke(&c, "DryRun", 204)?);
    }
    let (events, dry) = (summary(events), summary(dry));
    let ratio = events["p50"].as_f64().unwrap_or(0.0) / dry["p50"].as_f64().unwrap_or(1.0);
    // Concurrent clients: the accepts' syncs are shared.
    let start = Instant::now();
    let per = n.div_ceil(clients);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|_| invoke(&c, "Event", 202))
                    .collect::<Result<Vec<f64>, String>>()
            })
        })
        .collect();
    let mut together = Vec::new();
    for t in threads {
        together.extend(t.join().map_err(|_| "a client panicked")??);
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(json!({
        "sequential": {
            "event_202_ms": events,
            "dry_run_204_ms": dry,
            "event_over_dry_run_p50": (ratio * 100.0).round() / 100.0,
        },
        "concurrent": {
            "clients": clients,
            "event_202_ms": summary(together.clone()),
            "events_per_s": (together.len() as f64 / wall).round(),
        },
    }))
}
