//! Rate limiting of misses per source: a token bucket per address (an IPv6
//! source counts as its /64), refilled at `budget` per `window`; a miss
//! that finds the bucket empty starts a cool-down during which the source
//! is refused. The clock is the caller's.
//!
//! Written by hand rather than with a GCRA crate: only *misses* consume
//! tokens (successful requests never do, so phones behind one NAT keep
//! working), and exhausting the budget starts a fixed cool-down, which a
//! plain request limiter has no notion of. Memory is bounded: idle sources
//! are forgotten, and past `max_sources` new sources are not tracked (a
//! flood of distinct addresses cannot grow the table without bound).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The limiter's settings (`phones.rate_limit.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Misses allowed per window before the cool-down (0: no limit).
    pub budget: u32,
    pub window: Duration,
    pub cooldown: Duration,
    pub max_sources: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    cooling_until: Option<Instant>,
}

/// The sources and their buckets.
pub struct Limiter {
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            sources: Mutex::default(),
            last_sweep: Mutex::new(None),
        }
    }
}

/// The key of a source: the address, or its /64 for IPv6 (also how the
/// trusted pairs key their address).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl Bucket {
    fn refill(&mut self, limits: &Limits, now: Instant) {
        if self.cooling_until.is_some_and(|until| now >= until) {
            self.cooling_until = None;
            self.tokens = f64::from(limits.budget);
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let rate = f64::from(limits.budget) / limits.window.as_secs_f64().max(0.001);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limits.budget));
        self.refilled = now;
    }
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Until when `ip` is cooling down, if it is.
    pub fn cooling(&self, ip: IpAddr, limits: &Limits, now: Instant) -> Option<Instant> {
        if limits.budget == 0 {
            return None;
        }
        let mut sources = self.lock();
        let bucket = sources.get_mut(&source_key(ip))?;
        bucket.refill(limits, now);
        bucket.cooling_until
    }

    /// Counts a miss; returns true when it starts a cool-down.
    pub fn miss(&self, ip: IpAddr, limits: &Limits, now: Instant) -> bool {
        if limits.budget == 0 {
            return false;
        }
        self.sweep(limits, now);
        let mut sources = self.lock();
        let key = source_key(ip);
        if !sources.contains_key(&key) && sources.len() >= limits.max_sources {
            return false;
        }
        let bucket = sources.entry(key).or_insert(Bucket {
            tokens: f64::from(limits.budget),
            refilled: now,
            cooling_until: None,
        });
        bucket.refill(limits, now);
        if bucket.cooling_until.is_some() {
            return false;
        }
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return false;
        }
        bucket.cooling_until = Some(now + limits.cooldown);
        true
    }

    /// Forgets full, idle buckets (at most once a second).
    fn sweep(&self, limits: &Limits, now: Instant) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        let mut sources = self.lock();
        sources.retain(|_, bucket| {
            bucket.refill(limits, now);
            bucket.cooling_until.is_some() || bucket.tokens < f64::from(limits.budget)
        });
    }

    /// Sources tracked now (for tests and status).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    /// Sources cooling down at `now` (for status and metrics).
    pub fn cooling_count(&self, now: Instant) -> usize {
        self.lock()
            .values()
            .filter(|bucket| bucket.cooling_until.is_some_and(|until| now < until))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            budget: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            max_sources: 2,
        }
    }

    #[test]
    fn the_budget_then_a_cool_down_then_recovery() {
        let limiter = Limiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        let l = limits();
        for _ in 0..3 {
            assert!(!limiter.miss(ip, &l, start));
        }
        assert_eq!(limiter.cooling(ip, &l, start), None);
        assert_eq!(limiter.cooling_count(start), 0);
        assert!(
            limiter.miss(ip, &l, start),
            "the fourth miss starts the cool-down"
        );
        assert_eq!(limiter.cooling_count(start), 1);
        assert_eq!(limiter.cooling_count(start + Duration::from_secs(30)), 0);
        assert!(
            limiter
                .cooling(ip, &l, start + Duration::from_secs(29))
                .is_some()
        );
        assert!(
            !limiter.miss(ip, &l, start + Duration::from_secs(29)),
            "no extension"
        );
        assert_eq!(
            limiter.cooling(ip, &l, start + Duration::from_secs(30)),
            None
        );
        assert!(!limiter.miss(ip, &l, start + Duration::from_secs(31)));
        // Another address is unaffected.
        assert_eq!(
            limiter.cooling("192.0.2.2".parse().unwrap(), &l, start),
            None
        );
    }

    #[test]
    fn tokens_come_back_with_time_and_ipv6_counts_per_64() {
        let limiter = Limiter::default();
        let l = limits();
        let start = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..3 {
            limiter.miss(a, &l, start);
        }
        assert!(limiter.miss(b, &l, start), "same /64, same bucket");
        let other = Limiter::default();
        for _ in 0..3 {
            other.miss(a, &l, start);
        }
        // 20 s later a third of the budget (one token) is back.
        assert!(!other.miss(a, &l, start + Duration::from_secs(20)));
        assert!(other.miss(a, &l, start + Duration::from_secs(20)));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_sources() {
        let limiter = Limiter::default();
        let l = limits();
        let start = Instant::now();
        for i in 0..5u8 {
            limiter.miss(IpAddr::from([192, 0, 2, i]), &l, start);
        }
        assert_eq!(limiter.tracked(), 2);
        limiter.miss(
            IpAddr::from([192, 0, 2, 9]),
            &l,
            start + Duration::from_secs(120),
        );
        assert_eq!(limiter.tracked(), 1, "refilled buckets are forgotten");
        let off = Limits { budget: 0, ..l };
        assert!(!limiter.miss(IpAddr::from([192, 0, 2, 1]), &off, start));
    }
}
