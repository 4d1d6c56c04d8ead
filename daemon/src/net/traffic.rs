//! Traffic counted per tenant: each VM's namespace counts what its guest
//! sent (`egress`: every packet its policy let through) and received
//! (`ingress`: replies delivered to it) in named nft counters; they are read
//! when a pooled VM is bound to a tenant (what its init sent before belongs
//! to no tenant: `tenant_id="(unbound)"`) and when the VM ends, and summed
//! per function and tenant for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::slot::{self, Names};
use super::NetError;

/// The `tenant_id` label of traffic a pooled VM sent before it was bound.
pub const UNBOUND: &str = "(unbound)";

/// Bytes and packets each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Sent by the guest and let through.
    pub egress_bytes: u64,
    /// Packets of those.
    pub egress_packets: u64,
    /// Delivered to the guest.
    pub ingress_bytes: u64,
    /// Packets of those.
    pub ingress_packets: u64,
}

impl Traffic {
    fn add(&mut self, o: &Traffic) {
        self.egress_bytes += o.egress_bytes;
        self.egress_packets += o.egress_packets;
        self.ingress_bytes += o.ingress_bytes;
        self.ingress_packets += o.ingress_packets;
    }
}

/// Reads (and with `reset`, zeroes in the same command) slot `s`'s counters.
pub fn read(names: &Names, s: u32, reset: bool) -> Result<Traffic, NetError> {
    let verb = if reset { "reset" } else { "list" };
    let table = names.table().to_owned();
    let out = slot::in_netns(&names.netns_path(s), move || {
        slot::run_output("nft", &["-j", verb, "counters", "table", "inet", &table])
    })?;
    parse(&out)
}

/// Parses `nft -j list counters` output.
pub fn parse(json: &str) -> Result<Traffic, NetError> {
    let bad = |e: String| NetError::Command("nft -j list counters".into(), e);
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let mut t = Traffic::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        let (bytes, packets) = (
            c["bytes"].as_u64().unwrap_or(0),
            c["packets"].as_u64().unwrap_or(0),
        );
        match c["name"].as_str() {
            Some("egress") => (t.egress_bytes, t.egress_packets) = (bytes, packets),
            Some("ingress") => (t.ingress_bytes, t.ingress_packets) = (bytes, packets),
            _ => {}
        }
    }
    Ok(t)
}

/// Totals by (function, tenant label), at most `cap` pairs: beyond, a
/// function's further tenants are summed under `tenant_id="(other)"`.
pub struct Totals {
    cap: usize,
    by: Mutex<BTreeMap<(String, String), Traffic>>,
}

impl Totals {
    /// Totals keeping at most `cap` (function, tenant) series.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            by: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `t` to (`function`, `tenant`).
    pub fn add(&self, function: &str, tenant: &str, t: &Traffic) {
        let mut by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (function.to_owned(), tenant.to_owned());
        if !by.contains_key(&key) && by.len() >= self.cap {
            key.1 = crate::metrics::OTHER_TENANTS.to_owned();
        }
        by.entry(key).or_default().add(t);
    }

    /// The Prometheus text of the totals.
    pub fn render(&self) -> String {
        let by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, help, pick) in [
            (
                "silo_network_egress_bytes_total",
                "Bytes guests sent that their egress policy let through.",
                (|t: &Traffic| t.egress_bytes) as fn(&Traffic) -> u64,
            ),
            (
                "silo_network_egress_packets_total",
                "Packets of those.",
                |t| t.egress_packets,
            ),
            (
                "silo_network_ingress_bytes_total",
                "Bytes delivered to guests (replies).",
                |t| t.ingress_bytes,
            ),
            (
                "silo_network_ingress_packets_total",
                "Packets of those.",
                |t| t.ingress_packets,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((f, tenant), t) in by.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{function=\"{}\",tenant_id=\"{}\"}} {}",
                    crate::metrics::escape(f),
                    crate::metrics::escape(tenant),
                    pick(t)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_and_sum_per_tenant_within_the_cap() {
        let t = parse(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "egress", "table": "silo", "handle": 2, "packets": 3, "bytes": 284}}, {"counter": {"name": "ingress", "packets": 2, "bytes": 120}}]}"#).unwrap();
        assert_eq!(
            t,
            Traffic {
                egress_bytes: 284,
                egress_packets: 3,
                ingress_bytes: 120,
                ingress_packets: 2
            }
        );
        let totals = Totals::new(2);
        totals.add("f", "a", &t);
        totals.add("f", "a", &t);
        totals.add("f", "b\"x", &t);
        totals.add("f", "c", &t);
        let text = totals.render();
        assert!(
            text.contains("silo_network_egress_bytes_total{function=\"f\",tenant_id=\"a\"} 568"),
            "{text}"
        );
        assert!(text.contains("tenant_id=\"b\\\"x\"} 284"), "{text}");
        assert!(text.contains("tenant_id=\"(other)\"} 284"), "{text}");
        assert!(!text.contains("tenant_id=\"c\""), "{text}");
    }
}
