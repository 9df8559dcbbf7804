//! Unit tests of the election and membership rules, named after the Raft paper (§)
//! and Ongaro's dissertation ("thesis §").

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::message::{ChatLine, VoteMsg, VoteRequestMsg};

mod authorization;

struct TestSigner(String);

impl VoteSigner for TestSigner {
    fn sign_vote(&self, input: &[u8]) -> Vec<u8> {
        let mut sig = self.0.as_bytes().to_vec();
        sig.extend_from_slice(&(input.len() as u32).to_be_bytes());
        sig
    }
}

fn info(name: &str, rank: u64) -> MemberInfo {
    MemberInfo {
        name: name.into(),
        addr: "127.0.0.1:7402".parse().unwrap(),
        rank,
        incarnation: 1,
    }
}

fn node(name: &str, rank: u64) -> Group {
    Group::new(
        GroupConfig::new("lobby"),
        info(name, rank),
        HardState::default(),
        ChaCha8Rng::seed_from_u64(rank),
        Instant::now(),
    )
    .unwrap()
}

/// A follower of `members` (names with rank = position from the end) in `term`, with no
/// known leader and its election timer armed.
fn follower(name: &str, names: &[&str], term: u64, now: Instant) -> Group {
    let members: Vec<MemberInfo> = names
        .iter()
        .enumerate()
        .map(|(i, n)| info(n, (names.len() - i) as u64))
        .collect();
    let rank = members.iter().find(|m| m.name == name).unwrap().rank;
    let mut g = node(name, rank);
    g.hard.term = term;
    g.members = members;
    g.version = 1;
    g.joined = true;
    g.reset_election_timer(now);
    g
}

fn drain(g: &mut Group) -> Vec<Output> {
    std::iter::from_fn(|| g.poll_output()).collect()
}

fn sends(outputs: &[Output]) -> Vec<(String, GroupMessage)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, frame, .. } => Some((to.clone(), frame.clone())),
            _ => None,
        })
        .collect()
}

/// The MEMBERSHIP that b, elected in term 2, sends first: `members` at `version`,
/// stamped with its term (dissertation §4.1).
fn restamped_by_b(version: u64, members: Vec<MemberInfo>) -> GroupMessage {
    GroupMessage::Membership {
        term: 2,
        membership_term: 2,
        version,
        members,
    }
}

/// b, a follower of a, b and c in term 1, after a's VOTE_REQUEST for term 2: the group
/// and what it output.
fn b_asked_by_a(now: Instant) -> (Group, Vec<Output>) {
    let mut g = follower("b", &["a", "b", "c"], 1, now);
    g.step(now, "a", GroupMessage::VoteRequest(vote_request(2, "a", 1)));
    let out = drain(&mut g);
    (g, out)
}

fn vote_request(term: u64, candidate: &str, version: u64) -> VoteRequestMsg {
    stamped_vote_request(term, candidate, (0, version))
}

/// A vote request whose membership is stamped (creating leader's term, version).
fn stamped_vote_request(term: u64, candidate: &str, stamp: (u64, u64)) -> VoteRequestMsg {
    VoteRequestMsg {
        term,
        candidate: candidate.into(),
        membership_term: stamp.0,
        membership_version: stamp.1,
        rank: 0,
    }
}

