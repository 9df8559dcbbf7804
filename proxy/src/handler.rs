//! From request bytes to a parsed request, and from verdicts to response bytes. Sans-IO.
//!
//! A request is one REQUEST packet holding one proxy request frame (and any PADDING);
//! the answer is one RESPONSE packet echoing the request's connection id. Garbage (not
//! sockmsg, malformed, not a REQUEST) is dropped without an answer, so it cannot elicit
//! traffic; a well-formed REQUEST that is not a proxy request gets PROXY_RESULT
//! `BAD_REQUEST`.
//!
//! Over UDP no answer exceeds three times the request (SPEC.md §4): a short query whose
//! LEADER_INFO is larger gets PROXY_RESULT `BAD_REQUEST` "pad or use TCP" instead (a
//! LEADER_INFO with a 3072-bit signature is over 400 bytes; nodes pad their queries).

use sockmsg_wire::frame::{
    Frame, FrameType, LeaderAnnounce, LeaderRecord, NoLeader, ProxyResult, ProxyStatus,
};
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, Encode, List, Name, PacketType, Text, HEADER_LEN,
};

use crate::directory::{Accepted, Directory, Kind, Now, Proposal, Refusal};

/// How a request arrived (shared with the other services): UDP answers are bounded by
/// the request's size.
pub use sockmsg_service::Transport;

/// What an answer says, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// LEADER_INFO.
    Leader,
    /// NO_LEADER.
    NoLeader,
    /// PROXY_RESULT `ACCEPTED`.
    Accepted(Accepted),
    /// PROXY_RESULT with another status.
    Refused(ProxyStatus),
}

/// What to do with a request (or the final step of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this RESPONSE packet.
    Reply { packet: Vec<u8>, outcome: Outcome },
    /// Not a request we can answer: drop it and count it by `reason`. Nothing is sent.
    Drop { reason: &'static str },
}

/// A decoded request, borrowing from its bytes.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    Query(Name<'a>),
    Propose(Proposal<'a>),
}

/// A well-formed proxy request.
#[derive(Debug, Clone, Copy)]
pub struct Parsed<'a> {
    /// The connection id to echo.
    pub request_id: u64,
    pub request: Request<'a>,
    /// Most bytes an answer may have: 3× the request over UDP (SPEC.md §4).
    pub reply_limit: usize,
}

/// Decodes `request`; `Err` holds what to do instead (drop it, or refuse it).
pub fn parse(request: &[u8], transport: Transport) -> Result<Parsed<'_>, Action> {
    let Some(Ok(packet)) = Datagram::new(request).next() else {
        return Err(Action::Drop {
            reason: "malformed",
        });
    };
    if packet.packet_type() != PacketType::REQUEST {
        return Err(Action::Drop {
            reason: "not a request",
        });
    }
    let request_id = packet.header().connection_id();
    let reply_limit = match transport {
        Transport::Udp => request.len().saturating_mul(3),
        Transport::Tcp => usize::MAX,
    };
    let mut frames = packet
        .frames()
        .filter(|frame| !matches!(frame, Ok(Frame::Padding(_))));
    let frame = match (frames.next(), frames.next()) {
        (Some(Ok(frame)), None) => frame,
        // A malformed frame in a cleartext packet: drop, as SPEC.md §10 says.
        (Some(Err(_)), _) | (_, Some(Err(_))) => {
            return Err(Action::Drop {
                reason: "malformed frame",
            })
        }
        _ => {
            return Err(refusal_action(
                request_id,
                ProxyStatus::BAD_REQUEST,
                "one request frame per packet",
                reply_limit,
            ))
        }
    };
    let request = match frame {
        Frame::LeaderQuery(query) => Request::Query(query.group),
        Frame::LeaderClaim(record) => Request::Propose(Proposal {
            kind: Kind::Claim,
            record,
            votes: None,
        }),
        Frame::LeaderAnnounce(LeaderAnnounce { record, votes }) => Request::Propose(Proposal {
            kind: Kind::Announce,
            record,
            votes: Some(votes),
        }),
        _ => {
            return Err(refusal_action(
                request_id,
                ProxyStatus::BAD_REQUEST,
                "not a proxy request",
                reply_limit,
            ))
        }
    };
    Ok(Parsed {
        request_id,
        request,
        reply_limit,
    })
}

