//! Admission control for cold starts.
//!
//! Booting a microVM is the most expensive thing the scheduler asks of a
//! host, and a burst of new tenants asks for many at once. Booting them all
//! at once makes every boot slower and, past a point, none finishes in time.
//! So at most [`Admission::max_booting`] environments boot at once, and the
//! guest memory of environments booting or booted stays within
//! [`Admission::memory_mib`]; further cold starts wait in one queue of at
//! most [`Admission::queue_capacity`] entries, served in turn by tenant
//! (see [`crate::fair`]). Each waiter carries its invoke's deadline: if the
//! queue is full, or the measured boot time says the environment could not
//! be ready before the deadline, the invoke is refused at once (a
//! throttle), never failed after a long wait. A cold start that is granted
//! a slot on arrival always boots (the estimate judges waits only, so one
//! slow boot cannot refuse every later one).
//!
//! A waiter is served by whichever comes first: a boot slot, or an idle
//! environment of its own binding released by a finished invocation (a warm
//! handoff: a burst of one tenant's invokes needs fewer boots than invokes).
//! Warm invokes never enter the queue.

use std::time::{Duration, Instant};

use crate::fair::Party;
use crate::state::{Grant, Idle};
use crate::{Backend, Binding, Environment, Scheduler, ThrottleReason};

/// Host-wide limits: boots at once, the queue, memory, the pool of
/// unreserved concurrency and each tenant's share of environments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Environments booting at once, at most.
    pub max_booting: usize,
    /// Cold starts waiting for a boot slot, at most.
    pub queue_capacity: usize,
    /// Of the boot slots, the most pool boots (whose runtime init runs
    /// before their slot is freed) may hold at once; raised to 1, lowered
    /// to `max_booting`.
    pub pool_boot_slots: usize,
    /// Guest memory (MiB) of environments booting or booted, host-wide, at
    /// most.
    pub memory_mib: u64,
    /// In-flight invocations of functions without reserved concurrency,
    /// host-wide, at most (Lambda's unreserved account concurrency).
    pub host_concurrency: u32,
    /// Environments one tenant may hold across all functions (busy, idle,
    /// booting or waiting to boot), at most.
    pub tenant_environments: u32,
}

/// The host's memory in MiB (`MemTotal`), if it can be read.
pub fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Smallest guest memory of a function (MiB), the unit the host's
/// concurrency is sized in.
const SMALLEST_GUEST_MIB: u64 = 128;

impl Admission {
    /// The default for this host: as many boots at once as the process may
    /// use CPUs (a boot keeps one CPU busy), at least one; a queue of 256;
    /// half the boot slots for pool boots (at least one); guest memory up
    /// to three quarters of the host's; unreserved concurrency of as many
    /// smallest (128 MiB) guests as that memory holds, at least 16 per CPU
    /// ([`Admission::concurrency_for`]); a quarter of that per tenant (at
    /// least 4).
    pub fn for_host() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory_mib = Self::memory_for(host_memory_mib());
        let host_concurrency = Self::concurrency_for(memory_mib, cpus);
        Self {
            max_booting: cpus.max(1),
            queue_capacity: 256,
            pool_boot_slots: (cpus / 2).max(1),
            memory_mib,
            host_concurrency,
            tenant_environments: (host_concurrency / 4).max(4),
        }
    }

    /// Default guest memory budget: three quarters of `host_mib` (4 GiB
    /// when unknown), at least one smallest guest.
    pub fn memory_for(host_mib: Option<u64>) -> u64 {
        (host_mib.unwrap_or(4096) / 4 * 3).max(SMALLEST_GUEST_MIB)
    }

    /// Default host-wide concurrency: as many smallest guests as
    /// `memory_mib` holds, and at least as many as the CPUs hold (16 per
    /// CPU: a 128 MiB guest's CPU share is about 1/14). Beyond what memory
    /// holds at once, cold starts wait for memory in the admission queue.
    pub fn concurrency_for(memory_mib: u64, cpus: usize) -> u32 {
        let by_memory = memory_mib / SMALLEST_GUEST_MIB;
        let by_cpu = 16 * cpus.max(1) as u64;
        by_memory.max(by_cpu).clamp(1, u64::from(u32::MAX)) as u32
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::for_host()
    }
}

/// Running estimate of one boot's duration (exponentially weighted).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BootEstimate {
    mean: Option<Duration>,
}

impl BootEstimate {
    /// Adds a measured boot.
    pub(crate) fn record(&mut self, d: Duration) {
        self.mean = Some(match self.mean {
            None => d,
            Some(m) => m.mul_f64(0.75) + d.mul_f64(0.25),
        });
    }

    /// The estimate, once a boot has been measured.
    pub(crate) fn mean(&self) -> Option<Duration> {
        self.mean
    }

