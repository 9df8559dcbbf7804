//! sockmsg-dump on captures made by the project itself: a session (handshake, chat
//! lines as CHAT frames in ordered messages, heartbeats, a key update, loss and so
//! retransmissions) between two simulated peers, every datagram written to a pcap as
//! Ethernet/IPv4/UDP, with the key log the peers kept.
//!
//! The committed capture `testdata/captures/session.pcap` (and `session.keylog`) comes
//! from `make_capture`; `SOCKMSG_WRITE_CAPTURE=1 cargo test -p sockmsg-tools --test dump`
//! writes it again.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Peer;
use sockmsg_tools::dump::capture::PcapWriter;
use sockmsg_tools::dump::decode::Body;
use sockmsg_tools::dump::{decode_capture, Decoder, KeyLog};
use sockmsg_tools::sim::{loopback, LinkConfig, Network};
use sockmsg_wire::frame::{Chat, ChatFlags, Fragment, Frame, Heartbeat, Member, MessageClass};
use sockmsg_wire::session::SessionConfig;
use sockmsg_wire::{Encode, List, Name};

const LINES: [&str; 8] = [
    "hello bob",
    "how are you?",
    "a third line",
    "fourth",
    "fifth: ünïcödé",
    "sixth",
    "seventh",
    "bye",
];

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/captures")
}

fn chat(seq: u64, text: &str) -> Vec<u8> {
    let frame = Frame::Chat(Chat {
        sender: Name::new("alice").unwrap(),
        incarnation: 7,
        seq,
        flags: ChatFlags::empty(),
        fragment: Fragment::whole(text.as_bytes()).unwrap(),
    });
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

/// A HEARTBEAT from alice listing alice and bob.
fn heartbeat() -> Vec<u8> {
    let member = |name, host| Member {
        name: Name::new(name).unwrap(),
        addr: loopback(host, 7402),
        rank: u64::from(host),
        incarnation: 7,
    };
    let members = [member("alice", 1), member("bob", 2)];
    let frame = Frame::Heartbeat(Heartbeat {
        term: 1,
        leader: Name::new("alice").unwrap(),
        membership_term: 1,
        membership_version: 2,
        members: List::new(&members).unwrap(),
    });
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

/// Ethernet + IPv4 + UDP around `payload`.
fn ethernet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only here");
    };
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).unwrap();
    out
}

/// A session with loss, chat, heartbeats and a key update; the pcap and the key log.
fn make_capture() -> (Vec<u8>, String) {
    let (a, b) = (loopback(1, 7402), loopback(2, 7402));
    let mut net = Network::new(4242);
    let now = net.now();
    let config = SessionConfig {
        keylog: true,
        rekey_after_packets: 12,
        ..SessionConfig::default()
    };
    net.add_node(a, Peer::test("alice", 4242, now, config.clone()))
        .unwrap();
    net.add_node(b, Peer::test("bob", 4242, now, config))
        .unwrap();
    net.set_link_both(
        a,
        b,
        LinkConfig {
            delay: Duration::from_micros(300),
            loss: 0.2,
            ..LinkConfig::default()
        },
    )
    .unwrap();
    let handle = net.node_mut(a).endpoint.connect(now, b, "bob");
    for (i, line) in LINES.iter().enumerate() {
        net.node_mut(a)
            .endpoint
            .send(handle, MessageClass::Ordered, &chat(i as u64 + 1, line))
            .unwrap();
        for _ in 0..4 {
            net.node_mut(a)
                .endpoint
                .send(handle, MessageClass::Unreliable, &heartbeat())
                .unwrap();
            net.run_for(Duration::from_millis(10)).unwrap();
        }
    }
    net.run_while(
        |net| net.node(b).messages_of(MessageClass::Ordered).len() < LINES.len(),
        Duration::from_secs(10),
    )
    .expect("all lines arrive");
    net.run_for(Duration::from_millis(100)).unwrap();
    let secrets = net
        .node(a)
        .endpoint
        .connection(handle)
        .and_then(|c| c.keylog_secrets())
        .expect("keylog kept");
    let mut keylog = String::from("# sockmsg key log (SPEC.md §5.4)\n");
    for (cid, secret) in secrets {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        keylog += &format!("SOCKMSG_TRAFFIC_SECRET {cid:016x} {hex}\n");
    }
    let mut datagrams: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    for (from, node) in [(a, net.node(a)), (b, net.node(b))] {
        for ((to, bytes), at) in node.sent.iter().zip(&node.sent_at) {
            datagrams.push((*at, from, *to, bytes.clone()));
        }
    }
    datagrams.sort_by_key(|d| d.0);
    let epoch = 1_767_225_600_000_000_000u64; // 2026-01-01
    let mut pcap = PcapWriter::new(Vec::new(), 1).unwrap();
    for (at, from, to, bytes) in &datagrams {
        let ts = epoch + (*at - now).as_nanos() as u64;
        pcap.write(ts, &ethernet(*from, *to, bytes)).unwrap();
    }
    (pcap.into_inner(), keylog)
}