/// Answers a query from the directory: LEADER_INFO, NO_LEADER, or (a short UDP query
/// for a large record) "pad or use TCP".
pub fn answer_query(
    directory: &mut Directory,
    request_id: u64,
    group: Name<'_>,
    reply_limit: usize,
    now: Now,
) -> Action {
    let (packet, outcome) = match directory.query(group.as_str(), now) {
        Some(record) => (
            sockmsg_service::body_response(request_id, FrameType::LEADER_INFO, record),
            Outcome::Leader,
        ),
        None => (
            response(request_id, Frame::NoLeader(NoLeader { group })),
            Outcome::NoLeader,
        ),
    };
    fit(packet, outcome, request_id, reply_limit)
}

/// The answer to a claim or an announcement.
pub fn verdict_action(
    request_id: u64,
    verdict: &Result<Accepted, Refusal>,
    reply_limit: usize,
) -> Action {
    match verdict {
        Ok(accepted) => fit(
            result_response(request_id, ProxyStatus::ACCEPTED, ""),
            Outcome::Accepted(*accepted),
            request_id,
            reply_limit,
        ),
        Err(refusal) => fit(
            result_response_with(
                request_id,
                refusal.status,
                &refusal.reason,
                refusal.held.as_deref(),
            ),
            Outcome::Refused(refusal.status),
            request_id,
            reply_limit,
        ),
    }
}

/// PROXY_RESULT with `status` and `reason`, within `reply_limit`.
pub fn refusal_action(
    request_id: u64,
    status: ProxyStatus,
    reason: &str,
    reply_limit: usize,
) -> Action {
    fit(
        result_response(request_id, status, reason),
        Outcome::Refused(status),
        request_id,
        reply_limit,
    )
}

/// Keeps an answer within `reply_limit`: a larger one becomes PROXY_RESULT
/// `BAD_REQUEST` "pad or use TCP" (which fits the smallest possible request: 41 bytes
/// against 3 × 27), or, failing that, nothing.
fn fit(packet: Vec<u8>, outcome: Outcome, request_id: u64, reply_limit: usize) -> Action {
    if packet.len() <= reply_limit {
        return Action::Reply { packet, outcome };
    }
    let short = result_response(request_id, ProxyStatus::BAD_REQUEST, PAD_OR_TCP);
    if short.len() <= reply_limit {
        Action::Reply {
            packet: short,
            outcome: Outcome::Refused(ProxyStatus::BAD_REQUEST),
        }
    } else {
        Action::Drop {
            reason: "answer too large for the request",
        }
    }
}

/// The reason sent instead of an answer over three times the request.
pub const PAD_OR_TCP: &str = "pad or use TCP";

/// A RESPONSE packet holding `frame`, echoing `request_id`.
fn response(request_id: u64, frame: Frame<'_>) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_LEN + frame.encoded_len());
    // Response frames are allowed in RESPONSE packets and small: this cannot fail.
    let _ = encode_cleartext_packet(&mut packet, PacketType::RESPONSE, request_id, 0, &[frame]);
    packet
}

/// PROXY_RESULT, the reason cut to fit the field, no record held.
fn result_response(request_id: u64, status: ProxyStatus, reason: &str) -> Vec<u8> {
    result_response_with(request_id, status, reason, None)
}

/// PROXY_RESULT carrying `held`, the encoded record the proxy holds (a LEADER_INFO
/// body), if any.
fn result_response_with(
    request_id: u64,
    status: ProxyStatus,
    reason: &str,
    held: Option<&[u8]>,
) -> Vec<u8> {
    with_record_body(held, |record| {
        let records: &[LeaderRecord<'_>] = match &record {
            Some(record) => std::slice::from_ref(record),
            None => &[],
        };
        response(
            request_id,
            Frame::ProxyResult(ProxyResult {
                status,
                reason: Text::truncated(reason),
                held: List::new(records).unwrap_or_else(|_| List::empty()),
            }),
        )
    })
}

