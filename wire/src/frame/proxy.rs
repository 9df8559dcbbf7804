//! Proxy frames: "who leads group G?", claims and announcements. They travel in
//! cleartext REQUEST/RESPONSE packets; what makes them trustworthy is the signatures
//! they carry, checked against key records from the key manager.

use std::net::SocketAddr;

use crate::codec::{open_code, wire_struct, List, Name, Signature, Text};

wire_struct! {
    /// Asks who leads `group`.
    pub struct LeaderQuery<'a> {
        pub group: Name<'a>,
    }
}

wire_struct! {
    /// The proxy knows no leader for `group`: the asker may send a LEADER_CLAIM for term 1.
    pub struct NoLeader<'a> {
        pub group: Name<'a>,
    }
}

wire_struct! {
    /// Who leads a group, signed by that leader over the fields before `signature`
    /// (SPEC.md §"Signature inputs"). Body of LEADER_INFO and LEADER_CLAIM, and the head
    /// of LEADER_ANNOUNCE.
    pub struct LeaderRecord<'a> {
        pub group: Name<'a>,
        pub term: u64,
        pub leader: Name<'a>,
        pub leader_addr: SocketAddr,
        pub membership_version: u64,
        /// Names of the members at `membership_version`, the leader included.
        pub members: List<'a, Name<'a>>,
        /// Milliseconds since the Unix epoch when the leader signed the record.
        pub issued_at_ms: u64,
        pub signature: Signature<'a>,
    }
}

wire_struct! {
    /// One voter's signature over its granted VOTE for the record's term and leader.
    pub struct VoteProof<'a> {
        pub voter: Name<'a>,
        pub signature: Signature<'a>,
    }
}

wire_struct! {
    /// A leader announces (or refreshes) its record. For term > 1 it carries the signed
    /// votes of a majority of the membership the proxy last accepted.
    pub struct LeaderAnnounce<'a> {
        pub record: LeaderRecord<'a>,
        pub votes: List<'a, VoteProof<'a>>,
    }
}

open_code! {
    /// The proxy's verdict.
    pub struct ProxyStatus(u8) {
        ACCEPTED = 0x00,
        /// The term is below the one the proxy holds.
        STALE_TERM = 0x01,
        /// The leader's signature or a vote's signature does not verify.
        BAD_SIGNATURE = 0x02,
        /// Too few votes, or votes from non-members.
        INSUFFICIENT_VOTES = 0x03,
        /// A term-1 claim for a group that already has a leader.
        ALREADY_CLAIMED = 0x04,
        /// The record's issue time is outside the accepted window, or was seen before.
        REPLAYED = 0x05,
        /// The leader's name is not registered with the key manager.
        UNKNOWN_KEY = 0x06,
        /// The request was malformed or not understood.
        BAD_REQUEST = 0x07,
        /// The proxy cannot answer now (key manager unreachable); retry later.
        UNAVAILABLE = 0x08,
    }
}

wire_struct! {
    /// The proxy's answer to a claim or an announcement.
    pub struct ProxyResult<'a> {
        pub status: ProxyStatus,
        pub reason: Text<'a>,
        /// On a refusal because of the record the proxy holds for the group (another
        /// leader, a later term, votes that are no majority of its membership): that
        /// record, so the refused leader can act on it (merge, SPEC.md §12.7).
        /// Otherwise empty. At most one; a receiver reads the first.
        pub held: List<'a, LeaderRecord<'a>>,
    }
}
