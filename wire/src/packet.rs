//! Packets: the fixed header, the packet types, and the walk over a datagram.
//!
//! A datagram holds one or more packets back to back (so a handshake message and the
//! first protected data can share one datagram); each packet is a 24-byte [`Header`]
//! followed by `payload_len` bytes of payload. In [`PacketType::DATA`] packets the payload
//! is ciphertext whose associated data is the header; in every other type it is a
//! sequence of cleartext frames ([`crate::frame::Frames`]).

use bytes::BufMut;
use zerocopy::byteorder::network_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::codec::{flags, Encode};
use crate::error::DecodeError;
use crate::frame::{Frame, Frames};
use crate::limits::AEAD_TAG_LEN;

/// The first two bytes of every sockmsg packet: ASCII "SM".
pub const MAGIC: u16 = 0x534d;

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 24;

/// The fixed packet header, read in place from the datagram (no copy).
///
/// All multi-byte fields are big-endian. A `&Header` handed out by [`Packet::parse`] has
/// been checked: magic, version, type, flags and reserved byte are valid and the payload
/// is present in full.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    magic: U16,
    version: u8,
    packet_type: u8,
    flags: u8,
    reserved: u8,
    payload_len: U16,
    connection_id: U64,
    packet_number: U64,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_LEN);

impl Header {
    /// A version-1 header. `payload_len` is the length of what follows: the frames of a
    /// cleartext packet, or the ciphertext and tag of a DATA packet.
    pub fn new(
        packet_type: PacketType,
        flags: PacketFlags,
        connection_id: u64,
        packet_number: u64,
        payload_len: u16,
    ) -> Self {
        Header {
            magic: U16::new(MAGIC),
            version: VERSION,
            packet_type: packet_type.0,
            flags: flags.bits(),
            reserved: 0,
            payload_len: U16::new(payload_len),
            connection_id: U64::new(connection_id),
            packet_number: U64::new(packet_number),
        }
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn packet_type(&self) -> PacketType {
        PacketType(self.packet_type)
    }

    pub fn flags(&self) -> PacketFlags {
        PacketFlags::from_bits_checked(self.flags).unwrap_or_default()
    }

    pub fn payload_len(&self) -> usize {
        usize::from(self.payload_len.get())
    }

    /// The *receiver's* connection id (DATA, HANDSHAKE), the initiator's chosen id
    /// (INITIAL, RETRY), or the request id (REQUEST, RESPONSE).
    pub fn connection_id(&self) -> u64 {
        self.connection_id.get()
    }

    /// Never reused within a connection and direction; the AEAD nonce is built from it.
    pub fn packet_number(&self) -> u64 {
        self.packet_number.get()
    }

    /// The header's bytes, as they are sent and as they are authenticated.
    pub fn as_wire_bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    /// Checks every field that does not depend on the bytes after the header.
    #[inline]
    fn validate(&self, offset: usize) -> Result<(), DecodeError> {
        if self.magic.get() != MAGIC {
            return Err(DecodeError::BadMagic {
                offset,
                found: self.magic.get(),
            });
        }
        if self.version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                offset: offset + 2,
                version: self.version,
            });
        }
        let packet_type = self.packet_type();
        if packet_type.name().is_none() {
            return Err(DecodeError::UnknownPacketType {
                offset: offset + 3,
                packet_type: self.packet_type,
            });
        }
        let allowed = packet_type.allowed_flags().bits();
        if self.flags & !allowed != 0 {
            return Err(DecodeError::ReservedBits {
                field: "Header.flags",
                offset: offset + 4,
                bits: self.flags & !allowed,
            });
        }
        if self.reserved != 0 {
            return Err(DecodeError::ReservedBits {
                field: "Header.reserved",
                offset: offset + 5,
                bits: self.reserved,
            });
        }
        let min = packet_type.min_payload_len();
        if self.payload_len() < min {
            return Err(DecodeError::OutOfBounds {
                field: "Header.payload_len",
                offset: offset + 6,
                value: self.payload_len() as u64,
                min: min as u64,
                max: u64::from(u16::MAX),
            });
        }
        Ok(())
    }
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("version", &self.version)
            .field("packet_type", &self.packet_type())
            .field("flags", &self.flags)
            .field("payload_len", &self.payload_len())
            .field(
                "connection_id",
                &format_args!("{:016x}", self.connection_id()),
            )
            .field("packet_number", &self.packet_number())
            .finish()
    }
}

/// The packet type, an open code: SPEC.md §"Packet types".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketType(pub u8);

impl PacketType {
    /// Initiator → responder: HANDSHAKE_INIT, padded to a full datagram.
    pub const INITIAL: PacketType = PacketType(0x01);
    /// Responder → initiator: a stateless RETRY cookie.
    pub const RETRY: PacketType = PacketType(0x02);
    /// HANDSHAKE_RESPONSE and HANDSHAKE_FINISH.
    pub const HANDSHAKE: PacketType = PacketType(0x03);
    /// Protected frames: ChaCha20-Poly1305 ciphertext, the header as associated data.
    pub const DATA: PacketType = PacketType(0x04);
    /// A request to the proxy or the key manager.
    pub const REQUEST: PacketType = PacketType(0x05);
    /// The proxy's or key manager's answer; echoes the request's connection id.
    pub const RESPONSE: PacketType = PacketType(0x06);

