//! Admission of registrations and rotations, before the rules of [`crate::registry`]:
//! single-use challenge nonces, with a bounded cache of the answer each one got, and a
//! token bucket per source address. Sans-IO: time comes in as `now_ms`.
//!
//! **Nonces** (SPEC.md §7.28). A nonce is *consumed* by the first KEY_REGISTER or
//! KEY_ROTATE that carries it and whose proof of possession verifies; from then on it
//! stands for that request and its answer:
//!
//! - the same request again (byte for byte the same frame, say a retransmission) gets the
//!   same KEY_RESULT, without being checked or committed again (SPEC.md §8); while the
//!   first copy is still being committed, a copy is answered `UNAVAILABLE` (retry);
//! - any other request with that nonce is refused `BAD_NONCE`.
//!
//! A request refused *before* its proof of possession verified (a bad signature, a
//! refused rate) does not consume the nonce: whoever saw the nonce on the wire cannot
//! burn it for its owner with a forged request. A request the committer could not take
//! (queue full, commit failed) releases its nonce, so that a retry is decided anew.
//!
//! Used nonces are remembered until they expire ([`crate::registry::NONCE_LIFETIME_MS`]
//! after issue; the nonce check refuses them by then anyway), at most
//! [`Limits::max_used_nonces`] at a time (default 65,536, about 10 MB at worst: a nonce,
//! a request digest and a short answer each). When that many unexpired nonces are in use,
//! registrations are refused `UNAVAILABLE` until some expire: a used nonce is never
//! forgotten early, since that would make it reusable.
//!
//! **Rates.** A request that would bind a free name or rotate a key costs its source one
//! token, taken before its signature is checked (so a flood of forgeries is limited too).
//! Each source has a bucket of [`Limits::register_burst`] tokens refilled at
//! [`Limits::register_per_minute`]; an empty bucket gets `UNAVAILABLE` with the time to
//! wait. Re-registering a name to the key it already has (what every node does at each
//! start) changes nothing and costs nothing. A source is an IPv4 address or an IPv6 /64
//! (one host's IPv6 addresses share a prefix). At most [`Limits::max_sources`] buckets
//! are kept (default 16,384); idle ones (full again) are dropped first, and while the
//! table is still full, every source not in it shares one overflow bucket.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use crate::registry::Refusal;

/// Default `keymgr.register_burst`: one full group (64 members) from one host at once.
pub const DEFAULT_REGISTER_BURST: u32 = 64;
/// Default `keymgr.register_per_minute`.
pub const DEFAULT_REGISTER_PER_MINUTE: u32 = 60;
/// Default `keymgr.max_names_per_key`.
pub const DEFAULT_MAX_NAMES_PER_KEY: u32 = 4;
/// Default [`Limits::max_sources`].
pub const DEFAULT_MAX_SOURCES: usize = 16_384;
/// Default [`Limits::max_used_nonces`].
pub const DEFAULT_MAX_USED_NONCES: usize = 65_536;

/// How often, at most, a full bucket table is swept for idle buckets.
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// The admission limits (config.yml `keymgr.register_burst`, `register_per_minute`,
/// `max_names_per_key`; the two table sizes are not in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// New names or rotations a source may make at once (its bucket's size).
    pub register_burst: u32,
    /// Tokens a source's bucket gets back per minute.
    pub register_per_minute: u32,
    /// Names one public key may be bound to (counted over every record, revoked too).
    pub max_names_per_key: u32,
    /// Source buckets kept at most.
    pub max_sources: usize,
    /// Unexpired used nonces remembered at most.
    pub max_used_nonces: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            register_burst: DEFAULT_REGISTER_BURST,
            register_per_minute: DEFAULT_REGISTER_PER_MINUTE,
            max_names_per_key: DEFAULT_MAX_NAMES_PER_KEY,
            max_sources: DEFAULT_MAX_SOURCES,
            max_used_nonces: DEFAULT_MAX_USED_NONCES,
        }
    }
}

