//! `silo bench` in short mode: the JSON it writes has every phase, the peer
//! column filled, and ordered values. No timing assertions.

use serde_json::Value;

#[test]
fn short_bench_writes_complete_json_and_a_plot() {
    let dir = std::env::temp_dir().join(format!("silo-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("r.json"), dir.join("r.svg"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .args([
            "bench",
            "--boots",
            "2",
            "--invokes",
            "10",
            "--parallel",
            "2",
            "--concurrency",
            "2",
            "--out",
        ])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
    let silo = &r["cold_boot"]["silo"];
    for k in [
        "process_to_exit_ms",
        "guest_uptime_at_init_ms",
        "vmm_process_start_to_kernel_loaded_ms",
        "vmm_process_start_to_first_kvm_run_ms",
    ] {
        check(&silo[k], k);
    }
    check(
        &r["cold_boot"]["peer"]["process_to_exit_ms"],
        "peer process_to_exit_ms",
    );
    check(
        &r["cold_boot"]["peer"]["guest_uptime_at_init_ms"],
        "peer guest_uptime_at_init_ms",
    );
    assert!(silo["ratio_to_peer"]["process_to_exit"].as_f64().unwrap() > 0.0);
    let w = &r["warm_invoke"];
    check(&w["vm_over_vsock_ms"], "vm_over_vsock_ms");
    check(&w["host_mode_unix_socket_ms"], "host_mode_unix_socket_ms");
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
    let order = [
        "vmm_process_start_ms",
        "kernel_loaded_ms",
        "vm_created_ms",
        "first_kvm_run_ms",
        "guest_init_ms",
        "agent_ready_ms",
        "first_invocation_answered_ms",
    ];
    let mut last = 0.0;
    for k in order {
        let v = &phases[k];
        assert_eq!(v["n"], 2, "{k}: {v}");
        let p50 = v["p50"]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {phases}"));
        assert!(
            p50 >= last,
            "{k} ({p50}) before the previous phase ({last}): {phases}"
        );
        last = p50;
    }
    // Concurrent warm invokes, silo and peer.
    let wc = &r["warm_invoke_concurrent"];
    assert_eq!(wc["concurrency"], 2, "{wc}");
    check(&wc["vm_over_vsock_ms"], "concurrent vm_over_vsock_ms");
    check(
        &wc["host_mode_unix_socket_ms"],
        "concurrent host_mode_unix_socket_ms",
    );
    assert!(wc["ratio_p50"].as_f64().unwrap() > 0.0);
    assert_eq!(wc["samples_ms"]["vm"].as_array().unwrap().len(), 10);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("rect"), "{plot}");
    assert_eq!(plot.matches("class=\"cdf\"").count(), 4, "four CDF curves");
    assert_eq!(
        plot.matches("class=\"phase\"").count(),
        7,
        "seven phase segments"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
