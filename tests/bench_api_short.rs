//! `silo bench-api` in short mode: its JSON has cold and warm latencies for
//! the API and its peer, ordered, with ratios and creations per second, and
//! a small burst of new tenants with every invoke's outcome and its plot. No
//! timing assertions.

mod common;

use serde_json::Value;

#[test]
fn short_api_bench_writes_complete_json() {
    let out_file = std::env::temp_dir().join(format!("silo-bench-api-{}.json", std::process::id()));
    common::cli::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
            .args([
                "bench-api",
                "--cold",
                "2",
                "--warm",
                "5",
                "--parallel",
                "2",
                "--burst",
                "3x2@4",
                "--pool",
                "1",
                "--plot",
            ])
            .arg(out_file.with_extension("svg"))
            .arg("--out")
            .arg(&out_file),
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    let svg = std::fs::read_to_string(out_file.with_extension("svg")).unwrap();
    let _ = std::fs::remove_file(&out_file);
    let _ = std::fs::remove_file(out_file.with_extension("svg"));
    for kind in ["cold_invoke_ms", "warm_invoke_ms"] {
        for side in ["api", "direct_peer"] {
            let v = &r[kind][side];
            let q: Vec<f64> = ["min", "p50", "p95", "p99", "max"]
                .iter()
                .map(|k| {
                    v[k].as_f64()
                        .unwrap_or_else(|| panic!("{kind}.{side}.{k} missing: {r}"))
                })
                .collect();
            assert!(
                q[0] > 0.0 && q.windows(2).all(|w| w[0] <= w[1]),
                "{kind}.{side}: {v}"
            );
        }
        assert!(
            r[kind]["ratio_api_to_peer"]["p50"].as_f64().is_some(),
            "{r}"
        );
    }
    assert_eq!(r["cold_invoke_ms"]["api"]["n"], 2);
    assert_eq!(r["warm_invoke_ms"]["api"]["n"], 5);
    assert_eq!(r["creations"]["environments"], 4, "{r}");
    assert!(r["creations"]["per_second"].as_f64().unwrap() > 0.0);

    let b = &r["bursts"][0];
    assert_eq!(b["shape"], "3x2@4", "{r}");
    assert_eq!(b["invokes"], 6);
    assert_eq!(b["records"].as_array().unwrap().len(), 6);
    let (a, rf, f) = (
        b["answered"].as_u64().unwrap(),
        b["refused"].as_u64().unwrap(),
        b["failed"].as_u64().unwrap(),
    );
    assert_eq!((a + rf + f, f), (6, 0), "{b}");
    assert!(b["violations"].as_array().unwrap().is_empty(), "{b}");
    assert!(b["environments_created"].as_u64().unwrap() >= 1, "{b}");
    assert!(b["first_invoke_ms"]["p50"].as_f64().is_some(), "{b}");
    assert!(
        b["first_invoke_p99_over_lone_cold_p50"].as_f64().is_some(),
        "{b}"
    );
    assert!(r["admission"]["max_booting"].as_u64().unwrap() >= 1, "{r}");
    let p = &r["new_tenant_with_pool"];
    assert_eq!(p["pool_size"], 1, "{r}");
    assert_eq!(p["first_invoke_ms"]["n"], 2, "{r}");
    assert!(p["ratio_p50_to_warm_p50"].as_f64().is_some(), "{r}");
    assert!(
        svg.starts_with("<svg") && svg.contains("burst 3x2@4"),
        "{svg}"
    );
    assert_eq!(svg.matches("<circle").count(), 6, "one dot per invoke");
}
