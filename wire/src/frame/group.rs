//! Group frames: chat, heartbeats, elections and membership. All travel in DATA packets
//! inside an authenticated session, so the session's peer is the sender; frames that
//! name a sender must name that peer (SPEC.md §"Receiving rules").

use std::net::SocketAddr;

use bytes::BufMut;

use crate::codec::{flags, wire_struct, Decode, Encode, List, Name, Reader, Signature};
use crate::error::{BuildError, DecodeError};
use crate::limits::MAX_CHAT_MESSAGE_LEN;

flags! {
    /// CHAT flags.
    pub struct ChatFlags {
        /// A direct message to the receiver alone, not to the whole group.
        DIRECT = 0x01,
    }
}

/// A piece of a chat message: bytes `offset..offset + data.len()` of a message of
/// `total_len` bytes. A line that fits is one fragment with offset 0.
///
/// Invariant (checked when decoded or built): `1 ≤ total_len ≤ MAX_CHAT_MESSAGE_LEN`,
/// `data` is not empty, and the fragment lies within the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    total_len: u32,
    offset: u32,
    data: &'a [u8],
}

impl<'a> Fragment<'a> {
    pub fn new(total_len: u32, offset: u32, data: &'a [u8]) -> Result<Self, BuildError> {
        Self::check(total_len, offset, data.len()).map_err(|reason| BuildError::Invalid {
            field: "Fragment",
            reason,
        })?;
        Ok(Fragment {
            total_len,
            offset,
            data,
        })
    }

    /// The whole of a message that fits in one frame.
    pub fn whole(message: &'a [u8]) -> Result<Self, BuildError> {
        let total_len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        Self::new(total_len, 0, message)
    }

    pub fn total_len(&self) -> u32 {
        self.total_len
    }

    pub fn offset(&self) -> u32 {
        self.offset
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Whether this fragment is the whole message.
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && self.data.len() == self.total_len as usize
    }

    fn check(total_len: u32, offset: u32, len: usize) -> Result<(), &'static str> {
        if total_len == 0 || total_len as usize > MAX_CHAT_MESSAGE_LEN {
            return Err("message length outside 1..=65536");
        }
        if len == 0 || len > usize::from(u16::MAX) {
            return Err("fragment length outside 1..=65535");
        }
        if u64::from(offset) + len as u64 > u64::from(total_len) {
            return Err("fragment extends past the end of the message");
        }
        Ok(())
    }
}

impl Encode for Fragment<'_> {
    fn encoded_len(&self) -> usize {
        4 + 4 + 2 + self.data.len()
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u32(self.total_len);
        buf.put_u32(self.offset);
        buf.put_u16(self.data.len() as u16);
        buf.put_slice(self.data);
    }
}

impl<'a> Decode<'a> for Fragment<'a> {
    #[inline]
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let start = r.offset();
        let total_len = u32::decode(r, "Fragment.total_len")?;
        let offset = u32::decode(r, "Fragment.offset")?;
        let len = usize::from(u16::decode(r, "Fragment.len")?);
        Self::check(total_len, offset, len).map_err(|reason| DecodeError::Invalid {
            field,
            offset: start,
            reason,
        })?;
        let data = r.take(len, "Fragment.data")?;
        Ok(Fragment {
            total_len,
            offset,
            data,
        })
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
        /// The candidate's membership version; a voter refuses if its own is newer.
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
    }
}

wire_struct! {
    /// A voter's answer. A granted real vote carries the voter's signature over the
    /// frame's fields before `signature` (SPEC.md §"Signature inputs"), so the winner
    /// can prove its election to the proxy; other answers carry an empty signature.
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
