//! Round-trip properties of the codec: every frame type, whole cleartext packets, and
//! coalesced packets decode back to exactly what was encoded; plus the build-side and
//! decode-side refusals of out-of-bounds field values.
//!
//! Frames borrow their fields. The strategies generate owned data and leak it to get
//! `'static` borrows, which is fine for a test process.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::BoxedStrategy;
use sockmsg_wire::frame::{
    Ack, AckRange, BatchProof, Carrier, Chat, ChatFlags, Close, CloseCode, Fragment,
    HandshakeFinish, HandshakeInit, HandshakeResponse, Heartbeat, KeyChallenge, KeyLookup,
    KeyRecord, KeyRegister, KeyResult, KeyResultCode, KeyRotate, KeyStatus, LeaderAnnounce,
    LeaderQuery, LeaderRecord, Leave, Member, Membership, MembershipAck, Message, MessageClass,
    NoLeader, Padding, ProxyResult, ProxyStatus, Retry, TransferLeadership, Vote, VoteFlags,
    VoteProof, VoteRequest,
};
use sockmsg_wire::limits::{
    MAX_ACK_RANGES, MAX_MEMBERS, MAX_NAME_LEN, MAX_PAYLOAD_LEN, MAX_PUBLIC_KEY_LEN, MAX_REASON_LEN,
    MAX_SIGNATURE_LEN, MAX_TOKEN_LEN,
};
use sockmsg_wire::{
    encode_cleartext_packet, BuildError, Datagram, DecodeError, Encode, Frame, FrameType, Frames,
    List, Name, Packet, PacketFlags, PacketType, PublicKey, Signature, Text, Token, HEADER_LEN,
    VERSION,
};

/// Cases per property: enough to reach the corners, few enough to run in seconds.
fn config() -> ProptestConfig {
    ProptestConfig {
        // Failures are reported with their minimal input; no regression files are written.
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

/// The packet types whose payload is cleartext frames.
const CLEARTEXT: [PacketType; 5] = [
    PacketType::INITIAL,
    PacketType::RETRY,
    PacketType::HANDSHAKE,
    PacketType::REQUEST,
    PacketType::RESPONSE,
];

// ---------------------------------------------------------------------------------------
// Field strategies: one per field type, each yielding only valid values.

fn leak_str(s: String) -> &'static str {
    String::leak(s)
}

fn leak_bytes(v: Vec<u8>) -> &'static [u8] {
    Vec::leak(v)
}

fn bytes(min: usize, max: usize) -> impl Strategy<Value = &'static [u8]> {
    vec(any::<u8>(), min..=max).prop_map(leak_bytes)
}

fn array<const N: usize>() -> impl Strategy<Value = &'static [u8; N]> {
    proptest::array::uniform::<_, N>(any::<u8>()).prop_map(|a| &*Box::leak(Box::new(a)))
}

/// 1..=32 bytes of `[A-Za-z0-9._-]`.
fn name() -> impl Strategy<Value = Name<'static>> {
    "[A-Za-z0-9._-]{1,32}".prop_map(|s| Name::new(leak_str(s)).expect("a valid name"))
}

/// Any UTF-8 up to 255 bytes: a mix of ASCII (so the 255-byte bound is reached) and
/// arbitrary code points, cut at the last whole character that fits.
fn text() -> impl Strategy<Value = Text<'static>> {
    let ch = prop_oneof![any::<char>(), (0x20u8..0x7f).prop_map(char::from)];
    vec(ch, 0..=MAX_REASON_LEN).prop_map(|chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > MAX_REASON_LEN {
                break;
            }
            s.push(c);
        }
        Text::new(leak_str(s)).expect("a valid text")
    })
}

fn token() -> impl Strategy<Value = Token<'static>> {
    bytes(0, MAX_TOKEN_LEN).prop_map(|b| Token::new(b).expect("a valid token"))
}

fn signature() -> impl Strategy<Value = Signature<'static>> {
    bytes(0, MAX_SIGNATURE_LEN).prop_map(|b| Signature::new(b).expect("a valid signature"))
}

fn public_key() -> impl Strategy<Value = PublicKey<'static>> {
    bytes(1, MAX_PUBLIC_KEY_LEN).prop_map(|b| PublicKey::new(b).expect("a valid public key"))
}

/// IPv4 or IPv6; flow label and scope id are zero since the wire does not carry them.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

