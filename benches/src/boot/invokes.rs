//! Warm invokes through function VMs against the same agent in host mode
//! over a Unix socket, one at a time and many in flight; environment
//! creations per second; the function VM the other measurements boot.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use silo_daemon::vm_env::{InvokeResult, VmEnv, VmSpec};
use silo_proto::{AgentConfig, Message, Outcome};

use super::args::BenchArgs;
use super::results::{median, quantile, stats};
use crate::guest_files::GuestFiles;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn invoke_msg(n: usize) -> Message {
    Message::Invoke {
        request_id: format!("bench-{n}"),
        tenant_id: Some("bench".into()),
        deadline_unix_ms: now_ms() + 10_000,
        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:counter".into(),
        trace_id: "Root=1-0-0".into(),
        payload: b"{}".to_vec(),
    }
}

/// One VM against one host-mode agent: `args.invokes` warm invokes each,
/// one after another, after an untimed one.
pub(super) async fn warm_invokes(args: &BenchArgs, files: &GuestFiles) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench");

    // The VM.
    let spec = function_spec(&dir, files)?;
    let mut env = boot_vm(&spec, &dir).await?;
    let boot = env.boot;
    let overhead = env.vmm_memory_overhead_kib(128);
    // One untimed invocation first on each side: a runtime's first
    // invocation belongs to the cold start (the function VM timeline has it).
    let warmup = args.invokes;
    invoke_ok(&mut env, warmup, || "VM warm-up invoke failed".into()).await?;
    let mut vm = Vec::with_capacity(args.invokes);
    for n in 0..args.invokes {
        let r = invoke_ok(&mut env, n, || format!("VM invoke {n} failed")).await?;
        vm.push(r.duration.as_secs_f64() * 1e3);
    }
    env.shutdown().await;

    // The same agent and function on the host, over a Unix socket.
    let (mut child, mut conn) = host_agent(&dir, files, 0)?;
    let mut host = Vec::with_capacity(args.invokes);
    let mut run = || -> Result<(), String> {
        host_invoke(&mut conn, warmup)?;
        for n in 0..args.invokes {
            host.push(host_invoke(&mut conn, n)?);
        }
        Ok(())
    };
    if let Err(e) = run() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let _ = silo_proto::write_message(&mut conn, &Message::Shutdown);
    let _ = child.wait();
    conn.flush().ok();
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = vm_vs_host(vm, host);
    out["vm_spawn_to_agent_ready_ms"] = json!(boot.spawn_to_ready.as_secs_f64() * 1e3);
    out["guest_uptime_at_agent_start_ms"] =
        json!(boot.guest.kernel_uptime_at_agent_start_ns as f64 / 1e6);
    out["guest_uptime_at_agent_ready_ms"] =
        json!(boot.guest.kernel_uptime_at_ready_ns as f64 / 1e6);
    out["vmm_memory_overhead_kib"] = json!(overhead);
    Ok(out)
}

/// Boots `n` function VMs concurrently (to agent hello) and reports
/// environment creations per second, then shuts them all down.
pub(super) async fn creations(n: usize, files: &GuestFiles) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench-create");
    let spec = counter_vm_spec(&dir, files, &AgentConfig::default())?;
    let started = Instant::now();
    let boots = (0..n.max(1)).map(|_| boot_vm(&spec, &dir));
    let mut envs = Vec::new();
    let mut ready_ms = Vec::new();
    for r in futures_join(boots).await {
        let env = r?;
        ready_ms.push(env.boot.spawn_to_ready.as_secs_f64() * 1e3);
        envs.push(env);
    }
    let wall = started.elapsed().as_secs_f64();
    for env in envs {
        env.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "parallel": n.max(1),
        "wall_s": wall,
        "creations_per_second": n.max(1) as f64 / wall,
        "spawn_to_ready_ms": stats(ready_ms),
    }))
}

/// Polls all futures to completion concurrently on the current task.
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("completed")).collect()
}

/// A function VM image of the counter in `dir`, with the benchmark's agent
/// configuration.
pub(super) fn function_spec(dir: &Path, files: &GuestFiles) -> Result<VmSpec, String> {
    counter_vm_spec(dir, files, &bench_agent_config())
}

