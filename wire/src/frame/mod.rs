//! Frames: the units of meaning inside a packet's payload.
//!
//! Each frame is a one-byte [`FrameType`] followed by its body. The bodies are defined in
//! the submodules, one per concern; this module ties them into the [`Frame`] enum, says
//! which packet types may carry which frames, and walks a payload with [`Frames`].

mod group;
mod handshake;
mod keymgr;
mod proxy;
mod transport;

pub use group::{
    Chat, ChatFlags, Heartbeat, Leave, Member, Membership, MembershipAck, TransferLeadership, Vote,
    VoteFlags, VoteRequest,
};
pub use handshake::{HandshakeFinish, HandshakeInit, HandshakeResponse, Retry};
pub use keymgr::{
    BatchProof, KeyChallenge, KeyLookup, KeyRecord, KeyRegister, KeyResult, KeyResultCode,
    KeyRotate, KeyStatus,
};
pub use proxy::{
    LeaderAnnounce, LeaderQuery, LeaderRecord, NoLeader, ProxyResult, ProxyStatus, VoteProof,
};
pub use transport::{Ack, AckRange, Close, CloseCode, Fragment, Message, MessageClass, Padding};

use bytes::BufMut;

use crate::codec::{Decode, Encode, Reader};
use crate::error::DecodeError;
use crate::packet::PacketType;

/// A frame type, an open code: unknown values are kept so that a dumper can print them,
/// but [`Frames`] refuses them (SPEC.md §"Receiving rules").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameType(pub u8);

impl std::fmt::Debug for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "FrameType({:#04x})", self.0),
        }
    }
}

/// Where a frame may travel: directly in a packet of some type, or as the payload of a
/// session MESSAGE (the group frames: CHAT, HEARTBEAT, votes, membership).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    Packet(PacketType),
    Message,
}

impl From<PacketType> for Carrier {
    fn from(packet_type: PacketType) -> Self {
        Carrier::Packet(packet_type)
    }
}

impl std::fmt::Display for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Carrier::Packet(packet_type) => write!(f, "{packet_type:?} packets"),
            Carrier::Message => f.write_str("MESSAGE payloads"),
        }
    }
}

/// The carriers named in the frame table.
mod carrier {
    use super::{Carrier, PacketType};
    pub const INITIAL: Carrier = Carrier::Packet(PacketType::INITIAL);
    pub const RETRY: Carrier = Carrier::Packet(PacketType::RETRY);
    pub const HANDSHAKE: Carrier = Carrier::Packet(PacketType::HANDSHAKE);
    pub const DATA: Carrier = Carrier::Packet(PacketType::DATA);
    pub const REQUEST: Carrier = Carrier::Packet(PacketType::REQUEST);
    pub const RESPONSE: Carrier = Carrier::Packet(PacketType::RESPONSE);
    pub const MESSAGE: Carrier = Carrier::Message;
}

