//! Group frames: chat, heartbeats, elections and membership. All travel in DATA packets
//! inside an authenticated session, so the session's peer is the sender; frames that
//! name a sender must name that peer (SPEC.md §"Receiving rules").

use std::net::SocketAddr;

use super::Fragment;
use bytes::BufMut;

use crate::codec::{flags, wire_struct, Decode, Encode, List, Name, Reader, Signature};
use crate::error::DecodeError;

flags! {
    /// CHAT flags.
    pub struct ChatFlags {
        /// A direct message to the receiver alone, not to the whole group.
        DIRECT = 0x01,
    }
}

wire_struct! {
    /// A chat line (or a fragment of one) from `sender`. Lines are numbered per
    /// (sender, incarnation) from 1, so a restarted sender is never taken for a duplicate.
    /// The text is UTF-8 once reassembled; a fragment may split a character.
    pub struct Chat<'a> {
        pub sender: Name<'a>,
        /// Random 64-bit id the sender drew when it started.
        pub incarnation: u64,
        /// Per-(sender, incarnation) line number, from 1.
        pub seq: u64,
        pub flags: ChatFlags,
        pub fragment: Fragment<'a>,
    }
}

wire_struct! {
    /// One member of the group, as the leader lists it (also the body of JOIN).
    pub struct Member<'a> {
        pub name: Name<'a>,
        /// Where the member's node receives datagrams.
        pub addr: SocketAddr,
        /// Priority drawn at join: orders candidacy timers, never overrides a vote.
        pub rank: u64,
        /// The member's current incarnation.
        pub incarnation: u64,
    }
}

wire_struct! {
    /// The leader's periodic heartbeat (unreliable: a newer one supersedes it).
    pub struct Heartbeat<'a> {
        pub term: u64,
        pub leader: Name<'a>,
        /// The term of the leader that created the membership.
        pub membership_term: u64,
        pub membership_version: u64,
        pub members: List<'a, Member<'a>>,
    }
}

wire_struct! {
    /// PRE_VOTE_REQUEST and VOTE_REQUEST. For a pre-vote, `term` is the term the
    /// candidate would stand in; the receiver's term does not change.
    pub struct VoteRequest<'a> {
        pub term: u64,
        pub candidate: Name<'a>,
        /// The term of the leader that created the candidate's membership.
        pub membership_term: u64,
        /// The candidate's membership version. A voter refuses if its own
        /// (`membership_term`, `membership_version`) is greater, compared lexicographically.
        pub membership_version: u64,
        pub rank: u64,
    }
}

flags! {
    /// VOTE flags.
    pub struct VoteFlags {
        /// The answer to a PRE_VOTE_REQUEST.
        PRE_VOTE = 0x01,
        /// The vote is granted.
        GRANTED = 0x02,
        /// Not an answer to the receiver: the sender tells a third member that it voted
        /// for, or follows, `candidate` as leader of `term` (SPEC.md §7.13, §12.2).
        SUPPORT = 0x04,
        /// With `SUPPORT`: the sender asks the receiver whether it supports `candidate`
        /// in `term`; answered with a `SUPPORT` VOTE, or not at all.
        QUERY = 0x08,
    }
}

wire_struct! {
    /// A voter's answer. A granted real vote is sent at once with an empty signature,
    /// then again with the voter's signature over the frame's fields before `signature`
    /// (SPEC.md §7.13, §9), so the winner can prove its election to the proxy; other
    /// answers carry an empty signature.
    pub struct Vote<'a> {
        pub group: Name<'a>,
        pub term: u64,
        pub voter: Name<'a>,
        pub candidate: Name<'a>,
        pub flags: VoteFlags,
        pub signature: Signature<'a>,
    }
}

wire_struct! {
    /// The leader's new membership (reliable; takes effect once a majority of the
    /// previous membership has acknowledged it).
    pub struct Membership<'a> {
        pub term: u64,
        /// The term of the leader that created this membership.
        pub membership_term: u64,
        pub version: u64,
        pub members: List<'a, Member<'a>>,
    }
}

wire_struct! {
    /// The sender leaves the group (reliable).
    pub struct Leave<'a> {
        pub name: Name<'a>,
        pub incarnation: u64,
    }
}

wire_struct! {
    /// From the leader: `target` should stand for election in `term` + 1 at once
    /// (Raft's TimeoutNow), skipping pre-vote.
    pub struct TransferLeadership<'a> {
        pub term: u64,
        pub target: Name<'a>,
    }
}

/// A member's acknowledgement of the leader's HEARTBEAT (sent unreliably) or MEMBERSHIP
/// (sent reliably): the member's term and the membership version it now holds. The
/// leader uses these for check-quorum, failure detection, and to know when a majority
/// of the previous membership holds a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipAck {
    pub term: u64,
    pub version: u64,
}

impl Encode for MembershipAck {
    fn encoded_len(&self) -> usize {
        16
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        self.term.encode(buf);
        self.version.encode(buf);
    }
}

impl<'a> Decode<'a> for MembershipAck {
    fn decode(r: &mut Reader<'a>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(MembershipAck {
            term: u64::decode(r, "MembershipAck.term")?,
            version: u64::decode(r, "MembershipAck.version")?,
        })
    }
}
