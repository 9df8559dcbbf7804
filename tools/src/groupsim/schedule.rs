//! One random fault schedule for a whole group (see [`schedule`]): what the simulation
//! suite runs by the thousand and `sockmsg-bench sim` from the command line.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use sockmsg_node::{Group, Role};

use super::Sim;

pub const MS: Duration = Duration::from_millis(1);

/// Bound on electing a leader once the network heals with everyone up: restarted nodes
/// may hold a higher term and depose one round, so allow a few election timeouts.
pub const HEAL_BOUND: Duration = Duration::from_millis(2000);

/// [`HEAL_BOUND`] with the proxy, plus one record TTL. A proxy may still hold the
/// record of an older, larger membership (its leader was cut off, then removed the
/// others one by one); it refuses the new leader until that record expires, and members
/// that hold the older membership follow only a leader proven to them (SPEC.md §12.2:
/// by a majority of it, or by the proxy). Schedules that take longer than
/// [`HEAL_BOUND`] are counted (`SLOW_HEAL`).
pub const HEAL_BOUND_WITH_PROXY: Duration =
    Duration::from_millis(2000 + sockmsg_proxy::directory::DEFAULT_RECORD_TTL_MS);

/// The name under which the proxy's verdicts count the schedules that settled after
/// [`HEAL_BOUND`] (within [`HEAL_BOUND_WITH_PROXY`]).
pub const SLOW_HEAL: &str = "settled more than 2 s after healing (a stale proxy record)";

/// One schedule: form a group, inject faults while members chat, heal, then check that
/// a leader emerges and that chat reaches every live member exactly once, in order.
pub fn schedule(seed: u64) -> Result<BTreeMap<String, u64>, String> {
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let n = rng.random_range(3..=7usize);
    let loss = [0.0, 0.05, 0.3][rng.random_range(0..3usize)];
    let mut sim = Sim::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), n, loss);
    sim.dup = [0.0, 0.02, 0.2][rng.random_range(0..3usize)];
    form(&mut sim, n)?;

    // Faults while everyone chats.
    let fault_end = sim.now + 4000 * MS;
    let mut next_fault = sim.now + rng.random_range(50..400) * MS;
    let mut next_rejoin = sim.now + 300 * MS;
    while sim.now < fault_end {
        let next_chat = sim.now + rng.random_range(5..40) * MS;
        sim.run_for(next_chat - sim.now);
        random_chat(&mut sim, &mut rng, n);
        if sim.now >= next_rejoin {
            sim.rejoin_strays();
            next_rejoin = sim.now + 300 * MS;
        }
        if sim.now >= next_fault {
            next_fault = sim.now + rng.random_range(50..400) * MS;
            random_fault(&mut sim, &mut rng, n);
        }
        crash_departed(&mut sim, n);
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
    }

    let leader = heal_and_settle(&mut sim, n)?;
    check_proxy_converges(&mut sim)?;
    check_quiet_chat(&mut sim, leader)?;
    if let Some(failure) = sim.failure.take() {
        return Err(failure);
    }
    Ok(sim.services.map(|s| s.verdicts).unwrap_or_default())
}

/// Bound on one group of one name once the proxy answers again after a fault that let
/// a second group be founded (SPEC.md §12.7): a refresh interval for the leaders to
/// learn of each other from the proxy, a member's check interval, a stand-again, the
/// joins, with room for loss.
pub const MERGE_BOUND: Duration = Duration::from_millis(10_000);

