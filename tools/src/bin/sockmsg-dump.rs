//! `sockmsg-dump`: decode captured sockmsg traffic.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sockmsg_tools::dump::{
    CaptureReader, DecodedPacket, Decoder, Format, KeyLog, Printer, Stats, UdpExtractor,
};

/// Decodes sockmsg traffic from a pcap or pcapng capture, stdin, or a live interface.
///
/// One line per packet, as tshark prints: time since the first packet, source →
/// destination, packet type, connection id, packet number, and the frames with their key
/// fields ("retransmission" where a frame repeats an earlier one). DATA packets are
/// encrypted: give the key log a node wrote with SOCKMSG_KEYLOG=FILE (--keylog FILE) to
/// see their frames, and the group frames (heartbeats, votes, chat) inside them.
/// A summary follows on stderr (or, with --json, as a last object).
///
/// Examples:
///   sockmsg-dump capture.pcapng
///   tcpdump -i eth0 -w - udp portrange 7400-7410 | sockmsg-dump -
///   SOCKMSG_KEYLOG=keys.log sockmsg-node ...; sockmsg-dump --keylog keys.log capture.pcap
///   sudo sockmsg-dump -i eth0
#[derive(Debug, Parser)]
#[command(
    name = "sockmsg-dump",
    version,
    disable_version_flag = true,
    verbatim_doc_comment
)]
struct Cli {
    /// Print the version.
    #[arg(long, action = clap::ArgAction::Version)]
    version: Option<bool>,

    /// Capture file (pcap or pcapng); "-" reads stdin.
    #[arg(value_name = "FILE", required_unless_present = "interface")]
    input: Option<PathBuf>,

    /// Capture live on IFACE (Linux; needs root or CAP_NET_RAW).
    #[arg(
        short = 'i',
        long = "interface",
        value_name = "IFACE",
        conflicts_with = "input"
    )]
    interface: Option<String>,

    /// UDP ports that carry sockmsg (repeatable). Default: the proxy, key manager and
    /// node ports of config.yml (7400, 7401, 7402). Datagrams on other ports are
    /// decoded when their header's magic and version say sockmsg.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,

    /// Configuration file whose ports are the default (see config.yml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Key log written by a node (SOCKMSG_KEYLOG): decrypts DATA packets.
    #[arg(long, value_name = "FILE")]
    keylog: Option<PathBuf>,

    /// Every field of every frame.
    #[arg(short = 'V', long)]
    verbose: bool,

    /// One JSON object per packet (stable field names), then a summary object.
    #[arg(long, conflicts_with = "verbose")]
    json: bool,

    /// Stop after this many sockmsg packets.
    #[arg(short = 'c', long, value_name = "N")]
    count: Option<u64>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockmsg-dump: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = match &cli.config {
        Some(path) => sockmsg_config::Config::load(path)?,
        None => sockmsg_config::Config::default(),
    };
    let ports = if cli.ports.is_empty() {
        vec![
            config.proxy.address.port(),
            config.keymgr.address.port(),
            config.node.bind.port(),
        ]
    } else {
        cli.ports.clone()
    };
    let keylog = match &cli.keylog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key log {}", path.display()))?;
            KeyLog::parse(&text).with_context(|| format!("key log {}", path.display()))?
        }
        None => KeyLog::default(),
    };
    let format = if cli.json {
        Format::Json
    } else if cli.verbose {
        Format::Verbose
    } else {
        Format::Line
    };
    let live = cli.interface.is_some();
    let writer = Writer::spawn(format, live);
    let mut dump = Dump {
        decoder: if format == Format::Verbose {
            Decoder::new(ports, keylog).with_detail()
        } else {
            Decoder::new(ports, keylog)
        },
        extractor: UdpExtractor::default(),
        batch: Vec::with_capacity(BATCH),
        writer,
        count: cli.count,
        printed: 0,
        live,
        keylog_path: cli.keylog.clone(),
        keylog_seen: cli
            .keylog
            .as_ref()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()),
    };
    let result = match (&cli.interface, &cli.input) {
        (Some(iface), _) => live::capture(iface, &mut dump),
        (None, Some(path)) if path.as_os_str() == "-" => dump.file(std::io::stdin()),
        (None, Some(path)) => match File::open(path) {
            Ok(file) => dump.file(file),
            Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
        },
        (None, None) => Err(anyhow::anyhow!(
            "give a capture file, - for stdin, or -i IFACE"
        )),
    };
    dump.finish()?;
    result
}

/// Decoded packets handed to the writer at once.
const BATCH: usize = 512;

