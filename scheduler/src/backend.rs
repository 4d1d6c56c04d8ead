//! The traits environments are reached through: VMs in the daemon, an
//! in-memory backend in tests.

use std::future::Future;

use crate::{Binding, FunctionKey};

/// Creates environments.
pub trait Backend: Send + Sync + 'static {
    /// The environment type.
    type Env: Environment<Error = Self::Error>;
    /// Errors of creation and of environments.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Invocation request.
    type Request: Send + 'static;
    /// Invocation response.
    type Response: Send + 'static;
    /// Creates an environment bound to `binding`.
    fn create(
        &self,
        binding: &Binding,
    ) -> impl Future<Output = Result<Self::Env, Self::Error>> + Send;
    /// Creates an environment for `function`'s pool, bound to no tenant
    /// and returned only once the function's init has run (Lambda's init
    /// phase), so that the tenant who takes it waits for no init. By
    /// default, [`Backend::create`] with no tenant.
    fn create_pooled(
        &self,
        function: &FunctionKey,
    ) -> impl Future<Output = Result<Self::Env, Self::Error>> + Send {
        let binding = Binding {
            function: function.clone(),
            tenant: None,
        };
        async move { self.create(&binding).await }
    }
}

/// One execution environment.
pub trait Environment: Send + 'static {
    /// Errors; any error destroys the environment.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Invocation request.
    type Request: Send + 'static;
    /// Invocation response.
    type Response: Send + 'static;
    /// Runs one invocation.
    fn invoke(
        &mut self,
        req: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send;
    /// Releases the environment (its VM and memory).
    fn destroy(self) -> impl Future<Output = ()> + Send;
    /// Host memory (MiB) this environment holds while idle, when its
    /// backend knows it to be less than its guest memory (paged out while
    /// idle); `None`: its guest memory. An idle environment is charged
    /// this against the host's budget ([`crate::Scheduler::recharge_idle`])
    /// and its full guest memory again once an invocation takes it.
    fn held_mib(&self) -> Option<u64> {
        None
    }
}
