//! One network per VM (`[network]`, off by default): each VM's VMM joins a
//! network namespace of its own, prepared ahead of time (a small pool of
//! ready slots), with a tap for the guest and a veth pair to the host; the
//! guest's egress is filtered by nftables in the namespace (always-denied
//! ranges, then the function's [`EgressPolicy`]) and again on the host
//! (nothing reaches the host itself or another VM). The address scheme is
//! in [`slot`], the rules in [`rules`]; docs/ARCHITECTURE.md and
//! docs/SECURITY.md describe the model.

mod config;
pub mod conntrack;
mod functions;
pub mod policy;
pub mod rules;
pub mod slot;
pub mod traffic;
mod vm;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use config::{NetworkConfig, VMM_BASE_CMDLINE};
pub use functions::{start_for, PolicySource};
pub use policy::{AllowEntry, EgressPolicy, PolicyError};
pub use slot::GuestLink;
use slot::Names;
pub use vm::{attach, VmNet};

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The host lacks what networking needs.
    #[error(
        "networking is enabled ([network] enabled = true) but this host cannot provide it: {0}"
    )]
    Unavailable(String),
    /// A command failed.
    #[error("{0}: {1}")]
    Command(String, String),
    /// Every slot is in use.
    #[error("every network slot ({0}) is in use")]
    NoSlot(u32),
}

#[derive(Default)]
struct Slots {
    /// Prepared, unused.
    ready: Vec<u32>,
    /// Not prepared, unused.
    free: BTreeSet<u32>,
    /// In use, by function name.
    active: HashMap<u32, String>,
    /// Policies set through the API, by function name.
    overrides: HashMap<String, EgressPolicy>,
}

/// The daemon's networking: slots, their pool and the functions' policies.
pub struct Network {
    cfg: NetworkConfig,
    names: Names,
    dns: Vec<Ipv4Addr>,
    slots: Mutex<Slots>,
    refilling: AtomicBool,
    /// Held while a slot is taken with its first rules and during a live
    /// policy change: the two never interleave.
    rules: Mutex<()>,
    /// Set by [`Network::close`]: no slot is prepared any more.
    closed: AtomicBool,
    traffic: traffic::Totals,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("prefix", &self.cfg.name_prefix)
            .finish_non_exhaustive()
    }
}

/// What is missing for networking, if anything: `nft`, `ip`, the tun
/// device, or the right to make a network namespace and nft tables.
pub fn preflight(prefix: &str) -> Result<(), NetError> {
    let mut missing = Vec::new();
    for (program, arg, package) in [("nft", "--version", "nftables"), ("ip", "-V", "iproute2")] {
        if slot::run(program, &[arg], None).is_err() {
            missing.push(format!(
                "the `{program}` program (Debian package {package})"
            ));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (the tun module)".into());
    }
    if missing.is_empty() {
        let probe = format!("{prefix}-probe");
        match slot::run("ip", &["netns", "add", &probe], None) {
            Err(e) => missing.push(format!("making a network namespace ({e})")),
            Ok(()) => {
                let path = std::path::Path::new(slot::NETNS_DIR).join(&probe);
                let table = format!("add table inet {prefix}probe\n");
                // Then every expression the rulesets use (each needs its
                // kernel module: a host without module autoloading fails
                // here, not on every VM) and a veth pair.
                let full = format!(
                    "{}{}",
                    rules::vm_ruleset(
                        &format!("{prefix}probe"),
                        &EgressPolicy::Internet,
                        &[Ipv4Addr::new(192, 0, 2, 53)]
                    ),
                    rules::host_ruleset(&format!("{prefix}probeh"), "probev*")
                );
                let found = slot::in_netns(&path, move || {
                    let mut missing = Vec::new();
                    if let Err(e) = slot::run("nft", &["-f", "-"], Some(&table)) {
                        missing.push(format!("nftables in a namespace ({e})"));
                    } else if let Err(e) = slot::run("nft", &["-f", "-"], Some(&full)) {
                        missing.push(format!(
                            "the nftables features of silo's rules (kernel modules nf_tables, \
                             nft_objref, nft_ct, nft_chain_nat, nft_masq, nft_fib_inet) ({e})"
                        ));
                    }
                    if let Err(e) = conntrack::flush() {
                        missing.push(format!(
                            "flushing a namespace's conntrack table (kernel module \
                             nf_conntrack_netlink) ({e})"
                        ));
                    }
                    let veth = [
                        "link", "add", "probev0", "type", "veth", "peer", "name", "probep0",
                    ];
                    if let Err(e) = slot::run("ip", &veth, None) {
                        missing.push(format!("veth pairs (the veth module) ({e})"));
                    }
                    Ok(missing)
                });
                match found {
                    Ok(m) => missing.extend(m),
                    Err(e) => missing.push(format!("entering a network namespace ({e})")),
                }
                let _ = slot::run("ip", &["netns", "delete", &probe], None);
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NetError::Unavailable(format!(
            "missing {}",
            missing.join("; ")
        )))
    }
}

/// Removes every namespace, host veth and host nft table named with
/// `prefix` (left by a daemon that did not end cleanly): run at start.
/// Returns how many namespaces and veths it removed.
pub fn sweep(prefix: &str) -> usize {
    let names = Names::new(prefix);
    let mut removed = 0;
    for entry in std::fs::read_dir(slot::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(s) = entry.file_name().to_str().and_then(|n| names.netns_slot(n)) {
            slot::destroy(&names, s);
            removed += 1;
        }
    }
    for entry in std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(name) = entry.file_name().to_str() {
            if names.veth_slot(name).is_some() {
                let _ = slot::run("ip", &["link", "del", name], None);
                removed += 1;
            }
        }
    }
    let _ = slot::run("nft", &["delete", "table", "inet", names.table()], None);
    removed
}

/// The host's IPv4 resolvers a guest can reach (not loopback, not
/// link-local), from /etc/resolv.conf.
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified())
        .take(3)
        .collect()
}

