//! [`GroupMessage`]: the group frames as owned values, and their conversion to and from
//! the borrowed `sockmsg_wire` frames (SPEC.md §7.10–7.18).
//!
//! The state machine works on owned data so that it never borrows from a datagram; the
//! driver decodes a MESSAGE payload with `sockmsg_wire::Frames`, converts each frame
//! with [`GroupMessage::from_wire`], and encodes outputs with [`GroupMessage::to_wire`].

use std::net::SocketAddr;

use sockmsg_wire::frame::{
    Chat, ChatFlags, Fragment, Heartbeat, Leave, Member, Membership, MembershipAck, MessageClass,
    TransferLeadership, Vote, VoteFlags, VoteRequest,
};
use sockmsg_wire::{BuildError, Encode, Frame, List, Name, Signature};

/// One member of the group as the leader lists it (SPEC.md §7.11 `Member`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberInfo {
    pub name: String,
    pub addr: SocketAddr,
    /// Priority drawn at join: orders candidacy timers, never decides a vote.
    pub rank: u64,
    pub incarnation: u64,
}

/// PRE_VOTE_REQUEST / VOTE_REQUEST body (SPEC.md §7.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteRequestMsg {
    /// The term the candidate stands in (for a pre-vote: would stand in).
    pub term: u64,
    pub candidate: String,
    /// The term of the leader that created the candidate's membership.
    pub membership_term: u64,
    pub membership_version: u64,
    pub rank: u64,
}

/// VOTE body (SPEC.md §7.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteMsg {
    pub group: String,
    pub term: u64,
    pub voter: String,
    pub candidate: String,
    /// The answer to a PRE_VOTE_REQUEST.
    pub pre_vote: bool,
    pub granted: bool,
    /// The voter's signature (SPEC.md §9) on the signed copy of a granted real vote;
    /// otherwise empty (§7.13: a grant first goes out unsigned).
    pub signature: Vec<u8>,
}

impl VoteMsg {
    /// What the voter signs (SPEC.md §9); fails only for names that could not have
    /// been decoded or accepted as members.
    pub fn signing_input(&self) -> Result<Vec<u8>, BuildError> {
        vote_signing_input(
            &self.group,
            self.term,
            &self.voter,
            &self.candidate,
            self.pre_vote,
            self.granted,
        )
    }

    /// The same vote with `signer`'s signature (empty if the input cannot be built:
    /// the proxy then refuses it, which is all a bad signature can cause).
    pub fn signed(mut self, signer: &dyn crate::VoteSigner) -> VoteMsg {
        self.signature = self
            .signing_input()
            .map(|input| signer.sign_vote(&input))
            .unwrap_or_default();
        self
    }
}

/// A VOTE with the `SUPPORT` flag (SPEC.md §7.13, §12.2): `supporter` tells a third
/// member that it voted for, or follows, `leader` as the leader of `term`; with `query`,
/// it asks the receiver the same of itself; with `pre_vote`, that it granted `leader`
/// (a candidate) its pre-vote for `term` (§12.3). Never signed: the session
/// authenticates the supporter, and a support counts only as that one member's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportMsg {
    pub group: String,
    pub term: u64,
    pub supporter: String,
    pub leader: String,
    pub query: bool,
    pub pre_vote: bool,
}

/// A whole chat line (SPEC.md §7.10). Lines longer than one session message travel in
/// fragments ([`GroupMessage::to_wire_messages`], [`crate::ChatReassembly`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    pub sender: String,
    pub incarnation: u64,
    pub seq: u64,
    pub direct: bool,
    pub text: String,
}

/// The longest chat line, in bytes (SPEC.md §11 `MAX_CHAT_MESSAGE_LEN`).
pub const MAX_LINE_LEN: usize = sockmsg_wire::limits::MAX_CHAT_MESSAGE_LEN;