/// Defines the frame types in one table: code, constant, [`Frame`] variant and body, and
/// the packet types allowed to carry it. Everything that dispatches on the type is
/// generated from this table, so adding a frame is one line here plus its body.
macro_rules! frame_table {
    ( $(
        $(#[$doc:meta])*
        $code:literal $konst:ident => $variant:ident $(($body:ty))? in [$($carrier:ident),+];
    )* ) => {
        impl FrameType {
            $( $(#[$doc])* pub const $konst: FrameType = FrameType($code); )*

            /// Every frame type this version defines, in code order.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$konst),*];

            /// The SPEC.md name (`"CHAT"`), or `None` for an undefined code.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $code => Some(stringify!($konst)), )*
                    _ => None,
                }
            }

            /// Whether SPEC.md allows this frame in `carrier` (a packet type, or a
            /// MESSAGE payload).
            pub fn allowed_in(self, carrier: impl Into<Carrier>) -> bool {
                let carrier = carrier.into();
                match self.0 {
                    $( $code => [$(carrier::$carrier),+].contains(&carrier), )*
                    _ => false,
                }
            }
        }

        /// One decoded frame, borrowing from the payload it was read from.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Frame<'a> {
            $( $(#[$doc])* $variant $(($body))?, )*
        }

        impl<'a> Frame<'a> {
            pub fn frame_type(&self) -> FrameType {
                match self {
                    $( Frame::$variant { .. } => FrameType::$konst, )*
                }
            }

            #[inline]
            fn decode_body(
                frame_type: FrameType,
                r: &mut Reader<'a>,
            ) -> Result<Self, DecodeError> {
                let _ = &r;
                match frame_type {
                    $( FrameType::$konst => Ok(frame_table!(@decode r, $konst, $variant $(, $body)?)), )*
                    _ => Err(DecodeError::UnknownFrameType {
                        offset: r.offset() - 1,
                        frame_type: frame_type.0,
                    }),
                }
            }

            fn body_len(&self) -> usize {
                match self {
                    $( frame_table!(@bind $variant body $(, $body)?) =>
                        frame_table!(@len body $(, $body)?), )*
                }
            }

            fn encode_body<B: BufMut>(&self, buf: &mut B) {
                let _ = &buf;
                match self {
                    $( frame_table!(@bind $variant body $(, $body)?) =>
                        frame_table!(@encode body, buf $(, $body)?), )*
                }
            }
        }
    };

    (@decode $r:ident, $konst:ident, $variant:ident, $body:ty) => {
        Frame::$variant(<$body as Decode>::decode($r, stringify!($konst))?)
    };
    (@decode $r:ident, $konst:ident, $variant:ident) => { Frame::$variant };
    (@bind $variant:ident $b:ident, $body:ty) => { Frame::$variant($b) };
    (@bind $variant:ident $b:ident) => { Frame::$variant };
    (@len $b:ident, $body:ty) => { $b.encoded_len() };
    (@len $b:ident) => { 0 };
    (@encode $b:ident, $buf:ident, $body:ty) => { $b.encode($buf) };
    (@encode $b:ident, $buf:ident) => { () };
}

frame_table! {
    /// Fills a payload up to a size; a run of zero bytes.
    0x00 PADDING => Padding(Padding) in [INITIAL, RETRY, HANDSHAKE, DATA, REQUEST, RESPONSE];
    /// Asks for an acknowledgement; keeps a session alive.
    0x01 PING => Ping in [DATA];
    /// Acknowledges ranges of received packet numbers.
    0x02 ACK => Ack(Ack<'a>) in [DATA];
    /// Ends the session, with a code and a reason.
    0x03 CLOSE => Close(Close<'a>) in [DATA];
    /// An application message, or a fragment of one, in a reliability class.
    0x04 MESSAGE => Message(Message<'a>) in [DATA];
    /// First handshake message: the initiator's ephemeral key.
    0x08 HANDSHAKE_INIT => HandshakeInit(HandshakeInit<'a>) in [INITIAL];
    /// A stateless cookie the initiator must echo.
    0x09 RETRY => Retry(Retry<'a>) in [RETRY];
    /// The responder's ephemeral key and transcript signature.
    0x0a HANDSHAKE_RESPONSE => HandshakeResponse(HandshakeResponse<'a>) in [HANDSHAKE];
    /// The initiator's transcript signature.
    0x0b HANDSHAKE_FINISH => HandshakeFinish(HandshakeFinish<'a>) in [HANDSHAKE];
    /// A chat line, or a fragment of one.
    0x10 CHAT => Chat(Chat<'a>) in [MESSAGE];
    /// The leader's heartbeat, with the member list.
    0x11 HEARTBEAT => Heartbeat(Heartbeat<'a>) in [MESSAGE];
    /// Would you vote for me? (does not change terms)
    0x12 PRE_VOTE_REQUEST => PreVoteRequest(VoteRequest<'a>) in [MESSAGE];
    /// Vote for me in this term.
    0x13 VOTE_REQUEST => VoteRequest(VoteRequest<'a>) in [MESSAGE];
    /// A signed answer to a (pre-)vote request.
    0x14 VOTE => Vote(Vote<'a>) in [MESSAGE];
    /// Asks the leader to admit the sender.
    0x15 JOIN => Join(Member<'a>) in [MESSAGE];
    /// The leader's new membership, to be acknowledged.
    0x16 MEMBERSHIP => Membership(Membership<'a>) in [MESSAGE];
    /// The sender leaves the group.
    0x17 LEAVE => Leave(Leave<'a>) in [MESSAGE];
    /// The leader tells the target to stand for election now.
    0x18 TRANSFER_LEADERSHIP => TransferLeadership(TransferLeadership<'a>) in [MESSAGE];
    /// A member acknowledges a HEARTBEAT or MEMBERSHIP.
    0x19 MEMBERSHIP_ACK => MembershipAck(MembershipAck) in [MESSAGE];
    /// Who leads this group?
    0x20 LEADER_QUERY => LeaderQuery(LeaderQuery<'a>) in [REQUEST];
    /// The current leader record.
    0x21 LEADER_INFO => LeaderInfo(LeaderRecord<'a>) in [RESPONSE];
    /// No leader is known for the group; the asker may claim term 1.
    0x22 NO_LEADER => NoLeader(NoLeader<'a>) in [RESPONSE];
    /// Claims term 1 of a group with no leader.
    0x23 LEADER_CLAIM => LeaderClaim(LeaderRecord<'a>) in [REQUEST];
    /// Announces (or refreshes) a leader record, with the votes that elected it.
    0x24 LEADER_ANNOUNCE => LeaderAnnounce(LeaderAnnounce<'a>) in [REQUEST];
    /// The proxy's verdict on a claim or announcement.
    0x25 PROXY_RESULT => ProxyResult(ProxyResult<'a>) in [RESPONSE];
    /// Asks for the signed key record of a name.
    0x30 KEY_LOOKUP => KeyLookup(KeyLookup<'a>) in [REQUEST];
    /// A key record signed by the key manager.
    0x31 KEY_RECORD => KeyRecord(KeyRecord<'a>) in [RESPONSE];
    /// Asks for a fresh nonce to sign in a registration or rotation.
    0x32 KEY_CHALLENGE_REQUEST => KeyChallengeRequest in [REQUEST];
    /// A fresh nonce.
    0x33 KEY_CHALLENGE => KeyChallenge(KeyChallenge<'a>) in [RESPONSE];
    /// Binds a name to a key, with proof of possession.
    0x34 KEY_REGISTER => KeyRegister(KeyRegister<'a>) in [REQUEST];
    /// Moves a name to a new key, signed by the old and the new key.
    0x35 KEY_ROTATE => KeyRotate(KeyRotate<'a>) in [REQUEST];
    /// The key manager's verdict on a request it does not answer with a record.
    0x36 KEY_RESULT => KeyResult(KeyResult<'a>) in [RESPONSE];
}

impl Encode for Frame<'_> {
    fn encoded_len(&self) -> usize {
        1 + self.body_len()
    }

    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(self.frame_type().0);
        self.encode_body(buf);
    }
}

impl<'a> Frame<'a> {
    /// Decodes one frame from the start of `bytes`, which begin at byte `offset` of the
    /// datagram, without checking which packet type carries it.
    pub fn decode(bytes: &'a [u8], offset: usize) -> Result<(Frame<'a>, usize), DecodeError> {
        let mut r = Reader::new(bytes, offset);
        let frame = Self::decode_from(&mut r)?;
        Ok((frame, r.offset() - offset))
    }

    #[inline]
    fn decode_from(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let frame_type = FrameType(u8::decode(r, "frame type")?);
        Self::decode_body(frame_type, r)
    }

    /// Whether a receiver must acknowledge the packet carrying this frame
    /// (SPEC.md §8: everything but PADDING, ACK and CLOSE).
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Padding(_) | Frame::Ack(_) | Frame::Close(_))
    }
}

/// Walks the frames of one payload, checking each frame type against the packet type.
///
/// Yields frames in order; after the first error it yields that error and stops, since
/// the rest of the payload cannot be delimited. A payload with no frame at all is an
/// error ([`DecodeError::Empty`]).
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    reader: Reader<'a>,
    carrier: Carrier,
    yielded: bool,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Frames of a payload carried by `carrier` (a packet type, or [`Carrier::Message`]),
    /// which starts at byte `offset` of its datagram.
    pub fn new(carrier: impl Into<Carrier>, payload: &'a [u8], offset: usize) -> Self {
        Frames {
            reader: Reader::new(payload, offset),
            carrier: carrier.into(),
            yielded: false,
            failed: false,
        }
    }

    #[inline]
    fn next_frame(&mut self) -> Result<Frame<'a>, DecodeError> {
        let offset = self.reader.offset();
        let frame_type = self.reader.peek_u8().map(FrameType);
        if let Some(frame_type) = frame_type.filter(|t| t.name().is_some()) {
            if !frame_type.allowed_in(self.carrier) {
                return Err(DecodeError::FrameNotAllowed {
                    offset,
                    frame_type: frame_type.0,
                    carrier: self.carrier,
                });
            }
        }
        Frame::decode_from(&mut self.reader)
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.reader.is_empty() {
            if self.yielded {
                return None;
            }
            self.failed = true;
            return Some(Err(DecodeError::Empty {
                offset: self.reader.offset(),
            }));
        }
        self.yielded = true;
        let result = self.next_frame();
        self.failed = result.is_err();
        Some(result)
    }
}
