//! The session layer's cryptography: DATA packet protection, the key schedule, the
//! ephemeral X25519 exchange, and the identity signatures of the handshake.
//!
//! Everything here is sans-IO and deterministic given its inputs: randomness comes only
//! from a caller-provided, caller-seeded [`ChaCha20Rng`], so a test or a simulator run
//! that seeds it replays byte for byte.
//!
//! # Key schedule
//!
//! ```text
//! X25519(initiator eph, responder eph) ─▶ shared_secret (all-zero refused)
//! PRK = HKDF-Extract(salt = transcript_hash, IKM = shared_secret)
//! initiator_to_responder = HKDF-Expand(PRK, "sockmsg/1 i2r", 32)
//! responder_to_initiator = HKDF-Expand(PRK, "sockmsg/1 r2i", 32)
//!
//! per direction, per generation (traffic secret S):
//!     key = HKDF-Expand(S, "sockmsg/1 key", 32)   ChaCha20-Poly1305 key
//!     iv  = HKDF-Expand(S, "sockmsg/1 iv", 12)
//!     next generation: S' = HKDF-Expand(S, "sockmsg/1 ku", 32)
//! ```
//!
//! HKDF is HKDF-SHA256 (RFC 5869). The `info` of every Expand is exactly the label's
//! ASCII bytes, nothing appended; the labels are pairwise distinct, so no two derivations
//! from the same secret can produce related output. The `sockmsg/1` prefix names the
//! protocol and its version: a secret that was ever shared with another protocol, or
//! with a later version of this one, still derives unrelated keys.
//!
//! # Why a nonce never repeats under a key
//!
//! The nonce of a DATA packet is `iv XOR (0u32 ‖ packet_number as u64 BE)` (SPEC §5).
//! For a fixed IV this is injective in the packet number, and SPEC §3 forbids a sender to
//! reuse a packet number per connection and direction. The two directions use different
//! secrets (distinct labels), every session starts from fresh ephemeral keys, and every
//! key update derives a new key *and* IV. So a (key, nonce) pair is never used twice.

use std::collections::HashMap;
use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::pss;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::traits::PublicKeyParts;
use sha2::Sha256;
use thiserror::Error;
use x25519_dalek::{EphemeralSecret, PublicKey as X25519Public};

/// Bytes in a traffic secret, a transcript hash and an X25519 key or shared secret.
pub const SECRET_LEN: usize = 32;
/// Bytes in a ChaCha20-Poly1305 key.
pub const KEY_LEN: usize = 32;
/// Bytes in a packet-protection IV (the ChaCha20-Poly1305 nonce size).
pub const IV_LEN: usize = 12;
/// Bytes the authentication tag adds to every DATA payload: `payload_len` = plaintext + 16.
pub const TAG_LEN: usize = crate::limits::AEAD_TAG_LEN;

/// HKDF label: the traffic secret for packets the initiator sends.
pub const LABEL_INITIATOR_TO_RESPONDER: &[u8] = b"sockmsg/1 i2r";
/// HKDF label: the traffic secret for packets the responder sends.
pub const LABEL_RESPONDER_TO_INITIATOR: &[u8] = b"sockmsg/1 r2i";
/// HKDF label: the ChaCha20-Poly1305 key of a traffic secret.
pub const LABEL_KEY: &[u8] = b"sockmsg/1 key";
/// HKDF label: the packet-protection IV of a traffic secret.
pub const LABEL_IV: &[u8] = b"sockmsg/1 iv";
/// HKDF label: the next generation of a traffic secret (key update).
pub const LABEL_KEY_UPDATE: &[u8] = b"sockmsg/1 ku";

/// PSS salt length, in bytes (SPEC §6: salt 32, the SHA-256 output size).
pub const PSS_SALT_LEN: usize = 32;
/// Smallest RSA modulus accepted for a signer or a peer, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits: its signature (1024 bytes) is the largest a
/// `Signature` field can carry (SPEC §6).
pub const MAX_RSA_BITS: usize = 8192;

const _: () = assert!(MAX_RSA_BITS / 8 <= crate::limits::MAX_SIGNATURE_LEN);
const _: () = assert!(SECRET_LEN == crate::limits::X25519_KEY_LEN);

/// Why a cryptographic operation on session data failed.
///
/// Variants carry no secret-dependent detail: a receiver drops the packet and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// The payload is shorter than the authentication tag.
    #[error("protected payload of {len} bytes is shorter than the {TAG_LEN}-byte tag")]
    Truncated { len: usize },
    /// The tag did not verify: wrong key, wrong packet number, or modified header or
    /// payload. The payload buffer's contents are unspecified afterwards.
    #[error("packet authentication failed")]
    DecryptFailed,
    /// The peer's X25519 public key is a low-order point: the shared secret is all
    /// zeros and would be known to anyone (RFC 7748 §6.1).
    #[error("peer's X25519 public key is a low-order point")]
    LowOrderPoint,
}

/// Why a peer's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No key is known for this name.
    #[error("no key known for this peer")]
    UnknownPeer,
    /// The signature does not verify under the peer's known key (malformed, forged, or
    /// made with another key).
    #[error("signature does not verify under the peer's key")]
    BadSignature,
    /// The peer's key has been revoked.
    #[error("the peer's key has been revoked")]
    Revoked,
}

/// Why a key or an identity could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The PEM or DER could not be parsed as an RSA key of the expected kind.
    #[error("cannot parse RSA key: {0}")]
    Parse(String),
    /// The key parsed but its modulus size is outside
    /// [`MIN_RSA_BITS`]`..=`[`MAX_RSA_BITS`].
    #[error("RSA key of {bits} bits is outside the accepted {MIN_RSA_BITS}..={MAX_RSA_BITS}")]
    Size { bits: usize },
    /// The name is not a valid SPEC §6 `Name` (1..=32 bytes of `[A-Za-z0-9._-]`).
    #[error("invalid identity name {0:?}")]
    InvalidName(String),
}

