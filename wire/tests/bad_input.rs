//! Bad input: decoding arbitrary or damaged bytes never panics, never loops, and never
//! accepts anything that does not re-encode to the very same bytes; and each kind of
//! malformation is refused with its exact typed error at its exact offset.

use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use sockmsg_wire::frame::{
    Ack, AckRange, BatchProof, Carrier, Chat, ChatFlags, Close, CloseCode, Fragment,
    HandshakeFinish, HandshakeInit, HandshakeResponse, Heartbeat, KeyChallenge, KeyLookup,
    KeyRecord, KeyRegister, KeyResult, KeyResultCode, KeyRotate, KeyStatus, LeaderAnnounce,
    LeaderQuery, LeaderRecord, Leave, Member, Membership, MembershipAck, Message, MessageClass,
    NoLeader, Padding, ProxyResult, ProxyStatus, Retry, TransferLeadership, Vote, VoteFlags,
    VoteProof, VoteRequest,
};
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, DecodeError, Encode, Frame, FrameType, Frames, Header, List,
    Name, PacketFlags, PacketType, PublicKey, Signature, Text, Token, HEADER_LEN,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        // Failures are reported with their minimal input; no regression files are written.
        failure_persistence: None,
        ..ProptestConfig::with_cases(512)
    }
}

// ---------------------------------------------------------------------------------------
// The receiver's walk, with the invariants every outcome must satisfy.

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

/// Walks the frames of a `packet_type` payload that starts at `base`, as a receiver
/// does, and checks: at most one error, and it ends the walk; an error's offset lies
/// within the part of the payload not yet accepted; every accepted frame is allowed in
/// the packet type, re-encodes to exactly the bytes it was read from, and decodes again
/// to an equal frame. Returns the frames if the whole payload was accepted.
fn check_frames<'a>(
    carrier: impl Into<Carrier>,
    payload: &'a [u8],
    base: usize,
) -> Result<Option<Vec<Frame<'a>>>, TestCaseError> {
    let carrier = carrier.into();
    let mut walk = Frames::new(carrier, payload, base);
    let mut frames = Vec::new();
    let mut cursor = 0;
    // Each frame takes at least one byte, so there are at most len + 1 items.
    for item in walk.by_ref().take(payload.len() + 1) {
        let frame = match item {
            Ok(frame) => frame,
            Err(e) => {
                let at = e.offset();
                prop_assert!(
                    base + cursor <= at && at <= base + payload.len(),
                    "{:?} outside {}..={}",
                    e,
                    base + cursor,
                    base + payload.len()
                );
                prop_assert!(walk.next().is_none(), "an item after {:?}", e);
                return Ok(None);
            }
        };
        prop_assert!(frame.frame_type().allowed_in(carrier));
        let len = frame.encoded_len();
        prop_assert!(len >= 1 && cursor + len <= payload.len());
        let mut bytes = Vec::with_capacity(len);
        frame.encode(&mut bytes);
        prop_assert_eq!(bytes.len(), len);
        prop_assert_eq!(&bytes[..], &payload[cursor..cursor + len], "not canonical");
        let again = Frame::decode(&bytes, base + cursor)
            .map_err(|e| fail(format!("re-encoded {frame:?} does not decode: {e:?}")))?;
        prop_assert_eq!(again, (frame, len));
        frames.push(frame);
        cursor += len;
    }
    prop_assert!(walk.next().is_none(), "the frame walk does not end");
    prop_assert_eq!(cursor, payload.len());
    Ok(Some(frames))
}

