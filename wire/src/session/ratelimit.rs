//! Per-source token buckets for handshakes that would make the responder sign (SPEC
//! §5.1, "Handshake admission").
//!
//! A cookie proves that an initiator can receive at the address it claims, but not that
//! it is anybody: without a limit, one proven address could make the responder compute
//! an RSA signature per INITIAL it sends. Each source IP address therefore has a token
//! bucket of `burst` tokens, one token refilled every `refill`; an INITIAL that would
//! start RSA work takes a token, and one that finds the bucket empty is dropped.
//!
//! The table is bounded: at most `capacity` addresses, the least recently used evicted
//! first. Only addresses that echoed a valid cookie are ever entered, so a spoofing
//! attacker cannot churn the table; an address evicted and seen again starts with a full
//! bucket, which only ever favours it (an attacker with more reachable addresses than the
//! table holds is bounded by the global cap on half-open handshakes instead).
//!
//! Keyed by IP address, not by port: one host picking new ports gets no new buckets.
//! IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! Sans-IO: time comes in as `Instant`s, and the arithmetic is on whole `Duration`s, so a
//! test drives it with virtual time.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One source's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When the next token's refill period started.
    since: Instant,
    /// Position in the recency order (key of `HandshakeLimiter::order`).
    stamp: u64,
}

/// The outcome of [`HandshakeLimiter::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A token was taken: go ahead. `evicted` tells whether another source's bucket had
    /// to be forgotten to make room for this one.
    Admitted { evicted: bool },
    /// The source's bucket is empty: drop the INITIAL.
    Limited,
}

/// Token buckets by source address, bounded in number. See the module documentation.
#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    burst: u32,
    refill: Duration,
    capacity: usize,
    buckets: HashMap<IpAddr, Bucket>,
    /// Recency order: stamp → address, oldest first.
    order: BTreeMap<u64, IpAddr>,
    next_stamp: u64,
}

impl HandshakeLimiter {
    /// Buckets of `burst` tokens, one refilled every `refill`, for at most `capacity`
    /// addresses. A `burst` of 0 admits nothing; a zero `refill` refills at once (no
    /// limit beyond the burst per instant, i.e. none); a `capacity` of 0 is taken as 1.
    pub fn new(burst: u32, refill: Duration, capacity: usize) -> Self {
        HandshakeLimiter {
            burst,
            refill,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// Addresses tracked now (never more than the capacity).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The tokens `source` has at `now`, without taking one (a source not in the table
    /// has a full bucket).
    pub fn tokens(&self, source: IpAddr, now: Instant) -> u32 {
        let source = source.to_canonical();
        match self.buckets.get(&source) {
            Some(bucket) => refilled(*bucket, self.burst, self.refill, now).tokens,
            None => self.burst,
        }
    }

    /// Takes one token from `source`'s bucket at `now`, if it has one.
    pub fn try_acquire(&mut self, source: IpAddr, now: Instant) -> Admission {
        let source = source.to_canonical();
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let mut evicted = false;
        let bucket = match self.buckets.get(&source) {
            Some(bucket) => {
                self.order.remove(&bucket.stamp);
                refilled(*bucket, self.burst, self.refill, now)
            }
            None => {
                if self.buckets.len() >= self.capacity {
                    if let Some((_, oldest)) = self.order.pop_first() {
                        self.buckets.remove(&oldest);
                        evicted = true;
                    }
                }
                Bucket {
                    tokens: self.burst,
                    since: now,
                    stamp,
                }
            }
        };
        let admitted = bucket.tokens > 0;
        let bucket = Bucket {
            tokens: bucket.tokens.saturating_sub(1),
            stamp,
            ..bucket
        };
        self.buckets.insert(source, bucket);
        self.order.insert(stamp, source);
        if admitted {
            Admission::Admitted { evicted }
        } else {
            Admission::Limited
        }
    }
}

/// `bucket` with the tokens earned since its period started, up to `burst`. Keeps the
/// part of a period already elapsed, so tokens come exactly every `refill`.
fn refilled(bucket: Bucket, burst: u32, refill: Duration, now: Instant) -> Bucket {
    if bucket.tokens >= burst {
        // Full: the next period starts when a token is taken.
        return Bucket {
            tokens: burst,
            since: now,
            ..bucket
        };
    }
    if refill.is_zero() {
        return Bucket {
            tokens: burst,
            since: now,
            ..bucket
        };
    }
    let elapsed = now.saturating_duration_since(bucket.since);
    let earned = elapsed.as_nanos() / refill.as_nanos();
    let missing = burst - bucket.tokens;
    if earned >= u128::from(missing) {
        return Bucket {
            tokens: burst,
            since: now,
            ..bucket
        };
    }
    // earned < missing <= u32::MAX, so the conversion and the product fit.
    let earned = u32::try_from(earned).unwrap_or(missing);
    Bucket {
        tokens: bucket.tokens + earned,
        since: bucket.since + refill * earned,
        ..bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, host))
    }