// ---------------------------------------------------------------------------------------
// HKDF helpers
// ---------------------------------------------------------------------------------------

/// HKDF-Expand of `label` from a 32-byte pseudorandom key.
///
/// Cannot fail: a 32-byte PRK is exactly SHA-256's output size, and `N` (12 or 32 here)
/// is within HKDF's limit of 255 × 32 bytes (checked at compile time).
fn expand<const N: usize>(prk: &[u8; SECRET_LEN], label: &[u8]) -> [u8; N] {
    const { assert!(N <= 255 * 32) };
    let mut out = [0u8; N];
    Hkdf::<Sha256>::from_prk(prk)
        .expect("a 32-byte PRK is always valid for HKDF-SHA256")
        .expand(label, &mut out)
        .expect("output length is checked at compile time");
    out
}

// ---------------------------------------------------------------------------------------
// Key schedule
// ---------------------------------------------------------------------------------------

/// The two traffic secrets a handshake yields, one per direction.
///
/// Each side seals with the secret of its own direction and opens with the other's.
/// Build [`PacketKey`]s from them and drop them (or keep them only to derive the next
/// generation with [`next_generation`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecrets {
    /// Protects packets sent by the initiator (the side that sent HANDSHAKE_INIT).
    pub initiator_to_responder: [u8; SECRET_LEN],
    /// Protects packets sent by the responder.
    pub responder_to_initiator: [u8; SECRET_LEN],
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecrets { .. }")
    }
}

/// Derives the per-direction traffic secrets of a session.
///
/// `shared_secret` is the X25519 output ([`EphemeralKeyPair::diffie_hellman`], already
/// checked non-zero); `transcript_hash` is the SHA-256 of the handshake transcript that
/// both sides signed. Salting the extraction with the transcript binds the keys to
/// everything that was authenticated: two handshakes that differ in any signed field
/// derive unrelated keys even if the ephemerals were reused.
pub fn derive_session_secrets(
    shared_secret: &[u8; SECRET_LEN],
    transcript_hash: &[u8; SECRET_LEN],
) -> SessionSecrets {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(transcript_hash), shared_secret);
    let prk: [u8; SECRET_LEN] = prk.into();
    SessionSecrets {
        initiator_to_responder: expand(&prk, LABEL_INITIATOR_TO_RESPONDER),
        responder_to_initiator: expand(&prk, LABEL_RESPONDER_TO_INITIATOR),
    }
}

/// The next generation of a traffic secret, for a key update (as QUIC's "quic ku").
///
/// One-way: a compromised later generation does not reveal earlier traffic. Both sides
/// compute the same next secret with no message exchanged; `KEY_PHASE` tells the
/// receiver which generation a packet uses. Packet numbers continue across generations.
pub fn next_generation(secret: &[u8; SECRET_LEN]) -> [u8; SECRET_LEN] {
    expand(secret, LABEL_KEY_UPDATE)
}

// ---------------------------------------------------------------------------------------
// Packet protection
// ---------------------------------------------------------------------------------------

/// ChaCha20-Poly1305 protection of DATA packets in one direction and one generation
/// (SPEC §5). Holds the expanded key and IV; cheap to use per packet (no allocation).
#[derive(Clone)]
pub struct PacketKey {
    aead: ChaCha20Poly1305,
    iv: [u8; IV_LEN],
}

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKey { .. }")
    }
}

impl PacketKey {
    /// Expands a traffic secret into its key (`"sockmsg/1 key"`) and IV (`"sockmsg/1 iv"`).
    pub fn new(traffic_secret: &[u8; SECRET_LEN]) -> Self {
        let key: [u8; KEY_LEN] = expand(traffic_secret, LABEL_KEY);
        Self {
            aead: ChaCha20Poly1305::new(&Key::from(key)),
            iv: expand(traffic_secret, LABEL_IV),
        }
    }

    /// The nonce for `packet_number`: `iv XOR (0u32 ‖ packet_number as u64 BE)`.
    fn nonce(&self, packet_number: u64) -> Nonce {
        let mut nonce = self.iv;
        let pn = packet_number.to_be_bytes();
        for (n, p) in nonce[IV_LEN - 8..].iter_mut().zip(pn) {
            *n ^= p;
        }
        Nonce::from(nonce)
    }

    /// Encrypts `payload` (the plaintext frames) in place and appends the 16-byte tag.
    ///
    /// `header` is the 24-byte header exactly as it will be sent, `payload_len` already
    /// set to plaintext length + [`TAG_LEN`]. The caller guarantees `packet_number` was
    /// never sealed before under this key (SPEC §3); that is what makes nonces unique.
    ///
    /// # Panics
    ///
    /// Only if `payload` exceeds ChaCha20-Poly1305's limit of about 256 GiB, which a
    /// packet (at most 65 535 bytes, SPEC §3) cannot reach.
    pub fn seal(&self, packet_number: u64, header: &[u8], payload: &mut Vec<u8>) {
        let tag = self
            .aead
            .encrypt_inout_detached(
                &self.nonce(packet_number),
                header,
                payload.as_mut_slice().into(),
            )
            .expect("a packet payload is far below the ChaCha20-Poly1305 length limit");
        payload.extend_from_slice(&tag);
    }

