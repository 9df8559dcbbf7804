//! `sockmsg-keymgr`: the key manager, root of trust of a sockmsg group.
//!
//! It binds each node name to an RSA public key and serves *signed key records*, so that
//! every session handshake can be checked against a key the manager vouched for. A name
//! is bound by a registration carrying proof of possession (a signature by the key being
//! registered, over a fresh server nonce); once bound, it moves only by a rotation signed
//! with the old key, or by the operator (revocation). Optional invite tokens restrict who
//! may register at all.
//!
//! ```text
//!  request ──▶ handler (sans-IO) ──▶ Reply now (lookup, challenge, refusal)
//!                                └─▶ Commit(operation) ──▶ committer: plan_batch (one
//!                                    Merkle root, one RSA signature for the whole batch)
//!                                    ──▶ store.commit (redb, durable) ──▶ apply ──▶ replies
//! ```
//!
//! Main types and modules:
//! - [`registry::Registry`]: the rules, as a two-step state machine (check, then
//!   plan → commit → apply), so that nothing is acknowledged before it is durable;
//! - [`handler::handle_request`]: request bytes to an [`handler::Action`];
//! - [`admission`]: single-use challenge nonces (with the answer each one got, so a
//!   retransmission gets the same answer) and per-source rate limits;
//! - [`merkle`]: RFC 9162 trees; records are signed a batch at a time, and each record
//!   carries its inclusion proof, so a lookup costs a read, never an RSA operation;
//! - [`store::Store`]: the redb file; [`datadir`]: the data directory and its secrets;
//! - [`server`]: the thin tokio driver (UDP and TCP on one port, group commit);
//! - [`client::KeymgrClient`] and [`verify`]: what nodes use to look records up and check
//!   them against the manager's pinned (or trusted-on-first-use) fingerprint.

pub mod admission;
pub mod client;
pub mod datadir;
pub mod handler;
pub mod merkle;
pub mod registry;
pub mod server;
pub mod store;
pub mod verify;
