//! Whole groups in simulation: [`Group`]s over a seeded in-memory queue of in-flight
//! messages, with virtual time, and (unless built with [`Sim::plain`]) the key manager
//! and the proxy beside them ([`services`]); [`schedule`] is one random fault schedule.
//! The suites in `node/tests/group_sim.rs` and `sockmsg-bench sim` run them.
//!
//! Network model, at the level of session messages: each message takes 0.1–0.5 ms, and
//! each vote signature (asked by [`Output::SignVote`]) is ready 1–8 ms after the time
//! the group asked it for, as RSA takes on a busy host. The session layer guarantees the ordered and reliable classes, so those are delivered
//! (ordered ones FIFO per link) unless the link is cut (a partition, symmetric or one
//! way) or the receiver is down or restarted since; unreliable messages (heartbeats and
//! their acks) are also lost at the schedule's loss rate. Any message may be duplicated
//! at the schedule's duplication rate (a duplicate takes its own delay, so it may also
//! arrive out of order), which the group must shrug off. Each chat message's fate is
//! reported to its sender as the driver would report the session's acknowledgement or
//! loss ([`Group::chat_delivered`], [`Group::chat_failed`]).
//!
//! Invariants checked as events happen (the first violation is kept in `failure`):
//! at most one leader per term (a second one only where a hostile actor, and no honest
//! node, voted for both: the liar's double vote, which majority quorums cannot stop,
//! SPEC.md §12.6); a node that becomes leader holds granted votes (as sent
//! on the wire) from a majority of its membership; the proxy never holds a record for a
//! (term, leader) that no majority elected; chat is delivered at most once and in
//! per-sender order; each recipient's receipt for a line is reported at most once. The
//! invariants that hold against hostile participants ([`byzantine`]) are in
//! [`invariants`], checked after every input to every node.
//!
//! Hostile actors ([`Sim::add_hostile`]) are names with no [`Group`] behind them: what
//! the honest nodes send them waits in an inbox ([`Sim::take_inbox`]), and what they
//! send ([`Sim::inject`]) arrives as from that name, as an authenticated session would
//! deliver it. They sit on the LAN beside every node: partitions never cut them.

pub mod byzantine;
pub mod invariants;
pub mod schedule;
pub mod services;

pub use byzantine::{byzantine_schedule, ByzantineReport};
pub use schedule::{
    describe, merge_schedule, schedule, seeds_from_env, services_fault_schedule, ServicesFault,
    CONVERGE_BOUND, HEAL_BOUND, MERGE_BOUND, MS,
};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use services::{verdict, MemoSigner, Services, GROUP, NAMES, WALL_EPOCH_MS};
use sockmsg_node::rendezvous::{
    ProxyAnswer, ProxyRequest, Rendezvous, RendezvousConfig, RendezvousEvent, Verdict,
};
use sockmsg_node::{
    Group, GroupConfig, GroupEvent, GroupMessage, HardState, MemberInfo, Output, Role, VoteMsg,
    VoteSigner,
};
use sockmsg_proxy::Kind;
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
    /// (sender, incarnation, seq, direct) of every line delivered.
    pub received: Vec<(String, u64, u64, bool)>,
    /// Receipts this incarnation reported for its own lines: (seq, recipient) → delivered?
    pub receipts: HashMap<(u64, String), bool>,
    /// Its business with the proxy, the shipping policy (`None` without services).
    pub rendezvous: Option<Rendezvous>,
    /// The group (of the one name) this node belongs to, as the harness tells them apart:
    /// a group a node founds is a new one; a node that follows another node's lead is
    /// in that leader's. Two groups of one name (SPEC.md §12.7) have their own terms and
    /// membership stamps, so the invariants key terms and stamps by it.
    pub lineage: u32,
    /// Signs this node's votes: its RSA test key (memoised) with services, else a
    /// checksum.
    signer: Box<dyn VoteSigner>,
}

/// A vote signature in the making: node, its epoch (a restart loses it), the vote.
struct Signing {
    node: usize,
    epoch: u64,
    vote: VoteMsg,
}