impl Network {
    /// Checks the host ([`preflight`]), sweeps leftovers ([`sweep`]), turns
    /// IPv4 forwarding on (`net.ipv4.ip_forward = 1`), installs the host's
    /// table and starts preparing slots.
    pub fn start(cfg: NetworkConfig) -> Result<Arc<Self>, NetError> {
        Self::start_with_series(cfg, crate::metrics::DEFAULT_TENANT_SERIES)
    }

    /// [`Network::start`], keeping traffic series for at most `series`
    /// (function, tenant) pairs (`metrics_tenant_series`).
    pub fn start_with_series(cfg: NetworkConfig, series: usize) -> Result<Arc<Self>, NetError> {
        cfg.validate().map_err(NetError::Unavailable)?;
        preflight(&cfg.name_prefix)?;
        let swept = sweep(&cfg.name_prefix);
        if swept > 0 {
            tracing::info!(removed = swept, "removed leftover VM namespaces and veths");
        }
        let forwarding =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        if forwarding.trim() != "1" {
            slot::sysctl("net.ipv4.ip_forward", "1")?;
            tracing::info!("turned IPv4 forwarding on (net.ipv4.ip_forward = 1) for VM networks");
        }
        let names = Names::new(&cfg.name_prefix);
        slot::run(
            "nft",
            &["-f", "-"],
            Some(&rules::host_ruleset(names.table(), &names.host_veths())),
        )?;
        let dns = cfg.dns.clone().unwrap_or_else(host_resolvers);
        if dns.is_empty() {
            tracing::warn!("no resolver a guest can reach ([network] dns unset, none usable in /etc/resolv.conf): guests get no DNS");
        }
        let net = Arc::new(Self {
            slots: Mutex::new(Slots {
                free: (cfg.first_slot..cfg.first_slot + cfg.slots).collect(),
                ..Slots::default()
            }),
            names,
            dns,
            cfg,
            refilling: AtomicBool::new(false),
            rules: Mutex::new(()),
            closed: AtomicBool::new(false),
            traffic: traffic::Totals::new(series),
        });
        net.refill();
        Ok(net)
    }

    /// The resolvers guests are told of.
    pub fn dns(&self) -> &[Ipv4Addr] {
        &self.dns
    }

    /// Slots prepared and unused.
    pub fn ready_slots(&self) -> usize {
        self.slots.lock().expect("slots").ready.len()
    }

    /// `function`'s policy: set through the API, else `[network.functions]`,
    /// else `[network] egress`.
    pub fn policy_for(&self, function: &str) -> EgressPolicy {
        if let Some(p) = self.slots.lock().expect("slots").overrides.get(function) {
            return p.clone();
        }
        self.cfg
            .functions
            .get(function)
            .unwrap_or(&self.cfg.egress)
            .clone()
    }

