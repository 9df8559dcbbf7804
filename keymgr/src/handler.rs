//! From request bytes to an action: reply now, or commit and then reply. Sans-IO.
//!
//! A request is one REQUEST packet holding one request frame (and any PADDING). The
//! answer is one RESPONSE packet echoing the request's connection id. Lookups and
//! challenges are answered at once from memory; registrations and rotations are checked
//! here (nonce, signatures, the name's state) and handed to the committer, which replies
//! after the batch is on disk.
//!
//! Over UDP no answer exceeds three times the request's size (SPEC.md §4): a short
//! lookup for a large record gets KEY_RESULT `BAD_REQUEST` telling the client to pad
//! its request or use TCP, so a spoofed source cannot use us as an amplifier.

use std::net::SocketAddr;

use sockmsg_wire::frame::{Frame, FrameType, KeyChallenge, KeyResult, KeyResultCode};
use sockmsg_wire::{encode_cleartext_packet, Datagram, Encode, PacketType, Text, HEADER_LEN};

use crate::registry::{Operation, Refusal, Registry};

/// How a request arrived (shared with the other services): UDP answers are bounded by
/// the request's size.
pub use sockmsg_service::Transport;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this RESPONSE datagram (or TCP frame) now.
    Reply(Vec<u8>),
    /// Queue `operation` for the next commit; reply with [`ok_response`] or
    /// [`refusal_response`] for `request_id` once its batch is durable.
    Commit {
        operation: Operation,
        request_id: u64,
    },
    /// Not a request we can answer (not sockmsg, malformed, not a REQUEST): drop it and
    /// count it by `reason`. Nothing is sent, so garbage cannot elicit traffic.
    Drop { reason: &'static str },
}

/// Decides what to do with `request` from `client`.
pub fn handle_request(
    registry: &Registry,
    client: SocketAddr,
    transport: Transport,
    request: &[u8],
    now_ms: u64,
) -> Action {
    let Some(Ok(packet)) = Datagram::new(request).next() else {
        return Action::Drop {
            reason: "malformed",
        };
    };
    if packet.packet_type() != PacketType::REQUEST {
        return Action::Drop {
            reason: "not a request",
        };
    }
    let request_id = packet.header().connection_id();
    let mut frames = packet
        .frames()
        .filter(|frame| !matches!(frame, Ok(Frame::Padding(_))));
    let frame = match (frames.next(), frames.next()) {
        (Some(Ok(frame)), None) => frame,
        _ => {
            return Action::Reply(refusal_response(
                request_id,
                &Refusal {
                    code: KeyResultCode::BAD_REQUEST,
                    reason: "a request holds exactly one well-formed request frame".into(),
                },
            ))
        }
    };
    let limit = match transport {
        Transport::Udp => request.len().saturating_mul(3),
        Transport::Tcp => usize::MAX,
    };
    let refuse = |refusal: Refusal| Action::Reply(refusal_response(request_id, &refusal));
    match frame {
        Frame::KeyLookup(lookup) => {
            let reply = match registry.record(lookup.name.as_str()) {
                Some(record) => {
                    sockmsg_service::body_response(request_id, FrameType::KEY_RECORD, &record.bytes)
                }
                None => refusal_response(
                    request_id,
                    &Refusal {
                        code: KeyResultCode::NOT_FOUND,
                        reason: "no record for this name".into(),
                    },
                ),
            };
            if reply.len() > limit {
                // Short on purpose: even this refusal must fit within 3x the smallest
                // possible lookup (SPEC.md §4).
                return refuse(Refusal {
                    code: KeyResultCode::BAD_REQUEST,
                    reason: "pad or use TCP".into(),
                });
            }
            Action::Reply(reply)
        }
        Frame::KeyChallengeRequest => {
            let nonce = registry.nonce(client, now_ms);
            Action::Reply(response(
                request_id,
                Frame::KeyChallenge(KeyChallenge { nonce: &nonce }),
            ))
        }
        Frame::KeyRegister(register) => match registry.check_register(client, &register, now_ms) {
            Ok(operation) => Action::Commit {
                operation,
                request_id,
            },
            Err(refusal) => refuse(refusal),
        },
        Frame::KeyRotate(rotate) => match registry.check_rotate(client, &rotate, now_ms) {
            Ok(operation) => Action::Commit {
                operation,
                request_id,
            },
            Err(refusal) => refuse(refusal),
        },
        other => refuse(Refusal {
            code: KeyResultCode::BAD_REQUEST,
            reason: format!(
                "{} is not a key manager request",
                other.frame_type().name().unwrap_or("this frame")
            ),
        }),
    }
}

/// A RESPONSE packet holding `frame`, echoing `request_id`.
fn response(request_id: u64, frame: Frame<'_>) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_LEN + frame.encoded_len());
    // Response frames are allowed in RESPONSE packets and small: this cannot fail.
    let _ = encode_cleartext_packet(&mut packet, PacketType::RESPONSE, request_id, 0, &[frame]);
    packet
}

/// KEY_RESULT `OK` for a committed request.
pub fn ok_response(request_id: u64) -> Vec<u8> {
    response(
        request_id,
        Frame::KeyResult(KeyResult {
            code: KeyResultCode::OK,
            reason: Text::default(),
        }),
    )
}

/// KEY_RESULT with a refusal's code and reason (cut to fit the field).
pub fn refusal_response(request_id: u64, refusal: &Refusal) -> Vec<u8> {
    response(
        request_id,
        Frame::KeyResult(KeyResult {
            code: refusal.code,
            reason: Text::truncated(&refusal.reason),
        }),
    )
}
