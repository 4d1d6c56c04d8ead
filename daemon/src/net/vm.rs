//! One VM's network ([`VmNet`]): its slot, the VMM's flags and kernel
//! command line, its traffic's tenant.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{slot, traffic, GuestLink, NetError, Network, VMM_BASE_CMDLINE};

/// The network of a VM of `label`'s function from `network` (`None`
/// without networking, or when its policy is `none`). The VMM joins the
/// namespace through its jail: an unjailed VM (`--insecure-no-jail`) gets
/// no network. Call [`VmNet::booted`] once the VM is up.
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
    let net = tokio::task::spawn_blocking(move || {
        network.lease_for_boot(&function, &GuestLink::Tap { uid })
    })
    .await
    .map_err(|e| NetError::Command("a network thread".into(), e.to_string()))??;
    if let (Some(net), Some(tenant)) = (&net, &label.tenant_id) {
        net.set_tenant(tenant);
    }
    Ok(net)
}

/// One VM's network: its slot, given back when dropped (reset for the next
/// VM, or removed: [`Network`]'s `release`).
pub struct VmNet {
    pub(super) net: Arc<Network>,
    pub(super) slot: u32,
    pub(super) function: String,
    /// The tenant its traffic is counted for, once bound.
    pub(super) tenant: Arc<Mutex<Option<String>>>,
    /// Whether the slot was given back already.
    pub(super) released: bool,
    /// Whether its tap was replaced by a test's veth (made again when the
    /// slot is recycled).
    pub(super) relink: bool,
    /// Whether the slot still holds this VM; held while a pooled VM's
    /// counters are read at binding, so that a read never lands on the
    /// slot once it is recycled for another VM.
    pub(super) live: Arc<Mutex<bool>>,
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

    /// The VM is up: has the slot it took replaced in the pool of
    /// prepared slots (not earlier: preparing one would compete with the
    /// boot for the CPU).
    pub fn booted(&self) {
        self.net.refill();
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
        a.extend(rate_args(c));
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
        let live = Arc::clone(&self.live);
        std::thread::spawn(move || {
            let live = live.lock().unwrap_or_else(|p| p.into_inner());
            if !*live {
                // Ended already: its release counted everything as the
                // tenant's.
                return;
            }
            match traffic::read(&net.names, s, true) {
                Ok(t) => net.traffic.add(&function, traffic::UNBOUND, &t),
                Err(e) => {
                    tracing::warn!(slot = s, error = %e, "cannot read a VM's traffic counters")
                }
            }
        });
    }

    /// Gives the slot back now (blocking: when it returns, the slot is reset
    /// for another VM, or its namespace, veth, tap and rules are gone).
    pub fn release(mut self) {
        self.released = true;
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = false;
        let tenant = self.tenant.lock().expect("tenant").clone();
        self.net
            .release(self.slot, &self.function, tenant.as_deref(), self.relink);
        self.net.refill();
    }
}

impl Drop for VmNet {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let net = Arc::clone(&self.net);
        let (s, function, relink) = (self.slot, std::mem::take(&mut self.function), self.relink);
        let tenant = self.tenant.lock().expect("tenant").clone();
        let live = Arc::clone(&self.live);
        // Blocking commands: never on an async worker.
        std::thread::spawn(move || {
            *live.lock().unwrap_or_else(|p| p.into_inner()) = false;
            net.release(s, &function, tenant.as_deref(), relink);
            net.refill();
        });
    }
}

/// silo-vmm's token-bucket flags for `c`'s limits: `BYTES_PER_S[,BURST]`
/// each way (`--net-rx-rate`, `--net-tx-rate`) and `--net-pps`; none for a
/// limit of 0.
pub(crate) fn rate_args(c: &super::NetworkConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    if c.bandwidth_bytes_per_s > 0 {
        let rate = match c.burst_bytes {
            0 => c.bandwidth_bytes_per_s.to_string(),
            burst => format!("{},{burst}", c.bandwidth_bytes_per_s),
        };
        for flag in ["--net-rx-rate", "--net-tx-rate"] {
            a.push(flag.into());
            a.push(rate.clone().into());
        }
    }
    if c.packets_per_s > 0 {
        a.push("--net-pps".into());
        a.push(c.packets_per_s.to_string().into());
    }
    a
}