    /// Sets (or with `None` clears) `function`'s policy and re-applies the
    /// rules of its running VMs. Returns how many VMs were updated. A VM
    /// booted without an interface (policy `none`) gets none: a new policy
    /// reaches its traffic only in VMs booted after.
    pub fn set_policy(
        &self,
        function: &str,
        policy: Option<EgressPolicy>,
    ) -> Result<usize, NetError> {
        let _rules = self.rules.lock().expect("rules");
        let slots: Vec<u32> = {
            let mut s = self.slots.lock().expect("slots");
            match policy {
                Some(p) => s.overrides.insert(function.to_owned(), p),
                None => s.overrides.remove(function),
            };
            s.active
                .iter()
                .filter(|(_, f)| f.as_str() == function)
                .map(|(slot, _)| *slot)
                .collect()
        };
        let ruleset =
            rules::policy_update(self.names.table(), &self.policy_for(function), &self.dns);
        // Every VM gets the new rules even if one fails (the first error is
        // returned; a VM already gone is skipped).
        let mut first_error = None;
        for s in &slots {
            if let Err(e) = slot::apply(&self.names, *s, ruleset.clone()) {
                let still_running = self.slots.lock().expect("slots").active.contains_key(s);
                if still_running {
                    tracing::error!(slot = s, function = %function, error = %e, "cannot apply a VM's new egress policy");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(slots.len()), Err)
    }

    /// A network for one VM of `function`, or `None` if its policy is
    /// `none` (no interface at all), with the function's rules in place.
    /// Blocking: call from a blocking thread.
    pub fn lease(
        self: &Arc<Self>,
        function: &str,
        link: &GuestLink,
    ) -> Result<Option<VmNet>, NetError> {
        let vm = self.lease_for_boot(function, link)?;
        self.refill();
        Ok(vm)
    }

    /// [`Network::lease`] for a VM about to boot, off the cold path: the
    /// slot (namespace, veth, tap, and rules with the default policy
    /// `[network] egress`, all prepared ahead) is taken and its tap given
    /// to the VM's uid (two ioctls); only a function whose policy is not
    /// the default has its own applied (one `nft` run), before this
    /// returns, so before its VMM starts. The slot is replaced in the pool
    /// once the VM is up ([`VmNet::booted`]), so that preparing the next
    /// one does not compete with this boot for the CPU. Blocking: call
    /// from a blocking thread.
    pub fn lease_for_boot(
        self: &Arc<Self>,
        function: &str,
        link: &GuestLink,
    ) -> Result<Option<VmNet>, NetError> {
        self.take(function, link)
    }

    /// Takes a slot for a VM of `function` (a prepared one, else one made
    /// now), gives it `link` and, if the function's policy is not the
    /// default the slot was prepared with, that policy; `None` if the
    /// policy is `none`.
    fn take(self: &Arc<Self>, function: &str, link: &GuestLink) -> Result<Option<VmNet>, NetError> {
        if !self.policy_for(function).has_interface() {
            return Ok(None);
        }
        let (s, prepared) = {
            let mut st = self.slots.lock().expect("slots");
            match st.ready.pop() {
                Some(s) => (s, true),
                None => {
                    let s = st
                        .free
                        .pop_first()
                        .ok_or(NetError::NoSlot(self.cfg.slots))?;
                    (s, false)
                }
            }
        };
        let made = if prepared {
            Ok(())
        } else {
            tracing::debug!(
                slot = s,
                "no prepared network slot: preparing one on the cold path"
            );
            slot::create(&self.names, s, self.base_ruleset())
        };
        // The policy is read, applied and the slot made active under the
        // rules lock: a live policy change comes wholly before (and this
        // reads the new policy) or after (and updates this slot too).
        let attached = made
            .and_then(|()| slot::attach(&self.names, s, link))
            .and_then(|()| {
                let _rules = self.rules.lock().expect("rules");
                let policy = self.policy_for(function);
                if policy != self.cfg.egress {
                    let r = rules::policy_update(self.names.table(), &policy, &self.dns);
                    slot::apply(&self.names, s, r)?;
                }
                self.slots
                    .lock()
                    .expect("slots")
                    .active
                    .insert(s, function.to_owned());
                Ok(())
            });
        if let Err(e) = attached {
            slot::destroy(&self.names, s);
            self.slots.lock().expect("slots").free.insert(s);
            self.refill();
            return Err(e);
        }
        Ok(Some(VmNet {
            net: Arc::clone(self),
            slot: s,
            function: function.to_owned(),
            tenant: Arc::new(Mutex::new(None)),
            released: false,
            relink: matches!(link, GuestLink::Veth { .. }),
            live: Arc::new(Mutex::new(true)),
        }))
    }

    /// A prepared slot's ruleset: the default policy (`[network] egress`),
    /// which most VMs keep. A slot holds no VM until it is taken, and one
    /// taken for a function with another policy gets that policy before
    /// its VMM starts.
    fn base_ruleset(&self) -> String {
        rules::vm_ruleset(self.names.table(), &self.cfg.egress, &self.dns)
    }

    /// Prepares slots on a thread of its own until `ready_slots` are.
    fn refill(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let net = Arc::clone(self);
        std::thread::spawn(move || {
            loop {
                if net.closed.load(Ordering::Acquire) {
                    break;
                }
                let s = {
                    let mut st = net.slots.lock().expect("slots");
                    if st.ready.len() >= net.cfg.ready_slots as usize {
                        break;
                    }
                    match st.free.pop_first() {
                        Some(s) => s,
                        None => break,
                    }
                };
                let made = slot::create(&net.names, s, net.base_ruleset());
                let mut st = net.slots.lock().expect("slots");
                match made {
                    Ok(()) => st.ready.push(s),
                    Err(e) => {
                        st.free.insert(s);
                        tracing::warn!(slot = s, error = %e, "cannot prepare a network slot");
                        break;
                    }
                }
            }
            net.refilling.store(false, Ordering::Release);
        });
    }

    /// Removes the prepared slots and, once no VM holds a slot, the host's
    /// table (the daemon is ending, its VMs destroyed). Blocks up to 30 s
    /// for a slot being prepared.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.refilling.load(Ordering::Acquire) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (ready, active) = {
            let mut st = self.slots.lock().expect("slots");
            (std::mem::take(&mut st.ready), st.active.len())
        };
        for s in ready {
            slot::destroy(&self.names, s);
        }
        if active == 0 {
            let table = self.names.table();
            if let Err(e) = slot::run("nft", &["delete", "table", "inet", table], None) {
                tracing::warn!(error = %e, "cannot remove the host's nft table");
            }
        } else {
            // Its rules still guard those VMs; the next start sweeps it.
            tracing::warn!(
                vms = active,
                "VMs still hold network slots: the host's nft table stays"
            );
        }
    }