impl Limits {
    /// No limits worth the name: for load tests and benchmarks.
    pub fn unlimited() -> Limits {
        Limits {
            register_burst: u32::MAX,
            register_per_minute: u32::MAX,
            max_names_per_key: u32::MAX,
            max_sources: DEFAULT_MAX_SOURCES,
            max_used_nonces: 1 << 22,
        }
    }

    /// The limits config.yml gives; the table sizes keep their defaults.
    pub fn from_config(config: &sockmsg_config::KeymgrConfig) -> Limits {
        Limits {
            register_burst: config.register_burst,
            register_per_minute: config.register_per_minute,
            max_names_per_key: config.max_names_per_key,
            ..Limits::default()
        }
    }
}

/// SHA-256 of a request frame's encoding: what "the same request" means.
pub type RequestDigest = [u8; 32];

/// What is known of a nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not used yet.
    Fresh,
    /// Used by this very request, which got this answer.
    Answered(Result<(), Refusal>),
    /// Used by this very request, which is still being committed.
    InProgress,
    /// Used by another request.
    Conflict,
}

/// Why a token or a nonce could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The source's bucket is empty: retry after this many milliseconds.
    RateLimited { retry_after_ms: u64 },
    /// Too many unexpired nonces are in use.
    LedgerFull,
}

#[derive(Debug)]
struct Used {
    request: RequestDigest,
    /// `None` while the request is being committed.
    answer: Option<Result<(), Refusal>>,
    expires_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a token.
    milli: u64,
    at_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    used: HashMap<[u8; 32], Used>,
    /// `(expires_ms, nonce)` of every entry of `used`, oldest first.
    expiries: BTreeSet<(u64, [u8; 32])>,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
    last_sweep_ms: u64,
}

