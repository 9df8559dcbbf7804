//! Building proxy requests, as a leader (or a test) does: a record drafted with owned
//! fields, signed by the leader, with the votes that elected it; and reading answers.

use std::net::SocketAddr;

use rand_chacha::ChaCha20Rng;
use sockmsg_wire::frame::{Frame, LeaderAnnounce, LeaderQuery, LeaderRecord, Padding, VoteProof};
use sockmsg_wire::session::crypto::Signer;
use sockmsg_wire::{encode_cleartext_packet, BuildError, List, Name, PacketType, Signature};

use crate::directory::{record_signing_input, vote_signing_input, Kind};

/// A leader record with owned fields, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDraft {
    pub group: String,
    pub term: u64,
    pub leader: String,
    pub leader_addr: SocketAddr,
    pub membership_version: u64,
    /// The leader included.
    pub members: Vec<String>,
    pub issued_at_ms: u64,
}

impl RecordDraft {
    /// Calls `f` with the wire form of the record carrying `signature`.
    fn with_record<R>(
        &self,
        signature: &[u8],
        f: impl FnOnce(LeaderRecord<'_>) -> R,
    ) -> Result<R, BuildError> {
        let members = self
            .members
            .iter()
            .map(|member| Name::new(member))
            .collect::<Result<Vec<_>, _>>()?;
        let record = LeaderRecord {
            group: Name::new(&self.group)?,
            term: self.term,
            leader: Name::new(&self.leader)?,
            leader_addr: self.leader_addr,
            membership_version: self.membership_version,
            members: List::new(&members)?,
            issued_at_ms: self.issued_at_ms,
            signature: Signature::new(signature)?,
        };
        Ok(f(record))
    }

    /// The leader's signature over the record (SPEC.md §9).
    pub fn sign(&self, leader: &dyn Signer, rng: &mut ChaCha20Rng) -> Result<Vec<u8>, BuildError> {
        let input = self.with_record(&[], |record| record_signing_input(&record))?;
        Ok(leader.sign(rng, &input))
    }

    /// `voter`'s signature over its granted VOTE for this record's group, term and
    /// leader: what a VoteProof carries.
    pub fn sign_vote(
        &self,
        voter: &dyn Signer,
        rng: &mut ChaCha20Rng,
    ) -> Result<Vec<u8>, BuildError> {
        let name = Name::new(voter.name())?;
        let input = self.with_record(&[], |record| vote_signing_input(&record, name))?;
        Ok(voter.sign(rng, &input))
    }

    /// A REQUEST packet with this record as a LEADER_CLAIM or a LEADER_ANNOUNCE (with
    /// `votes`: voter name and signature), padded to at least `pad_to` bytes.
    pub fn request(
        &self,
        request_id: u64,
        kind: Kind,
        signature: &[u8],
        votes: &[(String, Vec<u8>)],
        pad_to: usize,
    ) -> Result<Vec<u8>, BuildError> {
        let proofs = votes
            .iter()
            .map(|(voter, signature)| {
                Ok(VoteProof {
                    voter: Name::new(voter)?,
                    signature: Signature::new(signature)?,
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        let votes = List::new(&proofs)?;
        self.with_record(signature, |record| {
            let frame = match kind {
                Kind::Claim => Frame::LeaderClaim(record),
                Kind::Announce => Frame::LeaderAnnounce(LeaderAnnounce { record, votes }),
            };
            packet(request_id, frame, pad_to)
        })?
    }
}

/// A LEADER_QUERY for `group`, padded to at least `pad_to` bytes (pad to ~1000 so that
/// a large LEADER_INFO fits 3× the request over UDP).
pub fn query_request(request_id: u64, group: &str, pad_to: usize) -> Result<Vec<u8>, BuildError> {
    let group = Name::new(group)?;
    packet(
        request_id,
        Frame::LeaderQuery(LeaderQuery { group }),
        pad_to,
    )
}

/// A REQUEST packet holding `frame` and, if it is shorter than `pad_to`, PADDING.
fn packet(request_id: u64, frame: Frame<'_>, pad_to: usize) -> Result<Vec<u8>, BuildError> {
    let mut bare = Vec::new();
    encode_cleartext_packet(&mut bare, PacketType::REQUEST, request_id, 0, &[frame])?;
    if bare.len() >= pad_to {
        return Ok(bare);
    }
    let padding = Padding::new(pad_to - bare.len())?;
    let mut padded = Vec::with_capacity(pad_to);
    encode_cleartext_packet(
        &mut padded,
        PacketType::REQUEST,
        request_id,
        0,
        &[frame, Frame::Padding(padding)],
    )?;
    Ok(padded)
}
