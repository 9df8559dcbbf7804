//! `sockmsg-bench`: failover and chat latency measured on real processes and sockets.
//!
//! - [`procs`]: the key manager, the proxy and `sockmsg-node --json` processes on
//!   loopback, killed when dropped;
//! - [`election`]: leader crashes (SIGKILL) or planned exits, the time until every
//!   survivor reports the same new leader, and split votes;
//! - [`chat`]: open-loop load (each line has an intended send time; latency counts from
//!   it, so a stall cannot hide: no coordinated omission);
//! - [`rendezvous`]: the key manager or the proxy killed and restarted (or the proxy
//!   down a while) as a newcomer joins, the time until one group that chats;
//! - [`report`]: percentiles, `.hgrm`, SVG.

pub mod flood;
pub mod procs;
pub mod rendezvous;
pub mod report;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;

use procs::{Bell, Node, Services};

/// Bound on any one wait of a run (a group forming, a failover, a rejoin).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Set by Ctrl-C: every loop stops at its next step and the processes are cleaned up.
pub static STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A group of nodes and the services, all started.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub services: Services,
    bins: std::path::PathBuf,
    work: std::path::PathBuf,
    config: std::path::PathBuf,
    /// The group the nodes join (None: the node's default).
    group: Option<String>,
    /// Rung at every event of any node.
    bell: Arc<Bell>,
}

impl Cluster {
    /// The services and `n` nodes `n0`.. in one group.
    pub fn start(bins: &Path, work: &Path, n: usize) -> Result<Cluster> {
        if n < 2 {
            bail!("a group needs at least 2 nodes");
        }
        let mut cluster = Cluster::services_only(bins, work)?;
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        cluster.grow(&names)?;
        Ok(cluster)
    }

    /// The services, and no node yet.
    pub fn services_only(bins: &Path, work: &Path) -> Result<Cluster> {
        let services = Services::start(bins, work)?;
        let config = procs::write_config(work)?;
        Ok(Cluster {
            nodes: Vec::new(),
            services,
            bins: bins.to_path_buf(),
            work: work.to_path_buf(),
            config,
            group: None,
            bell: Arc::default(),
        })
    }

    /// Stops every node (SIGKILL); the next ones join `group`. Each name keeps its data
    /// directory (its key, and the state of the groups it was in).
    pub fn regroup(&mut self, group: Option<&str>) {
        self.nodes.clear();
        self.group = group.map(str::to_owned);
    }

