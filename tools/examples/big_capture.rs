//! Writes a large capture for the sockmsg-dump throughput measurement: the records of
//! `testdata/captures/session.pcap` repeated, 1 µs apart, until N packets.
//!
//! `cargo run --release -p sockmsg-tools --example big_capture -- 1000000 /tmp/big.pcap`,
//! then `time sockmsg-dump --json --keylog testdata/captures/session.keylog /tmp/big.pcap >/dev/null`.

use std::io::BufWriter;

use sockmsg_tools::dump::capture::PcapWriter;
use sockmsg_tools::dump::CaptureReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().ok_or("usage: big_capture N FILE")?.parse()?;
    let path = args.next().ok_or("usage: big_capture N FILE")?;
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/captures/session.pcap"
    );
    let mut reader = CaptureReader::new(std::fs::File::open(source)?)?;
    let mut frames = Vec::new();
    while let Some(frame) = reader.next_frame()? {
        frames.push(frame.data);
    }
    let out = BufWriter::new(std::fs::File::create(&path)?);
    let mut pcap = PcapWriter::new(out, 1)?;
    let start = 1_767_225_600_000_000_000u64;
    for i in 0..count {
        pcap.write(start + i * 1_000, &frames[i as usize % frames.len()])?;
    }
    println!("{count} packets written to {path}");
    Ok(())
}