/// A group frame, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupMessage {
    Heartbeat {
        term: u64,
        leader: String,
        /// The term of the leader that created `members`.
        membership_term: u64,
        membership_version: u64,
        members: Vec<MemberInfo>,
    },
    PreVoteRequest(VoteRequestMsg),
    VoteRequest(VoteRequestMsg),
    Vote(VoteMsg),
    /// A VOTE frame with the `SUPPORT` flag (see [`SupportMsg`]).
    Support(SupportMsg),
    Join(MemberInfo),
    Membership {
        term: u64,
        /// The term of the leader that created `members`.
        membership_term: u64,
        version: u64,
        members: Vec<MemberInfo>,
    },
    Leave {
        name: String,
        incarnation: u64,
    },
    TransferLeadership {
        term: u64,
        target: String,
    },
    Chat(ChatLine),
    /// A follower's answer to a HEARTBEAT (unreliable) or MEMBERSHIP (reliable): the
    /// follower's term and the membership version it now holds. The leader uses it for
    /// check-quorum, failure detection and to commit a membership change.
    /// SPEC.md §7.18 MEMBERSHIP_ACK.
    MembershipAck {
        term: u64,
        version: u64,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToWireError {
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Why a decoded frame is not a group message we accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FromWireError {
    #[error("frame {0:?} is not a group frame")]
    NotGroupFrame(sockmsg_wire::FrameType),
    /// A fragment of a longer line: use [`crate::ChatReassembly`].
    #[error("a chat fragment needs reassembly")]
    ChatFragment,
    #[error("a chat fragment does not continue the line being received")]
    FragmentOutOfOrder,
    #[error("chat text is not UTF-8")]
    ChatNotUtf8,
}

impl GroupMessage {
    /// The session message class this frame travels in (SPEC.md §8).
    pub fn class(&self) -> MessageClass {
        match self {
            GroupMessage::Chat(_) => MessageClass::Ordered,
            GroupMessage::Heartbeat { .. } => MessageClass::Unreliable,
            // The ack of a heartbeat may be lost like the heartbeat; the ack of a
            // MEMBERSHIP is sent reliable by the state machine (see `Output::Send`).
            GroupMessage::MembershipAck { .. } => MessageClass::Unreliable,
            _ => MessageClass::Reliable,
        }
    }

    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            GroupMessage::Heartbeat { .. } => "HEARTBEAT",
            GroupMessage::PreVoteRequest(_) => "PRE_VOTE_REQUEST",
            GroupMessage::VoteRequest(_) => "VOTE_REQUEST",
            GroupMessage::Vote(_) => "VOTE",
            GroupMessage::Support(s) if s.query => "VOTE(support query)",
            GroupMessage::Support(s) if s.pre_vote => "VOTE(pre-vote support)",
            GroupMessage::Support(_) => "VOTE(support)",
            GroupMessage::Join(_) => "JOIN",
            GroupMessage::Membership { .. } => "MEMBERSHIP",
            GroupMessage::Leave { .. } => "LEAVE",
            GroupMessage::TransferLeadership { .. } => "TRANSFER_LEADERSHIP",
            GroupMessage::Chat(_) => "CHAT",
            GroupMessage::MembershipAck { .. } => "MEMBERSHIP_ACK",
        }
    }

    /// Encodes the frame (type byte and body) onto `out`.
    pub fn to_wire(&self, out: &mut Vec<u8>) -> Result<(), ToWireError> {
        fn members<'a>(list: &'a [MemberInfo]) -> Result<Vec<Member<'a>>, BuildError> {
            list.iter().map(member).collect()
        }
        fn vote_request(v: &VoteRequestMsg) -> Result<VoteRequest<'_>, BuildError> {
            Ok(VoteRequest {
                term: v.term,
                candidate: Name::new(&v.candidate)?,
                membership_term: v.membership_term,
                membership_version: v.membership_version,
                rank: v.rank,
            })
        }
        let encode = |frame: Frame<'_>, out: &mut Vec<u8>| {
            out.reserve(frame.encoded_len());
            frame.encode(out);
        };
        match self {
            GroupMessage::Heartbeat {
                term,
                leader,
                membership_term,
                membership_version,
                members: list,
            } => {
                let items = members(list)?;
                encode(
                    Frame::Heartbeat(Heartbeat {
                        term: *term,
                        leader: Name::new(leader)?,
                        membership_term: *membership_term,
                        membership_version: *membership_version,
                        members: List::new(&items)?,
                    }),
                    out,
                );
            }
            GroupMessage::PreVoteRequest(v) => encode(Frame::PreVoteRequest(vote_request(v)?), out),
            GroupMessage::VoteRequest(v) => encode(Frame::VoteRequest(vote_request(v)?), out),
            GroupMessage::Vote(v) => encode(
                Frame::Vote(Vote {
                    group: Name::new(&v.group)?,
                    term: v.term,
                    voter: Name::new(&v.voter)?,
                    candidate: Name::new(&v.candidate)?,
                    flags: vote_flags(v.pre_vote, v.granted),
                    signature: Signature::new(&v.signature)?,
                }),
                out,
            ),
            GroupMessage::Support(s) => {
                let mut flags = VoteFlags::SUPPORT.with(VoteFlags::GRANTED);
                if s.query {
                    flags = flags.with(VoteFlags::QUERY);
                }
                if s.pre_vote {
                    flags = flags.with(VoteFlags::PRE_VOTE);
                }
                encode(
                    Frame::Vote(Vote {
                        group: Name::new(&s.group)?,
                        term: s.term,
                        voter: Name::new(&s.supporter)?,
                        candidate: Name::new(&s.leader)?,
                        flags,
                        signature: Signature::new(&[])?,
                    }),
                    out,
                )
            }
            GroupMessage::Join(m) => encode(Frame::Join(member(m)?), out),
            GroupMessage::Membership {
                term,
                membership_term,
                version,
                members: list,
            } => {
                let items = members(list)?;
                encode(
                    Frame::Membership(Membership {
                        term: *term,
                        membership_term: *membership_term,
                        version: *version,
                        members: List::new(&items)?,
                    }),
                    out,
                );
            }
            GroupMessage::Leave { name, incarnation } => encode(
                Frame::Leave(Leave {
                    name: Name::new(name)?,
                    incarnation: *incarnation,
                }),
                out,
            ),
            GroupMessage::TransferLeadership { term, target } => encode(
                Frame::TransferLeadership(TransferLeadership {
                    term: *term,
                    target: Name::new(target)?,
                }),
                out,
            ),
            GroupMessage::Chat(line) => {
                let text = line.text.as_bytes();
                let total_len = u32::try_from(text.len()).unwrap_or(u32::MAX);
                line.encode_fragment(total_len, 0, text, out)?;
            }
            GroupMessage::MembershipAck { term, version } => encode(
                Frame::MembershipAck(MembershipAck {
                    term: *term,
                    version: *version,
                }),
                out,
            ),
        }
        Ok(())
    }

    /// Converts a decoded group frame into an owned message.
    pub fn from_wire(frame: &Frame<'_>) -> Result<Self, FromWireError> {
        fn members(list: &List<'_, Member<'_>>) -> Vec<MemberInfo> {
            list.iter()
                .map(|m| MemberInfo {
                    name: m.name.as_str().to_owned(),
                    addr: m.addr,
                    rank: m.rank,
                    incarnation: m.incarnation,
                })
                .collect()
        }
        fn vote_request(v: &VoteRequest<'_>) -> VoteRequestMsg {
            VoteRequestMsg {
                term: v.term,
                candidate: v.candidate.as_str().to_owned(),
                membership_term: v.membership_term,
                membership_version: v.membership_version,
                rank: v.rank,
            }
        }
        Ok(match frame {
            Frame::Heartbeat(h) => GroupMessage::Heartbeat {
                term: h.term,
                leader: h.leader.as_str().to_owned(),
                membership_term: h.membership_term,
                membership_version: h.membership_version,
                members: members(&h.members),
            },
            Frame::PreVoteRequest(v) => GroupMessage::PreVoteRequest(vote_request(v)),
            Frame::VoteRequest(v) => GroupMessage::VoteRequest(vote_request(v)),
            Frame::Vote(v) if v.flags.contains(VoteFlags::SUPPORT) => {
                GroupMessage::Support(SupportMsg {
                    group: v.group.as_str().to_owned(),
                    term: v.term,
                    supporter: v.voter.as_str().to_owned(),
                    leader: v.candidate.as_str().to_owned(),
                    query: v.flags.contains(VoteFlags::QUERY),
                    pre_vote: v.flags.contains(VoteFlags::PRE_VOTE),
                })
            }
            Frame::Vote(v) => GroupMessage::Vote(VoteMsg {
                group: v.group.as_str().to_owned(),
                term: v.term,
                voter: v.voter.as_str().to_owned(),
                candidate: v.candidate.as_str().to_owned(),
                pre_vote: v.flags.contains(VoteFlags::PRE_VOTE),
                granted: v.flags.contains(VoteFlags::GRANTED),
                signature: v.signature.as_bytes().to_vec(),
            }),
            Frame::Join(m) => GroupMessage::Join(MemberInfo {
                name: m.name.as_str().to_owned(),
                addr: m.addr,
                rank: m.rank,
                incarnation: m.incarnation,
            }),
            Frame::Membership(m) => GroupMessage::Membership {
                term: m.term,
                membership_term: m.membership_term,
                version: m.version,
                members: members(&m.members),
            },
            Frame::Leave(l) => GroupMessage::Leave {
                name: l.name.as_str().to_owned(),
                incarnation: l.incarnation,
            },
            Frame::TransferLeadership(t) => GroupMessage::TransferLeadership {
                term: t.term,
                target: t.target.as_str().to_owned(),
            },
            Frame::MembershipAck(a) => GroupMessage::MembershipAck {
                term: a.term,
                version: a.version,
            },
            Frame::Chat(c) => {
                if !c.fragment.is_whole() {
                    return Err(FromWireError::ChatFragment);
                }
                let text = std::str::from_utf8(c.fragment.data())
                    .map_err(|_| FromWireError::ChatNotUtf8)?;
                GroupMessage::Chat(ChatLine {
                    sender: c.sender.as_str().to_owned(),
                    incarnation: c.incarnation,
                    seq: c.seq,
                    direct: c.flags.contains(ChatFlags::DIRECT),
                    text: text.to_owned(),
                })
            }
            other => return Err(FromWireError::NotGroupFrame(other.frame_type())),
        })
    }
}

