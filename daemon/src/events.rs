//! The queue of asynchronous (Event) invocations.
//!
//! Bounded three ways, so that `limits.event_queue` bounds the memory the
//! payloads take:
//!
//! - an event is *held* from the moment it is queued until it succeeds or
//!   is given up, retries included (a retry waits in the queue, not in a
//!   task), and at most `capacity` events are held;
//! - one tenant (or one function without tenant isolation) holds at most
//!   `per_tenant` of them;
//! - a fixed number of workers run them, taking tenants in turn, and one
//!   tenant runs on at most `workers_per_tenant` workers at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use silo_scheduler::TenantId;
use tokio::sync::Notify;

/// One queued asynchronous invocation and its retry state.
#[derive(Debug)]
pub(crate) struct EventJob {
    /// Its id in the durable [`EventStore`](crate::event_store::EventStore).
    pub id: crate::event_store::EventId,
    /// When it was accepted (ms since the Unix epoch: survives restarts).
    pub accepted_unix_ms: u64,
    /// The function.
    pub function: String,
    /// The tenant, for PER_TENANT functions.
    pub tenant: Option<TenantId>,
    /// The payload.
    pub payload: Vec<u8>,
    /// The request id given to the caller.
    pub request_id: String,
    /// Function errors so far.
    pub errors: u32,
    /// The next throttle backoff.
    pub backoff: Duration,
    /// Not to run before this.
    pub ready_at: Instant,
}

impl EventJob {
    /// A new event, ready now: `id` as stored, accepted at
    /// `accepted_unix_ms`, with `errors` function errors so far.
    pub fn new(
        id: crate::event_store::EventId,
        accepted_unix_ms: u64,
        function: String,
        tenant: Option<TenantId>,
        payload: Vec<u8>,
        request_id: String,
    ) -> Self {
        let now = Instant::now();
        Self {
            id,
            accepted_unix_ms,
            function,
            tenant,
            payload,
            request_id,
            errors: 0,
            backoff: Duration::from_millis(200),
            ready_at: now,
        }
    }

    /// Whose share it counts against: its tenant, else its function.
    fn share(&self) -> String {
        share_of(&self.function, self.tenant.as_ref())
    }
}

/// Whose share an event of `function` for `tenant` counts against: its
/// tenant, else its function.
pub(crate) fn share_of(function: &str, tenant: Option<&TenantId>) -> String {
    match tenant {
        Some(t) => format!("tenant:{}", t.as_str()),
        None => format!("function:{function}"),
    }
}

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// The queue holds `limits.event_queue` events.
    #[error("the asynchronous invocation queue is full; try again later")]
    Queue,
    /// The tenant (or the function, without tenant isolation) holds its
    /// share, `limits.event_queue_per_tenant`.
    #[error("this tenant's share of the asynchronous invocation queue is full; try again later")]
    TenantShare,
}

impl QueueFull {
    /// The `Reason` of the 429.
    pub fn reason(self) -> &'static str {
        match self {
            QueueFull::Queue => "AsyncQueueFull",
            QueueFull::TenantShare => "TenantAsyncQueueShareExceeded",
        }
    }
}

/// The events of one share: waiting (ready or waiting to be retried) and
/// running.
#[derive(Default)]
struct Lane {
    waiting: VecDeque<EventJob>,
    running: usize,
    /// Places taken by events being written to the durable store.
    reserved: usize,
}

#[derive(Default)]
struct State {
    lanes: HashMap<String, Lane>,
    /// Shares in the order workers serve them next.
    turn: VecDeque<String>,
    /// Events held: waiting or running.
    held: usize,
}

/// The bounded, fair queue (see the module's documentation).
pub(crate) struct EventQueue {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
    per_tenant: usize,
    workers_per_tenant: usize,
}

/// A taken event: run it, then [`EventQueue::finish`] or
/// [`EventQueue::retry`] it with its share.
pub(crate) struct Taken {
    /// The share it counts against.
    pub share: String,
    /// The event.
    pub job: EventJob,
}

