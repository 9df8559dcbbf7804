//! The one error type of the decoder.
//!
//! Every variant says *what* is wrong (the field, the bound, the value) and *where*
//! (`offset`, in bytes from the start of the buffer handed to the decoder), so a dropped
//! packet can be logged and counted with a precise reason. Errors are cheap: no heap.

use thiserror::Error;

/// Why a datagram, packet or frame could not be decoded.
///
/// A receiver drops the offending packet, counts the error by variant, and carries on;
/// SPEC.md §"Receiving rules" says which errors also close a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes remain than the field needs.
    #[error("truncated {field} at offset {offset}: needs {needed} bytes, {available} remain")]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// A length or count exceeds its documented maximum (or is below its minimum).
    #[error("{field} at offset {offset} is {value}, outside the allowed {min}..={max}")]
    OutOfBounds {
        field: &'static str,
        offset: usize,
        value: u64,
        min: u64,
        max: u64,
    },
    /// The datagram does not start with the sockmsg magic number.
    #[error("bad magic 0x{found:04x} at offset {offset} (expected 0x534d, \"SM\")")]
    BadMagic { offset: usize, found: u16 },
    /// A protocol version this implementation does not speak.
    #[error("unsupported protocol version {version} at offset {offset}")]
    UnsupportedVersion { offset: usize, version: u8 },
    /// A packet type not defined by this version of the protocol.
    #[error("unknown packet type 0x{packet_type:02x} at offset {offset}")]
    UnknownPacketType { offset: usize, packet_type: u8 },
    /// A frame type not defined by this version of the protocol.
    #[error("unknown frame type 0x{frame_type:02x} at offset {offset}")]
    UnknownFrameType { offset: usize, frame_type: u8 },
    /// A defined frame type that SPEC.md does not allow where it was found.
    #[error("frame type 0x{frame_type:02x} is not allowed in {carrier} (offset {offset})")]
    FrameNotAllowed {
        offset: usize,
        frame_type: u8,
        carrier: crate::frame::Carrier,
    },
    /// Bits that must be zero are set (header flags, frame flags, reserved bytes).
    #[error("reserved bits 0x{bits:02x} set in {field} at offset {offset}")]
    ReservedBits {
        field: &'static str,
        offset: usize,
        bits: u8,
    },
    /// A field holds a value its type does not allow (a bad name character, an address
    /// family other than 4 or 6, text that is not UTF-8, ACK ranges below zero).
    #[error("invalid {field} at offset {offset}: {reason}")]
    Invalid {
        field: &'static str,
        offset: usize,
        reason: &'static str,
    },
    /// A packet was expected to carry at least one frame and carries none.
    #[error("packet at offset {offset} carries no frame")]
    Empty { offset: usize },
}

impl DecodeError {
    /// The byte offset the error refers to, for logs and dump output.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::OutOfBounds { offset, .. }
            | DecodeError::BadMagic { offset, .. }
            | DecodeError::UnsupportedVersion { offset, .. }
            | DecodeError::UnknownPacketType { offset, .. }
            | DecodeError::UnknownFrameType { offset, .. }
            | DecodeError::FrameNotAllowed { offset, .. }
            | DecodeError::ReservedBits { offset, .. }
            | DecodeError::Invalid { offset, .. }
            | DecodeError::Empty { offset } => offset,
        }
    }

    /// A short, stable name of the variant, for per-reason drop counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::OutOfBounds { .. } => "out_of_bounds",
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::UnknownPacketType { .. } => "unknown_packet_type",
            DecodeError::UnknownFrameType { .. } => "unknown_frame_type",
            DecodeError::FrameNotAllowed { .. } => "frame_not_allowed",
            DecodeError::ReservedBits { .. } => "reserved_bits",
            DecodeError::Invalid { .. } => "invalid",
            DecodeError::Empty { .. } => "empty",
        }
    }
}

/// Why a value could not be built for encoding (a name too long, a list too big).
///
/// The codec's field types check their bounds when they are *built*, so that encoding is
/// infallible and never emits anything the decoder would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BuildError {
    #[error("{field} is {len} bytes or items long, outside the allowed {min}..={max}")]
    Length {
        field: &'static str,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}