    /// Starts a node named `name`, without waiting for anything; its index.
    pub fn spawn(&mut self, name: &str) -> Result<usize> {
        let node = Node::spawn(
            &self.bins,
            name,
            &self.work,
            &self.services,
            &self.config,
            self.group.as_deref(),
            &self.bell,
        )?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// Starts `names` one after the other, each once the one before has joined, then
    /// waits until they agree on a leader and every member holds a session with every
    /// other.
    pub fn grow(&mut self, names: &[String]) -> Result<()> {
        for name in names {
            stopped()?;
            let i = self.spawn(name)?;
            let joined = self.nodes[i].wait(0, STEP_TIMEOUT, |events| {
                events
                    .iter()
                    .any(|e| e.value["event"] == "joined")
                    .then_some(())
            });
            if joined.is_none() {
                bail!(
                    "{name} did not join within {STEP_TIMEOUT:?}; its last events: {}",
                    self.nodes[i].last_events(8)
                );
            }
        }
        self.settled(0, None)?;
        self.await_sessions(Instant::now() + STEP_TIMEOUT)
    }

    /// How many events all the nodes have printed so far, for [`Cluster::wait_any`].
    pub fn rung(&self) -> u64 {
        self.bell.rung()
    }

    /// Waits until any node prints an event after [`Cluster::rung`] said `seen` (or its
    /// output ends), or until `deadline`; at most 100 ms, so that the caller notices a
    /// Ctrl-C (or a node that exits without a word) soon.
    pub fn wait_any(&self, seen: u64, deadline: Instant) {
        self.bell.wait(
            seen,
            deadline.min(Instant::now() + Duration::from_millis(100)),
        );
    }

    /// Waits until every node in `alive` (all if `None`) reports the same leader in a
    /// term above `after`, and lists all of them; returns (term, leader index, when the
    /// last of them learnt it).
    pub fn settled(&self, after: u64, dead: Option<usize>) -> Result<(u64, usize, Instant)> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            stopped()?;
            let seen = self.rung();
            let views: Vec<_> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != dead)
                .map(|(_, n)| n.leader())
                .collect();
            if let Some(Some((term, Some(leader), _))) = views.first() {
                let agreed = views.iter().all(|v| {
                    v.as_ref()
                        .is_some_and(|(t, l, _)| t == term && l.as_deref() == Some(leader.as_str()))
                });
                if agreed && *term > after {
                    let index = self
                        .nodes
                        .iter()
                        .position(|n| n.name == *leader)
                        .ok_or_else(|| anyhow!("unknown leader {leader}"))?;
                    let last = views
                        .iter()
                        .flatten()
                        .map(|v| v.2)
                        .max()
                        .unwrap_or_else(Instant::now);
                    return Ok((*term, index, last));
                }
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader after term {after} within {STEP_TIMEOUT:?}: {views:?}");
            }
            // Look again at the next event of any node.
            self.wait_any(seen, deadline);
        }
    }

    /// Restarts node `i` (same data directory) and waits until the whole group lists it
    /// and every member holds a session with every other: back in full service, so the
    /// next round does not time the restarted node's handshakes too.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let name = self.nodes[i].name.clone();
        self.nodes[i] = Node::spawn(
            &self.bins,
            &name,
            &self.work,
            &self.services,
            &self.config,
            self.group.as_deref(),
            &self.bell,
        )?;
        let n = self.nodes.len();
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let seen = self.rung();
            if self.nodes[i].is_joined() && self.nodes.iter().all(|node| node.members() == n) {
                break;
            }
            stopped()?;
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not rejoin within {STEP_TIMEOUT:?}; its last events: {}",
                    self.nodes[i].last_events(8)
                );
            }
            self.wait_any(seen, deadline);
        }
        self.await_sessions(deadline)
    }

    /// Waits until every member holds a session with every other (keep-alive sessions
    /// come up within milliseconds of a join, each handshake an RSA signature or two).
    fn await_sessions(&mut self, deadline: Instant) -> Result<()> {
        for node in &mut self.nodes {
            while !node.has_all_sessions()? {
                stopped()?;
                if Instant::now() >= deadline {
                    bail!("{} has no session with every member in time", node.name);
                }
                node.wait(node.mark(), Duration::from_millis(20), |_| None::<()>);
            }
        }
        Ok(())
    }
}

/// How a leader goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    Kill,
    Exit,
}

/// What an election run measured.
pub struct ElectionReport {
    /// Microseconds from the leader's departure until the last survivor reported the
    /// new leader.
    pub failover: Histogram<u64>,
    /// Elections that took more than one term (a split vote, or a pre-empted round).
    pub extra_rounds: u64,
}

