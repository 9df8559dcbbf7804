//! From a UDP datagram to decoded sockmsg packets: which datagrams are sockmsg, each
//! packet's header and frames, DATA packets opened with the key log (group frames
//! decoded inside their MESSAGE), and frames that repeat an earlier one marked as
//! retransmissions. Sans-IO; owns only bounded bookkeeping.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;

use sockmsg_wire::frame::{Carrier, ChatFlags, Frame, MessageClass, VoteFlags};
use sockmsg_wire::{Datagram, Frames, PacketType, HEADER_LEN};

use super::keylog::KeyLog;
use super::net::UdpDatagram;

/// Remembered frame identities at most, for retransmission marking: beyond it the
/// memory is cleared (a very long capture marks a few repeats less, and stays bounded).
const MAX_REMEMBERED: usize = 4 << 20;

/// A decoded frame: its type name, its key fields on one line, and every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameInfo {
    pub name: &'static str,
    pub summary: String,
    pub detail: String,
    /// A repeat of a frame seen before (a MESSAGE fragment or handshake re-sent).
    pub retransmission: bool,
    /// Group frames inside a whole MESSAGE.
    pub inner: Vec<FrameInfo>,
}

/// What a packet holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Frames(Vec<FrameInfo>),
    /// A DATA packet with no key in the key log (or none given).
    Protected,
    /// A DATA packet whose key did not open it, or frames that fail to decode.
    Malformed(String),
}

/// One sockmsg packet, or a datagram on a sockmsg port that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedPacket {
    pub ts_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// `None` for a datagram that does not even start with a valid header.
    pub header: Option<HeaderInfo>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    pub packet_type: &'static str,
    pub connection_id: u64,
    pub packet_number: u64,
    pub key_phase: bool,
    /// Header and payload, in bytes.
    pub len: usize,
    /// Decrypted with the key log.
    pub decrypted: bool,
}

impl DecodedPacket {
    pub fn is_retransmission(&self) -> bool {
        match &self.body {
            Body::Frames(frames) => frames.iter().any(|f| f.retransmission),
            _ => false,
        }
    }
}

/// Counts for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams: u64,
    pub packets: u64,
    pub by_type: BTreeMap<&'static str, u64>,
    pub malformed: u64,
    pub protected: u64,
    pub decrypted: u64,
    /// MESSAGE frames (and handshake packets) seen, and how many were repeats.
    pub tracked_frames: u64,
    pub retransmitted_frames: u64,
    /// Handshakes begun (distinct initiator connection ids in HANDSHAKE_INIT).
    pub handshakes: u64,
}

impl Stats {
    /// Retransmitted share of the tracked frames, 0..=1.
    pub fn retransmission_rate(&self) -> f64 {
        if self.tracked_frames == 0 {
            0.0
        } else {
            self.retransmitted_frames as f64 / self.tracked_frames as f64
        }
    }
}

/// Decodes datagrams one by one.
pub struct Decoder {
    ports: BTreeSet<u16>,
    keylog: KeyLog,
    seen: HashSet<(u64, u8, u64, u32)>,
    seen_handshake: HashSet<u64>,
    /// Initiator connection ids of the handshakes seen (one per session attempt, however
    /// often its INITIAL is re-sent, with or without a cookie).
    initiators: HashSet<u64>,
    /// Fill [`FrameInfo::detail`] (every field; costly, for `-V` only).
    detail: bool,
    pub stats: Stats,
}

impl Decoder {
    /// Datagrams to or from `ports` are sockmsg; any other is if its header says so
    /// (magic and version).
    pub fn new(ports: impl IntoIterator<Item = u16>, keylog: KeyLog) -> Decoder {
        Decoder {
            ports: ports.into_iter().collect(),
            keylog,
            seen: HashSet::new(),
            seen_handshake: HashSet::new(),
            initiators: HashSet::new(),
            detail: false,
            stats: Stats::default(),
        }
    }

    /// Also renders every field of every frame ([`FrameInfo::detail`]).
    pub fn with_detail(mut self) -> Decoder {
        self.detail = true;
        self
    }

