//! Whole groups, with the key manager and the proxy, under random crashes, restarts,
//! graceful exits (and rejoins), partitions (symmetric and one-way), loss, duplication
//! and reordering.
//!
//! `SOCKMSG_SIM_SEED=n` replays one schedule; `SOCKMSG_SIM_SEEDS=n` runs n of them.

use std::collections::BTreeMap;
use std::time::Duration;

use sockmsg_node::Role;
use sockmsg_tools::groupsim::{
    describe, merge_schedule, percentile, schedule, seeds_from_env, services_fault_schedule,
    ServicesFault, Sim, CONVERGE_BOUND, MERGE_BOUND, MS,
};

#[test]
fn random_fault_schedules_keep_one_leader_per_term_and_deliver_chat() {
    let seeds = seeds_from_env(1000);
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

/// SPEC.md §12.7: the proxy restarts, or is down past the record's TTL, and newcomers
/// found groups of the same name meanwhile; once it answers again, the groups become
/// one within [`MERGE_BOUND`], chat reaches everyone, and the proxy names the leader.
/// `SOCKMSG_SIM_MERGE_SEEDS=n` runs n schedules (`SOCKMSG_SIM_SEED` replays one).
#[test]
fn groups_of_one_name_merge_after_the_proxy_forgets() {
    let seeds = match std::env::var("SOCKMSG_SIM_MERGE_SEEDS") {
        Ok(n) => (0..n.parse::<u64>().expect("a number")).collect(),
        Err(_) => seeds_from_env(1000),
    };
    let mut failures = Vec::new();
    let mut times = Vec::new();
    for &seed in &seeds {
        match merge_schedule(seed) {
            Ok(took) => times.push(took),
            Err(why) => {
                eprintln!("merge seed {seed} FAILED: {why}  (replay: SOCKMSG_SIM_SEED={seed})");
                failures.push(seed);
            }
        }
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "{} merge schedules passed: one group after p50 {:?}, p99 {:?}, max {:?} \
             (bound {MERGE_BOUND:?})",
            times.len(),
            percentile(&times, 50),
            percentile(&times, 99),
            times.last().copied().unwrap_or_default()
        );
    }
    assert!(failures.is_empty(), "failing merge seeds: {failures:?}");
}

/// The time to converge after each kind of fault of the services alone (a cold start,
/// a proxy restart, the proxy down, nodes cut off from it): one group of every node,
/// one membership, the proxy naming the leader, within [`CONVERGE_BOUND`]; chat then
/// reaches everyone once. Prints p50/p99/max per kind (docs/BENCHMARKS.md).
/// `SOCKMSG_SIM_FAULT_SEEDS=n` runs n schedules of each kind (`SOCKMSG_SIM_SEED` replays
/// one of each).
#[test]
fn each_services_fault_converges_within_the_bound() {
    let seeds = match std::env::var("SOCKMSG_SIM_FAULT_SEEDS") {
        Ok(n) => (0..n.parse::<u64>().expect("a number")).collect(),
        Err(_) => seeds_from_env(100),
    };
    let mut failures = Vec::new();
    for fault in ServicesFault::ALL {
        let mut times = Vec::new();
        for &seed in &seeds {
            match services_fault_schedule(seed, fault) {
                Ok(took) => times.push(took),
                Err(why) => {
                    eprintln!(
                        "{} seed {seed} FAILED: {why}  (replay: SOCKMSG_SIM_SEED={seed})",
                        fault.name()
                    );
                    failures.push((fault.name(), seed));
                }
            }
        }
        times.sort();
        if let Some(max) = times.last() {
            println!(
                "{}: {} schedules converged, p50 {:?}, p99 {:?}, max {max:?} (bound \
                 {CONVERGE_BOUND:?})",
                fault.name(),
                times.len(),
                percentile(&times, 50),
                percentile(&times, 99),
            );
        }
    }
    assert!(failures.is_empty(), "failing schedules: {failures:?}");
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