/// `rounds` times: take the leader away, time the failover, restart it, wait for the
/// group to be whole again. `progress` is told after each round.
pub fn election(
    cluster: &mut Cluster,
    rounds: u64,
    departure: Departure,
    mut progress: impl FnMut(u64),
) -> Result<ElectionReport> {
    let mut failover = report::new_histogram();
    let mut extra_rounds = 0;
    for round in 0..rounds {
        stopped()?;
        let (term, leader, _) = cluster.settled(0, None)?;
        let marks: Vec<usize> = cluster.nodes.iter().map(Node::mark).collect();
        let gone_at = Instant::now();
        match departure {
            Departure::Kill => cluster.nodes[leader].kill(),
            Departure::Exit => cluster.nodes[leader].say("/exit")?,
        }
        let (new_term, _, learnt_at) = cluster.settled(term, Some(leader))?;
        let took = learnt_at.saturating_duration_since(gone_at);
        failover.record(took.as_micros().max(1) as u64)?;
        // A planned exit elects the transfer target in term + 1; a crash goes through
        // pre-vote and one election, also term + 1, unless votes split.
        if new_term > term + 1 {
            extra_rounds += 1;
            if std::env::var_os("SOCKMSG_BENCH_TRACE").is_some() {
                for (node, &mark) in cluster.nodes.iter().zip(&marks) {
                    let views: Vec<String> = node
                        .events_since(mark, "leader")
                        .iter()
                        .map(|e| {
                            format!(
                                "+{:?} t{} {}",
                                e.at.saturating_duration_since(gone_at),
                                e.value["term"],
                                e.value["leader"]
                            )
                        })
                        .collect();
                    eprintln!("round {round} {}: {}", node.name, views.join(", "));
                }
            }
        }
        if departure == Departure::Exit {
            cluster.nodes[leader].exit().ok();
        }
        cluster.restart(leader)?;
        progress(round + 1);
    }
    Ok(ElectionReport {
        failover,
        extra_rounds,
    })
}

/// What a chat run measured.
pub struct ChatReport {
    /// Microseconds from each line's intended send time to its arrival at a receiver.
    pub latency: Histogram<u64>,
    pub sent: u64,
    /// (line, receiver) pairs that arrived, and that should have.
    pub delivered: u64,
    pub expected: u64,
}

/// Open-loop chat: `rate` lines per second in total, round-robin over the nodes, for
/// `duration`, each `size` bytes; then up to 2 s for stragglers.
pub fn chat(
    cluster: &mut Cluster,
    rate: u64,
    duration: Duration,
    size: usize,
    mut progress: impl FnMut(u64),
) -> Result<ChatReport> {
    if rate == 0 {
        bail!("--rate must be positive");
    }
    let n = cluster.nodes.len();
    let marks: Vec<usize> = cluster.nodes.iter().map(Node::mark).collect();
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut intended = HashMap::new();
    for i in 0..total {
        stopped()?;
        let at = start + interval * i as u32;
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let tag = format!("bench-{i:010}-");
        let text = if size > tag.len() {
            format!("{tag}{}", "x".repeat(size - tag.len()))
        } else {
            tag.clone()
        };
        intended.insert(i, at);
        cluster.nodes[(i as usize) % n].say(&text)?;
        if i % rate.max(1) == 0 {
            progress(i);
        }
    }
    // Stragglers: wait until every receiver has every line (bounded).
    let expected = total * (n as u64 - 1);
    let deadline = Instant::now() + Duration::from_secs(2);
    let count = |cluster: &Cluster| -> u64 {
        cluster
            .nodes
            .iter()
            .zip(&marks)
            .map(|(node, &mark)| node.events_since(mark, "chat").len() as u64)
            .sum()
    };
    while count(cluster) < expected && Instant::now() < deadline {
        cluster.nodes[0].wait(cluster.nodes[0].mark(), Duration::from_millis(50), |_| {
            None::<()>
        });
    }
    let mut latency = report::new_histogram();
    let mut delivered = 0;
    for (node, &mark) in cluster.nodes.iter().zip(&marks) {
        for event in node.events_since(mark, "chat") {
            let Some(text) = event.value["text"].as_str() else {
                continue;
            };
            let Some(i) = text
                .strip_prefix("bench-")
                .and_then(|t| t.get(..10))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(at) = intended.get(&i) {
                delivered += 1;
                let us = event.at.saturating_duration_since(*at).as_micros().max(1) as u64;
                latency.record(us.min(3_600_000_000))?;
            }
        }
    }
    progress(total);
    Ok(ChatReport {
        latency,
        sent: total,
        delivered,
        expected,
    })
}
