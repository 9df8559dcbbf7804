//! `sockmsg-wire`: the sockmsg wire format, and (in later issues) the session layer.
//!
//! This crate is the single implementation of SPEC.md. It does no I/O: it reads
//! datagrams that someone else received and writes into buffers that someone else
//! sends. Its main types:
//!
//! - [`Datagram`] walks the packets of a received datagram; each [`Packet`] is a checked
//!   zerocopy [`Header`] (read in place) and its payload.
//! - [`Frames`] walks the frames of a payload and yields [`Frame`]s, which borrow from
//!   the datagram: a chat line or a signature is never copied.
//! - [`Encode`] writes any frame into a caller's [`bytes::BufMut`] without allocating;
//!   [`encode_cleartext_packet`] writes a whole handshake or service packet.
//!
//! ```text
//! datagram ──Datagram──▶ Packet { &Header, payload } ──Frames──▶ Frame<'datagram>
//!                                  (DATA: decrypt first)
//! Frame ──Encode::encode──▶ &mut impl BufMut
//! ```
//!
//! # Bad input
//!
//! Every length and count is checked against the bytes present and against a bound in
//! [`limits`] before it is used; anything wrong is a [`DecodeError`] that names the field
//! and its byte offset. Decoding never panics and never allocates. Field types such as
//! [`Name`] or [`Signature`] check their bounds when built too, so that encoding is
//! infallible and cannot emit what the decoder would refuse.

mod codec;
pub mod error;
pub mod frame;
pub mod limits;
mod packet;
pub mod session;

pub use codec::{Decode, Encode, List, ListIter, Name, PublicKey, Reader, Signature, Text, Token};
pub use error::{BuildError, DecodeError};
pub use frame::{Frame, FrameType, Frames};
pub use packet::{
    encode_cleartext_packet, Datagram, Header, Packet, PacketFlags, PacketType, HEADER_LEN, MAGIC,
    VERSION,
};
