//! The durable Event queue at work: accepting an event (stored and synced
//! in the [`EventStore`] before the caller's 202), reading the queue back at
//! start, and the `limits.event_workers` workers that run events with
//! Lambda's retries under each function's [`EventInvokeConfig`]
//! (`PutFunctionEventInvokeConfig`). Events given up land in the store's
//! failed events (silo's own on-failure destination).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use silo_proto::Outcome;
use silo_scheduler::{ScheduleError, TenantId};
use tracing::Instrument;

use crate::event_store::{
    now_unix_ms, EventId, EventStore, EventStoreError, FailedEvent, NewEvent,
};
use crate::events::{share_of, EventJob, QueueFull};
use crate::vm_env::guest_text;
use crate::Daemon;

/// `MaximumRetryAttempts` at most (and by default), as Lambda.
pub const MAX_RETRY_ATTEMPTS: u32 = 2;
/// `MaximumEventAgeInSeconds` at least, as Lambda.
pub const MIN_EVENT_AGE_S: u32 = 60;
/// `MaximumEventAgeInSeconds` at most (and by default), as Lambda: 6 hours.
pub const MAX_EVENT_AGE_S: u32 = 21_600;

/// A function's asynchronous invocation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInvokeConfig {
    /// Retries after a function error (0-2).
    pub maximum_retry_attempts: u32,
    /// Events older than this are given up, retries and throttles included
    /// (60-21600 s).
    pub maximum_event_age_s: u32,
    /// When it was set (ms since the Unix epoch).
    pub last_modified_unix_ms: u64,
}

impl Default for EventInvokeConfig {
    fn default() -> Self {
        Self {
            maximum_retry_attempts: MAX_RETRY_ATTEMPTS,
            maximum_event_age_s: MAX_EVENT_AGE_S,
            last_modified_unix_ms: 0,
        }
    }
}

/// Why an Event invocation was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The queue or the tenant's share of it is full.
    #[error(transparent)]
    Full(#[from] QueueFull),
    /// The event could not be stored durably (a full disk, say).
    #[error("the event could not be stored durably, so it was not accepted: {0}")]
    Store(#[from] EventStoreError),
}

/// Runs a call of the event store on a blocking thread.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn EventStore>,
    call: impl FnOnce(&dyn EventStore) -> Result<T, EventStoreError> + Send + 'static,
) -> Result<T, EventStoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .unwrap_or_else(|e| {
            Err(EventStoreError {
                what: "running a store call",
                location: String::new(),
                message: e.to_string(),
            })
        })
}

impl Daemon {
    /// Accepts an asynchronous invocation: takes a place in the queue
    /// (unless the queue or the tenant's share of it is full), stores the
    /// event durably, then queues it. `Ok` only once it is on disk.
    pub async fn enqueue(
        &self,
        function: &str,
        tenant: Option<TenantId>,
        payload: Vec<u8>,
        request_id: String,
    ) -> Result<(), EnqueueError> {
        let share = share_of(function, tenant.as_ref());
        self.events.reserve(&share)?;
        let accepted_unix_ms = now_unix_ms();
        let new = NewEvent {
            request_id: request_id.clone(),
            function: function.to_string(),
            tenant: tenant.as_ref().map(|t| t.as_str().to_string()),
            payload,
            accepted_unix_ms,
        };
        let (stored, new) = {
            let store = self.event_store.clone();
            tokio::task::spawn_blocking(move || (store.accept(&new), new))
                .await
                .map_err(|e| EventStoreError {
                    what: "storing an event",
                    location: String::new(),
                    message: e.to_string(),
                })
                .inspect_err(|_| self.events.cancel(&share))?
        };
        match stored {
            Ok(id) => {
                self.events.push_reserved(EventJob::new(
                    id,
                    accepted_unix_ms,
                    new.function,
                    tenant,
                    new.payload,
                    request_id,
                ));
                Ok(())
            }
            Err(e) => {
                self.events.cancel(&share);
                Err(e.into())
            }
        }
    }

    /// Queues every event the store holds from before this start (in its
    /// tenant's share, whatever the limits); reports unreadable ones by id
    /// and skips them. Returns how many were queued.
    pub(crate) fn recover_events(&self) -> Result<usize, EventStoreError> {
        let (events, unreadable) = self.event_store.pending()?;
        for u in &unreadable {
            tracing::error!(event_id = u.id, reason = %u.reason, "skipping an unreadable queued event (left in the store)");
        }
        Ok(self.queue_stored(events))
    }

    /// Queues stored events (read back at start, or adopted from a lost
    /// node) in their tenants' shares, whatever the limits; returns how
    /// many were queued.
    pub(crate) fn queue_stored(&self, events: Vec<crate::event_store::StoredEvent>) -> usize {
        let mut n = 0;
        for e in events {
            let tenant = match e.event.tenant.as_deref().map(TenantId::parse).transpose() {
                Ok(t) => t,
                Err(_) => {
                    tracing::error!(
                        event_id = e.id,
                        "skipping a queued event whose tenant id is not valid (left in the store)"
                    );
                    continue;
                }
            };
            let mut job = EventJob::new(
                e.id,
                e.event.accepted_unix_ms,
                e.event.function,
                tenant,
                e.event.payload,
                e.event.request_id,
            );
            job.errors = e.errors;
            self.events.push_recovered(job);
            n += 1;
        }
        n
    }

    /// Failed events (of `function` only, if given).
    pub async fn failed_events(
        &self,
        function: Option<String>,
    ) -> Result<Vec<FailedEvent>, EventStoreError> {
        blocking(&self.event_store, move |s| s.failed(function.as_deref())).await
    }