fn list<T>(item: impl Strategy<Value = T>) -> impl Strategy<Value = List<'static, T>>
where
    T: sockmsg_wire::Decode<'static> + Copy + std::fmt::Debug + 'static,
{
    vec(item, 0..=MAX_MEMBERS).prop_map(|items| List::new(Vec::leak(items)).expect("≤ 64 items"))
}

/// A valid ACK: the ranges are drawn first (gaps ≥ 1) and `largest` is derived from them,
/// at least as high as the lowest acknowledged packet number needs (sometimes exactly, so
/// that the last range ends at packet number 0).
fn ack() -> impl Strategy<Value = Ack<'static>> {
    let gap = prop_oneof![Just(1u32), 1..=u32::MAX];
    let len = prop_oneof![Just(0u32), any::<u32>()];
    let slack = prop_oneof![Just(0u64), 0..1000u64, any::<u64>()];
    (
        any::<u32>(),
        any::<u32>(),
        vec((gap, len), 0..=MAX_ACK_RANGES),
        slack,
    )
        .prop_map(|(ack_delay_us, first_range, ranges, slack)| {
            let span: u64 = u64::from(first_range)
                + ranges
                    .iter()
                    .map(|&(gap, len)| u64::from(gap) + 1 + u64::from(len))
                    .sum::<u64>();
            let ranges: Vec<AckRange> = ranges
                .into_iter()
                .map(|(gap, len)| AckRange::new(gap, len))
                .collect();
            let ranges: &'static [AckRange] = Vec::leak(ranges);
            Ack::new(
                span.saturating_add(slack),
                ack_delay_us,
                first_range,
                ranges,
            )
            .expect("a valid ACK")
        })
}

/// A valid fragment: a whole short message, or a piece of a message of up to 65536 bytes
/// (pieces are kept short; sometimes the last piece of the message).
fn fragment() -> impl Strategy<Value = Fragment<'static>> {
    let piece = (1..=65_536u32)
        .prop_flat_map(|total| (Just(total), 0..total))
        .prop_flat_map(|(total, offset)| {
            let room = (total - offset).min(512) as usize;
            let len = prop_oneof![Just(room), 1..=room];
            (Just(total), Just(offset), len)
        })
        .prop_flat_map(|(total, offset, len)| (Just(total), Just(offset), bytes(len, len)))
        .prop_map(|(total, offset, data)| Fragment::new(total, offset, data).expect("in bounds"));
    prop_oneof![
        bytes(1, 300).prop_map(|m| Fragment::whole(m).expect("short message")),
        piece,
    ]
}

fn padding() -> impl Strategy<Value = Padding> {
    (1..=1200usize).prop_map(|len| Padding::new(len).expect("len ≥ 1"))
}

fn chat_flags() -> impl Strategy<Value = ChatFlags> {
    select(vec![ChatFlags::empty(), ChatFlags::DIRECT])
}

fn vote_flags() -> impl Strategy<Value = VoteFlags> {
    select(vec![
        VoteFlags::empty(),
        VoteFlags::PRE_VOTE,
        VoteFlags::GRANTED,
        VoteFlags::PRE_VOTE.with(VoteFlags::GRANTED),
    ])
}

// ---------------------------------------------------------------------------------------
// Frame bodies.

fn member() -> impl Strategy<Value = Member<'static>> {
    (name(), socket_addr(), any::<u64>(), any::<u64>()).prop_map(
        |(name, addr, rank, incarnation)| Member {
            name,
            addr,
            rank,
            incarnation,
        },
    )
}

fn vote_request() -> impl Strategy<Value = VoteRequest<'static>> {
    (
        any::<u64>(),
        name(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(term, candidate, membership_term, membership_version, rank)| VoteRequest {
                term,
                candidate,
                membership_term,
                membership_version,
                rank,
            },
        )
}

fn leader_record() -> impl Strategy<Value = LeaderRecord<'static>> {
    (
        (name(), any::<u64>(), name(), socket_addr()),
        (any::<u64>(), list(name()), any::<u64>(), signature()),
    )
        .prop_map(
            |(
                (group, term, leader, leader_addr),
                (membership_version, members, issued_at_ms, signature),
            )| LeaderRecord {
                group,
                term,
                leader,
                leader_addr,
                membership_version,
                members,
                issued_at_ms,
                signature,
            },
        )
}

fn vote_proof() -> impl Strategy<Value = VoteProof<'static>> {
    (name(), signature()).prop_map(|(voter, signature)| VoteProof { voter, signature })
}