impl ChatLine {
    /// Encodes the CHAT frame carrying `data`, the piece at `offset` of this line.
    pub(crate) fn encode_fragment(
        &self,
        total_len: u32,
        offset: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), BuildError> {
        let frame = Frame::Chat(Chat {
            sender: Name::new(&self.sender)?,
            incarnation: self.incarnation,
            seq: self.seq,
            flags: if self.direct {
                ChatFlags::DIRECT
            } else {
                ChatFlags::empty()
            },
            fragment: Fragment::new(total_len, offset, data)?,
        });
        out.reserve(frame.encoded_len());
        frame.encode(out);
        Ok(())
    }
}

fn member(m: &MemberInfo) -> Result<Member<'_>, BuildError> {
    Ok(Member {
        name: Name::new(&m.name)?,
        addr: m.addr,
        rank: m.rank,
        incarnation: m.incarnation,
    })
}

fn vote_flags(pre_vote: bool, granted: bool) -> VoteFlags {
    let mut flags = VoteFlags::empty();
    if pre_vote {
        flags = flags.with(VoteFlags::PRE_VOTE);
    }
    if granted {
        flags = flags.with(VoteFlags::GRANTED);
    }
    flags
}

/// The context label of a vote signature (SPEC.md §9), NUL included.
pub const VOTE_SIGNATURE_LABEL: &[u8] = b"sockmsg/1 vote\0";