fn the_vote(outputs: &[Output]) -> VoteMsg {
    let votes: Vec<VoteMsg> = sends(outputs)
        .into_iter()
        .filter_map(|(_, m)| match m {
            GroupMessage::Vote(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(votes.len(), 1, "exactly one VOTE in {outputs:?}");
    votes.into_iter().next().unwrap()
}

/// Delivers every message instantly, and signs every vote asked, until no node has
/// anything to send.
fn settle(nodes: &mut [Group], now: Instant) -> Vec<(String, GroupMessage)> {
    let mut log = Vec::new();
    loop {
        let mut queue = Vec::new();
        let mut signed_any = false;
        for g in nodes.iter_mut() {
            let from = g.name().to_owned();
            for o in drain(g) {
                match o {
                    Output::Send { to, frame, .. } => queue.push((from.clone(), to, frame)),
                    Output::SignVote { vote, .. } => {
                        g.vote_signed(vote.signed(&TestSigner(from.clone())));
                        signed_any = true;
                    }
                    _ => {}
                }
            }
        }
        if queue.is_empty() && signed_any {
            continue;
        }
        if queue.is_empty() {
            return log;
        }
        for (from, to, frame) in queue {
            log.push((from.clone(), frame.clone()));
            if let Some(g) = nodes.iter_mut().find(|g| g.name() == to) {
                g.step(now, &from, frame);
            }
        }
    }
}

/// A settled group of `names` led by the first, in term 1.
fn group_of(names: &[&str], now: Instant) -> Vec<Group> {
    let mut nodes: Vec<Group> = names
        .iter()
        .enumerate()
        .map(|(i, n)| node(n, 100 - i as u64))
        .collect();
    nodes[0].bootstrap(now, 0).unwrap();
    for i in 1..nodes.len() {
        nodes[i].join(now, names[0]).unwrap();
        settle(&mut nodes, now);
    }
    settle(&mut nodes, now);
    for g in &nodes {
        assert_eq!(g.members().len(), names.len(), "{} sees everyone", g.name());
        assert_eq!(g.leader(), Some(names[0]));
    }
    nodes
}

#[test]
fn raft_5_2_a_node_grants_one_vote_per_term() {
    let now = Instant::now();
    let (mut g, out) = b_asked_by_a(now);
    assert!(the_vote(&out).granted);
    g.step(now, "c", GroupMessage::VoteRequest(vote_request(2, "c", 1)));
    let refused = the_vote(&drain(&mut g));
    assert!(!refused.granted, "a second candidate in the same term");
    // The same candidate asking again (a retransmission) gets the same answer, and no
    // second signature (SPEC.md §7.13: one per term and candidate).
    g.step(now, "a", GroupMessage::VoteRequest(vote_request(2, "a", 1)));
    let again = drain(&mut g);
    assert!(the_vote(&again).granted);
    assert!(!again.iter().any(|o| matches!(o, Output::SignVote { .. })));
    // A new term frees the vote (an election timeout later: a term moves at most once
    // per minimum election timeout, SPEC.md §12.3).
    let later = now + Duration::from_millis(200);
    g.step(
        later,
        "c",
        GroupMessage::VoteRequest(vote_request(3, "c", 1)),
    );
    assert!(the_vote(&drain(&mut g)).granted);
}

#[test]
fn raft_5_2_the_vote_is_persisted_before_it_is_sent() {
    let now = Instant::now();
    let (_, out) = b_asked_by_a(now);
    let persisted = out
        .iter()
        .rposition(|o| {
            matches!(o, Output::Persist(h) if h.term == 2 && h.voted_for.as_deref() == Some("a"))
        })
        .expect("the vote is persisted");
    let sent = out
        .iter()
        .position(|o| {
            matches!(
                o,
                Output::Send {
                    frame: GroupMessage::Vote(_),
                    ..
                }
            )
        })
        .expect("the vote is sent");
    assert!(
        persisted < sent,
        "Persist must come before the VOTE: {out:?}"
    );
}

#[test]
fn raft_5_2_a_restarted_node_keeps_its_vote_and_membership() {
    let now = Instant::now();
    b_asked_by_a(now);
    // The driver writes each Persist; a restart reads back the last one.
    let mut g = node("b", 2);
    g.join(now, "a").unwrap();
    g.step(
        now,
        "a",
        GroupMessage::Membership {
            term: 1,
            membership_term: 0,
            version: 4,
            members: vec![info("a", 3), info("b", 2), info("c", 1)],
        },
    );
    // An election timeout later (a's lease over: it crashed, and comes back to stand).
    let later = now + Duration::from_millis(200);
    g.step(
        later,
        "a",
        GroupMessage::VoteRequest(vote_request(2, "a", 4)),
    );
    let last = drain(&mut g)
        .into_iter()
        .filter_map(|o| match o {
            Output::Persist(h) => Some(h),
            _ => None,
        })
        .next_back()
        .unwrap();
    let mut restarted = Group::new(
        GroupConfig::new("lobby"),
        info("b", 2),
        last,
        ChaCha8Rng::seed_from_u64(9),
        now,
    )
    .unwrap();
    restarted.step(now, "c", GroupMessage::VoteRequest(vote_request(2, "c", 4)));
    assert!(
        !the_vote(&drain(&mut restarted)).granted,
        "already voted in term 2"
    );
    assert!(restarted.is_member(), "the membership survived");
    assert!(
        restarted.poll_timeout().is_some(),
        "a member's election timer runs"
    );
    // A candidate with an older membership than the persisted one is refused.
    restarted.step(now, "c", GroupMessage::VoteRequest(vote_request(3, "c", 3)));
    assert!(!the_vote(&drain(&mut restarted)).granted);
}

#[test]
fn spec_7_13_a_grant_goes_out_at_once_and_signed_after() {
    let now = Instant::now();
    let (mut g, out) = b_asked_by_a(now);
    let grant = the_vote(&out);
    assert!(
        grant.granted && grant.signature.is_empty(),
        "unsigned first"
    );
    let asked: Vec<&VoteMsg> = out
        .iter()
        .filter_map(|o| match o {
            Output::SignVote { vote, .. } => Some(vote),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![&grant], "the same vote is to be signed");
    g.vote_signed(grant.clone().signed(&TestSigner("b".into())));
    let signed = the_vote(&drain(&mut g));
    let input = crate::vote_signing_input("lobby", 2, "b", "a", false, true).unwrap();
    assert_eq!(signed.signature, TestSigner("b".into()).sign_vote(&input));
    assert_eq!(
        VoteMsg {
            signature: Vec::new(),
            ..signed
        },
        grant,
        "the signed copy is the same vote"
    );
    g.step(now, "c", GroupMessage::VoteRequest(vote_request(2, "c", 1)));
    let out = drain(&mut g);
    assert!(!the_vote(&out).granted);
    assert!(
        !out.iter().any(|o| matches!(o, Output::SignVote { .. })),
        "refusals are not signed"
    );
}

#[test]
fn a_signature_for_an_old_term_is_not_sent() {
    let now = Instant::now();
    let (mut g, out) = b_asked_by_a(now);
    let grant = the_vote(&out);
    let later = now + Duration::from_millis(200);
    g.step(
        later,
        "c",
        GroupMessage::VoteRequest(vote_request(3, "c", 1)),
    );
    drain(&mut g);
    g.vote_signed(grant.signed(&TestSigner("b".into())));
    assert!(sends(&drain(&mut g)).is_empty(), "term 2 is over");
}

#[test]
fn a_leader_proves_its_election_only_with_a_majority_of_signatures() {
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c"], 1, now);
    let t = c.poll_timeout().unwrap();
    c.tick(t);
    c.step(t, "a", GroupMessage::Vote(pre_grant(2, "a", "c")));
    let out = drain(&mut c);
    assert_eq!(c.role(), Role::Candidate, "{out:?}");
    let own = out
        .iter()
        .find_map(|o| match o {
            Output::SignVote { vote, .. } => Some(vote.clone()),
            _ => None,
        })
        .expect("the candidate signs its own vote off the critical path");
    assert_eq!(
        (own.voter.as_str(), own.candidate.as_str(), own.term),
        ("c", "c", 2)
    );
    // An unsigned grant elects...
    c.step(t, "a", GroupMessage::Vote(grant(2, "a", "c", Vec::new())));
    assert_eq!(c.role(), Role::Leader);
    assert_eq!(c.election_proof(), None, "...but proves nothing yet");
    c.vote_signed(own.clone().signed(&TestSigner("c".into())));
    assert_eq!(c.election_proof(), None, "one signature of the two needed");
    // A duplicate unsigned grant after the signed one does not erase it.
    c.step(
        t,
        "a",
        GroupMessage::Vote(grant(2, "a", "c", b"sig-a".to_vec())),
    );
    c.step(t, "a", GroupMessage::Vote(grant(2, "a", "c", Vec::new())));
    let proof = c.election_proof().expect("two of three signed");
    assert_eq!(
        proof.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert!(proof.iter().all(|(_, sig)| !sig.is_empty()));
    // A late grant of b adds to the proof.
    c.step(
        t,
        "b",
        GroupMessage::Vote(grant(2, "b", "c", b"sig-b".to_vec())),
    );
    assert_eq!(c.election_proof().map(|p| p.len()), Some(3));
}

fn grant(term: u64, voter: &str, candidate: &str, signature: Vec<u8>) -> VoteMsg {
    VoteMsg {
        group: "lobby".into(),
        term,
        voter: voter.into(),
        candidate: candidate.into(),
        pre_vote: false,
        granted: true,
        signature,
    }
}

fn pre_grant(term: u64, voter: &str, candidate: &str) -> VoteMsg {
    VoteMsg {
        pre_vote: true,
        ..grant(term, voter, candidate, Vec::new())
    }
}

#[test]
fn raft_5_1_a_higher_term_makes_a_leader_step_down() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    let a = &mut nodes[0];
    assert_eq!(a.role(), Role::Leader);
    // c won term 2 with b's vote (a was cut off); b tells a so, and c's heartbeat comes.
    a.step(now, "b", GroupMessage::Support(support(2, "b", "c")));
    assert_eq!(a.role(), Role::Leader, "a support alone changes nothing");
    a.step(now, "c", heartbeat(2, "c", a.members().to_vec()));
    assert_eq!(a.role(), Role::Follower);
    assert_eq!(a.term(), 2);
    assert_eq!(a.leader(), Some("c"));
    let out = drain(a);
    assert!(out.contains(&Output::Event(GroupEvent::LeaderChanged {
        term: 2,
        leader: Some("c".into())
    })));
    assert!(a.election_proof().is_none(), "no proof once deposed");
}

#[test]
fn thesis_4_2_3_a_live_leader_ignores_a_vote_request_of_a_later_term() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    let a = &mut nodes[0];
    drain(a);
    a.step(now, "c", GroupMessage::VoteRequest(vote_request(7, "c", 0)));
    assert_eq!(a.role(), Role::Leader);
    assert_eq!(a.term(), 1);
    assert!(sends(&drain(a)).is_empty(), "not even a refusal");
    assert_eq!(a.rejections().get(Violation::Disruptive), 1);
}

fn support(term: u64, supporter: &str, leader: &str) -> crate::message::SupportMsg {
    crate::message::SupportMsg {
        group: "lobby".into(),
        term,
        supporter: supporter.into(),
        leader: leader.into(),
        query: false,
        pre_vote: false,
    }
}

/// `supporter` tells that it granted `candidate` its pre-vote for `term` (SPEC.md
/// §12.3).
fn pre_vote_support(term: u64, supporter: &str, candidate: &str) -> GroupMessage {
    GroupMessage::Support(crate::message::SupportMsg {
        pre_vote: true,
        ..support(term, supporter, candidate)
    })
}

fn heartbeat(term: u64, leader: &str, members: Vec<MemberInfo>) -> GroupMessage {
    GroupMessage::Heartbeat {
        term,
        leader: leader.into(),
        membership_term: 1,
        membership_version: 2,
        members,
    }
}

#[test]
fn raft_5_1_a_stale_term_is_refused() {
    let now = Instant::now();
    let mut g = follower("b", &["a", "b", "c"], 3, now);
    g.step(now, "a", GroupMessage::VoteRequest(vote_request(2, "a", 1)));
    let vote = the_vote(&drain(&mut g));
    assert!(!vote.granted);
    assert_eq!(
        vote.term, 3,
        "the refusal tells the candidate the newer term"
    );
    g.step(
        now,
        "a",
        GroupMessage::Heartbeat {
            term: 2,
            leader: "a".into(),
            membership_term: 0,
            membership_version: 1,
            members: g.members.clone(),
        },
    );
    assert_eq!(g.leader(), None, "a stale leader is not followed");
    let out = drain(&mut g);
    assert!(sends(&out).contains(&(
        "a".into(),
        GroupMessage::MembershipAck {
            term: 3,
            version: 1
        }
    )));
}

#[test]
fn vote_requires_the_candidates_membership_version_at_least_the_voters() {
    let now = Instant::now();
    let mut g = follower("b", &["a", "b", "c"], 1, now);
    g.version = 5;
    g.step(now, "a", GroupMessage::VoteRequest(vote_request(2, "a", 4)));
    assert!(!the_vote(&drain(&mut g)).granted);
    g.step(now, "c", GroupMessage::VoteRequest(vote_request(2, "c", 5)));
    assert!(the_vote(&drain(&mut g)).granted);
}

#[test]
fn raft_4_1_a_vote_needs_a_membership_at_least_as_up_to_date() {
    // Dissertation §4.1 (2015 fix): (creating leader's term, version), lexicographic.
    let now = Instant::now();
    let mut g = follower("b", &["a", "b", "c", "d"], 6, now);
    g.membership_term = 3;
    g.version = 5;
    // A newer version from an older leader's term is less up to date: refused.
    g.step(
        now,
        "a",
        GroupMessage::VoteRequest(stamped_vote_request(7, "a", (2, 6))),
    );
    assert!(!the_vote(&drain(&mut g)).granted, "(2, 6) < (3, 5)");
    g.step(
        now,
        "a",
        GroupMessage::PreVoteRequest(stamped_vote_request(8, "a", (2, 6))),
    );
    assert!(!the_vote(&drain(&mut g)).granted, "no pre-vote either");
    assert_eq!(
        g.term(),
        6,
        "a refused request moves no term (SPEC.md §12.3)"
    );
    // The same stamp is granted, once a majority backs its pre-vote (c, b, d)...
    g.step(now, "d", pre_vote_support(7, "d", "c"));
    g.step(
        now,
        "c",
        GroupMessage::VoteRequest(stamped_vote_request(7, "c", (3, 5))),
    );
    assert!(the_vote(&drain(&mut g)).granted, "(3, 5) = (3, 5)");
    // ...and so is a later term's membership with a lower version (in a new term).
    let later = now + Duration::from_millis(200);
    g.step(
        later,
        "d",
        GroupMessage::PreVoteRequest(stamped_vote_request(8, "d", (4, 1))),
    );
    assert!(
        the_vote(&drain(&mut g)).granted,
        "(4, 1) > (3, 5): pre-vote"
    );
    g.step(later, "c", pre_vote_support(8, "c", "d"));
    g.step(
        later,
        "d",
        GroupMessage::VoteRequest(stamped_vote_request(8, "d", (4, 1))),
    );
    assert!(the_vote(&drain(&mut g)).granted, "(4, 1) > (3, 5): vote");
}

#[test]
fn raft_4_1_a_new_leader_commits_its_own_term_before_changing_membership() {
    let now = Instant::now();
    let mut g = follower("a", &["a", "b", "c"], 1, now);
    g.membership_term = 1;
    g.start_election(now);
    drain(&mut g);
    for voter in ["b", "c"] {
        g.step(
            now,
            voter,
            GroupMessage::Vote(VoteMsg {
                group: "lobby".into(),
                term: 2,
                voter: voter.into(),
                candidate: "a".into(),
                pre_vote: false,
                granted: true,
                signature: Vec::new(),
            }),
        );
    }
    assert_eq!(g.role(), Role::Leader);
    assert_eq!((g.membership_term(), g.membership_version()), (2, 1));
    assert_eq!(g.hard_state().membership_term, 2, "the stamp is persisted");
    let out = drain(&mut g);
    assert!(sends(&out).iter().any(|(_, m)| matches!(
        m,
        GroupMessage::Heartbeat {
            membership_term: 2,
            membership_version: 1,
            ..
        }
    )));
    // A join waits until a majority holds the membership stamped with our term.
    g.step(now, "d", GroupMessage::Join(info("d", 9)));
    assert_eq!(
        g.membership_version(),
        1,
        "no change before our term commits"
    );
    assert!(!sends(&drain(&mut g))
        .iter()
        .any(|(_, m)| matches!(m, GroupMessage::Membership { .. })));
    g.step(
        now,
        "b",
        GroupMessage::MembershipAck {
            term: 2,
            version: 1,
        },
    );
    assert_eq!((g.membership_term(), g.membership_version()), (2, 2));
    assert!(g.members().iter().any(|m| m.name == "d"));
}

#[test]
fn thesis_9_6_a_pre_vote_changes_neither_term_nor_vote() {
    let now = Instant::now();
    let mut g = follower("b", &["a", "b", "c"], 4, now);
    g.step(
        now,
        "c",
        GroupMessage::PreVoteRequest(vote_request(5, "c", 1)),
    );
    let vote = the_vote(&drain(&mut g));
    assert!(vote.granted && vote.pre_vote);
    assert_eq!(g.hard_state().term, 4);
    assert_eq!(g.hard_state().voted_for, None);
    assert!(
        !drain(&mut g)
            .iter()
            .any(|o| matches!(o, Output::Persist(_))),
        "nothing to persist"
    );
}

#[test]
fn thesis_9_6_pre_vote_does_not_disturb_a_healthy_leader() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    // c was partitioned and comes back asking to stand in a later term.
    let later = now + Duration::from_millis(40);
    nodes[1].step(
        later,
        "c",
        GroupMessage::PreVoteRequest(stamped_vote_request(9, "c", (1, 99))),
    );
    let vote = the_vote(&drain(&mut nodes[1]));
    assert!(
        !vote.granted,
        "b heard from a live leader within the minimum timeout"
    );
    nodes[0].step(
        later,
        "c",
        GroupMessage::PreVoteRequest(stamped_vote_request(9, "c", (1, 99))),
    );
    assert!(
        !the_vote(&drain(&mut nodes[0])).granted,
        "the leader refuses"
    );
    assert_eq!(nodes[0].role(), Role::Leader);
    assert_eq!(nodes[0].term(), 1);
    assert_eq!(nodes[1].term(), 1);
    // Once the lease has run out (no heartbeat for the minimum timeout), b would agree.
    let stale = now + Duration::from_millis(151);
    nodes[1].step(
        stale,
        "c",
        GroupMessage::PreVoteRequest(stamped_vote_request(9, "c", (1, 99))),
    );
    assert!(the_vote(&drain(&mut nodes[1])).granted);
}

#[test]
fn raft_5_2_a_candidate_with_a_majority_leads_and_keeps_the_signed_votes() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    // a crashes; time passes until b and c stand.
    let mut rest: Vec<Group> = nodes.drain(1..).collect();
    let mut t = now;
    while !rest.iter().any(|g| g.role() == Role::Leader) {
        t = rest.iter().filter_map(|g| g.poll_timeout()).min().unwrap();
        for g in rest.iter_mut() {
            g.tick(t);
        }
        settle(&mut rest, t);
        assert!(t < now + Duration::from_secs(1));
    }
    let leader = rest.iter().find(|g| g.role() == Role::Leader).unwrap();
    assert_eq!(leader.term(), 2, "elected in one round");
    assert!(
        t - now >= Duration::from_millis(150),
        "not before the election timeout"
    );
    let proof = leader.election_proof().expect("signed once settled");
    assert_eq!(proof.len(), 2, "own vote and one other: a majority of 3");
    for (voter, signature) in &proof {
        let input =
            crate::vote_signing_input("lobby", 2, voter, leader.name(), false, true).unwrap();
        assert_eq!(*signature, TestSigner(voter.clone()).sign_vote(&input));
    }
    let follower = rest.iter().find(|g| g.role() != Role::Leader).unwrap();
    assert_eq!(follower.leader(), Some(leader.name()));
}

#[test]
fn rank_bias_makes_the_highest_ranked_follower_time_out_first() {
    let now = Instant::now();
    let names = ["a", "b", "c", "d", "e"];
    // a leads; b has the highest rank of the followers.
    for seed in 0..50 {
        let mut timeouts: Vec<(Duration, String)> = names[1..]
            .iter()
            .map(|n| {
                let mut g = follower(n, &names, 1, now);
                g.rng = ChaCha8Rng::seed_from_u64(seed);
                g.leader = Some("a".into());
                (g.election_timeout(), n.to_string())
            })
            .collect();
        timeouts.sort();
        assert_eq!(timeouts[0].1, "b", "seed {seed}: {timeouts:?}");
        for (t, _) in &timeouts {
            assert!(*t >= Duration::from_millis(150) && *t < Duration::from_millis(300));
        }
    }
}

#[test]
fn thesis_6_2_check_quorum_a_leader_without_a_majority_steps_down() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    let a = &mut nodes[0];
    // b keeps answering, c is silent: a majority (a, b) — a stays.
    let mut t = now;
    while t < now + Duration::from_millis(700) {
        t = a.poll_timeout().unwrap();
        a.tick(t);
        drain(a);
        a.step(
            t,
            "b",
            GroupMessage::MembershipAck {
                term: 1,
                version: a.version,
            },
        );
    }
    assert_eq!(a.role(), Role::Leader, "b is a majority with a");
    // Now no one answers: a steps down within two check-quorum windows.
    let silent_from = t;
    while a.role() == Role::Leader {
        t = a.poll_timeout().unwrap();
        a.tick(t);
        drain(a);
        assert!(
            t - silent_from <= Duration::from_millis(600),
            "stepped down in time"
        );
    }
    assert_eq!(a.role(), Role::Follower);
    assert_eq!(a.leader(), None);
}

