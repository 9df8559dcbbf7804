//! SPEC.md's golden vectors, checked against the codec in both directions.
//!
//! SPEC.md marks each vector with `<!-- vector: NAME -->` followed by a ```hex block. For
//! every vector this test knows the value it must decode to; it decodes the spec's bytes
//! and compares, and encodes the value and compares with the spec's bytes. It also checks
//! that every frame type and packet type has a vector and that the spec holds no vector
//! this test does not check, so the spec and the code cannot drift apart.
//!
//! To print the vectors as the codec encodes them (when writing SPEC.md):
//! `SOCKMSG_PRINT_VECTORS=1 cargo test -p sockmsg-wire --test spec_vectors -- --nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use sockmsg_wire::frame::*;
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, Encode, Frame, FrameType, Header, List, Name, PacketFlags,
    PacketType, PublicKey, Signature, Text, Token,
};

const SPEC: &str = include_str!("../../SPEC.md");

fn name(s: &'static str) -> Name<'static> {
    Name::new(s).expect("valid test name")
}

fn sig(bytes: &'static [u8]) -> Signature<'static> {
    Signature::new(bytes).expect("valid test signature")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid test address")
}

const EPHEMERAL_A: [u8; 32] = [0x11; 32];
const EPHEMERAL_B: [u8; 32] = [0x22; 32];
const NONCE: [u8; 32] = [0x5a; 32];
const DER_KEY: &[u8] = &[0x30, 0x82, 0x01, 0x22];

/// What a vector must decode to: a lone frame, or a whole datagram.
enum Expected {
    Frame(Frame<'static>),
    /// Packet type, connection id, packet number, frames.
    Packet(PacketType, u64, u64, Vec<Frame<'static>>),
    /// A DATA packet: header fields and opaque ciphertext (with tag).
    Protected(Header, &'static [u8]),
}

fn members() -> List<'static, Member<'static>> {
    let members: &'static [Member<'static>] = Box::leak(Box::new([
        Member {
            name: name("alice"),
            addr: addr("192.0.2.1:7402"),
            rank: 7,
            incarnation: 0x0102030405060708,
        },
        Member {
            name: name("bob"),
            addr: addr("[2001:db8::2]:7403"),
            rank: 3,
            incarnation: 9,
        },
    ]));
    List::new(members).expect("two members")
}

fn leader_record() -> LeaderRecord<'static> {
    let names: &'static [Name<'static>] = Box::leak(Box::new([name("alice"), name("bob")]));
    LeaderRecord {
        group: name("lobby"),
        term: 2,
        leader: name("alice"),
        leader_addr: addr("192.0.2.1:7402"),
        membership_version: 4,
        members: List::new(names).expect("two names"),
        issued_at_ms: 1_767_225_600_000,
        signature: sig(&[0xaa, 0xbb]),
    }
}

fn ack_ranges() -> &'static [AckRange] {
    Box::leak(Box::new([AckRange::new(2, 1)]))
}

/// Every vector SPEC.md must contain, by name.
fn expected_vectors() -> BTreeMap<&'static str, Expected> {
    use Expected::Frame as F;
    let vote_request = VoteRequest {
        term: 5,
        candidate: name("bob"),
        membership_term: 2,
        membership_version: 4,
        rank: 3,
    };
    let vectors = [
        ("frame.padding", F(Frame::Padding(Padding::new(4).unwrap()))),
        ("frame.ping", F(Frame::Ping)),
        (
            "frame.ack",
            F(Frame::Ack(Ack::new(10, 250, 2, ack_ranges()).unwrap())),
        ),
        (
            "frame.close",
            F(Frame::Close(Close {
                code: CloseCode::IDLE_TIMEOUT,
                reason: Text::new("idle").unwrap(),
            })),
        ),
        (
            "frame.message",
            F(Frame::Message(Message {
                class: MessageClass::Ordered,
                id: 3,
                fragment: Fragment::new(2500, 1160, b"abc").unwrap(),
            })),
        ),
        (
            "frame.handshake_init",
            F(Frame::HandshakeInit(HandshakeInit {
                group: name("lobby"),
                initiator: name("alice"),
                initiator_cid: 0x0a0b0c0d0e0f1011,
                ephemeral: &EPHEMERAL_A,
                cookie: Token::new(&[0xc0, 0x0c]).unwrap(),
            })),
        ),
        (
            "frame.retry",
            F(Frame::Retry(Retry {
                cookie: Token::new(&[0xc0, 0x0c]).unwrap(),
            })),
        ),
        (
            "frame.handshake_response",
            F(Frame::HandshakeResponse(HandshakeResponse {
                responder: name("bob"),
                responder_cid: 0x2122232425262728,
                ephemeral: &EPHEMERAL_B,
                signature: sig(&[0x01, 0x02, 0x03]),
            })),
        ),
        (
            "frame.handshake_finish",
            F(Frame::HandshakeFinish(HandshakeFinish {
                signature: sig(&[0x04, 0x05, 0x06]),
            })),
        ),
        (
            "frame.chat",
            F(Frame::Chat(Chat {
                sender: name("alice"),
                incarnation: 0x0102030405060708,
                seq: 1,
                flags: ChatFlags::empty(),
                fragment: Fragment::whole(b"hi all").unwrap(),
            })),
        ),
        (
            "frame.chat_fragment",
            F(Frame::Chat(Chat {
                sender: name("alice"),
                incarnation: 0x0102030405060708,
                seq: 2,
                flags: ChatFlags::DIRECT,
                fragment: Fragment::new(3000, 1100, b"xyz").unwrap(),
            })),
        ),
        (
            "frame.heartbeat",
            F(Frame::Heartbeat(Heartbeat {
                term: 2,
                leader: name("alice"),
                membership_term: 1,
                membership_version: 4,
                members: members(),
            })),
        ),
        (
            "frame.pre_vote_request",
            F(Frame::PreVoteRequest(vote_request)),
        ),
        ("frame.vote_request", F(Frame::VoteRequest(vote_request))),
        (
            "frame.vote",
            F(Frame::Vote(Vote {
                group: name("lobby"),
                term: 5,
                voter: name("alice"),
                candidate: name("bob"),
                flags: VoteFlags::GRANTED,
                signature: sig(&[0x0f, 0x0e]),
            })),
        ),
        (
            "frame.vote_support",
            F(Frame::Vote(Vote {
                group: name("lobby"),
                term: 5,
                voter: name("carol"),
                candidate: name("alice"),
                flags: VoteFlags::SUPPORT.with(VoteFlags::GRANTED),
                signature: sig(&[]),
            })),
        ),
        (
            "frame.vote_pre_support",
            F(Frame::Vote(Vote {
                group: name("lobby"),
                term: 5,
                voter: name("carol"),
                candidate: name("alice"),
                flags: VoteFlags::SUPPORT
                    .with(VoteFlags::GRANTED)
                    .with(VoteFlags::PRE_VOTE),
                signature: sig(&[]),
            })),
        ),
        (
            "frame.join",
            F(Frame::Join(Member {
                name: name("carol"),
                addr: addr("127.0.0.1:7404"),
                rank: 11,
                incarnation: 42,
            })),
        ),
        (
            "frame.membership",
            F(Frame::Membership(Membership {
                term: 2,
                membership_term: 1,
                version: 5,
                members: members(),
            })),
        ),
        (
            "frame.leave",
            F(Frame::Leave(Leave {
                name: name("bob"),
                incarnation: 9,
            })),
        ),
        (
            "frame.transfer_leadership",
            F(Frame::TransferLeadership(TransferLeadership {
                term: 2,
                target: name("bob"),
            })),
        ),
        (
            "frame.membership_ack",
            F(Frame::MembershipAck(MembershipAck {
                term: 2,
                version: 5,
            })),
        ),
        (
            "frame.leader_query",
            F(Frame::LeaderQuery(LeaderQuery {
                group: name("lobby"),
            })),
        ),
        ("frame.leader_info", F(Frame::LeaderInfo(leader_record()))),
        (
            "frame.no_leader",
            F(Frame::NoLeader(NoLeader {
                group: name("lobby"),
            })),
        ),
        (
            "frame.leader_claim",
            F(Frame::LeaderClaim(LeaderRecord {
                term: 1,
                membership_version: 1,
                members: List::new(Box::leak(Box::new([name("alice")]))).unwrap(),
                ..leader_record()
            })),
        ),
        (
            "frame.leader_announce",
            F(Frame::LeaderAnnounce(LeaderAnnounce {
                record: leader_record(),
                votes: List::new(Box::leak(Box::new([VoteProof {
                    voter: name("bob"),
                    signature: sig(&[0x0b]),
                }])))
                .unwrap(),
            })),
        ),
        (
            "frame.proxy_result",
            F(Frame::ProxyResult(ProxyResult {
                status: ProxyStatus::STALE_TERM,
                reason: Text::new("term 1 < 2").unwrap(),
                held: List::new(&[]).unwrap(),
            })),
        ),
        (
            "frame.proxy_result_held",
            F(Frame::ProxyResult(ProxyResult {
                status: ProxyStatus::INSUFFICIENT_VOTES,
                reason: Text::new("0 of 2 votes").unwrap(),
                held: List::new(Box::leak(Box::new([leader_record()]))).unwrap(),
            })),
        ),
        (
            "frame.key_lookup",
            F(Frame::KeyLookup(KeyLookup { name: name("bob") })),
        ),
        (
            "frame.key_record",
            F(Frame::KeyRecord(KeyRecord {
                name: name("bob"),
                public_key: PublicKey::new(DER_KEY).unwrap(),
                serial: 3,
                issued_at_ms: 1_767_225_600_000,
                status: KeyStatus::ACTIVE,
                batch: BatchProof {
                    size: 3,
                    index: 2,
                    path: List::new(Box::leak(Box::new([&[0x33u8; 32]]))).unwrap(),
                },
                signature: sig(&[0x99]),
            })),
        ),
        ("frame.key_challenge_request", F(Frame::KeyChallengeRequest)),
        (
            "frame.key_challenge",
            F(Frame::KeyChallenge(KeyChallenge { nonce: &NONCE })),
        ),
        (
            "frame.key_register",
            F(Frame::KeyRegister(KeyRegister {
                name: name("bob"),
                public_key: PublicKey::new(DER_KEY).unwrap(),
                nonce: &NONCE,
                invite: Token::new(b"inv").unwrap(),
                signature: sig(&[0x77]),
            })),
        ),
        (
            "frame.key_rotate",
            F(Frame::KeyRotate(KeyRotate {
                name: name("bob"),
                new_public_key: PublicKey::new(DER_KEY).unwrap(),
                nonce: &NONCE,
                old_signature: sig(&[0x01]),
                new_signature: sig(&[0x02]),
            })),
        ),
        (
            "frame.key_result",
            F(Frame::KeyResult(KeyResult {
                code: KeyResultCode::NAME_TAKEN,
                reason: Text::new("").unwrap(),
            })),
        ),
        (
            "packet.initial",
            Expected::Packet(
                PacketType::INITIAL,
                0x0a0b0c0d0e0f1011,
                0,
                vec![
                    Frame::HandshakeInit(HandshakeInit {
                        group: name("lobby"),
                        initiator: name("alice"),
                        initiator_cid: 0x0a0b0c0d0e0f1011,
                        ephemeral: &EPHEMERAL_A,
                        cookie: Token::default(),
                    }),
                    Frame::Padding(Padding::new(8).unwrap()),
                ],
            ),
        ),
        (
            "packet.retry",
            Expected::Packet(
                PacketType::RETRY,
                0x0a0b0c0d0e0f1011,
                0,
                vec![Frame::Retry(Retry {
                    cookie: Token::new(&[0xc0, 0x0c]).unwrap(),
                })],
            ),
        ),
        (
            "packet.handshake",
            Expected::Packet(
                PacketType::HANDSHAKE,
                0x0a0b0c0d0e0f1011,
                0,
                vec![Frame::HandshakeFinish(HandshakeFinish {
                    signature: sig(&[0x04, 0x05, 0x06]),
                })],
            ),
        ),
        (
            "packet.data",
            Expected::Protected(
                Header::new(
                    PacketType::DATA,
                    PacketFlags::KEY_PHASE,
                    0x2122232425262728,
                    7,
                    18,
                ),
                &[0xee; 18],
            ),
        ),
        (
            "packet.request",
            Expected::Packet(
                PacketType::REQUEST,
                0x0000000000001234,
                0,
                vec![Frame::LeaderQuery(LeaderQuery {
                    group: name("lobby"),
                })],
            ),
        ),
        (
            "packet.response",
            Expected::Packet(
                PacketType::RESPONSE,
                0x0000000000001234,
                0,
                vec![Frame::NoLeader(NoLeader {
                    group: name("lobby"),
                })],
            ),
        ),
    ];
    vectors.into_iter().collect()
}

