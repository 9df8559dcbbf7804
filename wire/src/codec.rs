//! The field-level codec: a bounds-checked reader, the [`Encode`]/[`Decode`] traits, and
//! the field types every frame is built from.
//!
//! Decoding borrows: a [`Name`], a [`Signature`] or a [`List`] points into the datagram.
//! Each field type checks its bounds once, when it is decoded or built, so that holding a
//! value is proof that it is valid and encoding it can neither fail nor allocate.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BufMut;

use crate::error::{BuildError, DecodeError};
use crate::limits::{
    MAX_MEMBERS, MAX_NAME_LEN, MAX_PUBLIC_KEY_LEN, MAX_REASON_LEN, MAX_SIGNATURE_LEN, MAX_TOKEN_LEN,
};

/// A cursor over borrowed bytes that never reads past the end.
///
/// Offsets in errors are absolute: `base` is where `buf` starts in the datagram, so an
/// error deep inside a frame still points at the right byte of the capture.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, which starts at byte `base` of the enclosing datagram.
    #[inline]
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    /// Absolute offset of the next byte to be read.
    #[inline]
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next byte, without consuming it.
    #[inline]
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Takes exactly `n` bytes, or fails naming `field`.
    #[inline]
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                field,
                offset: self.offset(),
                needed: n,
                available,
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// Takes a fixed-size array by reference (no copy).
    #[inline]
    pub fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<&'a [u8; N], DecodeError> {
        let offset = self.offset();
        let bytes = self.take(N, field)?;
        // `take` returned exactly N bytes, so the conversion succeeds; the error arm only
        // keeps the reader panic-free by construction.
        bytes.try_into().map_err(|_| DecodeError::Truncated {
            field,
            offset,
            needed: N,
            available: bytes.len(),
        })
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let bytes = &self.buf[self.pos..];
        self.pos = self.buf.len();
        bytes
    }

    /// Reads a `width`-byte length checked against `min..=max`, then that many bytes.
    #[inline]
    fn prefixed(
        &mut self,
        width: usize,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.bounded(width, field, min, max)?;
        self.take(len, field)
    }

    /// Reads a length or count of `width` bytes and checks it against `min..=max`
    /// before anyone can use it.
    #[inline]
    fn bounded(
        &mut self,
        width: usize,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<usize, DecodeError> {
        let offset = self.offset();
        let value = match width {
            1 => u64::from(self.array::<1>(field)?[0]),
            _ => u64::from(u16::from_be_bytes(*self.array::<2>(field)?)),
        };
        if value < min as u64 || value > max as u64 {
            return Err(DecodeError::OutOfBounds {
                field,
                offset,
                value,
                min: min as u64,
                max: max as u64,
            });
        }
        Ok(value as usize)
    }
}

/// A value with a wire encoding of a known length.
pub trait Encode {
    /// Exactly the number of bytes [`Encode::encode`] writes.
    fn encoded_len(&self) -> usize;
    /// Writes the encoding. The caller provides room for `encoded_len()` bytes
    /// (a `Vec`/`BytesMut` grows; a fixed `&mut [u8]` must be large enough).
    fn encode<B: BufMut>(&self, buf: &mut B);
}

/// A value decoded from (and borrowing from) a datagram.
pub trait Decode<'a>: Sized {
    /// Decodes one value; `field` names it in errors.
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError>;
}

macro_rules! integer_codec {
    ($($ty:ty),*) => {$(
        impl Encode for $ty {
            fn encoded_len(&self) -> usize {
                std::mem::size_of::<$ty>()
            }
            fn encode<B: BufMut>(&self, buf: &mut B) {
                buf.put_slice(&self.to_be_bytes());
            }
        }
        impl<'a> Decode<'a> for $ty {
            #[inline]
            fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
                Ok(<$ty>::from_be_bytes(*r.array(field)?))
            }
        }
    )*};
}
integer_codec!(u8, u16, u32, u64);

impl<const N: usize> Encode for &[u8; N] {
    fn encoded_len(&self) -> usize {
        N
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_slice(&self[..]);
    }
}

impl<'a, const N: usize> Decode<'a> for &'a [u8; N] {
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        r.array(field)
    }
}

/// A member, group or service name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters,
/// digits, `-`, `_` and `.`. Encoded as a one-byte length and the bytes.
///
/// The alphabet is narrow on purpose: no spaces, controls or look-alike code points, so
/// a name printed in a terminal is the name that was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name<'a>(&'a str);

