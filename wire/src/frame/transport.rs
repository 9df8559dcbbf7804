//! Transport frames: PADDING, ACK and CLOSE (PING has no body).

use std::ops::RangeInclusive;

use bytes::BufMut;
use zerocopy::byteorder::network_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::codec::{open_code, wire_struct, Decode, Encode, Reader, Text};
use crate::error::{BuildError, DecodeError};
use crate::limits::{MAX_ACK_RANGES, MAX_MESSAGE_LEN, MAX_PAYLOAD_LEN};

/// A run of zero bytes. `len` counts the frame's type byte too, so a `Padding` of
/// length n occupies exactly n bytes; decoding swallows every zero byte that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    len: usize,
}

impl Padding {
    /// Padding of `len` bytes in all: at least 1 (the type byte), at most a whole
    /// payload.
    pub fn new(len: usize) -> Result<Self, BuildError> {
        if len == 0 || len > MAX_PAYLOAD_LEN {
            return Err(BuildError::Length {
                field: "Padding",
                len,
                min: 1,
                max: MAX_PAYLOAD_LEN,
            });
        }
        Ok(Padding { len })
    }

    /// Bytes occupied, type byte included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Encode for Padding {
    /// The body: every byte after the type byte.
    fn encoded_len(&self) -> usize {
        self.len - 1
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_bytes(0, self.len - 1);
    }
}

impl<'a> Decode<'a> for Padding {
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let mut len = 1;
        while r.peek_u8() == Some(0) {
            r.take(1, field)?;
            len += 1;
        }
        Ok(Padding { len })
    }
}

/// One further range of an ACK frame, read in place from the datagram.
///
/// Ranges are walked downwards from the first range: `gap` is the number of packet
/// numbers *not* acknowledged below the previous range (at least 1), `len` the number of
/// acknowledged packets in this range minus one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct AckRange {
    gap: U32,
    len: U32,
}

impl AckRange {
    pub fn new(gap: u32, len: u32) -> Self {
        AckRange {
            gap: U32::new(gap),
            len: U32::new(len),
        }
    }

    pub fn gap(&self) -> u32 {
        self.gap.get()
    }

    pub fn len(&self) -> u32 {
        self.len.get()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Acknowledges packet numbers: `largest`, the `first_range` packets below it, then each
/// of `ranges` in turn (after RFC 9000 §19.3, with fixed-width fields).
///
/// A decoded `Ack` has been checked to describe only packet numbers ≥ 0, with gaps of at
/// least one, so [`Ack::ranges`] cannot underflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    /// The largest packet number acknowledged.
    pub largest: u64,
    /// Microseconds the receiver held the largest packet before acknowledging it.
    pub ack_delay_us: u32,
    /// How many packets below `largest` are acknowledged too.
    pub first_range: u32,
    ranges: &'a [AckRange],
}

impl<'a> Ack<'a> {
    /// Builds an ACK, checking that the ranges stay within packet number 0 and that there
    /// are at most [`MAX_ACK_RANGES`] of them.
    pub fn new(
        largest: u64,
        ack_delay_us: u32,
        first_range: u32,
        ranges: &'a [AckRange],
    ) -> Result<Self, BuildError> {
        let ack = Ack {
            largest,
            ack_delay_us,
            first_range,
            ranges,
        };
        if ranges.len() > MAX_ACK_RANGES {
            return Err(BuildError::Length {
                field: "Ack.ranges",
                len: ranges.len(),
                min: 0,
                max: MAX_ACK_RANGES,
            });
        }
        ack.check().map_err(|reason| BuildError::Invalid {
            field: "Ack.ranges",
            reason,
        })?;
        Ok(ack)
    }

    /// The additional ranges, as sent.
    pub fn extra_ranges(&self) -> &'a [AckRange] {
        self.ranges
    }

