//! `silo bench-api`: the daemon measured the way users see it, through the
//! Lambda HTTP API, in one run: cold invokes (each a new tenant, so each
//! boots a microVM), warm invokes (one tenant, its VM reused), and
//! environments created per second with several new tenants at once.
//!
//! Bursts of new tenants (`--burst TxM@K`: T new tenants x M invokes, K in
//! flight) show what admission control does under the load tenant isolation
//! makes normal: every invoke's outcome, first-invoke latency of new tenants
//! against a lone cold start of the same run, environments created per
//! second, the share refused (429), plotted in `bench-api-burst.svg`.
//!
//! The peer, measured interleaved in the same run, is the same invocation
//! made directly on the daemon's scheduler (no HTTP, no SigV4, no JSON
//! checks): the ratio is what the API layer costs. Where hardware KVM is not
//! usable the whole run moves into the KVM test host, where absolute times
//! are emulated and only the ratios mean something.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_scheduler::TenantId;

use silo_aws::id::random_uuid;
use silo_client::{HttpResponse, InvokeOptions, LambdaClient};
use silo_daemon::serve;
use silo_daemon::{Daemon, Images};
use silo_images::placement::run_here_or_in_test_host;

use crate::guest_files::{GuestFileArgs, GuestFiles};

mod plot;

use plot::burst_svg;

/// Flags for `silo bench-api`.
#[derive(clap::Args, Debug)]
pub struct BenchApiArgs {
    /// Cold invokes (new tenants), each for the API and for the peer.
    #[arg(long, default_value_t = 8)]
    cold: usize,
    /// Warm invokes, each for the API and for the peer.
    #[arg(long, default_value_t = 100)]
    warm: usize,
    /// New tenants invoked at once to measure environments created per second.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Bursts of new tenants, `TENANTSxINVOKES@IN_FLIGHT` (repeatable).
    #[arg(long, default_values = ["6x6@12", "20x3@20"])]
    burst: Vec<silo_client::burst::BurstShape>,
    /// Pool size for the pooled new-tenant scenario (0 skips it): `--cold`
    /// new tenants, one at a time, each arriving once the pool is full,
    /// their first invoke served by a pre-booted VM.
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// JSON results file.
    #[arg(long, default_value = "bench-api.json")]
    out: PathBuf,
    /// SVG plot of the bursts.
    #[arg(long, default_value = "bench-api-burst.svg")]
    plot: PathBuf,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    #[command(flatten)]
    guest: GuestFileArgs,
}

/// Runs the benchmark.
pub fn run(args: BenchApiArgs) -> ExitCode {
    crate::exit_code("silo bench-api", run_inner(args))
}

fn run_inner(args: BenchApiArgs) -> Result<(), String> {
    if args.cold == 0 || args.warm == 0 || args.parallel == 0 {
        return Err("--cold, --warm and --parallel must be at least 1".into());
    }
    let files = args.guest.resolve()?;
    run_here_or_in_test_host(
        args.here,
        || {
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let results = rt.block_on(bench(&args, files.clone()))?;
            write_results(&args, &results)
        },
        || in_test_host(&args, &files),
    )
}

fn in_test_host(args: &BenchApiArgs, files: &GuestFiles) -> Result<(), String> {
    let results = files.bench_json_in_test_host(&format!(
        "bench-api --cold {} --warm {} --parallel {} --pool {} {}",
        args.cold,
        args.warm,
        args.parallel,
        args.pool,
        args.burst
            .iter()
            .map(|b| format!("--burst {b}"))
            .collect::<Vec<_>>()
            .join(" ")
    ))?;
    write_results(args, &results)
}

fn write_results(args: &BenchApiArgs, results: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, &text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    if !args.burst.is_empty() {
        std::fs::write(&args.plot, burst_svg(results))
            .map_err(|e| format!("{}: {e}", args.plot.display()))?;
    }
    print_table(results);
    Ok(())
}

/// min/p50/p95/p99/max in milliseconds.
fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    json!({ "n": ms.len(), "min": ms[0], "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": ms[ms.len() - 1] })
}