impl<'a> Name<'a> {
    /// Checks `name` against the alphabet and the length bound.
    pub fn new(name: &'a str) -> Result<Self, BuildError> {
        check_len("name", name.len(), 1, MAX_NAME_LEN)?;
        if !name.bytes().all(is_name_byte) {
            return Err(BuildError::Invalid {
                field: "name",
                reason: "only ASCII letters, digits, '-', '_' and '.' are allowed",
            });
        }
        Ok(Name(name))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl LengthPrefixed for Name<'_> {
    const PREFIX: usize = 1;
    fn content(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl<'a> Decode<'a> for Name<'a> {
    #[inline]
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let bytes = r.prefixed(1, field, 1, MAX_NAME_LEN)?;
        let offset = r.offset() - bytes.len();
        if let Some(bad) = bytes.iter().position(|&b| !is_name_byte(b)) {
            return Err(DecodeError::Invalid {
                field,
                offset: offset + bad,
                reason: "name byte outside [A-Za-z0-9._-]",
            });
        }
        // Every byte is ASCII, so the bytes are valid UTF-8.
        std::str::from_utf8(bytes)
            .map(Name)
            .map_err(|_| DecodeError::Invalid {
                field,
                offset,
                reason: "name is not ASCII",
            })
    }
}

/// Human-readable UTF-8 text of at most [`MAX_REASON_LEN`] bytes (a close reason, a
/// refusal message), with a one-byte length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Text<'a>(&'a str);

impl<'a> Text<'a> {
    pub fn new(text: &'a str) -> Result<Self, BuildError> {
        check_len("text", text.len(), 0, MAX_REASON_LEN)?;
        Ok(Text(text))
    }

    /// The longest prefix of `text` that fits the field, cut at a character boundary:
    /// for reasons built from free-form messages, which must never fail to send.
    pub fn truncated(text: &'a str) -> Self {
        let mut end = text.len().min(MAX_REASON_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Text(&text[..end])
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl LengthPrefixed for Text<'_> {
    const PREFIX: usize = 1;
    fn content(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl<'a> Decode<'a> for Text<'a> {
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let bytes = r.prefixed(1, field, 0, MAX_REASON_LEN)?;
        let offset = r.offset() - bytes.len();
        std::str::from_utf8(bytes)
            .map(Text)
            .map_err(|e| DecodeError::Invalid {
                field,
                offset: offset + e.valid_up_to(),
                reason: "text is not UTF-8",
            })
    }
}

/// Declares an opaque, length-prefixed byte string with its bounds.
macro_rules! bounded_bytes {
    ($(#[$doc:meta])* $name:ident, prefix: $width:literal, min: $min:expr, max: $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name<'a>(&'a [u8]);

        impl<'a> $name<'a> {
            /// Checks the length bound.
            pub fn new(bytes: &'a [u8]) -> Result<Self, BuildError> {
                check_len(stringify!($name), bytes.len(), $min, $max)?;
                Ok($name(bytes))
            }

            pub fn as_bytes(&self) -> &'a [u8] {
                self.0
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl LengthPrefixed for $name<'_> {
            const PREFIX: usize = $width;
            fn content(&self) -> &[u8] {
                self.0
            }
        }

        impl<'a> Decode<'a> for $name<'a> {
            fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
                r.prefixed($width, field, $min, $max).map($name)
            }
        }
    };
}

bounded_bytes!(
    /// An opaque token (retry cookie, invite token): 0 to [`MAX_TOKEN_LEN`] bytes,
    /// one-byte length.
    Token, prefix: 1, min: 0, max: MAX_TOKEN_LEN
);
bounded_bytes!(
    /// An RSA-PSS signature: 0 to [`MAX_SIGNATURE_LEN`] bytes, two-byte length. Empty
    /// where SPEC.md says a signature is absent (a refused vote).
    Signature, prefix: 2, min: 0, max: MAX_SIGNATURE_LEN
);
bounded_bytes!(
    /// An RSA public key as DER SubjectPublicKeyInfo: 1 to [`MAX_PUBLIC_KEY_LEN`] bytes,
    /// two-byte length.
    PublicKey, prefix: 2, min: 1, max: MAX_PUBLIC_KEY_LEN
);

/// A byte string sent as a 1- or 2-byte length and the bytes. Implementors check at
/// construction that the length fits its bound, hence its prefix.
trait LengthPrefixed {
    /// Width of the length prefix: 1 or 2 bytes.
    const PREFIX: usize;
    fn content(&self) -> &[u8];
}

impl<T: LengthPrefixed> Encode for T {
    fn encoded_len(&self) -> usize {
        T::PREFIX + self.content().len()
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        let content = self.content();
        match T::PREFIX {
            1 => buf.put_u8(content.len() as u8),
            _ => buf.put_u16(content.len() as u16),
        }
        buf.put_slice(content);
    }
}

fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), BuildError> {
    if len < min || len > max {
        return Err(BuildError::Length {
            field,
            len,
            min,
            max,
        });
    }
    Ok(())
}

/// Address family tags on the wire.
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// A UDP address: family (4 or 6), the address, the port. IPv6 flow label and scope id
/// are not carried (they are zero after decoding).
impl Encode for SocketAddr {
    fn encoded_len(&self) -> usize {
        match self.ip() {
            IpAddr::V4(_) => 1 + 4 + 2,
            IpAddr::V6(_) => 1 + 16 + 2,
        }
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        match self.ip() {
            IpAddr::V4(ip) => {
                buf.put_u8(FAMILY_V4);
                buf.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                buf.put_u8(FAMILY_V6);
                buf.put_slice(&ip.octets());
            }
        }
        buf.put_u16(self.port());
    }
}

impl<'a> Decode<'a> for SocketAddr {
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let ip = match u8::decode(r, field)? {
            FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(*r.array::<4>(field)?)),
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(*r.array::<16>(field)?)),
            _ => {
                return Err(DecodeError::Invalid {
                    field,
                    offset,
                    reason: "address family is neither 4 nor 6",
                })
            }
        };
        Ok(SocketAddr::new(ip, u16::decode(r, field)?))
    }
}