/// A function VM of the counter (`dir/function.cpio`, the agent configured
/// by `config`): 128 MiB, 1 vCPU, not jailed.
fn counter_vm_spec(dir: &Path, files: &GuestFiles, config: &AgentConfig) -> Result<VmSpec, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let code = std::fs::read(&files.function).map_err(|e| e.to_string())?;
    let package = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]);
    let image =
        silo_initramfs::image::build(&files.agent, config, &package).map_err(|e| e.to_string())?;
    let initrd = dir.join("function.cpio");
    std::fs::write(&initrd, image).map_err(|e| e.to_string())?;
    Ok(VmSpec {
        kernel: files.kernel.clone(),
        initrd,
        mem_mib: 128,
        vcpus: 1,
        boot_timeout: Duration::from_secs(300),
        jail: silo_daemon::jail::JailMode::Insecure,
        pmem: None,
        console_bytes: silo_daemon::console::DEFAULT_CONSOLE_BYTES,
        memory: Default::default(),
    })
}

/// Boots a function VM of `spec` (its files in `dir`) to the agent's hello.
pub(super) async fn boot_vm(spec: &VmSpec, dir: &Path) -> Result<VmEnv, String> {
    VmEnv::boot(spec, dir).await.map_err(|e| e.to_string())
}

/// Invocation `n` (see [`invoke_msg`]) on `env`, which must answer without
/// a function error; else the error is `failed()` and the outcome.
pub(super) async fn invoke_ok(
    env: &mut VmEnv,
    n: usize,
    failed: impl FnOnce() -> String,
) -> Result<InvokeResult, String> {
    let r = env
        .invoke(invoke_msg(n), Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    if !matches!(r.outcome, Outcome::Ok(_)) {
        return Err(format!("{}: {:?}", failed(), r.outcome));
    }
    Ok(r)
}

/// Warm invoke latencies through VMs (`vm`) against host-mode agents
/// (`host`), in ms: quantiles, ratios and every sample.
fn vm_vs_host(vm: Vec<f64>, host: Vec<f64>) -> Value {
    json!({
        "vm_over_vsock_ms": stats(vm.clone()),
        "host_mode_unix_socket_ms": stats(host.clone()),
        "ratio_p50": median(&vm) / median(&host),
        "ratio_p99": quantile(&vm, 0.99) / quantile(&host, 0.99),
        "warmup_invokes_per_environment": 1,
        "samples_ms": { "vm": vm, "host_mode": host },
    })
}

/// The agent configuration of the benchmark's function, in a VM or on the
/// host: the same for both sides.
fn bench_agent_config() -> AgentConfig {
    AgentConfig {
        timeout_s: 10,
        ..AgentConfig::default()
    }
}

/// A host-mode agent (the peer for invokes) serving the counter from `dir`.
fn host_agent(
    dir: &Path,
    files: &GuestFiles,
    slot: usize,
) -> Result<(std::process::Child, UnixStream), String> {
    let root = dir.join(format!("host-{slot}"));
    std::fs::create_dir_all(root.join("task")).map_err(|e| e.to_string())?;
    std::fs::copy(&files.function, root.join("task/bootstrap")).map_err(|e| e.to_string())?;
    let mut cfg = bench_agent_config();
    cfg.task_root = root.join("task").display().to_string();
    cfg.environment
        .insert("TMPDIR".into(), root.display().to_string());
    std::fs::write(
        root.join("agent.json"),
        serde_json::to_vec(&cfg).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let sock = root.join("agent.sock");
    let listener = UnixListener::bind(&sock).map_err(|e| e.to_string())?;
    let child = Command::new(&files.agent)
        .args([
            "--host-mode",
            "--api-addr",
            &format!("127.0.0.1:{}", 9200 + slot),
            "--config",
        ])
        .arg(root.join("agent.json"))
        .arg("--connect-unix")
        .arg(&sock)
        .spawn()
        .map_err(|e| format!("host-mode agent: {e}"))?;
    let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
    silo_proto::read_message(&mut conn).map_err(|e| e.to_string())?;
    Ok((child, conn))
}

/// One invoke on a host-mode agent; its round trip in ms.
fn host_invoke(conn: &mut UnixStream, n: usize) -> Result<f64, String> {
    let t = Instant::now();
    silo_proto::write_message(conn, &invoke_msg(n)).map_err(|e| e.to_string())?;
    loop {
        match silo_proto::read_message(conn).map_err(|e| e.to_string())? {
            Message::Result {
                outcome: Outcome::Ok(_),
                ..
            } => return Ok(t.elapsed().as_secs_f64() * 1e3),
            Message::Result { outcome, .. } => {
                return Err(format!("host-mode invoke failed: {outcome:?}"))
            }
            _ => {}
        }
    }
}

/// How many of `total` invokes slot `slot` of `c` makes (the remainder goes
/// to the first slots, so exactly `total` are made).
fn slot_share(total: usize, c: usize, slot: usize) -> usize {
    total / c + usize::from(slot < total % c)
}

/// `args.invokes` warm invokes (at least one per slot) with
/// `args.concurrency` in flight: against as many VMs, and against as many
/// host-mode agents. Each VM and agent first answers one untimed invocation,
/// so that its first invocation (a cold runtime's first
/// `/invocation/next`, part of the cold start) is not counted as warm.
pub(super) async fn concurrent_invokes(
    args: &BenchArgs,
    files: &GuestFiles,
) -> Result<Value, String> {
    let c = args.concurrency.max(1);
    let total = args.invokes.max(c);
    let dir = crate::scratch_path("silo-bench-conc");
    let spec = function_spec(&dir, files)?;
    let boots = (0..c).map(|_| boot_vm(&spec, &dir));
    let mut envs = Vec::new();
    for r in futures_join(boots).await {
        envs.push(r?);
    }
    // Request ids: slot * (total + 1) + n, with n = 0 the warm-up.
    let id = move |slot: usize, n: usize| slot * (total + 1) + n;
    for (slot, env) in envs.iter_mut().enumerate() {
        invoke_ok(env, id(slot, 0), || "VM warm-up invoke failed".into()).await?;
    }
    let runs = envs.iter_mut().enumerate().map(|(slot, env)| async move {
        let share = slot_share(total, c, slot);
        let mut lat = Vec::with_capacity(share);
        for n in 1..=share {
            let r = invoke_ok(env, id(slot, n), || "VM invoke failed".into()).await?;
            lat.push(r.duration.as_secs_f64() * 1e3);
        }
        Ok::<_, String>(lat)
    });
    let started = Instant::now();
    let mut vm = Vec::new();
    for r in futures_join(runs).await {
        vm.extend(r?);
    }
    let vm_wall = started.elapsed().as_secs_f64();
    for env in envs {
        env.shutdown().await;
    }
    let mut agents = Vec::new();
    for slot in 0..c {
        let (child, mut conn) = host_agent(&dir, files, slot)?;
        host_invoke(&mut conn, id(slot, 0))?;
        agents.push((child, conn));
    }
    // Every thread starts invoking at once, after all are spawned.
    let go = std::sync::Arc::new(std::sync::Barrier::new(c + 1));
    let threads: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(slot, (child, mut conn))| {
            let go = go.clone();
            std::thread::spawn(move || {
                let share = slot_share(total, c, slot);
                let mut lat = Vec::with_capacity(share);
                go.wait();
                for n in 1..=share {
                    match host_invoke(&mut conn, id(slot, n)) {
                        Ok(ms) => lat.push(ms),
                        Err(e) => return (Err(e), child),
                    }
                }
                let _ = silo_proto::write_message(&mut conn, &Message::Shutdown);
                (Ok(lat), child)
            })
        })
        .collect();
    go.wait();
    let started = Instant::now();
    let mut host = Vec::new();
    let mut failed = None;
    for t in threads {
        let (lat, mut child) = t
            .join()
            .map_err(|_| "host-mode thread panicked".to_string())?;
        match lat {
            Ok(lat) => host.extend(lat),
            Err(e) => {
                let _ = child.kill();
                failed.get_or_insert(e);
            }
        }
        let _ = child.wait();
    }
    let host_wall = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(e) = failed {
        return Err(e);
    }
    let (vm_per_s, host_per_s) = (vm.len() as f64 / vm_wall, host.len() as f64 / host_wall);
    let mut out = vm_vs_host(vm, host);
    out["concurrency"] = json!(c);
    out["invokes"] = json!(total);
    out["vm_invokes_per_second"] = json!(vm_per_s);
    out["host_mode_invokes_per_second"] = json!(host_per_s);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_shares_add_up() {
        for total in 1..40 {
            for c in 1..=total {
                let shares: Vec<usize> = (0..c).map(|s| slot_share(total, c, s)).collect();
                assert_eq!(shares.iter().sum::<usize>(), total);
                assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            }
        }
    }
}