/// Walks a datagram and the frames of every cleartext packet in it. A packet whose
/// frames are all accepted must re-encode, header included, to the bytes it came from.
fn check_datagram(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut walk = Datagram::new(bytes);
    let mut cursor = 0;
    for item in walk.by_ref().take(bytes.len() / HEADER_LEN + 1) {
        let packet = match item {
            Ok(packet) => packet,
            Err(e) => {
                prop_assert!(cursor <= e.offset() && e.offset() <= bytes.len(), "{:?}", e);
                prop_assert!(walk.next().is_none(), "a packet after {:?}", e);
                return Ok(());
            }
        };
        let header = packet.header();
        let end = packet.payload_offset() + header.payload_len();
        prop_assert_eq!(packet.offset(), cursor);
        prop_assert!(end <= bytes.len());
        prop_assert_eq!(packet.payload(), &bytes[packet.payload_offset()..end]);
        cursor = end;
        if packet.packet_type().is_protected() {
            continue;
        }
        let Some(frames) = check_frames(
            packet.packet_type(),
            packet.payload(),
            packet.payload_offset(),
        )?
        else {
            continue;
        };
        let mut again = Vec::new();
        let written = encode_cleartext_packet(
            &mut again,
            header.packet_type(),
            header.connection_id(),
            header.packet_number(),
            &frames,
        )
        .map_err(|e| fail(format!("an accepted packet cannot be re-encoded: {e:?}")))?;
        prop_assert_eq!(written, again.len());
        prop_assert_eq!(
            &again[..],
            &bytes[packet.offset()..end],
            "packet not canonical"
        );
    }
    prop_assert!(walk.next().is_none(), "the datagram walk does not end");
    prop_assert_eq!(cursor, bytes.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Input strategies.

/// Bytes that look like frames often enough to get past the first byte: defined frame
/// type codes and small numbers (plausible lengths and counts) among random bytes.
fn frameish_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let codes: Vec<u8> = FrameType::ALL.iter().map(|t| t.0).collect();
    let byte = prop_oneof![
        3 => any::<u8>(),
        1 => select(codes),
        1 => 0u8..=4,
        1 => prop_oneof![Just(b'a'), Just(b'.'), Just(6u8), Just(32), Just(64), Just(65)],
    ];
    vec(byte, 0..=max)
}

/// A payload of 1 to 4 chunks, each a defined frame type code and a few frame-like
/// bytes, so that walks often get past the type byte and into the bodies.
fn frame_chunks() -> impl Strategy<Value = Vec<u8>> {
    let codes: Vec<u8> = FrameType::ALL.iter().map(|t| t.0).collect();
    let chunk =
        (select(codes), frameish_bytes(40)).prop_map(|(code, body)| [vec![code], body].concat());
    vec(chunk, 1..=4).prop_map(|chunks| chunks.concat())
}

/// Payload bytes: frame-like noise or frame-like chunks.
fn payload_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![frameish_bytes(max), frame_chunks()]
}

/// A datagram of 1 to 3 packets whose headers are mostly valid (magic and version,
/// a type from 0 to 7, usually no flags, a payload length usually matching), so that
/// the walk reaches the payloads.
fn plausible_datagram() -> impl Strategy<Value = Vec<u8>> {
    let packet = (
        0u8..=7,
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some)],
        any::<u64>(),
        payload_bytes(200),
    )
        .prop_map(|(packet_type, flags, payload_len, number, payload)| {
            let payload_len = payload_len.unwrap_or(payload.len() as u16);
            let mut bytes = header_bytes(packet_type, flags, payload_len);
            bytes[16..24].copy_from_slice(&number.to_be_bytes());
            bytes.extend_from_slice(&payload);
            bytes
        });
    vec(packet, 1..=3).prop_map(|packets| packets.concat())
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        match *mutation {
            Mutation::Insert(ref at, b) => bytes.insert(at.index(len + 1), b),
            _ if len == 0 => {}
            Mutation::Flip(ref at, bit) => bytes[at.index(len)] ^= 1 << bit,
            Mutation::Set(ref at, b) => bytes[at.index(len)] = b,
            Mutation::Remove(ref at) => {
                bytes.remove(at.index(len));
            }
            Mutation::Truncate(ref at) => bytes.truncate(at.index(len)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Valid inputs to damage: every frame type at least once, in packets of each type.

static EPHEMERAL: [u8; 32] = [0x11; 32];
static NONCE: [u8; 32] = [0x22; 32];
static SIGNATURE: [u8; 300] = [0x33; 300];
static PUBLIC_KEY: [u8; 40] = [0x44; 40];

/// Seeds are built once and borrow from leaked storage, so they can be `'static`.
fn leak<T>(items: Vec<T>) -> &'static [T] {
    Vec::leak(items)
}

fn n(name: &'static str) -> Name<'static> {
    Name::new(name).expect("a valid name")
}

fn sig() -> Signature<'static> {
    Signature::new(&SIGNATURE).expect("≤ 1024 bytes")
}

fn members() -> List<'static, Member<'static>> {
    List::new(leak(vec![
        Member {
            name: n("alice"),
            addr: "192.0.2.1:4000".parse().unwrap(),
            rank: 3,
            incarnation: 9,
        },
        Member {
            name: n("bob.b-2_"),
            addr: "[2001:db8::1]:4001".parse().unwrap(),
            rank: u64::MAX,
            incarnation: 0,
        },
    ]))
    .expect("2 members")
}

fn record() -> LeaderRecord<'static> {
    LeaderRecord {
        group: n("g"),
        term: 4,
        leader: n("alice"),
        leader_addr: "192.0.2.1:4000".parse().unwrap(),
        membership_version: 2,
        members: List::new(leak(vec![n("alice"), n("bob")])).expect("2 names"),
        issued_at_ms: 1_700_000_000_000,
        signature: sig(),
    }
}

