//! Admission control for cold starts.
//!
//! Booting a microVM is the most expensive thing the scheduler asks of a
//! host, and a burst of new tenants asks for many at once. Booting them all
//! at once makes every boot slower and, past a point, none finishes in time.
//! So at most [`Admission::max_booting`] environments boot at once; further
//! cold starts wait in one first-come, first-served queue of at most
//! [`Admission::queue_capacity`] entries, served in arrival order, except
//! that a waiter whose tenant already has an environment booting or busy
//! lets the first waiter of a tenant with none go first (new tenants are not
//! held up by a second boot for one tenant). Each waiter carries its invoke's
//! deadline: if the queue is full, or the measured boot time says the
//! environment could not be ready before the deadline, the invoke is
//! refused at once (a throttle), never failed after a long wait. A cold
//! start that finds a slot free always boots (the estimate judges waits
//! only, so one slow boot cannot refuse every later one).
//!
//! A waiter is served by whichever comes first: a boot slot, or an idle
//! environment of its own binding released by a finished invocation (a warm
//! handoff: a burst of one tenant's invokes needs fewer boots than invokes).
//! Warm invokes never enter the queue.

use std::time::{Duration, Instant};

use crate::state::{Grant, Idle, Waiter};
use crate::{Backend, Binding, Environment, Scheduler, ThrottleReason};

/// Limits on environments booting at once, host-wide.
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
}

impl Admission {
    /// The default for this host: as many boots at once as the process may
    /// use CPUs (a boot keeps one CPU busy), at least one; a queue of 256;
    /// half the boot slots for pool boots (at least one).
    pub fn for_host() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            max_booting: cpus.max(1),
            queue_capacity: 256,
            pool_boot_slots: (cpus / 2).max(1),
        }
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
    /// Waits for a boot slot (or an idle environment of `binding`) in
    /// arrival order; refuses at once when the queue is full or the
    /// environment could not be ready by `deadline`.
    pub(crate) async fn admit(
        &self,
        binding: &Binding,
        deadline: Instant,
    ) -> Result<Admitted<B::Env>, ThrottleReason> {
        let (ticket, rx) = {
            let mut st = self.lock();
            let st = &mut *st;
            let now = Instant::now();
            // A free slot always boots: the estimate only judges waits (and
            // refusing here could refuse forever after one slow boot, since
            // no boot would then ever update the estimate).
            if st.booting < self.admission.max_booting && st.queue.iter().all(|w| w.pool) {
                st.booting += 1;
                st.peak_booting = st.peak_booting.max(st.booting);
                st.counters.cold_starts += 1;
                return Ok(Admitted::Boot);
            }
            let invoke_waiters = st.queue.iter().filter(|w| !w.pool).count();
            let refuse = if invoke_waiters >= self.admission.queue_capacity {
                Some(ThrottleReason::ColdStartQueueFull)
            } else if !st.boot_estimate.fits(
                now,
                invoke_waiters + 1,
                self.admission.max_booting,
                deadline,
            ) {
                Some(ThrottleReason::ColdStartDeadline)
            } else {
                None
            };
            if let Some(reason) = refuse {
                st.counters.throttle(reason);
                return Err(reason);
            }
            st.enqueue(binding, false)
        };
        let mut rx = rx;
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

    /// A boot ended (`Some(duration)` if it succeeded; `pool`: a pool
    /// boot): its slot goes to the first waiter. A pool boot's duration
    /// (its runtime's init included) is not a cold start's and is not
    /// recorded in the estimate.
    pub(crate) fn boot_done(&self, took: Option<Duration>, pool: bool) {
        let mut st = self.lock();
        let st = &mut *st;
        st.booting = st.booting.saturating_sub(1);
        if pool {
            st.pool_booting = st.pool_booting.saturating_sub(1);
        }
        match took {
            Some(d) if !pool => st.boot_estimate.record(d),
            Some(_) => {}
            None => st.counters.create_failures += 1,
        }
        while st.booting < self.admission.max_booting && !st.queue.is_empty() {
            // Arrival order, but a waiter whose tenant already has an
            // environment booting or busy lets the first waiter of a tenant
            // with none go first: its own will likely be handed one.
            let has_env = |w: &Waiter<B::Env>| {
                let in_flight = st
                    .functions
                    .get(&w.binding.function.name)
                    .and_then(|f| f.tenant_in_flight.get(&w.binding.tenant))
                    .copied()
                    .unwrap_or(0) as usize;
                let waiting = st.queue.iter().filter(|o| o.binding == w.binding).count();
                in_flight > waiting
            };
            // Pool boots only within their share of the slots.
            let pool_room = st.pool_booting < self.admission.pool_boot_slots;
            let pick = st
                .queue
                .iter()
                .position(|w| !w.pool && !has_env(w))
                .or_else(|| st.queue.iter().position(|w| !w.pool))
                .or_else(|| pool_room.then_some(0));
            let Some(w) = pick.and_then(|i| st.queue.remove(i)) else {
                break;
            };
            st.booting += 1;
            st.pool_booting += usize::from(w.pool);
            st.peak_booting = st.peak_booting.max(st.booting);
            let cold = u64::from(!w.pool);
            st.counters.cold_starts += cold;
            if w.tx.send(Grant::Boot).is_err() {
                st.booting -= 1;
                st.pool_booting -= usize::from(w.pool);
                st.counters.cold_starts -= cold;
            }
        }
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
