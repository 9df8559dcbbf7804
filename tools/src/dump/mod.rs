//! `sockmsg-dump`: what crossed the wire, decoded.
//!
//! A pipeline of small, separately testable steps:
//!
//! ```text
//!  pcap / pcapng bytes ──capture::CaptureReader──▶ link-layer frames (with time, link type)
//!    ──net::UdpExtractor──▶ UDP datagrams (Ethernet, Linux SLL/SLL2, raw IP; IPv4/IPv6;
//!                           IP fragments reassembled, bounded)
//!    ──decode::Decoder────▶ sockmsg packets: header, frames (DATA decrypted with a key
//!                           log), group frames inside MESSAGE, retransmissions marked
//!    ──output::Printer────▶ one line per packet (tshark-like), -V every field, or JSON;
//!                           a summary at the end
//! ```
//!
//! Nothing here panics on input: a frame that is not Ethernet/IP/UDP is skipped and
//! counted, a datagram that fails to decode is shown as malformed with the codec's
//! reason, and the dump goes on.

pub mod capture;
pub mod decode;
pub mod keylog;
pub mod net;
pub mod output;

pub use capture::{CaptureError, CaptureReader, CapturedFrame};
pub use decode::{DecodedPacket, Decoder, FrameInfo, Stats};
pub use keylog::{KeyLog, KeyLogError};
pub use net::{UdpDatagram, UdpExtractor};
pub use output::{Format, Printer};

/// A whole capture decoded at once (tests and small tools; `sockmsg-dump` streams).
pub struct DecodedCapture {
    pub packets: Vec<DecodedPacket>,
    /// Its counts of frames that were not (or not sound) UDP.
    pub extractor: UdpExtractor,
    /// Why reading stopped early, if it did (a damaged or cut tail: the packets before
    /// it are in `packets`).
    pub error: Option<CaptureError>,
}

/// Reads every frame of `input` and decodes its sockmsg packets with `decoder`.
pub fn decode_capture(
    input: impl std::io::Read + Send,
    decoder: &mut Decoder,
) -> Result<DecodedCapture, CaptureError> {
    let mut reader = CaptureReader::new(input)?;
    let mut extractor = UdpExtractor::default();
    let mut packets = Vec::new();
    let mut data = Vec::new();
    let error = loop {
        match reader.next_frame_into(&mut data) {
            Ok(Some((ts_ns, linktype))) => {
                if let Some(udp) = extractor.extract(ts_ns, linktype, &data) {
                    packets.extend(decoder.decode(ts_ns, &udp));
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    Ok(DecodedCapture {
        packets,
        extractor,
        error,
    })
}