/// Valid cleartext packets: (packet type, frames).
fn cleartext_seeds() -> Vec<(PacketType, Vec<Frame<'static>>)> {
    let votes = leak(vec![VoteProof {
        voter: n("bob"),
        signature: sig(),
    }]);
    let init = HandshakeInit {
        group: n("g"),
        initiator: n("alice"),
        initiator_cid: 0x0102_0304_0506_0708,
        ephemeral: &EPHEMERAL,
        cookie: Token::new(b"cookie").unwrap(),
    };
    vec![
        (
            PacketType::INITIAL,
            vec![
                Frame::HandshakeInit(init),
                Frame::Padding(Padding::new(40).unwrap()),
            ],
        ),
        (
            PacketType::RETRY,
            vec![Frame::Retry(Retry {
                cookie: Token::new(&[7; 64]).unwrap(),
            })],
        ),
        (
            PacketType::HANDSHAKE,
            vec![
                Frame::HandshakeResponse(HandshakeResponse {
                    responder: n("bob"),
                    responder_cid: 42,
                    ephemeral: &EPHEMERAL,
                    signature: sig(),
                }),
                Frame::HandshakeFinish(HandshakeFinish { signature: sig() }),
            ],
        ),
        (
            PacketType::REQUEST,
            vec![
                Frame::LeaderQuery(LeaderQuery { group: n("g") }),
                Frame::LeaderClaim(record()),
                Frame::LeaderAnnounce(LeaderAnnounce {
                    record: record(),
                    votes: List::new(votes).unwrap(),
                }),
                Frame::KeyLookup(KeyLookup { name: n("carol") }),
                Frame::KeyChallengeRequest,
                Frame::KeyRegister(KeyRegister {
                    name: n("carol"),
                    public_key: PublicKey::new(&PUBLIC_KEY).unwrap(),
                    nonce: &NONCE,
                    invite: Token::new(b"").unwrap(),
                    signature: sig(),
                }),
                Frame::KeyRotate(KeyRotate {
                    name: n("carol"),
                    new_public_key: PublicKey::new(&PUBLIC_KEY).unwrap(),
                    nonce: &NONCE,
                    old_signature: sig(),
                    new_signature: Signature::new(b"").unwrap(),
                }),
            ],
        ),
        (
            PacketType::RESPONSE,
            vec![
                Frame::LeaderInfo(record()),
                Frame::NoLeader(NoLeader { group: n("g") }),
                Frame::ProxyResult(ProxyResult {
                    status: ProxyStatus::STALE_TERM,
                    reason: Text::new("term 3 < 4").unwrap(),
                    held: List::new(Box::leak(Box::new([record()]))).unwrap(),
                }),
                Frame::KeyRecord(KeyRecord {
                    name: n("carol"),
                    public_key: PublicKey::new(&PUBLIC_KEY).unwrap(),
                    serial: 5,
                    issued_at_ms: 6,
                    status: KeyStatus::ACTIVE,
                    batch: BatchProof {
                        size: 2,
                        index: 1,
                        path: List::new(&[&[0x44; 32]]).unwrap(),
                    },
                    signature: sig(),
                }),
                Frame::KeyChallenge(KeyChallenge { nonce: &NONCE }),
                Frame::KeyResult(KeyResult {
                    code: KeyResultCode::BAD_NONCE,
                    reason: Text::new("nonce déjà vu").unwrap(),
                }),
                Frame::Padding(Padding::new(3).unwrap()),
            ],
        ),
    ]
}

/// The plaintext of a DATA packet holding every DATA frame.
/// Group frames, as in the payloads of session MESSAGEs.
fn message_payloads() -> &'static [u8] {
    static PAYLOADS: OnceLock<Vec<u8>> = OnceLock::new();
    PAYLOADS.get_or_init(encode_message_payloads)
}

fn encode_message_payloads() -> Vec<u8> {
    let vote_request = VoteRequest {
        term: 5,
        candidate: n("bob"),
        membership_term: 4,
        membership_version: 2,
        rank: 77,
    };
    let frames = [
        Frame::Chat(Chat {
            sender: n("alice"),
            incarnation: 1,
            seq: 2,
            flags: ChatFlags::DIRECT,
            fragment: Fragment::new(20, 5, "héllo".as_bytes()).unwrap(),
        }),
        Frame::Heartbeat(Heartbeat {
            term: 5,
            leader: n("alice"),
            membership_term: 4,
            membership_version: 2,
            members: members(),
        }),
        Frame::PreVoteRequest(vote_request),
        Frame::VoteRequest(vote_request),
        Frame::Vote(Vote {
            group: n("g"),
            term: 5,
            voter: n("carol"),
            candidate: n("bob"),
            flags: VoteFlags::GRANTED,
            signature: sig(),
        }),
        Frame::Join(members().iter().next().unwrap()),
        Frame::Membership(Membership {
            term: 5,
            membership_term: 4,
            version: 3,
            members: members(),
        }),
        Frame::Leave(Leave {
            name: n("bob"),
            incarnation: 8,
        }),
        Frame::TransferLeadership(TransferLeadership {
            term: 5,
            target: n("carol"),
        }),
        Frame::MembershipAck(MembershipAck {
            term: 5,
            version: 3,
        }),
    ];
    encoded_all(&frames)
}

