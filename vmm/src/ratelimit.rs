//! Rate-limited logging of guest faults.
//!
//! A guest decides how often its malformed packets, bad MMIO accesses or
//! invalid queue setups happen; a log line per fault would let it write as
//! fast as it can fault. Each kind of fault (each call site of
//! [`guest_fault!`](crate::guest_fault)) gets a token bucket: a burst of
//! [`BURST`] lines, then [`PER_SECOND`] lines per second. Faults past that
//! are counted, and the next line let through is preceded by one summary
//! line, "N similar messages suppressed". So the log of one fault kind grows
//! by at most `BURST + PER_SECOND * seconds` lines (plus as many summaries),
//! whatever the guest does.

use std::sync::Mutex;
use std::time::Instant;

/// Lines of one fault kind logged in a burst before the limit applies.
pub const BURST: u32 = 10;
/// Lines of one fault kind logged per second once the burst is spent.
pub const PER_SECOND: u32 = 1;

/// What [`RateLimiter::check`] decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` events of the same kind were dropped since the
    /// last one logged (announce them first when not zero).
    Log {
        /// Events dropped since the last logged one.
        suppressed: u64,
    },
    /// Drop it (counted for the next summary).
    Suppress,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

/// A token bucket: `burst` events at once, then `per_second` events per
/// second. Usable as a `static` (one per fault kind).
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    per_second: u32,
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// A limiter letting `burst` events through at once and `per_second`
    /// afterwards.
    pub const fn new(burst: u32, per_second: u32) -> Self {
        Self {
            burst,
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: burst as f64,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Decides for one event happening now.
    pub fn check(&self) -> Verdict {
        self.check_at(Instant::now())
    }

    /// Decides for one event happening at `now` (for tests).
    pub fn check_at(&self, now: Instant) -> Verdict {
        // A poisoned lock only means a panic elsewhere mid-update: the
        // counters are still plain numbers.
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = b.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * f64::from(self.per_second)).min(f64::from(self.burst));
        }
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Verdict::Log {
                suppressed: std::mem::take(&mut b.suppressed),
            }
        } else {
            b.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Events dropped since the last one let through.
    pub fn suppressed(&self) -> u64 {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .suppressed
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(BURST, PER_SECOND)
    }
}

/// Logs a guest-caused fault at WARN level, rate-limited per call site (see
/// the [module docs](crate::ratelimit)). Takes the arguments of
/// `tracing::warn!`; a "similar messages suppressed" line with the count
/// precedes the first line let through after a suppression.
///
/// ```
/// silo_vmm::guest_fault!(op = 9u16, "unknown vsock op; reset");
/// ```
#[macro_export]
macro_rules! guest_fault {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new(
            $crate::ratelimit::BURST,
            $crate::ratelimit::PER_SECOND,
        );
        if let $crate::ratelimit::Verdict::Log { suppressed } = LIMITER.check() {
            if suppressed > 0 {
                ::tracing::warn!(suppressed, "{suppressed} similar guest-fault messages suppressed");
            }
            ::tracing::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_then_a_count_of_what_was_dropped() {
        let l = RateLimiter::new(3, 2);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at(t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(l.check_at(t0), Verdict::Suppress);
        }
        assert_eq!(l.suppressed(), 1000);
        // Half a second later one token came back: the next line carries the count.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check_at(t1), Verdict::Log { suppressed: 1000 });
        assert_eq!(l.check_at(t1), Verdict::Suppress);
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        let logged = (0..100)
            .filter(|_| matches!(l.check_at(t2), Verdict::Log { .. }))
            .count();
        assert_eq!(logged, 3);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let l = RateLimiter::new(1, 1);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(matches!(l.check_at(t0), Verdict::Log { .. }));
        assert_eq!(l.check_at(t0 - Duration::from_secs(5)), Verdict::Suppress);
    }
}
