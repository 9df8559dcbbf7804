//! The key log a node writes with `SOCKMSG_KEYLOG` (SPEC.md §5.4), and opening DATA
//! packets with it: each connection id's generations of traffic keys, derived on demand.

use std::collections::HashMap;

use sockmsg_wire::session::crypto::{next_generation, PacketKey};

/// Why a key log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyLogError {
    #[error("line {line}: {why}")]
    Line { line: usize, why: &'static str },
}

/// Generations tried beyond the highest seen, per connection id.
const LOOKAHEAD: usize = 2;
/// Generations kept per connection id at most (a session rekeys every 2 minutes).
const MAX_GENERATIONS: usize = 4096;

struct Direction {
    /// Secrets of generations 0..=n, derived as needed.
    secrets: Vec<[u8; 32]>,
    keys: Vec<PacketKey>,
    /// The highest generation a packet opened with.
    current: usize,
}

impl Direction {
    fn key(&mut self, generation: usize) -> Option<&PacketKey> {
        if generation >= MAX_GENERATIONS {
            return None;
        }
        while self.secrets.len() <= generation {
            let last = *self.secrets.last()?;
            self.secrets.push(next_generation(&last));
        }
        while self.keys.len() <= generation {
            let secret = self.secrets[self.keys.len()];
            self.keys.push(PacketKey::new(&secret));
        }
        self.keys.get(generation)
    }
}

/// Traffic secrets by connection id.
#[derive(Default)]
pub struct KeyLog {
    directions: HashMap<u64, Direction>,
}

impl KeyLog {
    pub fn parse(text: &str) -> Result<KeyLog, KeyLogError> {
        let mut log = KeyLog::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| KeyLogError::Line { line: i + 1, why };
            let mut fields = line.split_ascii_whitespace();
            if fields.next() != Some("SOCKMSG_TRAFFIC_SECRET") {
                return Err(bad("expected SOCKMSG_TRAFFIC_SECRET"));
            }
            let cid = fields
                .next()
                .filter(|f| f.len() == 16)
                .and_then(|f| u64::from_str_radix(f, 16).ok())
                .ok_or_else(|| bad("connection id: 16 hex digits"))?;
            let secret = fields
                .next()
                .and_then(hex32)
                .ok_or_else(|| bad("secret: 64 hex digits"))?;
            if fields.next().is_some() {
                return Err(bad("extra fields"));
            }
            log.directions.insert(
                cid,
                Direction {
                    secrets: vec![secret],
                    keys: Vec::new(),
                    current: 0,
                },
            );
        }
        Ok(log)
    }

    /// Adds the connection ids of `other` this log does not have yet (a key log read
    /// again while nodes append to it).
    pub fn merge(&mut self, other: KeyLog) {
        for (cid, direction) in other.directions {
            self.directions.entry(cid).or_insert(direction);
        }
    }

    pub fn len(&self) -> usize {
        self.directions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.directions.is_empty()
    }

    /// Decrypts a DATA packet's `payload` (ciphertext and tag) sent to `cid` with the
    /// `key_phase` bit; returns the plaintext, or `None` without a key that opens it.
    pub fn open(
        &mut self,
        cid: u64,
        key_phase: bool,
        packet_number: u64,
        header: &[u8],
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let direction = self.directions.get_mut(&cid)?;
        let parity = usize::from(key_phase);
        let current = direction.current;
        let mut candidates: Vec<usize> = (current.saturating_sub(2)..=current + LOOKAHEAD)
            .filter(|g| g % 2 == parity)
            .collect();
        // Most packets use the current generation: try it first.
        candidates.sort_by_key(|g| g.abs_diff(current));
        for generation in candidates {
            let Some(key) = direction.key(generation) else {
                continue;
            };
            let mut buf = payload.to_vec();
            if let Ok(len) = key.open(packet_number, header, &mut buf) {
                buf.truncate(len);
                direction.current = direction.current.max(generation);
                return Some(buf);
            }
        }
        None
    }
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
