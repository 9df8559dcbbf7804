//! The simulator checked against a toy node: each test asserts something that a wrong
//! link model, clock or scheduler would break. No real time passes in any of them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rand::Rng;

use super::*;

const MS: Duration = Duration::from_millis(1);

/// A toy peer: every `interval` (first at its start time, for `ticks` ticks) it sends
/// `per_tick` datagrams to each peer, each carrying a fresh sequence number (big-endian,
/// first 8 bytes) padded with zeros to `payload_len`. It records what it sent when and
/// everything it hears.
struct Toy {
    peers: Vec<SocketAddr>,
    interval: Duration,
    ticks_left: u64,
    per_tick: usize,
    payload_len: usize,
    next_tick: Option<Instant>,
    next_seq: u64,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Send time of each sequence number.
    sent_at: Vec<Instant>,
    heard: Vec<Heard>,
}

struct Heard {
    from: SocketAddr,
    at: Instant,
    bytes: Vec<u8>,
}

impl Heard {
    fn seq(&self) -> u64 {
        u64::from_be_bytes(
            self.bytes[..8]
                .try_into()
                .expect("toy datagrams are >= 8 bytes"),
        )
    }
}

impl Toy {
    fn new(start: Instant, peers: &[SocketAddr], interval: Duration, ticks: u64) -> Self {
        Self {
            peers: peers.to_vec(),
            interval,
            ticks_left: ticks,
            per_tick: 1,
            payload_len: 8,
            next_tick: (ticks > 0).then_some(start),
            next_seq: 0,
            outbox: VecDeque::new(),
            sent_at: Vec::new(),
            heard: Vec::new(),
        }
    }

    /// Only listens.
    fn silent() -> Self {
        Self::new(Instant::now(), &[], Duration::ZERO, 0)
    }

    fn payload(mut self, len: usize) -> Self {
        assert!(len >= 8);
        self.payload_len = len;
        self
    }

    fn per_tick(mut self, n: usize) -> Self {
        self.per_tick = n;
        self
    }

    fn datagram(&self, seq: u64) -> Vec<u8> {
        let mut bytes = vec![0; self.payload_len];
        bytes[..8].copy_from_slice(&seq.to_be_bytes());
        bytes
    }

    fn seqs_from(&self, from: SocketAddr) -> Vec<u64> {
        self.heard
            .iter()
            .filter(|h| h.from == from)
            .map(Heard::seq)
            .collect()
    }

    /// One-way latency of every datagram heard from `sender`.
    fn latencies(&self, sender: &Toy) -> Vec<Duration> {
        self.heard
            .iter()
            .map(|h| h.at - sender.sent_at[h.seq() as usize])
            .collect()
    }
}

impl Node for Toy {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.heard.push(Heard {
            from,
            at: now,
            bytes: datagram.to_vec(),
        });
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_tick else { return };
        if due > now {
            return;
        }
        for _ in 0..self.per_tick {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.sent_at.push(now);
            for &peer in &self.peers {
                self.outbox.push_back((peer, self.datagram(seq)));
            }
        }
        self.ticks_left -= 1;
        self.next_tick = (self.ticks_left > 0).then(|| now + self.interval);
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }
}

fn addrs(n: u8) -> Vec<SocketAddr> {
    (1..=n).map(|host| loopback(host, 7402)).collect()
}

fn network(seed: u64, link: LinkConfig) -> Network<Toy> {
    let mut net = Network::new(seed);
    net.set_default_link(link).unwrap();
    net
}

/// `sender` sends `ticks` datagrams to `receiver`, one per `interval`.
fn one_way(seed: u64, link: LinkConfig, interval: Duration, ticks: u64) -> Network<Toy> {
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let mut net = network(seed, link);
    let start = net.now();
    net.add_node(a, Toy::new(start, &[b], interval, ticks))
        .unwrap();
    net.add_node(b, Toy::silent()).unwrap();
    net
}

/// Count of arrivals with a sequence number below one already seen.
fn late_arrivals(seqs: &[u64]) -> usize {
    let mut max = None;
    let mut late = 0;
    for &seq in seqs {
        if max.is_some_and(|m| seq < m) {
            late += 1;
        }
        max = max.max(Some(seq));
    }
    late
}

