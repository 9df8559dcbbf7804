//! `sockmsg-bench rendezvous`: how long after a fault of the services (the proxy, the
//! key manager) the nodes are one group that chats again, on real processes: the
//! scenarios of node/tests/rendezvous.rs, timed and repeated.
//!
//! Each run: `n0`, `n1`, `n2` form a group of their own (a new group name per run, so
//! nothing of the run before is in the proxy's records or the nodes' state), with a
//! session between every two; then the fault, and the newcomer `n3`:
//!
//! - [`Fault::ProxyRestart`]: the proxy is SIGKILLed and started again, empty, at the
//!   same address; `n3` starts at once. Timed from the kill.
//! - [`Fault::ProxyDown`]: the proxy is SIGKILLed; `n3` starts (and registers at the
//!   key manager); the proxy comes back, empty, `down` after the kill. Timed from its
//!   return (the moment it is started again).
//! - [`Fault::KeymgrRestart`]: the key manager is SIGKILLed and started again from its
//!   data directory (same key, same registrations); `n3` starts at once. Timed from the
//!   kill.
//!
//! The run ends when the four are one group that chats: every node's latest `leader`
//! event names the same (term, leader), its latest `members` event lists exactly the
//! four, its latest admission event is `joined` (not `removed` or `left`), and then a
//! line `n3` says reaches `n0`; checked once more after that (not a passing agreement).
//! Two times are kept: until one group (when the last node printed the event that made
//! it agree) and until the line arrived (the headline). Everything is waited for on the
//! nodes' JSON events, each wait bounded: a run that is not one group that chats within
//! `timeout` of its start counts as failed, with what each node said, and the next run
//! begins.
//!
//! Kept between runs: the key manager (restarted only by its own fault), the proxy
//! (restarted by its faults), each name's data directory (its key: made once, by an
//! untimed first start of each name, so no run times RSA key generation; every start
//! re-registers the name, which the key manager allows for free). Node processes are new
//! in each run.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

use super::procs::View;
use super::{report, stopped, Cluster};

/// The three that form the group before the fault.
const FIRST: [&str; 3] = ["n0", "n1", "n2"];
/// The node that starts during or just after the fault.
const NEWCOMER: &str = "n3";
/// The old member that must receive the newcomer's line.
const RECEIVER: &str = "n0";

/// What happens to the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the proxy, start it again (empty) at once, start the newcomer.
    ProxyRestart,
    /// SIGKILL the proxy, start the newcomer, bring the proxy back after --down-ms.
    ProxyDown,
    /// SIGKILL the key manager, start it again from its data directory, start the
    /// newcomer.
    KeymgrRestart,
    /// No group before: all four nodes start at the same instant, against a proxy that
    /// knows no leader of the group (they race to claim it).
    ColdStart,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::ProxyRestart,
        Fault::ProxyDown,
        Fault::KeymgrRestart,
        Fault::ColdStart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ProxyRestart => "proxy-restart",
            Fault::ProxyDown => "proxy-down",
            Fault::KeymgrRestart => "keymgr-restart",
            Fault::ColdStart => "cold-start",
        }
    }

    /// From when a run is timed.
    pub fn origin(self) -> &'static str {
        match self {
            Fault::ProxyRestart => "the proxy's SIGKILL",
            Fault::ProxyDown => "the proxy's return",
            Fault::KeymgrRestart => "the key manager's SIGKILL",
            Fault::ColdStart => "the four nodes' start",
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs of each fault.
    pub runs: u64,
    /// Each fault in turn, run by run (interleaved, so that the machine's noise of the
    /// moment falls on all of them alike).
    pub faults: Vec<Fault>,
    /// How long the proxy stays down in [`Fault::ProxyDown`].
    pub down: Duration,
    /// Bound on a run from its timing origin to one group that chats.
    pub timeout: Duration,
}

/// What the runs of one fault measured.
pub struct FaultReport {
    pub fault: Fault,
    pub runs: u64,
    /// Microseconds from the origin until the newcomer's line reached `n0`.
    pub chats: Histogram<u64>,
    /// Microseconds from the origin until every node agreed (the latest of the events
    /// that made them agree).
    pub one_group: Histogram<u64>,
    /// Microseconds from the kill until the restarted service accepted connections
    /// (the restart faults; for `proxy-down`, from its return).
    pub restart: Histogram<u64>,
    /// The failed runs: run number, why.
    pub failures: Vec<(u64, String)>,
}

impl FaultReport {
    fn new(fault: Fault) -> FaultReport {
        FaultReport {
            fault,
            runs: 0,
            chats: report::new_histogram(),
            one_group: report::new_histogram(),
            restart: report::new_histogram(),
            failures: Vec::new(),
        }
    }

