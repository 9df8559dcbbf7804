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
//!
//! A registration or rotation goes through, in order (cheapest first):
//!
//! 1. the nonce: issued by us to this address, not expired (else `BAD_NONCE`);
//! 2. what the nonce was used for ([`crate::admission`]): the same request again gets
//!    the answer it got (`UNAVAILABLE` while it is still being committed), another
//!    request `BAD_NONCE`;
//! 3. a token from the source's bucket if the request would bind a free name or rotate
//!    a key (else `UNAVAILABLE`, "retry in N s");
//! 4. the proof of possession (`BAD_SIGNATURE`, `BAD_KEY`);
//! 5. the nonce is consumed (`UNAVAILABLE` if too many are in use);
//! 6. the rules: name, invite, names per key (`NAME_TAKEN`, `INVITE_REQUIRED`,
//!    `BAD_KEY`, `REVOKED`); a refusal here is remembered as the nonce's answer, an
//!    admissible request goes to the committer, whose result is ([`Action::Commit`]).

use std::net::SocketAddr;

use sha2::{Digest as _, Sha256};
use sockmsg_wire::frame::{Frame, FrameType, KeyChallenge, KeyResult, KeyResultCode};
use sockmsg_wire::{encode_cleartext_packet, Datagram, Encode, PacketType, Text, HEADER_LEN};

use crate::admission::{Denied, RequestDigest, Seen};
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
    /// [`refusal_response`] for `request_id` once its batch is durable, and record the
    /// result as `nonce`'s answer (`Admission::answer`), or, if the operation cannot be
    /// committed at all, give the nonce back (`Admission::release`).
    Commit {
        operation: Operation,
        request_id: u64,
        nonce: [u8; 32],
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
        Frame::KeyRegister(register) => {
            let changes =
                registry.register_changes(register.name.as_str(), register.public_key.as_bytes());
            admit(
                registry,
                client,
                &frame,
                register.nonce,
                changes,
                request_id,
                now_ms,
                || registry.prove_register(&register),
                |()| registry.rules_register(&register),
            )
        }
        Frame::KeyRotate(rotate) => admit(
            registry,
            client,
            &frame,
            rotate.nonce,
            true,
            request_id,
            now_ms,
            || registry.prove_rotate(&rotate),
            |operation| {
                registry.rules_rotate(&operation)?;
                Ok(operation)
            },
        ),
        other => refuse(Refusal {
            code: KeyResultCode::BAD_REQUEST,
            reason: format!(
                "{} is not a key manager request",
                other.frame_type().name().unwrap_or("this frame")
            ),
        }),
    }
}

/// Steps 1-6 of a registration or rotation (see the module documentation). `prove`
/// checks the proof of possession, `rules` the rest (given what `prove` returned);
/// `changes` says whether the request would write a record (and so costs a token).
#[allow(clippy::too_many_arguments)]
fn admit<T>(
    registry: &Registry,
    client: SocketAddr,
    frame: &Frame<'_>,
    nonce: &[u8; 32],
    changes: bool,
    request_id: u64,
    now_ms: u64,
    prove: impl FnOnce() -> Result<T, Refusal>,
    rules: impl FnOnce(T) -> Result<Operation, Refusal>,
) -> Action {
    let reply = |answer: Result<(), Refusal>| {
        Action::Reply(match answer {
            Ok(()) => ok_response(request_id),
            Err(refusal) => refusal_response(request_id, &refusal),
        })
    };
    if let Err(refusal) = registry.check_nonce(client, nonce, now_ms) {
        return reply(Err(refusal));
    }
    let admission = registry.admission();
    let digest = request_digest(frame);
    let seen = |seen: Seen| match seen {
        Seen::Answered(answer) => Some(reply(answer)),
        Seen::InProgress => Some(reply(Err(Refusal {
            code: KeyResultCode::UNAVAILABLE,
            reason: "this request is being committed: retry shortly".into(),
        }))),
        Seen::Conflict => Some(reply(Err(Refusal {
            code: KeyResultCode::BAD_NONCE,
            reason: "this nonce was used by another request: ask for a new challenge".into(),
        }))),
        Seen::Fresh => None,
    };
    if let Some(action) = seen(admission.seen(nonce, &digest)) {
        return action;
    }
    if changes {
        if let Err(Denied::RateLimited { retry_after_ms }) =
            admission.take_token(client.ip(), now_ms)
        {
            return reply(Err(Refusal {
                code: KeyResultCode::UNAVAILABLE,
                reason: format!(
                    "too many registrations from {}: retry in {} s",
                    crate::admission::source_key(client.ip()),
                    retry_after_ms.div_ceil(1000)
                ),
            }));
        }
    }
    let proven = match prove() {
        Ok(proven) => proven,
        Err(refusal) => return reply(Err(refusal)),
    };
    match admission.consume(nonce, &digest, Registry::nonce_expiry(nonce), now_ms) {
        Ok(Seen::Fresh) => {}
        Ok(other) => {
            // Taken meanwhile (a copy of this request, or another one).
            if let Some(action) = seen(other) {
                return action;
            }
        }
        Err(_) => {
            return reply(Err(Refusal {
                code: KeyResultCode::UNAVAILABLE,
                reason: "too many registrations in progress: retry shortly".into(),
            }))
        }
    }
    match rules(proven) {
        Ok(operation) => Action::Commit {
            operation,
            request_id,
            nonce: *nonce,
        },
        Err(refusal) => {
            admission.answer(nonce, Err(refusal.clone()));
            reply(Err(refusal))
        }
    }
}

