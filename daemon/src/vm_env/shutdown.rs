//! Ending a VM: the agent is asked, the VMM killed if need be, its directory
//! removed and its jail given back.

use std::time::Duration;

use silo_proto::asynchronous::write_message;
use silo_proto::Message;

use super::guest_text::guest_text_tail;
use super::VmEnv;

/// How long the `Shutdown` frame may take to be written.
const SHUTDOWN_WRITE: Duration = Duration::from_secs(1);

impl VmEnv {
    /// Asks the agent to end the VM, then makes sure the VMM is gone and its
    /// directory removed.
    /// A broken channel (a failed or timed-out exchange, a VMM gone) is not
    /// written to: the VMM is killed at once. The `Shutdown` frame itself is
    /// written under a short deadline, so a guest that stops reading cannot
    /// hold this either.
    pub async fn shutdown(mut self) {
        // The last REPORT reads the VMM's memory: before the VMM goes.
        self.report_written().await;
        // Whether the VMM ended by itself before being asked (for the
        // failure report below).
        let exited_before = self.child.try_wait().ok().flatten();
        let asked = !self.broken
            && matches!(
                tokio::time::timeout(
                    SHUTDOWN_WRITE,
                    write_message(&mut self.conn, &Message::Shutdown)
                )
                .await,
                Ok(Ok(()))
            );
        if !asked
            || tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
        {
            let _ = self.child.kill().await;
        }
        // Jailed, the spawned process is the jailer: whatever else of the VM
        // is left dies with its cgroup before its directory goes.
        if let Some(lease) = &self.jail {
            lease.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(lease) = self.jail.take() {
            let _ = tokio::task::spawn_blocking(move || lease.release()).await;
        }
        if let Some(net) = self.net.take() {
            let _ = tokio::task::spawn_blocking(move || net.release()).await;
        }
        // The VMM is gone: what it wrote is in the rings within moments.
        self.console.finish(Duration::from_secs(1)).await;
        if let Some((total, kept)) = self.console.serial_stats() {
            tracing::info!(
                function = %self.label.function,
                tenant_id = ?self.label.tenant_id.as_deref().unwrap_or("-"),
                console_bytes_total = total,
                console_bytes_kept = kept,
                "microVM console at shutdown"
            );
        }
        if self.broken {
            // Guest-written bytes: the last few, escaped, once per failed VM.
            let tail = guest_text_tail(&self.console.tail(20));
            tracing::warn!(
                function = %self.label.function,
                tenant_id = ?self.label.tenant_id.as_deref().unwrap_or("-"),
                vmm_exited_before_shutdown = ?exited_before,
                console_tail = %tail,
                "microVM ended after a failure; its console and VMM log end with"
            );
        }
    }
}

impl Drop for VmEnv {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(lease) = &self.jail {
            lease.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // A jail lease still held is released on its own thread.
        drop(self.jail.take());
    }
}
