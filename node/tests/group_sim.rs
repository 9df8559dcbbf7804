//! Whole groups, with the key manager and the proxy, under random crashes, restarts,
//! graceful exits (and rejoins), partitions (symmetric and one-way), loss, duplication
//! and reordering.
//!
//! `SOCKMSG_SIM_SEED=n` replays one schedule; `SOCKMSG_SIM_SEEDS=n` runs n of them.

mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::RngExt;
use sim::{percentile, Sim};
use sockmsg_node::Role;

const MS: Duration = Duration::from_millis(1);

/// Bound on electing a leader once the network heals with everyone up: restarted nodes
/// may hold a higher term and depose one round, so allow a few election timeouts.
const HEAL_BOUND: Duration = Duration::from_millis(2000);

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("SOCKMSG_SIM_SEED") {
        return vec![seed.parse().expect("SOCKMSG_SIM_SEED is a number")];
    }
    let n = std::env::var("SOCKMSG_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

/// One schedule: form a group, inject faults while members chat, heal, then check that
/// a leader emerges and that chat reaches every live member exactly once, in order.
fn schedule(seed: u64) -> Result<BTreeMap<String, u64>, String> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let n = rng.random_range(3..=7usize);
    let loss = [0.0, 0.05, 0.3][rng.random_range(0..3usize)];
    let mut sim = Sim::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), n, loss);
    sim.dup = [0.0, 0.02, 0.2][rng.random_range(0..3usize)];
    let formed = sim.run_until(2000 * MS, |s| {
        s.settled_leader(0)
            .is_some_and(|l| s.live_members(l).len() == n)
    });
    if formed.is_none() {
        return Err(format!(
            "no group formed with {n} members: {}",
            describe(&sim)
        ));
    }

    // Faults while everyone chats.
    let fault_end = sim.now + 4000 * MS;
    let mut next_fault = sim.now + rng.random_range(50..400) * MS;
    let mut next_rejoin = sim.now + 300 * MS;
    while sim.now < fault_end {
        let next_chat = sim.now + rng.random_range(5..40) * MS;
        sim.run_for(next_chat - sim.now);
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
        if sim.now >= next_rejoin {
            sim.rejoin_strays();
            next_rejoin = sim.now + 300 * MS;
        }
        if sim.now >= next_fault {
            next_fault = sim.now + rng.random_range(50..400) * MS;
            let victim = rng.random_range(0..n);
            match rng.random_range(0..13) {
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
        for i in 0..n {
            if sim.group(i).is_some_and(|g| g.role() == Role::Left) {
                sim.crash(i);
            }
        }
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
    }

    // Heal: everyone up and connected.
    sim.heal();
    for i in 0..n {
        // A node that left (or is leaving) comes back as a new process.
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
    let mut settled = None;
    while sim.now < healed + HEAL_BOUND && settled.is_none() {
        sim.run_for(100 * MS);
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
        sim.rejoin_strays();
        settled = sim.settled_leader(0).filter(|&l| {
            // Every node is back in the membership.
            sim.live_members(l).len() == n
        });
    }
    let Some(leader) = settled else {
        return Err(format!(
            "no settled leader {HEAL_BOUND:?} after healing: {}",
            describe(&sim)
        ));
    };
    sim.run_for(300 * MS);

    // Quiet phase: every live member's lines reach every other live member exactly
    // once, and every sender hears that they did; a direct line reaches its addressee
    // alone.
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
    if let Some(failure) = sim.failure.take() {
        return Err(failure);
    }
    Ok(sim.services.map(|s| s.verdicts).unwrap_or_default())
}

fn describe(sim: &Sim) -> String {
    let state: Vec<String> = (0..sim.nodes.len())
        .map(|i| match sim.group(i) {
            None => format!("{}: down", sim.nodes[i].name),
            Some(g) => format!(
                "{}: {:?} term {} leader {:?} members {} (v{}) announced {:?}",
                g.name(),
                g.role(),
                g.term(),
                g.leader(),
                g.members().len(),
                g.membership_version(),
                sim.nodes[i].known_leader,
            ),
        })
        .collect();
    format!("{state:?}")
}

#[test]
fn random_fault_schedules_keep_one_leader_per_term_and_deliver_chat() {
    let seeds = seeds(1000);
    let mut failures = Vec::new();
    let mut verdicts = BTreeMap::new();
    for &seed in &seeds {
        match schedule(seed) {
            Ok(counts) => {
                for (outcome, count) in counts {
                    *verdicts.entry(outcome).or_insert(0u64) += count;
                }
            }
            Err(why) => {
                eprintln!("seed {seed} FAILED: {why}  (replay: SOCKMSG_SIM_SEED={seed})");
                failures.push(seed);
            }
        }
    }
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    println!(
        "{} schedules passed; proxy verdicts: {verdicts:#?}",
        seeds.len()
    );
    if seeds.len() >= 100 {
        // The proxy took part: it accepted elections proven by votes, and refused some.
        assert!(verdicts
            .get("Announce accepted (Election)")
            .is_some_and(|&n| n > 0));
        assert!(verdicts
            .get("Claim accepted (First)")
            .is_some_and(|&n| n > 0));
    }
}

/// Time from a leader crash (or a planned transfer) until every live member knows the
/// new leader, with LAN delay and default timeouts.
#[test]
fn failover_after_leader_crash_is_measured() {
    let runs = std::env::var("SOCKMSG_SIM_FAILOVERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(250u64);
    let members = std::env::var("SOCKMSG_SIM_MEMBERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5usize);
    let mut crash = Vec::new();
    let mut transfer = Vec::new();
    let mut extra_rounds = 0;
    for seed in 0..runs {
        let mut sim = Sim::new(1_000_000 + seed, members, 0.0);
        // Let the group form, then crash at a random phase of the heartbeat.
        sim.run_for(1000 * MS + Duration::from_micros(seed * 7919 % 50_000));
        let l = sim.settled_leader(0).expect("group formed");
        let term = sim.group(l).unwrap().term();
        let crashed_at = sim.now;
        sim.crash(l);
        let done = sim
            .run_until(2000 * MS, |s| s.settled_leader(term).is_some())
            .unwrap_or_else(|| panic!("seed {seed}: no leader 2 s after the crash"));
        crash.push(done - crashed_at);
        let new_leader = sim.settled_leader(term).unwrap();
        let new_term = sim.group(new_leader).unwrap().term();
        if new_term > term + 1 {
            extra_rounds += 1;
        }
        assert!(sim.failure.is_none(), "seed {seed}: {:?}", sim.failure);

        // Planned: the new leader leaves, handing over first (once the crashed member
        // is removed, so that a group of three still has a majority after the exit).
        sim.run_for(1500 * MS);
        let l = sim.settled_leader(0).expect("still led");
        let term = sim.group(l).unwrap().term();
        let start = sim.now;
        sim.with(l, |g, now| g.leave(now).unwrap());
        assert_eq!(sim.group(l).unwrap().role(), Role::Leader, "stays to vote");
        let done = sim
            .run_until(2000 * MS, |s| s.settled_leader(term).is_some())
            .unwrap_or_else(|| panic!("seed {seed}: no leader after a transfer"));
        transfer.push(done - start);
        assert!(sim.failure.is_none(), "seed {seed}: {:?}", sim.failure);
    }
    crash.sort();
    transfer.sort();
    println!(
        "failover after leader crash, {members} members, {} crashes: p50 {:?} p99 {:?} max {:?}; \
         elections needing more than one round: {extra_rounds}",
        crash.len(),
        percentile(&crash, 50),
        percentile(&crash, 99),
        crash.last().unwrap()
    );
    println!(
        "planned transfer (leader leaves), {} runs: p50 {:?} p99 {:?} max {:?}",
        transfer.len(),
        percentile(&transfer, 50),
        percentile(&transfer, 99),
        transfer.last().unwrap()
    );
    assert!(*crash.last().unwrap() < Duration::from_millis(1000));
    assert!(*transfer.last().unwrap() < Duration::from_millis(100));
}

/// A group of 50 with no faults (beyond 1 % heartbeat loss) keeps its leader and term:
/// no follower's timeout fires a real election (pre-vote and the leader lease absorb a
/// lost heartbeat or two), for one virtual hour (`SOCKMSG_SIM_MINUTES` to change).
#[test]
fn fifty_members_stay_stable_without_faults() {
    let minutes: u64 = std::env::var("SOCKMSG_SIM_MINUTES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let mut sim = Sim::plain(50, 50, 0.01);
    let formed = sim.run_until(5000 * MS, |s| {
        s.settled_leader(0)
            .is_some_and(|l| s.live_members(l).len() == 50)
    });
    assert!(
        formed.is_some(),
        "no group of 50 formed: {}",
        describe(&sim)
    );
    let leader = sim.settled_leader(0).unwrap();
    let term = sim.group(leader).unwrap().term();
    let terms_before = sim.leaders.len();
    for minute in 0..minutes {
        sim.run_for(60_000 * MS);
        assert!(sim.failure.is_none(), "{:?}", sim.failure);
        assert_eq!(
            sim.settled_leader(0),
            Some(leader),
            "leader changed in minute {minute}: {}",
            describe(&sim)
        );
        for i in 0..50 {
            assert_eq!(
                sim.group(i).unwrap().term(),
                term,
                "{} changed term",
                sim.nodes[i].name
            );
        }
    }
    assert_eq!(sim.leaders.len(), terms_before, "no new term was announced");
    println!("50 members, {minutes} virtual minutes: one leader, term {term} throughout");
}