    /// The report's text: the headline and the one-group summaries, the restarts, and
    /// the failures (one line each).
    pub fn text(&self) -> String {
        let name = self.fault.name();
        let origin = self.fault.origin();
        let mut out = report::summary(
            &format!("{name}: from {origin} until one group that chats (the newcomer's line reached {RECEIVER})"),
            &self.chats,
        );
        out += &report::summary(
            &format!(
                "{name}: from {origin} until one group (every node's leader and members agree)"
            ),
            &self.one_group,
        );
        if !self.restart.is_empty() {
            out += &format!(
                "{name}: the service accepting connections again, p50 {:.3} ms, max {:.3} ms\n",
                self.restart.value_at_quantile(0.5) as f64 / 1000.0,
                self.restart.max() as f64 / 1000.0
            );
        }
        out += &format!(
            "{name}: failures: {} of {} runs\n",
            self.failures.len(),
            self.runs
        );
        for (run, why) in &self.failures {
            out += &format!("{name}: run {run} FAILED: {why}\n");
        }
        out
    }
}

/// One run's times, from its origin.
struct Outcome {
    one_group: Duration,
    chats: Duration,
    /// How long the restarted service took to accept connections (none restarts in
    /// [`Fault::ColdStart`]).
    restart: Option<Duration>,
}

/// Runs `options.runs` runs of each fault on `cluster` (its services running, no nodes
/// needed); `progress` is told of each finished run (fault, run, its outcome as a line:
/// `Err` if it failed).
pub fn rendezvous(
    cluster: &mut Cluster,
    options: &Options,
    mut progress: impl FnMut(Fault, u64, Result<&str, &str>),
) -> Result<Vec<FaultReport>> {
    // Every name's key made, and registered, before anything is timed.
    for name in FIRST.iter().chain([&NEWCOMER]) {
        cluster.regroup(Some(&format!("warmup-{name}")));
        cluster.grow(&[name.to_string()])?;
    }
    let mut reports: Vec<FaultReport> = options
        .faults
        .iter()
        .map(|&f| FaultReport::new(f))
        .collect();
    let mut serial = 0u64;
    for run in 1..=options.runs {
        for report in reports.iter_mut() {
            stopped()?;
            serial += 1;
            let group = format!("rdv{serial}");
            match one_run(cluster, report.fault, &group, options)? {
                Ok(outcome) => {
                    let us = |d: Duration| d.as_micros().clamp(1, 3_600_000_000) as u64;
                    report.chats.record(us(outcome.chats))?;
                    report.one_group.record(us(outcome.one_group))?;
                    if let Some(restart) = outcome.restart {
                        report.restart.record(us(restart))?;
                    }
                    report.runs += 1;
                    let line = format!(
                        "one group after {:.1} ms, chats after {:.1} ms",
                        outcome.one_group.as_secs_f64() * 1000.0,
                        outcome.chats.as_secs_f64() * 1000.0
                    );
                    progress(report.fault, run, Ok(&line));
                }
                Err(why) => {
                    let why = format!("({group}) {why}");
                    report.runs += 1;
                    progress(report.fault, run, Err(&format!("FAILED {why}")));
                    report.failures.push((run, why));
                }
            }
        }
    }
    cluster.regroup(None);
    Ok(reports)
}