/// Session frames, as in the plaintext of a DATA packet.
fn data_plaintext() -> &'static [u8] {
    static PLAINTEXT: OnceLock<Vec<u8>> = OnceLock::new();
    PLAINTEXT.get_or_init(|| {
        let ranges = [AckRange::new(2, 3), AckRange::new(1, 0)];
        encoded_all(&[
            Frame::Ping,
            Frame::Ack(Ack::new(100, 25, 4, &ranges).unwrap()),
            Frame::Message(Message {
                class: MessageClass::Ordered,
                id: 7,
                fragment: Fragment::new(3000, 1200, b"part").unwrap(),
            }),
            Frame::Close(Close {
                code: CloseCode::LEAVING,
                reason: Text::new("bye").unwrap(),
            }),
            Frame::Padding(Padding::new(5).unwrap()),
        ])
    })
}

fn encoded_all(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for frame in frames {
        frame.encode(&mut bytes);
    }
    bytes
}

/// The encoded seeds: each cleartext packet alone, and two of them coalesced.
fn seed_datagrams() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(encode_seeds)
}

fn encode_seeds() -> Vec<Vec<u8>> {
    let packets: Vec<Vec<u8>> = cleartext_seeds()
        .iter()
        .enumerate()
        .map(|(i, (packet_type, frames))| {
            let mut bytes = Vec::new();
            encode_cleartext_packet(&mut bytes, *packet_type, i as u64, 1, frames)
                .expect("a valid seed");
            bytes
        })
        .collect();
    let coalesced = [packets[2].clone(), packets[4].clone()].concat();
    packets.into_iter().chain([coalesced]).collect()
}

// ---------------------------------------------------------------------------------------
// Hand-made bytes for the typed-error tests.

/// A version-1 header, byte by byte as SPEC.md lays it out (not through `Header`).
fn header_bytes(packet_type: u8, flags: u8, payload_len: u16) -> Vec<u8> {
    let mut bytes = b"SM".to_vec();
    bytes.extend_from_slice(&[1, packet_type, flags, 0]);
    bytes.extend_from_slice(&payload_len.to_be_bytes());
    bytes.extend_from_slice(&0xc1d0_0000_0000_0001u64.to_be_bytes());
    bytes.extend_from_slice(&9u64.to_be_bytes());
    bytes
}

/// A packet of `packet_type` with `payload`, its length in the header.
fn packet_bytes(packet_type: PacketType, payload: &[u8]) -> Vec<u8> {
    let mut bytes = header_bytes(packet_type.0, 0, payload.len() as u16);
    bytes.extend_from_slice(payload);
    bytes
}

/// The error a datagram walk ends with, after `ok` good packets; nothing follows it.
fn datagram_error(bytes: &[u8], ok: usize) -> DecodeError {
    let items: Vec<_> = Datagram::new(bytes).collect();
    assert_eq!(items.len(), ok + 1, "{items:?}");
    assert!(items[..ok].iter().all(Result::is_ok), "{items:?}");
    items[ok].expect_err("the walk ends with an error")
}

/// The error a frame walk of a `packet_type` payload at `base` ends with, after `ok`
/// good frames; nothing follows it.
fn frames_error(
    carrier: impl Into<Carrier>,
    payload: &[u8],
    base: usize,
    ok: usize,
) -> DecodeError {
    let items: Vec<_> = Frames::new(carrier, payload, base).collect();
    assert_eq!(items.len(), ok + 1, "{items:?}");
    assert!(items[..ok].iter().all(Result::is_ok), "{items:?}");
    items[ok].expect_err("the walk ends with an error")
}

/// The error the frames of the single packet of `datagram` end with.
fn packet_frames_error(datagram: &[u8], ok: usize) -> DecodeError {
    let packet = Datagram::new(datagram)
        .next()
        .expect("a packet")
        .expect("a valid header");
    frames_error(
        packet.packet_type(),
        packet.payload(),
        packet.payload_offset(),
        ok,
    )
}

