//! The session layer under the simulator: many seeds of loss, duplication, reordering,
//! jitter and a healing partition, with the delivery invariants checked at the end of
//! every run. A failing seed is printed; `SOCKMSG_SIM_SEED=N` replays it alone and
//! `SOCKMSG_SIM_SEEDS=N` runs more of them.
//!
//! The simulator uses the cheap deterministic test signer (real RSA is on the path in
//! `session_security.rs` and the loopback benchmark), so a thousand schedules run in
//! seconds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sockmsg_tools::sim::{for_each_seed, loopback, LinkConfig, Network};

mod common;
use common::Peer;
use sockmsg_wire::frame::MessageClass;
use sockmsg_wire::session::{Event, SessionConfig};

/// Timeouts long enough that a bad schedule delays delivery rather than ending the
/// session: the invariant under test is delivery, not giving up.
fn patient_config() -> SessionConfig {
    SessionConfig {
        handshake_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(300),
        unreachable_after: Duration::from_secs(300),
        ..SessionConfig::default()
    }
}

/// A message whose bytes say which one it is; some are longer than a datagram.
fn message(class: MessageClass, index: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let len = if rng.random_bool(0.1) {
        rng.random_range(1200..4000)
    } else {
        rng.random_range(12..200)
    };
    let mut data = format!("{class:?}:{index}:").into_bytes();
    data.resize(len, b'.');
    data
}

fn index_of(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    text.split(':')
        .nth(1)
        .and_then(|i| i.parse().ok())
        .expect("a test message")
}

const ALICE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7402);

struct Run {
    net: Network<Peer>,
    alice: SocketAddr,
    bob: SocketAddr,
    sent: [Vec<Vec<u8>>; 3],
}

/// Alice connects to Bob and queues messages of every class, on a link drawn from the
/// seed; a partition cuts them apart for a while and heals.
fn run_schedule(seed: u64) -> Run {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let alice = ALICE;
    let bob = loopback(2, 7402);
    let mut net = Network::new(seed);
    let link = LinkConfig {
        delay: Duration::from_micros(rng.random_range(100..5_000)),
        jitter: Duration::from_micros(rng.random_range(0..5_000)),
        loss: rng.random_range(0.0..0.5),
        duplicate: rng.random_range(0.0..0.1),
        reorder: rng.random_range(0.0..0.2),
        reorder_delay: Duration::from_millis(rng.random_range(1..20)),
        ..LinkConfig::default()
    };
    net.set_default_link(link).expect("valid link");
    let epoch = net.now();
    net.add_node(alice, Peer::test("alice", seed, epoch, patient_config()))
        .expect("alice");
    net.add_node(bob, Peer::test("bob", seed, epoch, patient_config()))
        .expect("bob");
    let conn = net.node_mut(alice).endpoint.connect(epoch, bob, "bob");

    let mut sent: [Vec<Vec<u8>>; 3] = Default::default();
    let counts = [5, 25, 25];
    for class in MessageClass::ALL {
        for index in 0..counts[class as usize] {
            let data = message(class, index, &mut rng);
            net.node_mut(alice)
                .endpoint
                .send(conn, class, &data)
                .expect("room in the send buffer");
            sent[class as usize].push(data);
        }
    }
    let cut_at = Duration::from_millis(rng.random_range(0..500));
    let heal_after = Duration::from_millis(rng.random_range(100..3_000));
    net.run_for(cut_at).expect("runs");
    net.partition(&[alice], &[bob]);
    net.run_for(heal_after).expect("runs");
    net.heal();
    let unfinished = |net: &Network<Peer>| {
        let bob = net.node(loopback(2, 7402));
        bob.messages_of(MessageClass::Ordered).len() < counts[2]
            || bob.messages_of(MessageClass::Reliable).len() < counts[1]
            || net.node(ALICE).acked().len() < counts[1] + counts[2]
    };
    if let Err(e) = net.run_while(unfinished, Duration::from_secs(120)) {
        panic!(
            "seed {seed}: did not finish: {e}\n{}",
            diagnose(&net, alice, bob)
        );
    }
    Run {
        net,
        alice,
        bob,
        sent,
    }
}

/// What each side saw, for a failure message.
fn diagnose(net: &Network<Peer>, alice: SocketAddr, bob: SocketAddr) -> String {
    let mut out = format!("network: {:?}\n", net.stats());
    for (name, addr) in [("alice", alice), ("bob", bob)] {
        let peer = net.node(addr);
        out += &format!("{name}: endpoint {:?}\n", peer.endpoint.stats());
        for (handle, connection) in peer.endpoint.connections() {
            out += &format!(
                "  {handle:?} established={} closed={} rtt={:?} in_flight={} cwnd={} ptos={} {:?}\n",
                connection.is_established(),
                connection.is_closed(),
                connection.rtt(),
                connection.bytes_in_flight(),
                connection.congestion_window(),
                connection.pto_count(),
                connection.stats()
            );
        }
        let events: Vec<String> = peer
            .events
            .iter()
            .map(|(_, e)| match e {
                Event::Message { class, data } => format!("{class:?}#{}", index_of(data)),
                other => format!("{other:?}"),
            })
            .collect();
        out += &format!("  events: {events:?}\n");
    }
    out
}

fn check_invariants(run: &Run) {
    let bob = run.net.node(run.bob);
    // Ordered: exactly what was sent, once each, in order.
    assert_eq!(
        bob.messages_of(MessageClass::Ordered),
        run.sent[MessageClass::Ordered as usize],
        "ordered messages"
    );
    // Reliable: each exactly once, nothing that was not sent.
    let mut reliable = bob.messages_of(MessageClass::Reliable);
    let mut expected = run.sent[MessageClass::Reliable as usize].clone();
    reliable.sort();
    expected.sort();
    assert_eq!(reliable, expected, "reliable messages");
    // Unreliable: at most once each, only what was sent, never older after newer.
    let unreliable = bob.messages_of(MessageClass::Unreliable);
    let indexes: Vec<usize> = unreliable.iter().map(|d| index_of(d)).collect();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "unreliable order {indexes:?}"
    );
    for data in &unreliable {
        assert_eq!(
            data,
            &run.sent[MessageClass::Unreliable as usize][index_of(data)],
            "unreliable content"
        );
    }
    // The sender heard every reliable message acknowledged, once.
    let alice = run.net.node(run.alice);
    let acked = alice.acked();
    let unique: BTreeSet<_> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "an Acked event repeated");
    assert_eq!(acked.len(), 25 + 25, "every reliable message acknowledged");
    assert!(
        alice
            .events
            .iter()
            .all(|(_, e)| !matches!(e, Event::Closed(_))),
        "no session ended: {:?}",
        alice.events
    );
}

#[test]
fn messages_survive_loss_duplication_reordering_and_a_partition() {
    for_each_seed(1000, |seed| {
        let run = run_schedule(seed);
        check_invariants(&run);
    });
}

#[test]
fn the_same_seed_replays_bit_for_bit() {
    let a = run_schedule(7);
    let b = run_schedule(7);
    assert_eq!(a.net.trace_hash(), b.net.trace_hash());
    assert_eq!(a.net.stats(), b.net.stats());
    let c = run_schedule(8);
    assert_ne!(a.net.trace_hash(), c.net.trace_hash());
}