/// A strategy for frames of type `frame_type`: the one place that maps a type to a body.
fn batch_proof() -> impl Strategy<Value = BatchProof<'static>> {
    (any::<u32>(), any::<u32>(), list(array())).prop_map(|(size, index, path)| BatchProof {
        size,
        index,
        path,
    })
}

fn message_class() -> impl Strategy<Value = MessageClass> {
    select(MessageClass::ALL.to_vec())
}

fn frame(frame_type: FrameType) -> BoxedStrategy<Frame<'static>> {
    match frame_type {
        FrameType::PADDING => padding().prop_map(Frame::Padding).boxed(),
        FrameType::PING => Just(Frame::Ping).boxed(),
        FrameType::ACK => ack().prop_map(Frame::Ack).boxed(),
        FrameType::CLOSE => (any::<u16>(), text())
            .prop_map(|(code, reason)| {
                Frame::Close(Close {
                    code: CloseCode(code),
                    reason,
                })
            })
            .boxed(),
        FrameType::MESSAGE => (message_class(), any::<u64>(), fragment())
            .prop_map(|(class, id, fragment)| {
                Frame::Message(Message {
                    class,
                    id,
                    fragment,
                })
            })
            .boxed(),
        FrameType::MEMBERSHIP_ACK => (any::<u64>(), any::<u64>())
            .prop_map(|(term, version)| Frame::MembershipAck(MembershipAck { term, version }))
            .boxed(),
        FrameType::HANDSHAKE_INIT => (name(), name(), any::<u64>(), array(), token())
            .prop_map(|(group, initiator, initiator_cid, ephemeral, cookie)| {
                Frame::HandshakeInit(HandshakeInit {
                    group,
                    initiator,
                    initiator_cid,
                    ephemeral,
                    cookie,
                })
            })
            .boxed(),
        FrameType::RETRY => token()
            .prop_map(|cookie| Frame::Retry(Retry { cookie }))
            .boxed(),
        FrameType::HANDSHAKE_RESPONSE => (name(), any::<u64>(), array(), signature())
            .prop_map(|(responder, responder_cid, ephemeral, signature)| {
                Frame::HandshakeResponse(HandshakeResponse {
                    responder,
                    responder_cid,
                    ephemeral,
                    signature,
                })
            })
            .boxed(),
        FrameType::HANDSHAKE_FINISH => signature()
            .prop_map(|signature| Frame::HandshakeFinish(HandshakeFinish { signature }))
            .boxed(),
        FrameType::CHAT => (name(), any::<u64>(), any::<u64>(), chat_flags(), fragment())
            .prop_map(|(sender, incarnation, seq, flags, fragment)| {
                Frame::Chat(Chat {
                    sender,
                    incarnation,
                    seq,
                    flags,
                    fragment,
                })
            })
            .boxed(),
        FrameType::HEARTBEAT => (
            any::<u64>(),
            name(),
            any::<u64>(),
            any::<u64>(),
            list(member()),
        )
            .prop_map(
                |(term, leader, membership_term, membership_version, members)| {
                    Frame::Heartbeat(Heartbeat {
                        term,
                        leader,
                        membership_term,
                        membership_version,
                        members,
                    })
                },
            )
            .boxed(),
        FrameType::PRE_VOTE_REQUEST => vote_request().prop_map(Frame::PreVoteRequest).boxed(),
        FrameType::VOTE_REQUEST => vote_request().prop_map(Frame::VoteRequest).boxed(),
        FrameType::VOTE => (
            name(),
            any::<u64>(),
            name(),
            name(),
            vote_flags(),
            signature(),
        )
            .prop_map(|(group, term, voter, candidate, flags, signature)| {
                Frame::Vote(Vote {
                    group,
                    term,
                    voter,
                    candidate,
                    flags,
                    signature,
                })
            })
            .boxed(),
        FrameType::JOIN => member().prop_map(Frame::Join).boxed(),
        FrameType::MEMBERSHIP => (any::<u64>(), any::<u64>(), any::<u64>(), list(member()))
            .prop_map(|(term, membership_term, version, members)| {
                Frame::Membership(Membership {
                    term,
                    membership_term,
                    version,
                    members,
                })
            })
            .boxed(),
        FrameType::LEAVE => (name(), any::<u64>())
            .prop_map(|(name, incarnation)| Frame::Leave(Leave { name, incarnation }))
            .boxed(),
        FrameType::TRANSFER_LEADERSHIP => (any::<u64>(), name())
            .prop_map(|(term, target)| {
                Frame::TransferLeadership(TransferLeadership { term, target })
            })
            .boxed(),
        FrameType::LEADER_QUERY => name()
            .prop_map(|group| Frame::LeaderQuery(LeaderQuery { group }))
            .boxed(),
        FrameType::LEADER_INFO => leader_record().prop_map(Frame::LeaderInfo).boxed(),
        FrameType::NO_LEADER => name()
            .prop_map(|group| Frame::NoLeader(NoLeader { group }))
            .boxed(),
        FrameType::LEADER_CLAIM => leader_record().prop_map(Frame::LeaderClaim).boxed(),
        FrameType::LEADER_ANNOUNCE => (leader_record(), list(vote_proof()))
            .prop_map(|(record, votes)| Frame::LeaderAnnounce(LeaderAnnounce { record, votes }))
            .boxed(),
        FrameType::PROXY_RESULT => (any::<u8>(), text(), vec(leader_record(), 0..=1))
            .prop_map(|(status, reason, held)| {
                Frame::ProxyResult(ProxyResult {
                    status: ProxyStatus(status),
                    reason,
                    held: List::new(Vec::leak(held)).expect("≤ 1 item"),
                })
            })
            .boxed(),
        FrameType::KEY_LOOKUP => name()
            .prop_map(|name| Frame::KeyLookup(KeyLookup { name }))
            .boxed(),
        FrameType::KEY_RECORD => (
            name(),
            public_key(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            batch_proof(),
            signature(),
        )
            .prop_map(
                |(name, public_key, serial, issued_at_ms, status, batch, signature)| {
                    Frame::KeyRecord(KeyRecord {
                        name,
                        public_key,
                        serial,
                        issued_at_ms,
                        status: KeyStatus(status),
                        batch,
                        signature,
                    })
                },
            )
            .boxed(),
        FrameType::KEY_CHALLENGE_REQUEST => Just(Frame::KeyChallengeRequest).boxed(),
        FrameType::KEY_CHALLENGE => array()
            .prop_map(|nonce| Frame::KeyChallenge(KeyChallenge { nonce }))
            .boxed(),
        FrameType::KEY_REGISTER => (name(), public_key(), array(), token(), signature())
            .prop_map(|(name, public_key, nonce, invite, signature)| {
                Frame::KeyRegister(KeyRegister {
                    name,
                    public_key,
                    nonce,
                    invite,
                    signature,
                })
            })
            .boxed(),
        FrameType::KEY_ROTATE => (name(), public_key(), array(), signature(), signature())
            .prop_map(
                |(name, new_public_key, nonce, old_signature, new_signature)| {
                    Frame::KeyRotate(KeyRotate {
                        name,
                        new_public_key,
                        nonce,
                        old_signature,
                        new_signature,
                    })
                },
            )
            .boxed(),
        FrameType::KEY_RESULT => (any::<u8>(), text())
            .prop_map(|(code, reason)| {
                Frame::KeyResult(KeyResult {
                    code: KeyResultCode(code),
                    reason,
                })
            })
            .boxed(),
        other => panic!("no strategy for frame type {other:?}"),
    }
}