fn encode_expected(expected: &Expected) -> Vec<u8> {
    let mut buf = Vec::new();
    match expected {
        Expected::Frame(frame) => frame.encode(&mut buf),
        Expected::Packet(packet_type, cid, pn, frames) => {
            encode_cleartext_packet(&mut buf, *packet_type, *cid, *pn, frames)
                .expect("vector packet encodes");
        }
        Expected::Protected(header, ciphertext) => {
            buf.extend_from_slice(header.as_wire_bytes());
            buf.extend_from_slice(ciphertext);
        }
    }
    buf
}

/// Decodes `bytes` as `expected` says and asserts the result equals it.
fn assert_decodes_to(vector: &str, bytes: &[u8], expected: &Expected) {
    match expected {
        Expected::Frame(frame) => {
            let (decoded, used) = Frame::decode(bytes, 0)
                .unwrap_or_else(|e| panic!("vector {vector}: decode failed: {e}"));
            assert_eq!(&decoded, frame, "vector {vector}: decoded frame differs");
            assert_eq!(used, bytes.len(), "vector {vector}: trailing bytes");
        }
        Expected::Packet(packet_type, cid, pn, frames) => {
            let packets: Vec<_> = Datagram::new(bytes)
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("vector {vector}: decode failed: {e}"));
            assert_eq!(packets.len(), 1, "vector {vector}: one packet");
            let header = packets[0].header();
            assert_eq!(header.packet_type(), *packet_type, "vector {vector}");
            assert_eq!(header.connection_id(), *cid, "vector {vector}");
            assert_eq!(header.packet_number(), *pn, "vector {vector}");
            let decoded: Vec<_> = packets[0]
                .frames()
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("vector {vector}: frames failed: {e}"));
            assert_eq!(&decoded, frames, "vector {vector}: frames differ");
        }
        Expected::Protected(header, ciphertext) => {
            let packets: Vec<_> = Datagram::new(bytes)
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("vector {vector}: decode failed: {e}"));
            assert_eq!(packets.len(), 1, "vector {vector}: one packet");
            assert_eq!(packets[0].header(), header, "vector {vector}: header");
            assert_eq!(packets[0].payload(), *ciphertext, "vector {vector}");
        }
    }
}