/// One merge schedule (SPEC.md §12.7): a group forms; the proxy restarts (forgetting
/// every record) or is down past the record's TTL; one or two newcomers start meanwhile,
/// find no leader, and found groups of their own (two at once race for the claim) while
/// everyone chats, with loss and duplication. Within [`MERGE_BOUND`] of the proxy
/// answering again: one group of every node with one leader known to all, the proxy
/// names it, and chat reaches every member exactly once. Returns that time.
pub fn merge_schedule(seed: u64) -> Result<Duration, String> {
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let n = rng.random_range(3..=7usize);
    let late = rng.random_range(1..=(n - 2).min(2));
    let loss = [0.0, 0.05, 0.3][rng.random_range(0..3usize)];
    let mut sim = Sim::with_late(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), n, late, loss);
    sim.dup = [0.0, 0.02, 0.2][rng.random_range(0..3usize)];
    form(&mut sim, n - late)?;
    let before_fault = rng.random_range(0..3000) * MS;
    chat_for(&mut sim, &mut rng, n, before_fault);
    let back = if rng.random_bool(0.5) {
        sim.restart_proxy();
        sim.now
    } else {
        let down = rng.random_range(5500..7000) * MS;
        sim.proxy_down_for(down);
        sim.now + down
    };
    let mut started = 0;
    while started < late {
        let before_start = rng.random_range(0..500) * MS;
        chat_for(&mut sim, &mut rng, n, before_start);
        sim.restart(n - late + started);
        started += 1;
    }
    if sim.now < back {
        let until = back - sim.now;
        chat_for(&mut sim, &mut rng, n, until);
    }
    if let Some(failure) = sim.failure.take() {
        return Err(failure);
    }
    let from = sim.now;
    let mut settled = None;
    while sim.now < from + MERGE_BOUND && settled.is_none() {
        chat_for(&mut sim, &mut rng, n, 100 * MS);
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
        settled = one_group_of(&sim, n);
    }
    let Some(leader) = settled else {
        return Err(format!(
            "not one group {MERGE_BOUND:?} after the proxy answered again: {}",
            describe(&sim)
        ));
    };
    let took = sim.now - from;
    check_proxy_converges(&mut sim)?;
    check_quiet_chat(&mut sim, leader)?;
    if let Some(failure) = sim.failure.take() {
        return Err(failure);
    }
    Ok(took)
}

/// One fault of the services alone, for the time the group takes to converge after
/// each kind (docs/BENCHMARKS.md): [`services_fault_schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicesFault {
    /// No group before: every node starts at the same instant against a proxy that
    /// knows no leader of the group, and they race to claim it.
    ColdStart,
    /// The proxy restarts and forgets every record. (The host of embedded services
    /// leaving looks the same to the group: the node that takes them over runs the key
    /// manager from the same data directory, and the proxy's records are soft state.)
    ProxyRestart,
    /// The proxy answers nobody for 0.1–6 s (past the record's 5 s TTL at the long end).
    ProxyDown,
    /// Some nodes (the leader among them half the time) cannot reach the proxy for
    /// 0.1–6 s.
    ProxyCut,
}

impl ServicesFault {
    pub const ALL: [ServicesFault; 4] = [
        ServicesFault::ColdStart,
        ServicesFault::ProxyRestart,
        ServicesFault::ProxyDown,
        ServicesFault::ProxyCut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServicesFault::ColdStart => "cold start",
            ServicesFault::ProxyRestart => "proxy restart",
            ServicesFault::ProxyDown => "proxy down 0.1-6 s",
            ServicesFault::ProxyCut => "nodes cut from the proxy 0.1-6 s",
        }
    }
}

/// Bound on converging after one fault of the services (the liveness bound).
pub const CONVERGE_BOUND: Duration = Duration::from_millis(10_000);