/// Any frame that packets of type `packet_type` may carry.
fn frame_in(packet_type: PacketType) -> BoxedStrategy<Frame<'static>> {
    let types: Vec<FrameType> = FrameType::ALL
        .iter()
        .copied()
        .filter(|t| t.allowed_in(packet_type))
        .collect();
    select(types).prop_flat_map(frame).boxed()
}

// ---------------------------------------------------------------------------------------
// Checks.

/// The encoding of a frame or a field, in a buffer of its own.
fn encode<T: Encode>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(value.encoded_len());
    value.encode(&mut bytes);
    bytes
}

fn decoded<T>(result: Result<T, DecodeError>) -> Result<T, TestCaseError> {
    result.map_err(|e| TestCaseError::fail(format!("decoding a valid encoding failed: {e:?}")))
}

/// The frame property: encoding is `encoded_len()` bytes starting with the type code;
/// it decodes back to the same frame, consuming exactly those bytes (and no more when
/// followed by other bytes, and anywhere in a datagram); any strict prefix is refused;
/// and [`Frames`] accepts it in exactly the packet types the table allows.
fn check_frame(expected: FrameType, frame: &Frame<'_>) -> Result<(), TestCaseError> {
    prop_assert_eq!(frame.frame_type(), expected);
    let bytes = encode(frame);
    prop_assert_eq!(bytes.len(), frame.encoded_len());
    prop_assert_eq!(bytes[0], expected.0);

    let (decoded_frame, used) = decoded(Frame::decode(&bytes, 0))?;
    prop_assert_eq!(used, bytes.len());
    prop_assert_eq!(&decoded_frame, frame);

    // Trailing bytes (not zero, which PADDING would swallow) are left alone, and the
    // datagram offset the bytes start at changes nothing.
    let mut followed = bytes.clone();
    followed.extend_from_slice(&[0xff, 0x01]);
    let (again, used) = decoded(Frame::decode(&followed, 1000))?;
    prop_assert_eq!(used, bytes.len());
    prop_assert_eq!(&again, frame);

    // Every field is fixed-size or length-prefixed, so a cut encoding is refused (PADDING
    // excepted: a shorter run of zeros is a shorter padding), with an offset inside it.
    if !matches!(frame, Frame::Padding(_)) {
        let cut = &bytes[..bytes.len() - 1];
        match Frame::decode(cut, 1000) {
            Ok(f) => {
                return Err(TestCaseError::fail(format!(
                    "a cut encoding decoded: {f:?}"
                )))
            }
            Err(e) => prop_assert!((1000..=1000 + cut.len()).contains(&e.offset()), "{:?}", e),
        }
    }

    let carriers = PacketType::ALL
        .into_iter()
        .map(Carrier::Packet)
        .chain([Carrier::Message]);
    for carrier in carriers {
        let items: Vec<_> = Frames::new(carrier, &bytes, 24).collect();
        let want = if expected.allowed_in(carrier) {
            Ok(*frame)
        } else {
            Err(DecodeError::FrameNotAllowed {
                offset: 24,
                frame_type: expected.0,
                carrier,
            })
        };
        prop_assert_eq!(items, vec![want], "in {:?}", carrier);
    }
    Ok(())
}