#[test]
fn thesis_3_10_transfer_elects_the_target_in_one_round() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    let target = nodes[0].transfer_leadership(now).unwrap();
    let log = settle(&mut nodes, now);
    let t = nodes.iter().find(|g| g.name() == target).unwrap();
    assert_eq!(t.role(), Role::Leader);
    assert_eq!(t.term(), 2, "one election, term + 1");
    assert!(
        !log.iter()
            .any(|(_, m)| matches!(m, GroupMessage::PreVoteRequest(_))),
        "TimeoutNow skips pre-vote"
    );
    for g in &nodes {
        assert_eq!(g.leader(), Some(target.as_str()));
    }
}

#[test]
fn a_leaving_leader_hands_over_even_in_a_group_of_two() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    nodes[0].leave(now).unwrap();
    settle(&mut nodes, now);
    assert_eq!(nodes[0].role(), Role::Left);
    assert_eq!(nodes[1].role(), Role::Leader);
    assert_eq!(nodes[1].members().len(), 1, "a was removed");
    assert!(nodes[1].members().iter().all(|m| m.name == "b"));
    let proof = nodes[1].election_proof().expect("b can prove its election");
    let voters: Vec<&str> = proof.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(voters, ["a", "b"], "a sent its signed vote before it left");
}

#[test]
fn dissertation_4_1_one_membership_change_at_a_time() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    let v = nodes[0].membership_version();
    // Two joins arrive; b and c do not answer yet.
    nodes[0].step(now, "d", GroupMessage::Join(info("d", 5)));
    nodes[0].step(now, "e", GroupMessage::Join(info("e", 6)));
    assert_eq!(nodes[0].membership_version(), v + 1, "only d is in flight");
    assert_eq!(nodes[0].members().len(), 4);
    // a and d (by its JOIN, SPEC.md §7.15) are not yet a majority of the new four.
    let ack = |version| GroupMessage::MembershipAck { term: 1, version };
    nodes[0].step(now, "c", ack(v));
    assert_eq!(
        nodes[0].membership_version(),
        v + 1,
        "2 of 4 is no majority; an ack of the old version does not count"
    );
    // b's makes three of four: e may follow.
    nodes[0].step(now, "b", ack(v + 1));
    assert_eq!(nodes[0].membership_version(), v + 2);
    assert_eq!(nodes[0].members().len(), 5);
}

