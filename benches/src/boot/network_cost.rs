//! What a network costs a cold start: function VMs booted jailed with a
//! network (`[network]`: a prepared slot, its tap and the function's rules,
//! the guest's `ip=`) and jailed without one, alternating, each to its
//! first answer.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_daemon::jail::{JailMode, JailSettings};
use silo_daemon::net::{Network, NetworkConfig};
use silo_daemon::vm_env::{VmEnv, VmLabel};

use super::invokes::{function_spec, invoke_msg};
use super::results::{median_ratio, stats};
use crate::guest_files::GuestFiles;

/// The slots' name prefix (`ip netns`, veths, the nft table): apart from a
/// daemon's default `silo`.
const PREFIX: &str = "sbnet";
/// Slots prepared ahead, as a daemon keeps them.
const READY_SLOTS: u32 = 2;

/// One side's samples (with or without a network).
#[derive(Default)]
struct Side {
    /// `VmEnv::boot_networked` called to the agent's hello: what a request
    /// waits for (the network's lease included).
    boot_call: Vec<f64>,
    /// The VMM spawned to the agent's hello.
    agent_ready: Vec<f64>,
    /// The VMM spawned to the first answer.
    first_answer: Vec<f64>,
    /// The guest kernel's uptime when the agent started (its `/init`).
    guest_uptime_at_agent_start: Vec<f64>,
    /// The guest kernel's uptime when the agent said hello.
    guest_uptime_at_ready: Vec<f64>,
    /// The VMM spawned to its first KVM_RUN (jail, VM and devices set up).
    first_kvm_run: Vec<f64>,
    /// The guest kernel's boot on the host clock: first KVM_RUN to the
    /// agent's start (placed by the guest-measured interval to hello).
    kernel_boot: Vec<f64>,
    /// The agent's start to its hello, on the guest clock.
    agent_to_ready: Vec<f64>,
}

impl Side {
    fn json(&self) -> Value {
        json!({
            "boot_call_ms": stats(self.boot_call.clone()),
            "agent_ready_ms": stats(self.agent_ready.clone()),
            "first_answer_ms": stats(self.first_answer.clone()),
            "guest_uptime_at_agent_start_ms": stats(self.guest_uptime_at_agent_start.clone()),
            "guest_uptime_at_agent_ready_ms": stats(self.guest_uptime_at_ready.clone()),
            "first_kvm_run_ms": stats(self.first_kvm_run.clone()),
            "kernel_boot_host_clock_ms": stats(self.kernel_boot.clone()),
            "agent_start_to_ready_ms": stats(self.agent_to_ready.clone()),
        })
    }
}