    /// Removes failed event `id`; `Ok(false)` if there is none.
    pub async fn remove_failed_event(&self, id: EventId) -> Result<bool, EventStoreError> {
        blocking(&self.event_store, move |s| s.remove_failed(id)).await
    }

    /// Whether the event store can be read (for `/readyz`).
    pub async fn check_event_store(&self) -> Result<(), EventStoreError> {
        blocking(&self.event_store, |s| s.check()).await
    }
}

/// Ends `job` in the store (done: removed; else given up with the error)
/// and lets its place in the queue go. A store failure is logged: the
/// event then stays stored and runs again after a restart (at least once).
async fn finish(daemon: &Daemon, share: &str, job: &EventJob, failed: Option<(String, u32)>) {
    let id = job.id;
    let r = match failed {
        None => blocking(&daemon.event_store, move |s| s.done(id)).await,
        Some((error, attempts)) => {
            blocking(&daemon.event_store, move |s| {
                s.give_up(id, &error, attempts, now_unix_ms())
            })
            .await
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "could not record the event's end; it will run again after a restart");
    }
    daemon.events.finish(share);
}

/// Longest error kept with a failed event (the error text is the guest's).
const ERROR_MAX: usize = 4096;

/// The error an attempt ended with, at most [`ERROR_MAX`] bytes (log it
/// through [`guest_text`]: it is the guest's).
fn failure(result: &crate::InvokeOutcome) -> String {
    let mut text = match result {
        Ok(r) => match &r.response.outcome {
            Outcome::Err(e) => format!("{}: {}", e.error_type, e.error_message),
            Outcome::Ok(_) => String::new(),
        },
        Err(e) => e.to_string(),
    };
    if text.len() > ERROR_MAX {
        let mut end = ERROR_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// One of the `limits.event_workers` workers: runs queued Event
/// invocations one at a time with Lambda-style retries (function errors up
/// to `MaximumRetryAttempts` more times, throttles with backoff, both
/// within `MaximumEventAgeInSeconds`); a retry waits in the queue, not on
/// this worker. Returns once `stop` turns true, between events.
pub(crate) async fn event_worker(
    daemon: Arc<Daemon>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let taken = tokio::select! {
            t = daemon.events.next() => t,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (share, mut job) = (taken.share, taken.job);
        let span = tracing::info_span!("event", function = %job.function, tenant_id = ?job.tenant.as_ref().map_or("-", |t| t.as_str()), request_id = %job.request_id);
        let Some(rec) = daemon.get(&job.function) else {
            // Deleted, or its record could not be read at this start: kept
            // with the failed events rather than dropped, so that a record
            // the operator repairs loses nothing.
            span.in_scope(|| {
                tracing::warn!(
                    "the event's function does not exist; moving the event to the failed events"
                )
            });
            let why = format!(
                "ResourceNotFoundException: function {} does not exist (deleted, or its record could not be read at start)",
                job.function
            );
            finish(&daemon, &share, &job, Some((why, job.errors))).await;
            continue;
        };
        let cfg = rec.event_invoke_config.unwrap_or_default();
        let max_age_ms = u64::from(cfg.maximum_event_age_s) * 1000;
        let accepted = job.accepted_unix_ms;
        let too_old = move || now_unix_ms().saturating_sub(accepted) >= max_age_ms;
        if too_old() {
            span.in_scope(|| {
                tracing::warn!(
                    attempts = job.errors,
                    "event older than MaximumEventAgeInSeconds; giving up"
                )
            });
            let why = format!(
                "EventAgeExceeded: not run within MaximumEventAgeInSeconds ({} s)",
                cfg.maximum_event_age_s
            );
            finish(&daemon, &share, &job, Some((why, job.errors))).await;
            continue;
        }
        let result = daemon
            .invoke(
                &rec,
                job.tenant.clone(),
                job.payload.clone(),
                &job.request_id,
            )
            .instrument(span.clone())
            .await;
        async {
        match &result {
            Ok(r) if matches!(r.response.outcome, Outcome::Ok(_)) => {
                tracing::info!(cold_start = r.cold_start, "event invocation succeeded");
                finish(&daemon, &share, &job, None).await;
            }
            Err(ScheduleError::Throttled(reason)) if !too_old() => {
                tracing::info!(
                    ?reason,
                    retry_in_ms = job.backoff.as_millis() as u64,
                    "event invocation throttled; will retry"
                );
                job.ready_at = Instant::now() + job.backoff;
                job.backoff = (job.backoff * 2).min(Duration::from_secs(10));
                daemon.events.retry(&share, job);
            }
            _ => {
                let why = failure(&result);
                if job.errors >= cfg.maximum_retry_attempts || too_old() {
                    tracing::warn!(error = %guest_text(&why), attempts = job.errors + 1, "event invocation failed; giving up");
                    let attempts = job.errors + 1;
                    finish(&daemon, &share, &job, Some((why, attempts))).await;
                } else {
                    job.errors += 1;
                    tracing::info!(error = %guest_text(&why), attempt = job.errors, "event invocation failed; retrying");
                    let (id, errors) = (job.id, job.errors);
                    if let Err(e) =
                        blocking(&daemon.event_store, move |s| s.record_errors(id, errors)).await
                    {
                        tracing::warn!(error = %e, "could not record the event's attempt");
                    }
                    job.ready_at = Instant::now() + Duration::from_secs(u64::from(job.errors));
                    daemon.events.retry(&share, job);
                }
            }
        }
        }
        .instrument(span)
        .await;
    }
}