/// The bytes a voter signs for a granted real vote (SPEC.md §9): the label, then
/// group, term, voter, candidate and flags encoded exactly as in the VOTE frame.
pub fn vote_signing_input(
    group: &str,
    term: u64,
    voter: &str,
    candidate: &str,
    pre_vote: bool,
    granted: bool,
) -> Result<Vec<u8>, BuildError> {
    let mut out = VOTE_SIGNATURE_LABEL.to_vec();
    Name::new(group)?.encode(&mut out);
    out.extend_from_slice(&term.to_be_bytes());
    Name::new(voter)?.encode(&mut out);
    Name::new(candidate)?.encode(&mut out);
    vote_flags(pre_vote, granted).encode(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sockmsg_wire::frame::Carrier;
    use sockmsg_wire::Frames;

    fn roundtrip(msg: &GroupMessage) -> GroupMessage {
        let mut bytes = Vec::new();
        msg.to_wire(&mut bytes).expect("encodes");
        let mut frames = Frames::new(Carrier::Message, &bytes, 0);
        let frame = frames.next().expect("one frame").expect("decodes");
        assert!(frames.next().is_none(), "exactly one frame");
        GroupMessage::from_wire(&frame).expect("a group frame")
    }

    fn alice() -> MemberInfo {
        MemberInfo {
            name: "alice".into(),
            addr: "192.0.2.1:7402".parse().unwrap(),
            rank: 7,
            incarnation: 0x0102030405060708,
        }
    }

    fn bob() -> MemberInfo {
        MemberInfo {
            name: "bob".into(),
            addr: "[2001:db8::2]:7403".parse().unwrap(),
            rank: 3,
            incarnation: 9,
        }
    }

    #[test]
    fn heartbeat_matches_spec_vector() {
        // SPEC.md §7.11 vector frame.heartbeat.
        let msg = GroupMessage::Heartbeat {
            term: 2,
            leader: "alice".into(),
            membership_term: 1,
            membership_version: 4,
            members: vec![alice(), bob()],
        };
        let mut bytes = Vec::new();
        msg.to_wire(&mut bytes).unwrap();
        assert_eq!(bytes[0], 0x11);
        assert_eq!(&bytes[1..9], &2u64.to_be_bytes());
        assert_eq!(bytes.len(), 100);
        assert_eq!(roundtrip(&msg), msg);
    }

    #[test]
    fn leave_matches_spec_vector() {
        let msg = GroupMessage::Leave {
            name: "bob".into(),
            incarnation: 9,
        };
        let mut bytes = Vec::new();
        msg.to_wire(&mut bytes).unwrap();
        assert_eq!(bytes, [0x17, 3, b'b', b'o', b'b', 0, 0, 0, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn every_group_message_round_trips_through_the_codec() {
        let req = VoteRequestMsg {
            term: 5,
            candidate: "bob".into(),
            membership_term: 2,
            membership_version: 4,
            rank: 3,
        };
        let all = [
            GroupMessage::Heartbeat {
                term: 2,
                leader: "alice".into(),
                membership_term: 1,
                membership_version: 4,
                members: vec![alice(), bob()],
            },
            GroupMessage::PreVoteRequest(req.clone()),
            GroupMessage::VoteRequest(req),
            GroupMessage::Vote(VoteMsg {
                group: "lobby".into(),
                term: 5,
                voter: "alice".into(),
                candidate: "bob".into(),
                pre_vote: false,
                granted: true,
                signature: vec![0x0f, 0x0e],
            }),
            GroupMessage::Join(alice()),
            GroupMessage::Membership {
                term: 2,
                membership_term: 1,
                version: 5,
                members: vec![alice(), bob()],
            },
            GroupMessage::Leave {
                name: "bob".into(),
                incarnation: 9,
            },
            GroupMessage::TransferLeadership {
                term: 2,
                target: "bob".into(),
            },
            GroupMessage::Chat(ChatLine {
                sender: "alice".into(),
                incarnation: 1,
                seq: 1,
                direct: true,
                text: "hi all ✓".into(),
            }),
        ];
        for msg in &all {
            assert_eq!(&roundtrip(msg), msg, "{}", msg.kind());
        }
    }

    #[test]
    fn membership_ack_round_trips_through_its_frame() {
        let ack = GroupMessage::MembershipAck {
            term: 7,
            version: 3,
        };
        assert_eq!(roundtrip(&ack), ack);
    }

    #[test]
    fn vote_signing_input_is_the_frame_fields_before_the_signature() {
        // SPEC.md §9: label, then the VOTE fields before `signature`, as on the wire.
        let vote = VoteMsg {
            group: "lobby".into(),
            term: 5,
            voter: "alice".into(),
            candidate: "bob".into(),
            pre_vote: false,
            granted: true,
            signature: vec![],
        };
        let mut frame = Vec::new();
        GroupMessage::Vote(vote).to_wire(&mut frame).unwrap();
        // Drop the type byte and the empty signature's two-byte length.
        let fields = &frame[1..frame.len() - 2];
        let input = vote_signing_input("lobby", 5, "alice", "bob", false, true).unwrap();
        assert_eq!(&input[..VOTE_SIGNATURE_LABEL.len()], b"sockmsg/1 vote\0");
        assert_eq!(&input[VOTE_SIGNATURE_LABEL.len()..], fields);
    }

    proptest! {
        #[test]
        fn chat_lines_round_trip(
            text in "\\PC{1,200}",
            seq in 1u64..,
            incarnation in any::<u64>(),
            direct in any::<bool>(),
        ) {
            let msg = GroupMessage::Chat(ChatLine {
                sender: "carol".into(), incarnation, seq, direct, text,
            });
            prop_assert_eq!(roundtrip(&msg), msg);
        }
    }
}
