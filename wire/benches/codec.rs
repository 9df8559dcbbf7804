//! Codec speed: decode and encode of a header + CHAT packet and of a HEARTBEAT with 16
//! members. Target (issue 3): decode of header + CHAT under 50 ns.
//!
//! Run: `cargo bench -p sockmsg-wire --bench codec`

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sockmsg_wire::frame::{Chat, ChatFlags, Fragment, Heartbeat, Member};
use sockmsg_wire::{
    Datagram, Encode, Frame, Frames, Header, List, Name, PacketFlags, PacketType, HEADER_LEN,
};

const LINE: &[u8] = b"the quick brown fox jumps over the lazy dog, twice over, in one chat line";

fn chat_frame() -> Frame<'static> {
    Frame::Chat(Chat {
        sender: Name::new("alice").unwrap(),
        incarnation: 0x0102_0304_0506_0708,
        seq: 42,
        flags: ChatFlags::empty(),
        fragment: Fragment::whole(LINE).unwrap(),
    })
}

/// A DATA packet as the receiver sees it after decryption: header, then the plaintext
/// CHAT frame (the tag is gone).
fn chat_packet() -> Vec<u8> {
    let frame = chat_frame();
    let header = Header::new(
        PacketType::DATA,
        PacketFlags::empty(),
        7,
        99,
        (frame.encoded_len() + 16) as u16,
    );
    let mut buf = header.as_wire_bytes().to_vec();
    frame.encode(&mut buf);
    buf.extend_from_slice(&[0; 16]);
    buf
}

fn members(names: &'static [String]) -> Vec<Member<'static>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| Member {
            name: Name::new(name).unwrap(),
            addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, i as u8), 7402)),
            rank: i as u64 * 7919,
            incarnation: i as u64,
        })
        .collect()
}

fn bench_chat(c: &mut Criterion) {
    let packet = chat_packet();
    let mut group = c.benchmark_group("chat");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode header+CHAT", |b| {
        b.iter(|| {
            let bytes = black_box(packet.as_slice());
            let packet = Datagram::new(bytes).next().unwrap().unwrap();
            let plaintext = &packet.payload()[..packet.payload().len() - 16];
            let frame = Frames::new(PacketType::DATA, plaintext, HEADER_LEN)
                .next()
                .unwrap()
                .unwrap();
            black_box(frame);
        })
    });
    let frame = chat_frame();
    let mut buf = Vec::with_capacity(1200);
    group.bench_function("encode header+CHAT", |b| {
        b.iter(|| {
            buf.clear();
            let frame = black_box(&frame);
            let payload_len = (frame.encoded_len() + 16) as u16;
            let header = Header::new(PacketType::DATA, PacketFlags::empty(), 7, 99, payload_len);
            buf.extend_from_slice(header.as_wire_bytes());
            frame.encode(&mut buf);
            black_box(&buf);
        })
    });
    group.finish();
}

fn bench_heartbeat(c: &mut Criterion) {
    let names: &'static [String] = Box::leak((0..16).map(|i| format!("member-{i:02}")).collect());
    let members: &'static [Member<'static>] = Box::leak(members(names).into_boxed_slice());
    let frame = Frame::Heartbeat(Heartbeat {
        term: 12,
        leader: Name::new("member-00").unwrap(),
        membership_term: 11,
        membership_version: 31,
        members: List::new(members).unwrap(),
    });
    let mut encoded = Vec::new();
    frame.encode(&mut encoded);

    let mut group = c.benchmark_group("heartbeat16");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("decode HEARTBEAT + iterate 16 members", |b| {
        b.iter(|| {
            let (frame, _) = Frame::decode(black_box(&encoded), 0).unwrap();
            let Frame::Heartbeat(heartbeat) = frame else {
                unreachable!()
            };
            let ranks: u64 = heartbeat.members.iter().map(|m| m.rank).sum();
            black_box(ranks);
        })
    });
    let mut buf = Vec::with_capacity(1200);
    group.bench_function("encode HEARTBEAT", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&frame).encode(&mut buf);
            black_box(&buf);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_chat, bench_heartbeat);
criterion_main!(benches);