/// A cleartext packet to encode.
#[derive(Debug, Clone)]
struct PacketSpec {
    packet_type: PacketType,
    connection_id: u64,
    packet_number: u64,
    frames: Vec<Frame<'static>>,
}

impl PacketSpec {
    fn payload_len(&self) -> usize {
        self.frames.iter().map(Encode::encoded_len).sum()
    }

    fn encode_into(&self, buf: &mut Vec<u8>) -> usize {
        let start = buf.len();
        let written = encode_cleartext_packet(
            buf,
            self.packet_type,
            self.connection_id,
            self.packet_number,
            &self.frames,
        )
        .expect("a valid cleartext packet");
        assert_eq!(written, buf.len() - start);
        written
    }
}

/// Keeps the frames that fit in one payload, never two PADDINGs in a row (the decoder
/// would rightly read them as one), and at least one frame.
fn fit(frames: Vec<Frame<'static>>) -> Vec<Frame<'static>> {
    let mut kept: Vec<Frame<'static>> = Vec::new();
    let mut len = 0;
    for frame in frames {
        let double_padding = matches!(
            (kept.last(), &frame),
            (Some(Frame::Padding(_)), Frame::Padding(_))
        );
        if !double_padding && len + frame.encoded_len() <= MAX_PAYLOAD_LEN {
            len += frame.encoded_len();
            kept.push(frame);
        }
    }
    if kept.is_empty() {
        kept.push(Frame::Padding(Padding::new(1).expect("len 1")));
    }
    kept
}

fn packet() -> impl Strategy<Value = PacketSpec> {
    select(CLEARTEXT.to_vec())
        .prop_flat_map(|packet_type| {
            (
                Just(packet_type),
                any::<u64>(),
                any::<u64>(),
                vec(frame_in(packet_type), 1..=6),
            )
        })
        .prop_map(
            |(packet_type, connection_id, packet_number, frames)| PacketSpec {
                packet_type,
                connection_id,
                packet_number,
                frames: fit(frames),
            },
        )
}

/// Checks a decoded packet against what was encoded at `offset` of `datagram`.
fn check_packet(
    packet: &Packet<'_>,
    spec: &PacketSpec,
    datagram: &[u8],
    offset: usize,
) -> Result<(), TestCaseError> {
    let header = packet.header();
    prop_assert_eq!(packet.offset(), offset);
    prop_assert_eq!(packet.payload_offset(), offset + HEADER_LEN);
    prop_assert_eq!(packet.packet_type(), spec.packet_type);
    prop_assert_eq!(header.version(), VERSION);
    prop_assert_eq!(header.packet_type(), spec.packet_type);
    prop_assert_eq!(header.flags(), PacketFlags::empty());
    prop_assert_eq!(header.payload_len(), spec.payload_len());
    prop_assert_eq!(header.connection_id(), spec.connection_id);
    prop_assert_eq!(header.packet_number(), spec.packet_number);
    prop_assert_eq!(
        header.as_wire_bytes(),
        &datagram[offset..offset + HEADER_LEN]
    );
    let payload_start = offset + HEADER_LEN;
    prop_assert_eq!(
        packet.payload(),
        &datagram[payload_start..payload_start + spec.payload_len()]
    );
    let frames: Result<Vec<Frame<'_>>, DecodeError> = packet.frames().collect();
    prop_assert_eq!(frames, Ok(spec.frames.clone()));
    Ok(())
}

fn next_packet<'a>(walk: &mut Datagram<'a>) -> Result<Packet<'a>, TestCaseError> {
    match walk.next() {
        Some(result) => decoded(result),
        None => Err(TestCaseError::fail("the datagram ended early")),
    }
}

