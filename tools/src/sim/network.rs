//! The [`Network`]: nodes, the virtual clock, datagrams in flight, and the run loops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::link::{chance, LinkQueue};
use super::partition::Cuts;
use super::trace::Recorder;
use super::{DropReason, LinkConfig, Node, SimError, SimEvent, Stats};

/// Bounds on every run, so a livelocked or flooding node fails a test instead of hanging
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events one `run_*` call may process.
    pub max_steps: u64,
    /// Datagrams taken from one node in one poll; more is reported as
    /// [`SimError::TransmitFlood`] (by `run_*`) and counted in [`Stats::floods`].
    pub max_transmits_per_poll: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: 1_000_000,
            max_transmits_per_poll: 10_000,
        }
    }
}

/// A virtual network of [`Node`]s, each at a `SocketAddr`.
///
/// Method groups, as in quinn-proto's `Connection`:
/// - setup: [`new`](Self::new), [`add_node`](Self::add_node),
///   [`set_default_link`](Self::set_default_link), [`set_link`](Self::set_link),
///   [`set_limits`](Self::set_limits);
/// - faults: [`partition`](Self::partition), [`partition_one_way`](Self::partition_one_way),
///   [`isolate`](Self::isolate), [`heal`](Self::heal), [`crash`](Self::crash),
///   [`revive`](Self::revive), [`replace`](Self::replace), [`inject`](Self::inject);
/// - driving: [`step`](Self::step), [`run_until`](Self::run_until),
///   [`run_for`](Self::run_for), [`run_until_quiet`](Self::run_until_quiet),
///   [`run_while`](Self::run_while);
/// - getters: [`node`](Self::node), [`nodes`](Self::nodes), [`now`](Self::now),
///   [`stats`](Self::stats), [`trace_hash`](Self::trace_hash), [`events`](Self::events).
///
/// Time bounds given as a `Duration` are added to [`now`](Self::now), which panics (as
/// `Instant + Duration` does) if the sum overflows; give bounds of years, not `MAX`.
///
/// Between steps a test may reach into nodes with [`node_mut`](Self::node_mut) (to give
/// a command); whatever the node then wants to send leaves at the current time, at the
/// start of the next step.
pub struct Network<N> {
    /// The fixed origin of virtual time; every behaviour depends only on offsets from it.
    epoch: Instant,
    /// Never decreases; moved only by processing an event or by a run reaching its bound.
    now: Instant,
    seed: u64,
    nodes: BTreeMap<SocketAddr, Slot<N>>,
    /// The current deadline of every live node that has one, with the sequence number
    /// taken when it was armed (to order it against same-instant events).
    timers: BTreeMap<SocketAddr, Armed>,
    wire: Wire,
    limits: Limits,
}

struct Slot<N> {
    node: N,
    /// False between `crash` and `revive`: the node is neither polled nor delivered to.
    alive: bool,
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    deadline: Instant,
    seq: u64,
}

/// Everything between the nodes: links, cuts, datagrams in flight, randomness, counters.
/// Split from `Network::nodes` so a node can be polled while the wire is mutated.
struct Wire {
    rng: ChaCha8Rng,
    default_link: LinkConfig,
    links: BTreeMap<(SocketAddr, SocketAddr), LinkConfig>,
    queues: BTreeMap<(SocketAddr, SocketAddr), LinkQueue>,
    cuts: Cuts,
    /// Copies in flight, keyed by (arrival time, sequence number): a priority queue whose
    /// order never depends on hashing.
    in_flight: BTreeMap<(Instant, u64), InFlight>,
    /// Source of the tie-breaking sequence numbers, shared by sends and timer arming.
    next_seq: u64,
    stats: Stats,
    recorder: Recorder,
}

struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The next thing to happen.
#[derive(Debug, Clone, Copy)]
enum Event {
    Deliver { key: (Instant, u64) },
    Timeout { node: SocketAddr, at: Instant },
}

impl Event {
    fn at(&self) -> Instant {
        match *self {
            Event::Deliver { key: (at, _) } | Event::Timeout { at, .. } => at,
        }
    }
}

/// Key-derivation tags for the ChaCha seeds, so the network's stream and the streams
/// handed to nodes never coincide.
const NETWORK_DOMAIN: &[u8; 8] = b"sim:net\0";
const NODE_DOMAIN: &[u8; 8] = b"sim:node";

