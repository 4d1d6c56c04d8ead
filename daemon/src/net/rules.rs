//! The nftables rulesets, generated as text for `nft -f -` (one atomic
//! transaction each). Only typed values ([`Ipv4Addr`], [`AllowEntry`],
//! validated names) are formatted into them.
//!
//! Two layers:
//! - in each VM's namespace, table `inet <prefix>` ([`vm_ruleset`]): the
//!   guest's traffic, in order: established traffic back to the guest;
//!   always denied (a source other than the guest's address, loopback,
//!   link-local with every slot and 169.254.169.254, IPv6, anything
//!   addressed to the namespace itself); then the function's policy;
//! - on the host, table `inet <prefix>` ([`host_ruleset`]): nothing from a
//!   VM's veth reaches the host itself (INPUT dropped: the API, metrics,
//!   every address of the host), no veth reaches another, nothing enters a
//!   veth unless it answers the VM, a source the veth's route does not
//!   lead back to is dropped, and the slots' traffic leaves masqueraded.

use std::fmt::Write;
use std::net::Ipv4Addr;

use super::policy::EgressPolicy;
use super::slot::{GUEST_ADDR, NS_VETH, SLOT_NET, SLOT_PREFIX, TAP};

/// Destinations `internet` denies: every special-purpose IPv4 range.
pub const NOT_INTERNET: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Destinations denied whatever the policy: loopback, link-local (every
/// VM slot, the host's veth addresses and 169.254.169.254), "this network",
/// multicast and reserved.
pub const ALWAYS_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The ruleset of one VM's namespace for `policy`, replacing any earlier
/// one in the same transaction. `dns`: resolvers the guest is told of,
/// reachable on port 53 unless the policy is `none`.
pub fn vm_ruleset(table: &str, policy: &EgressPolicy, dns: &[Ipv4Addr]) -> String {
    let mut s = String::new();
    // `add` then `delete` then `add`: replaces the table whether or not it
    // exists, atomically (no instant without rules).
    let _ = writeln!(s, "add table inet {table}\ndelete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "  counter egress {{ }}\n  counter ingress {{ }}");
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy drop;\n\
         \x20   meta nfproto != ipv4 drop\n\
         \x20   iifname \"{NS_VETH}\" oifname \"{TAP}\" ct state established,related counter name ingress accept\n\
         \x20   iifname != \"{TAP}\" drop\n\
         \x20   oifname != \"{NS_VETH}\" drop\n\
         \x20   ip saddr != {GUEST_ADDR} drop\n\
         \x20   ip daddr {{ {} }} drop\n\
         \x20   jump egress\n  }}",
        ALWAYS_DENIED.join(", ")
    );
    s.push_str(&egress_chain(policy, dns));
    // The guest may not address the namespace itself (its gateway address
    // answers ARP only); the namespace sends nothing of its own but ICMP
    // errors and replies.
    let _ = writeln!(
        s,
        "  chain input {{\n    type filter hook input priority 0; policy drop;\n\
         \x20   iifname \"lo\" accept\n  }}\n\
         \x20 chain output {{\n    type filter hook output priority 0; policy drop;\n\
         \x20   oifname \"lo\" accept\n    meta l4proto icmp accept\n  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n\
         \x20   oifname \"{NS_VETH}\" masquerade\n  }}\n}}"
    );
    s
}

/// The `egress` chain's definition for `policy` (rules only: the named
/// counters it updates are the table's).
fn egress_chain(policy: &EgressPolicy, dns: &[Ipv4Addr]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  chain egress {{");
    if policy.has_interface() && !dns.is_empty() {
        let list = dns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "    ip daddr {{ {list} }} meta l4proto {{ tcp, udp }} th dport 53 counter name egress accept"
        );
    }
    match policy {
        EgressPolicy::None => {}
        EgressPolicy::Internet => {
            let _ = writeln!(
                s,
                "    ip daddr {{ {} }} drop\n    counter name egress accept",
                NOT_INTERNET.join(", ")
            );
        }
        EgressPolicy::Allow(entries) => {
            for e in entries {
                let _ = writeln!(
                    s,
                    "    ip daddr {}/{} meta l4proto {{ tcp, udp }} th dport {} counter name egress accept",
                    e.addr, e.prefix, e.port
                );
            }
        }
    }
    let _ = writeln!(s, "  }}");
    s
}

/// Replaces only the `egress` chain of a VM's table (one transaction; the
/// table's counters keep counting): a live policy change.
pub fn policy_update(table: &str, policy: &EgressPolicy, dns: &[Ipv4Addr]) -> String {
    format!(
        "flush chain inet {table} egress
table inet {table} {{
{}}}
",
        egress_chain(policy, dns)
    )
}

/// The host's table: replaces any earlier one. `veths`: the wildcard of
/// the slots' host-side veth names (e.g. `siloh*`).
pub fn host_ruleset(table: &str, veths: &str) -> String {
    format!(
        "add table inet {table}\ndelete table inet {table}\n\
         table inet {table} {{\n\
         \x20 chain input {{\n    type filter hook input priority -10; policy accept;\n\
         \x20   iifname \"{veths}\" drop\n  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority -10; policy accept;\n\
         \x20   iifname \"{veths}\" meta nfproto != ipv4 drop\n\
         \x20   oifname \"{veths}\" meta nfproto != ipv4 drop\n\
         \x20   iifname \"{veths}\" oifname \"{veths}\" drop\n\
         \x20   oifname \"{veths}\" ct state established,related accept\n\
         \x20   oifname \"{veths}\" drop\n\
         \x20   iifname \"{veths}\" fib saddr . iif oif missing drop\n\
         \x20   iifname \"{veths}\" ip daddr {{ {} }} drop\n  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n\
         \x20   ip saddr {SLOT_NET}/{SLOT_PREFIX} oifname != \"{veths}\" masquerade\n  }}\n}}\n",
        ALWAYS_DENIED.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rulesets parse (`nft -c`, which checks without applying), where
    /// nft is installed.
    #[test]
    fn the_rulesets_are_valid_nft() {
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("nft is not installed: skipped");
            return;
        }
        let allow = EgressPolicy::allow(&["10.1.2.3/32:5432", "203.0.113.0/24:443"]).unwrap();
        let dns = [Ipv4Addr::new(192, 0, 2, 53)];
        for text in [
            vm_ruleset("silot", &EgressPolicy::Internet, &dns),
            vm_ruleset("silot", &EgressPolicy::None, &dns),
            vm_ruleset("silot", &allow, &[]),
            host_ruleset("silot", "silotv*"),
        ] {
            let out = std::process::Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(text.as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("Operation not permitted") {
                eprintln!("not allowed to use nft here: skipped");
                return;
            }
            assert!(out.status.success(), "{err}\n{text}");
        }
    }
}