#[test]
fn spec_7_15_an_added_member_counts_by_its_own_join() {
    // A leader alone (the other member left) adds c: the new membership's majority is
    // both, and c may never acknowledge (it may hold a larger membership of which the
    // leader's is no majority, SPEC.md §12.2), so c's JOIN counts for it and the next
    // joiner is not held behind it.
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    let b = nodes[1].me().clone();
    let leave = GroupMessage::Leave {
        name: b.name.clone(),
        incarnation: b.incarnation,
    };
    nodes[0].step(now, "b", leave);
    let v = nodes[0].membership_version();
    nodes[0].step(now, "c", GroupMessage::Join(info("c", 5)));
    nodes[0].step(now, "d", GroupMessage::Join(info("d", 6)));
    assert_eq!(
        nodes[0].membership_version(),
        v + 2,
        "c's addition committed on a and c's JOIN, and d's followed"
    );
    // {a, c, d}: a and d's JOIN are two of three, so d's addition is committed too, and
    // e's is the one in flight; it needs a real acknowledgement (three of four).
    nodes[0].step(now, "e", GroupMessage::Join(info("e", 7)));
    nodes[0].step(now, "f", GroupMessage::Join(info("f", 8)));
    assert_eq!(nodes[0].membership_version(), v + 3, "only e is in flight");
    let ack = GroupMessage::MembershipAck {
        term: nodes[0].term(),
        version: v + 3,
    };
    nodes[0].step(now, "c", ack);
    assert_eq!(nodes[0].membership_version(), v + 4, "f follows c's ack");
}