/// Used nonces and source buckets; shared (`&self`), locked inside.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    inner: Mutex<Inner>,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            inner: Mutex::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change below leaves the maps consistent between statements that could
        // panic, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `nonce` stands for, as far as `request` is concerned.
    pub fn seen(&self, nonce: &[u8; 32], request: &RequestDigest) -> Seen {
        match self.lock().used.get(nonce) {
            None => Seen::Fresh,
            Some(used) if used.request != *request => Seen::Conflict,
            Some(Used { answer: None, .. }) => Seen::InProgress,
            Some(Used {
                answer: Some(answer),
                ..
            }) => Seen::Answered(answer.clone()),
        }
    }

    /// Consumes `nonce` for `request` (valid until `expires_ms`). `Ok(Seen::Fresh)` if it
    /// was ours to take; another [`Seen`] if someone took it meanwhile; `Err` if the
    /// ledger is full of unexpired nonces.
    pub fn consume(
        &self,
        nonce: &[u8; 32],
        request: &RequestDigest,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<Seen, Denied> {
        let mut inner = self.lock();
        inner.expire(now_ms);
        if inner.used.contains_key(nonce) {
            drop(inner);
            return Ok(self.seen(nonce, request));
        }
        if inner.used.len() >= self.limits.max_used_nonces {
            return Err(Denied::LedgerFull);
        }
        inner.used.insert(
            *nonce,
            Used {
                request: *request,
                answer: None,
                expires_ms,
            },
        );
        inner.expiries.insert((expires_ms, *nonce));
        Ok(Seen::Fresh)
    }

    /// Records the answer the request that consumed `nonce` got.
    pub fn answer(&self, nonce: &[u8; 32], answer: Result<(), Refusal>) {
        if let Some(used) = self.lock().used.get_mut(nonce) {
            used.answer = Some(answer);
        }
    }

    /// Gives `nonce` back (its request was not decided: the committer could not take it).
    pub fn release(&self, nonce: &[u8; 32]) {
        let mut inner = self.lock();
        if let Some(used) = inner.used.remove(nonce) {
            inner.expiries.remove(&(used.expires_ms, *nonce));
        }
    }

    /// Used nonces remembered now.
    pub fn used_nonces(&self) -> usize {
        self.lock().used.len()
    }

    /// Source buckets kept now.
    pub fn sources(&self) -> usize {
        self.lock().buckets.len()
    }

    /// Takes one token from `source`'s bucket.
    pub fn take_token(&self, source: IpAddr, now_ms: u64) -> Result<(), Denied> {
        let limits = self.limits;
        let capacity = u64::from(limits.register_burst).saturating_mul(1000);
        let refill = |bucket: &mut Bucket| {
            let elapsed = now_ms.saturating_sub(bucket.at_ms);
            // Thousandths of a token per ms = per_minute / 60.
            let gained = elapsed.saturating_mul(u64::from(limits.register_per_minute)) / 60;
            bucket.milli = bucket.milli.saturating_add(gained).min(capacity);
            bucket.at_ms = bucket.at_ms.max(now_ms);
        };
        let full = Bucket {
            milli: capacity,
            at_ms: now_ms,
        };
        let key = source_key(source);
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !inner.buckets.contains_key(&key)
            && inner.buckets.len() >= limits.max_sources
            && now_ms.saturating_sub(inner.last_sweep_ms) >= SWEEP_INTERVAL_MS
        {
            inner.last_sweep_ms = now_ms;
            inner.buckets.retain(|_, bucket| {
                refill(bucket);
                bucket.milli < capacity
            });
        }
        let bucket = if inner.buckets.contains_key(&key) || inner.buckets.len() < limits.max_sources
        {
            inner.buckets.entry(key).or_insert(full)
        } else {
            inner.overflow.get_or_insert(full)
        };
        refill(bucket);
        if bucket.milli >= 1000 {
            bucket.milli -= 1000;
            return Ok(());
        }
        let missing = 1000 - bucket.milli;
        let per_minute = u64::from(limits.register_per_minute).max(1);
        // ms until `missing` thousandths have been refilled, rounded up.
        let retry_after_ms = (missing.saturating_mul(60)).div_ceil(per_minute);
        Err(Denied::RateLimited { retry_after_ms })
    }
}

impl Inner {
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(expires_ms, nonce)) = self.expiries.first() {
            if expires_ms >= now_ms {
                break;
            }
            self.expiries.pop_first();
            self.used.remove(&nonce);
        }
    }
}