/// Who sent a message in flight: a node of the group, or a hostile actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    Node(usize),
    Hostile(usize),
}

/// Frames kept for hostile actors, at most (the oldest go first).
const INBOX_LIMIT: usize = 256;

struct InFlight {
    from: Origin,
    from_epoch: u64,
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
    signing: BTreeMap<(Instant, u64), Signing>,
    next_id: u64,
    fifo: HashMap<(Origin, usize), Instant>,
    /// Cut links, (from, to): messages that way are lost.
    blocked: HashSet<(usize, usize)>,
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub dup: f64,
    /// Every leader announced per (lineage, term), by anyone.
    pub leaders: HashMap<(u32, u64), String>,
    /// The next lineage a founder starts (see [`Node::lineage`]).
    next_lineage: u32,
    /// Granted votes seen on the wire: (term, candidate) → voters.
    granted: HashMap<(u64, String), BTreeSet<String>>,
    /// Leaders whose majority the harness counted itself: term → leaders (a second one
    /// only after a liar's double vote, see `check_second_leader`).
    pub elected: HashMap<u64, Vec<String>>,
    /// The key manager and the proxy (`None` for [`Sim::plain`]).
    pub services: Option<Services>,
    pub failure: Option<String>,
    pub config: GroupConfig,
    /// Events processed at the current instant: a livelock guard.
    same_instant: u64,
    /// Nodes that cannot reach the proxy (a partition between them and it).
    pub cut_from_proxy: HashSet<usize>,
    /// Names of hostile actors (no `Group` behind them, see [`byzantine`]).
    pub hostile: Vec<String>,
    /// Frames honest nodes sent to hostile actors: (to, from, frame), oldest first.
    inbox: VecDeque<(String, String, GroupMessage)>,
    /// What the invariants of [`invariants`] remember.
    pub watch: invariants::Watch,
}

impl Sim {
    /// A group of `members` (at most 7) with the key manager and the proxy: every node
    /// registers its RSA test key, the first claims the group at the proxy and founds it,
    /// the others ask the proxy whom to join.
    pub fn new(seed: u64, members: usize, loss: f64) -> Sim {
        Sim::with_late(seed, members, 0, loss)
    }

    /// Like [`Sim::new`], but the last `late` nodes are not started: each starts later,
    /// as a newcomer, with [`Sim::restart`].
    pub fn with_late(seed: u64, members: usize, late: usize, loss: f64) -> Sim {
        assert!(
            members <= NAMES.len(),
            "at most {} members with services",
            NAMES.len()
        );
        let names: Vec<String> = NAMES[..members].iter().map(|n| n.to_string()).collect();
        let mut services = Services::new();
        services.register(&NAMES[..members]).expect("registration");
        let mut sim = Sim::with_names(seed, names, loss, Some(services));
        for i in 0..members {
            if i + late < members {
                sim.rendezvous(i);
            } else {
                sim.nodes[i].group = None;
            }
        }
        sim
    }

    /// A group of `members` without services (cheap signatures, the harness as the
    /// proxy): for large groups and long runs.
    pub fn plain(seed: u64, members: usize, loss: f64) -> Sim {
        let names = (0..members).map(|i| format!("n{i}")).collect();
        let mut sim = Sim::with_names(seed, names, loss, None);
        sim.with(0, |g, now| g.bootstrap(now, 0).unwrap());
        let founder = sim.nodes[0].name.clone();
        for i in 1..members {
            sim.with(i, |g, now| g.join(now, &founder).unwrap());
        }
        sim
    }