#[test]
fn a_group_of_two_drops_a_departed_member() {
    // The survivor leads alone: removing the other needs only a majority of the new
    // membership (itself), not the departed member's acknowledgement.
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    let b = nodes[1].me().clone();
    nodes[0].step(
        now,
        "b",
        GroupMessage::Leave {
            name: b.name.clone(),
            incarnation: b.incarnation,
        },
    );
    assert_eq!(nodes[0].members().len(), 1);
    assert_eq!(nodes[0].role(), Role::Leader);
    // And it goes on leading: check-quorum counts the one-member membership.
    let later = now + Duration::from_secs(5);
    nodes[0].tick(later);
    assert_eq!(
        nodes[0].role(),
        Role::Leader,
        "still leads after check-quorum"
    );
}

#[test]
fn a_member_not_heard_from_is_removed_after_failure_removal() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    let a = &mut nodes[0];
    let mut t = now;
    let mut unreachable = None;
    while t < now + Duration::from_millis(1200) {
        t = a.poll_timeout().unwrap();
        a.tick(t);
        for o in drain(a) {
            if let Output::Event(GroupEvent::PeerUnreachable { name }) = o {
                unreachable.get_or_insert((name, t - now));
            }
        }
        a.step(
            t,
            "b",
            GroupMessage::MembershipAck {
                term: 1,
                version: a.version,
            },
        );
    }
    let (name, after) = unreachable.expect("c reported");
    assert_eq!(name, "c");
    assert!(after >= Duration::from_millis(1000) && after < Duration::from_millis(1100));
    assert!(a.members().iter().all(|m| m.name != "c"));
    assert_eq!(a.role(), Role::Leader);
}

#[test]
fn chat_lines_are_delivered_once_in_order_per_incarnation() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    for text in ["one", "two", "three"] {
        nodes[1].send_chat(text).unwrap();
    }
    let out = drain(&mut nodes[1]);
    let to_c: Vec<GroupMessage> = sends(&out)
        .into_iter()
        .filter(|(to, m)| to == "c" && matches!(m, GroupMessage::Chat(_)))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(to_c.len(), 3, "sent directly to every member");
    let c = &mut nodes[2];
    drain(c);
    for m in to_c.iter().chain(to_c.iter()) {
        c.step(now, "b", m.clone());
    }
    // A restarted b (new incarnation) starts again at seq 1.
    c.step(
        now,
        "b",
        GroupMessage::Chat(ChatLine {
            sender: "b".into(),
            incarnation: 2,
            seq: 1,
            direct: false,
            text: "again".into(),
        }),
    );
    // A line naming a sender other than the session peer is dropped.
    c.step(
        now,
        "a",
        GroupMessage::Chat(ChatLine {
            sender: "b".into(),
            incarnation: 2,
            seq: 2,
            direct: false,
            text: "forged".into(),
        }),
    );
    let got: Vec<(u64, u64, String)> = drain(c)
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(GroupEvent::ChatReceived {
                incarnation,
                seq,
                text,
                ..
            }) => Some((incarnation, seq, text)),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, 1, "one".to_string()),
            (1, 2, "two".into()),
            (1, 3, "three".into()),
            (2, 1, "again".into())
        ]
    );
}

