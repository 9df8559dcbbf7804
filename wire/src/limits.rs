//! Every bound the decoder enforces, in one place.
//!
//! SPEC.md quotes these numbers; a decoder checks each length or count against the bytes
//! actually present *and* against the bound here before it uses the value, so a peer can
//! never make us read past a buffer or size anything by a number it chose.

/// Longest member, group or service name, in bytes (names are ASCII, see [`crate::Name`]).
pub const MAX_NAME_LEN: usize = 32;

/// Most members a group may have; bounds every member list and vote list.
pub const MAX_MEMBERS: usize = 64;

/// Most additional ranges in one ACK frame, after the first.
pub const MAX_ACK_RANGES: usize = 32;

/// Longest session message (before fragmentation into MESSAGE frames), in bytes.
pub const MAX_MESSAGE_LEN: usize = 65_536;

/// Longest chat line, in bytes: a CHAT frame must fit in one session message with room
/// for its other fields, and lines are rarely near this.
pub const MAX_CHAT_MESSAGE_LEN: usize = 65_536;

/// Longest retry or enrollment token (cookie, invite token), in bytes.
pub const MAX_TOKEN_LEN: usize = 64;

/// Longest human-readable reason (CLOSE, results), in bytes of UTF-8.
pub const MAX_REASON_LEN: usize = 255;

/// Longest RSA signature: 8192-bit keys give 1024-byte signatures.
pub const MAX_SIGNATURE_LEN: usize = 1024;

/// Longest RSA public key, DER-encoded SubjectPublicKeyInfo (8192-bit keys fit).
pub const MAX_PUBLIC_KEY_LEN: usize = 1100;

/// The payload length field is 16 bits, so no packet payload can exceed this.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;

/// Default largest UDP datagram a node sends (config.yml `datagram_size`).
pub const DEFAULT_DATAGRAM_SIZE: usize = 1200;

/// The Poly1305 authentication tag that ends every protected payload.
pub const AEAD_TAG_LEN: usize = 16;

/// An X25519 public key.
pub const X25519_KEY_LEN: usize = 32;

/// A key-manager challenge nonce.
pub const NONCE_LEN: usize = 32;

/// A SHA-256 digest (batch proofs).
pub const DIGEST_LEN: usize = 32;
