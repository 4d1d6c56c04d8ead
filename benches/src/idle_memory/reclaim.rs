//! `bench-idle-memory --reclaim-after-s N`: the `silo_reclaim` variant,
//! a jailed VM (as the daemon runs it with `jail.idle_reclaim_after_s`)
//! paged out of host RAM into the host's swap (its cgroup's
//! `memory.reclaim`, the daemon's [`silo_daemon::vm_reclaim::reclaim`])
//! once idle N s; what it holds counts the compressed swap pool (zram's
//! `mem_used_total`: this variant's VM is the only one allowed to swap).
//! Then the wake-up cost: warm invoke p50 of a reclaimed environment (paged
//! out again before each invoke) against a normal warm invoke and a cold
//! start (boot and first invoke), all in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_daemon::jail::{JailMode, JailSettings, Jailer};
use silo_daemon::vm_env::{VmEnv, VmSpec};
use silo_daemon::vm_memory::MemorySource;
use silo_proto::Outcome;

use super::{e, invoke_msg, Vm};

/// The spec of the `silo_reclaim` variant: `spec` jailed, swap allowed.
pub(super) fn reclaim_spec(spec: &VmSpec, after_s: u64) -> Result<VmSpec, String> {
    let settings = JailSettings {
        cpu_full_at_mib: 0,
        cgroup_parent: PathBuf::from("/sys/fs/cgroup/silo-bench"),
        idle_reclaim_after_s: after_s,
        ..JailSettings::default()
    };
    let jailer = Jailer::probe(&settings).map_err(|x| format!("jail for silo_reclaim: {x}"))?;
    Ok(VmSpec {
        jail: JailMode::Jailed(Arc::new(jailer)),
        ..spec.clone()
    })
}

/// Bytes zram's compressed pool holds (all zram devices), if any.
pub(super) fn zram_pool_bytes() -> Option<u64> {
    let mut total = None;
    for d in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = d.file_name();
        if !name.to_string_lossy().starts_with("zram") {
            continue;
        }
        let text = std::fs::read_to_string(d.path().join("mm_stat")).ok()?;
        let used: u64 = text.split_whitespace().nth(2)?.parse().ok()?;
        total = Some(total.unwrap_or(0) + used);
    }
    total
}

/// `pid` and every process below it (a jailed VM: its jailer and VMM).
pub(super) fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for d in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = d.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(d.path().join("stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, then the ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parents.push((p, pp));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// The cgroup of a jailed silo VM.
pub(super) fn cgroup(vm: &Vm) -> Option<PathBuf> {
    match vm {
        Vm::Silo(env) => match env.memory_source() {
            MemorySource::Cgroup(dir) => Some(dir),
            _ => None,
        },
        Vm::Firecracker { .. } => None,
    }
}

/// Pages `vm` out (its cgroup's `memory.reclaim`); returns the figures
/// for the sample: memory.current and memory.swap.current, KiB.
pub(super) fn page_out(vm: &Vm) -> Result<Value, String> {
    let cg = cgroup(vm).ok_or("silo_reclaim: the VM has no cgroup")?;
    let t = Instant::now();
    let (current, swapped) =
        silo_daemon::vm_reclaim::reclaim(&cg).map_err(|x| format!("reclaim: {x}"))?;
    Ok(json!({
        "memory_current_kib": current / 1024,
        "swap_current_kib": swapped / 1024,
        "reclaim_ms": t.elapsed().as_secs_f64() * 1000.0,
    }))
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn timed_invoke(env: &mut VmEnv, n: usize) -> Result<f64, String> {
    let t = Instant::now();
    let r = env
        .invoke(invoke_msg(n), Duration::from_secs(120))
        .await
        .map_err(e)?;
    if let Outcome::Err(x) = &r.outcome {
        return Err(format!("invoke failed: {x:?}"));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// The wake-up cost, `rounds` of each: warm invokes of `warm` (a normal
/// idle VM), invokes of `reclaimed` each right after paging it out, and
/// cold starts of `cold_spec` (boot and first invoke; `cold_rounds`).
pub(super) async fn wake_costs(
    warm: &mut Vm,
    reclaimed: &mut Vm,
    cold_spec: &VmSpec,
    dir: &std::path::Path,
    rounds: usize,
    cold_rounds: usize,
) -> Result<Value, String> {
    let (Vm::Silo(warm), Vm::Silo(_)) = (&mut *warm, &*reclaimed) else {
        return Err("wake costs need silo VMs".into());
    };
    let mut warm_ms = Vec::new();
    let mut reclaimed_ms = Vec::new();
    let mut reclaims = Vec::new();
    for i in 0..rounds {
        warm_ms.push(timed_invoke(warm, 1000 + i).await?);
        reclaims.push(page_out(reclaimed)?);
        // Idle a moment, as a paged-out VM is before its next invoke.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Vm::Silo(env) = reclaimed else {
            unreachable!()
        };
        reclaimed_ms.push(timed_invoke(env, 2000 + i).await?);
    }
    let mut cold_ms = Vec::new();
    for i in 0..cold_rounds {
        let t = Instant::now();
        let mut env = VmEnv::boot(cold_spec, dir).await.map_err(e)?;
        timed_invoke(&mut env, 3000 + i).await?;
        cold_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        env.shutdown().await;
    }
    let (w, r, c) = (
        p50(warm_ms.clone()),
        p50(reclaimed_ms.clone()),
        p50(cold_ms.clone()),
    );
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    Ok(json!({
        "warm_p50_ms": round2(w),
        "reclaimed_warm_p50_ms": round2(r),
        "cold_start_p50_ms": round2(c),
        "reclaimed_over_warm": round2(r / w),
        "reclaimed_over_cold": round2(r / c),
        "warm_ms": warm_ms,
        "reclaimed_ms": reclaimed_ms,
        "cold_ms": cold_ms,
        "reclaims": reclaims,
    }))
}