    /// Learns the sessions in `keys` (a key log read again during a live capture).
    pub fn add_keys(&mut self, keys: KeyLog) {
        self.keylog.merge(keys);
    }

    /// Whether `udp` is sockmsg traffic.
    pub fn is_sockmsg(&self, udp: &UdpDatagram<'_>) -> bool {
        self.ports.contains(&udp.src.port())
            || self.ports.contains(&udp.dst.port())
            || looks_like_sockmsg(&udp.payload)
    }

    /// The packets in `udp` (empty if it is not sockmsg traffic).
    pub fn decode(&mut self, ts_ns: u64, udp: &UdpDatagram<'_>) -> Vec<DecodedPacket> {
        if !self.is_sockmsg(udp) {
            return Vec::new();
        }
        self.stats.datagrams += 1;
        let mut out = Vec::new();
        for packet in Datagram::new(&udp.payload) {
            let decoded = match packet {
                Ok(packet) => self.decode_packet(ts_ns, udp, &packet),
                Err(e) => {
                    self.stats.malformed += 1;
                    DecodedPacket {
                        ts_ns,
                        src: udp.src,
                        dst: udp.dst,
                        header: None,
                        body: Body::Malformed(e.to_string()),
                    }
                }
            };
            self.stats.packets += 1;
            out.push(decoded);
        }
        out
    }

    fn decode_packet(
        &mut self,
        ts_ns: u64,
        udp: &UdpDatagram<'_>,
        packet: &sockmsg_wire::Packet<'_>,
    ) -> DecodedPacket {
        let header = packet.header();
        let packet_type = packet.packet_type();
        let type_name = packet_type.name().unwrap_or("UNKNOWN");
        *self.stats.by_type.entry(type_name).or_default() += 1;
        let key_phase = header
            .flags()
            .contains(sockmsg_wire::PacketFlags::KEY_PHASE);
        let mut info = HeaderInfo {
            packet_type: type_name,
            connection_id: header.connection_id(),
            packet_number: header.packet_number(),
            key_phase,
            len: HEADER_LEN + packet.payload().len(),
            decrypted: false,
        };
        let body = if packet_type.is_protected() {
            match self.keylog.open(
                info.connection_id,
                key_phase,
                info.packet_number,
                header.as_wire_bytes(),
                packet.payload(),
            ) {
                Some(plaintext) => {
                    info.decrypted = true;
                    self.stats.decrypted += 1;
                    self.frames(
                        info.connection_id,
                        Frames::new(PacketType::DATA, &plaintext, 0),
                    )
                }
                None => {
                    self.stats.protected += 1;
                    Body::Protected
                }
            }
        } else {
            let body = self.frames(info.connection_id, packet.frames());
            // A handshake packet sent again is the same bytes.
            if matches!(
                packet_type,
                PacketType::INITIAL | PacketType::HANDSHAKE | PacketType::RETRY
            ) {
                let bytes = &udp.payload[packet.offset()..packet.offset() + info.len];
                let repeat = !self.remember_handshake(bytes);
                if let Body::Frames(mut frames) = body {
                    for frame in &mut frames {
                        frame.retransmission = repeat;
                    }
                    for frame in packet.frames().flatten() {
                        if let Frame::HandshakeInit(init) = frame {
                            if self.initiators.insert(init.initiator_cid) {
                                self.stats.handshakes += 1;
                            }
                        }
                    }
                    Body::Frames(frames)
                } else {
                    body
                }
            } else {
                body
            }
        };
        if matches!(body, Body::Malformed(_)) {
            self.stats.malformed += 1;
        }
        DecodedPacket {
            ts_ns,
            src: udp.src,
            dst: udp.dst,
            header: Some(info),
            body,
        }
    }