#[test]
fn config_rejects_failure_removal_within_the_check_quorum_window() {
    let mut config = GroupConfig::new("lobby");
    config.failure_removal = Duration::from_millis(300);
    let err = Group::new(
        config,
        info("a", 1),
        HardState::default(),
        ChaCha8Rng::seed_from_u64(1),
        Instant::now(),
    )
    .err();
    assert!(err.is_some());
}

#[test]
fn bootstrap_stands_after_the_last_term_the_proxy_knew() {
    let now = Instant::now();
    let mut g = node("a", 1);
    g.bootstrap(now, 6).unwrap();
    assert_eq!(g.role(), Role::Leader);
    assert_eq!(g.term(), 7);
    assert!(g.is_member());
    let out = drain(&mut g);
    assert!(out.contains(&Output::Event(GroupEvent::Joined)));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Persist(h) if h.term == 7 && h.voted_for.as_deref() == Some("a")
            && h.members == [info("a", 1)]
    )));
}

#[test]
fn a_removed_node_that_stands_is_told_the_membership_and_asks_to_be_listed_again() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    let a = &mut nodes[0];
    // a removed z (SPEC.md §12.5): a candidate it never listed would be of another
    // group of the same name and hear nothing (§12.7).
    a.hard.former_members.push("z".into());
    a.step(
        now,
        "z",
        GroupMessage::PreVoteRequest(vote_request(2, "z", 9)),
    );
    let out = drain(a);
    assert!(sends(&out)
        .iter()
        .any(|(to, m)| to == "z" && matches!(m, GroupMessage::Membership { .. })));
    let mut z = follower("z", &["a", "b", "z"], 1, now);
    // z recognises a as the leader of term 1 on b's word and a's own (SPEC.md §12.2).
    z.step(now, "b", GroupMessage::Support(support(1, "b", "a")));
    for (to, m) in sends(&out) {
        if to == "z" {
            z.step(now, "a", m);
        }
    }
    // z is alive: it does not take a membership without itself (SPEC.md §12.5) but
    // asks the leader to list it again, which an honest leader does at once.
    let out = drain(&mut z);
    assert!(!out.contains(&Output::Event(GroupEvent::Removed)));
    let names: Vec<&str> = z.members().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "z"]);
    let asks: Vec<_> = sends(&out)
        .into_iter()
        .filter(|(to, m)| to == "a" && matches!(m, GroupMessage::Join(j) if j.name == "z"))
        .collect();
    assert!(!asks.is_empty(), "{out:?}");
    a.step(now, "z", asks[0].1.clone());
    let readmitted = sends(&drain(a)).into_iter().find_map(|(to, m)| match m {
        GroupMessage::Membership { members, .. } if to == "z" => Some(members),
        _ => None,
    });
    let readmitted = readmitted.expect("a lists z again");
    assert!(readmitted.iter().any(|m| m.name == "z"));
}

#[test]
fn a_leaving_leader_stays_until_it_has_voted_for_the_target() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    nodes[0].leave(now).unwrap();
    drain(&mut nodes[0]);
    // The target's answer to a heartbeat, already in the new term, overtakes its
    // vote request.
    nodes[0].step(
        now,
        "b",
        GroupMessage::MembershipAck {
            term: 2,
            version: 2,
        },
    );
    assert_ne!(nodes[0].role(), Role::Left, "has not voted yet");
    let (mterm, version) = (nodes[0].membership_term(), nodes[0].membership_version());
    nodes[0].step(
        now,
        "b",
        GroupMessage::VoteRequest(stamped_vote_request(2, "b", (mterm, version))),
    );
    let grant = the_vote(&drain(&mut nodes[0]));
    assert!(grant.granted);
    assert_ne!(
        nodes[0].role(),
        Role::Left,
        "stays until it holds the new leader's membership (dissertation §4.1)"
    );
    let members = nodes[0].members().to_vec();
    let signed = grant.clone().signed(&TestSigner("a".into()));
    nodes[0].vote_signed(signed.clone());
    drain(&mut nodes[0]);
    // A heartbeat carrying the new stamp is not enough: it is acknowledged unreliably,
    // and b needs our acknowledgement of its MEMBERSHIP to change anything.
    nodes[0].step(
        now,
        "b",
        GroupMessage::Heartbeat {
            term: 2,
            leader: "b".into(),
            membership_term: 2,
            membership_version: version,
            members: members.clone(),
        },
    );
    drain(&mut nodes[0]);
    assert_ne!(
        nodes[0].role(),
        Role::Left,
        "a heartbeat is not the MEMBERSHIP"
    );
    nodes[0].step(now, "b", restamped_by_b(version, members));
    let out = drain(&mut nodes[0]);
    assert!(sends(&out).contains(&("b".into(), GroupMessage::MembershipAck { term: 2, version })));
    assert_eq!(nodes[0].role(), Role::Left);
    assert!(out.contains(&Output::Event(GroupEvent::Left)));
}

#[test]
fn a_leaving_leader_stays_until_its_signed_vote_is_out() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    nodes[0].leave(now).unwrap();
    drain(&mut nodes[0]);
    let (mterm, version) = (nodes[0].membership_term(), nodes[0].membership_version());
    nodes[0].step(
        now,
        "b",
        GroupMessage::VoteRequest(stamped_vote_request(2, "b", (mterm, version))),
    );
    let out = drain(&mut nodes[0]);
    assert!(out.iter().any(|o| matches!(o, Output::SignVote { .. })));
    let members = nodes[0].members().to_vec();
    nodes[0].step(now, "b", restamped_by_b(version, members));
    drain(&mut nodes[0]);
    assert_ne!(
        nodes[0].role(),
        Role::Left,
        "stays until the signed copy of its vote is out: b shows it to the proxy"
    );
    let signed = the_vote(&out).signed(&TestSigner("a".into()));
    nodes[0].vote_signed(signed.clone());
    let out = drain(&mut nodes[0]);
    assert!(sends(&out).contains(&("b".into(), GroupMessage::Vote(signed))));
    assert_eq!(nodes[0].role(), Role::Left);
}

