//! Token buckets for device bandwidth, after Firecracker's rate limiter: a
//! bucket holds up to `size` tokens, refills completely in `refill_time`
//! (continuously, in integer arithmetic), and starts with an extra
//! `one_time_burst` that is spent first and never comes back.
//!
//! A [`Limiter`] pairs an optional bytes bucket with an optional operations
//! (packets) bucket; a frame costs one operation plus its length in bytes.
//! A frame larger than a bucket passes when that bucket is full and leaves
//! it in debt, so no frame waits forever. When a frame is refused, the
//! limiter says how long until it would pass (the caller arms a timer).
//!
//! Time is passed in (`now`), so tests drive the buckets with an injected
//! clock as [`crate::ratelimit::RateLimiter::check_at`] is tested.

use std::time::{Duration, Instant};

/// Shortest wait a refused frame arms the timer for (a timer per packet
/// at high rates would cost more than it saves).
pub const MIN_WAIT: Duration = Duration::from_millis(1);

/// One bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full (and refills per `refill_time`).
    pub size: u64,
    /// Extra tokens available once, at start.
    pub one_time_burst: u64,
    /// Time to refill an empty bucket completely.
    pub refill_time: Duration,
}

impl BucketConfig {
    /// A bucket of `per_second` tokens refilled every second, with
    /// `burst` extra tokens once (`silo-vmm --net-*-rate RATE[,BURST]`).
    pub fn per_second(per_second: u64, burst: u64) -> Self {
        Self {
            size: per_second,
            one_time_burst: burst,
            refill_time: Duration::from_secs(1),
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    cfg: BucketConfig,
    /// Tokens now; negative after a frame larger than the bucket.
    tokens: i128,
    burst: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket with its one-time burst. A zero size or refill time
    /// means no limit.
    pub fn new(cfg: BucketConfig) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time.is_zero() {
            return None;
        }
        Some(Self {
            cfg,
            tokens: i128::from(cfg.size),
            burst: cfg.one_time_burst,
            last: None,
        })
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            let refill_ns = self.cfg.refill_time.as_nanos().max(1);
            let add = elapsed.saturating_mul(u128::from(self.cfg.size)) / refill_ns;
            if add == 0 {
                // Keep `last` so small steps accumulate.
                return;
            }
            let size = i128::from(self.cfg.size);
            let add = i128::try_from(add).unwrap_or(i128::MAX);
            let tokens = self.tokens.saturating_add(add);
            if tokens >= size {
                self.tokens = size;
            } else {
                self.tokens = tokens;
                // Advance by the time those tokens took, keeping the
                // fraction of a token already earned.
                let used_ns = (add as u128).saturating_mul(refill_ns) / u128::from(self.cfg.size);
                let used = Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
                self.last = Some(last + used);
                return;
            }
        }
        self.last = Some(now);
    }

    /// Tokens available now (the one-time burst included).
    pub fn available(&mut self, now: Instant) -> i128 {
        self.refill(now);
        self.tokens + i128::from(self.burst)
    }

    /// Whether `cost` tokens may be taken at `now` (a cost above the size
    /// needs a full bucket).
    fn can_take(&mut self, cost: u64, now: Instant) -> bool {
        let need = i128::from(cost.min(self.cfg.size));
        self.available(now) >= need
    }

    fn take(&mut self, cost: u64) {
        let from_burst = cost.min(self.burst);
        self.burst -= from_burst;
        self.tokens -= i128::from(cost - from_burst);
    }

    /// How long until `cost` tokens can be taken (after a refused `can_take`).
    fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        let missing = i128::from(cost.min(self.cfg.size)) - self.available(now);
        if missing <= 0 {
            return Duration::ZERO;
        }
        let ns = (missing as u128)
            .saturating_mul(self.cfg.refill_time.as_nanos())
            .div_ceil(u128::from(self.cfg.size));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The bytes and operations buckets of one direction of a device.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    throttled: u64,
}