    fn with_names(seed: u64, names: Vec<String>, loss: f64, services: Option<Services>) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let start = Instant::now();
        let members = names.len();
        let with_services = services.is_some();
        let nodes = names
            .into_iter()
            .map(|name| Node {
                signer: if with_services {
                    Box::new(MemoSigner::of(&name))
                } else {
                    Box::new(SimSigner(name.clone()))
                },
                name,
                group: None,
                hard: HardState::default(),
                epoch: 0,
                rank: rng.random(),
                incarnation: 0,
                known_leader: (0, None),
                last_leader_change: start,
                delivered: HashMap::new(),
                received: Vec::new(),
                receipts: HashMap::new(),
                rendezvous: None,
                lineage: 0,
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            start,
            now: start,
            nodes,
            queue: BTreeMap::new(),
            signing: BTreeMap::new(),
            next_id: 0,
            fifo: HashMap::new(),
            blocked: HashSet::new(),
            loss,
            dup: 0.0,
            leaders: HashMap::new(),
            next_lineage: 1,
            granted: HashMap::new(),
            elected: HashMap::new(),
            services,
            failure: None,
            config: GroupConfig::new("lobby"),
            same_instant: 0,
            cut_from_proxy: HashSet::new(),
            hostile: Vec::new(),
            inbox: VecDeque::new(),
            watch: invariants::Watch::new(members, start),
        };
        for i in 0..members {
            sim.boot(i);
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
        let newcomer = node.hard.term == 0 && node.hard.members.is_empty();
        node.rendezvous = self
            .services
            .is_some()
            .then(|| Rendezvous::new(RendezvousConfig::default(), GROUP, &me, newcomer, self.now));
        let group = Group::new(self.config.clone(), me, node.hard.clone(), rng, self.now).unwrap();
        node.group = Some(group);
        node.known_leader = (node.hard.term, None);
        node.last_leader_change = self.now;
        node.delivered.clear();
        node.receipts.clear();
        self.watch.booted(i, self.now, self.nodes[i].group.as_ref());
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
        if let Some(g) = self.nodes[i].group.take() {
            self.watch.crashed(i, self.now, &g);
        }
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
        if self.services.is_some() {
            self.rendezvous(i);
        } else {
            self.rejoin_by_oracle(i);
        }
    }

    /// What the proxy would say: the up leader of the highest term.
    pub fn oracle_leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&j| self.group(j).is_some_and(|g| g.role() == Role::Leader))
            .max_by_key(|&j| self.group(j).map(|g| g.term()))
    }

    /// Without services: join the up leader of the highest term, or, when the group has
    /// no member at all (not even a crashed one whose persisted membership lists it),
    /// found it again in a term after every term seen.
    fn rejoin_by_oracle(&mut self, i: usize) {
        let anyone_holds_the_group = self
            .nodes
            .iter()
            .any(|n| n.hard.members.iter().any(|m| m.name == n.name));
        if let Some(l) = self.oracle_leader().filter(|&l| l != i) {
            let leader = self.nodes[l].name.clone();
            self.with(i, |g, now| g.join(now, &leader).unwrap());
        } else if !anyone_holds_the_group {
            let last_term = self.leaders.keys().map(|k| k.1).max().unwrap_or(0);
            self.trace(|| format!("BOOTSTRAP {} after term {last_term}", self.nodes[i].name));
            self.with(i, |g, now| g.bootstrap(now, last_term).unwrap());
        }
    }

    fn wall_ms(&self) -> u64 {
        WALL_EPOCH_MS + self.elapsed().as_millis() as u64
    }

    /// Node `i`'s business with the proxy, as its driver does it: the shipping
    /// [`Rendezvous`] polled for requests, each answered at once by the simulated proxy.
    /// After an accepted announcement, checks that the record the proxy holds names a
    /// leader that a majority elected in its term.
    fn rendezvous(&mut self, i: usize) {
        let wall_ms = self.wall_ms();
        let elapsed = self.elapsed();
        loop {
            let now = self.now;
            let node = &mut self.nodes[i];
            let (Some(rendezvous), Some(group)) = (node.rendezvous.as_mut(), node.group.as_mut())
            else {
                return;
            };
            let request = rendezvous.poll_request(now, wall_ms, group);
            self.drain(i);
            let Some(request) = request else { break };
            let Some(services) = self.services.as_mut() else {
                return;
            };
            let reachable = services.proxy_up(elapsed) && !self.cut_from_proxy.contains(&i);
            let answer = match &request {
                _ if !reachable => ProxyAnswer::Failed("the proxy did not answer".into()),
                ProxyRequest::Query => ProxyAnswer::Record(services.query(elapsed)),
                ProxyRequest::Claim(draft) => ProxyAnswer::Verdict(verdict(services.propose(
                    Kind::Claim,
                    draft,
                    &[],
                    elapsed,
                ))),
                ProxyRequest::Announce { draft, votes } => ProxyAnswer::Verdict(verdict(
                    services.propose(Kind::Announce, draft, votes, elapsed),
                )),
            };
            let name = self.nodes[i].name.clone();
            self.trace(|| format!("PROXY {name}: {request:?} -> {answer:?}"));
            let accepted_announcement = matches!(request, ProxyRequest::Announce { .. })
                && answer == ProxyAnswer::Verdict(Verdict::Accepted);
            let node = &mut self.nodes[i];
            if let (Some(rendezvous), Some(group)) = (node.rendezvous.as_mut(), node.group.as_mut())
            {
                rendezvous.handle_answer(now, group, answer);
            }
            // A founding is noted before the group's events of it (its leadership).
            self.rendezvous_events(i);
            self.drain(i);
            if accepted_announcement {
                self.check_proxy_record();
            }
        }
        self.rendezvous_events(i);
    }

    /// What node `i`'s rendezvous told: traced; a founding starts a new lineage.
    fn rendezvous_events(&mut self, i: usize) {
        while let Some(event) = self.nodes[i]
            .rendezvous
            .as_mut()
            .and_then(|r| r.poll_event())
        {
            let name = self.nodes[i].name.clone();
            self.trace(|| format!("{name} rendezvous: {event:?}"));
            if event == RendezvousEvent::Founded {
                self.new_lineage(i);
            }
        }
    }

    fn check_proxy_record(&mut self) {
        let elapsed = self.elapsed();
        let Some(record) = self.services.as_mut().and_then(|s| s.query(elapsed)) else {
            return;
        };
        if !self.is_elected(record.term, &record.leader) {
            let why = format!(
                "the proxy holds {} for term {}, which no majority elected (elected: {:?})",
                record.leader,
                record.term,
                self.elected.get(&record.term)
            );
            self.fail(why);
        }
    }

    /// Node `i` founded a group: a new one, as far as terms and stamps go.
    fn new_lineage(&mut self, i: usize) {
        self.nodes[i].lineage = self.next_lineage;
        self.next_lineage += 1;
    }

    /// The index of the node named `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Without services, the driver's periodic "ask the proxy again" for nodes not
    /// (yet) admitted, or without a leader for a second (perhaps removed without hearing
    /// of it), with the harness as the proxy. (With services, each node's
    /// [`Rendezvous`] does it.)
    pub fn rejoin_strays(&mut self) {
        if self.services.is_some() {
            return;
        }
        for i in 0..self.nodes.len() {
            let leaderless = self.nodes[i].known_leader.1.is_none()
                && self.now - self.nodes[i].last_leader_change > Duration::from_secs(1);
            let stray = self
                .group(i)
                .is_some_and(|g| g.role() != Role::Left && (!g.is_member() || leaderless));
            if stray {
                self.rejoin_by_oracle(i);
            }
        }
    }

    /// Cuts every link between nodes on different sides, both ways.
    pub fn partition(&mut self, side: Vec<u8>) {
        self.trace(|| format!("PARTITION {side:?}"));
        self.clear_blocked();
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if side[a] != side[b] {
                    self.blocked.insert((a, b));
                }
            }
        }
        self.watch.links_changed(self.now, &self.blocked);
    }

    /// Cuts the links from every node in `from` to every node not in it, one way only.
    pub fn one_way(&mut self, from: &[usize]) {
        self.trace(|| format!("ONE-WAY from {from:?}"));
        self.clear_blocked();
        for &a in from {
            for b in (0..self.nodes.len()).filter(|b| !from.contains(b)) {
                self.blocked.insert((a, b));
            }
        }
        self.watch.links_changed(self.now, &self.blocked);
    }

    pub fn heal(&mut self) {
        self.clear_blocked();
    }

    /// The proxy restarts and forgets every record (see [`Services::restart_proxy`]).
    pub fn restart_proxy(&mut self) {
        self.trace(|| "PROXY RESTART".into());
        if let Some(services) = self.services.as_mut() {
            services.restart_proxy();
        }
    }

    /// The proxy answers nobody for `d`.
    pub fn proxy_down_for(&mut self, d: Duration) {
        self.trace(|| format!("PROXY DOWN for {d:?}"));
        let until = self.elapsed() + d;
        if let Some(services) = self.services.as_mut() {
            services.proxy_down(until);
        }
    }

    /// Nodes `cut` cannot reach the proxy (the others can), until [`Sim::heal_proxy`].
    pub fn cut_from_proxy(&mut self, cut: &[usize]) {
        self.trace(|| format!("CUT FROM PROXY {cut:?}"));
        self.cut_from_proxy = cut.iter().copied().collect();
    }

    /// The proxy is up and reachable by every node again.
    pub fn heal_proxy(&mut self) {
        self.cut_from_proxy.clear();
        if let Some(services) = self.services.as_mut() {
            services.proxy_back();
        }
    }

    /// The record the proxy holds now (for checks; `None` without services, or when it
    /// holds none).
    pub fn proxy_record(&mut self) -> Option<sockmsg_proxy::handler::RecordSummary> {
        let elapsed = self.elapsed();
        self.services.as_mut().and_then(|s| s.query(elapsed))
    }

    /// Restores every link, noting which nodes were cut off until now.
    fn clear_blocked(&mut self) {
        self.watch.links_changed(self.now, &self.blocked);
        self.blocked.clear();
    }

    /// Whether messages from `a` reach `b`.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        !self.blocked.contains(&(a, b))
    }

    /// Whether some link from or to node `i` is cut.
    pub fn cut_off(&self, i: usize) -> bool {
        self.blocked.iter().any(|&(a, b)| a == i || b == i)
    }

    /// Registers a hostile actor `name` (see [`byzantine`]): frames to it go to the
    /// inbox, and it may [`Sim::inject`] frames.
    pub fn add_hostile(&mut self, name: &str) {
        assert!(
            !self.nodes.iter().any(|n| n.name == name),
            "a hostile actor cannot be a node"
        );
        if !self.is_hostile(name) {
            self.hostile.push(name.to_owned());
        }
    }

    pub fn is_hostile(&self, name: &str) -> bool {
        self.hostile.iter().any(|h| h == name)
    }

    /// The frames honest nodes sent to hostile actors since the last call: (to, from,
    /// frame), oldest first.
    pub fn take_inbox(&mut self) -> Vec<(String, String, GroupMessage)> {
        self.inbox.drain(..).collect()
    }

    /// Hostile actor `from` sends `msg` to node `to` (unknown names are dropped): it
    /// arrives as from `from`, with the delay, loss and duplication of any message.
    pub fn inject(&mut self, from: &str, to: &str, msg: GroupMessage) {
        let origin = self
            .hostile
            .iter()
            .position(|h| h == from)
            .map(Origin::Hostile)
            .expect("only a registered hostile actor injects");
        let Some(to) = self.nodes.iter().position(|n| n.name == to) else {
            return;
        };
        self.note_grant(from, &msg);
        let class = msg.class();
        self.enqueue(origin, to, class, msg);
    }

    /// Granted real votes, as sent on the wire by their voter (a vote naming another
    /// voter is dropped by its receiver, and counts for nothing).
    fn note_grant(&mut self, from: &str, msg: &GroupMessage) {
        if let GroupMessage::Vote(vote) = msg {
            if vote.granted && !vote.pre_vote && vote.voter == from {
                self.granted
                    .entry((vote.term, vote.candidate.clone()))
                    .or_default()
                    .insert(vote.voter.clone());
            }
        }
    }

    fn origin_name(&self, origin: Origin) -> &str {
        match origin {
            Origin::Node(i) => &self.nodes[i].name,
            Origin::Hostile(h) => &self.hostile[h],
        }
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("at {:?}: {why}", self.elapsed()));
        }
    }

    /// Performs node `i`'s outputs, then checks what its input changed.
    fn drain(&mut self, i: usize) {
        self.perform_outputs(i);
        self.observe(i);
    }

    fn perform_outputs(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].group.as_mut().and_then(|g| g.poll_output()) else {
                return;
            };
            match out {
                Output::Persist(hard) => self.nodes[i].hard = hard,
                Output::Send { to, class, frame } => self.send(i, &to, class, frame),
                Output::Event(event) => self.on_event(i, event),
                Output::SignVote { vote, at } => {
                    let took = Duration::from_micros(self.rng.random_range(1_000..=8_000));
                    self.next_id += 1;
                    let signing = Signing {
                        node: i,
                        epoch: self.nodes[i].epoch,
                        vote,
                    };
                    self.signing
                        .insert((at.max(self.now) + took, self.next_id), signing);
                }
                // Names are addresses here.
                Output::Locate { .. } => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: &str, class: MessageClass, msg: GroupMessage) {
        let sender = self.nodes[from].name.clone();
        self.note_grant(&sender, &msg);
        if self.is_hostile(to) {
            return self.deliver_to_hostile(class, to, sender, msg);
        }
        let Some(to) = self.nodes.iter().position(|n| n.name == to) else {
            return;
        };
        self.enqueue(Origin::Node(from), to, class, msg);
    }

    /// A frame for a hostile actor: kept for it to read (lost like any other if
    /// unreliable).
    fn deliver_to_hostile(
        &mut self,
        class: MessageClass,
        to: &str,
        from: String,
        msg: GroupMessage,
    ) {
        if class == MessageClass::Unreliable && self.rng.random_bool(self.loss) {
            return;
        }
        if self.inbox.len() >= INBOX_LIMIT {
            self.inbox.pop_front();
        }
        self.inbox.push_back((to.to_owned(), from, msg));
    }

    fn enqueue(&mut self, from: Origin, to: usize, class: MessageClass, msg: GroupMessage) {
        let from_epoch = match from {
            Origin::Node(i) => self.nodes[i].epoch,
            Origin::Hostile(_) => 0,
        };
        let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            if class == MessageClass::Unreliable && self.rng.random_bool(self.loss) {
                continue;
            }
            let delay = Duration::from_micros(self.rng.random_range(100..=500));
            let mut at = self.now + delay;
            if class == MessageClass::Ordered {
                let last = self.fifo.entry((from, to)).or_insert(at);
                at = at.max(*last);
                *last = at;
            }
            self.next_id += 1;
            let flight = InFlight {
                from,
                from_epoch,
                to,
                to_epoch: self.nodes[to].epoch,
                msg: msg.clone(),
            };
            self.queue.insert((at, self.next_id), flight);
        }
    }

    pub fn trace(&self, what: impl FnOnce() -> String) {
        if std::env::var_os("SOCKMSG_SIM_TRACE").is_some() {
            eprintln!("{:>12?} {}", self.elapsed(), what());
        }
    }

    fn on_event(&mut self, i: usize, event: GroupEvent) {
        self.trace(|| format!("{} {event:?}", self.nodes[i].name));
        let now = self.now;
        if let Some(rendezvous) = self.nodes[i].rendezvous.as_mut() {
            rendezvous.handle_event(now, &event);
        }
        match event {
            GroupEvent::LeaderChanged { term, leader } => {
                if leader.as_deref() == Some(self.nodes[i].name.as_str()) {
                    self.check_majority(i, term);
                } else if let Some(l) = &leader {
                    self.check_followed(i, term, l);
                }
                if let Some(j) = leader.as_deref().and_then(|l| self.node_index(l)) {
                    self.nodes[i].lineage = self.nodes[j].lineage;
                }
                if let Some(l) = &leader {
                    let lineage = self.nodes[i].lineage;
                    let previous = self
                        .leaders
                        .entry((lineage, term))
                        .or_insert_with(|| l.clone())
                        .clone();
                    if previous != *l {
                        self.check_second_leader(i, term, &previous, l);
                    }
                }
                // Leaderless since the first term without one, as the driver counts it:
                // a node moving from term to term without a leader is still leaderless.
                let still_leaderless = self.nodes[i].known_leader.1.is_none() && leader.is_none();
                self.nodes[i].known_leader = (term, leader);
                if !still_leaderless {
                    self.nodes[i].last_leader_change = self.now;
                }
            }
            GroupEvent::Delivered {
                seq, to: Some(to), ..
            } => self.on_receipt(i, seq, to, true),
            GroupEvent::Undelivered { seq, to } => self.on_receipt(i, seq, to, false),
            GroupEvent::ChatReceived {
                sender,
                incarnation,
                seq,
                direct,
                ..
            } => {
                if self.hostile.contains(&sender) {
                    // A liar numbers its lines as it likes; only honest senders' lines
                    // are promised in order.
                    return;
                }
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
                node.received.push((sender, incarnation, seq, direct));
            }
            GroupEvent::PeerUnreachable { name } => self.check_unreachable(i, &name),
            GroupEvent::MembersChanged { version, members } => {
                self.note_members_changed(i, version, &members)
            }
            GroupEvent::Removed => {
                // Dissolved into another group (SPEC.md §12.7): a new incarnation, whose
                // lines are numbered afresh.
                let incarnation = self.group(i).map(|g| g.me().incarnation);
                if let Some(incarnation) = incarnation.filter(|c| *c != self.nodes[i].incarnation) {
                    self.nodes[i].incarnation = incarnation;
                    self.nodes[i].receipts.clear();
                }
            }
            GroupEvent::Left => {
                let me = self.nodes[i].group.as_ref().map(|g| g.me().clone());
                if let Some(me) = me {
                    self.watch.left(&me);
                }
            }
            _ => {}
        }
    }

    /// Node `i` was told `second` leads `term`, where `first` was known to lead: a
    /// failure, unless it is the liar's doing, which majority quorums cannot stop
    /// (SPEC.md §12.6): no honest node voted for both, and a hostile actor voted for
    /// (or is) one of them. Either it voted for both, or the two majorities do not
    /// meet because they count different memberships, which the liar's
    /// acknowledgements on both sides of a partition made. Counted then, in
    /// `Watch::double_votes`. (Two leaders with no liar's vote, or with an honest
    /// voter in common, always fail; and the honest schedules fail on any.)
    fn check_second_leader(&mut self, i: usize, term: u64, first: &str, second: &str) {
        let voters = |s: &Self, leader: &str| -> BTreeSet<String> {
            let mut voters = s
                .granted
                .get(&(term, leader.to_owned()))
                .cloned()
                .unwrap_or_default();
            if s.is_hostile(leader) {
                voters.insert(leader.to_owned());
            }
            voters
        };
        let (a, b) = (voters(self, first), voters(self, second));
        let both: Vec<&String> = a.intersection(&b).collect();
        let liar_voted = a.union(&b).any(|v| self.is_hostile(v));
        let honest_twice: Vec<&&String> = both.iter().filter(|v| !self.is_hostile(v)).collect();
        if liar_voted && honest_twice.is_empty() {
            self.trace(|| format!("LIAR made two leaders in term {term}: {first} and {second}"));
            self.watch.double_votes.insert(term);
            return;
        }
        let why = format!(
            "two leaders in term {term}: {first} and {second} (told to {}; honest voters of \
             both: {honest_twice:?})",
            self.nodes[i].name
        );
        self.fail(why);
    }

    /// Records `leader` as elected in `term` by a majority the harness counted.
    fn note_elected(&mut self, term: u64, leader: String) {
        let leaders = self.elected.entry(term).or_default();
        if !leaders.contains(&leader) {
            leaders.push(leader);
        }
    }

    /// Whether a majority the harness counted elected `leader` in `term`.
    pub fn is_elected(&self, term: u64, leader: &str) -> bool {
        self.elected
            .get(&term)
            .is_some_and(|leaders| leaders.iter().any(|l| l == leader))
    }

    /// Node `i` just became leader in `term`: it must hold granted votes, as sent on the
    /// wire (its own vote is the one it persisted), from a majority of its membership.
    fn check_majority(&mut self, i: usize, term: u64) {
        let Some(g) = self.group(i) else { return };
        let name = &self.nodes[i].name;
        let voters = self.granted.get(&(term, name.clone()));
        let members: Vec<&str> = g.members().iter().map(|m| m.name.as_str()).collect();
        let own =
            self.nodes[i].hard.term == term && self.nodes[i].hard.voted_for.as_ref() == Some(name);
        let votes = members
            .iter()
            .filter(|m| (**m == name.as_str() && own) || voters.is_some_and(|v| v.contains(**m)))
            .count();
        if votes * 2 <= members.len() {
            let why = format!(
                "{name} leads term {term} with {votes} of {} votes",
                members.len()
            );
            self.fail(why);
            return;
        }
        self.note_elected(term, name.clone());
    }

    fn on_receipt(&mut self, i: usize, seq: u64, to: String, delivered: bool) {
        let node = &mut self.nodes[i];
        if let Some(before) = node.receipts.insert((seq, to.clone()), delivered) {
            let why = format!(
                "{} got a second receipt for line {seq} to {to} ({before} then {delivered})",
                node.name
            );
            self.fail(why);
        }
    }

    /// Processes the next event (a message arrival or a timer) if it is due by `until`;
    /// returns false once time has reached `until`.
    pub fn step(&mut self, until: Instant) -> bool {
        let next_msg = [self.queue.keys().next(), self.signing.keys().next()]
            .into_iter()
            .flatten()
            .min()
            .map(|k| k.0);
        let next_timer = (0..self.nodes.len())
            .filter_map(|i| {
                let group = self.group(i).and_then(|g| g.poll_timeout());
                let rendezvous = self.nodes[i]
                    .rendezvous
                    .as_ref()
                    .zip(self.group(i))
                    .and_then(|(r, g)| r.poll_timeout(g));
                group.into_iter().chain(rendezvous).min().map(|t| (t, i))
            })
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
        let next_signature = self.signing.keys().next().map(|k| k.0);
        if next_signature == Some(next) {
            let (_, Signing { node, epoch, vote }) = self.signing.pop_first().unwrap();
            if self.nodes[node].epoch == epoch && self.is_up(node) {
                let vote = vote.signed(self.nodes[node].signer.as_ref());
                if let Some(g) = self.nodes[node].group.as_mut() {
                    g.vote_signed(vote);
                }
                self.drain(node);
            }
        } else if next_msg == Some(next) {
            let (_, flight) = self.queue.pop_first().unwrap();
            let up = self.nodes[flight.to].epoch == flight.to_epoch && self.is_up(flight.to);
            let linked = match flight.from {
                Origin::Node(from) => self.connected(from, flight.to),
                Origin::Hostile(_) => true,
            };
            let arrives = up && linked;
            self.report_chat_fate(&flight, arrives);
            if arrives {
                let from = self.origin_name(flight.from).to_owned();
                let routine = matches!(
                    flight.msg,
                    GroupMessage::Heartbeat { .. }
                        | GroupMessage::MembershipAck { .. }
                        | GroupMessage::Chat(_)
                );
                if !routine || matches!(flight.from, Origin::Hostile(_)) {
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
        for i in 0..self.nodes.len() {
            self.rendezvous(i);
        }
        true
    }

    /// Tells a chat line's sender (if still the same process) what its session would
    /// have: acknowledged, or lost.
    fn report_chat_fate(&mut self, flight: &InFlight, arrived: bool) {
        let GroupMessage::Chat(line) = &flight.msg else {
            return;
        };
        let Origin::Node(from) = flight.from else {
            return;
        };
        if self.nodes[from].epoch != flight.from_epoch {
            return;
        }
        let to = self.nodes[flight.to].name.clone();
        let seq = line.seq;
        self.with(from, |g, _| {
            if arrived {
                g.chat_delivered(&to, seq)
            } else {
                g.chat_failed(&to, seq)
            }
        });
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
                self.nodes[i].known_leader == (g.term(), Some(name.clone()))
                    && self.connected(i, l)
                    && self.connected(l, i)
            })
            .then_some(l)
    }
}

/// p-th percentile (0..=100) of sorted `values`.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let idx = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[idx.min(sorted.len() - 1)]
}