    /// Verifies and decrypts a received payload (`ciphertext ‖ tag`) in place, returning
    /// the plaintext length: the frames are `payload[..len]`.
    ///
    /// `header` is the 24 header bytes as received. Nothing in the payload may be
    /// trusted, or even parsed, unless this returns `Ok` (SPEC §5).
    pub fn open(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let len = payload.len();
        let plain_len = len
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::Truncated { len })?;
        let (ciphertext, tag) = payload.split_at_mut(plain_len);
        let tag = Tag::try_from(&*tag).map_err(|_| CryptoError::DecryptFailed)?;
        self.aead
            .decrypt_inout_detached(&self.nonce(packet_number), header, ciphertext.into(), &tag)
            .map_err(|_| CryptoError::DecryptFailed)?;
        Ok(plain_len)
    }
}

// ---------------------------------------------------------------------------------------
// Ephemeral X25519
// ---------------------------------------------------------------------------------------

/// One side's ephemeral X25519 key pair for one handshake.
///
/// [`diffie_hellman`](Self::diffie_hellman) consumes it, so a secret is used for exactly
/// one exchange (forward secrecy: once the session is set up the secret is gone).
pub struct EphemeralKeyPair {
    secret: EphemeralSecret,
    public: [u8; SECRET_LEN],
}

impl fmt::Debug for EphemeralKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl EphemeralKeyPair {
    /// Draws a key pair from the caller's rng: the same seed gives the same keys.
    pub fn generate(rng: &mut ChaCha20Rng) -> Self {
        let secret = EphemeralSecret::random_from_rng(rng);
        let public = X25519Public::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The public key, as sent in HANDSHAKE_INIT / HANDSHAKE_RESPONSE.
    pub fn public(&self) -> [u8; SECRET_LEN] {
        self.public
    }

    /// The X25519 shared secret with `peer_public`.
    ///
    /// Refuses a low-order peer key (one that makes the shared secret all zeros, checked
    /// in constant time): otherwise an active attacker could substitute such keys and
    /// fix the session keys to values everyone knows.
    pub fn diffie_hellman(self, peer_public: &[u8; SECRET_LEN]) -> Result<[u8; 32], CryptoError> {
        let shared = self
            .secret
            .diffie_hellman(&X25519Public::from(*peer_public));
        if !shared.was_contributory() {
            return Err(CryptoError::LowOrderPoint);
        }
        Ok(shared.to_bytes())
    }
}

// ---------------------------------------------------------------------------------------
// Identities: the traits
// ---------------------------------------------------------------------------------------

/// Signs handshake transcripts (and other SPEC §9 inputs) as one named identity.
///
/// The handshake holds a `dyn Signer`, so the real [`RsaSigner`] and the simulator's
/// cheap [`insecure::TestSigner`] plug into the same place.
pub trait Signer: Send + Sync {
    /// The identity's name, as carried in HANDSHAKE_INIT / HANDSHAKE_RESPONSE.
    fn name(&self) -> &str;
    /// A signature over `message` (already label-prefixed by the caller, SPEC §9).
    /// Randomized signers draw only from `rng`.
    fn sign(&self, rng: &mut ChaCha20Rng, message: &[u8]) -> Vec<u8>;
}

/// Verifies signatures of named peers against the keys this node trusts for them
/// (in production: the key records the key manager signed).
pub trait PeerKeys: Send + Sync {
    /// `Ok` only if `signature` is `peer`'s valid signature over `message`.
    fn verify(&self, peer: &str, message: &[u8], signature: &[u8]) -> Result<(), AuthError>;
}

/// Checks `name` against the SPEC §6 `Name` rules.
fn check_name(name: &str) -> Result<(), KeyError> {
    crate::Name::new(name)
        .map(|_| ())
        .map_err(|_| KeyError::InvalidName(name.to_owned()))
}

/// Checks an RSA modulus size against [`MIN_RSA_BITS`]`..=`[`MAX_RSA_BITS`].
fn check_size(key: &rsa::PublicKey) -> Result<(), KeyError> {
    let bits = key.n().bit_width() as usize;
    if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::Size { bits })
    }
}

// ---------------------------------------------------------------------------------------
// RSA-PSS identities
// ---------------------------------------------------------------------------------------

/// A named identity signing with RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt; SPEC §6).
pub struct RsaSigner {
    name: String,
    key: pss::SigningKey<Sha256>,
    public_der: Vec<u8>,
}

impl fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RsaSigner {
    /// Wraps a private key. Fails if `name` is not a valid `Name` or the key's size is
    /// outside [`MIN_RSA_BITS`]`..=`[`MAX_RSA_BITS`] (which also guarantees that signing
    /// cannot fail).
    pub fn new(name: impl Into<String>, key: rsa::PrivateKey) -> Result<Self, KeyError> {
        let name = name.into();
        check_name(&name)?;
        check_size(key.as_public_key())?;
        let public_der = key
            .as_public_key()
            .to_public_key_der()
            .map_err(|e| KeyError::Parse(e.to_string()))?
            .into_vec();
        Ok(Self {
            name,
            key: pss::SigningKey::new_with_salt_len(key, PSS_SALT_LEN),
            public_der,
        })
    }

    /// Loads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(name: impl Into<String>, pem: &str) -> Result<Self, KeyError> {
        let key =
            rsa::PrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Parse(e.to_string()))?;
        Self::new(name, key)
    }

    /// Loads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(name: impl Into<String>, der: &[u8]) -> Result<Self, KeyError> {
        let key =
            rsa::PrivateKey::from_pkcs8_der(der).map_err(|e| KeyError::Parse(e.to_string()))?;
        Self::new(name, key)
    }

    /// The public key as DER SubjectPublicKeyInfo (`rsaEncryption`), as carried in a
    /// `PublicKey` field (SPEC §6) and accepted by [`RsaKeyring::insert_der`].
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// The public key.
    pub fn public_key(&self) -> rsa::PublicKey {
        self.key.as_ref().to_public_key()
    }
}

