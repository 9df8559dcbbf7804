//! Reading pcap and pcapng captures, from a file or a pipe, as a stream of link-layer
//! frames with their time and link type (pcap-parser does the format work).

use std::io::Read;

use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{create_reader, Block, PcapBlockOwned, PcapError};

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The pcap LINKTYPE of the interface it was captured on.
    pub linktype: i32,
    pub data: Vec<u8>,
}

/// Why the capture could not be read on.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a pcap or pcapng capture")]
    NotACapture,
    #[error("the capture is damaged or truncated: {0}")]
    Damaged(String),
}

/// The pcapng interfaces seen so far: link type and timestamp resolution (units per
/// second) by interface id.
#[derive(Debug, Default)]
struct Interfaces(Vec<(i32, u64)>);

/// Streams the frames of a pcap or pcapng capture. Bounded memory: a buffer of 1 MiB
/// (grown only for a larger single frame, up to 16 MiB).
pub struct CaptureReader<'r> {
    reader: Box<dyn PcapReaderIterator + Send + 'r>,
    state: FormatState,
}

/// What earlier blocks said about the ones to come.
#[derive(Debug)]
struct FormatState {
    legacy_linktype: i32,
    legacy_nanos: bool,
    interfaces: Interfaces,
}

const BUFFER: usize = 1 << 20;

impl<'r> CaptureReader<'r> {
    pub fn new(input: impl Read + Send + 'r) -> Result<CaptureReader<'r>, CaptureError> {
        let reader = create_reader(BUFFER, input).map_err(|_| CaptureError::NotACapture)?;
        Ok(CaptureReader {
            reader,
            state: FormatState {
                legacy_linktype: 1,
                legacy_nanos: false,
                interfaces: Interfaces::default(),
            },
        })
    }

    /// The next frame, `Ok(None)` at the end of the capture.
    pub fn next_frame(&mut self) -> Result<Option<CapturedFrame>, CaptureError> {
        let mut data = Vec::new();
        Ok(self
            .next_frame_into(&mut data)?
            .map(|(ts_ns, linktype)| CapturedFrame {
                ts_ns,
                linktype,
                data,
            }))
    }

    /// Like [`CaptureReader::next_frame`], into a buffer the caller reuses (no
    /// allocation per frame): returns the time and link type.
    pub fn next_frame_into(
        &mut self,
        data: &mut Vec<u8>,
    ) -> Result<Option<(u64, i32)>, CaptureError> {
        loop {
            let (consumed, frame) = match self.reader.next() {
                Ok((consumed, block)) => (consumed, self.state.frame_of(block, data)),
                Err(PcapError::Eof) => return Ok(None),
                Err(PcapError::Incomplete(_)) => match self.reader.refill() {
                    Ok(()) => continue,
                    Err(e) => return Err(CaptureError::Damaged(format!("{e:?}"))),
                },
                Err(PcapError::UnexpectedEof) => {
                    return Err(CaptureError::Damaged("ends inside a record".into()))
                }
                Err(e) => return Err(CaptureError::Damaged(format!("{e:?}"))),
            };
            self.reader.consume(consumed);
            if let Some(frame) = frame {
                return Ok(Some(frame));
            }
        }
    }
}

impl FormatState {
    /// Copies a packet block's bytes into `data`; returns its time and link type.
    fn frame_of(&mut self, block: PcapBlockOwned<'_>, data: &mut Vec<u8>) -> Option<(u64, i32)> {
        match block {
            PcapBlockOwned::LegacyHeader(header) => {
                self.legacy_linktype = header.network.0;
                self.legacy_nanos = header.is_nanosecond_precision();
                None
            }
            PcapBlockOwned::Legacy(record) => {
                let sub = if self.legacy_nanos { 1 } else { 1_000 };
                fill(data, record.data);
                Some((
                    u64::from(record.ts_sec) * 1_000_000_000 + u64::from(record.ts_usec) * sub,
                    self.legacy_linktype,
                ))
            }
            PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                self.interfaces.0.clear();
                None
            }
            PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                let resolution = idb.ts_resolution().unwrap_or(1_000_000);
                self.interfaces.0.push((idb.linktype.0, resolution));
                None
            }
            PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                let (linktype, resolution) = *self.interfaces.0.get(epb.if_id as usize)?;
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let ts_ns = if resolution == 0 {
                    0
                } else {
                    (u128::from(ticks) * 1_000_000_000 / u128::from(resolution)) as u64
                };
                let len = (epb.caplen as usize).min(epb.data.len());
                fill(data, &epb.data[..len]);
                Some((ts_ns, linktype))
            }
            PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                let (linktype, _) = *self.interfaces.0.first()?;
                fill(data, spb.data);
                Some((0, linktype))
            }
            PcapBlockOwned::NG(_) => None,
        }
    }
}

fn fill(data: &mut Vec<u8>, bytes: &[u8]) {
    data.clear();
    data.extend_from_slice(bytes);
}

/// Writes a minimal classic pcap (microsecond stamps) of `linktype`: for tests and for
/// tools that record what they send.
pub struct PcapWriter<W: std::io::Write> {
    out: W,
}

impl<W: std::io::Write> PcapWriter<W> {
    pub fn new(mut out: W, linktype: u32) -> std::io::Result<PcapWriter<W>> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&65_535u32.to_le_bytes());
        header.extend_from_slice(&linktype.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out })
    }

    pub fn write(&mut self, ts_ns: u64, frame: &[u8]) -> std::io::Result<()> {
        let mut record = Vec::with_capacity(16 + frame.len());
        record.extend_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&((ts_ns % 1_000_000_000 / 1_000) as u32).to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(frame);
        self.out.write_all(&record)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