fn assert_conserved(stats: &Stats, in_flight: usize) {
    assert_eq!(
        stats.sent + stats.duplicated,
        stats.delivered + stats.dropped() + in_flight as u64,
        "every copy is delivered, dropped or in flight: {stats:?}"
    );
}

// ---- determinism --------------------------------------------------------------------

/// Four nodes talking all-to-all over links with every kind of randomness.
fn messy_run(seed: u64) -> (u64, Stats, Vec<Vec<u64>>) {
    let link = LinkConfig {
        delay: 2 * MS,
        jitter: 3 * MS,
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.1,
        reorder_delay: 10 * MS,
        corrupt: 0.01,
        bandwidth: Some(Bandwidth {
            bytes_per_sec: 200_000,
            queue_bytes: 2_000,
        }),
        ..LinkConfig::default()
    };
    let nodes = addrs(4);
    let mut net = network(seed, link);
    for (i, &addr) in nodes.iter().enumerate() {
        let peers: Vec<_> = nodes.iter().copied().filter(|&p| p != addr).collect();
        let interval = MS * (3 + i as u32);
        let toy = Toy::new(net.now(), &peers, interval, 100)
            .payload(300)
            .per_tick(4);
        net.add_node(addr, toy).unwrap();
    }
    net.partition_one_way(&[nodes[0]], &[nodes[3]]);
    net.run_until_quiet(Duration::from_secs(60)).unwrap();
    assert_conserved(&net.stats(), net.in_flight());
    let heard = nodes
        .iter()
        .map(|&addr| net.node(addr).heard.iter().map(Heard::seq).collect())
        .collect();
    (net.trace_hash(), net.stats(), heard)
}

#[test]
fn same_seed_replays_bit_for_bit_and_other_seeds_differ() {
    let first = messy_run(7);
    let again = messy_run(7);
    assert_eq!(first.0, again.0, "trace hash");
    assert_eq!(first.1, again.1, "stats");
    assert_eq!(first.2, again.2, "what each node heard, in order");
    // Every fault actually occurred, so the hash covered them.
    let stats = first.1;
    assert!(stats.dropped_loss > 0 && stats.dropped_queue > 0 && stats.dropped_partition > 0);
    assert!(stats.duplicated > 0 && stats.corrupted > 0);

    let mut hashes: Vec<u64> = (0..8).map(|seed| messy_run(seed).0).collect();
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), 8, "eight seeds, eight different traces");
}

#[test]
fn an_ideal_link_draws_no_randomness() {
    let ideal = LinkConfig {
        delay: 3 * MS,
        ..LinkConfig::default()
    };
    let run = |seed| {
        let mut net = one_way(seed, ideal, MS, 50);
        net.run_until_quiet(Duration::from_secs(1)).unwrap();
        net.trace_hash()
    };
    assert_eq!(
        run(1),
        run(2),
        "nothing random happened, so the seed cannot matter"
    );
}

#[test]
fn derived_rngs_follow_the_seed_and_stream_only() {
    let net = Network::<Toy>::new(5);
    let draw = |mut rng: rand_chacha::ChaCha8Rng| rng.next_u64();
    assert_eq!(
        draw(net.derived_rng(1)),
        draw(Network::<Toy>::new(5).derived_rng(1))
    );
    assert_ne!(draw(net.derived_rng(1)), draw(net.derived_rng(2)));
    assert_ne!(
        draw(net.derived_rng(1)),
        draw(Network::<Toy>::new(6).derived_rng(1))
    );
}

// ---- the link model -----------------------------------------------------------------