fn chacha_seed(seed: u64, domain: &[u8; 8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(domain);
    key
}

impl<N: Node> Network<N> {
    /// An empty network whose every random decision follows from `seed`, with
    /// [`LinkConfig::default`] links and [`Limits::default`].
    pub fn new(seed: u64) -> Self {
        let epoch = Instant::now();
        Self {
            epoch,
            now: epoch,
            seed,
            nodes: BTreeMap::new(),
            timers: BTreeMap::new(),
            wire: Wire {
                rng: ChaCha8Rng::from_seed(chacha_seed(seed, NETWORK_DOMAIN)),
                default_link: LinkConfig::default(),
                links: BTreeMap::new(),
                queues: BTreeMap::new(),
                cuts: Cuts::default(),
                in_flight: BTreeMap::new(),
                next_seq: 0,
                stats: Stats::default(),
                recorder: Recorder::default(),
            },
            limits: Limits::default(),
        }
    }

    // ---- setup ------------------------------------------------------------------------

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A generator for a node's own randomness (election timeouts, incarnations, keys),
    /// determined by the network's seed and `stream` (use one stream per node, e.g. its
    /// index). It is independent of the network's generator: creating one does not change
    /// what the links do.
    pub fn derived_rng(&self, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::from_seed(chacha_seed(self.seed, NODE_DOMAIN));
        rng.set_stream(stream);
        rng
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn default_link(&self) -> &LinkConfig {
        &self.wire.default_link
    }

    /// The config of every link without an override. Affects datagrams sent from now on.
    pub fn set_default_link(&mut self, config: LinkConfig) -> Result<(), SimError> {
        config.validate()?;
        self.wire.default_link = config;
        Ok(())
    }

    /// Overrides the directed link `from → to`.
    pub fn set_link(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        config: LinkConfig,
    ) -> Result<(), SimError> {
        config.validate()?;
        self.wire.links.insert((from, to), config);
        Ok(())
    }

    /// Overrides both directions between `a` and `b`.
    pub fn set_link_both(
        &mut self,
        a: SocketAddr,
        b: SocketAddr,
        config: LinkConfig,
    ) -> Result<(), SimError> {
        self.set_link(a, b, config)?;
        self.set_link(b, a, config)
    }

    /// Returns `from → to` to the default config.
    pub fn clear_link(&mut self, from: SocketAddr, to: SocketAddr) {
        self.wire.links.remove(&(from, to));
    }

    /// The config that applies to `from → to`.
    pub fn link(&self, from: SocketAddr, to: SocketAddr) -> &LinkConfig {
        self.wire.link(from, to)
    }

    /// Adds a live node at `addr`. Its first transmits and timer are polled at the next
    /// step.
    pub fn add_node(&mut self, addr: SocketAddr, node: N) -> Result<(), SimError> {
        if self.nodes.contains_key(&addr) {
            return Err(SimError::DuplicateNode(addr));
        }
        self.nodes.insert(addr, Slot { node, alive: true });
        Ok(())
    }

    // ---- faults -----------------------------------------------------------------------

    /// Cuts every link between a node of `a` and a node of `b`, both ways, until
    /// [`heal`](Self::heal). Datagrams in flight on those links are lost too.
    pub fn partition(&mut self, a: &[SocketAddr], b: &[SocketAddr]) {
        self.wire.cuts.cut(a, b);
        self.wire.cuts.cut(b, a);
    }

    /// Cuts only the links from `from` to `to` (an asymmetric fault: `to` still hears
    /// nothing from `from` while `from` hears `to`).
    pub fn partition_one_way(&mut self, from: &[SocketAddr], to: &[SocketAddr]) {
        self.wire.cuts.cut(from, to);
    }

    /// Cuts `addr` from every other address, both ways, until [`heal`](Self::heal).
    pub fn isolate(&mut self, addr: SocketAddr) {
        self.wire.cuts.isolate(addr);
    }

    /// Removes every partition and isolation.
    pub fn heal(&mut self) {
        self.wire.cuts.heal();
    }

    /// Stops `addr`: it is no longer polled, its timer does not fire, and datagrams that
    /// reach it are dropped ([`DropReason::Unreachable`]). Datagrams it already sent stay
    /// in flight. Its state is kept, as a paused process's would be; to restart with
    /// fresh state, [`replace`](Self::replace) it, then [`revive`](Self::revive) it.
    pub fn crash(&mut self, addr: SocketAddr) -> Result<(), SimError> {
        self.slot_mut(addr)?.alive = false;
        self.timers.remove(&addr);
        Ok(())
    }

    /// Restarts a crashed node with whatever state it now has. A deadline it holds that
    /// passed while it was down fires at once.
    pub fn revive(&mut self, addr: SocketAddr) -> Result<(), SimError> {
        self.slot_mut(addr)?.alive = true;
        Ok(())
    }

    /// Swaps the state at `addr` for `node` (a restart from disk, or a new incarnation),
    /// returning the old state. Liveness is unchanged; the old timer is forgotten.
    pub fn replace(&mut self, addr: SocketAddr, node: N) -> Result<N, SimError> {
        let old = std::mem::replace(&mut self.slot_mut(addr)?.node, node);
        self.timers.remove(&addr);
        Ok(old)
    }

    /// Sends `bytes` from `from` (which need not be a node: a spoofed or outside source)
    /// to `to` now, through the same link model as a node's datagram.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let at = self.now - self.epoch;
        self.wire.send(self.now, at, from, to, bytes);
    }

    // ---- getters ----------------------------------------------------------------------

    /// The node at `addr`.
    ///
    /// # Panics
    ///
    /// If there is none: a test addressing a node it never added is a bug in the test.
    /// [`get`](Self::get) does not panic.
    #[track_caller]
    pub fn node(&self, addr: SocketAddr) -> &N {
        match self.get(addr) {
            Some(node) => node,
            None => panic!("no simulated node at {addr}"),
        }
    }

    /// The node at `addr`, to inspect or command it between steps.
    ///
    /// # Panics
    ///
    /// If there is none; see [`node`](Self::node).
    #[track_caller]
    pub fn node_mut(&mut self, addr: SocketAddr) -> &mut N {
        match self.get_mut(addr) {
            Some(node) => node,
            None => panic!("no simulated node at {addr}"),
        }
    }

    pub fn get(&self, addr: SocketAddr) -> Option<&N> {
        self.nodes.get(&addr).map(|slot| &slot.node)
    }

    pub fn get_mut(&mut self, addr: SocketAddr) -> Option<&mut N> {
        self.nodes.get_mut(&addr).map(|slot| &mut slot.node)
    }

    /// Every node, crashed or not, in address order.
    pub fn nodes(&self) -> impl Iterator<Item = (SocketAddr, &N)> + '_ {
        self.nodes.iter().map(|(&addr, slot)| (addr, &slot.node))
    }

    /// Every node, crashed or not, in address order.
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = (SocketAddr, &mut N)> + '_ {
        self.nodes
            .iter_mut()
            .map(|(&addr, slot)| (addr, &mut slot.node))
    }

    /// Whether there is a node at `addr` and it has not crashed.
    pub fn is_alive(&self, addr: SocketAddr) -> bool {
        self.nodes.get(&addr).is_some_and(|slot| slot.alive)
    }

    /// The virtual current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The origin of virtual time.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Virtual time since the epoch.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    pub fn stats(&self) -> Stats {
        self.wire.stats
    }

    /// Copies scheduled but not yet delivered or dropped.
    pub fn in_flight(&self) -> usize {
        self.wire.in_flight.len()
    }

    /// A fingerprint of the run so far: FNV-1a over every delivery (time offset, source,
    /// destination, bytes) and every timer firing (time offset, node), in order. Equal
    /// for two runs with the same seed and the same nodes; a different seed (on a link
    /// with any randomness) gives a different one.
    pub fn trace_hash(&self) -> u64 {
        self.wire.recorder.hash()
    }

    /// Starts (or stops and discards) the event log read by [`events`](Self::events).
    /// Off by default: it grows with every event.
    pub fn record_events(&mut self, on: bool) {
        self.wire.recorder.set_logging(on);
    }

    /// Events logged since logging started or the log was last taken.
    pub fn events(&self) -> &[SimEvent] {
        self.wire.recorder.log()
    }

    pub fn take_events(&mut self) -> Vec<SimEvent> {
        self.wire.recorder.take_log()
    }

    // ---- driving ----------------------------------------------------------------------

    /// Polls every live node, then processes the earliest event (a delivery or a timer),
    /// advancing the clock to it. Returns `false`, leaving the clock alone, when there is
    /// nothing left to happen. A flood ([`Limits::max_transmits_per_poll`]) is only
    /// counted in [`Stats::floods`] here; the `run_*` methods turn it into an error.
    pub fn step(&mut self) -> bool {
        self.poll_nodes();
        match self.next_event() {
            Some(event) => {
                self.process(event);
                true
            }
            None => false,
        }
    }

    /// Processes every event due at or before `deadline`, then sets the clock to
    /// `deadline` (if it is later than now).
    pub fn run_until(&mut self, deadline: Instant) -> Result<(), SimError> {
        let mut steps = 0;
        loop {
            self.checked_poll()?;
            match self.next_event() {
                Some(event) if event.at() <= deadline => self.bounded_process(event, &mut steps)?,
                _ => break,
            }
        }
        self.now = self.now.max(deadline);
        Ok(())
    }

    /// [`run_until`](Self::run_until) `now + duration`.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimError> {
        self.run_until(self.now + duration)
    }

    /// Runs until nothing is in flight and no live node has a timer, leaving the clock at
    /// the last event. Fails with [`SimError::TimeLimit`] (clock at `now + max_time`) if
    /// that does not happen within `max_time`.
    pub fn run_until_quiet(&mut self, max_time: Duration) -> Result<(), SimError> {
        let deadline = self.now + max_time;
        let mut steps = 0;
        loop {
            self.checked_poll()?;
            match self.next_event() {
                None => return Ok(()),
                Some(event) if event.at() <= deadline => self.bounded_process(event, &mut steps)?,
                Some(_) => {
                    self.now = self.now.max(deadline);
                    return Err(SimError::TimeLimit { at: self.elapsed() });
                }
            }
        }
    }

    /// Runs while `predicate` holds, checking it before every event (after the nodes are
    /// polled): the place for invariant checks that panic. Returns `Ok` as soon as it is
    /// false; [`SimError::TimeLimit`] if it still holds after `max_time`;
    /// [`SimError::Quiescent`] if it holds but nothing is left to happen.
    pub fn run_while(
        &mut self,
        mut predicate: impl FnMut(&Self) -> bool,
        max_time: Duration,
    ) -> Result<(), SimError> {
        let deadline = self.now + max_time;
        let mut steps = 0;
        loop {
            self.checked_poll()?;
            if !predicate(self) {
                return Ok(());
            }
            match self.next_event() {
                None => return Err(SimError::Quiescent { at: self.elapsed() }),
                Some(event) if event.at() <= deadline => self.bounded_process(event, &mut steps)?,
                Some(_) => {
                    self.now = self.now.max(deadline);
                    return Err(SimError::TimeLimit { at: self.elapsed() });
                }
            }
        }
    }

    // ---- internals --------------------------------------------------------------------

    fn slot_mut(&mut self, addr: SocketAddr) -> Result<&mut Slot<N>, SimError> {
        self.nodes.get_mut(&addr).ok_or(SimError::UnknownNode(addr))
    }

    fn checked_poll(&mut self) -> Result<(), SimError> {
        match self.poll_nodes() {
            None => Ok(()),
            Some(node) => Err(SimError::TransmitFlood {
                node,
                limit: self.limits.max_transmits_per_poll,
                at: self.elapsed(),
            }),
        }
    }

    fn bounded_process(&mut self, event: Event, steps: &mut u64) -> Result<(), SimError> {
        if *steps >= self.limits.max_steps {
            return Err(SimError::StepLimit {
                limit: self.limits.max_steps,
                at: self.elapsed(),
            });
        }
        *steps += 1;
        self.process(event);
        Ok(())
    }

    /// Drains every live node's transmits into the wire and re-reads its timer, in
    /// address order. Returns the first node that flooded, if any.
    fn poll_nodes(&mut self) -> Option<SocketAddr> {
        let now = self.now;
        let at = now - self.epoch;
        let mut flooded = None;
        for (&addr, slot) in self.nodes.iter_mut().filter(|(_, slot)| slot.alive) {
            let mut taken = 0;
            while taken < self.limits.max_transmits_per_poll {
                let Some((to, bytes)) = slot.node.poll_transmit(now) else {
                    break;
                };
                self.wire.send(now, at, addr, to, bytes);
                taken += 1;
            }
            if taken == self.limits.max_transmits_per_poll {
                self.wire.stats.floods += 1;
                flooded.get_or_insert(addr);
            }
            // An unchanged deadline keeps its sequence number, so re-reading a timer
            // does not reorder it against events scheduled since it was armed.
            match slot.node.poll_timeout() {
                None => {
                    self.timers.remove(&addr);
                }
                Some(deadline) => {
                    if self
                        .timers
                        .get(&addr)
                        .is_none_or(|armed| armed.deadline != deadline)
                    {
                        let seq = self.wire.take_seq();
                        self.timers.insert(addr, Armed { deadline, seq });
                    }
                }
            }
        }
        flooded
    }

    /// The earliest event by (time, sequence number). A timer already overdue counts as
    /// due now.
    fn next_event(&self) -> Option<Event> {
        let delivery = self
            .wire
            .in_flight
            .keys()
            .next()
            .map(|&key| (key, Event::Deliver { key }));
        let timer = self
            .timers
            .iter()
            .map(|(&node, armed)| {
                let at = armed.deadline.max(self.now);
                ((at, armed.seq), Event::Timeout { node, at })
            })
            .min_by_key(|&(key, _)| key);
        match (delivery, timer) {
            (Some(d), Some(t)) => Some(if d.0 <= t.0 { d.1 } else { t.1 }),
            (d, t) => d.or(t).map(|(_, event)| event),
        }
    }

    fn process(&mut self, event: Event) {
        debug_assert!(event.at() >= self.now, "virtual time never goes backwards");
        self.now = event.at();
        let at = self.now - self.epoch;
        self.wire.stats.steps += 1;
        match event {
            Event::Deliver { key } => {
                let Some(datagram) = self.wire.in_flight.remove(&key) else {
                    unreachable!("next_event returned a key of in_flight")
                };
                let InFlight { from, to, bytes } = datagram;
                if self.wire.cuts.blocks(from, to) {
                    self.wire
                        .discard(at, from, to, bytes.len(), DropReason::Partition);
                    return;
                }
                match self.nodes.get_mut(&to) {
                    Some(slot) if slot.alive => {
                        self.wire.stats.delivered += 1;
                        self.wire.recorder.delivered(at, from, to, &bytes);
                        slot.node.handle_datagram(self.now, from, &bytes);
                    }
                    _ => self
                        .wire
                        .discard(at, from, to, bytes.len(), DropReason::Unreachable),
                }
            }
            Event::Timeout { node, .. } => {
                // Forget the deadline: if the node still reports it after handling it, it
                // is re-armed with a new sequence number and fires again.
                self.timers.remove(&node);
                self.wire.stats.timeouts += 1;
                self.wire.recorder.timeout(at, node);
                if let Some(slot) = self.nodes.get_mut(&node) {
                    slot.node.handle_timeout(self.now);
                }
            }
        }
    }
}