fn encoded(frame: Frame<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    bytes
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_datagrams_never_panic(bytes in vec(any::<u8>(), 0..=600)) {
        check_datagram(&bytes)?;
    }

    #[test]
    fn plausible_datagrams_never_panic(bytes in plausible_datagram()) {
        check_datagram(&bytes)?;
    }

    #[test]
    fn arbitrary_payloads_never_panic(bytes in payload_bytes(400), base in 0usize..100_000) {
        for packet_type in PacketType::ALL {
            check_frames(packet_type, &bytes, base)?;
        }
    }

    #[test]
    fn damaged_packets_are_refused_or_canonical(
        seed in any::<Index>(),
        mutations in vec(mutation(), 1..=4),
    ) {
        let seeds = seed_datagrams();
        let mut bytes = seeds[seed.index(seeds.len())].clone();
        mutate(&mut bytes, &mutations);
        check_datagram(&bytes)?;
    }

    #[test]
    fn damaged_data_plaintexts_are_refused_or_canonical(mutations in vec(mutation(), 1..=4)) {
        let mut bytes = data_plaintext().to_vec();
        mutate(&mut bytes, &mutations);
        check_frames(PacketType::DATA, &bytes, HEADER_LEN)?;
    }

    #[test]
    fn damaged_message_payloads_are_refused_or_canonical(mutations in vec(mutation(), 1..=4)) {
        let mut bytes = message_payloads().to_vec();
        mutate(&mut bytes, &mutations);
        check_frames(Carrier::Message, &bytes, 0)?;
    }
}

#[test]
fn undamaged_seeds_decode_in_full() {
    let seeds = cleartext_seeds();
    for (packet_type, _) in &seeds {
        assert!(!packet_type.is_protected());
    }
    let mut covered: Vec<FrameType> = seeds
        .iter()
        .flat_map(|(_, frames)| frames.iter().map(Frame::frame_type))
        .collect();
    let data_frames: Vec<Frame<'_>> = Frames::new(PacketType::DATA, data_plaintext(), 0)
        .chain(Frames::new(Carrier::Message, message_payloads(), 0))
        .collect::<Result<_, _>>()
        .expect("valid DATA frames and MESSAGE payloads");
    covered.extend(data_frames.iter().map(Frame::frame_type));
    covered.sort();
    covered.dedup();
    assert_eq!(covered, FrameType::ALL, "the seeds hold every frame type");

    for datagram in seed_datagrams() {
        let mut packets = 0;
        for packet in Datagram::new(datagram) {
            let packet = packet.expect("a valid seed packet");
            let frames: Result<Vec<_>, _> = packet.frames().collect();
            assert!(frames.is_ok(), "{frames:?}");
            packets += 1;
        }
        assert!(packets >= 1);
    }
}

// ---------------------------------------------------------------------------------------
// Typed errors, each at its exact offset.

#[test]
fn hand_made_header_matches_header_new() {
    let header = Header::new(
        PacketType::REQUEST,
        PacketFlags::empty(),
        0xc1d0_0000_0000_0001,
        9,
        0x0102,
    );
    assert_eq!(header.as_wire_bytes(), &header_bytes(0x05, 0, 0x0102)[..]);
}

#[test]
fn truncated_header() {
    let good = packet_bytes(PacketType::REQUEST, &[FrameType::KEY_CHALLENGE_REQUEST.0]);
    assert_eq!(
        datagram_error(&good[..HEADER_LEN - 1], 0),
        DecodeError::Truncated {
            field: "Header",
            offset: 0,
            needed: HEADER_LEN,
            available: HEADER_LEN - 1,
        }
    );
    // After a good packet, the offset is where the second header starts.
    let mut two = good.clone();
    two.extend_from_slice(&good[..5]);
    assert_eq!(
        datagram_error(&two, 1),
        DecodeError::Truncated {
            field: "Header",
            offset: good.len(),
            needed: HEADER_LEN,
            available: 5,
        }
    );
}

#[test]
fn bad_magic() {
    let mut bytes = packet_bytes(PacketType::REQUEST, &[FrameType::KEY_CHALLENGE_REQUEST.0]);
    bytes[1] = b'N';
    assert_eq!(
        datagram_error(&bytes, 0),
        DecodeError::BadMagic {
            offset: 0,
            found: 0x534e,
        }
    );
}

#[test]
fn unsupported_version() {
    for version in [0, 2, 0xff] {
        let mut bytes = packet_bytes(PacketType::REQUEST, &[FrameType::KEY_CHALLENGE_REQUEST.0]);
        bytes[2] = version;
        assert_eq!(
            datagram_error(&bytes, 0),
            DecodeError::UnsupportedVersion { offset: 2, version }
        );
    }
}

#[test]
fn unknown_packet_type() {
    for packet_type in [0x00, 0x07, 0xff] {
        let mut bytes = header_bytes(packet_type, 0, 1);
        bytes.push(FrameType::PADDING.0);
        assert_eq!(
            datagram_error(&bytes, 0),
            DecodeError::UnknownPacketType {
                offset: 3,
                packet_type,
            }
        );
    }
}