/// One schedule of a single `fault` of the services, everyone chatting, with loss and
/// duplication: a group of 3–7 forms (except for a cold start, whose start is the
/// fault), then the fault. Returns the time from the fault's end (the proxy's restart
/// or return, the cut healed, the nodes' start) until the group has *converged*: one
/// group of every node that all follow, holding one membership, and the proxy naming its
/// leader in its term (so joiners find it); then chat reaches every member once. An
/// error past [`CONVERGE_BOUND`].
pub fn services_fault_schedule(seed: u64, fault: ServicesFault) -> Result<Duration, String> {
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let n = rng.random_range(3..=7usize);
    let loss = [0.0, 0.05, 0.3][rng.random_range(0..3usize)];
    let mut sim = Sim::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), n, loss);
    sim.dup = [0.0, 0.02, 0.2][rng.random_range(0..3usize)];
    if fault != ServicesFault::ColdStart {
        form(&mut sim, n)?;
        let before = rng.random_range(0..2000) * MS;
        chat_for(&mut sim, &mut rng, n, before);
        let length = rng.random_range(100..6000) * MS;
        match fault {
            ServicesFault::ColdStart => {}
            ServicesFault::ProxyRestart => sim.restart_proxy(),
            ServicesFault::ProxyDown => {
                sim.proxy_down_for(length);
                chat_for(&mut sim, &mut rng, n, length);
            }
            ServicesFault::ProxyCut => {
                let leader = sim.oracle_leader();
                let with_leader = rng.random_bool(0.5);
                let cut: Vec<usize> = (0..n)
                    .filter(|&i| {
                        if Some(i) == leader {
                            with_leader
                        } else {
                            rng.random_bool(0.4)
                        }
                    })
                    .collect();
                sim.cut_from_proxy(&cut);
                chat_for(&mut sim, &mut rng, n, length);
                sim.heal_proxy();
            }
        }
    }
    let from = sim.now;
    let leader = loop {
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
        if let Some(leader) = converged(&mut sim, n) {
            break leader;
        }
        if sim.now >= from + CONVERGE_BOUND {
            let record = sim.proxy_record().map(|r| (r.term, r.leader));
            return Err(format!(
                "not converged {CONVERGE_BOUND:?} after the {}: the proxy holds {record:?}; {}",
                fault.name(),
                describe(&sim)
            ));
        }
        chat_for(&mut sim, &mut rng, n, 10 * MS);
    };
    let took = sim.now - from;
    check_quiet_chat(&mut sim, leader)?;
    if let Some(failure) = sim.failure.take() {
        return Err(failure);
    }
    Ok(took)
}

/// The leader, if the `n` nodes are one group (every node follows it, it lists all,
/// and each holds its membership) and the proxy names it in its term.
fn converged(sim: &mut Sim, n: usize) -> Option<usize> {
    let leader = one_group_of(sim, n)?;
    let named = sim
        .group(leader)
        .map(|g| (g.term(), sim.nodes[leader].name.clone()));
    let record = sim.proxy_record().map(|r| (r.term, r.leader));
    (named.is_some() && record == named).then_some(leader)
}

/// Runs `sim` for `d`, a random member sending a line every 5-40 ms; stops early on an
/// invariant failure (left in `sim.failure`).
fn chat_for(sim: &mut Sim, rng: &mut ChaCha8Rng, n: usize, d: Duration) {
    let end = sim.now + d;
    while sim.now < end && sim.failure.is_none() {
        let step = (rng.random_range(5..40) * MS).min(end - sim.now);
        sim.run_for(step);
        random_chat(sim, rng, n);
    }
}

/// A line from a random member to the group (or, one time in ten, to one member).
pub fn random_chat(sim: &mut Sim, rng: &mut ChaCha8Rng, n: usize) {
    let sender = rng.random_range(0..n);
    if sim.group(sender).is_some_and(|g| g.is_member()) {
        let to = sim.nodes[rng.random_range(0..n)].name.clone();
        let direct = rng.random_bool(0.1);
        sim.with(sender, |g, _| {
            if direct {
                // Refused (not a member, or ourselves) is fine here.
                let _ = g.send_direct(&to, "psst");
            } else {
                g.send_chat("line").unwrap();
            }
        });
    }
}