/// A counted list of at most [`MAX_MEMBERS`] items (members, names, votes), with a
/// one-byte count.
///
/// A decoded list is a validated view of the datagram's bytes: every item was decoded
/// once to check it, and [`List::iter`] decodes again on the fly, so a list costs no
/// allocation either way. A list built for sending wraps a caller's slice.
#[derive(Clone, Copy)]
pub struct List<'a, T> {
    repr: ListRepr<'a, T>,
}

#[derive(Clone, Copy)]
enum ListRepr<'a, T> {
    Wire {
        count: usize,
        bytes: &'a [u8],
        base: usize,
    },
    Items(&'a [T]),
}

impl<'a, T: Decode<'a> + Copy> List<'a, T> {
    /// Wraps `items` for encoding; at most [`MAX_MEMBERS`] of them.
    pub fn new(items: &'a [T]) -> Result<Self, BuildError> {
        check_len("list", items.len(), 0, MAX_MEMBERS)?;
        Ok(List {
            repr: ListRepr::Items(items),
        })
    }

    /// The empty list.
    pub fn empty() -> Self {
        List {
            repr: ListRepr::Items(&[]),
        }
    }

    pub fn len(&self) -> usize {
        match self.repr {
            ListRepr::Wire { count, .. } => count,
            ListRepr::Items(items) => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items, in wire order.
    pub fn iter(&self) -> ListIter<'a, T> {
        match self.repr {
            ListRepr::Wire { count, bytes, base } => ListIter {
                reader: Reader::new(bytes, base),
                items: &[],
                left: count,
                _item: PhantomData,
            },
            ListRepr::Items(items) => ListIter {
                reader: Reader::new(&[], 0),
                items,
                left: items.len(),
                _item: PhantomData,
            },
        }
    }
}

/// Iterator over a [`List`].
pub struct ListIter<'a, T> {
    reader: Reader<'a>,
    items: &'a [T],
    left: usize,
    _item: PhantomData<T>,
}

impl<'a, T: Decode<'a> + Copy> Iterator for ListIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if let Some((first, rest)) = self.items.split_first() {
            self.items = rest;
            return Some(*first);
        }
        // These bytes were fully decoded when the list was, so this cannot fail; if it
        // somehow did, the iteration ends rather than panicking.
        T::decode(&mut self.reader, "list item").ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<'a, T: Decode<'a> + Encode + Copy> Encode for List<'a, T> {
    fn encoded_len(&self) -> usize {
        match self.repr {
            ListRepr::Wire { bytes, .. } => 1 + bytes.len(),
            ListRepr::Items(items) => 1 + items.iter().map(Encode::encoded_len).sum::<usize>(),
        }
    }
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(self.len() as u8);
        match self.repr {
            ListRepr::Wire { bytes, .. } => buf.put_slice(bytes),
            ListRepr::Items(items) => items.iter().for_each(|item| item.encode(buf)),
        }
    }
}

impl<'a, T: Decode<'a> + Copy> Decode<'a> for List<'a, T> {
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let count = r.bounded(1, field, 0, MAX_MEMBERS)?;
        let start = r.clone();
        for _ in 0..count {
            T::decode(r, field)?;
        }
        let len = r.offset() - start.offset();
        let base = start.offset();
        let bytes = start.clone().take(len, field)?;
        Ok(List {
            repr: ListRepr::Wire { count, bytes, base },
        })
    }
}