/// The vectors of SPEC.md: `<!-- vector: NAME -->` then a ```hex block.
fn spec_vectors() -> BTreeMap<String, Vec<u8>> {
    let mut vectors = BTreeMap::new();
    let mut lines = SPEC.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- vector:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let name = name.trim().to_string();
        assert_eq!(
            lines.next().map(str::trim),
            Some("```hex"),
            "SPEC.md: vector {name} must be followed by a ```hex block"
        );
        let hex: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .flat_map(|l| l.split('#').next().unwrap_or("").chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes =
            hex::decode(&hex).unwrap_or_else(|e| panic!("SPEC.md: vector {name}: bad hex: {e}"));
        assert!(
            vectors.insert(name.clone(), bytes).is_none(),
            "SPEC.md: vector {name} appears twice"
        );
    }
    vectors
}

fn spaced_hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn spec_vectors_match_the_codec() {
    let expected = expected_vectors();
    if std::env::var_os("SOCKMSG_PRINT_VECTORS").is_some() {
        for (name, value) in &expected {
            println!(
                "<!-- vector: {name} -->\n```hex\n{}\n```\n",
                spaced_hex(&encode_expected(value))
            );
        }
    }
    let spec = spec_vectors();
    for (name, value) in &expected {
        let bytes = spec
            .get(*name)
            .unwrap_or_else(|| panic!("SPEC.md has no vector {name}"));
        assert_eq!(
            spaced_hex(&encode_expected(value)),
            spaced_hex(bytes),
            "vector {name}: the codec's encoding differs from SPEC.md"
        );
        assert_decodes_to(name, bytes, value);
    }
    let unknown: Vec<_> = spec
        .keys()
        .filter(|name| !expected.contains_key(name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "SPEC.md has vectors no test checks: {unknown:?}"
    );
}

#[test]
fn every_frame_and_packet_type_has_a_vector() {
    let mut frame_types = BTreeSet::new();
    let mut packet_types = BTreeSet::new();
    for value in expected_vectors().values() {
        match value {
            Expected::Frame(frame) => {
                frame_types.insert(frame.frame_type());
            }
            Expected::Packet(packet_type, _, _, _) => {
                packet_types.insert(packet_type.0);
            }
            Expected::Protected(header, _) => {
                packet_types.insert(header.packet_type().0);
            }
        }
    }
    for frame_type in FrameType::ALL {
        assert!(
            frame_types.contains(frame_type),
            "no golden vector for frame {frame_type:?}"
        );
    }
    for packet_type in PacketType::ALL {
        assert!(
            packet_types.contains(&packet_type.0),
            "no golden vector for packet {packet_type:?}"
        );
    }
}

#[test]
fn spec_tables_name_every_frame_type() {
    for frame_type in FrameType::ALL {
        let name = frame_type.name().expect("defined frame type");
        let row = format!("| `0x{:02x}` | {name} |", frame_type.0);
        assert!(
            SPEC.contains(&row),
            "SPEC.md's frame type table lacks the row {row}"
        );
    }
}
