//! The summaries of `bench-idle-memory`'s samples: Pss per variant with
//! ratios, and the timed boots' medians.

use serde_json::{json, Value};

/// Per VM and variant: the median time to the agent's hello of the extra
/// boots, and its ratio to `silo`'s.
pub(super) fn boot_summary(samples: &[Value]) -> Value {
    let mut by: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    for s in samples {
        let key = (
            s["vm"].as_str().unwrap_or("").to_string(),
            s["variant"].as_str().unwrap_or("").to_string(),
        );
        if let Some(ms) = s["agent_ready_ms"].as_f64() {
            by.entry(key).or_default().push(ms);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut out = serde_json::Map::new();
    let mut medians = std::collections::BTreeMap::new();
    for ((vm, variant), mut v) in by {
        medians.insert((vm, variant), median(&mut v));
    }
    for ((vm, variant), m) in &medians {
        let base = medians.get(&(vm.clone(), "silo".to_string())).copied();
        out.insert(
            format!("{vm} {variant}"),
            json!({
                "agent_ready_p50_ms": m,
                "over_silo": base.map(|b| (m / b * 100.0).round() / 100.0),
            }),
        );
    }
    Value::Object(out)
}

/// Per VM and measuring point: each variant's Pss and Rss, and the ratios
/// of silo to silo_today and to Firecracker.
pub(super) fn summary(samples: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for s in samples {
        let key = format!(
            "{} {}",
            s["vm"].as_str().unwrap_or(""),
            s["at"].as_str().unwrap_or("")
        );
        let entry = out.entry(key).or_insert_with(|| json!({}));
        let v = s["variant"].as_str().unwrap_or("").to_string();
        entry[format!("{v}_pss_kib")] = s["pss_kib"].clone();
        entry[format!("{v}_rss_kib")] = s["rss_kib"].clone();
        entry[format!("{v}_held_kib")] = s["held_kib"].clone();
    }
    for entry in out.values_mut() {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
            _ => Value::Null,
        };
        let pss: Vec<(String, f64)> = entry
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| {
                        Some((k.strip_suffix("_pss_kib")?.to_string(), v.as_f64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let get = |k: &str| pss.iter().find(|(v, _)| v == k).map(|(_, p)| *p);
        let mut ratios = vec![
            (
                "pss_silo_over_today".to_string(),
                ratio(get("silo"), get("silo_today")),
            ),
            (
                "pss_silo_over_firecracker".to_string(),
                ratio(get("silo"), get("firecracker")),
            ),
        ];
        for (v, p) in pss
            .iter()
            .filter(|(v, _)| v.starts_with("silo_small_") || v.starts_with("silo_huge_"))
        {
            for base in ["silo", "silo_today", "firecracker"] {
                ratios.push((format!("pss_{v}_over_{base}"), ratio(Some(*p), get(base))));
            }
        }
        let held = |k: &str| entry[format!("{k}_held_kib")].as_f64();
        for base in ["silo", "firecracker"] {
            ratios.push((
                format!("held_silo_reclaim_over_{base}"),
                ratio(held("silo_reclaim"), held(base)),
            ));
        }
        for (k, r) in ratios {
            entry[k] = r;
        }
    }
    Value::Object(out)
}