/// Calls `f` with the record a directory stored (a LEADER_INFO body), decoded; `None`
/// for no body, or one that does not decode (the directory encoded it from a record it
/// had decoded, so it does).
fn with_record_body<R>(body: Option<&[u8]>, f: impl FnOnce(Option<LeaderRecord<'_>>) -> R) -> R {
    let frame: Option<Vec<u8>> = body.map(|body| {
        let mut frame = vec![FrameType::LEADER_INFO.0];
        frame.extend_from_slice(body);
        frame
    });
    let record = match frame.as_deref().map(|frame| Frame::decode(frame, 0)) {
        Some(Ok((Frame::LeaderInfo(record), _))) => Some(record),
        _ => None,
    };
    f(record)
}

/// Decodes a proxy answer (for clients and tests): the request id echoed and the frame.
pub fn decode_response(packet: &[u8]) -> Option<(u64, Frame<'_>)> {
    let packet = Datagram::new(packet).next()?.ok()?;
    if packet.packet_type() != PacketType::RESPONSE {
        return None;
    }
    let id = packet.header().connection_id();
    let frame = packet
        .frames()
        .find(|frame| !matches!(frame, Ok(Frame::Padding(_))))?
        .ok()?;
    Some((id, frame))
}

/// A record's owned fields, as a client reads them from LEADER_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary {
    pub group: String,
    pub term: u64,
    pub leader: String,
    pub leader_addr: std::net::SocketAddr,
    pub membership_version: u64,
    pub members: Vec<String>,
    pub issued_at_ms: u64,
}

impl RecordSummary {
    /// A record as a directory stores it and a refusal carries it (a LEADER_INFO body,
    /// [`crate::Refusal::held`]), read back; `None` if it does not decode.
    pub fn from_body(body: &[u8]) -> Option<RecordSummary> {
        with_record_body(Some(body), |record| {
            record.as_ref().map(RecordSummary::from)
        })
    }
}

impl From<&LeaderRecord<'_>> for RecordSummary {
    fn from(record: &LeaderRecord<'_>) -> Self {
        RecordSummary {
            group: record.group.as_str().to_owned(),
            term: record.term,
            leader: record.leader.as_str().to_owned(),
            leader_addr: record.leader_addr,
            membership_version: record.membership_version,
            members: record
                .members
                .iter()
                .map(|name| name.as_str().to_owned())
                .collect(),
            issued_at_ms: record.issued_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmsg_wire::frame::LeaderQuery;

    fn query(id: u64, group: &str) -> Vec<u8> {
        let mut packet = Vec::new();
        let group = Name::new(group).expect("name");
        encode_cleartext_packet(
            &mut packet,
            PacketType::REQUEST,
            id,
            0,
            &[Frame::LeaderQuery(LeaderQuery { group })],
        )
        .expect("encode");
        packet
    }

    #[test]
    fn garbage_is_dropped_silently() {
        for bytes in [&b""[..], b"hello", &[0u8; 64]] {
            assert!(matches!(
                parse(bytes, Transport::Udp),
                Err(Action::Drop { .. })
            ));
        }
    }

    #[test]
    fn smallest_query_refusal_fits_three_times_the_request() {
        let request = query(9, "a");
        assert_eq!(request.len(), 27);
        let refusal = result_response(9, ProxyStatus::BAD_REQUEST, PAD_OR_TCP);
        assert!(refusal.len() <= 3 * request.len());
    }

    #[test]
    fn a_query_for_an_unknown_group_gets_no_leader() {
        let request = query(5, "lobby");
        let parsed = parse(&request, Transport::Udp).expect("parses");
        let Request::Query(group) = parsed.request else {
            panic!("a query")
        };
        let mut directory = Directory::default();
        let now = Now {
            wall_ms: 0,
            mono_ms: 0,
        };
        let Action::Reply { packet, outcome } = answer_query(
            &mut directory,
            parsed.request_id,
            group,
            parsed.reply_limit,
            now,
        ) else {
            panic!("an answer")
        };
        assert_eq!(outcome, Outcome::NoLeader);
        let (id, frame) = decode_response(&packet).expect("decodes");
        assert_eq!(id, 5);
        assert!(matches!(frame, Frame::NoLeader(n) if n.group.as_str() == "lobby"));
    }
}