impl Signer for RsaSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn sign(&self, rng: &mut ChaCha20Rng, message: &[u8]) -> Vec<u8> {
        // Cannot fail: the rng is infallible and the key size was checked in `new`.
        self.key.sign_with_rng(rng, message).to_vec()
    }
}

/// What a keyring knows about a name.
#[derive(Debug, Clone)]
enum KeyState<K> {
    Active(K),
    Revoked,
}

/// Trusted RSA-PSS public keys by peer name.
#[derive(Debug, Clone, Default)]
pub struct RsaKeyring {
    keys: HashMap<String, KeyState<pss::VerifyingKey<Sha256>>>,
}

impl RsaKeyring {
    /// An empty keyring: every peer is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` for `name`, replacing any earlier key or revocation.
    pub fn insert(&mut self, name: impl Into<String>, key: rsa::PublicKey) -> Result<(), KeyError> {
        let name = name.into();
        check_name(&name)?;
        check_size(&key)?;
        let key = pss::VerifyingKey::new_with_salt_len(key, PSS_SALT_LEN);
        self.keys.insert(name, KeyState::Active(key));
        Ok(())
    }

    /// Trusts a DER SubjectPublicKeyInfo key (as from a key record) for `name`.
    pub fn insert_der(&mut self, name: impl Into<String>, der: &[u8]) -> Result<(), KeyError> {
        let key =
            rsa::PublicKey::from_public_key_der(der).map_err(|e| KeyError::Parse(e.to_string()))?;
        self.insert(name, key)
    }

    /// Trusts a PEM SubjectPublicKeyInfo key (`-----BEGIN PUBLIC KEY-----`) for `name`.
    pub fn insert_pem(&mut self, name: impl Into<String>, pem: &str) -> Result<(), KeyError> {
        let key =
            rsa::PublicKey::from_public_key_pem(pem).map_err(|e| KeyError::Parse(e.to_string()))?;
        self.insert(name, key)
    }

    /// Forgets `name`: its signatures fail with [`AuthError::UnknownPeer`]. Returns
    /// whether anything was known about it.
    pub fn remove(&mut self, name: &str) -> bool {
        self.keys.remove(name).is_some()
    }

    /// Marks `name` revoked (as a `REVOKED` key record says): its signatures fail with
    /// [`AuthError::Revoked`] until a new key is inserted.
    pub fn revoke(&mut self, name: impl Into<String>) {
        self.keys.insert(name.into(), KeyState::Revoked);
    }

    /// Whether `name` has an active (not revoked) key.
    pub fn contains(&self, name: &str) -> bool {
        matches!(self.keys.get(name), Some(KeyState::Active(_)))
    }
}

