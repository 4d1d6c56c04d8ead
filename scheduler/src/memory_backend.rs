//! An in-memory backend for testing the scheduler's rules: environments are
//! plain values that record which binding they were created for and every
//! request they served, so tests can check isolation after the fact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Backend, Binding, Environment, FunctionKey};

/// A test request: which binding the caller meant, and how the environment
/// should behave.
#[derive(Debug, Clone)]
pub struct MemRequest {
    /// The binding the invocation was scheduled for.
    pub binding: Binding,
    /// Simulated work.
    pub delay: Duration,
    /// Make the environment fail (crash) on this request.
    pub crash: bool,
}

/// What happened, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Journal {
    /// (environment id, binding) at creation.
    pub created: Vec<(u64, Binding)>,
    /// (environment id, binding of the request) per invocation served.
    pub served: Vec<(u64, Binding)>,
    /// Environment ids destroyed, in order.
    pub destroyed: Vec<u64>,
}

/// The in-memory backend.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    /// Shared journal.
    pub journal: Arc<Mutex<Journal>>,
    next: Arc<AtomicU64>,
    /// When set, creations fail.
    pub fail_creates: Arc<std::sync::atomic::AtomicBool>,
    /// How long a creation takes (milliseconds), like a VM boot.
    pub create_ms: Arc<AtomicU64>,
    /// How long a pooled creation takes (milliseconds), the runtime's init
    /// included; 0: as long as any creation (`create_ms`).
    pub create_pooled_ms: Arc<AtomicU64>,
    /// Creations in progress now.
    pub creating: Arc<AtomicU64>,
    /// Most creations ever in progress at once.
    pub creating_max: Arc<AtomicU64>,
    /// What an environment (by id) says it holds while idle, MiB
    /// ([`Environment::held_mib`]); absent: its guest memory.
    pub held: Arc<Mutex<HashMap<u64, u64>>>,
}

/// An in-memory environment.
pub struct MemEnv {
    id: u64,
    binding: Binding,
    served: u64,
    journal: Arc<Mutex<Journal>>,
    held: Arc<Mutex<HashMap<u64, u64>>>,
}

/// Errors of the in-memory backend.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// Creation was set to fail.
    #[error("creation failed (test)")]
    CreateFailed,
    /// The environment crashed.
    #[error("environment {0} crashed (test)")]
    Crashed(u64),
}

impl Backend for MemoryBackend {
    type Env = MemEnv;
    type Error = MemError;
    type Request = MemRequest;
    type Response = (u64, u64);

    async fn create(&self, binding: &Binding) -> Result<MemEnv, MemError> {
        self.create_taking(binding, self.create_ms.load(Ordering::SeqCst))
            .await
    }

    async fn create_pooled(&self, function: &FunctionKey) -> Result<MemEnv, MemError> {
        let binding = Binding {
            function: function.clone(),
            tenant: None,
        };
        let ms = match self.create_pooled_ms.load(Ordering::SeqCst) {
            0 => self.create_ms.load(Ordering::SeqCst),
            ms => ms,
        };
        self.create_taking(&binding, ms).await
    }
}

impl MemoryBackend {
    /// A creation taking `ms` milliseconds.
    async fn create_taking(&self, binding: &Binding, ms: u64) -> Result<MemEnv, MemError> {
        let now = self.creating.fetch_add(1, Ordering::SeqCst) + 1;
        self.creating_max.fetch_max(now, Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else {
            tokio::task::yield_now().await;
        }
        self.creating.fetch_sub(1, Ordering::SeqCst);
        if self.fail_creates.load(Ordering::SeqCst) {
            return Err(MemError::CreateFailed);
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.journal
            .lock()
            .unwrap()
            .created
            .push((id, binding.clone()));
        Ok(MemEnv {
            id,
            binding: binding.clone(),
            served: 0,
            journal: self.journal.clone(),
            held: self.held.clone(),
        })
    }
}

impl Environment for MemEnv {
    type Error = MemError;
    type Request = MemRequest;
    type Response = (u64, u64);

    async fn invoke(&mut self, req: MemRequest) -> Result<(u64, u64), MemError> {
        self.journal
            .lock()
            .unwrap()
            .served
            .push((self.id, req.binding.clone()));
        if !req.delay.is_zero() {
            tokio::time::sleep(req.delay).await;
        }
        if req.crash {
            return Err(MemError::Crashed(self.id));
        }
        self.served += 1;
        let _ = &self.binding;
        Ok((self.id, self.served))
    }

    async fn destroy(self) {
        self.journal.lock().unwrap().destroyed.push(self.id);
    }

    fn held_mib(&self) -> Option<u64> {
        self.held.lock().unwrap().get(&self.id).copied()
    }
}