impl<'a, T: Decode<'a> + Copy + PartialEq> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a, T: Decode<'a> + Copy + Eq> Eq for List<'a, T> {}

impl<'a, T: Decode<'a> + Copy + std::fmt::Debug> std::fmt::Debug for List<'a, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Declares a struct whose wire encoding is its fields, in order, each with its own
/// codec. Decode errors name the field as `Struct.field`.
///
/// Constraints that span fields belong in a field type of their own (see
/// [`crate::frame::Fragment`]), so that this stays a plain sequence.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<'a> {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a> {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl<'a> $crate::codec::Decode<'a> for $name<'a> {
            #[inline]
            fn decode(
                r: &mut $crate::codec::Reader<'a>,
                _field: &'static str,
            ) -> Result<Self, $crate::error::DecodeError> {
                Ok($name {
                    $( $field: $crate::codec::Decode::decode(
                        r,
                        concat!(stringify!($name), ".", stringify!($field)),
                    )?, )*
                })
            }
        }

        impl $crate::codec::Encode for $name<'_> {
            fn encoded_len(&self) -> usize {
                0 $( + $crate::codec::Encode::encoded_len(&self.$field) )*
            }
            fn encode<B: bytes::BufMut>(&self, buf: &mut B) {
                $( $crate::codec::Encode::encode(&self.$field, buf); )*
            }
        }
    };
}
pub(crate) use wire_struct;

/// Declares an open code (a status, a close code): any value decodes, so a newer peer's
/// code can still be printed; the named constants are the ones this version defines.
macro_rules! open_code {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($repr:ty) {
            $( $(#[$cmeta:meta])* $konst:ident = $value:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub $repr);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($value); )*

            /// The constant's name, or `None` for a code this version does not define.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($konst)), )*
                    _ => None,
                }
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }

        impl $crate::codec::Encode for $name {
            fn encoded_len(&self) -> usize {
                std::mem::size_of::<$repr>()
            }
            fn encode<B: bytes::BufMut>(&self, buf: &mut B) {
                $crate::codec::Encode::encode(&self.0, buf)
            }
        }

        impl<'a> $crate::codec::Decode<'a> for $name {
            #[inline]
            fn decode(
                r: &mut $crate::codec::Reader<'a>,
                field: &'static str,
            ) -> Result<Self, $crate::error::DecodeError> {
                <$repr as $crate::codec::Decode>::decode(r, field).map($name)
            }
        }
    };
}
pub(crate) use open_code;

/// Declares a one-byte flag set: decoding refuses any bit this version does not define,
/// since a flag changes meaning and must not be silently ignored.
macro_rules! flags {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$cmeta:meta])* $konst:ident = $value:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name(u8);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($value); )*
            /// Every bit this version defines.
            pub const ALL_BITS: u8 = 0 $( | $value )*;

            pub const fn empty() -> Self {
                $name(0)
            }
            pub const fn bits(self) -> u8 {
                self.0
            }
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }
            #[must_use]
            pub const fn with(self, other: Self) -> Self {
                $name(self.0 | other.0)
            }
        }

        impl $crate::codec::Encode for $name {
            fn encoded_len(&self) -> usize {
                1
            }
            fn encode<B: bytes::BufMut>(&self, buf: &mut B) {
                buf.put_u8(self.0);
            }
        }

        impl<'a> $crate::codec::Decode<'a> for $name {
            #[inline]
            fn decode(
                r: &mut $crate::codec::Reader<'a>,
                field: &'static str,
            ) -> Result<Self, $crate::error::DecodeError> {
                let offset = r.offset();
                let bits = <u8 as $crate::codec::Decode>::decode(r, field)?;
                if bits & !Self::ALL_BITS != 0 {
                    return Err($crate::error::DecodeError::ReservedBits {
                        field,
                        offset,
                        bits: bits & !Self::ALL_BITS,
                    });
                }
                Ok($name(bits))
            }
        }
    };
}
pub(crate) use flags;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_text_fits_the_field_and_never_splits_a_character() {
        assert_eq!(Text::truncated("bye").as_str(), "bye");
        let long = "é".repeat(200); // 400 bytes, 2 per character
        let cut = Text::truncated(&long);
        assert_eq!(
            cut.as_str().len(),
            254,
            "the longest whole-character prefix"
        );
        assert!(Text::new(cut.as_str()).is_ok());
    }
}