// ---------------------------------------------------------------------------------------
// Properties.

/// One property per frame type: `name => TYPE`. Also records the types covered, so that
/// `every_frame_type_has_a_roundtrip` notices a frame added to the table but not here.
macro_rules! frame_roundtrips {
    ($($test:ident => $frame_type:ident,)*) => {
        const COVERED: &[FrameType] = &[$(FrameType::$frame_type),*];

        proptest! {
            #![proptest_config(config())]
            $(
                #[test]
                fn $test(frame in frame(FrameType::$frame_type)) {
                    check_frame(FrameType::$frame_type, &frame)?;
                }
            )*
        }
    };
}

frame_roundtrips! {
    padding_roundtrips => PADDING,
    ping_roundtrips => PING,
    ack_roundtrips => ACK,
    close_roundtrips => CLOSE,
    message_roundtrips => MESSAGE,
    handshake_init_roundtrips => HANDSHAKE_INIT,
    retry_roundtrips => RETRY,
    handshake_response_roundtrips => HANDSHAKE_RESPONSE,
    handshake_finish_roundtrips => HANDSHAKE_FINISH,
    chat_roundtrips => CHAT,
    heartbeat_roundtrips => HEARTBEAT,
    pre_vote_request_roundtrips => PRE_VOTE_REQUEST,
    vote_request_roundtrips => VOTE_REQUEST,
    vote_roundtrips => VOTE,
    join_roundtrips => JOIN,
    membership_roundtrips => MEMBERSHIP,
    leave_roundtrips => LEAVE,
    transfer_leadership_roundtrips => TRANSFER_LEADERSHIP,
    membership_ack_roundtrips => MEMBERSHIP_ACK,
    leader_query_roundtrips => LEADER_QUERY,
    leader_info_roundtrips => LEADER_INFO,
    no_leader_roundtrips => NO_LEADER,
    leader_claim_roundtrips => LEADER_CLAIM,
    leader_announce_roundtrips => LEADER_ANNOUNCE,
    proxy_result_roundtrips => PROXY_RESULT,
    key_lookup_roundtrips => KEY_LOOKUP,
    key_record_roundtrips => KEY_RECORD,
    key_challenge_request_roundtrips => KEY_CHALLENGE_REQUEST,
    key_challenge_roundtrips => KEY_CHALLENGE,
    key_register_roundtrips => KEY_REGISTER,
    key_rotate_roundtrips => KEY_ROTATE,
    key_result_roundtrips => KEY_RESULT,
}

