//! Helpers shared by the scheduler's integration tests.

use std::time::Duration;

use silo_scheduler::memory_backend::MemRequest;
use silo_scheduler::{Binding, FunctionKey, TenantId};

/// The binding of function `f` (version `v1`) and tenant `t`.
pub fn binding(f: &str, t: &str) -> Binding {
    Binding {
        function: FunctionKey {
            name: f.into(),
            version: "v1".into(),
        },
        tenant: Some(TenantId::parse(t).unwrap()),
    }
}

/// An invoke of `b` that takes `ms` and crashes its environment if `crash`.
pub fn req(b: &Binding, ms: u64, crash: bool) -> MemRequest {
    MemRequest {
        binding: b.clone(),
        delay: Duration::from_millis(ms),
        crash,
    }
}
