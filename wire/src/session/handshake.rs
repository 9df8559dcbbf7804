//! The handshake's transcript and what each side signs.
//!
//! Both sides sign a hash of the whole exchange (SIGMA's "sign both ephemerals and both
//! identities"): the group, both names, both connection ids and both X25519 ephemerals.
//! A signature therefore cannot be lifted into another session, another group, or a
//! session with someone else, and each side's label keeps the responder's signature from
//! being replayed as the initiator's. The cookie is not in the transcript: it changes
//! between attempts and only proves the initiator's address to the responder.
//!
//! The same hash salts the key schedule ([`super::crypto::derive_session_secrets`]).

use sha2::{Digest, Sha256};

use crate::codec::{Encode, Name};

/// What the responder signs: this label, then the transcript hash.
pub const RESPONDER_LABEL: &[u8] = b"sockmsg/1 handshake responder\0";
/// What the initiator signs: this label, then the transcript hash.
pub const INITIATOR_LABEL: &[u8] = b"sockmsg/1 handshake initiator\0";
/// Prefix of the transcript hash input.
const TRANSCRIPT_LABEL: &[u8] = b"sockmsg/1 transcript\0";

/// One side of the handshake, as it appears in the transcript.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeSide<'a> {
    pub name: Name<'a>,
    pub connection_id: u64,
    pub ephemeral: &'a [u8; 32],
}

/// SHA-256 over the label, the group and both sides, each field encoded as on the wire.
pub fn transcript_hash(
    group: Name<'_>,
    initiator: HandshakeSide<'_>,
    responder: HandshakeSide<'_>,
) -> [u8; 32] {
    let mut input = Vec::with_capacity(200);
    input.extend_from_slice(TRANSCRIPT_LABEL);
    group.encode(&mut input);
    for side in [initiator, responder] {
        side.name.encode(&mut input);
        input.extend_from_slice(&side.connection_id.to_be_bytes());
        input.extend_from_slice(side.ephemeral);
    }
    Sha256::digest(&input).into()
}

/// The bytes a side signs: its label, then the transcript hash.
pub fn signed_message(label: &[u8], transcript_hash: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(label.len() + 32);
    message.extend_from_slice(label);
    message.extend_from_slice(transcript_hash);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(name: &'static str, cid: u64, key: &'static [u8; 32]) -> HandshakeSide<'static> {
        HandshakeSide {
            name: Name::new(name).unwrap(),
            connection_id: cid,
            ephemeral: key,
        }
    }

    #[test]
    fn every_field_changes_the_transcript() {
        let group = Name::new("lobby").unwrap();
        let base = transcript_hash(group, side("a", 1, &[1; 32]), side("b", 2, &[2; 32]));
        let variants = [
            transcript_hash(
                Name::new("other").unwrap(),
                side("a", 1, &[1; 32]),
                side("b", 2, &[2; 32]),
            ),
            transcript_hash(group, side("c", 1, &[1; 32]), side("b", 2, &[2; 32])),
            transcript_hash(group, side("a", 9, &[1; 32]), side("b", 2, &[2; 32])),
            transcript_hash(group, side("a", 1, &[7; 32]), side("b", 2, &[2; 32])),
            transcript_hash(group, side("a", 1, &[1; 32]), side("c", 2, &[2; 32])),
            transcript_hash(group, side("a", 1, &[1; 32]), side("b", 9, &[2; 32])),
            transcript_hash(group, side("a", 1, &[1; 32]), side("b", 2, &[7; 32])),
            // Swapping the roles is a different transcript too.
            transcript_hash(group, side("b", 2, &[2; 32]), side("a", 1, &[1; 32])),
        ];
        for variant in variants {
            assert_ne!(variant, base);
        }
        assert_ne!(
            signed_message(RESPONDER_LABEL, &base),
            signed_message(INITIATOR_LABEL, &base)
        );
    }
}
