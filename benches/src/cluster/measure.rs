//! The measurements of `bench-cluster`, against running nodes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_client::{HttpResponse, InvokeOptions, LambdaClient};

use super::{percentiles, signed, ClusterBenchArgs, Haproxy};

/// Every measurement, in one run against `endpoints` (node 1 first).
pub(super) fn all(
    args: &ClusterBenchArgs,
    endpoints: &[String],
    zip: &[u8],
) -> Result<Value, String> {
    let admins: Vec<LambdaClient> = endpoints.iter().map(|e| signed(e)).collect();
    create_everywhere(&admins, "bench", zip)?;
    let changes = change_visibility(&admins, args.changes)?;
    eprintln!("change visibility: {changes}");
    let default_factor = silo_daemon::cluster::haproxy::HaproxyOptions::default().balance_factor;
    let warm = warm_latency(&admins, endpoints, default_factor, args.warm)?;
    eprintln!("warm: {warm}");
    let mut mixed = Vec::new();
    for f in &args.factors {
        let m = mixed_load(args, &admins, endpoints, zip, *f)?;
        eprintln!("factor {f}: {m}");
        mixed.push(m);
    }
    Ok(json!({
        "default_factor": default_factor,
        "warm_invoke_ms": warm,
        "warm_hit_under_mixed_load": mixed,
        "change_visible_on_every_node_ms": changes,
    }))
}

fn err(r: Result<HttpResponse, silo_client::ClientError>) -> Result<HttpResponse, String> {
    r.map_err(|e| e.to_string())
}