    /// Whether a cold start that would be `ahead`-th in the queue (1 for
    /// the first) could have its environment ready by `deadline`, with
    /// `slots` boots at once. Without a measurement, it is admitted.
    pub(crate) fn fits(&self, now: Instant, ahead: usize, slots: usize, deadline: Instant) -> bool {
        let Some(boot) = self.mean else {
            return true;
        };
        let wait = boot.mul_f64(ahead as f64 / slots.max(1) as f64);
        now + wait + boot <= deadline
    }
}

/// How a cold start's wait for a boot slot ended.
pub(crate) enum Admitted<E> {
    Boot,
    Warm(Idle<E>),
}

impl<B> Scheduler<B>
where
    B: Backend,
    B::Env: Environment<Request = B::Request, Response = B::Response>,
{
    /// Waits for a boot slot and `mem` MiB of memory (or an idle
    /// environment of `binding`), served in turn by tenant; refuses at once
    /// when the queue is full or the environment could not be ready by
    /// `deadline`.
    pub(crate) async fn admit(
        &self,
        binding: &Binding,
        mem: u64,
        deadline: Instant,
    ) -> Result<Admitted<B::Env>, ThrottleReason> {
        let (ticket, mut rx, evicted) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let waiting = st.queue.iter().filter(|w| !w.pool).count();
            if waiting >= self.admission.queue_capacity {
                st.counters.throttle(ThrottleReason::ColdStartQueueFull);
                return Err(ThrottleReason::ColdStartQueueFull);
            }
            let (ticket, mut rx) = st.enqueue(binding, false, mem);
            let evicted = st.dispatch(&self.admission);
            if let Ok(grant) = rx.try_recv() {
                drop(guard);
                for idle in evicted {
                    self.destroy_later(idle.env, idle.mem);
                }
                return Ok(match grant {
                    Grant::Boot => Admitted::Boot,
                    Grant::Warm(idle) => Admitted::Warm(idle),
                });
            }
            // Not served at once: judged by the estimate (a slot found
            // free always boots; refusing then could refuse forever after
            // one slow boot, since no boot would update the estimate).
            let ahead = st.ahead_of(ticket, &Party::of(binding));
            if !st
                .boot_estimate
                .fits(Instant::now(), ahead, self.admission.max_booting, deadline)
            {
                st.queue.retain(|w| w.ticket != ticket);
                st.counters.throttle(ThrottleReason::ColdStartDeadline);
                drop(guard);
                for idle in evicted {
                    self.destroy_later(idle.env, idle.mem);
                }
                return Err(ThrottleReason::ColdStartDeadline);
            }
            (ticket, rx, evicted)
        };
        for idle in evicted {
            self.destroy_later(idle.env, idle.mem);
        }
        let grant = match tokio::time::timeout_at(deadline.into(), &mut rx).await {
            Ok(Ok(g)) => Some(g),
            Ok(Err(_)) => None,
            Err(_) => {
                // Timed out: leave the queue, unless a grant raced the timer.
                let mut st = self.lock();
                let before = st.queue.len();
                st.queue.retain(|w| w.ticket != ticket);
                if st.queue.len() == before {
                    drop(st);
                    rx.try_recv().ok()
                } else {
                    None
                }
            }
        };
        match grant {
            Some(Grant::Boot) => Ok(Admitted::Boot),
            Some(Grant::Warm(idle)) => Ok(Admitted::Warm(idle)),
            None => {
                self.lock()
                    .counters
                    .throttle(ThrottleReason::ColdStartDeadline);
                Err(ThrottleReason::ColdStartDeadline)
            }
        }
    }

    /// A boot ended (`Some(duration)` if it succeeded; `party` is None for
    /// a pool boot): its slot, and its memory if it failed, go to the next
    /// waiters. A pool boot's duration (its runtime's init included) is not
    /// a cold start's and is not recorded in the estimate.
    pub(crate) fn boot_done(&self, took: Option<Duration>, party: Option<&Party>, mem: u64) {
        {
            let mut st = self.lock();
            st.boot_ended(party, mem, took.is_some());
            if let (Some(d), Some(_)) = (took, party) {
                st.boot_estimate.record(d);
            }
        }
        self.dispatch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_follows_measurements() {
        let mut e = BootEstimate::default();
        assert!(e.mean().is_none());
        e.record(Duration::from_secs(4));
        assert_eq!(e.mean(), Some(Duration::from_secs(4)));
        e.record(Duration::from_secs(8));
        assert_eq!(e.mean(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn fits_refuses_only_what_cannot_be_ready() {
        let now = Instant::now();
        let mut e = BootEstimate::default();
        assert!(e.fits(now, 1000, 1, now));
        e.record(Duration::from_secs(2));
        // 4 ahead over 2 slots: ~4 s of waiting plus a 2 s boot.
        assert!(e.fits(now, 4, 2, now + Duration::from_secs(6)));
        assert!(!e.fits(now, 4, 2, now + Duration::from_secs(5)));
    }

    #[test]
    fn host_default_has_a_slot() {
        let a = Admission::for_host();
        assert!(a.max_booting >= 1 && a.queue_capacity > 0);
    }
}
