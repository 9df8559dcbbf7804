//! A small deterministic harness: whole groups of [`Group`]s over a seeded in-memory
//! queue of in-flight messages, with virtual time (not the session simulator).
//!
//! Network model: each message takes 0.1–0.5 ms. The session layer guarantees the
//! ordered and reliable classes, so those are delivered (ordered ones FIFO per link)
//! unless the link is partitioned or the receiver is down or restarted since; unreliable
//! messages (heartbeats and their acks) are also lost at the seed's loss rate.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sockmsg_node::{
    Group, GroupConfig, GroupEvent, GroupMessage, HardState, MemberInfo, Output, Role, VoteSigner,
};
use sockmsg_wire::frame::MessageClass;

/// A cheap deterministic signer: the voter's name and a checksum of the input.
pub struct SimSigner(String);

impl VoteSigner for SimSigner {
    fn sign_vote(&self, input: &[u8]) -> Vec<u8> {
        let sum = input.iter().fold(0u32, |acc, &b| {
            acc.wrapping_mul(31).wrapping_add(u32::from(b))
        });
        let mut sig = self.0.as_bytes().to_vec();
        sig.extend_from_slice(&sum.to_be_bytes());
        sig
    }
}

pub struct Node {
    pub name: String,
    pub group: Option<Group>,
    /// What survives a crash: the last `Output::Persist`.
    pub hard: HardState,
    /// Bumped at every restart: messages to an older epoch are lost with its sessions.
    pub epoch: u64,
    pub rank: u64,
    pub incarnation: u64,
    /// (term, leader) as this node last announced it.
    pub known_leader: (u64, Option<String>),
    pub last_leader_change: Instant,
    /// Per (sender, incarnation): the last seq delivered.
    pub delivered: HashMap<(String, u64), u64>,
    pub received: Vec<(String, u64, u64)>,
}

struct InFlight {
    from: usize,
    to: usize,
    to_epoch: u64,
    msg: GroupMessage,
}

pub struct Sim {
    pub seed: u64,
    pub rng: ChaCha8Rng,
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<Node>,
    queue: BTreeMap<(Instant, u64), InFlight>,
    next_id: u64,
    fifo: HashMap<(usize, usize), Instant>,
    /// Nodes talk only within the same side.
    pub side: Vec<u8>,
    pub loss: f64,
    /// Every leader announced per term, by anyone.
    pub leaders: HashMap<u64, String>,
    pub failure: Option<String>,
    pub config: GroupConfig,
    /// Events processed at the current instant: a livelock guard.
    same_instant: u64,
}

impl Sim {
    pub fn new(seed: u64, members: usize, loss: f64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let start = Instant::now();
        let nodes = (0..members)
            .map(|i| Node {
                name: format!("n{i}"),
                group: None,
                hard: HardState::default(),
                epoch: 0,
                rank: rng.random(),
                incarnation: 0,
                known_leader: (0, None),
                last_leader_change: start,
                delivered: HashMap::new(),
                received: Vec::new(),
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            start,
            now: start,
            nodes,
            queue: BTreeMap::new(),
            next_id: 0,
            fifo: HashMap::new(),
            side: vec![0; members],
            loss,
            leaders: HashMap::new(),
            failure: None,
            config: GroupConfig::new("lobby"),
            same_instant: 0,
        };
        for i in 0..members {
            sim.boot(i);
        }
        sim.with(0, |g, now| g.bootstrap(now, 0).unwrap());
        for i in 1..members {
            sim.with(i, |g, now| g.join(now, "n0").unwrap());
        }
        sim
    }

    fn boot(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.incarnation = self.rng.random();
        node.epoch += 1;
        let me = MemberInfo {
            name: node.name.clone(),
            addr: format!("10.0.0.{}:7402", i + 1).parse().unwrap(),
            rank: node.rank,
            incarnation: node.incarnation,
        };
        let rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let group = Group::new(
            self.config.clone(),
            me,
            node.hard.clone(),
            rng,
            Box::new(SimSigner(node.name.clone())),
            self.now,
        )
        .unwrap();
        node.group = Some(group);
        node.known_leader = (node.hard.term, None);
        node.last_leader_change = self.now;
        node.delivered.clear();
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].group.is_some()
    }

    pub fn group(&self, i: usize) -> Option<&Group> {
        self.nodes[i].group.as_ref()
    }

    /// Runs a command on node `i` (if up) and handles its outputs.
    pub fn with(&mut self, i: usize, f: impl FnOnce(&mut Group, Instant)) {
        let now = self.now;
        if let Some(g) = self.nodes[i].group.as_mut() {
            f(g, now);
            self.drain(i);
        }
    }

