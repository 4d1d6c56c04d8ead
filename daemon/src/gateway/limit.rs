//! Per-tenant rate limits at the gateway: each tenant (the verified
//! token's; requests without a tenant share one bucket) may send
//! `tenant_rps` requests per second sustained and `tenant_burst` at once
//! (GCRA, governor); beyond, 429. One tenant's flood therefore costs
//! others nothing at the front door.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::DefaultClock;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Requests between two sweeps of idle tenants' state.
const SWEEP_EVERY: u64 = 4096;

/// Keyed by tenant id (`""`: no tenant).
pub struct TenantLimiter {
    limiter: RateLimiter<String, HashMapStateStore<String>, DefaultClock>,
    seen: AtomicU64,
}

impl TenantLimiter {
    /// `None` when `rps` is 0 (no limit).
    pub fn new(rps: u32, burst: u32) -> Option<Self> {
        let rps = NonZeroU32::new(rps)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rps);
        Some(Self {
            limiter: RateLimiter::hashmap(Quota::per_second(rps).allow_burst(burst)),
            seen: AtomicU64::new(0),
        })
    }

    /// Whether `tenant` may send one more request now.
    pub fn check(&self, tenant: &str) -> bool {
        if self.seen.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Tenants whose buckets are full again need no state.
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&tenant.to_string()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenants_burst_does_not_touch_another() {
        let l = TenantLimiter::new(1, 3).unwrap();
        let a: Vec<bool> = (0..5).map(|_| l.check("tenant-A")).collect();
        assert_eq!(a, [true, true, true, false, false]);
        assert!(l.check("tenant-B"));
        assert!(TenantLimiter::new(0, 0).is_none());
    }
}