/// One run of `fault` in a new group `group`: `Ok(Err(why))` is a run that failed,
/// `Err` a reason to stop the benchmark (interrupted; a service that cannot start).
fn one_run(
    cluster: &mut Cluster,
    fault: Fault,
    group: &str,
    options: &Options,
) -> Result<Result<Outcome, String>> {
    cluster.services.ensure_running()?;
    cluster.regroup(Some(group));
    let first: Vec<String> = FIRST.iter().map(|n| n.to_string()).collect();
    if fault != Fault::ColdStart {
        if let Err(e) = cluster.grow(&first) {
            stopped()?;
            return Ok(Err(format!(
                "before the fault, the first three did not form a group: {e:#}"
            )));
        }
    }
    let (origin, restart) = match fault {
        Fault::ProxyRestart => {
            let killed = Instant::now();
            cluster.services.kill_proxy();
            cluster.services.start_proxy()?;
            let restart = killed.elapsed();
            cluster.spawn(NEWCOMER)?;
            (killed, Some(restart))
        }
        Fault::KeymgrRestart => {
            let killed = Instant::now();
            cluster.services.kill_keymgr();
            cluster.services.start_keymgr()?;
            let restart = killed.elapsed();
            cluster.spawn(NEWCOMER)?;
            (killed, Some(restart))
        }
        Fault::ColdStart => {
            // The group's name is new to the proxy (one per run): nobody leads it.
            let start = Instant::now();
            for name in FIRST.iter().chain([&NEWCOMER]) {
                cluster.spawn(name)?;
            }
            (start, None)
        }
        Fault::ProxyDown => {
            let killed = Instant::now();
            cluster.services.kill_proxy();
            let d = cluster.spawn(NEWCOMER)?;
            // Registered at the key manager and running, while the proxy is down.
            let started = cluster.nodes[d].wait(0, options.timeout, |events| {
                events
                    .iter()
                    .any(|e| e.value["event"] == "started")
                    .then_some(())
            });
            if started.is_none() {
                let last = cluster.nodes[d].last_events(8);
                return Ok(Err(format!(
                    "{NEWCOMER} did not start within {:?} while the proxy was down; its last \
                     events: {last}",
                    options.timeout
                )));
            }
            // The fault's length, not a synchronisation: the proxy stays down for
            // `down` (or until the newcomer has started, if that took longer).
            let until = killed + options.down;
            while Instant::now() < until {
                stopped()?;
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
            }
            let back = Instant::now();
            cluster.services.start_proxy()?;
            (back, Some(back.elapsed()))
        }
    };
    let deadline = origin + options.timeout;
    let expected: BTreeSet<String> = FIRST
        .iter()
        .chain([&NEWCOMER])
        .map(|n| n.to_string())
        .collect();

    // One group.
    let agreed_at = loop {
        stopped()?;
        let seen = cluster.rung();
        let views: Vec<View> = cluster.nodes.iter_mut().map(|n| n.view()).collect();
        if let Some(at) = one_group(&views, &expected) {
            break at;
        }
        if Instant::now() >= deadline {
            return Ok(Err(format!(
                "NOT ONE GROUP {:?} after {}: {}",
                options.timeout,
                fault.origin(),
                describe(&views)
            )));
        }
        cluster.wait_any(seen, deadline);
    };

    // That chats: a line from the newcomer reaches an old member.
    let text = format!("{group}: {NEWCOMER} to the group after the fault");
    let (from, to) = (index(cluster, NEWCOMER)?, index(cluster, RECEIVER)?);
    let mark = cluster.nodes[to].mark();
    if let Err(e) = cluster.nodes[from].say(&text) {
        return Ok(Err(format!("cannot tell {NEWCOMER} to say a line: {e:#}")));
    }
    let arrived = cluster.nodes[to].wait(
        mark,
        deadline.saturating_duration_since(Instant::now()),
        |events| {
            events
                .iter()
                .find(|e| {
                    e.value["event"] == "chat"
                        && e.value["sender"] == NEWCOMER
                        && e.value["text"] == text.as_str()
                })
                .map(|e| e.at)
        },
    );
    let Some(arrived) = arrived else {
        let views: Vec<View> = cluster.nodes.iter_mut().map(|n| n.view()).collect();
        let sender = cluster.nodes[from].last_events(6);
        return Ok(Err(format!(
            "one group after {:?}, but {NEWCOMER}'s line did not reach {RECEIVER} within {:?} \
             of {}: {}; {NEWCOMER}'s last events: {sender}",
            agreed_at.saturating_duration_since(origin),
            options.timeout,
            fault.origin(),
            describe(&views)
        )));
    };
    // Still one group (not a passing agreement).
    let views: Vec<View> = cluster.nodes.iter_mut().map(|n| n.view()).collect();
    if one_group(&views, &expected).is_none() {
        return Ok(Err(format!(
            "one group came apart after the line: {}",
            describe(&views)
        )));
    }
    Ok(Ok(Outcome {
        one_group: agreed_at.saturating_duration_since(origin),
        chats: arrived.saturating_duration_since(origin),
        restart,
    }))
}

fn index(cluster: &Cluster, name: &str) -> Result<usize> {
    cluster
        .nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| anyhow::anyhow!("no node {name} in the run"))
}

/// When `views` became one group of exactly `expected` (the latest of the events that
/// make them agree), if they are one: every node running, joined, with the same (term,
/// leader), the leader one of them, the same members.
fn one_group(views: &[View], expected: &BTreeSet<String>) -> Option<Instant> {
    let first = views.first()?;
    let (term, leader) = match &first.leader {
        Some((term, Some(leader), _)) => (*term, leader),
        _ => return None,
    };
    if !expected.contains(leader) || views.len() != expected.len() {
        return None;
    }
    let mut latest = None;
    for v in views {
        if !v.running || v.admission.as_deref() != Some("joined") {
            return None;
        }
        let (t, l, leader_at) = v.leader.as_ref()?;
        let (names, members_at) = v.members.as_ref()?;
        if *t != term || l.as_ref() != Some(leader) || names != expected {
            return None;
        }
        latest = latest.max(Some(*leader_at.max(members_at)));
    }
    latest
}

/// The views as one line: each node's, then who follows whom.
fn describe(views: &[View]) -> String {
    let mut leaders: BTreeSet<String> = BTreeSet::new();
    for v in views {
        if let Some((term, Some(leader), _)) = &v.leader {
            leaders.insert(format!("{leader} (term {term})"));
        }
    }
    let nodes: Vec<String> = views.iter().map(View::line).collect();
    format!(
        "{}; {} distinct leader(s): {}",
        nodes.join("; "),
        leaders.len(),
        leaders.into_iter().collect::<Vec<_>>().join(", ")
    )
}