    /// Acknowledged packet numbers as inclusive ranges, highest first.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInclusive<u64>> + 'a {
        let first = self.largest.saturating_sub(u64::from(self.first_range))..=self.largest;
        let mut smallest = *first.start();
        std::iter::once(first).chain(self.ranges.iter().map(move |range| {
            // `check` proved smallest > gap, and the result ≥ len.
            let high = smallest.saturating_sub(u64::from(range.gap()) + 1);
            let low = high.saturating_sub(u64::from(range.len()));
            smallest = low;
            low..=high
        }))
    }

    /// Walks the ranges once and refuses any that would go below packet number 0.
    fn check(&self) -> Result<(), &'static str> {
        let mut smallest = self
            .largest
            .checked_sub(u64::from(self.first_range))
            .ok_or("first range goes below packet number 0")?;
        for range in self.ranges {
            if range.gap() == 0 {
                return Err("a gap of 0 between ranges (they would be one range)");
            }
            smallest = smallest
                .checked_sub(u64::from(range.gap()) + 1)
                .and_then(|high| high.checked_sub(u64::from(range.len())))
                .ok_or("range goes below packet number 0")?;
        }
        Ok(())
    }
}

impl Encode for Ack<'_> {
    fn encoded_len(&self) -> usize {
        8 + 4 + 4 + 1 + self.ranges.as_bytes().len()
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u64(self.largest);
        buf.put_u32(self.ack_delay_us);
        buf.put_u32(self.first_range);
        buf.put_u8(self.ranges.len() as u8);
        buf.put_slice(self.ranges.as_bytes());
    }
}

impl<'a> Decode<'a> for Ack<'a> {
    fn decode(r: &mut Reader<'a>, _field: &'static str) -> Result<Self, DecodeError> {
        let start = r.offset();
        let largest = u64::decode(r, "Ack.largest")?;
        let ack_delay_us = u32::decode(r, "Ack.ack_delay_us")?;
        let first_range = u32::decode(r, "Ack.first_range")?;
        let count_offset = r.offset();
        let count = usize::from(u8::decode(r, "Ack.range_count")?);
        if count > MAX_ACK_RANGES {
            return Err(DecodeError::OutOfBounds {
                field: "Ack.range_count",
                offset: count_offset,
                value: count as u64,
                min: 0,
                max: MAX_ACK_RANGES as u64,
            });
        }
        let bytes = r.take(count * std::mem::size_of::<AckRange>(), "Ack.ranges")?;
        let ranges = <[AckRange]>::ref_from_bytes(bytes).map_err(|_| DecodeError::Invalid {
            field: "Ack.ranges",
            offset: count_offset + 1,
            reason: "ranges are not a whole number of 8-byte entries",
        })?;
        let ack = Ack {
            largest,
            ack_delay_us,
            first_range,
            ranges,
        };
        ack.check().map_err(|reason| DecodeError::Invalid {
            field: "Ack",
            offset: start,
            reason,
        })?;
        Ok(ack)
    }
}

open_code! {
    /// Why a session was closed (an open code; unknown codes are reported as such).
    pub struct CloseCode(u16) {
        /// A graceful close: the application is done.
        NORMAL = 0x0000,
        /// The peer sent something the protocol forbids.
        PROTOCOL_VIOLATION = 0x0001,
        /// The sender's idle timer expired.
        IDLE_TIMEOUT = 0x0002,
        /// The peer's key record is unknown, revoked, or did not verify.
        AUTHENTICATION_FAILED = 0x0003,
        /// The peer exceeded a buffer or rate limit.
        RESOURCE_LIMIT = 0x0004,
        /// The peer's group differs from ours.
        WRONG_GROUP = 0x0005,
        /// The sender is leaving the group.
        LEAVING = 0x0006,
    }
}

wire_struct! {
    /// Closes the session. The receiver answers nothing and discards the session's keys
    /// after a drain period of three RTOs (so a lost CLOSE is repeated, not answered).
    pub struct Close<'a> {
        pub code: CloseCode,
        pub reason: Text<'a>,
    }
}

/// A piece of a message (a session MESSAGE, or a CHAT line): bytes `offset..offset + data.len()` of a message of
/// `total_len` bytes. A line that fits is one fragment with offset 0.
///
/// Invariant (checked when decoded or built): `1 ≤ total_len ≤ MAX_MESSAGE_LEN`,
/// `data` is not empty, and the fragment lies within the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    total_len: u32,
    offset: u32,
    data: &'a [u8],
}

