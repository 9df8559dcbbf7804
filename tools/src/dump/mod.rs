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
