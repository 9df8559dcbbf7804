//! Stateless retry cookies (as QUIC Retry tokens and WireGuard cookies).
//!
//! A responder that has not yet validated a source address answers its first INITIAL
//! with a RETRY carrying a cookie, and keeps no state. Only an INITIAL that echoes a
//! valid cookie makes it do the expensive part (RSA signing) or send more than 3× what it
//! received (SPEC §4). A valid cookie proves the initiator can receive datagrams at the
//! address it claims, so a spoofed source cannot turn us into an amplifier or burn our CPU.
//!
//! # Format
//!
//! ```text
//! cookie = timestamp (u64 BE, seconds) ‖ HMAC-SHA256(secret, input)[..24]     32 bytes
//! input  = "sockmsg/1 cookie\0" ‖ family (4|6) ‖ address (4|16) ‖ port (u16 BE)
//!          ‖ initiator_cid (u64 BE) ‖ timestamp (u64 BE)
//! ```
//!
//! The cookie is opaque to the initiator, so only the minting node needs to understand
//! the format. The timestamp is in clear (it only reveals the responder's clock); the MAC
//! covers it, so it cannot be moved. IPv4-mapped IPv6 addresses are canonicalised to IPv4
//! so that a dual-stack socket names one peer one way; the IPv6 flow label and scope are
//! not bound (SPEC §6 does not carry them either). A 24-byte (192-bit) MAC leaves forgery
//! hopeless; comparisons are constant-time.
//!
//! Time is passed in (sans-IO): `now_secs` is any clock in whole seconds, the same clock
//! for minting and verifying (e.g. seconds since the node started). To rotate the secret,
//! replace the [`CookieKey`]: cookies minted under the old one are refused and the
//! initiator simply gets another RETRY.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Bytes in the timestamp at the start of a cookie.
const TIMESTAMP_LEN: usize = 8;
/// Bytes of the HMAC-SHA256 output kept (its leftmost bytes).
const MAC_LEN: usize = 24;
/// Bytes in a cookie, as carried in RETRY and echoed in HANDSHAKE_INIT.
pub const COOKIE_LEN: usize = TIMESTAMP_LEN + MAC_LEN;
/// How long a cookie stays valid by default, in seconds: a few round trips, with margin.
pub const DEFAULT_COOKIE_LIFETIME_SECS: u64 = 10;

/// Domain label: this MAC can never be confused with another use of the same secret.
const LABEL: &[u8] = b"sockmsg/1 cookie\0";

// A cookie travels in a `Token` (at most 64 bytes, SPEC §6).
const _: () = assert!(COOKIE_LEN <= crate::limits::MAX_TOKEN_LEN);

/// Why a cookie was refused. The responder answers any of them with a fresh RETRY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CookieError {
    /// Not [`COOKIE_LEN`] bytes: not something we minted.
    #[error("cookie of {len} bytes, expected {COOKIE_LEN}")]
    Malformed { len: usize },
    /// Minted more than the lifetime ago.
    #[error("cookie expired")]
    Expired,
    /// Its timestamp is later than now: forged, or our clock went backwards.
    #[error("cookie timestamp is in the future")]
    FromFuture,
    /// The MAC does not match: forged, or minted for another address, port or
    /// connection id, or under another secret.
    #[error("cookie authentication failed")]
    BadMac,
}

/// The secret that mints and checks cookies, with their lifetime.
#[derive(Clone)]
pub struct CookieKey {
    /// HMAC already keyed with the secret; cloned per cookie (no re-keying cost).
    mac: Hmac<Sha256>,
    lifetime_secs: u64,
}