/// Creates `name` through node 1 and waits until every node has it.
fn create_everywhere(admins: &[LambdaClient], name: &str, zip: &[u8]) -> Result<(), String> {
    let r = err(admins[0].create_function(name, zip, true, json!({"Timeout": 60})))?;
    if r.status != 201 {
        return Err(format!("create {name}: {} {}", r.status, r.text()));
    }
    let t = Instant::now();
    for a in admins {
        while a
            .request("GET", &format!("/2015-03-31/functions/{name}"), &[], b"")
            .map(|r| r.status)
            .unwrap_or(0)
            != 200
        {
            if t.elapsed() > Duration::from_secs(60) {
                return Err(format!("{name} did not reach every node in 60 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// `n` changes of the function's reserved concurrency through node 1,
/// each timed from its request until every node shows it (one poller per
/// node).
fn change_visibility(admins: &[LambdaClient], n: usize) -> Result<Value, String> {
    let mut ms = Vec::new();
    for k in 1..=n {
        let want = 100 + k as u64;
        let sent = Instant::now();
        let r = err(admins[0].request(
            "PUT",
            "/2017-10-31/functions/bench/concurrency",
            &[("content-type", "application/json")],
            format!("{{\"ReservedConcurrentExecutions\": {want}}}").as_bytes(),
        ))?;
        if r.status != 200 {
            return Err(format!("change {k}: {} {}", r.status, r.text()));
        }
        let seen: Vec<Result<f64, String>> = std::thread::scope(|s| {
            let polls: Vec<_> = admins
                .iter()
                .map(|a| {
                    s.spawn(move || loop {
                        let r = a.request("GET", "/2015-03-31/functions/bench", &[], b"");
                        if r.is_ok_and(|r| {
                            r.json()["Concurrency"]["ReservedConcurrentExecutions"] == want
                        }) {
                            return Ok(sent.elapsed().as_secs_f64() * 1000.0);
                        }
                        if sent.elapsed() > Duration::from_secs(60) {
                            return Err(format!("change {k} not visible in 60 s"));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    })
                })
                .collect();
            polls.into_iter().map(|p| p.join().unwrap()).collect()
        });
        let mut last = 0.0f64;
        for s in seen {
            last = last.max(s?);
        }
        ms.push(last);
    }
    Ok(percentiles(&mut ms))
}

/// One invoke of `function` for `tenant`: status, cold, environment.
fn invoke(c: &LambdaClient, function: &str, tenant: &str) -> Result<(u16, bool, String), String> {
    let r = err(c.invoke(
        function,
        b"{}",
        &InvokeOptions {
            tenant: Some(tenant.into()),
            invocation_type: None,
            log_tail: false,
        },
    ))?;
    Ok((
        r.status,
        r.header("x-silo-cold-start") == Some("true"),
        r.header("x-silo-environment-id").unwrap_or("").to_string(),
    ))
}

/// Invokes through HAProxy until it answers 200 (its checks see the
/// nodes up after two intervals).
fn first_through(c: &LambdaClient, function: &str, tenant: &str) -> Result<String, String> {
    let t = Instant::now();
    loop {
        match invoke(c, function, tenant) {
            Ok((200, _, env)) => return Ok(env),
            other if t.elapsed() > Duration::from_secs(120) => {
                return Err(format!("{tenant} through HAProxy: {other:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Warm invokes of one tenant through HAProxy (factor `factor`) against
/// direct to the node holding its environment, interleaved.
fn warm_latency(
    admins: &[LambdaClient],
    endpoints: &[String],
    factor: u32,
    n: usize,
) -> Result<Value, String> {
    let hap = Haproxy::start(endpoints, factor)?;
    let through = signed(&hap.endpoint);
    first_through(&through, "bench", "solo")?;
    let home = (0..admins.len())
        .find(|i| invocations(&admins[*i], "bench", "solo") > 0)
        .ok_or("no node counts the tenant's invoke")?;
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..n {
        for (c, into) in [(&admins[home], &mut direct), (&through, &mut via)] {
            let t = Instant::now();
            let (status, cold, _) = invoke(c, "bench", "solo")?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if status != 200 || cold {
                return Err(format!("a warm invoke: HTTP {status}, cold {cold}"));
            }
            into.push(ms);
        }
    }
    let (d, h) = (percentiles(&mut direct), percentiles(&mut via));
    let ratio = |k: &str| h[k].as_f64().unwrap_or(0.0) / d[k].as_f64().unwrap_or(1.0);
    Ok(json!({
        "direct": d, "haproxy": h,
        "p50_ratio": ratio("p50"), "p99_ratio": ratio("p99"),
    }))
}

/// `silo_invocations_total` of `function` for `tenant` on a node.
fn invocations(admin: &LambdaClient, function: &str, tenant: &str) -> u64 {
    let Ok(m) = admin.request("GET", "/metrics", &[], b"") else {
        return 0;
    };
    let prefix =
        format!("silo_invocations_total{{function=\"{function}\",tenant_id=\"{tenant}\"}} ");
    m.text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The warm-hit share of repeat invokes through HAProxy with bounded-load
/// `factor`: `args.repeat_tenants` tenants each cold-started once
/// (sequentially), then `args.clients` clients repeat-invoke them while
/// `args.new_tenants` new tenants cold-start one after another. A fresh
/// function per factor (deleted after, destroying its VMs), so no
/// environment of another factor's run is reused.
fn mixed_load(
    args: &ClusterBenchArgs,
    admins: &[LambdaClient],
    endpoints: &[String],
    zip: &[u8],
    factor: u32,
) -> Result<Value, String> {
    let function = format!("mix-{factor}");
    create_everywhere(admins, &function, zip)?;
    let hap = Haproxy::start(endpoints, factor)?;
    let through = signed(&hap.endpoint);
    let tenants: Vec<String> = (0..args.repeat_tenants)
        .map(|t| format!("f{factor}-t{t}"))
        .collect();
    let mut homes = Vec::new();
    for t in &tenants {
        homes.push(first_through(&through, &function, t)?);
    }
    let done = AtomicBool::new(false);
    // Per repeat invoke: (status, cold, ran in another environment).
    let seen: Mutex<Vec<(u16, bool, bool)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let new_cold: Result<Vec<f64>, String> = std::thread::scope(|s| {
        for c in 0..args.clients {
            let (through, tenants, homes, function) = (&through, &tenants, &homes, &function);
            let (done, seen) = (&done, &seen);
            s.spawn(move || {
                let mut i = c;
                while !done.load(Ordering::Relaxed) {
                    let k = i % tenants.len();
                    let r = invoke(through, function, &tenants[k]);
                    let row = match r {
                        Ok((status, cold, env)) => (status, cold, env != homes[k]),
                        Err(_) => (0, false, false),
                    };
                    seen.lock().unwrap().push(row);
                    i += args.clients;
                }
            });
        }
        let mut cold_ms = Vec::new();
        let mut out = Ok(());
        for n in 0..args.new_tenants {
            let t = Instant::now();
            match invoke(&through, &function, &format!("f{factor}-new{n}")) {
                Ok((200, _, _)) => cold_ms.push(t.elapsed().as_secs_f64() * 1000.0),
                other => {
                    out = Err(format!("new tenant {n}: {other:?}"));
                    break;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        out.map(|()| cold_ms)
    });
    let took = started.elapsed();
    let mut new_cold = new_cold?;
    let seen = seen.into_inner().unwrap();
    let total = seen.len();
    let ok = seen.iter().filter(|r| r.0 == 200).count();
    let warm = seen.iter().filter(|r| r.0 == 200 && !r.1).count();
    let moved = seen.iter().filter(|r| r.0 == 200 && r.2).count();
    let _ = admins[0].request(
        "DELETE",
        &format!("/2015-03-31/functions/{function}"),
        &[],
        b"",
    );
    Ok(json!({
        "factor": factor,
        "repeat_invokes": total,
        "failed": total - ok,
        "warm_hit_share": if total > 0 { warm as f64 / total as f64 } else { 0.0 },
        "ran_in_another_environment": moved,
        "new_tenant_cold_starts_ms": percentiles(&mut new_cold),
        "mixed_load_s": took.as_secs_f64(),
    }))
}