    fn frames<'a>(&mut self, cid: u64, frames: Frames<'a>) -> Body {
        let mut out = Vec::new();
        for frame in frames {
            match frame {
                Ok(frame) => {
                    let mut info = describe(&frame, self.detail);
                    if let Frame::Message(message) = &frame {
                        let key = (
                            cid,
                            class_code(message.class),
                            message.id,
                            message.fragment.offset(),
                        );
                        info.retransmission = !self.remember(key);
                        if message.fragment.is_whole() {
                            info.inner = Frames::new(Carrier::Message, message.fragment.data(), 0)
                                .map(|inner| match inner {
                                    Ok(inner) => describe(&inner, self.detail),
                                    Err(e) => FrameInfo {
                                        name: "MALFORMED",
                                        summary: e.to_string(),
                                        detail: e.to_string(),
                                        retransmission: false,
                                        inner: Vec::new(),
                                    },
                                })
                                .collect();
                        }
                    }
                    out.push(info);
                }
                Err(e) => return Body::Malformed(e.to_string()),
            }
        }
        Body::Frames(out)
    }

    /// Whether `key` is new (and remembers it).
    fn remember(&mut self, key: (u64, u8, u64, u32)) -> bool {
        self.stats.tracked_frames += 1;
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen.clear();
        }
        let new = self.seen.insert(key);
        if !new {
            self.stats.retransmitted_frames += 1;
        }
        new
    }

    fn remember_handshake(&mut self, bytes: &[u8]) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        self.stats.tracked_frames += 1;
        if self.seen_handshake.len() >= MAX_REMEMBERED {
            self.seen_handshake.clear();
        }
        let new = self.seen_handshake.insert(hasher.finish());
        if !new {
            self.stats.retransmitted_frames += 1;
        }
        new
    }
}

/// The header's magic and version, as a heuristic for datagrams on other ports.
fn looks_like_sockmsg(payload: &[u8]) -> bool {
    payload.len() >= HEADER_LEN && payload[0] == b'S' && payload[1] == b'M' && payload[2] == 1
}

/// A VOTE in one line: an answer (granted or refused, pre-vote or real), or a support
/// (SPEC.md §7.13: the voter backs the candidate as leader), or a support query.
fn vote_summary(v: &sockmsg_wire::frame::Vote<'_>) -> String {
    let (term, voter, candidate) = (v.term, v.voter.as_str(), v.candidate.as_str());
    if v.flags.contains(VoteFlags::SUPPORT) {
        return if v.flags.contains(VoteFlags::QUERY) {
            format!("term={term} {voter} asks: backs {candidate}?")
        } else if v.flags.contains(VoteFlags::PRE_VOTE) {
            format!("term={term} {voter} pre-voted for {candidate}")
        } else {
            format!("term={term} {voter} backs {candidate}")
        };
    }
    let verdict = if v.flags.contains(VoteFlags::GRANTED) {
        "granted"
    } else {
        "refused"
    };
    let pre = if v.flags.contains(VoteFlags::PRE_VOTE) {
        " (pre-vote)"
    } else {
        ""
    };
    format!("term={term} {voter}→{candidate} {verdict}{pre}")
}

fn class_name(class: MessageClass) -> &'static str {
    match class {
        MessageClass::Unreliable => "unreliable",
        MessageClass::Reliable => "reliable",
        MessageClass::Ordered => "ordered",
    }
}

fn class_code(class: MessageClass) -> u8 {
    match class {
        MessageClass::Unreliable => 0,
        MessageClass::Reliable => 1,
        MessageClass::Ordered => 2,
    }
}