#[test]
fn loss_rate_is_as_configured() {
    for_each_seed(4, |seed| {
        let n = 5_000;
        let mut net = one_way(
            seed,
            LinkConfig {
                loss: 0.25,
                ..LinkConfig::default()
            },
            MS,
            n,
        );
        net.run_until_quiet(Duration::from_secs(10)).unwrap();
        let stats = net.stats();
        let heard = net.node(addrs(2)[1]).heard.len() as u64;
        assert_eq!(stats.sent, n);
        assert_eq!(stats.delivered, heard);
        assert_eq!(
            stats.dropped_loss + heard,
            n,
            "loss is the only way to lose here"
        );
        // Expected 0.25, standard deviation 0.006: ±0.03 is five of them.
        let rate = stats.dropped_loss as f64 / n as f64;
        assert!((0.22..=0.28).contains(&rate), "loss rate {rate}");
    });
}

#[test]
fn duplication_delivers_some_datagrams_twice() {
    let n = 2_000;
    let mut net = one_way(
        3,
        LinkConfig {
            duplicate: 0.2,
            ..LinkConfig::default()
        },
        MS,
        n,
    );
    net.run_until_quiet(Duration::from_secs(10)).unwrap();
    let stats = net.stats();
    let mut count = BTreeMap::new();
    for seq in net.node(addrs(2)[1]).seqs_from(addrs(2)[0]) {
        *count.entry(seq).or_insert(0) += 1;
    }
    let twice = count.values().filter(|&&c| c == 2).count() as u64;
    assert_eq!(count.len() as u64, n, "no loss: every datagram arrives");
    assert!(count.values().all(|&c| c <= 2));
    assert_eq!(twice, stats.duplicated);
    assert_eq!(stats.delivered, n + stats.duplicated);
    assert!(
        (300..=500).contains(&stats.duplicated),
        "expected ~400, got {}",
        stats.duplicated
    );
}

#[test]
fn reordering_lets_later_datagrams_overtake() {
    let reordering = LinkConfig {
        reorder: 0.1,
        reorder_delay: 10 * MS,
        ..LinkConfig::default()
    };
    let mut net = one_way(4, reordering, MS, 1_000);
    net.run_until_quiet(Duration::from_secs(10)).unwrap();
    let seqs = net.node(addrs(2)[1]).seqs_from(addrs(2)[0]);
    assert_eq!(seqs.len(), 1_000);
    let late = late_arrivals(&seqs);
    assert!(
        (50..=150).contains(&late),
        "about 100 held back, got {late}"
    );

    // The control: the same traffic on a link without reordering or jitter stays in order.
    let mut fifo = one_way(4, LinkConfig::default(), MS, 1_000);
    fifo.run_until_quiet(Duration::from_secs(10)).unwrap();
    assert_eq!(
        late_arrivals(&fifo.node(addrs(2)[1]).seqs_from(addrs(2)[0])),
        0
    );
}

#[test]
fn delay_is_exact_without_jitter() {
    let mut net = one_way(
        0,
        LinkConfig {
            delay: 20 * MS,
            ..LinkConfig::default()
        },
        MS,
        100,
    );
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let latencies = net.node(b).latencies(net.node(a));
    assert_eq!(latencies.len(), 100);
    assert!(latencies.iter().all(|&l| l == 20 * MS), "{latencies:?}");
    // The run ends at the last delivery: sent at 99 ms, arrived at 119 ms.
    assert_eq!(net.elapsed(), 119 * MS);
}

#[test]
fn jitter_spreads_delay_within_bounds() {
    let link = LinkConfig {
        delay: 20 * MS,
        jitter: 5 * MS,
        ..LinkConfig::default()
    };
    let mut net = one_way(1, link, MS, 200);
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let latencies = net.node(b).latencies(net.node(a));
    assert_eq!(latencies.len(), 200);
    let min = *latencies.iter().min().unwrap();
    let max = *latencies.iter().max().unwrap();
    assert!(
        min >= 20 * MS && max <= 25 * MS,
        "latency in [20, 25] ms: {min:?}..{max:?}"
    );
    assert!(
        min < 20 * MS + MS / 2 && max > 25 * MS - MS / 2,
        "spread {min:?}..{max:?}"
    );
}