impl Wire {
    fn link(&self, from: SocketAddr, to: SocketAddr) -> &LinkConfig {
        self.links.get(&(from, to)).unwrap_or(&self.default_link)
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn discard(
        &mut self,
        at: Duration,
        from: SocketAddr,
        to: SocketAddr,
        len: usize,
        reason: DropReason,
    ) {
        self.stats.count_drop(reason);
        self.recorder.dropped(at, from, to, len, reason);
    }

    /// Puts one datagram sent at `now` (`at` since the epoch) through the link model
    /// (see the `link` module for the order of the steps).
    fn send(
        &mut self,
        now: Instant,
        at: Duration,
        from: SocketAddr,
        to: SocketAddr,
        mut bytes: Vec<u8>,
    ) {
        self.stats.sent += 1;
        let config = *self.link(from, to);
        let len = bytes.len();
        if len > config.max_datagram_size {
            return self.discard(at, from, to, len, DropReason::Size);
        }
        if self.cuts.blocks(from, to) {
            return self.discard(at, from, to, len, DropReason::Partition);
        }
        if chance(&mut self.rng, config.loss) {
            return self.discard(at, from, to, len, DropReason::Loss);
        }
        let departure = match config.bandwidth {
            None => now,
            Some(bandwidth) => {
                match self
                    .queues
                    .entry((from, to))
                    .or_default()
                    .admit(now, len, bandwidth)
                {
                    Some(departure) => departure,
                    None => return self.discard(at, from, to, len, DropReason::Queue),
                }
            }
        };
        if chance(&mut self.rng, config.corrupt) && !bytes.is_empty() {
            let bit = self.rng.random_range(0..len * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }
        if chance(&mut self.rng, config.duplicate) {
            self.stats.duplicated += 1;
            let arrival = departure + config.propagation_delay(&mut self.rng);
            let seq = self.take_seq();
            self.in_flight.insert(
                (arrival, seq),
                InFlight {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
        let arrival = departure + config.propagation_delay(&mut self.rng);
        let seq = self.take_seq();
        self.in_flight
            .insert((arrival, seq), InFlight { from, to, bytes });
    }
}