impl fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieKey")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl CookieKey {
    /// A key with the [`DEFAULT_COOKIE_LIFETIME_SECS`]. Draw `secret` from the node's
    /// seeded rng at start; it never leaves the node.
    pub fn new(secret: [u8; 32]) -> Self {
        Self::with_lifetime(secret, DEFAULT_COOKIE_LIFETIME_SECS)
    }

    /// A key whose cookies are accepted for `lifetime_secs` seconds after minting.
    pub fn with_lifetime(secret: [u8; 32], lifetime_secs: u64) -> Self {
        Self {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&secret)
                .expect("HMAC accepts keys of any length"),
            lifetime_secs,
        }
    }

    /// The lifetime of the cookies, in seconds.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    /// The cookie for an INITIAL from `peer` choosing `initiator_cid`, minted at `now_secs`.
    pub fn mint(&self, peer: SocketAddr, initiator_cid: u64, now_secs: u64) -> [u8; COOKIE_LEN] {
        let tag = self
            .mac_for(peer, initiator_cid, now_secs)
            .finalize()
            .into_bytes();
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[..TIMESTAMP_LEN].copy_from_slice(&now_secs.to_be_bytes());
        cookie[TIMESTAMP_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        cookie
    }

    /// Checks a cookie echoed by `peer` in an INITIAL choosing `initiator_cid`.
    ///
    /// Accepts it if we minted it for exactly this address, port and connection id, at
    /// most the lifetime ago and not after `now_secs`. The cheap checks (length, time)
    /// come first; the MAC is compared in constant time.
    pub fn verify(
        &self,
        peer: SocketAddr,
        initiator_cid: u64,
        cookie: &[u8],
        now_secs: u64,
    ) -> Result<(), CookieError> {
        let (timestamp, tag) = split(cookie)?;
        self.check_age(timestamp, now_secs)?;
        self.mac_for(peer, initiator_cid, timestamp)
            .verify_truncated_left(tag)
            .map_err(|_| CookieError::BadMac)
    }

    /// Refuses timestamps in the future or older than the lifetime.
    fn check_age(&self, timestamp: u64, now_secs: u64) -> Result<(), CookieError> {
        let age = now_secs
            .checked_sub(timestamp)
            .ok_or(CookieError::FromFuture)?;
        if age > self.lifetime_secs {
            return Err(CookieError::Expired);
        }
        Ok(())
    }

    /// The HMAC state after absorbing the cookie input (see the module docs).
    fn mac_for(&self, peer: SocketAddr, initiator_cid: u64, timestamp: u64) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(LABEL);
        match peer.ip().to_canonical() {
            IpAddr::V4(ip) => {
                mac.update(&[4]);
                mac.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                mac.update(&[6]);
                mac.update(&ip.octets());
            }
        }
        mac.update(&peer.port().to_be_bytes());
        mac.update(&initiator_cid.to_be_bytes());
        mac.update(&timestamp.to_be_bytes());
        mac
    }
}