/// A frame's name and key fields (and, with `detail`, every field).
pub fn describe(frame: &Frame<'_>, detail: bool) -> FrameInfo {
    let name = frame.frame_type().name().unwrap_or("UNKNOWN");
    let summary = match frame {
        Frame::Ack(ack) => {
            let ranges: Vec<String> = ack
                .ranges()
                .map(|r| {
                    if r.start() == r.end() {
                        r.start().to_string()
                    } else {
                        format!("{}-{}", r.start(), r.end())
                    }
                })
                .collect();
            format!("{} delay={}us", ranges.join(","), ack.ack_delay_us)
        }
        Frame::Message(m) => {
            let f = &m.fragment;
            if f.is_whole() {
                format!("{} id={} len={}", class_name(m.class), m.id, f.total_len())
            } else {
                format!(
                    "{} id={} fragment {}+{} of {}",
                    class_name(m.class),
                    m.id,
                    f.offset(),
                    f.data().len(),
                    f.total_len()
                )
            }
        }
        Frame::Close(c) => format!("code={} {:?}", c.code.0, c.reason.as_str()),
        Frame::HandshakeInit(h) => format!(
            "group={} initiator={} cid={:016x}",
            h.group.as_str(),
            h.initiator.as_str(),
            h.initiator_cid
        ),
        Frame::HandshakeResponse(h) => format!("responder={}", h.responder.as_str()),
        Frame::Chat(c) => {
            let direct = if c.flags.contains(ChatFlags::DIRECT) {
                " direct"
            } else {
                ""
            };
            let text = std::str::from_utf8(c.fragment.data()).unwrap_or("<not UTF-8>");
            let shown: String = text.chars().take(60).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            format!(
                "{} seq={}{direct} {:?}{more}",
                c.sender.as_str(),
                c.seq,
                shown
            )
        }
        Frame::Heartbeat(h) => format!(
            "term={} leader={} members={} v{}",
            h.term,
            h.leader.as_str(),
            h.members.len(),
            h.membership_version
        ),
        Frame::PreVoteRequest(v) | Frame::VoteRequest(v) => format!(
            "term={} candidate={} v{}",
            v.term,
            v.candidate.as_str(),
            v.membership_version
        ),
        Frame::Vote(v) => vote_summary(v),
        Frame::Join(m) => format!("{} at {}", m.name.as_str(), m.addr),
        Frame::Membership(m) => {
            format!("term={} v{} members={}", m.term, m.version, m.members.len())
        }
        Frame::MembershipAck(a) => format!("term={} v{}", a.term, a.version),
        Frame::Leave(l) => l.name.as_str().to_owned(),
        Frame::TransferLeadership(t) => format!("term={} target={}", t.term, t.target.as_str()),
        Frame::LeaderQuery(q) => q.group.as_str().to_owned(),
        Frame::LeaderInfo(r) | Frame::LeaderClaim(r) => format!(
            "group={} term={} leader={}",
            r.group.as_str(),
            r.term,
            r.leader.as_str()
        ),
        Frame::LeaderAnnounce(a) => format!(
            "group={} term={} leader={} votes={}",
            a.record.group.as_str(),
            a.record.term,
            a.record.leader.as_str(),
            a.votes.len()
        ),
        Frame::KeyLookup(k) => k.name.as_str().to_owned(),
        Frame::KeyRecord(k) => format!("{} serial={}", k.name.as_str(), k.serial),
        _ => String::new(),
    };
    FrameInfo {
        name,
        summary,
        detail: if detail {
            format!("{frame:?}")
        } else {
            String::new()
        },
        retransmission: false,
        inner: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::vote_summary;
    use sockmsg_wire::frame::{Vote, VoteFlags};
    use sockmsg_wire::{Name, Signature};

    fn vote(flags: VoteFlags) -> Vote<'static> {
        Vote {
            group: Name::new("lobby").unwrap(),
            term: 5,
            voter: Name::new("carol").unwrap(),
            candidate: Name::new("alice").unwrap(),
            flags,
            signature: Signature::new(&[]).unwrap(),
        }
    }

    #[test]
    fn votes_supports_and_queries_read_differently() {
        let granted = VoteFlags::GRANTED;
        let support = VoteFlags::SUPPORT.with(granted);
        assert_eq!(vote_summary(&vote(granted)), "term=5 carol→alice granted");
        assert_eq!(
            vote_summary(&vote(VoteFlags::PRE_VOTE)),
            "term=5 carol→alice refused (pre-vote)"
        );
        assert_eq!(vote_summary(&vote(support)), "term=5 carol backs alice");
        assert_eq!(
            vote_summary(&vote(support.with(VoteFlags::QUERY))),
            "term=5 carol asks: backs alice?"
        );
    }
}
