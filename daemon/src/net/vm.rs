//! One VM's network ([`VmNet`]): its slot, the VMM's flags and kernel
//! command line, its traffic's tenant.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{slot, traffic, GuestLink, NetError, Network, VMM_BASE_CMDLINE};

/// The network of a VM of `label`'s function from `network` (`None`
/// without networking, or when its policy is `none`). The VMM joins the
/// namespace through its jail: an unjailed VM (`--insecure-no-jail`) gets
/// no network. The function's rules are still being applied when it
/// returns: await [`VmNet::rules_applied`] before using the VM.
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
        network.lease_while_booting(&function, &GuestLink::Tap { uid })
    })
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
    pub(super) net: Arc<Network>,
    pub(super) slot: u32,
    pub(super) function: String,
    /// The tenant its traffic is counted for, once bound.
    pub(super) tenant: Arc<Mutex<Option<String>>>,
    /// Whether the slot was given back already.
    pub(super) released: bool,
    /// The function's rules being applied while the VM boots, if they are.
    pub(super) pending: Option<PendingRules>,
}

/// The thread applying a VM's first rules ([`Network::lease_while_booting`]).
pub(super) struct PendingRules {
    /// Joined before the slot is given back, so that no rules land on a
    /// slot after its release (and on the next VM's).
    pub(super) thread: std::thread::JoinHandle<()>,
    /// Its result, until awaited.
    pub(super) done: Option<tokio::sync::oneshot::Receiver<Result<(), NetError>>>,
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

    /// Waits until the function's rules are in place, if they were being
    /// applied while the VM booted, then has the slot replaced in the pool
    /// (not earlier: preparing it would compete with the boot).
    pub async fn rules_applied(&mut self) -> Result<(), NetError> {
        let Some(rx) = self.pending.as_mut().and_then(|p| p.done.take()) else {
            return Ok(());
        };
        let applied = rx.await.map_err(|_| {
            NetError::Command("applying a VM's rules".into(), "the thread ended".into())
        });
        // The VM is up: now prepare the slot that replaces its own.
        self.net.refill();
        applied?
    }

    /// Joins the thread applying the first rules, if any.
    fn join_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            let _ = p.thread.join();
        }
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
        std::thread::spawn(move || match traffic::read(&net.names, s, true) {
            Ok(t) => net.traffic.add(&function, traffic::UNBOUND, &t),
            Err(e) => tracing::warn!(slot = s, error = %e, "cannot read a VM's traffic counters"),
        });
    }

    /// Gives the slot back now (blocking: namespace, veth, tap and rules
    /// are gone when it returns).
    pub fn release(mut self) {
        self.join_pending();
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
        let pending = self.pending.take();
        // Blocking commands: never on an async worker.
        std::thread::spawn(move || {
            if let Some(p) = pending {
                let _ = p.thread.join();
            }
            net.release(s, &function, tenant.as_deref());
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
