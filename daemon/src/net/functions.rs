//! The daemon's side of functions' egress policies: stored with the
//! function record (`PUT .../network`), applied live to running VMs.

use std::sync::Arc;

use super::{EgressPolicy, NetError, Network, NetworkConfig};
use crate::state::FunctionError;
use crate::store::FunctionRecord;
use crate::Daemon;

/// Starts networking if `[network] enabled` (else `None`): refuses to
/// start rather than run VMs without their rules.
pub fn start_for(cfg: &NetworkConfig, series: usize) -> Result<Option<Arc<Network>>, NetError> {
    if !cfg.enabled {
        return Ok(None);
    }
    let net = Network::start_with_series(cfg.clone(), series)?;
    tracing::info!(
        prefix = %cfg.name_prefix,
        first_slot = cfg.first_slot,
        slots = cfg.slots,
        ready_slots = cfg.ready_slots,
        "one network per VM: enabled"
    );
    Ok(Some(net))
}

/// Where a function's policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PolicySource {
    /// Set through the API (`PUT .../network`).
    #[serde(rename = "api")]
    Api,
    /// `[network.functions]`.
    #[serde(rename = "configuration")]
    Configuration,
    /// `[network] egress`.
    #[serde(rename = "default")]
    Default,
}

impl Daemon {
    /// The networking of this daemon's VMs, if enabled.
    pub fn network(&self) -> Option<&Arc<Network>> {
        self.scheduler.backend().network()
    }

    /// `rec`'s effective egress policy and where it comes from.
    pub fn egress_policy(&self, rec: &FunctionRecord) -> (EgressPolicy, PolicySource) {
        if let Some(p) = &rec.network {
            return (p.clone(), PolicySource::Api);
        }
        let cfg = &self.config.network;
        match cfg.functions.get(&rec.name) {
            Some(p) => (p.clone(), PolicySource::Configuration),
            None => (cfg.egress.clone(), PolicySource::Default),
        }
    }

    /// Tells the network layer of `rec`'s stored policy (at start).
    pub(crate) fn apply_network(&self, rec: &FunctionRecord) {
        if let (Some(net), Some(p)) = (self.network(), &rec.network) {
            let _ = net.set_policy(&rec.name, Some(p.clone()));
        }
    }

    /// Stores `policy` as function `name`'s and re-applies the rules of its
    /// running VMs; returns the record and how many VMs were updated.
    pub async fn set_egress_policy(
        &self,
        name: &str,
        policy: EgressPolicy,
    ) -> Result<(FunctionRecord, usize), FunctionError> {
        let rec = self.modify(name, |r| r.network = Some(policy.clone()))?;
        let Some(net) = self.network().cloned() else {
            return Ok((rec, 0));
        };
        let function = rec.name.clone();
        let updated = tokio::task::spawn_blocking(move || net.set_policy(&function, Some(policy)))
            .await
            .map_err(|e| NetError::Command("a network thread".into(), e.to_string()))
            .and_then(|r| r)
            .map_err(FunctionError::Network)?;
        Ok((rec, updated))
    }
}