fn committed() -> (Vec<u8>, String) {
    static WRITTEN: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    WRITTEN.get_or_init(|| {
        if std::env::var_os("SOCKMSG_WRITE_CAPTURE").is_some() {
            let (pcap, keylog) = make_capture();
            std::fs::create_dir_all(testdata()).unwrap();
            std::fs::write(testdata().join("session.pcap"), &pcap).unwrap();
            std::fs::write(testdata().join("session.keylog"), &keylog).unwrap();
        }
    });
    (
        std::fs::read(testdata().join("session.pcap")).expect("committed capture"),
        std::fs::read_to_string(testdata().join("session.keylog")).expect("committed key log"),
    )
}

struct Run {
    packets: Vec<sockmsg_tools::dump::DecodedPacket>,
    decoder: Decoder,
}

fn dump(pcap: &[u8], keylog: &str) -> Run {
    let mut decoder = Decoder::new([7402], KeyLog::parse(keylog).unwrap());
    // A damaged tail ends the capture (the reader says why; the packets before stand).
    let capture = decode_capture(pcap, &mut decoder).expect("a capture");
    Run {
        packets: capture.packets,
        decoder,
    }
}

fn chat_lines(run: &Run) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &run.packets {
        if let Body::Frames(frames) = &p.body {
            for f in frames.iter().filter(|f| !f.retransmission) {
                for inner in f.inner.iter().filter(|i| i.name == "CHAT") {
                    lines.push(inner.summary.clone());
                }
            }
        }
    }
    lines
}

#[test]
fn every_packet_of_the_capture_decodes_and_the_key_log_opens_the_chat() {
    let (pcap, keylog) = committed();
    let run = dump(&pcap, &keylog);
    let stats = &run.decoder.stats;
    assert!(stats.packets > 20, "{stats:?}");
    assert_eq!(stats.malformed, 0, "{stats:?}");
    assert_eq!(stats.protected, 0, "every DATA packet opened: {stats:?}");
    assert_eq!(stats.decrypted, stats.by_type["DATA"]);
    assert_eq!(stats.handshakes, 1);
    assert!(stats.retransmitted_frames > 0, "20 % loss: {stats:?}");
    let lines = chat_lines(&run);
    for line in LINES {
        assert!(
            lines.iter().any(|l| l.contains(&format!("{line:?}"))),
            "{line} in {lines:?}"
        );
    }
    // Key updates happened (every 12 packets) and were followed.
    assert!(run
        .packets
        .iter()
        .any(|p| p.header.as_ref().is_some_and(|h| h.key_phase)));
    // Heartbeats decode inside their unreliable messages; nothing inside is malformed.
    let inner: Vec<&str> = run
        .packets
        .iter()
        .filter_map(|p| match &p.body {
            Body::Frames(frames) => Some(frames),
            _ => None,
        })
        .flatten()
        .flat_map(|f| f.inner.iter().map(|i| i.name))
        .collect();
    assert!(inner.contains(&"HEARTBEAT"));
    assert!(!inner.contains(&"MALFORMED"));

    // Without the key log: the same packets, DATA shown as protected.
    let blind = dump(&pcap, "");
    assert_eq!(blind.packets.len(), run.packets.len());
    assert_eq!(blind.decoder.stats.protected, stats.by_type["DATA"]);
    assert!(chat_lines(&blind).is_empty());
}