    /// Traffic per function and tenant, as Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.traffic.render()
    }

    /// Slot `s`'s VM ended: counts its traffic, then recycles the slot
    /// ([`slot::reset`]) into the prepared ones, or (recycling off, the
    /// pool full, or the reset failing) removes it.
    fn release(&self, s: u32, function: &str, tenant: Option<&str>, relink: bool) {
        match traffic::read(&self.names, s, false) {
            Ok(t) => self.traffic.add(function, tenant.unwrap_or(""), &t),
            Err(e) => tracing::warn!(slot = s, error = %e, "cannot read a VM's traffic counters"),
        }
        // Inactive under the rules lock: a live policy change that still
        // saw the slot active has finished, one after it skips the slot;
        // either way none touches it after the reset below.
        let keep = {
            let _rules = self.rules.lock().expect("rules");
            let mut st = self.slots.lock().expect("slots");
            st.active.remove(&s);
            self.cfg.recycle_slots && st.ready.len() < self.retained_slots()
        };
        if keep {
            match slot::reset(&self.names, s, self.base_ruleset(), relink) {
                Ok(()) => {
                    let mut st = self.slots.lock().expect("slots");
                    if !self.closed.load(Ordering::Acquire) {
                        st.ready.push(s);
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(slot = s, error = %e, "cannot recycle a network slot: removing it");
                }
            }
        }
        slot::destroy(&self.names, s);
        self.slots.lock().expect("slots").free.insert(s);
    }

    /// How many prepared slots recycling keeps: twice `ready_slots`, so
    /// VMs ending and starting at a steady rate neither make nor remove a
    /// namespace (a VM's slot is replaced once it is up, and comes back
    /// when it ends).
    fn retained_slots(&self) -> usize {
        2 * self.cfg.ready_slots as usize
    }
}