#[test]
fn a_signed_vote_counts_even_after_its_voter_left() {
    // a hands over to b and leaves; its LEAVE overtakes the signed copy of its vote.
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    let a = nodes[0].me().clone();
    let mut b = nodes.remove(1);
    b.step(
        now,
        "a",
        GroupMessage::TransferLeadership {
            term: 1,
            target: "b".into(),
        },
    );
    let own = drain(&mut b)
        .into_iter()
        .find_map(|o| match o {
            Output::SignVote { vote, .. } => Some(vote),
            _ => None,
        })
        .unwrap();
    b.step(now, "a", GroupMessage::Vote(grant(2, "a", "b", Vec::new())));
    assert_eq!(b.role(), Role::Leader);
    let version = b.membership_version();
    b.step(now, "a", GroupMessage::MembershipAck { term: 2, version });
    b.step(
        now,
        "a",
        GroupMessage::Leave {
            name: "a".into(),
            incarnation: a.incarnation,
        },
    );
    assert!(
        b.members().iter().all(|m| m.name == "b"),
        "a is no longer a member"
    );
    b.vote_signed(own.signed(&TestSigner("b".into())));
    b.step(
        now,
        "a",
        GroupMessage::Vote(grant(2, "a", "b", b"sig-a".to_vec())),
    );
    let proof = b.election_proof().expect("both signatures held");
    assert_eq!(proof.len(), 2);
}

#[test]
fn a_leader_that_cannot_prove_its_election_stands_again() {
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c"], 1, now);
    let t = c.poll_timeout().unwrap();
    c.tick(t);
    c.step(t, "a", GroupMessage::Vote(pre_grant(2, "a", "c")));
    c.step(t, "a", GroupMessage::Vote(grant(2, "a", "c", Vec::new())));
    assert_eq!(c.role(), Role::Leader);
    // a keeps answering, but its signature never comes (it restarted before signing).
    let mut at = t;
    while c.role() == Role::Leader && at < t + Duration::from_secs(10) {
        at += Duration::from_millis(50);
        c.step(
            at,
            "a",
            GroupMessage::MembershipAck {
                term: 2,
                version: c.membership_version(),
            },
        );
        c.tick(at);
    }
    assert_eq!(c.role(), Role::Candidate, "stood again");
    assert_eq!(c.term(), 3);
    let waited = at - t;
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "after 10 election timeouts: {waited:?}"
    );
}

#[test]
fn a_restarted_voter_signs_its_persisted_grant_again() {
    let now = Instant::now();
    let hard = HardState {
        term: 4,
        voted_for: Some("a".into()),
        ..HardState::default()
    };
    let mut b = Group::new(
        GroupConfig::new("lobby"),
        info("b", 2),
        hard,
        ChaCha8Rng::seed_from_u64(2),
        now,
    )
    .unwrap();
    let asked: Vec<VoteMsg> = drain(&mut b)
        .into_iter()
        .filter_map(|o| match o {
            Output::SignVote { vote, .. } => Some(vote),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (
            asked[0].term,
            asked[0].voter.as_str(),
            asked[0].candidate.as_str()
        ),
        (4, "b", "a")
    );
    assert!(asked[0].granted && !asked[0].pre_vote);
}

#[test]
fn spec_12_1_a_join_comes_from_the_joiner_itself_and_reaches_the_leader_directly() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    // a heartbeats its followers (they answer d's questions about a only then).
    for g in &mut nodes[1..] {
        let members = g.members().to_vec();
        g.step(now, "a", heartbeat(1, "a", members));
        drain(g);
    }
    let mut d = node("d", 1);
    // The proxy's record named a leader that is gone; d tries every member it lists.
    d.join_via(now, &["x", "b", "a", "d"]).unwrap();
    let asked: Vec<String> = sends(&drain(&mut d))
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(asked, ["x", "b", "a"], "every contact but itself");
    // A follower does not forward (a member could otherwise add names that never
    // asked): it tells the joiner whom it follows.
    // (A member also answers any JOIN with its own, its word: SPEC.md §12.5.)
    nodes[1].step(now, "d", GroupMessage::Join(d.me().clone()));
    let answers: Vec<_> = sends(&drain(&mut nodes[1]))
        .into_iter()
        .filter(|(_, m)| !matches!(m, GroupMessage::Join(j) if j.name == "b"))
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    match &answers[0] {
        (to, GroupMessage::Support(s)) => {
            assert_eq!((to.as_str(), s.leader.as_str(), s.query), ("d", "a", false))
        }
        other => panic!("expected a redirect to d, got {other:?}"),
    }
    // A JOIN for someone else (a ghost, or a forward) is refused and counted.
    nodes[0].step(now, "b", GroupMessage::Join(d.me().clone()));
    assert!(sends(&drain(&mut nodes[0])).is_empty());
    assert_eq!(nodes[0].rejections().get(Violation::NotSubject), 1);
    assert_eq!(nodes[0].members().len(), 3, "no ghost admitted");
    // The leader admits d on d's own JOIN.
    nodes[0].step(now, "d", GroupMessage::Join(d.me().clone()));
    let mut all: Vec<Group> = nodes.into_iter().chain([d]).collect();
    settle(&mut all, now);
    for g in &all {
        assert_eq!(g.members().len(), 4, "{}: {:?}", g.name(), g.members());
    }
    assert!(all[3].is_member());
    assert_eq!(all[3].leader(), Some("a"));
}

#[test]
fn a_direct_line_goes_to_its_addressee_alone_and_numbers_with_the_rest() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    assert_eq!(nodes[0].send_chat("all").unwrap(), 1);
    assert_eq!(nodes[0].send_direct("c", "psst").unwrap(), 2);
    assert_eq!(nodes[0].send_chat("all again").unwrap(), 3);
    assert_eq!(
        nodes[0].send_direct("a", "me"),
        Err(CommandError::UnknownMember("a".into()))
    );
    assert_eq!(
        nodes[0].send_direct("zed", "who"),
        Err(CommandError::UnknownMember("zed".into()))
    );
    let out = sends(&drain(&mut nodes[0]));
    let to = |name: &str| -> Vec<(u64, bool)> {
        out.iter()
            .filter_map(|(to, m)| match m {
                GroupMessage::Chat(line) if to == name => Some((line.seq, line.direct)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(to("b"), [(1, false), (3, false)], "b sees a gap at 2");
    assert_eq!(to("c"), [(1, false), (2, true), (3, false)]);
    // b delivers 1 and 3 despite the gap.
    for (_, m) in out.iter().filter(|(to, _)| to == "b") {
        nodes[1].step(now, "a", m.clone());
    }
    let seqs: Vec<u64> = drain(&mut nodes[1])
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(GroupEvent::ChatReceived { seq, .. }) => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [1, 3]);
}

#[test]
fn receipts_count_each_recipient_once() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    let seq = nodes[0].send_chat("hello").unwrap();
    drain(&mut nodes[0]);
    nodes[0].chat_delivered("c", seq);
    nodes[0].chat_delivered("c", seq); // a duplicate acknowledgement
    nodes[0].chat_failed("b", seq);
    nodes[0].chat_delivered("b", seq); // too late: already reported
    nodes[0].chat_delivered("c", seq + 1); // no such line
    let events: Vec<GroupEvent> = drain(&mut nodes[0])
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            GroupEvent::Delivered {
                seq,
                to: Some("c".into()),
                delivered: 1,
                of: 2
            },
            GroupEvent::Undelivered {
                seq,
                to: "b".into()
            },
        ]
    );
}