/// Splits a cookie into its timestamp and MAC, refusing any other length.
fn split(cookie: &[u8]) -> Result<(u64, &[u8]), CookieError> {
    let malformed = CookieError::Malformed { len: cookie.len() };
    if cookie.len() != COOKIE_LEN {
        return Err(malformed);
    }
    let (timestamp, tag) = cookie.split_at(TIMESTAMP_LEN);
    let timestamp = <[u8; TIMESTAMP_LEN]>::try_from(timestamp).map_err(|_| malformed)?;
    Ok((u64::from_be_bytes(timestamp), tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SECRET: [u8; 32] = [7; 32];
    const CID: u64 = 0x0a0b_0c0d_0e0f_1011;
    const NOW: u64 = 1_000;

    fn peer() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 7420))
    }

    fn key() -> CookieKey {
        CookieKey::new(SECRET)
    }

    #[test]
    fn round_trip() {
        let cookie = key().mint(peer(), CID, NOW);
        assert_eq!(cookie.len(), COOKIE_LEN);
        assert_eq!(key().verify(peer(), CID, &cookie, NOW), Ok(()));
    }

    #[test]
    fn minting_is_deterministic() {
        assert_eq!(key().mint(peer(), CID, NOW), key().mint(peer(), CID, NOW));
        assert_ne!(
            key().mint(peer(), CID, NOW),
            key().mint(peer(), CID, NOW + 1)
        );
    }

    #[test]
    fn accepted_until_the_end_of_its_lifetime() {
        let cookie = key().mint(peer(), CID, NOW);
        let end = NOW + DEFAULT_COOKIE_LIFETIME_SECS;
        assert_eq!(key().verify(peer(), CID, &cookie, end), Ok(()));
        assert_eq!(
            key().verify(peer(), CID, &cookie, end + 1),
            Err(CookieError::Expired)
        );
    }

    #[test]
    fn lifetime_is_configurable() {
        let short = CookieKey::with_lifetime(SECRET, 2);
        let cookie = short.mint(peer(), CID, NOW);
        assert_eq!(short.verify(peer(), CID, &cookie, NOW + 2), Ok(()));
        assert_eq!(
            short.verify(peer(), CID, &cookie, NOW + 3),
            Err(CookieError::Expired)
        );
    }

    #[test]
    fn refused_from_the_future() {
        let cookie = key().mint(peer(), CID, NOW);
        assert_eq!(
            key().verify(peer(), CID, &cookie, NOW - 1),
            Err(CookieError::FromFuture)
        );
    }

    #[test]
    fn refused_for_another_address_port_or_cid() {
        let cookie = key().mint(peer(), CID, NOW);
        let other_ip = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 7420));
        let other_port = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 7421));
        for (addr, cid) in [(other_ip, CID), (other_port, CID), (peer(), CID + 1)] {
            assert_eq!(
                key().verify(addr, cid, &cookie, NOW),
                Err(CookieError::BadMac)
            );
        }
    }

    #[test]
    fn refused_under_another_secret() {
        let cookie = key().mint(peer(), CID, NOW);
        let other = CookieKey::new([8; 32]);
        assert_eq!(
            other.verify(peer(), CID, &cookie, NOW),
            Err(CookieError::BadMac)
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_peer() {
        let mapped = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(), 7420));
        let cookie = key().mint(peer(), CID, NOW);
        assert_eq!(key().verify(mapped, CID, &cookie, NOW), Ok(()));
    }

    #[test]
    fn ipv6_peers_are_bound_too() {
        let a = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 7420));
        let b = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 7420));
        let cookie = key().mint(a, CID, NOW);
        assert_eq!(key().verify(a, CID, &cookie, NOW), Ok(()));
        assert_eq!(key().verify(b, CID, &cookie, NOW), Err(CookieError::BadMac));
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let cookie = key().mint(peer(), CID, NOW);
        for i in 0..COOKIE_LEN {
            for bit in 0..8 {
                let mut bad = cookie;
                bad[i] ^= 1 << bit;
                assert!(
                    key().verify(peer(), CID, &bad, NOW).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn moving_the_timestamp_is_refused() {
        let mut cookie = key().mint(peer(), CID - 1, NOW - 5);
        cookie[..TIMESTAMP_LEN].copy_from_slice(&NOW.to_be_bytes());
        assert_eq!(
            key().verify(peer(), CID - 1, &cookie, NOW),
            Err(CookieError::BadMac)
        );
    }

    #[test]
    fn truncated_or_garbage_is_refused_without_panic() {
        let cookie = key().mint(peer(), CID, NOW);
        for len in 0..COOKIE_LEN {
            assert_eq!(
                key().verify(peer(), CID, &cookie[..len], NOW),
                Err(CookieError::Malformed { len })
            );
        }
        let mut long = cookie.to_vec();
        long.push(0);
        assert_eq!(
            key().verify(peer(), CID, &long, NOW),
            Err(CookieError::Malformed {
                len: COOKIE_LEN + 1
            })
        );
        // Extreme timestamps: no overflow in the age computation.
        for timestamp in [0, u64::MAX] {
            let mut garbage = [0xa5u8; COOKIE_LEN];
            garbage[..TIMESTAMP_LEN].copy_from_slice(&timestamp.to_be_bytes());
            for now in [0, NOW, u64::MAX] {
                assert!(key().verify(peer(), CID, &garbage, now).is_err());
            }
        }
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let shown = format!("{:?}", key());
        assert!(shown.contains("lifetime_secs"));
        assert!(!shown.contains("7, 7"));
    }
}
