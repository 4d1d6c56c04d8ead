//! The SVG plot of `silo bench` results.

use serde_json::Value;

use super::results::{quantile_sorted, PHASES};

/// Escapes text for SVG (XML) content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step (1, 2 or 5 times a power of ten) for about `n` ticks up to
/// `max`.
fn tick_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// Formats a tick value without needless decimals.
fn tick_label(v: f64) -> String {
    if v >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Colors of the boot phases, in [`PHASES`] order.
const PHASE_COLORS: [&str; 7] = [
    "#bab0ac", "#76b7b2", "#4e79a7", "#59a14f", "#edc948", "#f28e2b", "#e15759",
];

/// What each phase's segment covers (from the previous phase's end).
const PHASE_LABELS: [&str; 7] = [
    "exec to VMM main",
    "kernel, initrd loaded",
    "KVM VM, vCPUs, devices",
    "first KVM_RUN",
    "guest kernel to /init",
    "agent hello over vsock",
    "first result back",
];

const SILO_BLUE: &str = "#3b6fb6";
const PEER_GREY: &str = "#999999";

/// The plot, for a person: (1) p50 bars of each pair compared (silo against
/// the peer VMM for cold boots, the VM against the same agent in host mode
/// for warm invokes) with their ratios; (2) a function VM's cold start as
/// stacked bars, one segment per phase, for the p50 of each phase's end and
/// for each VM measured; (3) latency CDFs of the warm invokes, serial and
/// concurrent, VM and host mode, on a log axis.
pub(super) fn svg(r: &Value) -> String {
    let width = 840.0;
    let mut b = String::new();
    // Peers in a fixed order, each named by its version line when known
    // ("QEMU emulator version 7.2.22 (Debian ...)": the part before " (").
    let peers: Vec<(&str, String)> = ["qemu", "firecracker"]
        .into_iter()
        .filter(|k| r["peers"][k].is_object())
        .map(|k| {
            let name = match (k, r["peers"][k]["version"].as_str()) {
                (_, Some(v)) => v.split(" (").next().unwrap_or(v).to_string(),
                ("firecracker", None) => "Firecracker".to_string(),
                _ => "QEMU -M microvm".to_string(),
            };
            (k, name)
        })
        .collect();
    let peer_names = peers
        .iter()
        .map(|(k, name)| {
            format!(
                "{name} ({})",
                r["peers"][k]["kernel"]["format"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let conc = r["warm_invoke_concurrent"]["concurrency"]
        .as_u64()
        .unwrap_or(0);
    b.push_str(&format!(
        r##"<text x="10" y="26" font-size="18" font-weight="bold">silo bench</text><text x="10" y="46" fill="#444">{}; cold-boot peers: {}</text>"##,
        esc(r["host"].as_str().unwrap_or("")),
        esc(&peer_names)
    ));

    // (1) p50 bars.
    let mut y = 74.0;
    b.push_str(&format!(
        r##"<text x="10" y="{y}" font-size="15" font-weight="bold">p50, silo against its peer (lower is better)</text><rect x="470" y="{}" width="12" height="12" fill="{SILO_BLUE}"/><text x="488" y="{}">silo</text><rect x="540" y="{}" width="12" height="12" fill="{PEER_GREY}"/><text x="558" y="{}">peer (VMM, or host-mode agent)</text>"##,
        y - 11.0, y, y - 11.0, y
    ));
    y += 14.0;
    let mut rows = Vec::new();
    for (k, name) in &peers {
        let cold = &r["peers"][k]["cold_boot"];
        for (what, key) in [
            ("process start to guest init", "process_to_guest_init_ms"),
            ("guest uptime at /init", "guest_uptime_at_init_ms"),
            ("process start to exit", "process_to_exit_ms"),
        ] {
            rows.push((
                format!("cold boot, {what} (ms): silo vs {name}"),
                &cold["silo"][key]["p50"],
                &cold["peer"][key]["p50"],
            ));
        }
        // Environments created per second at the largest count booted at once.
        if let Some(row) = r["peers"][k]["boots_at_once"]
            .as_array()
            .and_then(|a| a.last())
        {
            rows.push((
                format!(
                    "{} booting at once, wall time to all exited (ms): silo vs {name}",
                    row["n"]
                ),
                &row["silo"]["wall_ms"],
                &row["peer"]["wall_ms"],
            ));
        }
    }
    rows.extend([
        (
            "warm invoke round trip, serial (ms): VM over vsock vs host-mode agent".to_string(),
            &r["warm_invoke"]["vm_over_vsock_ms"]["p50"],
            &r["warm_invoke"]["host_mode_unix_socket_ms"]["p50"],
        ),
        (
            format!("warm invoke round trip, {conc} in flight (ms): {conc} VMs vs {conc} host-mode agents"),
            &r["warm_invoke_concurrent"]["vm_over_vsock_ms"]["p50"],
            &r["warm_invoke_concurrent"]["host_mode_unix_socket_ms"]["p50"],
        ),
    ]);
    // Against Firecracker: the same function VM (agent and counter) under
    // both VMMs.
    if r["agent_ready"].is_object() {
        for (what, key) in [
            ("agent ready", "spawn_to_agent_ready_ms"),
            ("first answer", "spawn_to_first_answer_ms"),
        ] {
            rows.push((
                format!("function VM, VMM spawn to {what} (ms): silo vs Firecracker"),
                &r["agent_ready"]["silo"][key]["p50"],
                &r["agent_ready"]["firecracker"][key]["p50"],
            ));
        }
    }
    if r["network_cost"]["with_network"].is_object() {
        rows.push((
            "function VM, VMM spawn to agent ready (ms): with a network vs without".to_string(),
            &r["network_cost"]["with_network"]["agent_ready_ms"]["p50"],
            &r["network_cost"]["without_network"]["agent_ready_ms"]["p50"],
        ));
    }
    for (label, a, p) in &rows {
        let (a, p) = (a.as_f64().unwrap_or(0.0), p.as_f64().unwrap_or(0.0));
        let max = a.max(p).max(1e-9);
        let len = |v: f64| (v / max * 560.0).max(1.0);
        let ratio = if p > 0.0 {
            format!("ratio {:.2}", a / p)
        } else {
            "ratio n/a".to_string()
        };
        b.push_str(&format!(
            r##"<text x="10" y="{}">{}; {ratio}</text><rect class="p50" x="10" y="{}" width="{:.1}" height="18" fill="{SILO_BLUE}"/><text x="{:.1}" y="{}">{a:.1}</text><rect class="p50" x="10" y="{}" width="{:.1}" height="18" fill="{PEER_GREY}"/><text x="{:.1}" y="{}">{p:.1}</text>"##,
            y + 14.0,
            esc(label),
            y + 20.0,
            len(a),
            len(a) + 16.0,
            y + 34.0,
            y + 40.0,
            len(p),
            len(p) + 16.0,
            y + 54.0,
        ));
        y += 70.0;
    }

    // (2) Stacked bars of the function VM's start.
    y += 16.0;
    let phases = &r["function_vm_timeline"]["phases"];
    let p50_ends: Vec<f64> = PHASES
        .iter()
        .map(|k| phases[k]["p50"].as_f64().unwrap_or(0.0))
        .collect();
    let vms: Vec<Vec<f64>> = r["function_vm_timeline"]["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .take(10)
                .map(|t| {
                    PHASES
                        .iter()
                        .map(|k| t[k].as_f64().unwrap_or(0.0))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let total = vms
        .iter()
        .chain(std::iter::once(&p50_ends))
        .flat_map(|v| v.iter().copied())
        .fold(1e-9, f64::max);
    let step = tick_step(total, 6.0);
    let xmax = (total / step).ceil() * step;
    b.push_str(&format!(
        r##"<text x="10" y="{y}" font-size="15" font-weight="bold">function VM cold start by phase (host clock, ms since the VMM process was spawned)</text>"##
    ));
    let (bx, bw) = (90.0, 700.0);
    let sx = |v: f64| bx + v.max(0.0) / xmax * bw;
    y += 14.0;
    let bars_top = y;
    let mut bars: Vec<(String, &Vec<f64>, &str)> = vec![("p50".into(), &p50_ends, "phase")];
    for (i, v) in vms.iter().enumerate() {
        bars.push((format!("VM {}", i + 1), v, "phase-vm"));
    }
    for (label, ends, class) in &bars {
        b.push_str(&format!(
            r##"<text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            bx - 8.0,
            y + 15.0
        ));
        let mut prev = 0.0f64;
        for (i, end) in ends.iter().enumerate() {
            let seg = (end - prev).max(0.0);
            b.push_str(&format!(
                r##"<rect class="{class}" x="{:.1}" y="{y}" width="{:.1}" height="20" fill="{}" stroke="white" stroke-width="0.5"><title>{}: {seg:.1} ms (ends at {end:.1} ms)</title></rect>"##,
                sx(prev),
                (sx(prev + seg) - sx(prev)).max(0.5),
                PHASE_COLORS[i % PHASE_COLORS.len()],
                PHASES[i].trim_end_matches("_ms"),
            ));
            prev = prev.max(*end);
        }
        b.push_str(&format!(
            r##"<text x="{:.1}" y="{}" font-size="11">{prev:.0}</text>"##,
            sx(prev) + 4.0,
            y + 14.0
        ));
        y += if *class == "phase" { 30.0 } else { 24.0 };
    }
    // Axis with ticks.
    b.push_str(&format!(
        r##"<line class="axis" x1="{bx}" y1="{y}" x2="{}" y2="{y}" stroke="black"/>"##,
        bx + bw
    ));
    let mut t = 0.0;
    while t <= xmax + step / 2.0 {
        b.push_str(&format!(
            r##"<line x1="{x:.1}" y1="{bars_top}" x2="{x:.1}" y2="{}" stroke="#ddd"/><line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
            y,
            y + 4.0,
            y + 16.0,
            tick_label(t),
            x = sx(t),
        ));
        t += step;
    }
    b.push_str(&format!(
        r##"<text x="{}" y="{}" text-anchor="middle">ms since spawn (the p50 bar stacks the p50 of each phase's end time)</text>"##,
        bx + bw / 2.0,
        y + 32.0
    ));
    y += 52.0;
    let mut prev = 0.0f64;
    for (i, k) in PHASES.iter().enumerate() {
        let (col, row) = (i % 2, i / 2);
        let (lx, ly) = (10.0 + col as f64 * 420.0, y + row as f64 * 18.0);
        let end = p50_ends[i];
        b.push_str(&format!(
            r##"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{ly}" font-size="12">{}: {} (+{:.1} ms, at {end:.1})</text>"##,
            ly - 10.0,
            PHASE_COLORS[i],
            lx + 18.0,
            k.trim_end_matches("_ms"),
            PHASE_LABELS[i],
            (end - prev).max(0.0),
        ));
        prev = prev.max(end);
    }
    y += (PHASES.len().div_ceil(2)) as f64 * 18.0 + 20.0;

    // (3) Latency CDFs, log x axis.
    let series = [
        ("VM, serial", "warm_invoke", "vm", SILO_BLUE, ""),
        (
            "host mode, serial",
            "warm_invoke",
            "host_mode",
            PEER_GREY,
            "",
        ),
        (
            "VMs, concurrent",
            "warm_invoke_concurrent",
            "vm",
            SILO_BLUE,
            "7,4",
        ),
        (
            "host mode, concurrent",
            "warm_invoke_concurrent",
            "host_mode",
            PEER_GREY,
            "7,4",
        ),
    ];
    let data: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, sect, key, _, _)| {
            let mut x: Vec<f64> = r[sect]["samples_ms"][key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            x.sort_by(f64::total_cmp);
            x
        })
        .collect();
    let all = data.iter().flatten().copied().filter(|v| *v > 0.0);
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = if lo.is_finite() {
        (lo, hi)
    } else {
        (1.0, 10.0)
    };
    // The axis runs between 1-2-5 ticks around the data.
    let ticks_125 = |from: f64, to: f64| -> Vec<f64> {
        let mut t = Vec::new();
        let mut d = from.floor() - 1.0;
        while d <= to.ceil() + 1.0 {
            t.extend([1.0, 2.0, 5.0].map(|m| m * 10f64.powf(d)));
            d += 1.0;
        }
        t
    };
    let candidates = ticks_125(lo.log10(), hi.log10());
    let first = candidates
        .iter()
        .rev()
        .find(|t| **t <= lo)
        .copied()
        .unwrap_or(lo);
    let last = candidates.iter().find(|t| **t >= hi).copied().unwrap_or(hi);
    let (d0, d1) = (first.log10(), last.log10().max(first.log10() + 1.0));
    let (px, pw, ph) = (70.0, 720.0, 300.0);
    b.push_str(&format!(
        r##"<text x="10" y="{y}" font-size="15" font-weight="bold">warm invoke round trip: CDF (solid serial, dashed {conc} in flight)</text>"##
    ));
    let py = y + 16.0;
    let lx = |v: f64| px + (v.max(lo).log10() - d0) / (d1 - d0) * pw;
    let ly = |f: f64| py + ph - f * ph;
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        b.push_str(&format!(
            r##"<line x1="{px}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11">{f:.2}</text>"##,
            px + pw,
            px - 6.0,
            ly(f) + 4.0,
            y = ly(f),
        ));
    }
    for v in candidates {
        let l10 = v.log10();
        if l10 < d0 - 1e-9 || l10 > d1 + 1e-9 {
            continue;
        }
        let x = px + (l10 - d0) / (d1 - d0) * pw;
        let decade = (l10 - l10.round()).abs() < 1e-9;
        b.push_str(&format!(
            r##"<line x1="{x:.1}" y1="{py}" x2="{x:.1}" y2="{}" stroke="{}"/><text x="{x:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
            py + ph,
            if decade { "#bbb" } else { "#e5e5e5" },
            py + ph + 16.0,
            tick_label(v),
        ));
    }
    b.push_str(&format!(
        r##"<line class="axis" x1="{px}" y1="{}" x2="{}" y2="{}" stroke="black"/><line class="axis" x1="{px}" y1="{py}" x2="{px}" y2="{}" stroke="black"/><text x="{}" y="{}" text-anchor="middle">round trip (ms, log scale)</text><text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">fraction of invokes ≤ x</text>"##,
        py + ph,
        px + pw,
        py + ph,
        py + ph,
        px + pw / 2.0,
        py + ph + 34.0,
        py + ph / 2.0,
        py + ph / 2.0,
    ));
    let legend_y = py + ph + 58.0;
    for (i, ((label, _, _, color, dash), x)) in series.iter().zip(&data).enumerate() {
        let n = x.len();
        let mut pts = Vec::with_capacity(2 * n + 1);
        if let Some(first) = x.first() {
            pts.push(format!("{:.1},{:.1}", lx(*first), ly(0.0)));
        }
        for (j, v) in x.iter().enumerate() {
            pts.push(format!("{:.1},{:.1}", lx(*v), ly(j as f64 / n as f64)));
            pts.push(format!(
                "{:.1},{:.1}",
                lx(*v),
                ly((j + 1) as f64 / n as f64)
            ));
        }
        let (cx, cy) = (
            10.0 + (i % 2) as f64 * 420.0,
            legend_y + (i / 2) as f64 * 20.0,
        );
        let summary = if n > 0 {
            format!(
                "n={n}, p50 {:.1} ms, p99 {:.1} ms",
                quantile_sorted(x, 0.5),
                quantile_sorted(x, 0.99)
            )
        } else {
            "no samples".to_string()
        };
        b.push_str(&format!(
            r##"<polyline class="cdf" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/><line x1="{cx}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{cy}" font-size="12">{label}: {summary}</text>"##,
            pts.join(" "),
            cy - 4.0,
            cx + 30.0,
            cy - 4.0,
            cx + 36.0,
        ));
    }
    let height = legend_y + 40.0;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/>{b}</svg>
"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(2712.0, 6.0), 500.0);
        assert_eq!(tick_step(9.0, 6.0), 2.0);
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(1500.0), "1500");
    }

    /// Results shaped like a run's, with `n` function VMs.
    fn results(n: usize) -> Value {
        let st = |base: f64| json!({"n": 3, "min": base, "p50": base * 1.1, "p95": base * 1.2, "p99": base * 1.3, "max": base * 1.4});
        let samples: Vec<Value> = (0..n)
            .map(|i| {
                let mut t = serde_json::Map::new();
                for (j, k) in PHASES.iter().enumerate() {
                    t.insert(k.to_string(), json!((j as f64 + 1.0) * 100.0 + i as f64));
                }
                Value::Object(t)
            })
            .collect();
        let mut phases = serde_json::Map::new();
        for (j, k) in PHASES.iter().enumerate() {
            phases.insert(k.to_string(), st((j as f64 + 1.0) * 100.0));
        }
        json!({
            "host": "a <test> & host",
            "peers": {"qemu": {
                "version": null, "kernel": {"format": "bzImage"},
                "cold_boot": {
                    "silo": {"process_to_exit_ms": st(900.0), "process_to_guest_init_ms": st(800.0), "guest_uptime_at_init_ms": st(400.0)},
                    "peer": {"process_to_exit_ms": st(1000.0), "process_to_guest_init_ms": st(900.0), "guest_uptime_at_init_ms": st(300.0)},
                },
                "boots_at_once": [
                    {"n": 1, "silo": {"wall_ms": 1000.0}, "peer": {"wall_ms": 1100.0}},
                    {"n": 10, "silo": {"wall_ms": 9000.0}, "peer": {"wall_ms": 9900.0}},
                ],
            }},
            "function_vm_timeline": {"phases": phases, "samples": samples},
            "warm_invoke": {
                "vm_over_vsock_ms": st(10.0), "host_mode_unix_socket_ms": st(5.0),
                "samples_ms": {"vm": [9.0, 10.0, 12.0], "host_mode": [4.0, 5.0, 6.5]},
            },
            "warm_invoke_concurrent": {
                "concurrency": 4,
                "vm_over_vsock_ms": st(30.0), "host_mode_unix_socket_ms": st(15.0),
                "samples_ms": {"vm": [20.0, 30.0, 80.0], "host_mode": [10.0, 15.0, 40.0]},
            },
        })
    }

    #[test]
    fn plot_has_bars_phases_and_cdfs() {
        let plot = svg(&results(3));
        assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
        assert_eq!(
            plot.matches("class=\"p50\"").count(),
            12,
            "six pairs of bars: four cold-boot pairs against QEMU, two warm"
        );
        assert!(plot.contains("10 booting at once, wall time to all exited (ms): silo vs QEMU -M microvm; ratio 0.91"), "{plot}");
        assert!(
            plot.contains("QEMU -M microvm (bzImage)"),
            "peer named with its kernel format"
        );
        assert_eq!(plot.matches("class=\"phase\"").count(), PHASES.len());
        assert_eq!(plot.matches("class=\"phase-vm\"").count(), 3 * PHASES.len());
        assert_eq!(plot.matches("class=\"cdf\"").count(), 4);
        assert!(plot.contains("fraction of invokes"), "CDF y axis label");
        assert!(plot.contains("log scale"), "CDF x axis label");
        assert!(
            plot.contains("a &lt;test&gt; &amp; host"),
            "text is escaped"
        );
        assert!(!plot.contains("NaN") && !plot.contains("inf"), "{plot}");
        // Balanced elements: every opened <text>, <rect> with a title, <svg>.
        for tag in ["text", "title", "svg"] {
            assert_eq!(
                plot.matches(&format!("<{tag} ")).count()
                    + plot.matches(&format!("<{tag}>")).count(),
                plot.matches(&format!("</{tag}>")).count(),
                "{tag}"
            );
        }
    }

    #[test]
    fn plot_compares_function_vms_under_firecracker_when_measured() {
        let mut r = results(3);
        let st =
            |p50: f64| json!({"n": 3, "min": p50, "p50": p50, "p95": p50, "p99": p50, "max": p50});
        r["peers"]["firecracker"] = json!({
            "version": "Firecracker v1.14.0", "kernel": {"format": "ELF vmlinux"},
            "cold_boot": r["peers"]["qemu"]["cold_boot"].clone(),
        });
        r["agent_ready"] = json!({
            "silo": {"spawn_to_agent_ready_ms": st(800.0), "spawn_to_first_answer_ms": st(900.0)},
            "firecracker": {"spawn_to_agent_ready_ms": st(850.0), "spawn_to_first_answer_ms": st(950.0)},
        });
        let plot = svg(&r);
        assert_eq!(
            plot.matches("class=\"p50\"").count(),
            22,
            "eleven pairs: four against QEMU, three against Firecracker, two function VMs, two warm"
        );
        assert!(
            plot.contains(
                "process start to guest init (ms): silo vs Firecracker v1.14.0; ratio 0.89"
            ),
            "{plot}"
        );
        assert!(plot.contains("spawn to agent ready (ms): silo vs Firecracker; ratio 0.94"));
    }

    #[test]
    fn plot_survives_missing_results() {
        let plot = svg(&json!({}));
        assert!(plot.starts_with("<svg") && !plot.contains("NaN"), "{plot}");
    }
}
