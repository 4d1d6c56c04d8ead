//! A VM's side of tenant credentials: whose it gets (its binding's, never
//! another's), fetched while it boots, sent to its agent before each invoke.

use std::sync::Arc;
use std::time::Duration;

use silo_proto::{Message, TenantCredentials};
use silo_scheduler::Binding;

use super::{sts, Broker, TenantRole};
use crate::vm_backend::VmBackend;
use crate::vm_env::{EnvError, VmEnv};

impl VmBackend {
    /// The tenant-credentials broker.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Sets the tenant role of the registered function version
    /// `version_key`.
    pub fn set_tenant_role(&self, version_key: &str, role: Option<TenantRole>) {
        let mut fns = self.functions.lock().expect("functions lock");
        if let Some(image) = fns.get_mut(version_key) {
            let mut changed = (**image).clone();
            changed.tenant_role = role;
            *image = Arc::new(changed);
        }
    }

    /// The credentials side of a new VM of `binding`, if its function has a
    /// tenant role (started at once for a bound VM: see
    /// [`VmCredentials::start`]).
    pub(crate) fn vm_credentials(&self, binding: &Binding) -> Option<VmCredentials> {
        let (role, timeout_s) = {
            let fns = self.functions.lock().expect("functions lock");
            let image = fns.get(&binding.function.version)?;
            (image.tenant_role.clone()?, image.config.timeout_s)
        };
        let tenant = binding.tenant.as_ref().map(|t| t.as_str());
        Some(VmCredentials::start(
            &self.broker,
            role,
            &binding.function.name,
            tenant,
            Duration::from_secs(u64::from(timeout_s)),
        ))
    }
}

/// How long credentials handed to a VM must stay valid: its function's
/// timeout and a minute (the broker adds its floor and ceiling).
pub fn validity(timeout: Duration) -> Duration {
    timeout + Duration::from_secs(60)
}

/// The credentials side of one VM of a function with a tenant role.
pub struct VmCredentials {
    broker: Arc<Broker>,
    role: TenantRole,
    /// The function's timeout.
    timeout: Duration,
    /// The tenant whose credentials the VM got first (a pooled VM's is its
    /// first invoke's): it never gets another's.
    tenant: Option<String>,
}

impl VmCredentials {
    /// For a VM of a function with `role` and `timeout`; when the VM is
    /// bound to `tenant` already (a cold start), starts getting its
    /// credentials now, while the VM boots.
    pub fn start(
        broker: &Arc<Broker>,
        role: TenantRole,
        function: &str,
        tenant: Option<&str>,
        timeout: Duration,
    ) -> Self {
        if let Some(t) = tenant {
            broker.prefetch(function, t, &role, validity(timeout));
        }
        Self {
            broker: broker.clone(),
            role,
            timeout,
            tenant: None,
        }
    }

    /// The tenant an invoke for `invoked` may get credentials of, in a VM
    /// bound to `bound` (a pooled VM: none until its first invoke): the
    /// binding's, and always the same one.
    fn tenant_for(&self, bound: Option<&str>, invoked: Option<&str>) -> Result<String, EnvError> {
        let tenant = match (bound, invoked) {
            (Some(b), Some(t)) if b == t => t,
            (None, Some(t)) => t,
            _ => {
                return Err(EnvError::Protocol(
                    "an invoke for another tenant than the VM's binding".into(),
                ))
            }
        };
        if self.tenant.as_deref().is_some_and(|first| first != tenant) {
            return Err(EnvError::Protocol(
                "a VM that had one tenant's credentials was asked to serve another".into(),
            ));
        }
        Ok(tenant.to_string())
    }

    /// Sends `env`, a VM of `binding`, its tenant's credentials before the
    /// invoke `msg`.
    pub async fn push(
        &mut self,
        env: &mut VmEnv,
        binding: &Binding,
        msg: &Message,
    ) -> Result<(), EnvError> {
        let Message::Invoke { tenant_id, .. } = msg else {
            return Ok(());
        };
        let bound = binding.tenant.as_ref().map(|t| t.as_str());
        let function = binding.function.name.as_str();
        let tenant = self.tenant_for(bound, tenant_id.as_deref())?;
        let c = self
            .broker
            .credentials(function, &tenant, &self.role, validity(self.timeout))
            .await?;
        self.tenant = Some(tenant);
        env.send(&Message::Credentials(TenantCredentials {
            access_key_id: c.issued.access_key_id,
            secret_access_key: c.issued.secret_access_key,
            token: c.issued.session_token,
            expiration: sts::format_rfc3339(c.issued.expiration_unix),
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> VmCredentials {
        VmCredentials {
            broker: Broker::new(),
            role: TenantRole {
                role_arn: "arn:aws:iam::123456789012:role/r".into(),
                sts_endpoint: None,
                sts_region: None,
                duration_seconds: 900,
                session_policy: r#"{"S":"${tenant_id}"}"#.into(),
            },
            timeout: Duration::from_secs(3),
            tenant: None,
        }
    }

    /// The binding decides: a bound VM gets only its tenant's; a pooled
    /// VM only its first invoke's tenant's, ever.
    #[tokio::test]
    async fn a_vm_only_ever_gets_its_bindings_tenant() {
        let c = creds();
        assert_eq!(c.tenant_for(Some("A"), Some("A")).unwrap(), "A");
        assert!(c.tenant_for(Some("A"), Some("B")).is_err());
        assert!(c.tenant_for(Some("A"), None).is_err());
        assert!(c.tenant_for(None, None).is_err());
        let mut pooled = creds();
        assert_eq!(pooled.tenant_for(None, Some("A")).unwrap(), "A");
        pooled.tenant = Some("A".into());
        assert_eq!(pooled.tenant_for(None, Some("A")).unwrap(), "A");
        assert!(pooled.tenant_for(None, Some("B")).is_err());
    }
}