/// Waits (up to 60 s) until `net` has `n` slots prepared: each networked
/// boot takes one prepared ahead, as in a daemon at rest.
async fn slots_ready(net: &Network, n: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    while net.ready_slots() < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` function VMs with a network and `n` without, alternating (which goes
/// first alternates too), all jailed (a network needs the jail), egress
/// `internet`, no resolvers. Skipped, saying why, where the host cannot jail
/// or has no nftables, veth or tun. `recycle`: `[network] recycle_slots`.
pub(crate) async fn network_cost(
    n: usize,
    files: &GuestFiles,
    recycle: bool,
) -> Result<Value, String> {
    // No CPU share: it starts only once the VM is ready and, on the test
    // host's emulated CPU, would dominate the first answer.
    let settings = JailSettings {
        cpu_full_at_mib: 0,
        ..JailSettings::default()
    };
    let jailed = JailMode::new(&settings, false);
    if let JailMode::Unavailable(why) = &jailed {
        return Ok(json!({ "skipped": format!("this host cannot jail: {why}") }));
    }
    let cfg = NetworkConfig {
        enabled: true,
        name_prefix: PREFIX.into(),
        dns: Some(Vec::new()),
        slots: 8,
        ready_slots: READY_SLOTS,
        recycle_slots: recycle,
        ..NetworkConfig::default()
    };
    let network = match tokio::task::spawn_blocking(move || Network::start(cfg))
        .await
        .map_err(|e| e.to_string())?
    {
        Ok(n) => n,
        Err(e) => return Ok(json!({ "skipped": e.to_string() })),
    };
    let dir = crate::scratch_path("silo-bench-net");
    let mut spec = function_spec(&dir, files)?;
    spec.jail = jailed;
    let label = VmLabel {
        function: "bench-net".into(),
        tenant_id: Some("bench".into()),
    };
    let mut sides = [Side::default(), Side::default()];
    // Every boot in order, to tell a bimodal side's modes apart (what ran
    // before it, what its shutdown cost).
    let mut samples: Vec<Value> = Vec::new();
    let result = async {
        for i in 0..n.max(1) {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let net = (side == 0).then_some(&network);
                if net.is_some() {
                    slots_ready(&network, READY_SLOTS as usize).await;
                }
                let t = Instant::now();
                let mut env = VmEnv::boot_networked(&spec, &dir, &label, net)
                    .await
                    .map_err(|e| format!("VM {i} (network: {}): {e}", net.is_some()))?;
                let boot_call = t.elapsed().as_secs_f64() * 1e3;
                env.invoke(invoke_msg(i), Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
                let s = &mut sides[side];
                let tl = env.boot.timeline;
                s.boot_call.push(boot_call);
                s.agent_ready.push(tl.agent_ready_ms);
                s.first_answer
                    .push(tl.first_invocation_answered_ms.unwrap_or(f64::NAN));
                s.first_kvm_run.push(tl.first_kvm_run_ms.unwrap_or(f64::NAN));
                let g = env.boot.guest;
                s.guest_uptime_at_agent_start
                    .push(g.kernel_uptime_at_agent_start_ns as f64 / 1e6);
                s.guest_uptime_at_ready
                    .push(g.kernel_uptime_at_ready_ns as f64 / 1e6);
                let kvm = tl.first_kvm_run_ms.unwrap_or(f64::NAN);
                let kernel_boot = tl.guest_init_ms.unwrap_or(f64::NAN) - kvm;
                let agent_to_ready = g
                    .kernel_uptime_at_ready_ns
                    .saturating_sub(g.kernel_uptime_at_agent_start_ns)
                    as f64
                    / 1e6;
                s.kernel_boot.push(kernel_boot);
                s.agent_to_ready.push(agent_to_ready);
                eprintln!(
                    "[bench] VM {} {} network: boot call {boot_call:.0} ms, agent ready {:.0} ms, guest uptime at agent start {:.0} ms",
                    i + 1,
                    if side == 0 { "with" } else { "without" },
                    tl.agent_ready_ms,
                    g.kernel_uptime_at_agent_start_ns as f64 / 1e6
                );
                let t = Instant::now();
                env.shutdown().await;
                samples.push(json!({
                    "network": side == 0,
                    "boot_call_ms": boot_call,
                    "first_kvm_run_ms": kvm,
                    "kernel_boot_host_clock_ms": kernel_boot,
                    "agent_start_to_ready_guest_ms": agent_to_ready,
                    "agent_ready_ms": tl.agent_ready_ms,
                    "shutdown_ms": t.elapsed().as_secs_f64() * 1e3,
                }));
            }
        }
        Ok::<(), String>(())
    }
    .await;
    let net = network.clone();
    let _ = tokio::task::spawn_blocking(move || net.close()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    let [with, without] = &sides;
    let ratio =
        |f: fn(&Side) -> &Vec<f64>| (median_ratio(f(with), f(without)) * 1000.0).round() / 1000.0;
    Ok(json!({
        "what": "function VMs, jailed, with a network (prepared slot, egress internet) and without, alternating; host times in ms from the VMM's spawn, boot_call_ms from VmEnv::boot_networked's call (the slot's lease included)",
        "recycle_slots": recycle,
        "with_network": with.json(),
        "without_network": without.json(),
        "samples_in_order": samples,
        "ratio_with_to_without_p50": {
            "agent_ready": ratio(|s| &s.agent_ready),
            "boot_call": ratio(|s| &s.boot_call),
            "first_answer": ratio(|s| &s.first_answer),
            "guest_uptime_at_agent_start": ratio(|s| &s.guest_uptime_at_agent_start),
        },
    }))
}