/// SHA-256 of a request frame as encoded: two requests are the same if their frames
/// are byte for byte the same (padding and request id aside).
fn request_digest(frame: &Frame<'_>) -> RequestDigest {
    let mut bytes = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut bytes);
    Sha256::digest(&bytes).into()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Limits;
    use crate::registry::{register_signing_input, rotate_signing_input, RegistrationMode};
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use sockmsg_wire::frame::{KeyRegister, KeyRotate};
    use sockmsg_wire::session::crypto::{RsaSigner, Signer as _};
    use sockmsg_wire::{Name, PublicKey, Signature, Token};

    const ALICE_PEM: &str = include_str!("../../testdata/keys/alice.pem");
    const BOB_PEM: &str = include_str!("../../testdata/keys/bob.pem");
    const CAROL_PEM: &str = include_str!("../../testdata/keys/carol.pem");
    const NOW: u64 = 1_700_000_000_000;

    fn signer(pem: &str) -> RsaSigner {
        RsaSigner::from_pkcs8_pem("k", pem).expect("test key")
    }

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40_000)
    }

    fn registry(limits: Limits) -> Registry {
        let mut registry = Registry::new([], [], RegistrationMode::Open, [1; 32], [2; 32]);
        registry.set_limits(limits);
        registry
    }

    fn packet(id: u64, frame: Frame<'_>) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_cleartext_packet(&mut bytes, PacketType::REQUEST, id, 0, &[frame]).unwrap();
        bytes
    }

    fn challenge(registry: &Registry, client: SocketAddr) -> [u8; 32] {
        let Action::Reply(reply) = handle_request(
            registry,
            client,
            Transport::Tcp,
            &packet(1, Frame::KeyChallengeRequest),
            NOW,
        ) else {
            panic!("a challenge");
        };
        let packet = Datagram::new(&reply).next().unwrap().unwrap();
        match packet.frames().next().unwrap().unwrap() {
            Frame::KeyChallenge(challenge) => *challenge.nonce,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// A KEY_REGISTER of `name` for `key`, signed by `by`, with request id `id`.
    fn register(id: u64, name: &str, key: &RsaSigner, by: &RsaSigner, nonce: &[u8; 32]) -> Vec<u8> {
        let mut request = KeyRegister {
            name: Name::new(name).unwrap(),
            public_key: PublicKey::new(key.public_key_der()).unwrap(),
            nonce,
            invite: Token::default(),
            signature: Signature::default(),
        };
        let mut rng = ChaCha20Rng::from_seed([id as u8; 32]);
        let signature = by.sign(&mut rng, &register_signing_input(&request));
        request.signature = Signature::new(&signature).unwrap();
        packet(id, Frame::KeyRegister(request))
    }

    fn rotate(id: u64, name: &str, old: &RsaSigner, new: &RsaSigner, nonce: &[u8; 32]) -> Vec<u8> {
        let mut request = KeyRotate {
            name: Name::new(name).unwrap(),
            new_public_key: PublicKey::new(new.public_key_der()).unwrap(),
            nonce,
            old_signature: Signature::default(),
            new_signature: Signature::default(),
        };
        let input = rotate_signing_input(&request);
        let mut rng = ChaCha20Rng::from_seed([id as u8; 32]);
        let (a, b) = (old.sign(&mut rng, &input), new.sign(&mut rng, &input));
        request.old_signature = Signature::new(&a).unwrap();
        request.new_signature = Signature::new(&b).unwrap();
        packet(id, Frame::KeyRotate(request))
    }

    /// Handles `request` as the server does, committing at once; returns the
    /// KEY_RESULT's code and reason, and the response's request id.
    fn call(
        registry: &mut Registry,
        client: SocketAddr,
        request: &[u8],
    ) -> (KeyResultCode, String, u64) {
        let reply = match handle_request(registry, client, Transport::Tcp, request, NOW) {
            Action::Reply(reply) => reply,
            Action::Commit {
                operation,
                request_id,
                nonce,
            } => {
                let manager = signer(CAROL_PEM);
                let mut rng = ChaCha20Rng::from_seed([3; 32]);
                let batch = registry.plan_batch(&[operation], NOW, &manager, &mut rng);
                let result = registry.apply(batch).remove(0);
                registry.admission().answer(&nonce, result.clone());
                match result {
                    Ok(()) => ok_response(request_id),
                    Err(refusal) => refusal_response(request_id, &refusal),
                }
            }
            Action::Drop { reason } => panic!("dropped: {reason}"),
        };
        let packet = Datagram::new(&reply).next().unwrap().unwrap();
        let id = packet.header().connection_id();
        match packet.frames().next().unwrap().unwrap() {
            Frame::KeyResult(result) => (result.code, result.reason.as_str().to_owned(), id),
            other => panic!("expected KEY_RESULT, got {other:?}"),
        }
    }

    #[test]
    fn two_challenges_in_one_millisecond_are_different_nonces() {
        let registry = registry(Limits::default());
        let client = at("127.0.0.1");
        let (a, b) = (challenge(&registry, client), challenge(&registry, client));
        assert_ne!(a, b);
        assert!(registry.check_nonce(client, &a, NOW).is_ok());
        assert!(registry.check_nonce(client, &b, NOW).is_ok());
        assert!(registry.check_nonce(at("127.0.0.2"), &a, NOW).is_err());
    }

    #[test]
    fn a_nonce_is_single_use_and_a_retransmission_gets_the_same_answer() {
        let mut registry = registry(Limits::default());
        let client = at("127.0.0.1");
        let (alice, bob) = (signer(ALICE_PEM), signer(BOB_PEM));
        let nonce = challenge(&registry, client);

        // A forgery with the nonce (bob's key "proved" by alice) does not consume it.
        let forged = register(2, "bob", &bob, &alice, &nonce);
        assert_eq!(
            call(&mut registry, client, &forged).0,
            KeyResultCode::BAD_SIGNATURE
        );

        let first = register(3, "alice", &alice, &alice, &nonce);
        assert_eq!(call(&mut registry, client, &first).0, KeyResultCode::OK);
        assert_eq!(registry.record("alice").unwrap().serial, 1);
        // The same request again (a retransmission, even with another request id): the
        // same answer, and nothing is committed again.
        let mut again = first.clone();
        again[8..16].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            call(&mut registry, client, &again),
            (KeyResultCode::OK, String::new(), 9)
        );
        assert_eq!(registry.record("alice").unwrap().serial, 1);
        // Any other request with the used nonce is refused, even a valid one.
        let other = register(4, "bob", &bob, &bob, &nonce);
        let (code, reason, _) = call(&mut registry, client, &other);
        assert_eq!(code, KeyResultCode::BAD_NONCE, "{reason}");
        assert!(reason.contains("used"), "{reason}");
        assert!(registry.record("bob").is_none());
        // A fresh challenge lets it through.
        let nonce = challenge(&registry, client);
        let other = register(5, "bob", &bob, &bob, &nonce);
        assert_eq!(call(&mut registry, client, &other).0, KeyResultCode::OK);
    }

    #[test]
    fn a_refusal_after_the_proof_consumes_the_nonce_and_is_repeated() {
        let mut registry = registry(Limits::default());
        let client = at("127.0.0.1");
        let (alice, bob) = (signer(ALICE_PEM), signer(BOB_PEM));
        let nonce = challenge(&registry, client);
        assert_eq!(
            call(
                &mut registry,
                client,
                &register(1, "x", &alice, &alice, &nonce)
            )
            .0,
            KeyResultCode::OK
        );
        let nonce = challenge(&registry, client);
        let squat = register(2, "x", &bob, &bob, &nonce);
        let first = call(&mut registry, client, &squat);
        assert_eq!(first.0, KeyResultCode::NAME_TAKEN);
        assert_eq!(call(&mut registry, client, &squat), first);
        let other = register(3, "y", &bob, &bob, &nonce);
        assert_eq!(
            call(&mut registry, client, &other).0,
            KeyResultCode::BAD_NONCE
        );
        assert_eq!(registry.admission().used_nonces(), 2);
    }

    #[test]
    fn a_source_gets_a_burst_of_new_names_and_confirmations_are_free() {
        let mut registry = registry(Limits {
            register_burst: 2,
            register_per_minute: 1,
            max_names_per_key: 100,
            ..Limits::default()
        });
        let client = at("192.0.2.1");
        let alice = signer(ALICE_PEM);
        for (id, name) in [(1, "a"), (2, "b")] {
            let nonce = challenge(&registry, client);
            let request = register(id, name, &alice, &alice, &nonce);
            assert_eq!(call(&mut registry, client, &request).0, KeyResultCode::OK);
        }
        let nonce = challenge(&registry, client);
        let third = register(3, "c", &alice, &alice, &nonce);
        let (code, reason, _) = call(&mut registry, client, &third);
        assert_eq!(code, KeyResultCode::UNAVAILABLE);
        assert!(
            reason.contains("too many registrations from 192.0.2.1"),
            "{reason}"
        );
        assert!(reason.contains("retry in 60 s"), "{reason}");
        assert!(registry.record("c").is_none());
        // Refused before the proof: the nonce is still good for this request later.
        assert_eq!(registry.admission().used_nonces(), 2);
        // Re-registering a bound name to its key costs nothing.
        let nonce = challenge(&registry, client);
        let confirm = register(4, "a", &alice, &alice, &nonce);
        assert_eq!(call(&mut registry, client, &confirm).0, KeyResultCode::OK);
        // A rotation costs a token like a new name.
        let nonce = challenge(&registry, client);
        let moved = rotate(5, "a", &alice, &signer(BOB_PEM), &nonce);
        assert_eq!(
            call(&mut registry, client, &moved).0,
            KeyResultCode::UNAVAILABLE
        );
        // Another source has its own bucket.
        let elsewhere = at("192.0.2.2");
        let nonce = challenge(&registry, elsewhere);
        let request = register(6, "c", &alice, &alice, &nonce);
        assert_eq!(
            call(&mut registry, elsewhere, &request).0,
            KeyResultCode::OK
        );
    }

    #[test]
    fn one_key_binds_at_most_max_names_per_key() {
        let mut registry = registry(Limits {
            max_names_per_key: 2,
            ..Limits::default()
        });
        let client = at("127.0.0.1");
        let (alice, bob) = (signer(ALICE_PEM), signer(BOB_PEM));
        for (id, name, key) in [(1, "a1", &alice), (2, "a2", &alice), (3, "b1", &bob)] {
            let nonce = challenge(&registry, client);
            let request = register(id, name, key, key, &nonce);
            assert_eq!(call(&mut registry, client, &request).0, KeyResultCode::OK);
        }
        assert_eq!(registry.names_of_key(alice.public_key_der()), 2);
        let nonce = challenge(&registry, client);
        let third = register(4, "a3", &alice, &alice, &nonce);
        let (code, reason, _) = call(&mut registry, client, &third);
        assert_eq!(code, KeyResultCode::BAD_KEY);
        assert!(reason.contains("max_names_per_key"), "{reason}");
        // Confirming a name it holds is still fine.
        let nonce = challenge(&registry, client);
        let confirm = register(5, "a1", &alice, &alice, &nonce);
        assert_eq!(call(&mut registry, client, &confirm).0, KeyResultCode::OK);
        // Rotating bob's name to alice's key would give alice's key a third name.
        let nonce = challenge(&registry, client);
        let moved = rotate(6, "b1", &bob, &alice, &nonce);
        assert_eq!(
            call(&mut registry, client, &moved).0,
            KeyResultCode::BAD_KEY
        );
        // Rotating one of alice's names to bob frees a slot for alice.
        let nonce = challenge(&registry, client);
        let moved = rotate(7, "a2", &alice, &bob, &nonce);
        assert_eq!(call(&mut registry, client, &moved).0, KeyResultCode::OK);
        assert_eq!(registry.names_of_key(alice.public_key_der()), 1);
        assert_eq!(registry.names_of_key(bob.public_key_der()), 2);
        let nonce = challenge(&registry, client);
        let request = register(8, "a3", &alice, &alice, &nonce);
        assert_eq!(call(&mut registry, client, &request).0, KeyResultCode::OK);
    }

    #[test]
    fn a_batch_does_not_exceed_max_names_per_key_either() {
        let registry = registry(Limits {
            max_names_per_key: 2,
            ..Limits::default()
        });
        let alice = signer(ALICE_PEM);
        let ops: Vec<Operation> = ["a", "b", "c"]
            .iter()
            .map(|name| Operation::Register {
                name: (*name).into(),
                public_key: alice.public_key_der().to_vec(),
                invite: None,
            })
            .collect();
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let batch = registry.plan_batch(&ops, NOW, &signer(CAROL_PEM), &mut rng);
        assert!(batch.results[0].is_ok() && batch.results[1].is_ok());
        assert_eq!(
            batch.results[2].as_ref().unwrap_err().code,
            KeyResultCode::BAD_KEY
        );
    }
}
