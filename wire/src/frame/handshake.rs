//! Handshake frames (SIGMA-style, 1.5 round trips), carried in cleartext packets.
//!
//! ```text
//! initiator                                        responder
//!   INITIAL   [HANDSHAKE_INIT, PADDING]        ->
//!                                              <-  RETRY [RETRY]          (no valid cookie)
//!   INITIAL   [HANDSHAKE_INIT + cookie, PADDING] ->
//!                                              <-  HANDSHAKE [HANDSHAKE_RESPONSE]
//!   HANDSHAKE [HANDSHAKE_FINISH] + DATA ...    ->
//! ```
//!
//! These frames are not encrypted; they are authenticated by the RSA-PSS signatures over
//! the transcript, which binds both ephemeral keys, both names and the group.

use crate::codec::{wire_struct, Name, Signature, Token};
use crate::limits::X25519_KEY_LEN;

wire_struct! {
    /// The initiator's first message.
    pub struct HandshakeInit<'a> {
        /// The group both sides must belong to.
        pub group: Name<'a>,
        /// Who is connecting (its key record is looked up by this name).
        pub initiator: Name<'a>,
        /// The connection id the responder puts in packets it sends to the initiator.
        pub initiator_cid: u64,
        /// The initiator's X25519 ephemeral public key.
        pub ephemeral: &'a [u8; X25519_KEY_LEN],
        /// Empty on the first attempt; the responder's RETRY cookie afterwards.
        pub cookie: Token<'a>,
    }
}

wire_struct! {
    /// A stateless cookie proving the initiator's address, to be echoed in a new
    /// HANDSHAKE_INIT.
    pub struct Retry<'a> {
        pub cookie: Token<'a>,
    }
}

wire_struct! {
    /// The responder's answer to a HANDSHAKE_INIT with a valid cookie.
    pub struct HandshakeResponse<'a> {
        pub responder: Name<'a>,
        /// The connection id the initiator puts in packets it sends to the responder.
        pub responder_cid: u64,
        /// The responder's X25519 ephemeral public key.
        pub ephemeral: &'a [u8; X25519_KEY_LEN],
        /// RSA-PSS (SHA-256) by the responder over the transcript.
        pub signature: Signature<'a>,
    }
}

wire_struct! {
    /// The initiator's transcript signature; completes the handshake.
    pub struct HandshakeFinish<'a> {
        /// RSA-PSS (SHA-256) by the initiator over the transcript.
        pub signature: Signature<'a>,
    }
}
