//! The session layer: a reliable, authenticated, encrypted message channel between two
//! peers over UDP, as a sans-IO state machine (being written; see issue 4).

pub mod cookie;
pub mod crypto;
pub mod ranges;
pub mod recovery;
pub mod streams;
