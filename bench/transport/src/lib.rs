//! Loopback UDP benchmark of three transports, side by side: plain tokio UDP (the
//! floor), quinn (QUIC), and sockmsg sessions driven by a thin tokio driver
//! ([`driver`]). See README.md for what is measured and how.
//!
//! Every socket binds 127.0.0.1 and talks only to another socket of this process; every
//! loop is bounded by a count and a deadline.

pub mod aead;
pub mod driver;
pub mod harness;
pub mod quic;
pub mod report;
pub mod session;
pub mod udp;
