//! Whole groups against a liar (`sockmsg_tools::groupsim::byzantine`): a member (or an
//! outsider) with sock puppets sending well-formed hostile frames, with and without
//! crashes, partitions, loss and duplication; the invariants of
//! `sockmsg_tools::groupsim::invariants` are checked after every event.
//!
//! `SOCKMSG_SIM_SEED=n` replays one schedule (`SOCKMSG_SIM_TRACE=1` to trace it);
//! `SOCKMSG_SIM_SEEDS=n` runs n of them.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use sockmsg_tools::groupsim::byzantine::byzantine_kind;
use sockmsg_tools::groupsim::byzantine::Variant;
use sockmsg_tools::groupsim::{byzantine_schedule, seeds_from_env, ByzantineReport};

/// One schedule; a panic anywhere (a node, the harness) is a failure of that seed.
fn run(seed: u64) -> Result<ByzantineReport, String> {
    match catch_unwind(AssertUnwindSafe(|| byzantine_schedule(seed))) {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    }
}

#[derive(Default)]
struct Totals {
    schedules: u64,
    by_variant: BTreeMap<String, u64>,
    frames: u64,
    rejections: u64,
    liar_elected: u64,
    liar_double_votes: u64,
    max_term: u64,
    max_elections: u64,
    verdicts: BTreeMap<String, u64>,
}

impl Totals {
    fn add(&mut self, report: ByzantineReport) {
        self.schedules += 1;
        let kind = format!(
            "{:?}{}",
            report.variant.unwrap_or(Variant::Member),
            if report.faults { " with faults" } else { "" }
        );
        *self.by_variant.entry(kind).or_default() += 1;
        self.frames += report.frames;
        self.rejections += report.rejections;
        self.liar_elected += report.liar_elected as u64;
        self.liar_double_votes += report.liar_double_votes as u64;
        self.max_term = self.max_term.max(report.max_term);
        self.max_elections = self.max_elections.max(report.elections);
        for (outcome, count) in report.verdicts {
            *self.verdicts.entry(outcome).or_default() += count;
        }
    }
}

/// Runs the schedules among `seeds` that `wanted` selects by (variant, faults) and
/// fails if any breaks a rule.
fn run_kind(seeds: &[u64], wanted: impl Fn(Variant, bool) -> bool) {
    let mut failures = Vec::new();
    let mut totals = Totals::default();
    for &seed in seeds {
        let (variant, faults) = byzantine_kind(seed);
        if !wanted(variant, faults) {
            continue;
        }
        match run(seed) {
            Ok(report) => totals.add(report),
            Err(why) => {
                eprintln!("seed {seed} FAILED: {why}  (replay: SOCKMSG_SIM_SEED={seed})");
                failures.push(seed);
            }
        }
    }
    println!(
        "{} byzantine schedules passed ({:?}): the liars sent {} frames, the honest nodes \
         rejected {}; the liar won {} terms by honest votes and voted twice in {} terms; \
         highest term {} (most honest elections in one schedule: {}); proxy verdicts: {:#?}",
        totals.schedules,
        totals.by_variant,
        totals.frames,
        totals.rejections,
        totals.liar_elected,
        totals.liar_double_votes,
        totals.max_term,
        totals.max_elections,
        totals.verdicts
    );
    assert!(
        failures.is_empty(),
        "{} of {} failed; failing seeds: {failures:?}",
        failures.len(),
        failures.len() as u64 + totals.schedules
    );
}

/// An outsider (with or without faults), and a lying member in a network without
/// crashes or partitions: every rule holds.
#[test]
fn a_liar_and_its_puppets_break_no_rule() {
    run_kind(&seeds_from_env(1000), |variant, faults| {
        variant == Variant::Outsider || !faults
    });
}

/// A lying member while members crash, restart and are cut off: the leaderless
/// windows let it push terms so that the group needs more than 2 s to settle after the
/// faults end, and vote on both sides of a partition (two leaders in a term, counted
/// and allowed when only the liar voted for both). Open (SPEC.md §12.6): 24 of the 874
/// such schedules among seeds 0-2999 fail today (`SOCKMSG_SIM_SEEDS=3000`). Run it with
/// `cargo test --release -p sockmsg-node --test byzantine_sim -- --ignored`.
#[test]
#[ignore = "open: a lying member combined with crashes and partitions (SPEC.md §12.6)"]
fn a_lying_member_with_faults_breaks_no_rule() {
    run_kind(&seeds_from_env(1000), |variant, faults| {
        variant == Variant::Member && faults
    });
}
