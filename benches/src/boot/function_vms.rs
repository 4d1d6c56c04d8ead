//! Function VMs' cold starts: every phase to the first invocation, the
//! same function VM under Firecracker, and what the jail costs.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_proto::{Message, Outcome};

use super::args::Peer;
use super::cold::firecracker_config;
use super::invokes::{boot_vm, function_spec, invoke_msg, invoke_ok};
use super::results::{median, stats, PHASES};
use crate::guest_files::GuestFiles;

/// `n` function VMs booted one after another, each to its first invocation:
/// every phase in one clock domain (ms since the VMM was spawned).
pub(super) async fn function_timelines(n: usize, files: &GuestFiles) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench-timeline");
    let spec = function_spec(&dir, files)?;
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let mut samples = Vec::new();
    for i in 0..n.max(1) {
        let mut env = boot_vm(&spec, &dir).await?;
        invoke_ok(&mut env, i, || format!("first invocation of VM {i} failed")).await?;
        let t = serde_json::to_value(env.boot.timeline).map_err(|e| e.to_string())?;
        env.shutdown().await;
        for (k, v) in PHASES.iter().zip(phases.iter_mut()) {
            let x = t[k]
                .as_f64()
                .ok_or_else(|| format!("VM {i}: phase {k} missing: {t}"))?;
            v.push(x);
        }
        eprintln!("[bench] function VM {}: {t}", i + 1);
        samples.push(t);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = serde_json::Map::new();
    for (k, v) in PHASES.iter().zip(phases) {
        out.insert(k.to_string(), stats(v));
    }
    Ok(json!({
        "clock": "host CLOCK_MONOTONIC, ms since the VMM process was spawned",
        "phases": out,
        "order": PHASES,
        "samples": samples,
    }))
}