    pub fn crash(&mut self, i: usize) {
        self.trace(|| format!("CRASH {}", self.nodes[i].name));
        self.nodes[i].group = None;
    }

    /// Restarts node `i` with only its hard state, and has it ask the leader to admit it.
    pub fn restart(&mut self, i: usize) {
        self.trace(|| {
            format!(
                "RESTART {} with {:?}",
                self.nodes[i].name, self.nodes[i].hard
            )
        });
        self.boot(i);
        self.rejoin(i);
    }

    /// What the proxy would say: the up leader of the highest term.
    pub fn oracle_leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&j| self.group(j).is_some_and(|g| g.role() == Role::Leader))
            .max_by_key(|&j| self.group(j).map(|g| g.term()))
    }

    /// What the driver does with the proxy's answer: join the leader, or, when the
    /// group has no member at all (not even a crashed one whose persisted membership
    /// lists it), found it again in a term after every term the proxy saw. While
    /// members exist, even all down, the group recovers by election once a majority is
    /// back, and a stray waits for that leader.
    fn rejoin(&mut self, i: usize) {
        let anyone_holds_the_group = self
            .nodes
            .iter()
            .any(|n| n.hard.members.iter().any(|m| m.name == n.name));
        if let Some(l) = self.oracle_leader().filter(|&l| l != i) {
            let leader = self.nodes[l].name.clone();
            self.with(i, |g, now| g.join(now, &leader).unwrap());
        } else if !anyone_holds_the_group {
            let last_term = self.leaders.keys().copied().max().unwrap_or(0);
            self.trace(|| format!("BOOTSTRAP {} after term {last_term}", self.nodes[i].name));
            self.with(i, |g, now| g.bootstrap(now, last_term).unwrap());
        }
    }

    /// The driver's periodic "ask the proxy again" for nodes not (yet) admitted, or
    /// without a leader for a second (perhaps removed without hearing of it).
    pub fn rejoin_strays(&mut self) {
        for i in 0..self.nodes.len() {
            let leaderless = self.nodes[i].known_leader.1.is_none()
                && self.now - self.nodes[i].last_leader_change > Duration::from_secs(1);
            let stray = self
                .group(i)
                .is_some_and(|g| g.role() != Role::Left && (!g.is_member() || leaderless));
            if stray {
                self.rejoin(i);
            }
        }
    }

    pub fn partition(&mut self, side: Vec<u8>) {
        self.trace(|| format!("PARTITION {side:?}"));
        self.side = side;
    }

    pub fn heal(&mut self) {
        self.side = vec![0; self.nodes.len()];
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b]
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("at {:?}: {why}", self.elapsed()));
        }
    }

    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].group.as_mut().and_then(|g| g.poll_output()) else {
                return;
            };
            match out {
                Output::Persist(hard) => self.nodes[i].hard = hard,
                Output::Send { to, class, frame } => self.send(i, &to, class, frame),
                Output::Event(event) => self.on_event(i, event),
            }
        }
    }

    fn send(&mut self, from: usize, to: &str, class: MessageClass, msg: GroupMessage) {
        let Some(to) = self.nodes.iter().position(|n| n.name == to) else {
            return;
        };
        if class == MessageClass::Unreliable && self.rng.random_bool(self.loss) {
            return;
        }
        let delay = Duration::from_micros(self.rng.random_range(100..=500));
        let mut at = self.now + delay;
        if class == MessageClass::Ordered {
            let last = self.fifo.entry((from, to)).or_insert(at);
            at = at.max(*last);
            *last = at;
        }
        self.next_id += 1;
        let to_epoch = self.nodes[to].epoch;
        self.queue.insert(
            (at, self.next_id),
            InFlight {
                from,
                to,
                to_epoch,
                msg,
            },
        );
    }

    pub fn trace(&self, what: impl FnOnce() -> String) {
        if std::env::var_os("SOCKMSG_SIM_TRACE").is_some() {
            eprintln!("{:>12?} {}", self.elapsed(), what());
        }
    }

    fn on_event(&mut self, i: usize, event: GroupEvent) {
        self.trace(|| format!("{} {event:?}", self.nodes[i].name));
        match event {
            GroupEvent::LeaderChanged { term, leader } => {
                if let Some(l) = &leader {
                    let previous = self.leaders.entry(term).or_insert_with(|| l.clone());
                    if previous != l {
                        let why = format!(
                            "two leaders in term {term}: {previous} and {l} (told to {})",
                            self.nodes[i].name
                        );
                        self.fail(why);
                    }
                }
                self.nodes[i].known_leader = (term, leader);
                self.nodes[i].last_leader_change = self.now;
            }
            GroupEvent::ChatReceived {
                sender,
                incarnation,
                seq,
                ..
            } => {
                let node = &mut self.nodes[i];
                let last = node
                    .delivered
                    .entry((sender.clone(), incarnation))
                    .or_insert(0);
                if seq <= *last {
                    let why = format!(
                        "{} delivered {sender}/{incarnation} seq {seq} after seq {last}",
                        node.name
                    );
                    self.fail(why);
                    return;
                }
                *last = seq;
                node.received.push((sender, incarnation, seq));
            }
            _ => {}
        }
    }

    /// Processes the next event (a message arrival or a timer) if it is due by `until`;
    /// returns false once time has reached `until`.
    pub fn step(&mut self, until: Instant) -> bool {
        let next_msg = self.queue.keys().next().map(|k| k.0);
        let next_timer = (0..self.nodes.len())
            .filter_map(|i| self.group(i).and_then(|g| g.poll_timeout()).map(|t| (t, i)))
            .min();
        let next = match (next_msg, next_timer) {
            (Some(m), Some((t, _))) => m.min(t),
            (Some(m), None) => m,
            (None, Some((t, _))) => t,
            (None, None) => {
                self.now = self.now.max(until);
                return false;
            }
        };
        if next > until {
            self.now = until;
            return false;
        }
        if next <= self.now {
            self.same_instant += 1;
            if self.same_instant > 100_000 {
                let what = match next_timer {
                    Some((t, i)) if t == next => format!("timer of {}", self.nodes[i].name),
                    _ => format!(
                        "messages: {:?}",
                        self.queue
                            .values()
                            .take(4)
                            .map(|f| (f.from, f.to, f.msg.kind()))
                            .collect::<Vec<_>>()
                    ),
                };
                self.fail(format!("livelock: 100000 events at one instant ({what})"));
                self.now = until;
                return false;
            }
        } else {
            self.same_instant = 0;
        }
        self.now = self.now.max(next);
        if next_msg == Some(next) {
            let (_, flight) = self.queue.pop_first().unwrap();
            let up = self.nodes[flight.to].epoch == flight.to_epoch && self.is_up(flight.to);
            if up && self.connected(flight.from, flight.to) {
                let from = self.nodes[flight.from].name.clone();
                if !matches!(
                    flight.msg,
                    GroupMessage::Heartbeat { .. }
                        | GroupMessage::MembershipAck { .. }
                        | GroupMessage::Chat(_)
                ) {
                    self.trace(|| {
                        format!("{from} -> {}: {:?}", self.nodes[flight.to].name, flight.msg)
                    });
                }
                let now = self.now;
                if let Some(g) = self.nodes[flight.to].group.as_mut() {
                    g.step(now, &from, flight.msg);
                }
                self.drain(flight.to);
            }
        } else if let Some((_, i)) = next_timer {
            let now = self.now;
            if let Some(g) = self.nodes[i].group.as_mut() {
                g.tick(now);
            }
            self.drain(i);
        }
        true
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step(until) {}
    }

    /// Runs until `done` holds (checked after every event) or `d` passes; returns when.
    pub fn run_until(
        &mut self,
        d: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Instant> {
        let until = self.now + d;
        loop {
            if done(self) {
                return Some(self.now);
            }
            if !self.step(until) {
                return done(self).then_some(self.now);
            }
        }
    }

    /// The up nodes that the up leader of the highest term lists as members.
    pub fn live_members(&self, leader: usize) -> Vec<usize> {
        let Some(g) = self.group(leader) else {
            return vec![];
        };
        (0..self.nodes.len())
            .filter(|&i| self.is_up(i) && g.members().iter().any(|m| m.name == self.nodes[i].name))
            .collect()
    }

    /// A leader in a term newer than `after`, known to every live member it lists.
    pub fn settled_leader(&self, after: u64) -> Option<usize> {
        let l = self.oracle_leader()?;
        let g = self.group(l)?;
        if g.term() <= after {
            return None;
        }
        let name = &self.nodes[l].name;
        self.live_members(l)
            .into_iter()
            .all(|i| {
                self.nodes[i].known_leader == (g.term(), Some(name.clone())) && self.connected(i, l)
            })
            .then_some(l)
    }
}

/// p-th percentile (0..=100) of sorted `values`.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let idx = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[idx.min(sorted.len() - 1)]
}
