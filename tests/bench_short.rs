//! `silo bench` in short mode: the JSON it writes has every phase, the peer
//! column filled, and ordered values; the plot has its bars and curves. No
//! timing assertions: only presence, order and sign.

mod common;

use serde_json::Value;

#[test]
fn short_bench_writes_complete_json_and_a_plot() {
    let dir = std::env::temp_dir().join(format!("silo-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("r.json"), dir.join("r.svg"));
    common::cli::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
            .args([
                "bench",
                "--boots",
                "2",
                "--invokes",
                "10",
                "--parallel",
                "2",
                "--concurrency",
                // 10 invokes over 3 slots: the shares are uneven (4, 3, 3).
                "3",
                "--boots-at-once",
                "1,2",
                "--boots-at-once-rounds",
                "1",
                "--out",
            ])
            .arg(&json)
            .arg("--plot")
            .arg(&svg),
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let check = |v: &Value, what: &str| {
        let n = v["n"].as_u64().unwrap_or(0);
        assert!(n > 0, "{what} missing: {v}");
        let q: Vec<f64> = ["min", "p50", "p95", "p99", "max"]
            .iter()
            .map(|k| v[k].as_f64().unwrap())
            .collect();
        assert!(
            q.windows(2).all(|w| w[0] <= w[1]),
            "{what} not ordered: {v}"
        );
        assert!(q[0] > 0.0, "{what} not positive: {v}");
    };
    let p50 = |v: &Value| v["p50"].as_f64().unwrap();
    assert!(!r["host"].as_str().unwrap().is_empty(), "{r}");
    // The default peer is QEMU, and its pair boots silo's bzImage (equal
    // work); so do the function VMs without Firecracker.
    let peers = r["peers"].as_object().expect("peers");
    assert_eq!(peers.keys().collect::<Vec<_>>(), ["qemu"], "{r}");
    let q = &r["peers"]["qemu"];
    assert_eq!(q["kernel"]["format"], "bzImage", "{r}");
    assert_eq!(r["function_vm_kernel"]["format"], "bzImage", "{r}");
    assert!(!q["binary"].as_str().unwrap().is_empty(), "{r}");
    assert!(
        q["version"].as_str().is_some_and(|v| !v.is_empty()),
        "peer --version: {}",
        q["version"]
    );
    // Boots at once: every VM of both VMMs reached the guest marker.
    let rows = q["boots_at_once"].as_array().expect("boots_at_once");
    assert_eq!(rows.len(), 2, "{r}");
    for (row, n) in rows.iter().zip([1u64, 2]) {
        assert_eq!(row["n"], n);
        for side in ["silo", "peer"] {
            assert_eq!(row[side]["finished"], n, "{side} at {n}: {row}");
            assert_eq!(row[side]["started"], n, "{side} at {n}: {row}");
            assert!(
                row[side]["boots_per_second"].as_f64().unwrap() > 0.0,
                "{row}"
            );
            check(&row[side]["guest_uptime_at_init_ms"], "uptime at init");
        }
        assert!(
            row["ratio_wall_silo_to_peer"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }
    let cold = &q["cold_boot"];
    let silo = &cold["silo"];
    // The VMM's own phases, in order (ms since its process started).
    let vmm_phases = [
        "vmm_process_start_to_kernel_loaded_ms",
        "vmm_process_start_to_first_kvm_run_ms",
        "vmm_process_start_to_first_serial_byte_ms",
        "vmm_process_start_to_vm_exit_ms",
    ];
    let both = [
        "process_to_exit_ms",
        "process_to_guest_init_ms",
        "guest_uptime_at_init_ms",
    ];
    for k in both.iter().chain(&vmm_phases) {
        check(&silo[k], k);
    }
    for w in vmm_phases.windows(2) {
        assert!(
            p50(&silo[w[0]]) <= p50(&silo[w[1]]),
            "{} after {}: {silo}",
            w[0],
            w[1]
        );
    }
    for side in [silo, &cold["peer"]] {
        for k in both {
            check(&side[k], k);
        }
    }
    for k in [
        "process_to_exit",
        "process_to_guest_init",
        "guest_uptime_at_init",
    ] {
        assert!(
            cold["ratio_silo_to_peer"][k].as_f64().unwrap() > 0.0,
            "{k}: {cold}"
        );
    }
    let w = &r["warm_invoke"];
    check(&w["vm_over_vsock_ms"], "vm_over_vsock_ms");
    check(&w["host_mode_unix_socket_ms"], "host_mode_unix_socket_ms");
    assert!(w["ratio_p50"].as_f64().unwrap() > 0.0, "{w}");
    assert!(w["ratio_p99"].as_f64().unwrap() > 0.0, "{w}");
    assert_eq!(w["samples_ms"]["vm"].as_array().unwrap().len(), 10);
    assert_eq!(w["samples_ms"]["host_mode"].as_array().unwrap().len(), 10);
    let start = w["guest_uptime_at_agent_start_ms"].as_f64().unwrap();
    let ready = w["guest_uptime_at_agent_ready_ms"].as_f64().unwrap();
    assert!(0.0 < start && start <= ready, "agent phases ordered: {w}");
    assert!(w["vmm_memory_overhead_kib"].as_u64().unwrap() > 0);
    let c = &r["creations"];
    assert_eq!(c["parallel"], 2);
    assert!(c["creations_per_second"].as_f64().unwrap() > 0.0, "{c}");
    check(&c["spawn_to_ready_ms"], "creation spawn_to_ready_ms");
    // The function VM's timeline: every phase, in order (p50 of each).
    let phases = &r["function_vm_timeline"]["phases"];
    let order = silo_benches::boot::PHASES;
    let mut last = 0.0;
    for k in order {
        let v = &phases[k];
        assert_eq!(v["n"], 2, "{k}: {v}");
        check(v, k);
        let p50 = v["p50"]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {phases}"));
        assert!(
            p50 >= last,
            "{k} ({p50}) before the previous phase ({last}): {phases}"
        );
        last = p50;
    }
    // And VM by VM: every phase present and in order; the first invocation
    // answered after the agent was ready.
    let samples = r["function_vm_timeline"]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{samples:?}");
    for t in samples {
        let at: Vec<f64> = order
            .iter()
            .map(|k| t[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {t}")))
            .collect();
        assert!(at[0] > 0.0, "VMM process start after spawn: {t}");
        assert!(at.windows(2).all(|w| w[0] <= w[1]), "phases in order: {t}");
        assert!(
            t["first_invocation_answered_ms"].as_f64() > t["agent_ready_ms"].as_f64(),
            "first invocation after agent ready: {t}"
        );
    }
    // Concurrent warm invokes, silo and peer.
    let wc = &r["warm_invoke_concurrent"];
    assert_eq!(wc["concurrency"], 3, "{wc}");
    assert_eq!(wc["invokes"], 10, "{wc}");
    check(&wc["vm_over_vsock_ms"], "concurrent vm_over_vsock_ms");
    check(
        &wc["host_mode_unix_socket_ms"],
        "concurrent host_mode_unix_socket_ms",
    );
    assert!(wc["ratio_p50"].as_f64().unwrap() > 0.0);
    assert!(wc["ratio_p99"].as_f64().unwrap() > 0.0);
    assert!(wc["vm_invokes_per_second"].as_f64().unwrap() > 0.0);
    assert!(wc["host_mode_invokes_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(wc["samples_ms"]["vm"].as_array().unwrap().len(), 10);
    assert_eq!(wc["samples_ms"]["host_mode"].as_array().unwrap().len(), 10);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("rect"), "{plot}");
    assert!(plot.trim_end().ends_with("</svg>"), "{plot}");
    // A network's cost on the cold path (agent ready with and without a
    // network, alternating) is measured where nft and ip exist (the test
    // host has them whenever this host does); its pair of bars comes then.
    let nc = &r["network_cost"];
    let pairs = if nc["with_network"].is_object() {
        for side in ["with_network", "without_network"] {
            assert!(
                nc[side]["agent_ready_ms"]["p50"].as_f64().unwrap() > 0.0,
                "network_cost {side}: {nc}"
            );
        }
        7
    } else {
        assert!(
            nc["skipped"].is_string(),
            "network_cost measured or skipped: {nc}"
        );
        6
    };
    assert_eq!(
        plot.matches("class=\"p50\"").count(),
        2 * pairs,
        "pairs of p50 bars: four against QEMU, two warm, and the network's cost when measured"
    );
    assert_eq!(plot.matches("class=\"cdf\"").count(), 4, "four CDF curves");
    // Stacked bars: one segment per phase, for the p50 and for each VM.
    assert_eq!(
        plot.matches("class=\"phase\"").count(),
        7,
        "seven phase segments"
    );
    assert_eq!(
        plot.matches("class=\"phase-vm\"").count(),
        14,
        "seven phase segments for each of the two VMs"
    );
    assert!(
        plot.matches("class=\"axis\"").count() >= 3,
        "axes of the bars and the CDF"
    );
    assert!(plot.contains("fraction of invokes"), "CDF y axis label");
    assert!(!plot.contains("NaN"), "{plot}");
    let _ = std::fs::remove_dir_all(&dir);
}