#[test]
fn reserved_header_bits() {
    let payload = [FrameType::PADDING.0];
    // Only DATA defines a flag (KEY_PHASE, 0x01).
    let mut bytes = header_bytes(PacketType::INITIAL.0, 0x01, 1);
    bytes.extend_from_slice(&payload);
    assert_eq!(
        datagram_error(&bytes, 0),
        DecodeError::ReservedBits {
            field: "Header.flags",
            offset: 4,
            bits: 0x01,
        }
    );
    let mut data = header_bytes(PacketType::DATA.0, 0x83, 17);
    data.extend_from_slice(&[0; 17]);
    assert_eq!(
        datagram_error(&data, 0),
        DecodeError::ReservedBits {
            field: "Header.flags",
            offset: 4,
            bits: 0x82,
        }
    );
    data[4] = PacketFlags::KEY_PHASE.bits();
    let packet = Datagram::new(&data).next().unwrap().unwrap();
    assert!(packet.header().flags().contains(PacketFlags::KEY_PHASE));

    let mut bytes = packet_bytes(PacketType::RESPONSE, &payload);
    bytes[5] = 0x10;
    assert_eq!(
        datagram_error(&bytes, 0),
        DecodeError::ReservedBits {
            field: "Header.reserved",
            offset: 5,
            bits: 0x10,
        }
    );
}

#[test]
fn payload_beyond_the_datagram() {
    let mut bytes = header_bytes(PacketType::REQUEST.0, 0, 10);
    bytes.extend_from_slice(&[FrameType::KEY_CHALLENGE_REQUEST.0; 4]);
    assert_eq!(
        datagram_error(&bytes, 0),
        DecodeError::Truncated {
            field: "payload",
            offset: HEADER_LEN,
            needed: 10,
            available: 4,
        }
    ); // One byte short is as short as any.
    let mut bytes = header_bytes(PacketType::REQUEST.0, 0, 5);
    bytes.extend_from_slice(&[FrameType::KEY_CHALLENGE_REQUEST.0; 4]);
    assert_eq!(
        datagram_error(&bytes, 0),
        DecodeError::Truncated {
            field: "payload",
            offset: HEADER_LEN,
            needed: 5,
            available: 4,
        }
    );
}

#[test]
fn payload_shorter_than_its_type_allows() {
    // DATA needs one byte of frames and the 16-byte tag.
    let mut data = header_bytes(PacketType::DATA.0, 0, 16);
    data.extend_from_slice(&[0xaa; 16]);
    assert_eq!(
        datagram_error(&data, 0),
        DecodeError::OutOfBounds {
            field: "Header.payload_len",
            offset: 6,
            value: 16,
            min: 17,
            max: 65_535,
        }
    );
    let mut data = header_bytes(PacketType::DATA.0, 0, 17);
    data.extend_from_slice(&[0xaa; 17]);
    assert_eq!(
        Datagram::new(&data)
            .next()
            .unwrap()
            .unwrap()
            .payload()
            .len(),
        17
    );

    // A cleartext packet needs one frame.
    let empty = header_bytes(PacketType::HANDSHAKE.0, 0, 0);
    assert_eq!(
        datagram_error(&empty, 0),
        DecodeError::OutOfBounds {
            field: "Header.payload_len",
            offset: 6,
            value: 0,
            min: 1,
            max: 65_535,
        }
    );
}

#[test]
fn unknown_frame_type() {
    for frame_type in [0x05, 0x0c, 0x1a, 0x37, 0xff] {
        assert!(FrameType(frame_type).name().is_none());
        let bytes = packet_bytes(PacketType::REQUEST, &[frame_type, 0, 0]);
        assert_eq!(
            packet_frames_error(&bytes, 0),
            DecodeError::UnknownFrameType {
                offset: HEADER_LEN,
                frame_type,
            }
        );
    }
    // After a frame, the offset is the unknown type byte's.
    let bytes = packet_bytes(
        PacketType::REQUEST,
        &[FrameType::KEY_CHALLENGE_REQUEST.0, 0x40],
    );
    assert_eq!(
        packet_frames_error(&bytes, 1),
        DecodeError::UnknownFrameType {
            offset: HEADER_LEN + 1,
            frame_type: 0x40,
        }
    );
}

#[test]
fn frame_not_allowed_in_packet_type() {
    let chat = [FrameType::CHAT.0];
    assert_eq!(
        packet_frames_error(&packet_bytes(PacketType::INITIAL, &chat), 0),
        DecodeError::FrameNotAllowed {
            offset: HEADER_LEN,
            frame_type: FrameType::CHAT.0,
            carrier: Carrier::Packet(PacketType::INITIAL),
        }
    );
    // Refused on the type byte alone, before the body is read; offset after PADDING.
    let mut payload = encoded(Frame::Padding(Padding::new(3).unwrap()));
    payload.extend_from_slice(&encoded(Frame::KeyLookup(KeyLookup { name: n("x") })));
    assert_eq!(
        packet_frames_error(&packet_bytes(PacketType::RESPONSE, &payload), 1),
        DecodeError::FrameNotAllowed {
            offset: HEADER_LEN + 3,
            frame_type: FrameType::KEY_LOOKUP.0,
            carrier: Carrier::Packet(PacketType::RESPONSE),
        }
    );
    // Each frame type in each packet type the table forbids.
    let carriers = PacketType::ALL
        .into_iter()
        .map(Carrier::Packet)
        .chain([Carrier::Message]);
    for carrier in carriers {
        for &frame_type in FrameType::ALL {
            if !frame_type.allowed_in(carrier) {
                assert_eq!(
                    frames_error(carrier, &[frame_type.0], 100, 0),
                    DecodeError::FrameNotAllowed {
                        offset: 100,
                        frame_type: frame_type.0,
                        carrier,
                    }
                );
            }
        }
    }
}

