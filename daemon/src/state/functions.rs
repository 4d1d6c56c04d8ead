//! The daemon's functions: registering their images, creating, changing
//! (code, configuration, pool size, reserved concurrency) and deleting them.

use silo_proto::AgentConfig;

use super::{Daemon, FunctionError};
use crate::store::{FunctionRecord, StoreError};
use crate::vm_backend::RegisterError;

impl Daemon {
    pub(crate) fn register(&self, rec: &FunctionRecord, code: &[u8]) -> Result<(), RegisterError> {
        let mut environment = rec.environment.clone();
        environment.extend(rec.logging.runtime_environment(&rec.name));
        let cfg = AgentConfig {
            function_name: rec.name.clone(),
            function_arn: self.arn(&rec.name),
            handler: rec.handler.clone(),
            memory_mib: rec.memory_mib,
            timeout_s: rec.timeout_s,
            environment,
            region: self.config.region.clone(),
            container_credentials: self.tenant_role(rec).is_some(),
            ..AgentConfig::default()
        };
        self.scheduler.backend().register(
            &Self::key(rec).version,
            &self.images.agent,
            cfg,
            code,
            &rec.runtime,
            rec.logging.clone(),
        )?;
        self.scheduler
            .backend()
            .set_tenant_role(&Self::key(rec).version, self.tenant_role(rec));
        Ok(())
    }

    /// A function's record.
    pub fn get(&self, name: &str) -> Option<FunctionRecord> {
        self.lock().get(name).cloned()
    }

    /// Every function, by name.
    pub fn list(&self) -> Vec<FunctionRecord> {
        self.lock().values().cloned().collect()
    }

    /// Adds a function (the caller checked the package). `Ok(false)` if the
    /// name is taken.
    pub fn create(&self, rec: FunctionRecord, code: &[u8]) -> Result<bool, FunctionError> {
        if self.lock().contains_key(&rec.name) {
            return Ok(false);
        }
        self.register(&rec, code)?;
        // Pinned until the record naming it is written: a concurrent
        // delete's collection cannot take it in between.
        let _pin = self.store.put_code(&rec.code_sha256, code)?;
        let mut fns = self.lock();
        if fns.contains_key(&rec.name) {
            return Ok(false);
        }
        self.store.put(&rec)?;
        tracing::info!(function = %rec.name, per_tenant = rec.per_tenant, code_sha256 = %rec.code_sha256, "function created");
        self.scheduler.activate(&Self::key(&rec));
        self.apply_pool(&rec);
        fns.insert(rec.name.clone(), rec);
        Ok(true)
    }

    /// The pool size in force for `rec`: set through the API, else the
    /// configuration's `[pools]` entry, else none.
    pub fn pool_size(&self, rec: &FunctionRecord) -> u32 {
        rec.pool_size
            .or_else(|| self.config.pools.get(&rec.name).copied())
            .unwrap_or(0)
    }

    /// Keeps `rec`'s pool at its size (in the background).
    pub(crate) fn apply_pool(&self, rec: &FunctionRecord) {
        let (scheduler, key, size, limits) = (
            self.scheduler.clone(),
            Self::key(rec),
            self.pool_size(rec) as usize,
            self.limits(rec),
        );
        if size > 0 || rec.pool_size.is_some() {
            tracing::info!(function = %rec.name, pool_size = size, "pool of pre-booted environments");
        }
        tokio::spawn(async move {
            scheduler.set_pool(&key, size, &limits).await;
        });
    }

    /// Changes the pool size of function `name` (`None`: back to the
    /// configuration's) and applies it; returns the record as stored.
    pub fn set_pool(&self, name: &str, size: Option<u32>) -> Result<FunctionRecord, FunctionError> {
        let rec = self.modify(name, |r| r.pool_size = size)?;
        self.apply_pool(&rec);
        Ok(rec)
    }