#[test]
fn corrupted_and_truncated_packets_are_shown_and_the_rest_decodes() {
    let (pcap, keylog) = committed();
    let clean = dump(&pcap, &keylog);
    // Flip a byte in the sockmsg payload of every fifth frame (after the Ethernet, IP
    // and UDP headers: 14 + 20 + 8), then cut the file inside its last record.
    let mut damaged = pcap.clone();
    let mut offset = 24;
    let mut index = 0;
    while offset + 16 <= damaged.len() {
        let len = u32::from_le_bytes(damaged[offset + 8..offset + 12].try_into().unwrap()) as usize;
        let data = offset + 16;
        if index % 5 == 2 && len > 42 + 30 {
            damaged[data + 42 + 30] ^= 0x5a;
        }
        if index % 5 == 4 && len > 42 + 2 {
            damaged[data + 42] = b'X'; // the magic
        }
        offset = data + len;
        index += 1;
    }
    damaged.truncate(damaged.len() - 10);
    let run = dump(&damaged, &keylog);
    let stats = &run.decoder.stats;
    assert!(stats.malformed > 0, "{stats:?}");
    assert!(
        run.packets.len() >= clean.packets.len() - 1,
        "every datagram still listed (but the cut one): {} of {}",
        run.packets.len(),
        clean.packets.len()
    );
    let fine = run
        .packets
        .iter()
        .filter(|p| matches!(p.body, Body::Frames(_)))
        .count();
    assert!(
        fine > run.packets.len() / 2,
        "{fine} of {}",
        run.packets.len()
    );
}

#[test]
fn the_binary_prints_lines_json_that_parses_and_a_summary() {
    let bin = env!("CARGO_BIN_EXE_sockmsg-dump");
    let dir = testdata();
    let out = std::process::Command::new(bin)
        .arg("--json")
        .arg("--keylog")
        .arg(dir.join("session.keylog"))
        .arg(dir.join("session.pcap"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let values: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    let summary = values.last().unwrap();
    assert_eq!(summary["summary"]["malformed"], 0);
    let packets = &values[..values.len() - 1];
    assert!(packets
        .iter()
        .all(|p| p["type"].is_string() && p["cid"].is_string()));
    assert!(packets.iter().any(|p| p["retransmission"] == true));
    assert!(packets
        .iter()
        .flat_map(|p| p["frames"].as_array().unwrap())
        .flat_map(|f| f["frames"].as_array().cloned().unwrap_or_default())
        .any(|g| g["type"] == "CHAT"));

    // Line output from stdin, summary on stderr.
    let file = std::fs::File::open(dir.join("session.pcap")).unwrap();
    let out = std::process::Command::new(bin)
        .arg("-")
        .stdin(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text
        .lines()
        .any(|l| l.contains("INITIAL") && l.contains("HANDSHAKE_INIT")));
    assert!(text.contains("[protected: no key; use --keylog]"));
    let summary = String::from_utf8(out.stderr).unwrap();
    assert!(summary.contains("handshakes 1"), "{summary}");

    // Not a capture: a clear error, no panic.
    let out = std::process::Command::new(bin).arg(bin).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pcap"));
}

#[test]
fn live_capture_on_loopback_shows_sockmsg_datagrams() {
    use std::io::{BufRead, BufReader};
    let bin = env!("CARGO_BIN_EXE_sockmsg-dump");
    // A port of our own, so that other traffic on the host does not count.
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_nonblocking(true).unwrap();
    let port = receiver.local_addr().unwrap().port();
    let mut child = std::process::Command::new(bin)
        .args(["-i", "lo", "-c", "2", "--json", "--port"])
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for it to say it is capturing (or why it cannot).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    if !line.contains("capturing on lo") {
        let _ = child.wait();
        assert!(line.contains("needs root"), "{line}");
        eprintln!("SKIPPED live capture: not root here ({})", line.trim());
        return;
    }
    let mut request = Vec::new();
    sockmsg_wire::encode_cleartext_packet(
        &mut request,
        sockmsg_wire::PacketType::REQUEST,
        42,
        0,
        &[Frame::LeaderQuery(sockmsg_wire::frame::LeaderQuery {
            group: Name::new("lobby").unwrap(),
        })],
    )
    .unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Until the two packets are seen (a bounded number of tries).
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Paces a bounded stream (the capture may start a moment after it said so).
        scope.spawn(|| {
            for _ in 0..100 {
                if done.load(std::sync::atomic::Ordering::Relaxed)
                    || sender.send_to(&request, ("127.0.0.1", port)).is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut line = String::new();
        while seen.len() < 2 && stdout.read_line(&mut line).unwrap() > 0 {
            seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
            line.clear();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let status = child.wait().unwrap();
    assert!(status.success());
    for packet in &seen[..2] {
        assert_eq!(packet["type"], "REQUEST", "{packet}");
        assert_eq!(packet["frames"][0]["type"], "LEADER_QUERY");
    }
}