fn ratio(a: &Value, b: &Value, k: &str) -> Value {
    match (a[k].as_f64(), b[k].as_f64()) {
        (Some(x), Some(y)) if y > 0.0 => json!((x / y * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One invoke of the counter over HTTP as `tenant`: its latency (ms) and
/// the response, whatever its status.
fn timed_invoke(c: &LambdaClient, tenant: String) -> Result<(f64, HttpResponse), String> {
    let opts = InvokeOptions {
        tenant: Some(tenant),
        ..Default::default()
    };
    let t = Instant::now();
    let r = c
        .invoke("counter", b"{}", &opts)
        .map_err(|e| e.to_string())?;
    Ok((ms(t.elapsed()), r))
}

/// One invoke over HTTP; its latency.
fn http_invoke(c: &LambdaClient, tenant: &str) -> Result<(f64, bool), String> {
    let (took, r) = timed_invoke(c, tenant.into())?;
    if r.status != 200 || r.header("x-amz-function-error").is_some() {
        return Err(format!(
            "invoke as {tenant}: HTTP {} {}",
            r.status,
            r.text()
        ));
    }
    Ok((took, r.header("x-silo-cold-start") == Some("true")))
}

/// Deletes the counter function (destroying its VMs) and creates it again,
/// so that what follows starts from no environment, as new tenants do.
fn recreate_counter(c: &LambdaClient, zip: &[u8]) -> Result<(), String> {
    c.request("DELETE", "/2015-03-31/functions/counter", &[], b"")
        .map_err(|e| e.to_string())?;
    let r = c
        .create_function("counter", zip, true, json!({"Timeout": 30}))
        .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Err(format!("CreateFunction: HTTP {} {}", r.status, r.text()));
    }
    Ok(())
}

/// One invoke straight on the scheduler (the peer); its latency.
async fn direct_invoke(d: &Daemon, tenant: &str) -> Result<(f64, bool), String> {
    let rec = d.get("counter").ok_or("the function is gone")?;
    let t = Instant::now();
    let r = d
        .invoke(
            &rec,
            Some(TenantId::parse(tenant).map_err(|e| e.to_string())?),
            b"{}".to_vec(),
            &random_uuid(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((ms(t.elapsed()), r.cold_start))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

async fn bench(args: &BenchApiArgs, files: GuestFiles) -> Result<Value, String> {
    let GuestFiles {
        kernel,
        agent,
        function,
    } = files;
    let data_dir = crate::scratch_path("silo-bench-api");
    let mut config = crate::bench_daemon_config(data_dir.clone());
    let burst_envs = args.burst.iter().map(|b| b.in_flight).max().unwrap_or(0);
    let n_envs = (args.cold * 2 + args.parallel * 2 + 4).max(burst_envs) as u32;
    config.limits.concurrency = n_envs;
    config.limits.per_tenant = n_envs;
    let running = serve::start(config, Images { kernel, agent })
        .await
        .map_err(|e| e.to_string())?;
    let result = measure(
        args,
        &running.daemon,
        &format!("http://{}", running.addr),
        &function,
    )
    .await;
    running.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn measure(
    args: &BenchApiArgs,
    d: &Arc<Daemon>,
    endpoint: &str,
    function: &Path,
) -> Result<Value, String> {
    let client = LambdaClient::new(endpoint, None);
    let code = std::fs::read(function).map_err(|e| format!("{}: {e}", function.display()))?;
    let zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let (c, first_zip) = (client.clone(), zip.clone());
    let r =
        blocking(move || c.create_function("counter", &first_zip, true, json!({"Timeout": 30})))
            .await?
            .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Err(format!("CreateFunction: HTTP {} {}", r.status, r.text()));
    }
    // Cold: every invoke a new tenant; API and peer interleaved.
    let (mut cold_api, mut cold_peer) = (Vec::new(), Vec::new());
    for i in 0..args.cold {
        let c = client.clone();
        let (t, cold) = blocking(move || http_invoke(&c, &format!("cold-api-{i}"))).await??;
        if !cold {
            return Err("a new tenant's invoke was not a cold start".into());
        }
        cold_api.push(t);
        let (t, _) = direct_invoke(d, &format!("cold-peer-{i}")).await?;
        cold_peer.push(t);
        eprintln!(
            "[bench-api] cold {}/{}: API {:.0} ms, direct {:.0} ms",
            i + 1,
            args.cold,
            cold_api[i],
            t
        );
    }
    // Warm: one tenant each, after its cold start.
    let c = client.clone();
    blocking(move || http_invoke(&c, "warm-api")).await??;
    direct_invoke(d, "warm-peer").await?;
    let (mut warm_api, mut warm_peer) = (Vec::new(), Vec::new());
    for _ in 0..args.warm {
        let c = client.clone();
        let (t, cold) = blocking(move || http_invoke(&c, "warm-api")).await??;
        if cold {
            return Err("a warm tenant's invoke was a cold start".into());
        }
        warm_api.push(t);
        warm_peer.push(direct_invoke(d, "warm-peer").await?.0);
    }
    // Creations per second: `parallel` new tenants at once, twice.
    let started = Instant::now();
    let mut created = 0;
    for round in 0..2 {
        let mut handles = Vec::new();
        for i in 0..args.parallel {
            let c = client.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                http_invoke(&c, &format!("burst-{round}-{i}"))
            }));
        }
        for h in handles {
            let (_, cold) = h.await.map_err(|e| e.to_string())??;
            created += usize::from(cold);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // Bursts: each on a fresh function (its earlier VMs destroyed), so that
    // every burst starts from no environment, as new tenants do.
    let mut bursts = Vec::new();
    let lone_cold_p50 = {
        let mut v = cold_api.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, shape) in args.burst.iter().enumerate() {
        let (c, zip) = (client.clone(), zip.clone());
        blocking(move || recreate_counter(&c, &zip)).await??;
        let (c, shape) = (client.clone(), *shape);
        eprintln!(
            "[bench-api] burst {shape}: {} tenants x {} invokes, {} in flight",
            shape.tenants, shape.invokes, shape.in_flight
        );
        let report =
            blocking(move || silo_client::burst::run(&c, "counter", &format!("burst{i}"), shape))
                .await?;
        let mut v = report.to_json();
        let (a, r, f) = report.tally();
        eprintln!(
            "[bench-api] burst {shape}: {a} answered, {r} refused, {f} failed in {:.1} s",
            report.wall.as_secs_f64()
        );
        v["lone_cold_start_p50_ms"] = json!(lone_cold_p50);
        v["first_invoke_p99_over_lone_cold_p50"] = match v["first_invoke_ms"]["p99"].as_f64() {
            Some(p99) => json!((p99 / lone_cold_p50 * 100.0).round() / 100.0),
            None => Value::Null,
        };
        bursts.push(v);
    }
    // New tenants with a pool of pre-booted VMs: each arrives once the pool
    // is full again (tenants arriving slower than a boot); its first invoke.
    let mut pooled = Vec::new();
    if args.pool > 0 {
        let (c, n, zip) = (client.clone(), args.pool, zip.clone());
        blocking(move || -> Result<(), String> {
            recreate_counter(&c, &zip)?;
            let body = json!({ "PoolSize": n }).to_string();
            let r = c
                .request(
                    "PUT",
                    "/2015-03-31/functions/counter/pool",
                    &[],
                    body.as_bytes(),
                )
                .map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("PUT pool: HTTP {} {}", r.status, r.text()));
            }
            Ok(())
        })
        .await??;
        for i in 0..args.cold {
            let c = client.clone();
            let n = args.pool as u64;
            let t = blocking(move || -> Result<(f64, bool, bool), String> {
                let until = Instant::now() + Duration::from_secs(300);
                loop {
                    let r = c
                        .request("GET", "/2015-03-31/functions/counter/pool", &[], b"")
                        .map_err(|e| e.to_string())?;
                    if r.json()["Ready"].as_u64() == Some(n) {
                        break;
                    }
                    if Instant::now() > until {
                        return Err(format!("the pool never filled: {}", r.text()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let (took, r) = timed_invoke(&c, format!("pooled-{i}"))?;
                if r.status != 200 {
                    return Err(format!("pooled invoke: HTTP {} {}", r.status, r.text()));
                }
                Ok((
                    took,
                    r.header("x-silo-pooled") == Some("true"),
                    r.header("x-silo-cold-start") == Some("true"),
                ))
            })
            .await??;
            if !t.1 || t.2 {
                return Err(format!("new tenant {i} was not served from the pool"));
            }
            eprintln!(
                "[bench-api] pooled new tenant {}/{}: {:.0} ms",
                i + 1,
                args.cold,
                t.0
            );
            pooled.push(t.0);
        }
    }
    let pooled = if pooled.is_empty() {
        Value::Null
    } else {
        let p = summary(pooled);
        let wa = summary(warm_api.clone());
        let ca = summary(cold_api.clone());
        json!({
            "pool_size": args.pool,
            "first_invoke_ms": p,
            "ratio_p50_to_warm_p50": ratio(&p, &wa, "p50"),
            "ratio_p50_to_cold_p50": ratio(&p, &ca, "p50"),
        })
    };
    let (ca, cp, wa, wp) = (
        summary(cold_api),
        summary(cold_peer),
        summary(warm_api),
        summary(warm_peer),
    );
    Ok(json!({
        "where": if silo_images::testhost::hardware_kvm_usable() { "hardware KVM" } else { "this host's /dev/kvm (run with --here)" },
        "cold_invoke_ms": { "api": ca, "direct_peer": cp, "ratio_api_to_peer": { "p50": ratio(&ca, &cp, "p50"), "p99": ratio(&ca, &cp, "p99") } },
        "warm_invoke_ms": { "api": wa, "direct_peer": wp, "ratio_api_to_peer": { "p50": ratio(&wa, &wp, "p50"), "p99": ratio(&wa, &wp, "p99") } },
        "cold_to_warm_p50": ratio(&ca, &wa, "p50"),
        "creations": { "environments": created, "parallel": args.parallel, "seconds": wall, "per_second": created as f64 / wall },
        "bursts": bursts,
        "new_tenant_with_pool": pooled,
        "admission": { "max_booting": d.config.limits.admission().max_booting, "cold_start_queue": d.config.limits.cold_start_queue, "init_timeout_s": d.config.limits.init_timeout_s },
    }))
}

fn print_table(r: &Value) {
    println!("silo bench-api ({})", r["where"].as_str().unwrap_or(""));
    if r["new_tenant_with_pool"].is_object() {
        let p = &r["new_tenant_with_pool"];
        println!(
            "new tenant with a pool of {}: first invoke p50 {:.1} ms p99 {:.1} ms ({}x a warm invoke's p50, {}x a cold start's)",
            p["pool_size"],
            p["first_invoke_ms"]["p50"].as_f64().unwrap_or(0.0),
            p["first_invoke_ms"]["p99"].as_f64().unwrap_or(0.0),
            p["ratio_p50_to_warm_p50"],
            p["ratio_p50_to_cold_p50"]
        );
    }
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "peer p50", "ratio p50"
    );
    for (label, k) in [
        ("cold invoke (new tenant)", "cold_invoke_ms"),
        ("warm invoke", "warm_invoke_ms"),
    ] {
        let v = &r[k];
        println!(
            "{:<22} {:>10.1} {:>10.1} {:>10.1} {:>10}",
            label,
            v["api"]["p50"].as_f64().unwrap_or(0.0),
            v["api"]["p99"].as_f64().unwrap_or(0.0),
            v["direct_peer"]["p50"].as_f64().unwrap_or(0.0),
            v["ratio_api_to_peer"]["p50"]
        );
    }
    println!(
        "environments created per second: {:.2} ({} at a time)",
        r["creations"]["per_second"].as_f64().unwrap_or(0.0),
        r["creations"]["parallel"]
    );
    for b in r["bursts"].as_array().into_iter().flatten() {
        println!(
            "burst {}: {}/{} answered, {} refused, {} failed; first invoke p50 {:.0} ms p99 {:.0} ms ({}x a lone cold start's p50); {:.2} environments/s; max booting {}",
            b["shape"].as_str().unwrap_or(""),
            b["answered"],
            b["invokes"],
            b["refused"],
            b["failed"],
            b["first_invoke_ms"]["p50"].as_f64().unwrap_or(0.0),
            b["first_invoke_ms"]["p99"].as_f64().unwrap_or(0.0),
            b["first_invoke_p99_over_lone_cold_p50"],
            b["environments_per_second"].as_f64().unwrap_or(0.0),
            r["admission"]["max_booting"],
        );
    }
}
