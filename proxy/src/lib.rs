//! `sockmsg-proxy`: tells a joining node who leads its group, and accepts only provable
//! changes of leader.
//!
//! The predecessor let the first asker lead and let anyone take a group over with
//! `$FORCE leader$`. Here the first valid claim of a new group still wins, but every
//! record is signed by its leader's registered key (checked against the key manager), and
//! a new term is accepted only with the signed votes of a majority of the membership the
//! proxy last accepted. State is soft: each record lives for a TTL that the leader's
//! periodic re-announcement refreshes, so the proxy can restart freely and relearns each
//! group within one TTL.
//!
//! ```text
//!  request ──▶ handler::parse ──▶ query ──▶ Directory::query ──▶ LEADER_INFO / NO_LEADER
//!                               └▶ claim / announce ──▶ Directory::plan (cheap checks)
//!                                  ──▶ key lookups (KeymgrClient, cached)
//!                                  ──▶ Evidence::gather (RSA, no lock)
//!                                  ──▶ Directory::decide ──▶ PROXY_RESULT
//! ```
//!
//! Main types and modules:
//! - [`directory::Directory`]: the rules, sans-IO (time and keys are inputs), in three
//!   steps so that no lock is held across the network or RSA work;
//! - [`handler`]: request bytes to a parsed request, verdicts to response bytes, and
//!   the amplification bound (no UDP answer over 3× its request, SPEC.md §4);
//! - [`server::Server`]: the thin tokio driver (UDP and TCP on one port);
//! - [`client`]: request builders for leaders (records, their signatures and votes).

pub mod client;
pub mod directory;
pub mod handler;
pub mod server;

pub use directory::{
    Accepted, Directory, DirectoryConfig, Evidence, GroupRank, Kind, Now, Plan, Proposal, Refusal,
};
pub use server::{ServeConfig, Server, ServerError, Stats, StatsSnapshot};