#[test]
fn list_count_of_65() {
    let mut heartbeat = encoded(Frame::Heartbeat(Heartbeat {
        term: 1,
        leader: n("alice"),
        membership_term: 1,
        membership_version: 1,
        members: members(),
    }));
    // type, term (8), leader (1 + 5), membership term (8), version (8), then the count.
    let count_at = 1 + 8 + 6 + 8 + 8;
    assert_eq!(heartbeat[count_at], 2);
    heartbeat[count_at] = 65;
    assert_eq!(
        frames_error(Carrier::Message, &heartbeat, 1000, 0),
        DecodeError::OutOfBounds {
            field: "Heartbeat.members",
            offset: 1000 + count_at,
            value: 65,
            min: 0,
            max: 64,
        }
    );
}

#[test]
fn name_length_0() {
    let payload = [FrameType::LEADER_QUERY.0, 0];
    assert_eq!(
        packet_frames_error(&packet_bytes(PacketType::REQUEST, &payload), 0),
        DecodeError::OutOfBounds {
            field: "LeaderQuery.group",
            offset: HEADER_LEN + 1,
            value: 0,
            min: 1,
            max: 32,
        }
    );
}

#[test]
fn name_with_a_space() {
    let payload = [FrameType::KEY_LOOKUP.0, 3, b'a', b' ', b'b'];
    assert_eq!(
        frames_error(PacketType::REQUEST, &payload, 0, 0),
        DecodeError::Invalid {
            field: "KeyLookup.name",
            offset: 3,
            reason: "name byte outside [A-Za-z0-9._-]",
        }
    );
}

#[test]
fn signature_length_1025() {
    let mut payload = vec![FrameType::HANDSHAKE_FINISH.0];
    payload.extend_from_slice(&1025u16.to_be_bytes());
    payload.extend_from_slice(&[0; 1025]);
    assert_eq!(
        packet_frames_error(&packet_bytes(PacketType::HANDSHAKE, &payload), 0),
        DecodeError::OutOfBounds {
            field: "HandshakeFinish.signature",
            offset: HEADER_LEN + 1,
            value: 1025,
            min: 0,
            max: 1024,
        }
    );
}

#[test]
fn public_key_length_0() {
    let mut payload = encoded(Frame::KeyRecord(KeyRecord {
        name: n("carol"),
        public_key: PublicKey::new(b"k").unwrap(),
        serial: 1,
        issued_at_ms: 2,
        status: KeyStatus::REVOKED,
        batch: BatchProof {
            size: 1,
            index: 0,
            path: List::new(&[]).unwrap(),
        },
        signature: Signature::new(b"").unwrap(),
    }));
    // type, name (1 + 5), then the key's 2-byte length and its one byte.
    let key_at = 1 + 6;
    assert_eq!(payload[key_at..key_at + 3], [0, 1, b'k']);
    payload.splice(key_at..key_at + 3, [0, 0]);
    assert_eq!(
        frames_error(PacketType::RESPONSE, &payload, 0, 0),
        DecodeError::OutOfBounds {
            field: "KeyRecord.public_key",
            offset: key_at,
            value: 0,
            min: 1,
            max: 1100,
        }
    );
}

