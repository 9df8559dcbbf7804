//! Fuzzes the packet decoder: any bytes, as a received datagram.
//!
//! Beyond "never panics", it checks that decoding is canonical: every frame that
//! decodes re-encodes to bytes that decode to the same frame. DATA payloads are
//! ciphertext on the wire; here the bytes before the tag are walked as if they were
//! plaintext frames of any type, so every frame decoder sees fuzzed input.
//!
//! Run: `cd wire/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_packet`
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockmsg_wire::limits::AEAD_TAG_LEN;
use sockmsg_wire::{Datagram, Encode, Frame};

fuzz_target!(|data: &[u8]| {
    for packet in Datagram::new(data) {
        let Ok(packet) = packet else { break };
        if packet.packet_type().is_protected() {
            let plaintext = &packet.payload()[..packet.payload().len() - AEAD_TAG_LEN];
            walk_any_frames(plaintext);
        } else {
            for frame in packet.frames() {
                let Ok(frame) = frame else { break };
                check_canonical(&frame);
            }
        }
    }
});

/// Decodes frames of every type, whatever packet type would be allowed to carry them,
/// so that one corpus entry can reach every frame decoder.
fn walk_any_frames(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let Ok((frame, used)) = Frame::decode(bytes, 0) else {
            return;
        };
        check_canonical(&frame);
        bytes = &bytes[used..];
    }
}

fn check_canonical(frame: &Frame<'_>) {
    let mut encoded = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut encoded);
    assert_eq!(encoded.len(), frame.encoded_len(), "encoded_len is exact");
    let (again, used) = Frame::decode(&encoded, 0).expect("a re-encoded frame decodes");
    assert_eq!(&again, frame, "re-encoding is canonical");
    assert_eq!(used, encoded.len(), "the whole re-encoding is consumed");
}
