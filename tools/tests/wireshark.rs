//! The Wireshark dissector (`tools/wireshark/sockmsg.lua`) agrees with the codec: tshark
//! runs it on the committed capture, and every packet's type, connection id and packet
//! number, and the handshake's names and ids, must match what sockmsg-dump decodes.
//!
//! Needs tshark (`.ci/run` installs it from Debian's packages); where it is missing the
//! test says so and passes without running.

use std::path::PathBuf;
use std::process::Command;

use sockmsg_tools::dump::decode::Body;
use sockmsg_tools::dump::{decode_capture, Decoder, KeyLog};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn tshark_with_the_lua_dissector_reads_what_the_codec_reads() {
    let capture = root().join("testdata/captures/session.pcap");
    let script = root().join("tools/wireshark/sockmsg.lua");
    let output = Command::new("tshark")
        .arg("-X")
        .arg(format!("lua_script:{}", script.display()))
        .arg("-r")
        .arg(&capture)
        .args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"])
        .args([
            "-e",
            "sockmsg.type",
            "-e",
            "sockmsg.cid",
            "-e",
            "sockmsg.pn",
        ])
        .args(["-e", "sockmsg.initiator", "-e", "sockmsg.responder"])
        .args(["-e", "sockmsg.initiator_cid", "-e", "sockmsg.group"])
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            eprintln!("SKIPPED tshark_with_the_lua_dissector…: cannot run tshark ({e}); install it (Debian: tshark)");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tshark failed: {stderr}");
    assert!(
        !stderr.contains("Lua: Error"),
        "the dissector failed to load: {stderr}"
    );
    let rows: Vec<Vec<String>> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect();

    // The same capture through the codec.
    let mut decoder = Decoder::new([7402], KeyLog::default());
    let decoded = decode_capture(std::fs::File::open(&capture).unwrap(), &mut decoder).unwrap();
    assert!(decoded.error.is_none(), "{:?}", decoded.error);
    assert_eq!(
        (decoded.extractor.skipped, decoded.extractor.malformed),
        (0, 0),
        "every frame is UDP"
    );
    let packets = decoded.packets;
    assert_eq!(rows.len(), packets.len(), "one row per packet");
    let type_code = |name: &str| match name {
        "INITIAL" => "0x01",
        "RETRY" => "0x02",
        "HANDSHAKE" => "0x03",
        "DATA" => "0x04",
        "REQUEST" => "0x05",
        "RESPONSE" => "0x06",
        other => panic!("{other}"),
    };
    let mut handshake_fields = 0;
    for (row, packet) in rows.iter().zip(&packets) {
        let header = packet.header.as_ref().expect("every packet decodes");
        assert_eq!(row[0], type_code(header.packet_type), "{row:?}");
        assert_eq!(
            row[1].trim_start_matches("0x"),
            format!("{:016x}", header.connection_id),
            "{row:?}"
        );
        assert_eq!(row[2], header.packet_number.to_string(), "{row:?}");
        if let Body::Frames(frames) = &packet.body {
            for frame in frames {
                if frame.name == "HANDSHAKE_INIT" {
                    // "group=lobby initiator=alice cid=…"
                    assert!(
                        frame.summary.contains(&format!("initiator={}", row[3])),
                        "{row:?}"
                    );
                    assert!(
                        frame.summary.contains(&format!("group={}", row[6])),
                        "{row:?}"
                    );
                    assert!(
                        frame.summary.contains(row[5].trim_start_matches("0x")),
                        "{row:?}"
                    );
                    handshake_fields += 1;
                }
                if frame.name == "HANDSHAKE_RESPONSE" {
                    assert_eq!(frame.summary, format!("responder={}", row[4]));
                    handshake_fields += 1;
                }
            }
        }
    }
    assert!(
        handshake_fields >= 3,
        "handshake frames compared: {handshake_fields}"
    );
}