#[test]
fn receipts_are_bounded() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b"], now);
    for _ in 0..chat::MAX_TRACKED_LINES + 10 {
        nodes[0].send_chat("x").unwrap();
    }
    drain(&mut nodes[0]);
    assert_eq!(nodes[0].chat.receipts.len(), chat::MAX_TRACKED_LINES);
    // The oldest were forgotten: their acknowledgements say nothing.
    nodes[0].chat_delivered("b", 1);
    assert!(drain(&mut nodes[0]).is_empty());
}

#[test]
fn a_term_above_max_term_is_refused_and_changes_nothing() {
    let now = Instant::now();
    let mut nodes = group_of(&["a", "b", "c"], now);
    drain(&mut nodes[0]);
    drain(&mut nodes[1]);
    let b = &mut nodes[1];
    let hard_before = b.hard_state().clone();
    b.step(
        now,
        "c",
        GroupMessage::VoteRequest(vote_request(u64::MAX, "c", 9)),
    );
    b.step(
        now,
        "c",
        GroupMessage::PreVoteRequest(vote_request(MAX_TERM + 1, "c", 9)),
    );
    assert_eq!(b.hard_state(), &hard_before, "no term taken, no vote cast");
    assert!(drain(b).is_empty(), "nothing persisted, nothing sent");
    assert_eq!(b.rejections().get(Violation::TermOutOfRange), 2);
    // The leader is not deposed by an absurd acknowledgement either.
    let a = &mut nodes[0];
    a.step(
        now,
        "c",
        GroupMessage::MembershipAck {
            term: u64::MAX,
            version: 1,
        },
    );
    assert_eq!(a.role(), Role::Leader);
    assert_eq!(a.term(), 1);
    assert_eq!(a.rejections().get(Violation::TermOutOfRange), 1);
    // A membership created in a later term than it is sent in is malformed.
    let b = &mut nodes[1];
    b.step(
        now,
        "a",
        GroupMessage::Membership {
            term: 1,
            membership_term: 2,
            version: 9,
            members: vec![info("a", 1)],
        },
    );
    assert_eq!(b.members().len(), 3);
    assert_eq!(b.rejections().get(Violation::BadMembership), 1);
}

#[test]
fn a_node_holding_an_absurd_persisted_term_recovers() {
    let now = Instant::now();
    let hard = HardState {
        term: u64::MAX,
        voted_for: Some("mallory".into()),
        membership_term: 3,
        membership_version: 2,
        members: vec![info("a", 2), info("b", 1)],
        former_members: Vec::new(),
        votes_ahead: Vec::new(),
    };
    let mut b = Group::new(
        GroupConfig::new("lobby"),
        info("b", 1),
        hard,
        ChaCha8Rng::seed_from_u64(1),
        now,
    )
    .unwrap();
    assert_eq!(b.term(), 3, "back to the term of the membership it holds");
    assert_eq!(b.hard_state().voted_for, None);
    assert!(drain(&mut b)
        .iter()
        .any(|o| matches!(o, Output::Persist(h) if h.term == 3)));
    // It stands again without wrapping: a pre-vote for term 4.
    let t = b.poll_timeout().unwrap();
    b.tick(t);
    let asked = sends(&drain(&mut b));
    assert!(asked
        .iter()
        .any(|(_, m)| matches!(m, GroupMessage::PreVoteRequest(r) if r.term == 4)));
}

#[test]
fn repeated_vote_requests_ask_for_one_signature() {
    let now = Instant::now();
    let (mut g, out) = b_asked_by_a(now);
    let mut asked = out
        .iter()
        .filter(|o| matches!(o, Output::SignVote { .. }))
        .count();
    for _ in 0..100 {
        g.step(now, "a", GroupMessage::VoteRequest(vote_request(2, "a", 1)));
        let out = drain(&mut g);
        assert!(the_vote(&out).granted, "each is answered");
        asked += out
            .iter()
            .filter(|o| matches!(o, Output::SignVote { .. }))
            .count();
    }
    assert_eq!(asked, 1, "one RSA signature per (term, candidate)");
}

#[test]
fn spec_12_5_a_member_left_out_of_a_claim_asks_the_claimant_to_list_it_again() {
    // b holds {a, b}; a now claims term 3 with {a, c, d}: b was removed while away.
    // The claim is unproven by b's membership (b does not back a in 3), and a does
    // not heartbeat b: b sends a its JOIN, once per election_timeout_min.
    let now = Instant::now();
    let mut b = follower("b", &["a", "b"], 2, now);
    let claim = heartbeat(3, "a", vec![info("a", 2), info("c", 5), info("d", 6)]);
    b.step(now, "a", claim.clone());
    let joins_to = |outputs: &[Output], to: &str| {
        sends(outputs)
            .iter()
            .filter(|(t, m)| t == to && matches!(m, GroupMessage::Join(j) if j.name == "b"))
            .count()
    };
    let out = drain(&mut b);
    assert_eq!(b.leader(), None, "the claim is not proven");
    assert_eq!(joins_to(&out, "a"), 1, "b asks a to list it again");
    b.step(now, "a", claim.clone());
    assert_eq!(joins_to(&drain(&mut b), "a"), 0, "not again at once");
    let later = now + b.config.election_timeout_min;
    b.step(later, "a", claim);
    assert_eq!(joins_to(&drain(&mut b), "a"), 1, "again after the gap");
    // A claimant that is not b's member gets nothing of it.
    let stranger = heartbeat(3, "z", vec![info("z", 9), info("c", 5)]);
    b.step(later, "z", stranger);
    assert_eq!(joins_to(&drain(&mut b), "z"), 0);
}