/// The bucket a source address counts against: an IPv4 address (also when mapped into
/// IPv6), or an IPv6 /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmsg_wire::frame::KeyResultCode;

    fn limits(burst: u32, per_minute: u32) -> Limits {
        Limits {
            register_burst: burst,
            register_per_minute: per_minute,
            max_sources: 4,
            max_used_nonces: 3,
            ..Limits::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_nonce_is_taken_once_and_answers_the_same_request_the_same_way() {
        let admission = Admission::new(limits(1, 1));
        let (nonce, a, b) = ([1; 32], [0xa; 32], [0xb; 32]);
        assert_eq!(admission.seen(&nonce, &a), Seen::Fresh);
        assert_eq!(admission.consume(&nonce, &a, 100, 0), Ok(Seen::Fresh));
        assert_eq!(admission.seen(&nonce, &a), Seen::InProgress);
        assert_eq!(admission.seen(&nonce, &b), Seen::Conflict);
        // Someone else consuming it meanwhile learns what it stands for.
        assert_eq!(admission.consume(&nonce, &b, 100, 0), Ok(Seen::Conflict));
        assert_eq!(admission.consume(&nonce, &a, 100, 0), Ok(Seen::InProgress));
        let refusal = Refusal {
            code: KeyResultCode::NAME_TAKEN,
            reason: "taken".into(),
        };
        admission.answer(&nonce, Err(refusal.clone()));
        assert_eq!(admission.seen(&nonce, &a), Seen::Answered(Err(refusal)));
        assert_eq!(admission.seen(&nonce, &b), Seen::Conflict);
        // Released: fresh again.
        admission.release(&nonce);
        assert_eq!(admission.seen(&nonce, &b), Seen::Fresh);
        assert_eq!(admission.used_nonces(), 0);
    }

    #[test]
    fn the_ledger_is_bounded_and_forgets_only_expired_nonces() {
        let admission = Admission::new(limits(1, 1));
        let r = [0; 32];
        for n in 0..3u8 {
            assert_eq!(
                admission.consume(&[n; 32], &r, 100 + u64::from(n), 50),
                Ok(Seen::Fresh)
            );
        }
        // Full of unexpired nonces: refused, nothing forgotten.
        assert_eq!(
            admission.consume(&[9; 32], &r, 200, 100),
            Err(Denied::LedgerFull)
        );
        assert_eq!(admission.used_nonces(), 3);
        assert_eq!(admission.seen(&[0; 32], &r), Seen::InProgress);
        // At 101 the first has expired (at 100): room for one.
        assert_eq!(admission.consume(&[9; 32], &r, 200, 101), Ok(Seen::Fresh));
        assert_eq!(admission.seen(&[0; 32], &r), Seen::Fresh);
        assert_eq!(admission.seen(&[1; 32], &r), Seen::InProgress);
        assert_eq!(admission.used_nonces(), 3);
    }

    #[test]
    fn a_bucket_allows_a_burst_then_refills_at_the_rate() {
        // 2 at once, then one every 30 s.
        let admission = Admission::new(limits(2, 2));
        let source = ip("192.0.2.1");
        assert_eq!(admission.take_token(source, 1_000), Ok(()));
        assert_eq!(admission.take_token(source, 1_000), Ok(()));
        assert_eq!(
            admission.take_token(source, 1_000),
            Err(Denied::RateLimited {
                retry_after_ms: 30_000
            })
        );
        // Another source has its own bucket.
        assert_eq!(admission.take_token(ip("192.0.2.2"), 1_000), Ok(()));
        assert_eq!(
            admission.take_token(source, 16_000),
            Err(Denied::RateLimited {
                retry_after_ms: 15_000
            })
        );
        assert_eq!(admission.take_token(source, 31_000), Ok(()));
        assert!(admission.take_token(source, 31_000).is_err());
        // Never more than the burst, however long the pause.
        assert_eq!(admission.take_token(source, 10_000_000), Ok(()));
        assert_eq!(admission.take_token(source, 10_000_000), Ok(()));
        assert!(admission.take_token(source, 10_000_000).is_err());
    }

    #[test]
    fn an_ipv6_host_is_one_source_and_the_table_is_bounded() {
        let admission = Admission::new(limits(1, 1));
        assert_eq!(admission.take_token(ip("2001:db8:1:2::1"), 0), Ok(()));
        // Same /64, another address: the same (empty) bucket.
        assert!(admission.take_token(ip("2001:db8:1:2::ffff"), 0).is_err());
        assert_eq!(admission.take_token(ip("2001:db8:1:3::1"), 0), Ok(()));
        assert_eq!(
            source_key(ip("::ffff:192.0.2.7")),
            source_key(ip("192.0.2.7"))
        );
        // Fill the table (4) with empty buckets; the next sources share the overflow.
        assert_eq!(admission.take_token(ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(admission.take_token(ip("10.0.0.2"), 0), Ok(()));
        assert_eq!(admission.sources(), 4);
        assert_eq!(admission.take_token(ip("10.0.0.3"), 0), Ok(()));
        assert!(
            admission.take_token(ip("10.0.0.4"), 0).is_err(),
            "the overflow bucket is shared"
        );
        assert_eq!(admission.sources(), 4);
        // Once the buckets have refilled, a sweep drops them and new sources get theirs.
        assert_eq!(admission.take_token(ip("10.0.0.5"), 120_000), Ok(()));
        assert_eq!(admission.sources(), 1);
    }
}