impl<'a> Fragment<'a> {
    pub fn new(total_len: u32, offset: u32, data: &'a [u8]) -> Result<Self, BuildError> {
        Self::check(total_len, offset, data.len()).map_err(|reason| BuildError::Invalid {
            field: "Fragment",
            reason,
        })?;
        Ok(Fragment {
            total_len,
            offset,
            data,
        })
    }

    /// The whole of a message that fits in one frame.
    pub fn whole(message: &'a [u8]) -> Result<Self, BuildError> {
        let total_len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        Self::new(total_len, 0, message)
    }

    pub fn total_len(&self) -> u32 {
        self.total_len
    }

    pub fn offset(&self) -> u32 {
        self.offset
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Whether this fragment is the whole message.
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && self.data.len() == self.total_len as usize
    }

    fn check(total_len: u32, offset: u32, len: usize) -> Result<(), &'static str> {
        if total_len == 0 || total_len as usize > MAX_MESSAGE_LEN {
            return Err("message length outside 1..=65536");
        }
        if len == 0 || len > usize::from(u16::MAX) {
            return Err("fragment length outside 1..=65535");
        }
        if u64::from(offset) + len as u64 > u64::from(total_len) {
            return Err("fragment extends past the end of the message");
        }
        Ok(())
    }
}

impl Encode for Fragment<'_> {
    fn encoded_len(&self) -> usize {
        4 + 4 + 2 + self.data.len()
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u32(self.total_len);
        buf.put_u32(self.offset);
        buf.put_u16(self.data.len() as u16);
        buf.put_slice(self.data);
    }
}

impl<'a> Decode<'a> for Fragment<'a> {
    #[inline]
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let start = r.offset();
        let total_len = u32::decode(r, "Fragment.total_len")?;
        let offset = u32::decode(r, "Fragment.offset")?;
        let len = usize::from(u16::decode(r, "Fragment.len")?);
        Self::check(total_len, offset, len).map_err(|reason| DecodeError::Invalid {
            field,
            offset: start,
            reason,
        })?;
        let data = r.take(len, "Fragment.data")?;
        Ok(Fragment {
            total_len,
            offset,
            data,
        })
    }
}

/// The reliability class of a session message (SPEC.md §8). A closed set: a class this
/// version does not know cannot be delivered correctly, so it does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageClass {
    /// Sent once, never retransmitted; a newer message supersedes an older one.
    Unreliable = 0,
    /// Retransmitted until acknowledged; delivered once, in any order.
    Reliable = 1,
    /// Retransmitted until acknowledged; delivered once, in the order sent.
    Ordered = 2,
}

impl MessageClass {
    pub const ALL: [MessageClass; 3] = [
        MessageClass::Unreliable,
        MessageClass::Reliable,
        MessageClass::Ordered,
    ];

    pub fn is_reliable(self) -> bool {
        self != MessageClass::Unreliable
    }
}

impl Encode for MessageClass {
    fn encoded_len(&self) -> usize {
        1
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(*self as u8);
    }
}

impl<'a> Decode<'a> for MessageClass {
    #[inline]
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let offset = r.offset();
        match u8::decode(r, field)? {
            0 => Ok(MessageClass::Unreliable),
            1 => Ok(MessageClass::Reliable),
            2 => Ok(MessageClass::Ordered),
            _ => Err(DecodeError::Invalid {
                field,
                offset,
                reason: "message class is not 0, 1 or 2",
            }),
        }
    }
}

wire_struct! {
    /// A session message, or one fragment of it. Messages are numbered from 0 per class
    /// and direction; the receiver reassembles the fragments of (`class`, `id`) and
    /// delivers the message as its class says. The bytes are one group frame (SPEC.md §4).
    pub struct Message<'a> {
        pub class: MessageClass,
        pub id: u64,
        pub fragment: Fragment<'a>,
    }
}