/// One random fault among the `n` nodes: a crash (the leader's most often), a restart,
/// a graceful exit, a leader crash racing a membership change, a partition (symmetric
/// or one-way), a heal; and, with services, a fault of the proxy: a restart that forgets
/// every record, a while down (up to past the record's TTL), or some nodes cut off
/// from it.
pub fn random_fault(sim: &mut Sim, rng: &mut ChaCha8Rng, n: usize) {
    let victim = rng.random_range(0..n);
    let kinds = if sim.services.is_some() { 16 } else { 13 };
    match rng.random_range(0..kinds) {
        13 => sim.restart_proxy(),
        14 => sim.proxy_down_for(rng.random_range(100..6000) * MS),
        15 => {
            let cut: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.4)).collect();
            sim.cut_from_proxy(&cut);
        }
        10 => {
            // A graceful exit (the process ends once the node has left).
            sim.with(victim, |g, now| {
                let _ = g.leave(now);
            });
        }
        11 => {
            // The leader crashes while another member leaves or comes back:
            // membership changes racing an election.
            if let Some(l) = sim.oracle_leader() {
                sim.crash(l);
            }
            if sim.is_up(victim) {
                sim.with(victim, |g, now| {
                    let _ = g.leave(now);
                });
            } else {
                sim.restart(victim);
            }
        }
        12 => {
            // One-way: some nodes (often the leader alone) can send but not
            // hear, or hear but not send.
            let mut from: Vec<usize> = match sim.oracle_leader() {
                Some(l) if rng.random_bool(0.5) => vec![l],
                _ => (0..n).filter(|_| rng.random_bool(0.4)).collect(),
            };
            if rng.random_bool(0.5) {
                from = (0..n).filter(|i| !from.contains(i)).collect();
            }
            sim.one_way(&from);
        }
        0..=2 => {
            // Crash anyone, the leader most often.
            let who = if rng.random_bool(0.5) {
                sim.oracle_leader().unwrap_or(victim)
            } else {
                victim
            };
            sim.crash(who);
        }
        3..=4 => {
            if !sim.is_up(victim) {
                sim.restart(victim);
            }
        }
        5..=6 => {
            let side = (0..n).map(|_| rng.random_range(0..2u8)).collect();
            sim.partition(side);
        }
        7 => {
            // Isolate the leader.
            if let Some(l) = sim.oracle_leader() {
                let mut side = vec![0; n];
                side[l] = 1;
                sim.partition(side);
            }
        }
        _ => sim.heal(),
    }
}

/// A node that has left ends its process.
pub fn crash_departed(sim: &mut Sim, n: usize) {
    for i in 0..n {
        if sim.group(i).is_some_and(|g| g.role() == Role::Left) {
            sim.crash(i);
        }
    }
}

/// Heals the network, brings every node up (a node that left, or is leaving, comes
/// back as a new process) and waits [`HEAL_BOUND`] (with the proxy,
/// [`HEAL_BOUND_WITH_PROXY`]) at most for a leader that every node
/// follows, that lists all `n`, and whose membership every node holds.
pub fn heal_and_settle(sim: &mut Sim, n: usize) -> Result<usize, String> {
    sim.heal();
    sim.heal_proxy();
    for i in 0..n {
        if sim
            .group(i)
            .is_some_and(|g| g.role() == Role::Left || g.is_leaving())
        {
            sim.crash(i);
        }
        if !sim.is_up(i) {
            sim.restart(i);
        }
    }
    let healed = sim.now;
    let bound = match sim.services {
        Some(_) => HEAL_BOUND_WITH_PROXY,
        None => HEAL_BOUND,
    };
    let mut settled = None;
    while sim.now < healed + bound && settled.is_none() {
        sim.run_for(100 * MS);
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
        sim.rejoin_strays();
        settled = one_group_of(sim, n);
    }
    let leader = settled.ok_or_else(|| {
        format!(
            "no settled leader {bound:?} after healing: {}",
            describe(sim)
        )
    })?;
    if sim.now > healed + HEAL_BOUND {
        if let Some(services) = sim.services.as_mut() {
            *services.verdicts.entry(SLOW_HEAL.into()).or_default() += 1;
        }
    }
    Ok(leader)
}

/// Once the group has settled, the proxy names its leader (in its term) within
/// [`PROXY_BOUND`]: the leader re-announces to a proxy that forgot it (a restart, or a
/// record expired while it was down or cut off), so joiners find the group.
pub fn check_proxy_converges(sim: &mut Sim) -> Result<(), String> {
    if sim.services.is_none() {
        return Ok(());
    }
    let start = sim.now;
    loop {
        let leader = sim.oracle_leader().map(|l| {
            let g = sim.group(l).expect("an up leader");
            (g.term(), sim.nodes[l].name.clone())
        });
        let record = sim.proxy_record().map(|r| (r.term, r.leader));
        if leader.is_some() && record == leader {
            return Ok(());
        }
        if sim.now >= start + PROXY_BOUND {
            return Err(format!(
                "the proxy holds {record:?}, not the settled leader {leader:?}, {PROXY_BOUND:?} \
                 after the group settled: {}",
                describe(sim)
            ));
        }
        sim.run_for(50 * MS);
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
    }
}

/// How long after the group settles the proxy may still name another leader: a
/// refresh interval (the leader announces at once on a new term, else every 3 s), and
/// a second for an announcement that waits on its votes' signatures.
pub const PROXY_BOUND: Duration = Duration::from_millis(4000);

