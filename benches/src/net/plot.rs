//! The SVG plot of `silo-bench bench-net`: p50 bars, silo against
//! Firecracker and the host for egress throughput and round trips, and a
//! cold start with a network against one without.

use serde_json::Value;

/// Escapes text for SVG (XML) content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 3] = ["#3b6fb6", "#999999", "#59a14f"];

/// One group of bars: a title and (label, value) pairs.
struct Group {
    title: String,
    bars: Vec<(String, f64)>,
}

/// The plot.
pub(super) fn svg(r: &Value) -> String {
    let tp = &r["throughput"]["clients"];
    let p50 = |v: &Value| v["p50"].as_f64();
    let mut groups = Vec::new();
    for (title, key) in [
        (
            "guest egress, one TCP connection (Mbit/s, p50; higher is better)",
            "egress_mbit_per_s",
        ),
        (
            "64-byte request/answer round trip (us, p50; lower is better)",
            "round_trip_us",
        ),
    ] {
        let bars: Vec<(String, f64)> = [
            ("silo", "silo-vmm"),
            ("firecracker", "Firecracker"),
            ("host", "the host itself (loopback)"),
        ]
        .iter()
        .filter_map(|(k, name)| p50(&tp[k][key]).map(|v| (name.to_string(), v)))
        .collect();
        if !bars.is_empty() {
            groups.push(Group {
                title: title.into(),
                bars,
            });
        }
    }
    let nc = &r["network_cost"];
    for (title, key) in [
        (
            "function VM, VMM spawn to agent ready (ms, p50)",
            "agent_ready_ms",
        ),
        (
            "function VM, boot call incl. the network's lease, to agent ready (ms, p50)",
            "boot_call_ms",
        ),
    ] {
        let bars: Vec<(String, f64)> = [
            ("with_network", "with a network"),
            ("without_network", "without"),
        ]
        .iter()
        .filter_map(|(k, name)| p50(&nc[k][key]).map(|v| (name.to_string(), v)))
        .collect();
        if bars.len() == 2 {
            groups.push(Group {
                title: title.into(),
                bars,
            });
        }
    }
    let width = 840.0;
    let mut b = String::new();
    b.push_str(&format!(
        r##"<text x="10" y="26" font-size="18" font-weight="bold">silo-bench bench-net</text><text x="10" y="46" fill="#444">{}</text>"##,
        esc(r["host"].as_str().unwrap_or(""))
    ));
    let mut y = 70.0;
    for g in &groups {
        b.push_str(&format!(
            r##"<text x="10" y="{y}" font-size="15" font-weight="bold">{}</text>"##,
            esc(&g.title)
        ));
        y += 10.0;
        let max = g.bars.iter().map(|(_, v)| *v).fold(1e-9, f64::max);
        let first = g.bars[0].1;
        for (i, (name, v)) in g.bars.iter().enumerate() {
            let len = (v / max * 520.0).max(1.0);
            let ratio = if i == 0 || *v <= 0.0 {
                String::new()
            } else {
                format!(" (silo/this: {:.2})", first / v)
            };
            b.push_str(&format!(
                r##"<text x="10" y="{}">{}</text><rect x="230" y="{}" width="{len:.1}" height="18" fill="{}"/><text x="{:.1}" y="{}">{v:.1}{}</text>"##,
                y + 14.0,
                esc(name),
                y + 1.0,
                COLORS[i % COLORS.len()],
                236.0 + len,
                y + 14.0,
                esc(&ratio)
            ));
            y += 24.0;
        }
        y += 18.0;
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{:.0}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>{b}</svg>"##,
        y + 10.0
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_plot_shows_every_client_and_the_cold_start_pair() {
        let r = json!({
            "host": "KVM test host (emulated: compare ratios)",
            "throughput": { "clients": {
                "silo": { "egress_mbit_per_s": { "p50": 200.0 }, "round_trip_us": { "p50": 900.0 } },
                "firecracker": { "egress_mbit_per_s": { "p50": 100.0 }, "round_trip_us": { "p50": 1800.0 } },
                "host": { "egress_mbit_per_s": { "p50": 2000.0 }, "round_trip_us": { "p50": 100.0 } },
            }},
            "network_cost": {
                "with_network": { "agent_ready_ms": { "p50": 1100.0 }, "boot_call_ms": { "p50": 1120.0 } },
                "without_network": { "agent_ready_ms": { "p50": 1000.0 }, "boot_call_ms": { "p50": 1010.0 } },
            },
        });
        let svg = super::svg(&r);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        for text in [
            "silo-vmm",
            "Firecracker",
            "the host itself",
            "with a network",
            "(silo/this: 2.00)",
            "(silo/this: 0.50)",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Without Firecracker or the cold starts, their bars are left out.
        let mut r = r;
        r["throughput"]["clients"]["firecracker"] = serde_json::Value::Null;
        r["network_cost"] = json!({ "skipped": "no nft" });
        let svg = super::svg(&r);
        assert!(!svg.contains("Firecracker") && !svg.contains("with a network"));
    }
}