impl EventQueue {
    /// A queue holding at most `capacity` events, `per_tenant` of one
    /// share, served by `workers` workers (one share on at most half).
    pub fn new(capacity: usize, per_tenant: usize, workers: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            capacity: capacity.max(1),
            per_tenant: per_tenant.clamp(1, capacity.max(1)),
            workers_per_tenant: (workers / 2).max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events held (waiting, running or waiting to be retried).
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Takes a place in the queue for an event of `share` (see
    /// [`share_of`]), unless the queue or the share is full. The event is
    /// then stored durably and handed over with
    /// [`push_reserved`](Self::push_reserved), or the place given back with
    /// [`cancel`](Self::cancel).
    pub fn reserve(&self, share: &str) -> Result<(), QueueFull> {
        let mut s = self.lock();
        if s.held >= self.capacity {
            return Err(QueueFull::Queue);
        }
        let used = s
            .lanes
            .get(share)
            .map_or(0, |l| l.waiting.len() + l.running + l.reserved);
        if used >= self.per_tenant {
            return Err(QueueFull::TenantShare);
        }
        if !s.lanes.contains_key(share) {
            s.turn.push_back(share.to_string());
        }
        s.lanes.entry(share.to_string()).or_default().reserved += 1;
        s.held += 1;
        Ok(())
    }

    /// Gives back a place taken with [`reserve`](Self::reserve) (the event
    /// could not be stored).
    pub fn cancel(&self, share: &str) {
        let mut s = self.lock();
        let emptied = match s.lanes.get_mut(share) {
            Some(lane) => {
                lane.reserved = lane.reserved.saturating_sub(1);
                lane.running == 0 && lane.waiting.is_empty() && lane.reserved == 0
            }
            None => false,
        };
        if emptied {
            s.lanes.remove(share);
            s.turn.retain(|t| t != share);
        }
        s.held = s.held.saturating_sub(1);
    }

    /// Queues an event into the place [`reserve`](Self::reserve)d for it.
    pub fn push_reserved(&self, job: EventJob) {
        let share = job.share();
        {
            let mut s = self.lock();
            let lane = s.lanes.entry(share).or_default();
            lane.reserved = lane.reserved.saturating_sub(1);
            lane.waiting.push_back(job);
        }
        self.wake.notify_waiters();
    }

    /// Queues an event accepted before a restart, whatever the limits (it
    /// was accepted under them).
    pub fn push_recovered(&self, job: EventJob) {
        let share = job.share();
        {
            let mut s = self.lock();
            if !s.lanes.contains_key(&share) {
                s.turn.push_back(share.clone());
            }
            s.lanes.entry(share).or_default().waiting.push_back(job);
            s.held += 1;
        }
        self.wake.notify_waiters();
    }

    /// Queues an event, unless the queue or its share is full (tests: the
    /// daemon stores the event between [`reserve`](Self::reserve) and
    /// [`push_reserved`](Self::push_reserved)).
    #[cfg(test)]
    pub fn push(&self, job: EventJob) -> Result<(), QueueFull> {
        self.reserve(&job.share())?;
        self.push_reserved(job);
        Ok(())
    }

    /// The next ready event of the next share in turn that is under its
    /// worker share; else when the earliest waiting one becomes ready.
    fn take_ready(&self, now: Instant) -> Result<Taken, Option<Instant>> {
        let mut s = self.lock();
        let mut earliest: Option<Instant> = None;
        for i in 0..s.turn.len() {
            let share = s.turn[i].clone();
            let Some(lane) = s.lanes.get_mut(&share) else {
                continue;
            };
            if lane.running >= self.workers_per_tenant {
                continue;
            }
            match lane.waiting.iter().position(|j| j.ready_at <= now) {
                Some(at) => {
                    let job = lane.waiting.remove(at).expect("position is in range");
                    lane.running += 1;
                    // This share goes to the back of the turn.
                    s.turn.remove(i);
                    s.turn.push_back(share.clone());
                    return Ok(Taken { share, job });
                }
                None => {
                    let next = lane.waiting.iter().map(|j| j.ready_at).min();
                    earliest = match (earliest, next) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        Err(earliest)
    }

    /// Waits for the next event to run (see [`take_ready`](Self::take_ready)).
    pub async fn next(&self) -> Taken {
        loop {
            // Registered before looking, so no wake-up is missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.take_ready(Instant::now()) {
                Ok(t) => return t,
                Err(Some(at)) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                Err(None) => woken.await,
            }
        }
    }

    fn release(&self, share: &str, retry: Option<EventJob>) {
        {
            let mut s = self.lock();
            let leaves = retry.is_none();
            let emptied = match s.lanes.get_mut(share) {
                Some(lane) => {
                    lane.running = lane.running.saturating_sub(1);
                    if let Some(job) = retry {
                        lane.waiting.push_back(job);
                    }
                    lane.running == 0 && lane.waiting.is_empty() && lane.reserved == 0
                }
                None => false,
            };
            if emptied {
                s.lanes.remove(share);
                s.turn.retain(|t| t != share);
            }
            if leaves {
                s.held = s.held.saturating_sub(1);
            }
        }
        self.wake.notify_waiters();
    }

    /// A taken event is done (succeeded or given up): it leaves the queue.
    pub fn finish(&self, share: &str) {
        self.release(share, None);
    }

    /// A taken event goes back to wait until its `ready_at`; it stays held
    /// (and counted against its share) meanwhile.
    pub fn retry(&self, share: &str, job: EventJob) {
        self.release(share, Some(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(function: &str, tenant: Option<&str>) -> EventJob {
        EventJob::new(
            0,
            0,
            function.into(),
            tenant.map(|t| TenantId::parse(t).unwrap()),
            b"{}".to_vec(),
            "r".into(),
        )
    }

    /// Issue 19, finding 4: with the default limits, four tenants holding
    /// their full shares (across functions) leave room for a fifth.
    #[test]
    fn a_fifth_tenant_is_accepted_while_four_hold_their_full_shares() {
        let l = crate::config::LimitsConfig::default();
        let q = EventQueue::new(l.event_queue, l.event_queue_per_tenant, l.event_workers);
        for t in 0..4 {
            let tenant = format!("hog-{t}");
            let mut n = 0;
            // Spread over functions: the share is the tenant's, not the
            // function's.
            while q.push(job(&format!("f{}", n % 7), Some(&tenant))).is_ok() {
                n += 1;
            }
            assert_eq!(n, l.event_queue_per_tenant, "{tenant}'s full share");
            assert_eq!(
                q.push(job("other", Some(&tenant))),
                Err(QueueFull::TenantShare)
            );
        }
        assert_eq!(q.push(job("f0", Some("fifth"))), Ok(()));
    }

    #[test]
    fn the_queue_and_each_share_are_bounded_retries_included() {
        let q = EventQueue::new(10, 4, 4);
        for _ in 0..4 {
            q.push(job("f", Some("hog"))).unwrap();
        }
        assert_eq!(q.push(job("f", Some("hog"))), Err(QueueFull::TenantShare));
        // Another function's events count against the same tenant.
        assert_eq!(q.push(job("g", Some("hog"))), Err(QueueFull::TenantShare));
        for _ in 0..4 {
            q.push(job("f", Some("b"))).unwrap();
        }
        q.push(job("plain", None)).unwrap();
        q.push(job("plain", None)).unwrap();
        assert_eq!(q.push(job("f", Some("c"))), Err(QueueFull::Queue));
        assert_eq!(QueueFull::Queue.reason(), "AsyncQueueFull");
        // A taken event waiting for its retry is still held.
        let t = q.take_ready(Instant::now()).ok().unwrap();
        let mut j = t.job;
        j.ready_at = Instant::now() + Duration::from_secs(60);
        q.retry(&t.share, j);
        assert_eq!(q.held(), 10);
        assert_eq!(q.push(job("f", Some("c"))), Err(QueueFull::Queue));
        let t = q.take_ready(Instant::now()).ok().unwrap();
        q.finish(&t.share);
        assert_eq!(q.held(), 9);
        q.push(job("f", Some("c"))).unwrap();
    }

    /// A place reserved while the event is being stored counts against
    /// the queue and the share; cancelled (the store failed), it is free
    /// again; an event read back after a restart is queued whatever the
    /// limits.
    #[test]
    fn reserved_places_count_until_pushed_or_cancelled() {
        let q = EventQueue::new(3, 2, 4);
        let share = share_of("f", Some(&TenantId::parse("t").unwrap()));
        q.reserve(&share).unwrap();
        q.reserve(&share).unwrap();
        assert_eq!(q.reserve(&share), Err(QueueFull::TenantShare));
        q.cancel(&share);
        assert_eq!(q.held(), 1);
        q.push_reserved(job("f", Some("t")));
        assert!(q.take_ready(Instant::now()).is_ok());
        q.reserve(&share_of("g", None)).unwrap();
        q.reserve(&share_of("h", None)).unwrap();
        assert_eq!(q.reserve(&share_of("i", None)), Err(QueueFull::Queue));
        q.push_recovered(job("f", Some("t")));
        assert_eq!(q.held(), 4);
    }

    #[test]
    fn workers_take_shares_in_turn_and_one_share_gets_half_of_them() {
        let q = EventQueue::new(100, 100, 4);
        for _ in 0..10 {
            q.push(job("f", Some("hog"))).unwrap();
        }
        q.push(job("f", Some("small"))).unwrap();
        let now = Instant::now();
        let a = q.take_ready(now).ok().unwrap();
        let b = q.take_ready(now).ok().unwrap();
        assert_eq!(
            (a.share.as_str(), b.share.as_str()),
            ("tenant:hog", "tenant:small")
        );
        let c = q.take_ready(now).ok().unwrap();
        assert_eq!(c.share, "tenant:hog");
        // hog runs on 2 of 4 workers: the others wait for another tenant.
        assert!(q.take_ready(now).is_err());
        q.finish(&a.share);
        assert_eq!(q.take_ready(now).ok().unwrap().share, "tenant:hog");
        // Not-yet-ready retries are skipped; the earliest is reported.
        let later = now + Duration::from_secs(5);
        let mut j = b.job;
        j.ready_at = later;
        q.retry(&b.share, j);
        q.finish(&c.share);
        let t = q.take_ready(now).ok().unwrap();
        assert_eq!(t.share, "tenant:hog");
        assert_eq!(q.take_ready(now).err(), Some(Some(later)));
        assert_eq!(q.take_ready(later).ok().unwrap().share, "tenant:small");
    }
}
