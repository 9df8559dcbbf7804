//! Key-manager frames: lookups, registrations with proof of possession, rotations, and
//! the signed key records that authenticate every session. They travel in cleartext
//! REQUEST/RESPONSE packets; records are signed by the manager, requests by the key
//! they concern.

use crate::codec::{open_code, wire_struct, List, Name, PublicKey, Signature, Text, Token};
use crate::limits::{DIGEST_LEN, NONCE_LEN};

wire_struct! {
    /// Asks for the key record of `name`.
    pub struct KeyLookup<'a> {
        pub name: Name<'a>,
    }
}

open_code! {
    /// The state of a key record.
    pub struct KeyStatus(u8) {
        /// The key is bound to the name and in force.
        ACTIVE = 0x00,
        /// The key was revoked: refuse sessions authenticated by it.
        REVOKED = 0x01,
    }
}

wire_struct! {
    /// Where a record sits in the batch the key manager signed: the batch's size, the
    /// record's index in it, and the sibling hashes from the record's leaf up to the root
    /// (an RFC 9162 §2.1.3 inclusion proof). One signature covers a whole group commit,
    /// so durable registration is not capped at one RSA signature per record.
    pub struct BatchProof<'a> {
        pub size: u32,
        pub index: u32,
        pub path: List<'a, &'a [u8; DIGEST_LEN]>,
    }
}

wire_struct! {
    /// A name's key, as the key manager wrote it: the record's fields, its place in the
    /// signed batch, and the manager's signature over that batch's root (SPEC.md §9).
    /// Signed once, when written, so a lookup costs no RSA operation.
    pub struct KeyRecord<'a> {
        pub name: Name<'a>,
        pub public_key: PublicKey<'a>,
        /// Increases with every change of the record (rotation, revocation).
        pub serial: u64,
        /// Milliseconds since the Unix epoch when the record was written.
        pub issued_at_ms: u64,
        pub status: KeyStatus,
        pub batch: BatchProof<'a>,
        pub signature: Signature<'a>,
    }
}

wire_struct! {
    /// A fresh nonce from the key manager, to be signed in a registration or rotation
    /// so that a captured request cannot be replayed.
    pub struct KeyChallenge<'a> {
        pub nonce: &'a [u8; NONCE_LEN],
    }
}

wire_struct! {
    /// Binds `name` to `public_key`. `signature` is by `public_key` itself (proof of
    /// possession) over the fields before it.
    pub struct KeyRegister<'a> {
        pub name: Name<'a>,
        pub public_key: PublicKey<'a>,
        pub nonce: &'a [u8; NONCE_LEN],
        /// An enrollment token where the manager requires one; empty otherwise.
        pub invite: Token<'a>,
        pub signature: Signature<'a>,
    }
}

wire_struct! {
    /// Moves `name` to `new_public_key`. Both signatures cover the fields before
    /// `old_signature`: one by the key now bound to the name, one by the new key.
    pub struct KeyRotate<'a> {
        pub name: Name<'a>,
        pub new_public_key: PublicKey<'a>,
        pub nonce: &'a [u8; NONCE_LEN],
        pub old_signature: Signature<'a>,
        pub new_signature: Signature<'a>,
    }
}

open_code! {
    /// The key manager's verdict.
    pub struct KeyResultCode(u8) {
        /// Registered or rotated; committed to disk.
        OK = 0x00,
        /// No record for this name.
        NOT_FOUND = 0x01,
        /// The name is bound to another key.
        NAME_TAKEN = 0x02,
        /// A signature does not verify.
        BAD_SIGNATURE = 0x03,
        /// The nonce is unknown, expired or used.
        BAD_NONCE = 0x04,
        /// Registration needs a valid invite token.
        INVITE_REQUIRED = 0x05,
        /// The key is unacceptable (not RSA, too small, not DER).
        BAD_KEY = 0x06,
        /// The name's key is revoked.
        REVOKED = 0x07,
        /// The request was malformed or not understood.
        BAD_REQUEST = 0x08,
        /// The manager cannot answer now; retry later.
        UNAVAILABLE = 0x09,
    }
}

wire_struct! {
    /// The key manager's answer to a request it does not answer with a record.
    pub struct KeyResult<'a> {
        pub code: KeyResultCode,
        pub reason: Text<'a>,
    }
}
