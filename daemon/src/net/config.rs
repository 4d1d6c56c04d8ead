//! The `[network]` section of the daemon's configuration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

use super::{slot, EgressPolicy};

/// The kernel command line the VMM uses by default (silo-vmm's `--cmdline`
/// default), which a VM with a network extends: passing `--cmdline`
/// replaces the default, so it is repeated here.
pub const VMM_BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check quiet pty.legacy_count=0";

/// The `[network]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Give VMs a network at all (false: loopback only, as before).
    pub enabled: bool,
    /// The egress policy of functions without one of their own.
    pub egress: EgressPolicy,
    /// Per function name: its policy (the API's `PUT .../network`
    /// overrides it).
    pub functions: BTreeMap<String, EgressPolicy>,
    /// Resolvers the guests are told of (and may reach on port 53 unless
    /// their policy is `none`). Unset: the host's IPv4 resolvers from
    /// /etc/resolv.conf, minus loopback and link-local ones (a guest cannot
    /// reach those).
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Names of this daemon's namespaces (`<prefix>-<slot>`), host veths
    /// (`<prefix>v<slot>`) and nft tables (`inet <prefix>`): 1 to 6 of
    /// `[a-z0-9]`. Two daemons on one host need different prefixes and
    /// slot ranges.
    pub name_prefix: String,
    /// The first slot this daemon uses.
    pub first_slot: u32,
    /// Slots (VMs with a network at once); `first_slot + slots` <= 8192.
    pub slots: u32,
    /// Slots kept prepared ahead (namespace, veth, rules), off the cold
    /// path.
    pub ready_slots: u32,
    /// Per-VM bandwidth limit in bytes per second, each direction; 0: none.
    pub bandwidth_bytes_per_s: u64,
    /// Per-VM one-time burst above the bandwidth limit, in bytes.
    pub burst_bytes: u64,
    /// Per-VM packet rate limit, each direction; 0: none.
    pub packets_per_s: u64,
    /// Reset an ended VM's slot for the next VM (rules, counters,
    /// conntrack, neighbours) instead of removing its namespace and
    /// preparing another: no teardown competes with the next boot.
    pub recycle_slots: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            egress: EgressPolicy::Internet,
            functions: BTreeMap::new(),
            dns: None,
            name_prefix: "silo".into(),
            first_slot: 0,
            slots: 1024,
            ready_slots: 4,
            bandwidth_bytes_per_s: 0,
            burst_bytes: 0,
            packets_per_s: 0,
            recycle_slots: true,
        }
    }
}

impl NetworkConfig {
    /// Checks names and ranges.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.name_prefix;
        if p.is_empty()
            || p.len() > 6
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err("network.name_prefix: 1 to 6 of a-z and 0-9".into());
        }
        if self.slots == 0
            || u64::from(self.first_slot) + u64::from(self.slots) > u64::from(slot::MAX_SLOTS)
        {
            return Err(format!(
                "network: first_slot + slots must be at most {} and slots at least 1",
                slot::MAX_SLOTS
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::net::EgressPolicy;

    /// What the daemon passes to silo-vmm is what silo-vmm takes: its
    /// default command line (repeated here because `--cmdline` replaces it)
    /// and the rate-limit flags, parsed by silo-vmm's own parser.
    #[test]
    fn the_vmm_takes_the_network_arguments_the_daemon_passes() {
        assert_eq!(super::VMM_BASE_CMDLINE, silo_vmm::vm::DEFAULT_CMDLINE);
        let mut c = super::NetworkConfig::default();
        assert!(crate::net::vm::rate_args(&c).is_empty());
        c.bandwidth_bytes_per_s = 10_000_000;
        c.burst_bytes = 1_000_000;
        c.packets_per_s = 20_000;
        let mut args: Vec<std::ffi::OsString> = ["--kernel", "vmlinux", "--net-tap", "tap0"]
            .map(Into::into)
            .to_vec();
        args.extend(crate::net::vm::rate_args(&c));
        assert_eq!(args.len(), 4 + 6);
        match silo_vmm::cli::parse(args.clone()) {
            Ok(silo_vmm::cli::Command::Run(_)) => {}
            other => panic!("silo-vmm refuses {args:?}: {other:?}"),
        }
    }

    #[test]
    fn the_network_section_parses_and_bad_names_are_refused() {
        let cfg: crate::config::DaemonConfig = toml::from_str(
            r#"
            [network]
            enabled = true
            egress = "none"
            dns = ["192.0.2.53"]
            [network.functions]
            "billing" = { allow = ["10.20.0.5/32:5432"] }
            "web" = "internet"
            "#,
        )
        .unwrap();
        let n = &cfg.network;
        assert!(n.enabled);
        assert_eq!(n.egress, EgressPolicy::None);
        assert_eq!(n.functions["web"], EgressPolicy::Internet);
        assert_eq!(
            n.functions["billing"],
            EgressPolicy::allow(&["10.20.0.5/32:5432"]).unwrap()
        );
        assert!(cfg.check().is_ok());
        // Off by default, with `internet` as the policy once enabled.
        let d = crate::config::DaemonConfig::default();
        assert!(!d.network.enabled);
        assert_eq!(d.network.egress, EgressPolicy::Internet);
        for bad in [
            "[network]\nname_prefix = \"Silo\"\n",
            "[network]\nname_prefix = \"s; rm\"\n",
            "[network]\nname_prefix = \"toolong\"\n",
            "[network]\nfirst_slot = 8190\nslots = 4\n",
        ] {
            let c: crate::config::DaemonConfig = toml::from_str(bad).unwrap();
            assert!(c.check().is_err(), "{bad}");
        }
        for bad in [
            "[network]\negress = \"everything\"\n",
            "[network]\negress = { allow = [\"10.0.0.1/8:99999\"] }\n",
            "[network]\nunknown = 1\n",
        ] {
            assert!(
                toml::from_str::<crate::config::DaemonConfig>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