    fn admitted(limiter: &mut HandshakeLimiter, source: IpAddr, now: Instant) -> bool {
        matches!(limiter.try_acquire(source, now), Admission::Admitted { .. })
    }

    #[test]
    fn a_burst_then_one_token_per_period() {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut limiter = HandshakeLimiter::new(3, period, 16);
        for _ in 0..3 {
            assert!(admitted(&mut limiter, ip(1), t0));
        }
        assert!(!admitted(&mut limiter, ip(1), t0));
        assert!(!admitted(&mut limiter, ip(1), t0 + period / 2));
        assert_eq!(limiter.tokens(ip(1), t0 + period), 1);
        assert!(admitted(&mut limiter, ip(1), t0 + period));
        assert!(!admitted(&mut limiter, ip(1), t0 + period + period / 2));
        // Fractions of a period are kept: the next token is due at 2 periods, not 2.5.
        assert!(admitted(&mut limiter, ip(1), t0 + 2 * period));
        // A long pause refills to the burst, never beyond.
        let later = t0 + 1000 * period;
        assert_eq!(limiter.tokens(ip(1), later), 3);
        for _ in 0..3 {
            assert!(admitted(&mut limiter, ip(1), later));
        }
        assert!(!admitted(&mut limiter, ip(1), later));
    }

    #[test]
    fn sources_are_independent_and_ports_do_not_matter() {
        let t0 = Instant::now();
        let mut limiter = HandshakeLimiter::new(1, Duration::from_secs(1), 16);
        assert!(admitted(&mut limiter, ip(1), t0));
        assert!(!admitted(&mut limiter, ip(1), t0));
        assert!(admitted(&mut limiter, ip(2), t0));
        // The IPv4-mapped form is the same source.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert!(!admitted(&mut limiter, mapped, t0));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert!(admitted(&mut limiter, v6, t0));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_used() {
        let t0 = Instant::now();
        let mut limiter = HandshakeLimiter::new(1, Duration::from_secs(3600), 4);
        for host in 1..=4 {
            assert_eq!(
                limiter.try_acquire(ip(host), t0),
                Admission::Admitted { evicted: false }
            );
        }
        // Touch 1 so that 2 is now the oldest.
        assert_eq!(limiter.try_acquire(ip(1), t0), Admission::Limited);
        assert_eq!(
            limiter.try_acquire(ip(5), t0),
            Admission::Admitted { evicted: true }
        );
        assert_eq!(limiter.len(), 4);
        // 1, 3, 4 still remembered (empty); 2 was forgotten and starts afresh.
        for host in [1, 3, 4] {
            assert_eq!(limiter.tokens(ip(host), t0), 0, "{host}");
        }
        assert_eq!(limiter.tokens(ip(2), t0), 1);
        for host in 10..200 {
            limiter.try_acquire(ip(host), t0);
            assert!(limiter.len() <= 4);
        }
    }

    #[test]
    fn degenerate_settings_do_not_panic() {
        let t0 = Instant::now();
        let mut none = HandshakeLimiter::new(0, Duration::from_secs(1), 0);
        assert_eq!(none.try_acquire(ip(1), t0), Admission::Limited);
        assert_eq!(
            none.try_acquire(ip(1), t0 + Duration::from_secs(10)),
            Admission::Limited
        );
        let mut unlimited = HandshakeLimiter::new(1, Duration::ZERO, 1);
        for _ in 0..10 {
            assert!(admitted(&mut unlimited, ip(1), t0));
        }
        // Time going backwards (it does not, but) earns nothing and does not panic.
        let mut limiter = HandshakeLimiter::new(2, Duration::from_millis(10), 4);
        let later = t0 + Duration::from_secs(1);
        assert!(admitted(&mut limiter, ip(1), later));
        assert!(admitted(&mut limiter, ip(1), later));
        assert!(!admitted(&mut limiter, ip(1), t0));
        let huge = HandshakeLimiter::new(u32::MAX, Duration::from_nanos(1), 1);
        assert_eq!(huge.tokens(ip(1), later), u32::MAX);
    }
}