/// Runs `sim` until its first `n` nodes form one group (2 s at most).
pub(super) fn form(sim: &mut Sim, n: usize) -> Result<(), String> {
    let formed = sim.run_until(2000 * MS, |s| {
        s.settled_leader(0)
            .is_some_and(|l| s.live_members(l).len() == n)
    });
    match formed {
        Some(_) => Ok(()),
        None => Err(format!(
            "no group formed with {n} members: {}",
            describe(sim)
        )),
    }
}

/// The leader, if the `n` nodes are one group: every node follows it, it lists all,
/// and every node holds its membership (chat goes to the members a sender holds).
fn one_group_of(sim: &Sim, n: usize) -> Option<usize> {
    sim.settled_leader(0).filter(|&l| {
        let members = sim.live_members(l);
        let stamp = sim.group(l).map(stamp_of);
        members.len() == n && members.iter().all(|&i| sim.group(i).map(stamp_of) == stamp)
    })
}

/// The (membership_term, version) a node holds.
fn stamp_of(g: &Group) -> (u64, u64) {
    (g.membership_term(), g.membership_version())
}

/// Quiet phase: every live member's lines reach every other live member exactly
/// once, and every sender hears that they did; a direct line reaches its addressee
/// alone.
pub fn check_quiet_chat(sim: &mut Sim, leader: usize) -> Result<(), String> {
    sim.run_for(300 * MS);
    let members = sim.live_members(leader);
    let mut sent = Vec::new();
    for _ in 0..3 {
        for &i in &members {
            let mut seq = 0;
            sim.with(i, |g, _| seq = g.send_chat("quiet").unwrap());
            let inc = sim.group(i).unwrap().me().incarnation;
            sent.push((i, inc, seq, None));
        }
        sim.run_for(5 * MS);
    }
    let (from, to) = (members[0], members[members.len() - 1]);
    let to_name = sim.nodes[to].name.clone();
    let mut seq = 0;
    sim.with(from, |g, _| {
        seq = g.send_direct(&to_name, "quiet, direct").unwrap()
    });
    let inc = sim.group(from).unwrap().me().incarnation;
    sent.push((from, inc, seq, Some(to)));
    sim.run_for(200 * MS);
    for &(i, inc, seq, direct_to) in &sent {
        let name = sim.nodes[i].name.clone();
        for &r in members.iter().filter(|&&r| r != i) {
            let got = sim.nodes[r]
                .received
                .iter()
                .filter(|(s, c, q, d)| {
                    *s == name && *c == inc && *q == seq && *d == direct_to.is_some()
                })
                .count();
            let expected = usize::from(direct_to.is_none_or(|t| t == r));
            if got != expected {
                return Err(format!(
                    "{} received {name}/{inc} seq {seq} {got} times, not {expected}",
                    sim.nodes[r].name
                ));
            }
            let receipt = sim.nodes[i].receipts.get(&(seq, sim.nodes[r].name.clone()));
            if expected == 1 && receipt != Some(&true) {
                return Err(format!(
                    "{name} has receipt {receipt:?} for seq {seq} to {}",
                    sim.nodes[r].name
                ));
            }
        }
    }
    Ok(())
}

pub fn describe(sim: &Sim) -> String {
    let state: Vec<String> = (0..sim.nodes.len())
        .map(|i| match sim.group(i) {
            None => format!("{}: down", sim.nodes[i].name),
            Some(g) => format!(
                "{}: {:?} term {} (ceiling {}) leader {:?} members {} (v{}) announced {:?}",
                g.name(),
                g.role(),
                g.term(),
                g.term_ceiling(sim.now),
                g.leader(),
                g.members().len(),
                g.membership_version(),
                sim.nodes[i].known_leader,
            ),
        })
        .collect();
    format!("{state:?}")
}

/// The seeds a simulation suite runs: `SOCKMSG_SIM_SEED=n` replays one schedule,
/// `SOCKMSG_SIM_SEEDS=n` runs seeds `0..n`, else `0..default`.
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("SOCKMSG_SIM_SEED") {
        return vec![seed.parse().expect("SOCKMSG_SIM_SEED is a number")];
    }
    let n = std::env::var("SOCKMSG_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}