    /// Every packet type this version defines.
    pub const ALL: [PacketType; 6] = [
        PacketType::INITIAL,
        PacketType::RETRY,
        PacketType::HANDSHAKE,
        PacketType::DATA,
        PacketType::REQUEST,
        PacketType::RESPONSE,
    ];

    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            PacketType::INITIAL => "INITIAL",
            PacketType::RETRY => "RETRY",
            PacketType::HANDSHAKE => "HANDSHAKE",
            PacketType::DATA => "DATA",
            PacketType::REQUEST => "REQUEST",
            PacketType::RESPONSE => "RESPONSE",
            _ => return None,
        })
    }

    /// Whether the payload is encrypted (only DATA is).
    pub fn is_protected(self) -> bool {
        self == PacketType::DATA
    }

    fn allowed_flags(self) -> PacketFlags {
        if self == PacketType::DATA {
            PacketFlags::KEY_PHASE
        } else {
            PacketFlags::empty()
        }
    }

    /// A protected payload holds at least one byte of frames and the AEAD tag; a
    /// cleartext payload at least one frame.
    fn min_payload_len(self) -> usize {
        if self.is_protected() {
            1 + AEAD_TAG_LEN
        } else {
            1
        }
    }
}

impl std::fmt::Debug for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "PacketType({:#04x})", self.0),
        }
    }
}

flags! {
    /// Header flags. Only DATA packets define one; every other bit is reserved.
    pub struct PacketFlags {
        /// Which generation of keys protects this packet, flipped at each rekey.
        KEY_PHASE = 0x01,
    }
}

impl PacketFlags {
    fn from_bits_checked(bits: u8) -> Option<Self> {
        (bits & !Self::ALL_BITS == 0).then_some(PacketFlags(bits))
    }
}

/// One decoded packet: a checked header and its payload, borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    header: &'a Header,
    payload: &'a [u8],
    offset: usize,
}

impl<'a> Packet<'a> {
    /// Decodes the packet at the start of `bytes` (which begin at byte `offset` of the
    /// datagram) and returns it with the bytes that follow it.
    #[inline]
    pub fn parse(bytes: &'a [u8], offset: usize) -> Result<(Packet<'a>, &'a [u8]), DecodeError> {
        let (header, rest) =
            Header::ref_from_prefix(bytes).map_err(|_| DecodeError::Truncated {
                field: "Header",
                offset,
                needed: HEADER_LEN,
                available: bytes.len(),
            })?;
        header.validate(offset)?;
        let len = header.payload_len();
        if rest.len() < len {
            return Err(DecodeError::Truncated {
                field: "payload",
                offset: offset + HEADER_LEN,
                needed: len,
                available: rest.len(),
            });
        }
        let (payload, rest) = rest.split_at(len);
        Ok((
            Packet {
                header,
                payload,
                offset,
            },
            rest,
        ))
    }

    pub fn header(&self) -> &'a Header {
        self.header
    }

    pub fn packet_type(&self) -> PacketType {
        self.header.packet_type()
    }

    /// The payload: cleartext frames, or ciphertext and tag for DATA.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Where the packet starts in its datagram.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Where the payload starts in the datagram, for error offsets inside it.
    pub fn payload_offset(&self) -> usize {
        self.offset + HEADER_LEN
    }

    /// The frames of a cleartext packet. For DATA, decrypt the payload first and use
    /// [`Frames::new`] on the plaintext.
    pub fn frames(&self) -> Frames<'a> {
        Frames::new(self.packet_type(), self.payload, self.payload_offset())
    }
}

/// Walks the packets of one datagram.
///
/// Yields each packet in turn; after the first error it yields that error and stops,
/// since nothing after a bad length can be trusted.
#[derive(Debug, Clone)]
pub struct Datagram<'a> {
    rest: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Datagram<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Datagram {
            rest: bytes,
            offset: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Datagram<'a> {
    type Item = Result<Packet<'a>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match Packet::parse(self.rest, self.offset) {
            Ok((packet, rest)) => {
                self.offset += self.rest.len() - rest.len();
                self.rest = rest;
                Some(Ok(packet))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Encodes a cleartext packet (any type but DATA): header, then `frames`, with
/// `payload_len` computed. Returns the number of bytes written. Refuses DATA, a frame
/// the packet type may not carry, and a payload that is empty or over 65535 bytes.
///
/// DATA packets are built by the session layer: it encodes frames into a plaintext
/// buffer, seals it, and writes a [`Header`] whose `payload_len` includes the tag.
pub fn encode_cleartext_packet<B: BufMut>(
    buf: &mut B,
    packet_type: PacketType,
    connection_id: u64,
    packet_number: u64,
    frames: &[Frame<'_>],
) -> Result<usize, crate::error::BuildError> {
    let payload_len: usize = frames.iter().map(Encode::encoded_len).sum();
    if packet_type.is_protected() {
        return Err(crate::error::BuildError::Invalid {
            field: "packet_type",
            reason: "DATA packets are sealed by the session layer",
        });
    }
    if frames
        .iter()
        .any(|frame| !frame.frame_type().allowed_in(packet_type))
    {
        return Err(crate::error::BuildError::Invalid {
            field: "frames",
            reason: "a frame is not allowed in this packet type (SPEC.md §4)",
        });
    }
    let payload_len = u16::try_from(payload_len)
        .ok()
        .filter(|&len| usize::from(len) >= packet_type.min_payload_len())
        .ok_or(crate::error::BuildError::Length {
            field: "payload",
            len: payload_len,
            min: packet_type.min_payload_len(),
            max: usize::from(u16::MAX),
        })?;
    let header = Header::new(
        packet_type,
        PacketFlags::empty(),
        connection_id,
        packet_number,
        payload_len,
    );
    buf.put_slice(header.as_bytes());
    for frame in frames {
        frame.encode(buf);
    }
    Ok(HEADER_LEN + usize::from(payload_len))
}
