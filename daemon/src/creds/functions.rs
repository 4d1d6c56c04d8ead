//! The daemon's side of functions' tenant roles: the effective role (the
//! API's over the configuration's) and the broker's cache per function.

use super::TenantRole;
use crate::store::FunctionRecord;
use crate::Daemon;

impl Daemon {
    /// `rec`'s effective tenant role: the API's, else the configuration's
    /// (`PER_TENANT` functions only).
    pub fn tenant_role(&self, rec: &FunctionRecord) -> Option<TenantRole> {
        if !rec.per_tenant {
            return None;
        }
        rec.tenant_role
            .clone()
            .or_else(|| self.config.tenant_roles.get(&rec.name).cloned())
    }

    /// Drops function `name`'s cached tenant credentials (its role changed,
    /// or it is deleted).
    pub fn forget_credentials(&self, name: &str) {
        self.scheduler.backend().broker().forget_function(name);
    }
}