/// One function VM under Firecracker: the same function initramfs (the
/// agent as `/init`), memory, vCPU and command line (silo-vmm's default,
/// `reboot=k`, which `firecracker_config` gives) as silo's function VMs,
/// with Firecracker's vsock device, which forwards the agent's connection
/// to `<uds>_1024` as silo's does. Returns (spawn to the agent's Hello,
/// spawn to the first answer, the Hello's guest timing).
async fn firecracker_function_vm(
    firecracker: &str,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    n: usize,
) -> Result<(f64, f64, silo_proto::BootTiming), String> {
    use silo_proto::asynchronous::{read_message, write_message};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let uds = dir.join("vsock");
    let listener =
        tokio::net::UnixListener::bind(format!("{}_{}", uds.display(), silo_proto::AGENT_PORT))
            .map_err(|e| format!("agent socket: {e}"))?;
    let config = dir.join("fc.json");
    let mut text = firecracker_config(kernel, initrd);
    text["vsock"] = json!({ "guest_cid": 3, "uds_path": uds });
    std::fs::write(&config, text.to_string()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(firecracker)
        .args(["--no-api", "--config-file"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{firecracker}: {e}"))?;
    let limit = Duration::from_secs(300);
    let (mut conn, _) = tokio::time::timeout(limit, listener.accept())
        .await
        .map_err(|_| "Firecracker VM: the agent never connected".to_string())?
        .map_err(|e| e.to_string())?;
    let boot = match read_message(&mut conn).await.map_err(|e| e.to_string())? {
        Message::Hello { boot, .. } => boot,
        other => return Err(format!("Firecracker VM: expected Hello, got {other:?}")),
    };
    let ready = started.elapsed().as_secs_f64() * 1e3;
    write_message(&mut conn, &invoke_msg(n))
        .await
        .map_err(|e| e.to_string())?;
    let answered = loop {
        match tokio::time::timeout(limit, read_message(&mut conn))
            .await
            .map_err(|_| "Firecracker VM: no answer".to_string())?
            .map_err(|e| e.to_string())?
        {
            Message::Result {
                outcome: Outcome::Ok(_),
                ..
            } => break started.elapsed().as_secs_f64() * 1e3,
            Message::Result { outcome, .. } => {
                return Err(format!(
                    "Firecracker VM: first invocation failed: {outcome:?}"
                ))
            }
            _ => continue,
        }
    };
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok((ready, answered, boot))
}

/// Function VMs to the agent's Hello and to the first answer under silo
/// and under Firecracker, `n` each, alternating: the same kernel, function
/// initramfs (guest agent and the counter), memory, vCPU and command line,
/// neither jailed. The guest side of each (kernel uptime when the agent
/// started and when it said Hello) comes from the agent's Hello.
pub(super) async fn agent_ready_vs_firecracker(
    boots: usize,
    files: &GuestFiles,
    firecracker: &Peer,
) -> Result<Value, String> {
    let dir = crate::scratch_path("silo-bench-agent");
    let spec = function_spec(&dir, files)?;
    let fc_dir = dir.join("firecracker");
    let mut s = [vec![], vec![], vec![], vec![]];
    let mut p = [vec![], vec![], vec![], vec![]];
    for i in 0..boots.max(1) {
        let mut env = boot_vm(&spec, &dir).await?;
        let t = Instant::now();
        invoke_ok(&mut env, i, || {
            format!("silo VM {i}: first invocation failed")
        })
        .await?;
        let ready = env.boot.spawn_to_ready.as_secs_f64() * 1e3;
        s[0].push(ready);
        s[1].push(ready + t.elapsed().as_secs_f64() * 1e3);
        s[2].push(env.boot.guest.kernel_uptime_at_agent_start_ns as f64 / 1e6);
        s[3].push(env.boot.guest.kernel_uptime_at_ready_ns as f64 / 1e6);
        env.shutdown().await;
        let (ready, answered, boot) =
            firecracker_function_vm(&firecracker.binary, &files.kernel, &spec.initrd, &fc_dir, i)
                .await?;
        p[0].push(ready);
        p[1].push(answered);
        p[2].push(boot.kernel_uptime_at_agent_start_ns as f64 / 1e6);
        p[3].push(boot.kernel_uptime_at_ready_ns as f64 / 1e6);
        eprintln!(
            "[bench] function VM {}: agent ready silo {:.0} ms, Firecracker {:.0} ms",
            i + 1,
            s[0][i],
            p[0][i]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let side = |v: &[Vec<f64>; 4]| {
        json!({
            "spawn_to_agent_ready_ms": stats(v[0].clone()),
            "spawn_to_first_answer_ms": stats(v[1].clone()),
            "guest_uptime_at_agent_start_ms": stats(v[2].clone()),
            "guest_uptime_at_agent_ready_ms": stats(v[3].clone()),
        })
    };
    let ratio = |k: usize| (median(&s[k]) / median(&p[k]) * 100.0).round() / 100.0;
    Ok(json!({
        "what": "function VMs (guest agent + counter initramfs), neither jailed, alternating; host times from the VMM's spawn",
        "silo": side(&s),
        "firecracker": side(&p),
        "ratio_silo_to_firecracker": {
            "spawn_to_agent_ready": ratio(0),
            "spawn_to_first_answer": ratio(1),
            "guest_uptime_at_agent_start": ratio(2),
            "guest_uptime_at_agent_ready": ratio(3),
        },
    }))
}

/// What the jail costs a cold start: `n` function VMs booted jailed and `n`
/// unjailed, alternating, each to its first answered invocation.
pub(super) async fn jail_cost(n: usize, files: &GuestFiles) -> Result<Value, String> {
    use silo_daemon::jail::{JailMode, JailSettings};
    // No CPU share: it starts only once the VM is ready and, on the test
    // host's emulated CPU, would dominate the first answer.
    let settings = JailSettings {
        cpu_full_at_mib: 0,
        ..JailSettings::default()
    };
    let jailed_mode = JailMode::new(&settings, false);
    if let JailMode::Unavailable(why) = &jailed_mode {
        return Ok(json!({ "skipped": format!("this host cannot jail: {why}") }));
    }
    let dir = crate::scratch_path("silo-bench-jail");
    let mut spec = function_spec(&dir, files)?;
    let (mut ready, mut first) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for i in 0..n.max(1) {
        // Alternate which goes first so drift favours neither.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            spec.jail = if side == 0 {
                jailed_mode.clone()
            } else {
                JailMode::Insecure
            };
            let mut env = boot_vm(&spec, &dir).await?;
            env.invoke(invoke_msg(i), Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            let t = &env.boot.timeline;
            ready[side].push(t.agent_ready_ms);
            first[side].push(t.first_invocation_answered_ms.unwrap_or(f64::NAN));
            env.shutdown().await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = |v: &[Vec<f64>; 2]| median(&v[0]) / median(&v[1]);
    Ok(json!({
        "clock": "ms since the VMM process was spawned",
        "jailed": { "agent_ready_ms": stats(ready[0].clone()), "first_answer_ms": stats(first[0].clone()) },
        "unjailed": { "agent_ready_ms": stats(ready[1].clone()), "first_answer_ms": stats(first[1].clone()) },
        "ratio_agent_ready_p50": ratio(&ready),
        "ratio_first_answer_p50": ratio(&first),
    }))
}
