//! One network per VM (`[network]`, off by default): each VM's VMM joins a
//! network namespace of its own, prepared ahead of time (a small pool of
//! ready slots), with a tap for the guest and a veth pair to the host; the
//! guest's egress is filtered by nftables in the namespace (always-denied
//! ranges, then the function's [`EgressPolicy`]) and again on the host
//! (nothing reaches the host itself or another VM). The address scheme is
//! in [`slot`], the rules in [`rules`]; docs/ARCHITECTURE.md and
//! docs/SECURITY.md describe the model.

mod functions;
pub mod policy;
pub mod rules;
pub mod slot;
pub mod traffic;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

pub use functions::{start_for, PolicySource};
pub use policy::{AllowEntry, EgressPolicy, PolicyError};
pub use slot::GuestLink;
use slot::Names;

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
                if let Err(e) =
                    slot::in_netns(&path, move || slot::run("nft", &["-f", "-"], Some(&table)))
                {
                    missing.push(format!("nftables in a namespace ({e})"));
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
        for s in &slots {
            slot::apply(&self.names, *s, ruleset.clone())?;
        }
        Ok(slots.len())
    }

    /// A network for one VM of `function`, or `None` if its policy is
    /// `none` (no interface at all). Blocking: call from a blocking thread.
    pub fn lease(
        self: &Arc<Self>,
        function: &str,
        link: &GuestLink,
    ) -> Result<Option<VmNet>, NetError> {
        let policy = self.policy_for(function);
        if !policy.has_interface() {
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
        let ruleset = rules::vm_ruleset(self.names.table(), &policy, &self.dns);
        let made = if prepared {
            Ok(())
        } else {
            tracing::debug!(
                slot = s,
                "no prepared network slot: preparing one on the cold path"
            );
            slot::create(&self.names, s, self.base_ruleset())
        };
        let attached = made.and_then(|()| slot::attach(&self.names, s, link, ruleset));
        if let Err(e) = attached {
            slot::destroy(&self.names, s);
            self.slots.lock().expect("slots").free.insert(s);
            self.refill();
            return Err(e);
        }
        self.slots
            .lock()
            .expect("slots")
            .active
            .insert(s, function.to_owned());
        self.refill();
        Ok(Some(VmNet {
            net: Arc::clone(self),
            slot: s,
            function: function.to_owned(),
            tenant: Arc::new(Mutex::new(None)),
            released: false,
        }))
    }

    /// A prepared slot's ruleset: nothing passes until a VM's policy
    /// replaces it.
    fn base_ruleset(&self) -> String {
        rules::vm_ruleset(self.names.table(), &EgressPolicy::None, &[])
    }

    /// Prepares slots on a thread of its own until `ready_slots` are.
    fn refill(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let net = Arc::clone(self);
        std::thread::spawn(move || {
            loop {
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

    /// Removes the prepared slots (the daemon is ending).
    pub fn close(&self) {
        let ready = std::mem::take(&mut self.slots.lock().expect("slots").ready);
        for s in ready {
            slot::destroy(&self.names, s);
        }
    }

    /// Traffic per function and tenant, as Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.traffic.render()
    }

    fn release(&self, s: u32, function: &str, tenant: Option<&str>) {
        match traffic::read(&self.names, s, false) {
            Ok(t) => self.traffic.add(function, tenant.unwrap_or(""), &t),
            Err(e) => tracing::warn!(slot = s, error = %e, "cannot read a VM's traffic counters"),
        }
        slot::destroy(&self.names, s);
        let mut st = self.slots.lock().expect("slots");
        st.active.remove(&s);
        st.free.insert(s);
    }
}

/// The network of a VM of `label`'s function from `network` (`None`
/// without networking, or when its policy is `none`). The VMM joins the
/// namespace through its jail: an unjailed VM (`--insecure-no-jail`) gets
/// no network.
pub async fn attach(
    network: Option<&Arc<Network>>,
    label: &crate::vm_env::VmLabel,
    jail_uid: Option<u32>,
) -> Result<Option<VmNet>, NetError> {
    let Some(network) = network else {
        return Ok(None);
    };
    let Some(uid) = jail_uid else {
        tracing::warn!(
            function = %label.function,
            tenant_id = ?label.tenant_id.as_deref().unwrap_or("-"),
            "an unjailed microVM gets no network"
        );
        return Ok(None);
    };
    let (network, function) = (Arc::clone(network), label.function.clone());
    let net =
        tokio::task::spawn_blocking(move || network.lease(&function, &GuestLink::Tap { uid }))
            .await
            .map_err(|e| NetError::Command("a network thread".into(), e.to_string()))??;
    if let (Some(net), Some(tenant)) = (&net, &label.tenant_id) {
        net.set_tenant(tenant);
    }
    Ok(net)
}

/// One VM's network: its slot, given back (namespace, veth, tap and rules
/// removed) when dropped.
pub struct VmNet {
    net: Arc<Network>,
    slot: u32,
    function: String,
    /// The tenant its traffic is counted for, once bound.
    tenant: Arc<Mutex<Option<String>>>,
    /// Whether the slot was given back already.
    released: bool,
}

impl std::fmt::Debug for VmNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmNet").field("slot", &self.slot).finish()
    }
}

impl VmNet {
    /// The slot number.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The namespace's file (what the VMM's jail enters).
    pub fn netns_path(&self) -> PathBuf {
        self.net.names.netns_path(self.slot)
    }

    /// The namespace's name (`ip netns`).
    pub fn netns(&self) -> String {
        self.net.names.netns(self.slot)
    }

    /// The host end of the slot's veth pair.
    pub fn host_veth(&self) -> String {
        self.net.names.host_veth(self.slot)
    }

    /// The kernel command line: the VMM's default plus the guest's
    /// addressing (`ip=`) and resolvers (`silo.dns=`).
    pub fn cmdline(&self) -> String {
        let mut s = format!(
            "{VMM_BASE_CMDLINE} ip={}::{}:255.255.255.252::eth0:off",
            slot::GUEST_ADDR,
            slot::GATEWAY_ADDR
        );
        if !self.net.dns.is_empty() {
            let list: Vec<String> = self.net.dns.iter().map(ToString::to_string).collect();
            s.push_str(&format!(" silo.dns={}", list.join(",")));
        }
        s
    }

    /// The VMM's arguments for this network: `--jail-netns`, `--net-tap`,
    /// the rate limits, and `--cmdline`.
    pub fn vmm_args(&self) -> Vec<OsString> {
        let c = &self.net.cfg;
        let mut a: Vec<OsString> = vec![
            "--jail-netns".into(),
            self.netns_path().into(),
            "--net-tap".into(),
            slot::TAP.into(),
            "--cmdline".into(),
            self.cmdline().into(),
        ];
        for (flag, v) in [
            ("--net-bandwidth-bytes-per-s", c.bandwidth_bytes_per_s),
            ("--net-burst-bytes", c.burst_bytes),
            ("--net-packets-per-s", c.packets_per_s),
        ] {
            if v > 0 {
                a.push(flag.into());
                a.push(v.to_string().into());
            }
        }
        a
    }

    /// Counts the VM's traffic for `tenant` from now on (a VM booted for
    /// that tenant: nothing was sent before).
    pub fn set_tenant(&self, tenant: &str) {
        self.tenant
            .lock()
            .expect("tenant")
            .get_or_insert_with(|| tenant.to_owned());
    }

    /// A pooled VM taken by `tenant`: what it sent until now is counted as
    /// no tenant's ([`traffic::UNBOUND`]), the rest as `tenant`'s. The
    /// counters are read on a thread of their own, so packets of the first
    /// moments after binding may count as unbound.
    pub fn bind(&self, tenant: &str) {
        {
            let mut t = self.tenant.lock().expect("tenant");
            if t.is_some() {
                return;
            }
            *t = Some(tenant.to_owned());
        }
        let (net, s, function) = (Arc::clone(&self.net), self.slot, self.function.clone());
        std::thread::spawn(move || match traffic::read(&net.names, s, true) {
            Ok(t) => net.traffic.add(&function, traffic::UNBOUND, &t),
            Err(e) => tracing::warn!(slot = s, error = %e, "cannot read a VM's traffic counters"),
        });
    }

    /// Gives the slot back now (blocking: namespace, veth, tap and rules
    /// are gone when it returns).
    pub fn release(mut self) {
        self.released = true;
        let tenant = self.tenant.lock().expect("tenant").clone();
        self.net
            .release(self.slot, &self.function, tenant.as_deref());
        self.net.refill();
    }
}

impl Drop for VmNet {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let net = Arc::clone(&self.net);
        let (s, function) = (self.slot, std::mem::take(&mut self.function));
        let tenant = self.tenant.lock().expect("tenant").clone();
        // Blocking commands: never on an async worker.
        std::thread::spawn(move || {
            net.release(s, &function, tenant.as_deref());
            net.refill();
        });
    }
}