#[test]
fn every_frame_type_has_a_roundtrip() {
    assert_eq!(COVERED, FrameType::ALL);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cleartext_packet_roundtrips(spec in packet()) {
        let mut datagram = Vec::new();
        spec.encode_into(&mut datagram);
        prop_assert_eq!(datagram.len(), HEADER_LEN + spec.payload_len());
        let mut walk = Datagram::new(&datagram);
        let packet = next_packet(&mut walk)?;
        check_packet(&packet, &spec, &datagram, 0)?;
        prop_assert!(walk.next().is_none());
    }

    #[test]
    fn coalesced_packets_roundtrip(first in packet(), second in packet()) {
        let mut datagram = Vec::new();
        let first_len = first.encode_into(&mut datagram);
        second.encode_into(&mut datagram);
        let mut walk = Datagram::new(&datagram);
        let packet = next_packet(&mut walk)?;
        check_packet(&packet, &first, &datagram, 0)?;
        let packet = next_packet(&mut walk)?;
        check_packet(&packet, &second, &datagram, first_len)?;
        prop_assert!(walk.next().is_none());
    }

    /// A decoded ACK's ranges run downwards from `largest`, each separated from the one
    /// above by its gap, and stay at or above packet number 0.
    #[test]
    fn ack_ranges_walk_down_from_largest(ack in ack()) {
        let bytes = encode(&Frame::Ack(ack));
        let Ok((Frame::Ack(decoded_ack), _)) = Frame::decode(&bytes, 0) else {
            return Err(TestCaseError::fail("the ACK does not decode"));
        };
        let ranges: Vec<_> = decoded_ack.ranges().collect();
        prop_assert_eq!(ranges.len(), 1 + ack.extra_ranges().len());
        prop_assert_eq!(
            &ranges[0],
            &((ack.largest - u64::from(ack.first_range))..=ack.largest)
        );
        for (pair, extra) in ranges.windows(2).zip(ack.extra_ranges()) {
            let (above, below) = (&pair[0], &pair[1]);
            prop_assert_eq!(below.end() + u64::from(extra.gap()) + 1, *above.start());
            prop_assert_eq!(below.end() - below.start(), u64::from(extra.len()));
        }
    }

    /// `Name::new` and the decoder refuse the same bad byte, the decoder at its offset.
    #[test]
    fn name_with_a_bad_byte_is_refused(
        good in "[A-Za-z0-9._-]{1,32}",
        at in any::<Index>(),
        bad in any::<u8>().prop_filter("outside the name alphabet", |&b| {
            !(b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }),
    ) {
        let mut raw = good.into_bytes();
        let at = at.index(raw.len());
        raw[at] = bad;
        if let Ok(s) = std::str::from_utf8(&raw) {
            prop_assert!(
                matches!(Name::new(s), Err(BuildError::Invalid { field: "name", .. })),
                "{:?}", Name::new(s)
            );
        }
        let mut wire = vec![FrameType::LEADER_QUERY.0, raw.len() as u8];
        wire.extend_from_slice(&raw);
        let err = Frame::decode(&wire, 0).map(|(f, _)| f);
        prop_assert!(
            matches!(
                err,
                Err(DecodeError::Invalid { field: "LeaderQuery.group", offset, .. }) if offset == 2 + at
            ),
            "{:?}", err
        );
    }

    /// A name of 0 or more than 32 bytes is refused by `Name::new` and by the decoder,
    /// which reports the length byte.
    #[test]
    fn name_of_a_bad_length_is_refused(len in prop_oneof![Just(0usize), Just(33usize), 33..=255usize]) {
        let s = "a".repeat(len);
        prop_assert_eq!(
            Name::new(&s),
            Err(BuildError::Length { field: "name", len, min: 1, max: MAX_NAME_LEN })
        );
        let mut wire = vec![FrameType::KEY_LOOKUP.0, len as u8];
        wire.extend_from_slice(s.as_bytes());
        prop_assert_eq!(
            Frame::decode(&wire, 0).map(|(f, _)| f),
            Err(DecodeError::OutOfBounds {
                field: "KeyLookup.name",
                offset: 1,
                value: len as u64,
                min: 1,
                max: MAX_NAME_LEN as u64,
            })
        );
    }
}

/// 64 items are the most a list holds: 65 are refused when built and when decoded.
#[test]
fn list_of_65_items_is_refused() {
    let name = Name::new("member").unwrap();
    let names = vec![name; MAX_MEMBERS + 1];
    assert_eq!(
        List::new(&names[..]).err(),
        Some(BuildError::Length {
            field: "list",
            len: MAX_MEMBERS + 1,
            min: 0,
            max: MAX_MEMBERS,
        })
    );

    let record = LeaderRecord {
        group: Name::new("g").unwrap(),
        term: 7,
        leader: name,
        leader_addr: "192.0.2.1:4000".parse().unwrap(),
        membership_version: 3,
        members: List::new(&names[..MAX_MEMBERS]).unwrap(),
        issued_at_ms: 1,
        signature: Signature::new(b"sig").unwrap(),
    };
    let frame = Frame::LeaderInfo(record);
    let mut wire = encode(&frame);
    assert_eq!(Frame::decode(&wire, 0), Ok((frame, wire.len())));

    // The count sits after type, group (2), term (8), leader (7), address (7), version (8).
    let count_at = 1 + 2 + 8 + 7 + 7 + 8;
    assert_eq!(usize::from(wire[count_at]), MAX_MEMBERS);
    wire[count_at] += 1;
    wire.splice(count_at + 1..count_at + 1, encode(&name));
    assert_eq!(
        Frame::decode(&wire, 0),
        Err(DecodeError::OutOfBounds {
            field: "LeaderRecord.members",
            offset: count_at,
            value: 65,
            min: 0,
            max: 64,
        })
    );
}

/// Every field type refuses, when built, a value the decoder would refuse.
#[test]
fn builders_refuse_out_of_bounds_values() {
    let long = vec![b'x'; 2000];
    let long_text = std::str::from_utf8(&long[..MAX_REASON_LEN + 1]).unwrap();
    assert!(Text::new(&long_text[..MAX_REASON_LEN]).is_ok());
    assert!(matches!(
        Text::new(long_text),
        Err(BuildError::Length { len: 256, .. })
    ));
    assert!(Token::new(&long[..MAX_TOKEN_LEN]).is_ok());
    assert!(matches!(
        Token::new(&long[..MAX_TOKEN_LEN + 1]),
        Err(BuildError::Length { len: 65, .. })
    ));
    assert!(Signature::new(&[]).is_ok());
    assert!(Signature::new(&long[..MAX_SIGNATURE_LEN]).is_ok());
    assert!(matches!(
        Signature::new(&long[..MAX_SIGNATURE_LEN + 1]),
        Err(BuildError::Length { len: 1025, .. })
    ));
    assert!(matches!(
        PublicKey::new(&[]),
        Err(BuildError::Length { len: 0, .. })
    ));
    assert!(matches!(
        PublicKey::new(&long[..MAX_PUBLIC_KEY_LEN + 1]),
        Err(BuildError::Length { len: 1101, .. })
    ));
    assert!(Padding::new(0).is_err());

    let ranges = vec![AckRange::new(1, 0); MAX_ACK_RANGES + 1];
    assert!(Ack::new(u64::MAX, 0, 0, &ranges[..MAX_ACK_RANGES]).is_ok());
    assert!(matches!(
        Ack::new(u64::MAX, 0, 0, &ranges),
        Err(BuildError::Length { .. })
    ));
    assert!(Ack::new(5, 0, 5, &[]).is_ok());
    assert!(Ack::new(5, 0, 6, &[]).is_err());
    // 10 acknowledged, 9 and 8 not, 7..=0 acknowledged: exactly down to 0.
    assert!(Ack::new(10, 0, 0, &[AckRange::new(2, 7)]).is_ok());
    assert!(Ack::new(10, 0, 0, &[AckRange::new(2, 8)]).is_err());
    assert!(Ack::new(10, 0, 0, &[AckRange::new(0, 1)]).is_err());

    assert!(Fragment::new(10, 9, b"x").is_ok());
    assert!(Fragment::new(10, 9, b"xy").is_err());
    assert!(Fragment::new(0, 0, b"").is_err());
    assert!(Fragment::new(10, 0, b"").is_err());
    assert!(Fragment::new(65_536, 65_535, b"x").is_ok());
    assert!(Fragment::new(65_537, 0, b"x").is_err());
    assert!(Fragment::whole(b"").is_err());
}

/// `encode_cleartext_packet` refuses DATA, an empty payload and one over 65535 bytes.
#[test]
fn cleartext_packet_builder_refuses_what_cannot_be_sent() {
    let mut buf = Vec::new();
    let ping = [Frame::Ping];
    assert!(encode_cleartext_packet(&mut buf, PacketType::DATA, 1, 1, &ping).is_err());
    assert!(encode_cleartext_packet(&mut buf, PacketType::REQUEST, 1, 1, &[]).is_err());
    assert!(Padding::new(MAX_PAYLOAD_LEN + 1).is_err());
    let big = [
        Frame::Padding(Padding::new(MAX_PAYLOAD_LEN).unwrap()),
        Frame::Padding(Padding::new(1).unwrap()),
    ];
    assert!(encode_cleartext_packet(&mut buf, PacketType::INITIAL, 1, 1, &big).is_err());
    assert!(buf.is_empty(), "a refused packet writes nothing");
    let full = [Frame::Padding(Padding::new(MAX_PAYLOAD_LEN).unwrap())];
    assert_eq!(
        encode_cleartext_packet(&mut buf, PacketType::INITIAL, 1, 1, &full),
        Ok(HEADER_LEN + MAX_PAYLOAD_LEN)
    );
}