/// The CHAT frame of `sender` "a" with a fragment header as given and `data`.
fn chat_bytes(total_len: u32, offset: u32, len: u16, data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![FrameType::CHAT.0, 1, b'a'];
    bytes.extend_from_slice(&1u64.to_be_bytes()); // incarnation
    bytes.extend_from_slice(&1u64.to_be_bytes()); // seq
    bytes.push(0); // flags
    bytes.extend_from_slice(&total_len.to_be_bytes());
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Where the fragment starts in `chat_bytes`: type, sender, incarnation, seq, flags.
const FRAGMENT_AT: usize = 1 + 2 + 8 + 8 + 1;

#[test]
fn fragment_past_the_end_of_its_message() {
    let ok = chat_bytes(10, 7, 3, b"xyz");
    assert!(Frames::new(Carrier::Message, &ok, 0).all(|f| f.is_ok()));
    for (total_len, offset, len, reason) in [
        (10, 8, 3, "fragment extends past the end of the message"),
        (
            10,
            u32::MAX,
            3,
            "fragment extends past the end of the message",
        ),
        (0, 0, 3, "message length outside 1..=65536"),
        (65_537, 0, 3, "message length outside 1..=65536"),
        (10, 0, 0, "fragment length outside 1..=65535"),
    ] {
        let bytes = chat_bytes(total_len, offset, len, &b"xyz"[..usize::from(len)]);
        assert_eq!(
            frames_error(Carrier::Message, &bytes, 50, 0),
            DecodeError::Invalid {
                field: "Chat.fragment",
                offset: 50 + FRAGMENT_AT,
                reason,
            },
            "{total_len} {offset} {len}"
        );
    }
}

#[test]
fn reserved_frame_flag_bits() {
    let mut chat = chat_bytes(3, 0, 3, b"xyz");
    chat[FRAGMENT_AT - 1] = 0x03;
    assert_eq!(
        frames_error(Carrier::Message, &chat, 0, 0),
        DecodeError::ReservedBits {
            field: "Chat.flags",
            offset: FRAGMENT_AT - 1,
            bits: 0x02,
        }
    );
}

/// An ACK frame: largest, delay 0, first range, then (gap, len) ranges.
fn ack_bytes(largest: u64, first_range: u32, ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut bytes = vec![FrameType::ACK.0];
    bytes.extend_from_slice(&largest.to_be_bytes());
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&first_range.to_be_bytes());
    bytes.push(ranges.len() as u8);
    for (gap, len) in ranges {
        bytes.extend_from_slice(&gap.to_be_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
    }
    bytes
}

#[test]
fn ack_below_packet_number_0() {
    // 10 down to 7, 2 missing, 4..=0: exactly down to 0, and valid.
    let ok = ack_bytes(10, 3, &[(2, 4)]);
    assert!(Frames::new(PacketType::DATA, &ok, 0).all(|f| f.is_ok()));
    for (bytes, reason) in [
        (
            ack_bytes(5, 6, &[]),
            "first range goes below packet number 0",
        ),
        (
            ack_bytes(10, 3, &[(2, 5)]),
            "range goes below packet number 0",
        ),
        (
            ack_bytes(10, 3, &[(7, 0)]),
            "range goes below packet number 0",
        ),
        (
            ack_bytes(10, 0, &[(0, 1)]),
            "a gap of 0 between ranges (they would be one range)",
        ),
    ] {
        assert_eq!(
            frames_error(PacketType::DATA, &bytes, 7, 0),
            DecodeError::Invalid {
                field: "Ack",
                offset: 7 + 1,
                reason,
            }
        );
    }
}

#[test]
fn ack_with_33_ranges() {
    let bytes = ack_bytes(u64::MAX, 0, &[(1, 0); 33]);
    assert_eq!(
        frames_error(PacketType::DATA, &bytes, 0, 0),
        DecodeError::OutOfBounds {
            field: "Ack.range_count",
            offset: 1 + 8 + 4 + 4,
            value: 33,
            min: 0,
            max: 32,
        }
    );
}

#[test]
fn text_that_is_not_utf8() {
    let payload = [FrameType::CLOSE.0, 0, 0, 4, b'o', b'k', 0xc3, b'('];
    assert_eq!(
        frames_error(PacketType::DATA, &payload, 0, 0),
        DecodeError::Invalid {
            field: "Close.reason",
            offset: 4 + 2,
            reason: "text is not UTF-8",
        }
    );
}

#[test]
fn address_family_neither_4_nor_6() {
    let mut join = encoded(Frame::Join(members().iter().next().unwrap()));
    // type, name "alice" (1 + 5), then the family byte.
    let family_at = 1 + 6;
    assert_eq!(join[family_at], 4);
    join[family_at] = 5;
    assert_eq!(
        frames_error(Carrier::Message, &join, 0, 0),
        DecodeError::Invalid {
            field: "Member.addr",
            offset: family_at,
            reason: "address family is neither 4 nor 6",
        }
    );
}

#[test]
fn frame_cut_short() {
    let payload = [FrameType::LEAVE.0, 3, b'b', b'o', b'b', 0, 0, 0];
    assert_eq!(
        frames_error(Carrier::Message, &payload, 24, 0),
        DecodeError::Truncated {
            field: "Leave.incarnation",
            offset: 24 + 5,
            needed: 8,
            available: 3,
        }
    );
}

#[test]
fn empty_payload() {
    for packet_type in PacketType::ALL {
        let mut walk = Frames::new(packet_type, &[], 24);
        assert_eq!(walk.next(), Some(Err(DecodeError::Empty { offset: 24 })));
        assert_eq!(walk.next(), None);
    }
}