/// What the decoding side sends to the writing side.
enum ToWriter {
    Packets(Vec<DecodedPacket>),
    Summary(Stats, [(&'static str, u64); 2]),
}

/// Printing runs on its own thread: on two cores, decoding (decryption, frames) and
/// rendering (text, JSON) each get one, which doubles the packets per second.
struct Writer {
    send: std::sync::mpsc::SyncSender<ToWriter>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Writer {
    fn spawn(format: Format, live: bool) -> Writer {
        let (send, receive) = std::sync::mpsc::sync_channel::<ToWriter>(64);
        let thread = std::thread::spawn(move || {
            let out = BufWriter::with_capacity(1 << 16, std::io::stdout());
            let mut printer = Printer::new(out, format);
            for message in receive {
                match message {
                    ToWriter::Packets(packets) => {
                        for packet in &packets {
                            printer.packet(packet)?;
                        }
                        if live {
                            printer.flush()?;
                        }
                    }
                    ToWriter::Summary(stats, extra) => printer.summary(&stats, &extra)?,
                }
            }
            printer.flush()
        });
        Writer { send, thread }
    }
}

/// The pipeline for one run.
struct Dump {
    decoder: Decoder,
    extractor: UdpExtractor,
    batch: Vec<DecodedPacket>,
    writer: Writer,
    count: Option<u64>,
    printed: u64,
    live: bool,
    /// Live capture: the key log is read again when nodes append to it.
    keylog_path: Option<PathBuf>,
    keylog_seen: Option<std::time::SystemTime>,
}

impl Dump {
    /// Reads the key log again if it changed (sessions that began after the start).
    fn refresh_keylog(&mut self) {
        let Some(path) = &self.keylog_path else {
            return;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == self.keylog_seen {
            return;
        }
        self.keylog_seen = modified;
        match std::fs::read_to_string(path).map(|text| KeyLog::parse(&text)) {
            Ok(Ok(keys)) => self.decoder.add_keys(keys),
            Ok(Err(e)) => eprintln!("sockmsg-dump: warning: key log: {e}"),
            Err(e) => eprintln!("sockmsg-dump: warning: key log: {e}"),
        }
    }

    fn file(&mut self, input: impl Read + Send) -> Result<()> {
        let mut reader = CaptureReader::new(input)?;
        let mut data = Vec::with_capacity(2048);
        loop {
            match reader.next_frame_into(&mut data) {
                Ok(Some((ts_ns, linktype))) => {
                    if !self.frame(ts_ns, linktype, &data)? {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                // A capture cut short (the capturing process was killed): what came
                // before stands, as tcpdump and tshark treat it.
                Err(e) => {
                    eprintln!("sockmsg-dump: warning: {e}; the packets before are shown");
                    return Ok(());
                }
            }
        }
    }

    /// Handles one captured frame; false once `--count` is reached.
    fn frame(&mut self, ts_ns: u64, linktype: i32, data: &[u8]) -> Result<bool> {
        let Some(udp) = self.extractor.extract(ts_ns, linktype, data) else {
            return Ok(true);
        };
        for packet in self.decoder.decode(ts_ns, &udp) {
            self.batch.push(packet);
            self.printed += 1;
            if self.count.is_some_and(|n| self.printed >= n) {
                self.hand_over()?;
                return Ok(false);
            }
        }
        if self.live || self.batch.len() >= BATCH {
            self.hand_over()?;
        }
        Ok(true)
    }

    fn hand_over(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if self.writer.send.send(ToWriter::Packets(batch)).is_err() {
            bail!("the output is closed");
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.hand_over()?;
        let extra = [
            ("frames_not_udp", self.extractor.skipped),
            ("frames_malformed", self.extractor.malformed),
        ];
        let _ = self
            .writer
            .send
            .send(ToWriter::Summary(self.decoder.stats.clone(), extra));
        drop(self.writer.send);
        match self.writer.thread.join() {
            Ok(result) => result.context("writing the output"),
            Err(_) => bail!("the output thread failed"),
        }
    }
}

/// Live capture on Linux with an AF_PACKET socket (every frame of the interface, as
/// Ethernet; sockmsg datagrams are picked out like in a file).
mod live {
    use super::*;

    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }

    pub fn capture(iface: &str, dump: &mut Dump) -> Result<()> {
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            bail!("no interface named {iface}");
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the descriptor is closed by OwnedFd.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(protocol)) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                bail!(
                    "live capture needs root (or CAP_NET_RAW): run with sudo, or capture \
                     with `tcpdump -w - udp | sockmsg-dump -`"
                );
            }
            return Err(e).context("AF_PACKET socket");
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: a zeroed sockaddr_ll with the fields bind(2) needs.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("bind to the interface");
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
        let loopback = iface == "lo" || iface.starts_with("lo:");
        eprintln!("sockmsg-dump: capturing on {iface} (Ctrl-C stops and prints the summary)");
        let mut buf = vec![0u8; 65_536];
        let mut checked = std::time::Instant::now();
        while !STOP.load(Ordering::Relaxed) {
            if checked.elapsed() >= std::time::Duration::from_millis(500) {
                dump.refresh_keylog();
                checked = std::time::Instant::now();
            }
            // SAFETY: recvfrom into a buffer and a sockaddr_ll we own, of the sizes given.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = unsafe {
                libc::recvfrom(
                    raw,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(e).context("capture"),
                }
            }
            // On loopback every packet passes twice, leaving and arriving; keep the
            // arrival (as libpcap does).
            if loopback && from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let ts_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            if !dump.frame(
                ts_ns,
                sockmsg_tools::dump::net::linktype::ETHERNET,
                &buf[..n as usize],
            )? {
                break;
            }
        }
        Ok(())
    }
}
