//! The SVG plot of `silo bench-api` bursts.

use serde_json::Value;

/// The bursts as one SVG: each invoke a dot at (sent time, latency), one
/// panel per burst; answered first invokes of new tenants, later invokes,
/// refusals and failures in their own colours.
pub(super) fn burst_svg(r: &Value) -> String {
    let bursts: Vec<&Value> = r["bursts"].as_array().into_iter().flatten().collect();
    let (w, ph) = (720.0, 260.0);
    let h = ph * bursts.len().max(1) as f64 + 40.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"13\">silo bench-api: bursts of new tenants ({})</text>\n",
        r["where"].as_str().unwrap_or("").replace('&', "and").replace('<', "(")
    );
    for (i, b) in bursts.iter().enumerate() {
        let top = 30.0 + ph * i as f64;
        let (x0, y0, pw, pht) = (60.0, top + 20.0, w - 80.0, ph - 60.0);
        let recs: Vec<&Value> = b["records"].as_array().into_iter().flatten().collect();
        let end = recs
            .iter()
            .map(|v| {
                v["sent_s"].as_f64().unwrap_or(0.0)
                    + v["latency_ms"].as_f64().unwrap_or(0.0) / 1000.0
            })
            .fold(0.1, f64::max);
        let ymax = recs
            .iter()
            .map(|v| v["latency_ms"].as_f64().unwrap_or(0.0))
            .fold(1.0, f64::max);
        out.push_str(&format!(
            "<text x=\"{x0}\" y=\"{}\">burst {}: {} answered, {} refused, {} failed; x: seconds since the burst began (0..{end:.1}), y: latency (0..{ymax:.0} ms)</text>\n\
             <rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{pht}\" fill=\"none\" stroke=\"#888\"/>\n",
            top + 12.0,
            b["shape"].as_str().unwrap_or(""),
            b["answered"],
            b["refused"],
            b["failed"]
        ));
        for v in recs {
            let x = x0 + pw * v["sent_s"].as_f64().unwrap_or(0.0) / end;
            let y = y0 + pht - pht * v["latency_ms"].as_f64().unwrap_or(0.0) / ymax;
            let colour = match (v["outcome"].as_str(), v["nth"].as_u64()) {
                (Some("answered"), Some(0)) => "#1f77b4",
                (Some("answered"), _) => "#2ca02c",
                (Some("refused"), _) => "#ff7f0e",
                _ => "#d62728",
            };
            out.push_str(&format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"/>\n"
            ));
        }
    }
    out.push_str(&format!(
        "<text x=\"60\" y=\"{}\"><tspan fill=\"#1f77b4\">first invoke of a tenant</tspan>  <tspan fill=\"#2ca02c\">later invoke</tspan>  <tspan fill=\"#ff7f0e\">refused (429)</tspan>  <tspan fill=\"#d62728\">failed</tspan></text>\n</svg>\n",
        h - 8.0
    ));
    out
}
