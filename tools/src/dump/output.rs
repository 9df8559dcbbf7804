//! Printing decoded packets: one line each (like tshark), every field (`-V`), or one
//! JSON object each (`--json`, stable field names); and the summary.

use std::io::{self, Write};

use serde::Serialize;

use super::decode::{Body, DecodedPacket, FrameInfo, Stats};

/// How packets are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Line,
    Verbose,
    Json,
}

/// Writes packets to `out` (buffered by the caller).
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    first_ts: Option<u64>,
    number: u64,
    /// Addresses rendered once each (a capture has few; formatting them per packet was
    /// a tenth of the JSON output's time).
    addrs: std::collections::HashMap<std::net::SocketAddr, String>,
}

#[derive(Serialize)]
struct JsonFrame<'a> {
    #[serde(rename = "type")]
    name: &'a str,
    summary: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retransmission: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    frames: Vec<JsonFrame<'a>>,
}

/// Serialises through `Display`, without an intermediate String.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// A connection id as 16 hex digits.
struct Cid(u64);

impl std::fmt::Display for Cid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Serialize)]
struct JsonPacket<'a> {
    no: u64,
    ts: f64,
    src: &'a str,
    dst: &'a str,
    #[serde(rename = "type")]
    packet_type: Option<&'a str>,
    cid: Option<Shown<Cid>>,
    pn: Option<u64>,
    key_phase: Option<bool>,
    len: Option<usize>,
    protected: bool,
    decrypted: bool,
    malformed: Option<&'a str>,
    retransmission: bool,
    frames: Vec<JsonFrame<'a>>,
}

fn json_frames(frames: &[FrameInfo]) -> Vec<JsonFrame<'_>> {
    frames
        .iter()
        .map(|f| JsonFrame {
            name: f.name,
            summary: &f.summary,
            retransmission: f.retransmission,
            frames: json_frames(&f.inner),
        })
        .collect()
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format) -> Printer<W> {
        Printer {
            out,
            format,
            first_ts: None,
            number: 0,
            addrs: std::collections::HashMap::new(),
        }
    }

    pub fn packet(&mut self, packet: &DecodedPacket) -> io::Result<()> {
        self.number += 1;
        let first = *self.first_ts.get_or_insert(packet.ts_ns);
        let rel = packet.ts_ns.saturating_sub(first) as f64 / 1e9;
        match self.format {
            Format::Json => self.json(packet),
            Format::Line | Format::Verbose => self.line(packet, rel),
        }
    }

    fn json(&mut self, p: &DecodedPacket) -> io::Result<()> {
        if self.addrs.len() > 65_536 {
            self.addrs.clear();
        }
        for addr in [p.src, p.dst] {
            self.addrs.entry(addr).or_insert_with(|| addr.to_string());
        }
        let (src, dst) = (&self.addrs[&p.src], &self.addrs[&p.dst]);
        let (frames, malformed) = match &p.body {
            Body::Frames(frames) => (json_frames(frames), None),
            Body::Protected => (Vec::new(), None),
            Body::Malformed(why) => (Vec::new(), Some(why.as_str())),
        };
        let h = p.header.as_ref();
        let packet = JsonPacket {
            no: self.number,
            ts: p.ts_ns as f64 / 1e9,
            src,
            dst,
            packet_type: h.map(|h| h.packet_type),
            cid: h.map(|h| Shown(Cid(h.connection_id))),
            pn: h.map(|h| h.packet_number),
            key_phase: h.map(|h| h.key_phase),
            len: h.map(|h| h.len),
            protected: matches!(p.body, Body::Protected),
            decrypted: h.is_some_and(|h| h.decrypted),
            malformed,
            retransmission: p.is_retransmission(),
            frames,
        };
        let result = serde_json::to_writer(&mut self.out, &packet);
        result?;
        self.out.write_all(b"\n")
    }

    fn line(&mut self, p: &DecodedPacket, rel: f64) -> io::Result<()> {
        let head = match &p.header {
            Some(h) => format!(
                "{:<9} cid={:016x} pn={}{}",
                h.packet_type,
                h.connection_id,
                h.packet_number,
                if h.key_phase { " kp=1" } else { "" }
            ),
            None => "MALFORMED".to_owned(),
        };
        let body = match &p.body {
            Body::Frames(frames) => frames.iter().map(frame_text).collect::<Vec<_>>().join(", "),
            Body::Protected => "[protected: no key; use --keylog]".into(),
            Body::Malformed(why) => format!("[malformed: {why}]"),
        };
        writeln!(
            self.out,
            "{:>6} {:>12.6} {} → {} {head} {body}",
            self.number, rel, p.src, p.dst
        )?;
        if self.format == Format::Verbose {
            if let Body::Frames(frames) = &p.body {
                for f in frames {
                    writeln!(self.out, "         {}", f.detail)?;
                    for inner in &f.inner {
                        writeln!(self.out, "           {}", inner.detail)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The summary, after the packets (to stderr for line output, as a last JSON
    /// object for `--json`).
    pub fn summary(&mut self, stats: &Stats, extra: &[(&str, u64)]) -> io::Result<()> {
        if self.format == Format::Json {
            let mut value = serde_json::json!({
                "summary": {
                    "datagrams": stats.datagrams,
                    "packets": stats.packets,
                    "by_type": stats.by_type,
                    "malformed": stats.malformed,
                    "protected": stats.protected,
                    "decrypted": stats.decrypted,
                    "handshakes": stats.handshakes,
                    "retransmitted_frames": stats.retransmitted_frames,
                    "retransmission_rate": stats.retransmission_rate(),
                }
            });
            for (k, v) in extra {
                value["summary"][*k] = (*v).into();
            }
            serde_json::to_writer(&mut self.out, &value)?;
            return self.out.write_all(b"\n");
        }
        let by_type: Vec<String> = stats
            .by_type
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let mut err = io::stderr().lock();
        writeln!(err, "---")?;
        writeln!(
            err,
            "{} packets in {} datagrams: {}",
            stats.packets,
            stats.datagrams,
            by_type.join(", ")
        )?;
        writeln!(
            err,
            "handshakes {}, retransmitted frames {} ({:.2} %), malformed {}, protected (no key) {}, decrypted {}",
            stats.handshakes,
            stats.retransmitted_frames,
            stats.retransmission_rate() * 100.0,
            stats.malformed,
            stats.protected,
            stats.decrypted
        )?;
        for (k, v) in extra {
            writeln!(err, "{k}: {v}")?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn frame_text(f: &FrameInfo) -> String {
    let mut text = if f.summary.is_empty() {
        f.name.to_owned()
    } else {
        format!("{} {}", f.name, f.summary)
    };
    if !f.inner.is_empty() {
        let inner: Vec<String> = f.inner.iter().map(frame_text).collect();
        text += &format!(" [{}]", inner.join(", "));
    }
    if f.retransmission {
        text += " (retransmission)";
    }
    text
}
