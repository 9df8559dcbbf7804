//! Packet protection alone: sockmsg's `PacketKey` (RustCrypto ChaCha20-Poly1305) next
//! to ring's ChaCha20-Poly1305 and AES-256-GCM, sealing and opening one packet at a
//! time, for the payload sizes the other tests produce (a ping: ~150 bytes; a full
//! datagram: 1200 − 24 header − 16 tag bytes).

use std::fmt::Write;
use std::hint::black_box;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use sockmsg_wire::session::crypto::PacketKey;

const HEADER: [u8; 24] = [7; 24];
const SIZES: [usize; 2] = [150, 1160];

/// Nanoseconds per call of `op`, measured over ~`budget` after a warm-up.
fn time_per_op(budget: Duration, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..1_000 {
        op(i);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1_000 {
            op(n);
            n += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn ring_key(alg: &'static ring::aead::Algorithm) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(alg, &[9; 32]).expect("32-byte key"))
}

fn ring_nonce(pn: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&pn.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// (seal ns, open ns) for one implementation and size.
type Timings = (f64, f64);

/// Times one implementation at a payload size.
type Implementation = Box<dyn Fn(usize) -> Timings>;

fn sockmsg(len: usize, budget: Duration) -> Timings {
    let key = PacketKey::new(&[9; 32]);
    let mut buf = vec![0x5a; len];
    let seal = time_per_op(budget, |pn| {
        buf.truncate(len);
        key.seal(pn, &HEADER, &mut buf);
        black_box(&buf);
    });
    let mut sealed = vec![0x5a; len];
    key.seal(1, &HEADER, &mut sealed);
    let mut scratch = sealed.clone();
    let open = time_per_op(budget, |_| {
        scratch.copy_from_slice(&sealed);
        black_box(key.open(1, &HEADER, &mut scratch).expect("authentic"));
    });
    (seal, open)
}

fn ring_aead(alg: &'static ring::aead::Algorithm, len: usize, budget: Duration) -> Timings {
    let key = ring_key(alg);
    let mut buf = vec![0x5a; len];
    let seal = time_per_op(budget, |pn| {
        buf.truncate(len);
        key.seal_in_place_append_tag(ring_nonce(pn), Aad::from(&HEADER), &mut buf)
            .expect("seal");
        black_box(&buf);
    });
    let mut sealed = vec![0x5a; len];
    key.seal_in_place_append_tag(ring_nonce(1), Aad::from(&HEADER), &mut sealed)
        .expect("seal");
    let mut scratch = sealed.clone();
    let open = time_per_op(budget, |_| {
        scratch.copy_from_slice(&sealed);
        black_box(
            key.open_in_place(ring_nonce(1), Aad::from(&HEADER), &mut scratch)
                .expect("authentic")
                .len(),
        );
    });
    (seal, open)
}

/// The comparison as a markdown table.
pub fn compare(budget: Duration) -> String {
    let mut out = String::from(
        "### Packet protection alone (one thread, no I/O): ns per packet\n\n\
         | AEAD | seal 150 B | open 150 B | seal 1160 B | open 1160 B | seal GB/s at 1160 B |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let rows: [(&str, Implementation); 3] = [
        (
            "sockmsg PacketKey (RustCrypto chacha20poly1305 0.11)",
            Box::new(move |len| sockmsg(len, budget)),
        ),
        (
            "ring 0.17 ChaCha20-Poly1305",
            Box::new(move |len| ring_aead(&CHACHA20_POLY1305, len, budget)),
        ),
        (
            "ring 0.17 AES-256-GCM",
            Box::new(move |len| ring_aead(&AES_256_GCM, len, budget)),
        ),
    ];
    for (name, run) in rows {
        let (small_seal, small_open) = run(SIZES[0]);
        let (big_seal, big_open) = run(SIZES[1]);
        let _ = writeln!(
            out,
            "| {name} | {small_seal:.0} | {small_open:.0} | {big_seal:.0} | {big_open:.0} | {:.2} |",
            SIZES[1] as f64 / big_seal
        );
    }
    out
}

/// What the handshake's RSA-2048 costs: one PSS signature and one verification with the
/// `testdata/keys` identities, through sockmsg's `Signer` and `PeerKeys`.
pub fn rsa_costs(budget: Duration) -> Result<String, String> {
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use sockmsg_wire::session::{PeerKeys, RsaKeyring, RsaSigner, Signer};

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/keys");
    let read =
        |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).map_err(|e| format!("{f}: {e}"));
    let signer =
        RsaSigner::from_pkcs8_pem("alice", &read("alice.pem")?).map_err(|e| e.to_string())?;
    let mut keys = RsaKeyring::new();
    keys.insert_pem("alice", &read("alice.pub.pem")?)
        .map_err(|e| e.to_string())?;
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let message = [0x42u8; 64];
    let signature = signer.sign(&mut rng, &message);
    // RSA is slow: few iterations, so time them directly rather than in blocks.
    let per_op = |op: &mut dyn FnMut()| {
        op();
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < budget {
            op();
            n += 1;
        }
        start.elapsed().as_micros() as f64 / f64::from(n.max(1))
    };
    let sign = per_op(&mut || {
        black_box(signer.sign(&mut rng, &message));
    });
    let verify = per_op(&mut || {
        black_box(keys.verify("alice", &message, &signature)).expect("valid signature");
    });
    Ok(format!(
        "RSA-2048 PSS (rsa 0.10 via sockmsg's RsaSigner/RsaKeyring): sign {sign:.0} µs, \
         verify {verify:.0} µs; a handshake makes 2 of each, in sequence.\n"
    ))
}