impl PeerKeys for RsaKeyring {
    fn verify(&self, peer: &str, message: &[u8], signature: &[u8]) -> Result<(), AuthError> {
        let key = match self.keys.get(peer) {
            Some(KeyState::Active(key)) => key,
            Some(KeyState::Revoked) => return Err(AuthError::Revoked),
            None => return Err(AuthError::UnknownPeer),
        };
        // Parsing only bounds the length; the exact length and value are checked by
        // `verify` against the key.
        let signature = pss::Signature::try_from(signature).map_err(|_| AuthError::BadSignature)?;
        key.verify(message, &signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

// ---------------------------------------------------------------------------------------
// Insecure identities for the simulator and tests
// ---------------------------------------------------------------------------------------

/// **Insecure** identities, for the deterministic simulator and tests only.
///
/// A "signature" here is a SHA-256 hash that anyone can compute: it proves nothing.
/// These types exist so that thousands of simulated handshakes cost ~100 ns each instead
/// of RSA's milliseconds, while exercising exactly the same code paths (the handshake
/// only sees [`Signer`] and [`PeerKeys`]). Never use them in a node, proxy or key manager.
pub mod insecure {
    use std::collections::HashMap;

    use rand_chacha::ChaCha20Rng;
    use sha2::{Digest, Sha256};

    use super::{AuthError, PeerKeys, Signer};

    /// Domain label of test signatures, so that they cannot coincide with any other
    /// SHA-256 computed by the protocol.
    const LABEL: &[u8] = b"sockmsg/1 insecure test signature\0";

    /// SHA-256(label ‖ key id ‖ name length as u64 ‖ name ‖ message). The length prefix
    /// keeps ("ab", "c") and ("a", "bc") apart.
    fn test_signature(key_id: u64, name: &str, message: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update(LABEL)
            .chain_update(key_id.to_be_bytes())
            .chain_update((name.len() as u64).to_be_bytes())
            .chain_update(name.as_bytes())
            .chain_update(message)
            .finalize()
            .into()
    }

    /// Signs as `name` with a numbered fake key. Deterministic: ignores the rng.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TestSigner {
        name: String,
        key_id: u64,
    }

    impl TestSigner {
        /// Signs as `name` with key 0, the key [`TestKeys::insert`] trusts.
        pub fn new(name: impl Into<String>) -> Self {
            Self::with_key(name, 0)
        }

        /// Signs as `name` with key `key_id`: a verifier trusting another key id for
        /// `name` refuses the signatures (a stale or stolen identity, a rotated key).
        pub fn with_key(name: impl Into<String>, key_id: u64) -> Self {
            Self {
                name: name.into(),
                key_id,
            }
        }

        /// The fake key's number.
        pub fn key_id(&self) -> u64 {
            self.key_id
        }
    }

    impl Signer for TestSigner {
        fn name(&self) -> &str {
            &self.name
        }

        fn sign(&self, _rng: &mut ChaCha20Rng, message: &[u8]) -> Vec<u8> {
            test_signature(self.key_id, &self.name, message).to_vec()
        }
    }

    /// What a [`TestKeys`] believes about a name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Trust {
        Key(u64),
        Reject,
        Revoked,
    }

    /// Verifies [`TestSigner`] signatures, accepting only names it was told about and
    /// only with the key id it was told.
    #[derive(Debug, Clone, Default)]
    pub struct TestKeys {
        names: HashMap<String, Trust>,
    }

    impl TestKeys {
        /// Knows nobody.
        pub fn new() -> Self {
            Self::default()
        }

        /// Knows each of `names` with key 0.
        pub fn with_names<I, S>(names: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            let mut keys = Self::new();
            for name in names {
                keys.insert(name);
            }
            keys
        }

        /// Trusts `name` with key 0 (what [`TestSigner::new`] signs with).
        pub fn insert(&mut self, name: impl Into<String>) {
            self.insert_key(name, 0);
        }

        /// Trusts `name` with key `key_id` only.
        pub fn insert_key(&mut self, name: impl Into<String>, key_id: u64) {
            self.names.insert(name.into(), Trust::Key(key_id));
        }

        /// Makes `name`'s signatures fail with [`AuthError::BadSignature`], as if the
        /// peer had signed with a key other than the one on record.
        pub fn reject_signatures_of(&mut self, name: impl Into<String>) {
            self.names.insert(name.into(), Trust::Reject);
        }

        /// Makes `name`'s signatures fail with [`AuthError::Revoked`].
        pub fn revoke(&mut self, name: impl Into<String>) {
            self.names.insert(name.into(), Trust::Revoked);
        }

        /// Forgets `name`: [`AuthError::UnknownPeer`]. Returns whether it was known.
        pub fn remove(&mut self, name: &str) -> bool {
            self.names.remove(name).is_some()
        }
    }

    impl PeerKeys for TestKeys {
        fn verify(&self, peer: &str, message: &[u8], signature: &[u8]) -> Result<(), AuthError> {
            match self.names.get(peer) {
                None => Err(AuthError::UnknownPeer),
                Some(Trust::Revoked) => Err(AuthError::Revoked),
                Some(Trust::Reject) => Err(AuthError::BadSignature),
                // Plain comparison: the "signature" is public anyway.
                Some(Trust::Key(key_id)) if signature == test_signature(*key_id, peer, message) => {
                    Ok(())
                }
                Some(Trust::Key(_)) => Err(AuthError::BadSignature),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::insecure::{TestKeys, TestSigner};
    use super::*;
    use rand_core::SeedableRng;

    const ALICE: &str = include_str!("../../../testdata/keys/alice.pem");
    const BOB: &str = include_str!("../../../testdata/keys/bob.pem");
    const MALLORY: &str = include_str!("../../../testdata/keys/mallory.pem");
    const ALICE_PUB: &str = include_str!("../../../testdata/keys/alice.pub.pem");

    const HEADER: [u8; 24] = [
        0x53, 0x4d, 1, 4, 0, 0, 0, 21, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 7,
    ];
    const PLAINTEXT: &[u8] = b"\x01\x00\x00\x00\x00";

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn secrets() -> SessionSecrets {
        derive_session_secrets(&[1; 32], &[2; 32])
    }

    fn sealed(key: &PacketKey, pn: u64) -> Vec<u8> {
        let mut payload = PLAINTEXT.to_vec();
        key.seal(pn, &HEADER, &mut payload);
        payload
    }

    // --- packet protection -------------------------------------------------------------

    #[test]
    fn seal_open_round_trip() {
        let key = PacketKey::new(&secrets().initiator_to_responder);
        for pn in [0, 1, 7, u64::from(u32::MAX) + 1, (1 << 62) - 1, u64::MAX] {
            let mut payload = sealed(&key, pn);
            assert_eq!(payload.len(), PLAINTEXT.len() + TAG_LEN);
            assert_ne!(&payload[..PLAINTEXT.len()], PLAINTEXT, "encrypted");
            let len = key.open(pn, &HEADER, &mut payload).expect("opens");
            assert_eq!(&payload[..len], PLAINTEXT);
        }
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let key = PacketKey::new(&[9; 32]);
        let mut payload = Vec::new();
        key.seal(3, &HEADER, &mut payload);
        assert_eq!(payload.len(), TAG_LEN);
        assert_eq!(key.open(3, &HEADER, &mut payload), Ok(0));
    }

    #[test]
    fn seal_only_grows_by_the_tag() {
        let key = PacketKey::new(&[9; 32]);
        let mut payload = Vec::with_capacity(PLAINTEXT.len() + TAG_LEN);
        payload.extend_from_slice(PLAINTEXT);
        let before = payload.as_ptr();
        key.seal(0, &HEADER, &mut payload);
        assert_eq!(
            payload.as_ptr(),
            before,
            "no reallocation with room for the tag"
        );
    }

    #[test]
    fn any_tampered_header_byte_is_refused() {
        let key = PacketKey::new(&secrets().initiator_to_responder);
        let payload = sealed(&key, 5);
        for i in 0..HEADER.len() {
            let mut header = HEADER;
            header[i] ^= 0x01;
            let mut p = payload.clone();
            assert_eq!(
                key.open(5, &header, &mut p),
                Err(CryptoError::DecryptFailed),
                "header byte {i}"
            );
        }
    }

    #[test]
    fn any_tampered_ciphertext_or_tag_byte_is_refused() {
        let key = PacketKey::new(&secrets().initiator_to_responder);
        let payload = sealed(&key, 5);
        for i in 0..payload.len() {
            for bit in [0x01, 0x80] {
                let mut p = payload.clone();
                p[i] ^= bit;
                assert_eq!(
                    key.open(5, &HEADER, &mut p),
                    Err(CryptoError::DecryptFailed),
                    "payload byte {i}"
                );
            }
        }
    }

    #[test]
    fn truncated_payloads_are_refused_without_panic() {
        let key = PacketKey::new(&[3; 32]);
        let payload = sealed(&key, 0);
        for len in 0..payload.len() {
            let mut p = payload[..len].to_vec();
            let expected = if len < TAG_LEN {
                CryptoError::Truncated { len }
            } else {
                CryptoError::DecryptFailed
            };
            assert_eq!(key.open(0, &HEADER, &mut p), Err(expected), "length {len}");
        }
    }

    #[test]
    fn wrong_packet_number_is_refused() {
        let key = PacketKey::new(&[3; 32]);
        let payload = sealed(&key, 1000);
        for pn in [0, 999, 1001, 1000 | (1 << 32), 1000 | (1 << 63)] {
            let mut p = payload.clone();
            assert_eq!(
                key.open(pn, &HEADER, &mut p),
                Err(CryptoError::DecryptFailed)
            );
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let s = secrets();
        let sender = PacketKey::new(&s.initiator_to_responder);
        let mut p = sealed(&sender, 0);
        // The other direction's key, and an unrelated one.
        for secret in [s.responder_to_initiator, [0; 32]] {
            let mut q = p.clone();
            let other = PacketKey::new(&secret);
            assert_eq!(
                other.open(0, &HEADER, &mut q),
                Err(CryptoError::DecryptFailed)
            );
        }
        assert!(sender.open(0, &HEADER, &mut p).is_ok());
    }

    #[test]
    fn nonce_is_iv_xor_packet_number_in_the_last_eight_bytes() {
        let key = PacketKey::new(&[4; 32]);
        assert_eq!(key.nonce(0).as_slice(), &key.iv);
        let nonce = key.nonce(0x0102_0304_0506_0708);
        let mut expected = key.iv;
        for (i, b) in [1u8, 2, 3, 4, 5, 6, 7, 8].into_iter().enumerate() {
            expected[4 + i] ^= b;
        }
        assert_eq!(nonce.as_slice(), &expected);
        assert_ne!(key.nonce(1), key.nonce(2));
    }

    #[test]
    fn debug_output_hides_secrets() {
        assert_eq!(format!("{:?}", secrets()), "SessionSecrets { .. }");
        assert_eq!(
            format!("{:?}", PacketKey::new(&[5; 32])),
            "PacketKey { .. }"
        );
    }

    // --- key schedule ------------------------------------------------------------------

    #[test]
    fn directions_have_different_secrets() {
        let s = secrets();
        assert_ne!(s.initiator_to_responder, s.responder_to_initiator);
        assert_eq!(s, secrets(), "deterministic");
    }

    #[test]
    fn secrets_depend_on_shared_secret_and_transcript() {
        let s = secrets();
        assert_ne!(s, derive_session_secrets(&[1; 32], &[3; 32]));
        assert_ne!(s, derive_session_secrets(&[4; 32], &[2; 32]));
    }

    #[test]
    fn key_update_is_deterministic_and_new() {
        let s0 = secrets().initiator_to_responder;
        let s1 = next_generation(&s0);
        assert_eq!(s1, next_generation(&s0));
        assert_ne!(s1, s0);
        assert_ne!(next_generation(&s1), s1);
        assert_ne!(next_generation(&s1), s0);
        let old = PacketKey::new(&s0);
        let new = PacketKey::new(&s1);
        assert_ne!(old.iv, new.iv, "a new generation gets a new IV too");
        let mut p = sealed(&new, 9);
        assert_eq!(
            old.open(9, &HEADER, &mut p),
            Err(CryptoError::DecryptFailed)
        );
    }

    #[test]
    fn labels_are_distinct() {
        let labels = [
            LABEL_INITIATOR_TO_RESPONDER,
            LABEL_RESPONDER_TO_INITIATOR,
            LABEL_KEY,
            LABEL_IV,
            LABEL_KEY_UPDATE,
        ];
        for (i, a) in labels.iter().enumerate() {
            assert!(a.starts_with(b"sockmsg/1 "));
            for b in &labels[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    // --- X25519 ------------------------------------------------------------------------

    #[test]
    fn same_seed_same_ephemeral_keys() {
        let a = EphemeralKeyPair::generate(&mut rng(42));
        let b = EphemeralKeyPair::generate(&mut rng(42));
        let c = EphemeralKeyPair::generate(&mut rng(43));
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), c.public());
        let mut r = rng(42);
        let first = EphemeralKeyPair::generate(&mut r).public();
        assert_ne!(first, EphemeralKeyPair::generate(&mut r).public());
    }

    #[test]
    fn both_sides_agree() {
        let mut r = rng(1);
        let initiator = EphemeralKeyPair::generate(&mut r);
        let responder = EphemeralKeyPair::generate(&mut r);
        let (ip, rp) = (initiator.public(), responder.public());
        let a = initiator.diffie_hellman(&rp).expect("contributory");
        let b = responder.diffie_hellman(&ip).expect("contributory");
        assert_eq!(a, b);
        assert_ne!(a, [0; 32]);
    }

    #[test]
    fn low_order_points_are_refused() {
        // u = 0 and u = 1 (orders 4 and 1), and the order-8 point from RFC 7748 / libsodium.
        let order_8: [u8; 32] = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        let mut one = [0u8; 32];
        one[0] = 1;
        for point in [[0u8; 32], one, order_8] {
            let pair = EphemeralKeyPair::generate(&mut rng(7));
            assert_eq!(pair.diffie_hellman(&point), Err(CryptoError::LowOrderPoint));
        }
    }

    // --- RSA identities ----------------------------------------------------------------

    fn signer(name: &str, pem: &str) -> RsaSigner {
        RsaSigner::from_pkcs8_pem(name, pem).expect("checked-in test key loads")
    }

    fn keyring(signers: &[&RsaSigner]) -> RsaKeyring {
        let mut ring = RsaKeyring::new();
        for s in signers {
            ring.insert_der(s.name(), s.public_key_der())
                .expect("own key loads");
        }
        ring
    }

    #[test]
    fn rsa_sign_and_verify_with_checked_in_keys() {
        let alice = signer("alice", ALICE);
        let bob = signer("bob", BOB);
        let ring = keyring(&[&alice, &bob]);
        let mut r = rng(1);
        for s in [&alice, &bob] {
            let sig = s.sign(&mut r, b"sockmsg/1 handshake initiator\0transcript");
            assert_eq!(sig.len(), 256, "RSA-2048");
            assert_eq!(
                ring.verify(s.name(), b"sockmsg/1 handshake initiator\0transcript", &sig),
                Ok(())
            );
        }
    }

    #[test]
    fn rsa_signature_by_alice_does_not_verify_as_bob() {
        let alice = signer("alice", ALICE);
        let bob = signer("bob", BOB);
        let ring = keyring(&[&alice, &bob]);
        let sig = alice.sign(&mut rng(1), b"message");
        assert_eq!(
            ring.verify("bob", b"message", &sig),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn rsa_mallory_cannot_sign_as_alice() {
        let alice = signer("alice", ALICE);
        // Mallory names herself "alice", but holds her own key.
        let mallory = signer("alice", MALLORY);
        let ring = keyring(&[&alice]);
        let sig = mallory.sign(&mut rng(1), b"message");
        assert_eq!(
            ring.verify("alice", b"message", &sig),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn rsa_modified_message_or_signature_is_refused() {
        let alice = signer("alice", ALICE);
        let ring = keyring(&[&alice]);
        let sig = alice.sign(&mut rng(2), b"message");
        assert_eq!(
            ring.verify("alice", b"messagf", &sig),
            Err(AuthError::BadSignature)
        );
        let mut bad = sig.clone();
        bad[100] ^= 1;
        assert_eq!(
            ring.verify("alice", b"message", &bad),
            Err(AuthError::BadSignature)
        );
        for garbage in [&[][..], &[0], &sig[1..], &[0xff; 256], &[0; 2000]] {
            assert_eq!(
                ring.verify("alice", b"message", garbage),
                Err(AuthError::BadSignature)
            );
        }
    }

    /// A signature OpenSSL made with bob's checked-in key, to pin interoperability (PSS,
    /// SHA-256, MGF1-SHA-256, salt 32):
    /// `printf 'hello interop' | openssl dgst -sha256 -sigopt rsa_padding_mode:pss
    /// -sigopt rsa_pss_saltlen:32 -sign testdata/keys/bob.pem | xxd -p`.
    /// (The reverse direction was checked once with `openssl dgst -verify`.)
    #[test]
    fn rsa_verifies_an_openssl_signature() {
        const OPENSSL_SIG: [&str; 8] = [
            "9a8b256ac23617f047eb7ca13253c4553273da8065d1c9e8d475da52844908fe",
            "2b1ba42372667c77b2fe468c541c0e4b2fc1c3140ab90977751fb9a01a2fefdc",
            "45098a20b64f55685238df21ee0e72d856dc7d24618826b7c4a8b159d58be8e6",
            "09ca96c212ac5ff8d9400387066fde49b5cfbc0100ea8f8f21017511debbc573",
            "fead36208c086f8cb31c63baa954fbf2c10ec4a62a63eb85a867775dac275789",
            "dced009b4cfab7f3119ab4387a8d845661f48d6e222c7e2e950c21d0429abbab",
            "8c565e032ee6fce43fea91431989501a41ed45e254f3300300244003894f809e",
            "f34482b7a486f3eb39b6c2be6fddb965e07bc7335d115664dfdb2cb42ccd93cc",
        ];
        let sig = hex::decode(OPENSSL_SIG.concat()).expect("hex");
        let ring = keyring(&[&signer("bob", BOB)]);
        assert_eq!(ring.verify("bob", b"hello interop", &sig), Ok(()));
        assert_eq!(
            ring.verify("bob", b"hello interop!", &sig),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn rsa_signing_replays_with_the_same_seed() {
        let alice = signer("alice", ALICE);
        let a = alice.sign(&mut rng(5), b"m");
        assert_eq!(a, alice.sign(&mut rng(5), b"m"));
        assert_ne!(
            a,
            alice.sign(&mut rng(6), b"m"),
            "PSS salt comes from the rng"
        );
    }

    #[test]
    fn rsa_keyring_unknown_removed_and_revoked() {
        let alice = signer("alice", ALICE);
        let mut ring = keyring(&[&alice]);
        let sig = alice.sign(&mut rng(3), b"m");
        assert_eq!(
            ring.verify("carol", b"m", &sig),
            Err(AuthError::UnknownPeer)
        );
        assert!(ring.contains("alice"));
        ring.revoke("alice");
        assert!(!ring.contains("alice"));
        assert_eq!(ring.verify("alice", b"m", &sig), Err(AuthError::Revoked));
        ring.insert(alice.name(), alice.public_key())
            .expect("valid key");
        assert_eq!(ring.verify("alice", b"m", &sig), Ok(()));
        assert!(ring.remove("alice"));
        assert!(!ring.remove("alice"));
        assert_eq!(
            ring.verify("alice", b"m", &sig),
            Err(AuthError::UnknownPeer)
        );
    }

    #[test]
    fn rsa_public_key_der_matches_the_checked_in_public_key() {
        let alice = signer("alice", ALICE);
        let from_pem = rsa::PublicKey::from_public_key_pem(ALICE_PUB).expect("public PEM");
        assert_eq!(alice.public_key(), from_pem);
        assert_eq!(
            alice.public_key_der(),
            from_pem.to_public_key_der().expect("encodes").as_bytes()
        );
        let mut ring = RsaKeyring::new();
        ring.insert_pem("alice", ALICE_PUB).expect("public PEM");
        let sig = alice.sign(&mut rng(4), b"m");
        assert_eq!(ring.verify("alice", b"m", &sig), Ok(()));
    }

    #[test]
    fn rsa_der_private_key_loads() {
        let der = rsa::pkcs8::Document::from_pem(ALICE).map(|(_, doc)| doc.into_vec());
        let der = der.expect("PEM decodes");
        let alice = RsaSigner::from_pkcs8_der("alice", &der).expect("DER loads");
        assert_eq!(
            alice.public_key_der(),
            signer("alice", ALICE).public_key_der()
        );
    }

    #[test]
    fn bad_keys_and_names_are_errors_not_panics() {
        assert!(matches!(
            RsaSigner::from_pkcs8_pem("alice", "not a key"),
            Err(KeyError::Parse(_))
        ));
        assert!(matches!(
            RsaSigner::from_pkcs8_der("alice", &[0x30, 0x03, 0x02, 0x01]),
            Err(KeyError::Parse(_))
        ));
        assert!(matches!(
            RsaSigner::from_pkcs8_pem("alice", ALICE_PUB),
            Err(KeyError::Parse(_))
        ));
        for name in ["", "al ice", "a/b", &"x".repeat(33)] {
            assert!(matches!(
                RsaSigner::from_pkcs8_pem(name, ALICE),
                Err(KeyError::InvalidName(_))
            ));
        }
        let mut ring = RsaKeyring::new();
        assert!(matches!(
            ring.insert_der("bob", b"\x30\x82garbage"),
            Err(KeyError::Parse(_))
        ));
        assert!(matches!(
            ring.insert_pem("bob", ALICE),
            Err(KeyError::Parse(_))
        ));
        let alice = signer("alice", ALICE);
        assert!(matches!(
            ring.insert_der("", alice.public_key_der()),
            Err(KeyError::InvalidName(_))
        ));
        assert!(!ring.contains("bob"));
    }

    #[test]
    fn signers_work_as_trait_objects() {
        let signers: Vec<Box<dyn Signer>> = vec![
            Box::new(signer("alice", ALICE)),
            Box::new(TestSigner::new("alice")),
        ];
        let alice = signer("alice", ALICE);
        let verifiers: Vec<Box<dyn PeerKeys>> = vec![
            Box::new(keyring(&[&alice])),
            Box::new(TestKeys::with_names(["alice"])),
        ];
        for (s, v) in signers.iter().zip(&verifiers) {
            assert_eq!(s.name(), "alice");
            let sig = s.sign(&mut rng(8), b"m");
            assert_eq!(v.verify("alice", b"m", &sig), Ok(()));
        }
    }

    // --- insecure test identities ------------------------------------------------------

    #[test]
    fn test_keys_verify_only_known_names_and_their_own_signatures() {
        let alice = TestSigner::new("alice");
        let bob = TestSigner::new("bob");
        let keys = TestKeys::with_names(["alice", "bob"]);
        let sig = alice.sign(&mut rng(0), b"m");
        assert_eq!(sig, alice.sign(&mut rng(1), b"m"), "deterministic");
        assert_eq!(keys.verify("alice", b"m", &sig), Ok(()));
        assert_eq!(keys.verify("bob", b"m", &sig), Err(AuthError::BadSignature));
        assert_eq!(
            keys.verify("alice", b"n", &sig),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            keys.verify("carol", b"m", &sig),
            Err(AuthError::UnknownPeer)
        );
        let sig_bob = bob.sign(&mut rng(0), b"m");
        assert_eq!(keys.verify("bob", b"m", &sig_bob), Ok(()));
        for garbage in [&[][..], &sig[1..], &[0; 256]] {
            assert_eq!(
                keys.verify("alice", b"m", garbage),
                Err(AuthError::BadSignature)
            );
        }
    }

    #[test]
    fn test_keys_wrong_key_rejected_and_revoked() {
        let mut keys = TestKeys::with_names(["alice", "mallory"]);
        let alice = TestSigner::new("alice");
        let sig = alice.sign(&mut rng(0), b"m");

        keys.reject_signatures_of("alice");
        assert_eq!(
            keys.verify("alice", b"m", &sig),
            Err(AuthError::BadSignature)
        );

        keys.insert_key("alice", 2);
        assert_eq!(
            keys.verify("alice", b"m", &sig),
            Err(AuthError::BadSignature)
        );
        let rotated = TestSigner::with_key("alice", 2);
        assert_eq!(rotated.key_id(), 2);
        assert_eq!(
            keys.verify("alice", b"m", &rotated.sign(&mut rng(0), b"m")),
            Ok(())
        );

        keys.revoke("alice");
        assert_eq!(keys.verify("alice", b"m", &sig), Err(AuthError::Revoked));
        assert!(keys.remove("alice"));
        assert_eq!(
            keys.verify("alice", b"m", &sig),
            Err(AuthError::UnknownPeer)
        );

        // Mallory signing under alice's name with her own key is the wrong key.
        keys.insert("alice");
        let forged = TestSigner::with_key("alice", 666).sign(&mut rng(0), b"m");
        assert_eq!(
            keys.verify("alice", b"m", &forged),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn test_signatures_separate_name_and_message() {
        let keys = TestKeys::with_names(["ab", "a"]);
        let sig = TestSigner::new("ab").sign(&mut rng(0), b"c");
        assert_eq!(keys.verify("a", b"bc", &sig), Err(AuthError::BadSignature));
    }
}