impl Limiter {
    /// A limiter with the given buckets (`None`: that dimension is free).
    pub fn new(bytes: Option<BucketConfig>, ops: Option<BucketConfig>) -> Self {
        Self {
            bytes: bytes.and_then(TokenBucket::new),
            ops: ops.and_then(TokenBucket::new),
            throttled: 0,
        }
    }

    /// Whether the limiter limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.ops.is_none()
    }

    /// Takes one operation and `bytes` bytes at `now` if both buckets allow
    /// it; otherwise takes nothing and returns how long to wait (at least
    /// [`MIN_WAIT`]).
    pub fn consume(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let bytes_ok = self.bytes.as_mut().is_none_or(|b| b.can_take(bytes, now));
        let ops_ok = self.ops.as_mut().is_none_or(|b| b.can_take(1, now));
        if bytes_ok && ops_ok {
            if let Some(b) = self.bytes.as_mut() {
                b.take(bytes);
            }
            if let Some(b) = self.ops.as_mut() {
                b.take(1);
            }
            return Ok(());
        }
        self.throttled += 1;
        let wait_bytes = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(bytes, now));
        let wait_ops = self
            .ops
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(1, now));
        Err(wait_bytes.max(wait_ops).max(MIN_WAIT))
    }

    /// Frames refused so far (each refusal counts once).
    pub fn throttled(&self) -> u64 {
        self.throttled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bytes_bucket_burst_then_rate() {
        let t0 = Instant::now();
        // 1000 bytes per second, 500 more once.
        let mut l = Limiter::new(Some(BucketConfig::per_second(1000, 500)), None);
        assert!(l.consume(1000, t0).is_ok());
        assert!(l.consume(500, t0).is_ok(), "the one-time burst");
        let wait = l.consume(100, t0).unwrap_err();
        assert_eq!(wait, ms(100), "100 bytes at 1000 B/s");
        assert_eq!(l.throttled(), 1);
        assert!(l.consume(100, t0 + ms(99)).is_err());
        assert!(l.consume(100, t0 + ms(100)).is_ok());
        // The burst never comes back; the bucket refills only to its size.
        let later = t0 + Duration::from_secs(3600);
        assert!(l.consume(1000, later).is_ok());
        assert!(l.consume(1, later).is_err());
    }

    #[test]
    fn ops_bucket_counts_frames() {
        let t0 = Instant::now();
        let mut l = Limiter::new(None, Some(BucketConfig::per_second(10, 0)));
        for _ in 0..10 {
            assert!(l.consume(65_000, t0).is_ok());
        }
        assert_eq!(l.consume(1, t0).unwrap_err(), ms(100));
        assert!(l.consume(1, t0 + ms(100)).is_ok());
    }

    #[test]
    fn a_frame_larger_than_the_bucket_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(BucketConfig::per_second(100, 0)), None);
        assert!(l.consume(1500, t0).is_ok());
        // 1400 bytes of debt plus 100 for the next frame at 100 B/s: 15 s.
        assert_eq!(l.consume(100, t0).unwrap_err(), ms(15_000));
        assert!(l.consume(100, t0 + ms(14_999)).is_err());
        assert!(l.consume(100, t0 + ms(15_000)).is_ok());
    }

    #[test]
    fn both_buckets_must_allow_and_a_refusal_takes_nothing() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            Some(BucketConfig::per_second(1000, 0)),
            Some(BucketConfig::per_second(2, 0)),
        );
        assert!(l.consume(10, t0).is_ok());
        assert!(l.consume(10, t0).is_ok());
        assert!(l.consume(10, t0).is_err(), "ops bucket empty");
        // The refused frame took no bytes: 980 bytes are still there.
        let t1 = t0 + ms(500);
        assert!(l.consume(980, t1).is_ok());
    }

    #[test]
    fn zero_means_unlimited_and_time_going_back_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut l = Limiter::new(Some(BucketConfig::per_second(0, 0)), None);
        assert!(l.is_unlimited());
        assert!(l.consume(u64::MAX, t0).is_ok());
        let mut l = Limiter::new(Some(BucketConfig::per_second(10, 0)), None);
        assert!(l.consume(10, t0).is_ok());
        assert!(l.consume(1, t0 - Duration::from_secs(5)).is_err());
    }
}