    /// Changes the record of function `name` with `change` and stores it,
    /// read and written under one lock: a change made meanwhile (new code by
    /// [`Daemon::update`]) is never written back over.
    pub(crate) fn modify(
        &self,
        name: &str,
        change: impl FnOnce(&mut FunctionRecord),
    ) -> Result<FunctionRecord, FunctionError> {
        let mut fns = self.lock();
        let rec = fns.get_mut(name).ok_or(FunctionError::Deleted)?;
        let mut changed = rec.clone();
        change(&mut changed);
        self.store.put(&changed)?;
        *rec = changed.clone();
        Ok(changed)
    }

    /// Serializes changes of function `name`'s code and configuration
    /// (UpdateFunctionCode, UpdateFunctionConfiguration): hold it from
    /// reading the record to [`Daemon::update`]'s return, so that revisions
    /// reach the store and the scheduler in the same order.
    pub async fn changing(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The pool's (ready, booting) environments for function `name`.
    pub fn pool_state(&self, name: &str) -> (usize, usize) {
        self.scheduler
            .stats()
            .pools
            .get(name)
            .map_or((0, 0), |p| (p.1, p.2))
    }

    /// Replaces a function's record: new code or configuration means a new
    /// revision; environments of the old one finish their work and go.
    /// Callers hold [`Daemon::changing`] from reading `rec` on; its reserved
    /// concurrency and pool size are taken from the record as it is now.
    /// Returns the record as stored.
    pub async fn update(
        &self,
        rec: FunctionRecord,
        code: &[u8],
    ) -> Result<FunctionRecord, FunctionError> {
        self.register(&rec, code)?;
        let pin = self.store.put_code(&rec.code_sha256, code)?;
        let mut rec = rec;
        let old = {
            let mut fns = self.lock();
            let Some(current) = fns.get(&rec.name) else {
                drop(fns);
                self.scheduler
                    .backend()
                    .unregister(&Self::key(&rec).version);
                return Err(FunctionError::Deleted);
            };
            // Reserved concurrency and pool size are [`Daemon::modify`]'s:
            // as they are now, not as they were when `rec` was read.
            rec.reserved_concurrency = current.reserved_concurrency;
            rec.pool_size = current.pool_size;
            self.store.put(&rec)?;
            fns.insert(rec.name.clone(), rec.clone())
        };
        drop(pin);
        let drained = self.scheduler.set_current_version(&Self::key(&rec)).await;
        self.apply_pool(&rec);
        self.store.collect_code();
        if let Some(old) = old {
            self.scheduler
                .backend()
                .unregister(&Self::key(&old).version);
        }
        tracing::info!(function = %rec.name, revision_id = %rec.revision_id, idle_environments_destroyed = drained, "function updated");
        Ok(rec)
    }

    /// A stored package.
    pub fn code(&self, sha256_hex: &str) -> Result<Vec<u8>, StoreError> {
        self.store.code(sha256_hex)
    }

    /// Changes the reserved concurrency of function `name` (no new
    /// revision: environments stay; the new limit applies to the next
    /// invocation); returns the record as stored.
    pub fn set_concurrency(
        &self,
        name: &str,
        reserved: Option<u32>,
    ) -> Result<FunctionRecord, FunctionError> {
        self.modify(name, |r| r.reserved_concurrency = reserved)
    }

    /// Deletes a function and destroys its environments (busy ones when
    /// their invocation ends). `Ok(false)` if there was no such function.
    pub async fn delete(&self, name: &str) -> Result<bool, FunctionError> {
        let old = {
            let mut fns = self.lock();
            if !fns.contains_key(name) {
                return Ok(false);
            }
            self.store.delete(name)?;
            fns.remove(name)
        };
        if let Some(net) = self.network() {
            let _ = net.set_policy(name, None);
        }
        self.forget_credentials(name);
        let destroyed = self.scheduler.retire_function(name).await;
        if let Some(old) = old {
            self.scheduler
                .backend()
                .unregister(&Self::key(&old).version);
        }
        tracing::info!(function = %name, environments_destroyed = destroyed, "function deleted");
        Ok(true)
    }
}