#[test]
fn bandwidth_serializes_a_burst_back_to_back() {
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let link = LinkConfig {
        delay: MS,
        bandwidth: Some(Bandwidth {
            bytes_per_sec: 100_000,
            queue_bytes: 10_000,
        }),
        ..LinkConfig::default()
    };
    let mut net = network(0, link);
    // Ten 1000-byte datagrams at t = 0: each takes 10 ms on a 100 kB/s link.
    net.add_node(
        a,
        Toy::new(net.now(), &[b], MS, 1).payload(1000).per_tick(10),
    )
    .unwrap();
    net.add_node(b, Toy::silent()).unwrap();
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    let arrivals: Vec<Duration> = net
        .node(b)
        .heard
        .iter()
        .map(|h| h.at - net.epoch())
        .collect();
    let expected: Vec<Duration> = (1..=10).map(|i| MS * (10 * i + 1)).collect();
    assert_eq!(arrivals, expected);
}

#[test]
fn a_full_queue_drops_the_tail_and_drains_with_time() {
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let link = LinkConfig {
        bandwidth: Some(Bandwidth {
            bytes_per_sec: 100_000,
            queue_bytes: 5_000,
        }),
        ..LinkConfig::default()
    };
    let mut net = network(0, link);
    // Two bursts of ten, one second apart: each time only five fit in the queue.
    let burst = Toy::new(net.now(), &[b], Duration::from_secs(1), 2)
        .payload(1000)
        .per_tick(10);
    net.add_node(a, burst).unwrap();
    net.add_node(b, Toy::silent()).unwrap();
    net.run_until_quiet(Duration::from_secs(5)).unwrap();
    assert_eq!(net.stats().dropped_queue, 10);
    assert_eq!(
        net.node(b).seqs_from(a),
        [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    );
}

#[test]
fn oversized_datagrams_are_dropped() {
    let [small, big, sink] = addrs(3)[..] else {
        unreachable!()
    };
    let mut net = network(
        0,
        LinkConfig {
            max_datagram_size: 500,
            ..LinkConfig::default()
        },
    );
    net.add_node(small, Toy::new(net.now(), &[sink], MS, 10).payload(500))
        .unwrap();
    net.add_node(big, Toy::new(net.now(), &[sink], MS, 10).payload(501))
        .unwrap();
    net.add_node(sink, Toy::silent()).unwrap();
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    assert_eq!(net.stats().dropped_size, 10);
    assert_eq!(net.node(sink).seqs_from(small).len(), 10);
    assert!(net.node(sink).seqs_from(big).is_empty());
}

#[test]
fn corruption_flips_exactly_one_bit() {
    let mut net = one_way(
        2,
        LinkConfig {
            corrupt: 1.0,
            ..LinkConfig::default()
        },
        MS,
        50,
    );
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let heard = &net.node(b).heard;
    assert_eq!(heard.len(), 50);
    for (seq, h) in heard.iter().enumerate() {
        let original = net.node(a).datagram(seq as u64);
        let flipped: u32 = original
            .iter()
            .zip(&h.bytes)
            .map(|(x, y)| (x ^ y).count_ones())
            .sum();
        assert_eq!(flipped, 1, "datagram {seq}");
    }
    assert_eq!(net.stats().corrupted, 50);
}

#[test]
fn per_link_overrides_apply_to_one_direction() {
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let mut net = network(0, LinkConfig::default());
    net.set_link(
        a,
        b,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
    )
    .unwrap();
    net.add_node(a, Toy::new(net.now(), &[b], MS, 20)).unwrap();
    net.add_node(b, Toy::new(net.now(), &[a], MS, 20)).unwrap();
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    assert!(net.node(b).heard.is_empty());
    assert_eq!(net.node(a).heard.len(), 20);
    assert!(matches!(
        net.set_link(
            a,
            b,
            LinkConfig {
                loss: 2.0,
                ..LinkConfig::default()
            }
        ),
        Err(SimError::LinkConfig(LinkConfigError::Probability {
            field: "loss",
            ..
        }))
    ));
    net.clear_link(a, b);
    assert_eq!(net.link(a, b), &LinkConfig::default());
}

// ---- faults -------------------------------------------------------------------------

/// `a` and `b` ping each other every 10 ms for 10 s over 5 ms links.
fn ping_pair() -> (Network<Toy>, SocketAddr, SocketAddr) {
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let mut net = network(
        0,
        LinkConfig {
            delay: 5 * MS,
            ..LinkConfig::default()
        },
    );
    net.add_node(a, Toy::new(net.now(), &[b], 10 * MS, 1_000))
        .unwrap();
    net.add_node(b, Toy::new(net.now(), &[a], 10 * MS, 1_000))
        .unwrap();
    (net, a, b)
}

#[test]
fn partition_drops_both_ways_until_healed() {
    let (mut net, a, b) = ping_pair();
    // Stop 2 ms after a send, so a datagram is in flight when the link is cut.
    net.run_until(net.epoch() + Duration::from_secs(1) + 2 * MS)
        .unwrap();
    assert_eq!(net.in_flight(), 2);
    let (heard_a, heard_b) = (net.node(a).heard.len(), net.node(b).heard.len());
    net.partition(&[a], &[b]);
    net.run_for(Duration::from_secs(2)).unwrap();
    assert_eq!(
        net.node(a).heard.len(),
        heard_a,
        "nothing reaches a, not even in flight"
    );
    assert_eq!(net.node(b).heard.len(), heard_b, "nothing reaches b");
    assert_eq!(net.stats().dropped_partition, 2 * 200 + 2);
    net.heal();
    net.run_for(Duration::from_secs(1)).unwrap();
    assert!(net.node(a).heard.len() >= heard_a + 99);
    assert!(net.node(b).heard.len() >= heard_b + 99);
}

#[test]
fn one_way_partition_blocks_one_direction() {
    let (mut net, a, b) = ping_pair();
    net.partition_one_way(&[a], &[b]);
    net.run_for(Duration::from_secs(1)).unwrap();
    assert!(net.node(b).heard.is_empty());
    assert!(net.node(a).heard.len() >= 99);
}

#[test]
fn isolation_cuts_one_node_from_everyone() {
    let [a, b, c] = addrs(3)[..] else {
        unreachable!()
    };
    let mut net = network(0, LinkConfig::default());
    for addr in [a, b, c] {
        let peers: Vec<_> = [a, b, c].into_iter().filter(|&p| p != addr).collect();
        net.add_node(addr, Toy::new(net.now(), &peers, 10 * MS, 100))
            .unwrap();
    }
    net.isolate(c);
    net.run_until_quiet(Duration::from_secs(5)).unwrap();
    assert!(net.node(c).heard.is_empty());
    assert!(net.node(a).seqs_from(c).is_empty() && net.node(b).seqs_from(c).is_empty());
    assert_eq!(net.node(a).seqs_from(b).len(), 100);
    assert_eq!(net.node(b).seqs_from(a).len(), 100);
    assert_eq!(net.stats().dropped_partition, 4 * 100);
}

#[test]
fn a_crashed_node_is_frozen_and_revives_with_its_state() {
    let (mut net, a, b) = ping_pair();
    net.run_until(net.epoch() + Duration::from_secs(1) + 2 * MS)
        .unwrap();
    let (heard_b, sent_b) = (net.node(b).heard.len(), net.node(b).sent_at.len());
    let heard_a = net.node(a).heard.len();
    net.crash(b).unwrap();
    assert!(!net.is_alive(b));
    net.run_for(Duration::from_secs(1)).unwrap();
    assert_eq!(
        net.node(b).heard.len(),
        heard_b,
        "no delivery to a crashed node"
    );
    assert_eq!(
        net.node(b).sent_at.len(),
        sent_b,
        "a crashed node's timer does not fire"
    );
    // b's datagram sent just before the crash was already on the wire.
    assert_eq!(net.node(a).heard.len(), heard_a + 1);
    // a's datagrams that arrived while b was down: the one in flight at the crash
    // (sent at 1000 ms) and those sent at 1010..=1990 ms; the one sent at 2000 ms is
    // still in flight.
    assert_eq!(net.stats().dropped_unreachable, 1 + 99);
    assert_eq!(net.in_flight(), 1);

    let revived_at = net.now();
    net.revive(b).unwrap();
    net.run_for(Duration::from_secs(1)).unwrap();
    let b_node = net.node(b);
    assert_eq!(
        b_node.sent_at[sent_b], revived_at,
        "the overdue tick fires on revival"
    );
    assert!(b_node.heard.len() >= heard_b + 99, "b hears a again");
    assert!(
        net.node(a).seqs_from(b).contains(&(sent_b as u64)),
        "b's sequence continues"
    );
}

#[test]
fn replace_restarts_a_node_with_new_state() {
    let (mut net, a, b) = ping_pair();
    net.run_for(Duration::from_secs(1)).unwrap();
    net.crash(b).unwrap();
    let restarted = Toy::new(net.now(), &[a], 10 * MS, 5);
    let old = net.replace(b, restarted).unwrap();
    assert!(old.heard.len() >= 99);
    net.revive(b).unwrap();
    net.run_for(Duration::from_secs(1)).unwrap();
    assert!(net.node(b).heard.len() >= 99, "the new state hears from a");
    assert_eq!(
        net.node(b).sent_at.len(),
        5,
        "the new state's own timer runs"
    );
    assert!(matches!(
        net.crash(loopback(9, 1)),
        Err(SimError::UnknownNode(_))
    ));
    assert!(matches!(
        net.add_node(a, Toy::silent()),
        Err(SimError::DuplicateNode(_))
    ));
}

#[test]
fn datagrams_to_nobody_are_unreachable() {
    let [a] = addrs(1)[..] else { unreachable!() };
    let nobody = loopback(200, 1);
    let mut net = network(0, LinkConfig::default());
    net.add_node(a, Toy::new(net.now(), &[nobody], MS, 3))
        .unwrap();
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    assert_eq!(net.stats().dropped_unreachable, 3);
}

#[test]
fn injected_datagrams_take_the_link_model() {
    let [a] = addrs(1)[..] else { unreachable!() };
    let spoofed = loopback(66, 6666);
    let mut net = network(
        0,
        LinkConfig {
            delay: 7 * MS,
            ..LinkConfig::default()
        },
    );
    net.add_node(a, Toy::silent()).unwrap();
    net.inject(spoofed, a, vec![0xff; 8]);
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    let heard = &net.node(a).heard;
    assert_eq!(heard.len(), 1);
    assert_eq!(
        (heard[0].from, heard[0].at - net.epoch()),
        (spoofed, 7 * MS)
    );
}

#[test]
fn the_event_log_records_deliveries_drops_and_timeouts() {
    let [a, b] = addrs(2)[..] else { unreachable!() };
    let mut net = one_way(
        0,
        LinkConfig {
            delay: 4 * MS,
            ..LinkConfig::default()
        },
        MS,
        2,
    );
    net.set_link(
        a,
        b,
        LinkConfig {
            max_datagram_size: 0,
            ..LinkConfig::default()
        },
    )
    .unwrap();
    net.record_events(true);
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    let dropped = |at| SimEvent {
        at,
        kind: SimEventKind::Dropped {
            from: a,
            to: b,
            len: 8,
            reason: DropReason::Size,
        },
    };
    let timeout = |at| SimEvent {
        at,
        kind: SimEventKind::Timeout { node: a },
    };
    assert_eq!(
        net.events(),
        [
            timeout(Duration::ZERO),
            dropped(Duration::ZERO),
            timeout(MS),
            dropped(MS)
        ]
    );
    net.clear_link(a, b);
    net.node_mut(a).outbox.push_back((b, vec![1; 8]));
    net.take_events();
    net.run_until_quiet(Duration::from_secs(1)).unwrap();
    let delivered = SimEvent {
        at: 5 * MS,
        kind: SimEventKind::Delivered {
            from: a,
            to: b,
            len: 8,
        },
    };
    assert_eq!(net.take_events(), [delivered]);
}

// ---- bounds -------------------------------------------------------------------------

/// A node whose deadline never moves: every step fires it again, at the same instant.
struct Stuck(Instant);

impl Node for Stuck {
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_transmit(&mut self, _: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.0)
    }
}

