//! sockmsg node: the group protocol as a sans-IO state machine.
//!
//! The [`Group`] knows nothing of sockets, sessions or keys: the driver feeds it messages
//! from authenticated session peers and the passing of time, and performs what it asks.
//!
//! ```text
//!   session message ──► GroupMessage::from_wire ──► Group::step(now, peer, msg)
//!   timer fired     ─────────────────────────────► Group::tick(now)
//!   user command    ─────────────────────────────► Group::send_chat / leave / …
//!
//!   loop { match group.poll_output() {
//!       Some(Output::Persist(hs))               => write hs durably (before anything after it),
//!       Some(Output::Send { to, class, frame }) => session(to).send(class, frame.to_wire()),
//!       Some(Output::Event(e))                  => show e,
//!       None                                    => break,
//!   } }
//!   sleep until group.poll_timeout()
//! ```
//!
//! [`rendezvous::Rendezvous`] is the second state machine, with the same shape: the
//! node's business with the proxy (whom to ask to be admitted, when to claim, announce,
//! refresh, found again). The driver and the group simulator both run it, so the
//! simulated schedules test the policy that ships.
//!
//! Panics: none on any input; a panic is a bug.

pub mod datadir;
pub mod driver;
pub mod fragment;
pub mod group;
pub mod keys;
pub mod message;
pub mod proxy_client;
pub mod rendezvous;
pub mod statefile;
#[cfg(test)]
mod testdir;

pub use fragment::{ChatReassembly, MAX_FRAGMENT_LEN};
pub use group::{
    CommandError, ConfigError, Group, GroupConfig, GroupEvent, HardState, Output, Role, VoteSigner,
};
pub use message::{
    vote_signing_input, ChatLine, FromWireError, GroupMessage, MemberInfo, SupportMsg, ToWireError,
    VoteMsg, VoteRequestMsg,
};