/// A node that always has another datagram.
struct Flood;

impl Node for Flood {
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_transmit(&mut self, _: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        Some((loopback(2, 1), vec![0]))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[test]
fn a_livelocked_timer_hits_the_step_limit() {
    let mut net = Network::new(0);
    net.set_limits(Limits {
        max_steps: 1_000,
        ..Limits::default()
    });
    net.add_node(loopback(1, 1), Stuck(net.now())).unwrap();
    let err = net
        .run_until(net.now() + Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(
        err,
        SimError::StepLimit {
            limit: 1_000,
            at: Duration::ZERO
        }
    );
    assert_eq!(net.stats().timeouts, 1_000);
    // `step` on its own is bounded by its caller, and each call makes progress.
    assert!(net.step());
    assert_eq!(net.stats().steps, 1_001);
}

#[test]
fn a_flooding_node_is_reported() {
    let mut net = Network::new(0);
    net.set_limits(Limits {
        max_transmits_per_poll: 100,
        ..Limits::default()
    });
    net.add_node(loopback(1, 1), Flood).unwrap();
    let err = net.run_for(Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        err,
        SimError::TransmitFlood {
            node: loopback(1, 1),
            limit: 100,
            at: Duration::ZERO
        }
    );
    assert_eq!(net.stats().sent, 100);
    assert!(net.step(), "step counts the flood and carries on");
    assert_eq!(net.stats().floods, 2);
}

#[test]
fn a_periodic_node_never_goes_quiet() {
    let (mut net, _, _) = ping_pair();
    let err = net.run_until_quiet(Duration::from_secs(2)).unwrap_err();
    assert_eq!(
        err,
        SimError::TimeLimit {
            at: Duration::from_secs(2)
        }
    );
    assert_eq!(net.elapsed(), Duration::from_secs(2));
}

#[test]
fn run_while_stops_when_the_predicate_fails() {
    let (mut net, a, b) = ping_pair();
    net.run_while(|net| net.node(a).heard.len() < 10, Duration::from_secs(5))
        .unwrap();
    assert_eq!(net.node(a).heard.len(), 10);
    // b's tenth datagram left at 90 ms and took 5 ms.
    assert_eq!(net.elapsed(), 95 * MS);

    let err = net.run_while(|_| true, Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        err,
        SimError::TimeLimit {
            at: Duration::from_secs(1) + 95 * MS
        }
    );

    // A predicate that outlives all traffic is reported as soon as nothing can change.
    let mut short = one_way(0, LinkConfig::default(), MS, 5);
    let err = short.run_while(|net| net.node(b).heard.len() < 10, Duration::from_secs(5));
    assert_eq!(err, Err(SimError::Quiescent { at: 5 * MS }));
}

// ---- seeds --------------------------------------------------------------------------

#[test]
fn seeds_come_from_the_environment_values() {
    assert_eq!(Seeds::from_vars(None, None, 8).unwrap().range(), 0..8);
    assert_eq!(
        Seeds::from_vars(None, Some("100"), 8).unwrap().range(),
        0..100
    );
    assert_eq!(
        Seeds::from_vars(Some("42"), Some("100"), 8)
            .unwrap()
            .range(),
        42..43
    );
    assert_eq!(
        Seeds::from_vars(Some("x"), None, 8),
        Err(SeedEnvError::Seed("x".into()))
    );
    assert_eq!(
        Seeds::from_vars(None, Some("-1"), 8),
        Err(SeedEnvError::Count("-1".into()))
    );
}

#[test]
fn a_failing_seed_is_named() {
    let mut ran = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        Seeds::new(0..10).run(|seed| {
            ran.push(seed);
            assert_ne!(seed, 3, "boom");
        })
    }));
    let payload = result.expect_err("seed 3 fails");
    let msg = payload
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(
        msg.starts_with("failing seed: 3; replay with SOCKMSG_SIM_SEED=3"),
        "{msg}"
    );
    assert!(msg.contains("boom"), "{msg}");
    assert_eq!(ran, [0, 1, 2, 3], "stops at the first failure");
}
