//! One test per rule of SPEC.md §12 (authorization), named after the section: the
//! attacks of the issue "membership is the group's trust boundary", each tried against
//! the state machine, and the honest case each rule must still let through.

use super::*;
use crate::message::SupportMsg;

/// A settled group of `names` led by the first, with every output drained.
fn quiet_group(names: &[&str], now: Instant) -> Vec<Group> {
    let mut nodes = group_of(names, now);
    for g in nodes.iter_mut() {
        drain(g);
    }
    nodes
}

fn member_names(g: &Group) -> Vec<String> {
    g.members().iter().map(|m| m.name.clone()).collect()
}

fn query(term: u64, asker: &str, leader: &str) -> SupportMsg {
    SupportMsg {
        query: true,
        ..support(term, asker, leader)
    }
}

fn line(sender: &str, seq: u64) -> GroupMessage {
    GroupMessage::Chat(ChatLine {
        sender: sender.into(),
        incarnation: 1,
        seq,
        direct: false,
        text: "hi".into(),
    })
}

fn chats(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::Event(GroupEvent::ChatReceived { .. })))
        .count()
}

#[test]
fn spec_12_1_an_outsider_claiming_leadership_changes_nothing() {
    // The first attack: one HEARTBEAT per member from a non-member.
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    let term = b.term();
    b.step(
        now,
        "mallory",
        heartbeat(term + 1, "mallory", vec![info("mallory", 9), info("b", 2)]),
    );
    assert_eq!(b.leader(), Some("a"));
    assert_eq!(b.term(), term);
    assert_eq!(member_names(b), ["a", "b", "c"]);
    let out = drain(b);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Event(_) | Output::Persist(_))));
    assert_eq!(b.rejections().get(Violation::UnprovenLeader), 1);
}

#[test]
fn spec_12_1_a_heartbeat_naming_another_leader_is_dropped() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    b.step(now, "c", heartbeat(b.term() + 1, "a", b.members().to_vec()));
    assert_eq!(b.leader(), Some("a"));
    assert_eq!(b.rejections().get(Violation::NotSubject), 1);
}

#[test]
fn spec_12_1_chat_with_another_senders_name_is_dropped() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    b.step(now, "c", line("a", 1));
    assert_eq!(chats(&drain(b)), 0);
    assert_eq!(b.rejections().get(Violation::NotSubject), 1);
}

#[test]
fn spec_12_1_chat_from_a_non_member_is_held_until_its_admission() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    // d's first line overtakes the MEMBERSHIP that admits it.
    nodes[1].step(now, "d", line("d", 1));
    assert_eq!(
        chats(&drain(&mut nodes[1])),
        0,
        "not shown before d is a member"
    );
    let d = node("d", 1);
    // d's JOIN to its contacts is its word to each (SPEC.md §12.5).
    nodes[1].step(now, "d", GroupMessage::Join(d.me().clone()));
    nodes[0].step(now, "d", GroupMessage::Join(d.me().clone()));
    for (to, msg) in sends(&drain(&mut nodes[0])) {
        if to == "b" {
            nodes[1].step(now, "a", msg);
        }
    }
    assert!(nodes[1].members().iter().any(|m| m.name == "d"));
    assert_eq!(
        chats(&drain(&mut nodes[1])),
        1,
        "the held line, once d is admitted"
    );
}

#[test]
fn spec_12_1_vote_requests_from_non_members_are_refused() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    let hard = b.hard_state().clone();
    let later = b.term() + 1;
    b.step(
        now,
        "mallory",
        GroupMessage::VoteRequest(vote_request(later, "mallory", 99)),
    );
    b.step(
        now,
        "mallory",
        GroupMessage::PreVoteRequest(vote_request(later, "mallory", 99)),
    );
    assert_eq!(b.hard_state(), &hard, "no term taken, no vote cast");
    // Nothing goes out to a name we never listed: it is of another group of the same
    // name (SPEC.md §12.7), which learns of ours from the proxy.
    assert_eq!(sends(&drain(b)), []);
    assert_eq!(b.rejections().get(Violation::NotMember), 2);
    // A former member is not granted anything either: a follower only names its
    // leader, as to a joiner (a member removed while cut off may no longer list the
    // leader to ask).
    b.hard.former_members.push("mallory".into());
    b.step(
        now,
        "mallory",
        GroupMessage::PreVoteRequest(vote_request(later, "mallory", 99)),
    );
    assert_eq!(b.hard_state().term, hard.term);
    let out = sends(&drain(b));
    assert!(
        matches!(&out[..], [(to, GroupMessage::Support(s))]
            if to == "mallory" && s.leader == "a" && !s.query),
        "{out:?}"
    );
}

#[test]
fn spec_12_1_a_request_for_another_candidate_is_dropped() {
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c"], 1, now);
    b.step(now, "c", GroupMessage::VoteRequest(vote_request(2, "a", 1)));
    assert_eq!(b.term(), 1);
    assert_eq!(b.rejections().get(Violation::NotSubject), 1);
}

#[test]
fn spec_12_1_a_vote_for_another_group_is_dropped() {
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c"], 1, now);
    let mut vote = grant(1, "c", "b", Vec::new());
    vote.group = "other".into();
    b.step(now, "c", GroupMessage::Vote(vote));
    assert_eq!(b.rejections().get(Violation::WrongGroup), 1);
}

#[test]
fn spec_12_1_a_support_query_is_answered_only_by_a_backer() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let term = nodes[1].term();
    let b = &mut nodes[1];
    // b follows a, which heartbeats it.
    let members = b.members().to_vec();
    b.step(now, "a", heartbeat(term, "a", members));
    drain(b);
    // Anyone authenticated may ask: a joiner is not a member yet.
    b.step(
        now,
        "newcomer",
        GroupMessage::Support(query(term, "newcomer", "a")),
    );
    let answers = sends(&drain(b));
    assert_eq!(
        answers,
        [(
            "newcomer".to_owned(),
            GroupMessage::Support(support(term, "b", "a"))
        )]
    );
    b.step(
        now,
        "newcomer",
        GroupMessage::Support(query(term, "newcomer", "c")),
    );
    assert!(sends(&drain(b)).is_empty(), "b does not back c");
}

#[test]
fn spec_12_1_a_leave_for_another_name_is_dropped() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let a = &mut nodes[0];
    a.step(
        now,
        "c",
        GroupMessage::Leave {
            name: "b".into(),
            incarnation: 1,
        },
    );
    assert_eq!(member_names(a), ["a", "b", "c"]);
    assert_eq!(a.rejections().get(Violation::NotSubject), 1);
}

#[test]
fn spec_12_1_transfer_leadership_counts_only_from_the_leader() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let term = nodes[1].term();
    let b = &mut nodes[1];
    b.step(
        now,
        "c",
        GroupMessage::TransferLeadership {
            term,
            target: "b".into(),
        },
    );
    assert_eq!(b.role(), Role::Follower, "c is not b's leader: no election");
    assert_eq!(b.term(), term);
    b.step(
        now,
        "a",
        GroupMessage::TransferLeadership {
            term,
            target: "b".into(),
        },
    );
    assert_eq!(b.role(), Role::Candidate, "the leader's transfer is obeyed");
}

#[test]
fn spec_12_2_a_member_follows_a_new_leader_once_a_majority_backs_it() {
    let now = Instant::now();
    let names = ["a", "b", "c", "d", "e"];
    let mut c = follower("c", &names, 3, now);
    let claim = heartbeat(4, "b", c.members().to_vec());
    c.step(now, "b", claim.clone());
    assert_eq!(c.leader(), None, "b alone is not a majority");
    c.step(now, "a", GroupMessage::Support(support(4, "a", "b")));
    assert_eq!(c.leader(), None, "b and a are two of five");
    c.step(now, "d", GroupMessage::Support(support(4, "d", "b")));
    assert_eq!(
        c.leader(),
        Some("b"),
        "the held claim is acted on once three back it"
    );
    assert_eq!(c.term(), 4);
}

#[test]
fn spec_12_2_an_unproven_claim_makes_the_member_ask() {
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c"], 3, now);
    c.step(now, "b", heartbeat(4, "b", c.members().to_vec()));
    drain(&mut c);
    // Half a heartbeat later, the supports have not come: c asks.
    let later = now + Duration::from_millis(30);
    c.step(later, "b", heartbeat(4, "b", c.members().to_vec()));
    let asked: Vec<(String, GroupMessage)> = sends(&drain(&mut c));
    // The other member, and the claimant itself (a member: it learns that c cannot
    // prove its election).
    let question = GroupMessage::Support(query(4, "c", "b"));
    assert_eq!(
        asked,
        [
            ("a".to_owned(), question.clone()),
            ("b".to_owned(), question)
        ]
    );
}

#[test]
fn spec_12_3_a_leader_a_member_cannot_prove_stands_again_for_it() {
    // c holds a membership a's election did not count, so a majority of it does not
    // back a: c asks a whether it leads. The first question may be a lost support;
    // a second one, in the same term, makes a stand again, and the election it holds
    // is one c votes in. (A second question means one asked again, after the wait.)
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let term = nodes[0].term();
    let a = &mut nodes[0];
    a.step(now, "c", GroupMessage::Support(query(term, "c", "a")));
    assert_eq!((a.role(), a.term()), (Role::Leader, term), "once: nothing");
    a.step(now, "c", GroupMessage::Support(query(term, "c", "a")));
    assert_eq!(
        a.role(),
        Role::Leader,
        "a duplicate is not a second question"
    );
    let later = now + GroupConfig::new("lobby").election_timeout_max;
    a.step(later, "c", GroupMessage::Support(query(term, "c", "a")));
    assert_eq!(a.role(), Role::Candidate, "twice: a stands again");
    settle(&mut nodes, later);
    assert_eq!((nodes[0].role(), nodes[0].term()), (Role::Leader, term + 1));
    assert!(nodes.iter().all(|g| g.leader() == Some("a")));
    // A question about another term, or from a name a does not list, moves nothing.
    let a = &mut nodes[0];
    for (from, t) in [("c", term), ("c", term), ("x", term + 1), ("x", term + 1)] {
        a.step(later, from, GroupMessage::Support(query(t, from, "a")));
    }
    assert_eq!((a.role(), a.term()), (Role::Leader, term + 1));
}

#[test]
fn spec_12_2_a_lying_member_cannot_lead_with_sock_puppets() {
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c", "m"], 3, now);
    let puppets = vec![info("m", 9), info("p1", 8), info("p2", 7), info("b", 2)];
    b.step(now, "m", heartbeat(4, "m", puppets));
    // The puppets hold registered keys: their supports arrive authenticated.
    b.step(now, "p1", GroupMessage::Support(support(4, "p1", "m")));
    b.step(now, "p2", GroupMessage::Support(support(4, "p2", "m")));
    assert_eq!(b.leader(), None);
    assert_eq!(b.term(), 3);
    assert_eq!(member_names(&b), ["a", "b", "c", "m"]);
}

#[test]
fn spec_12_2_a_member_behind_recognises_a_leader_listing_a_former_member() {
    // c removed b in a term it led, but the change never reached a; a was then
    // elected by b with the membership before it: c must follow a.
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c"], 3, now);
    let group = vec![info("a", 3), info("b", 2), info("c", 1)];
    c.adopt_membership(now, (3, 2), vec![info("a", 3), info("c", 1)]);
    assert_eq!(
        c.hard_state().former_members,
        ["b"],
        "kept, across restarts too"
    );
    c.step(now, "a", heartbeat(4, "a", group));
    assert_eq!(c.leader(), None, "a alone is one of two");
    // b, not in c's membership but in the claimed one, answers c's question.
    c.step(now, "b", GroupMessage::Support(support(4, "b", "a")));
    assert_eq!(c.leader(), Some("a"));
    assert_eq!(
        member_names(&c),
        ["a", "c"],
        "b's return not vouched for yet"
    );
    // b's word (its JOIN, here the answer to the one c sent it) vouches for it.
    assert!(sends(&drain(&mut c))
        .iter()
        .any(|(to, m)| to == "b" && matches!(m, GroupMessage::Join(_))));
    c.step(now, "b", GroupMessage::Join(info("b", 2)));
    assert_eq!(member_names(&c), ["a", "b", "c"]);
}

#[test]
fn spec_12_2_the_proxy_vouches_for_a_newcomer() {
    let now = Instant::now();
    let mut d = node("d", 1);
    d.join_via(now, &["a", "b", "c"]).unwrap();
    drain(&mut d);
    let members = vec![info("a", 3), info("b", 2), info("c", 1), info("d", 1)];
    let admitted = GroupMessage::Membership {
        term: 5,
        membership_term: 5,
        version: 9,
        members,
    };
    d.step(now, "a", admitted.clone());
    assert_eq!(
        d.leader(),
        None,
        "a's word alone proves nothing to a newcomer"
    );
    d.vouch(now, 5, "a");
    assert_eq!(
        d.leader(),
        Some("a"),
        "the held claim is acted on with the proxy's record"
    );
    assert!(d.is_member());
}

#[test]
fn spec_12_3_an_acknowledgement_with_a_later_term_does_not_depose_the_leader() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let term = nodes[0].term();
    let a = &mut nodes[0];
    a.step(now, "c", ack(term + 5));
    assert_ne!(a.term(), term + 5, "the reported term is never adopted");
    // a stands again in its term + 1 instead, and its followers grant it despite the
    // lease: it leads again, one term later.
    settle(&mut nodes, now);
    assert_eq!(nodes[0].role(), Role::Leader);
    assert_eq!(nodes[0].term(), term + 1);
    assert!(nodes.iter().all(|g| g.leader() == Some("a")));
    // Not again at once.
    let a = &mut nodes[0];
    a.step(now, "c", ack(term + 5));
    assert_eq!((a.role(), a.term()), (Role::Leader, term + 1));
}

fn ack(term: u64) -> GroupMessage {
    GroupMessage::MembershipAck { term, version: 1 }
}

/// Settles `nodes` at `at` after `c` reported a later term to the leader `a`; the
/// term `a` then leads.
fn report_later_term(nodes: &mut [Group], at: Instant) -> u64 {
    let later = nodes[0].term() + 5;
    nodes[0].step(at, "c", ack(later));
    settle(nodes, at);
    assert_eq!(nodes[0].role(), Role::Leader, "a stays leader");
    assert!(nodes.iter().all(|g| g.leader() == Some("a")));
    nodes[0].term()
}

#[test]
fn spec_12_3_a_member_that_keeps_reporting_later_terms_gains_fewer_and_fewer() {
    let start = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], start);
    let config = GroupConfig::new("lobby");
    let first = config.election_timeout_min;
    let term = nodes[0].term();
    // The first report: a stands again at once (an honest member left behind by a
    // race is caught up within one election).
    assert_eq!(report_later_term(&mut nodes, start), term + 1);
    // Then the waits double from election_timeout_min: at +1, +1+2, +1+2+4 (in
    // election_timeout_min), and every report between changes nothing.
    let mut at = start;
    let mut expected = term + 1;
    for wait in [1u32, 2, 4] {
        let early = at + first * wait - Duration::from_millis(1);
        assert_eq!(report_later_term(&mut nodes, early), expected, "early");
        at += first * wait;
        expected += 1;
        assert_eq!(report_later_term(&mut nodes, at), expected, "after {wait}");
    }
    // Once reports stop for failure_removal, the next is answered at once again.
    let quiet = at + config.failure_removal;
    let now_term = nodes[0].term();
    assert_eq!(report_later_term(&mut nodes, quiet), now_term + 1);
}

#[test]
fn spec_12_3_a_member_reporting_later_terms_is_alive_not_failed() {
    // c answers only with terms a will not stand again for (beyond its ceiling); b
    // acknowledges a's term. c is behind a's standing again, not failed.
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let a = &mut nodes[0];
    let term = a.term();
    let mut t = now;
    while t < now + a.config.failure_removal * 2 {
        t = a.poll_timeout().expect("a leader has timers");
        a.tick(t);
        let version = a.version;
        a.step(t, "b", GroupMessage::MembershipAck { term, version });
        a.step(t, "c", ack(term + 1000));
        let out = drain(a);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Event(GroupEvent::PeerUnreachable { .. }))),
            "{out:?}"
        );
    }
    assert_eq!(member_names(a), ["a", "b", "c"]);
    assert_eq!((a.role(), a.term()), (Role::Leader, term));
}

/// The term of the PRE_VOTE_REQUEST `g` sends when its election timer fires next.
fn next_pre_vote_term(g: &mut Group) -> (Instant, u64) {
    let at = g.poll_timeout().expect("an election timer");
    g.tick(at);
    let term = sends(&drain(g))
        .into_iter()
        .find_map(|(_, m)| match m {
            GroupMessage::PreVoteRequest(req) => Some(req.term),
            _ => None,
        })
        .expect("a pre-vote request");
    (at, term)
}

fn pre_vote_refusal(voter: &str, term: u64) -> GroupMessage {
    GroupMessage::Vote(VoteMsg {
        granted: false,
        ..pre_grant(term, voter, "b")
    })
}

#[test]
fn spec_12_3_a_member_behind_in_term_asks_for_the_term_a_majority_could_grant() {
    // b holds the newest membership but term 3; a and c were pushed to term 9 while b
    // was away. Refusals never move b's term, but they tell b where the others are.
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c"], 3, now);
    b.membership_term = 3; // its ceiling: 3 + TERM_SLACK
    let (at, asked) = next_pre_vote_term(&mut b);
    assert_eq!(asked, 4);
    b.step(at, "a", pre_vote_refusal("a", 9));
    b.step(at, "c", pre_vote_refusal("c", 9));
    assert_eq!(b.term(), 3, "a refusal moves no term");
    let (_, asked) = next_pre_vote_term(&mut b);
    assert_eq!(
        asked, 10,
        "one past the term a majority (b and a, or b and c) is at"
    );
    // Never beyond b's term ceiling, whatever the others say.
    b.step(at, "a", pre_vote_refusal("a", 40));
    b.step(at, "c", pre_vote_refusal("c", 40));
    let (when, asked) = next_pre_vote_term(&mut b);
    assert_eq!(asked, b.term_ceiling(when));
    assert!(
        asked < 3 + TERM_SLACK + 5,
        "{asked}: the ceiling rises one per timeout"
    );
}

#[test]
fn spec_12_3_one_member_cannot_lift_the_pre_vote_term() {
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c"], 3, now);
    let (at, _) = next_pre_vote_term(&mut b);
    b.step(at, "a", pre_vote_refusal("a", 3));
    b.step(at, "c", pre_vote_refusal("c", 1000));
    let (_, asked) = next_pre_vote_term(&mut b);
    assert_eq!(asked, 4, "b and a make a majority at term 3");
}

#[test]
fn spec_12_3_a_vote_request_moves_a_term_only_with_a_majority_of_pre_votes() {
    // Five members, no leader: c asks b for term 4. c and b are two of the three a
    // majority needs; b holds the request (no answer, no term) until a third member
    // says it granted c that pre-vote.
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c", "d", "e"], 3, now);
    b.membership_term = 3;
    let request = GroupMessage::VoteRequest(stamped_vote_request(4, "c", (3, 1)));
    b.step(now, "c", request.clone());
    assert_eq!(b.term(), 3, "a lone candidate moves no term");
    assert!(sends(&drain(&mut b)).is_empty(), "held, not answered");
    // Word of other terms, candidates or from a non-member does not back it.
    b.step(now, "d", pre_vote_support(5, "d", "c"));
    b.step(now, "d", pre_vote_support(4, "d", "e"));
    b.step(now, "mallory", pre_vote_support(4, "mallory", "c"));
    assert_eq!(b.term(), 3);
    assert_eq!(b.rejections().get(Violation::NotMember), 1);
    b.step(now, "d", pre_vote_support(4, "d", "c"));
    assert_eq!(b.term(), 4, "the held request, answered");
    assert_eq!(b.hard_state().voted_for.as_deref(), Some("c"));
    assert!(the_vote(&drain(&mut b)).granted);
}

#[test]
fn spec_12_3_a_pre_vote_support_does_not_overrule_the_lease() {
    // b follows a; c's request is disruptive, counted once, whatever supports follow.
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c", "d", "e"], now);
    let b = &mut nodes[1];
    let term = b.term();
    let (stamp, version) = (b.membership_term, b.version);
    let request = stamped_vote_request(term + 1, "c", (stamp, version));
    b.step(now, "c", GroupMessage::VoteRequest(request));
    b.step(now, "d", pre_vote_support(term + 1, "d", "c"));
    b.step(now, "e", pre_vote_support(term + 1, "e", "c"));
    assert_eq!(b.term(), term);
    assert_eq!(b.leader(), Some("a"));
    assert_eq!(b.rejections().get(Violation::Disruptive), 1);
}

#[test]
fn spec_12_3_a_granted_pre_vote_is_told_to_the_other_members() {
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c"], 3, now);
    b.membership_term = 3;
    b.step(
        now,
        "c",
        GroupMessage::PreVoteRequest(stamped_vote_request(4, "c", (3, 1))),
    );
    let told: Vec<(String, GroupMessage)> = sends(&drain(&mut b));
    assert!(told.contains(&("a".to_owned(), pre_vote_support(4, "b", "c"))));
    assert!(
        !told
            .iter()
            .any(|(to, m)| to == "c" && matches!(m, GroupMessage::Support(_))),
        "not to the candidate"
    );
}

#[test]
fn spec_12_3_a_vote_request_beyond_the_term_ceiling_is_refused() {
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c"], 3, now);
    b.membership_term = 3; // created by the leader of term 3, the last b heard
    let ceiling = 3 + TERM_SLACK;
    b.step(
        now,
        "c",
        GroupMessage::VoteRequest(vote_request(ceiling + 1, "c", 1)),
    );
    assert_eq!(b.term(), 3);
    assert_eq!(b.rejections().get(Violation::TermOutOfRange), 1);
    b.step(
        now,
        "c",
        GroupMessage::VoteRequest(stamped_vote_request(ceiling, "c", (3, 1))),
    );
    assert_eq!(
        b.term(),
        ceiling,
        "within the ceiling, an election as any other"
    );
    // Without a leader, the ceiling rises one term per election_timeout_max.
    let later = now + GroupConfig::new("lobby").election_timeout_max * 3;
    b.step(
        later,
        "c",
        GroupMessage::VoteRequest(stamped_vote_request(ceiling + 2, "c", (3, 1))),
    );
    assert_eq!(b.term(), ceiling + 2);
}

#[test]
fn spec_12_3_the_lease_yields_only_to_the_leader_and_its_chosen_successor() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let term = nodes[1].term();
    let b = &mut nodes[1];
    let request = stamped_vote_request(term + 1, "c", (term, 99));
    b.step(now, "c", GroupMessage::VoteRequest(request));
    assert_eq!(b.term(), term, "c may not disturb a live leader");
    assert_eq!(b.rejections().get(Violation::Disruptive), 1);
    // The leader hands over to c: now c's request (held meanwhile) is answered.
    b.step(
        now,
        "a",
        GroupMessage::TransferLeadership {
            term,
            target: "c".into(),
        },
    );
    assert_eq!(b.term(), term + 1);
    let grant = the_vote(&drain(b));
    assert!(grant.granted && grant.candidate == "c");
}

#[test]
fn spec_12_3_a_refusal_with_a_later_term_moves_nothing() {
    let now = Instant::now();
    let mut a = follower("a", &["a", "b", "c"], 3, now);
    a.tick(now + Duration::from_secs(1));
    assert_eq!(a.role(), Role::PreCandidate);
    a.step(
        now,
        "b",
        GroupMessage::Vote(VoteMsg {
            granted: false,
            ..pre_grant(40, "b", "a")
        }),
    );
    a.step(
        now,
        "c",
        GroupMessage::Vote(VoteMsg {
            granted: false,
            ..grant(40, "c", "a", Vec::new())
        }),
    );
    assert_eq!(a.term(), 3);
}

#[test]
fn spec_12_2_a_claimed_membership_must_keep_all_of_ours() {
    // m (a member) and b, who voted for it, are two of four: not a majority of ours,
    // and m may not pick a smaller membership in which they would be.
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c", "m"], 3, now);
    c.step(
        now,
        "m",
        heartbeat(4, "m", vec![info("b", 3), info("c", 2), info("m", 9)]),
    );
    c.step(now, "b", GroupMessage::Support(support(4, "b", "m")));
    assert_eq!(c.leader(), None);
    assert_eq!(member_names(&c), ["a", "b", "c", "m"]);
}

#[test]
fn spec_12_2_a_name_never_in_our_memberships_backs_nothing() {
    // Even in a membership that lists all of ours, m's puppet is not counted.
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c", "m"], 3, now);
    let claimed = vec![
        info("a", 4),
        info("b", 3),
        info("c", 2),
        info("m", 9),
        info("p", 8),
    ];
    c.step(now, "m", heartbeat(4, "m", claimed));
    c.step(now, "p", GroupMessage::Support(support(4, "p", "m")));
    c.step(now, "b", GroupMessage::Support(support(4, "b", "m")));
    assert_eq!(
        c.leader(),
        None,
        "m and b are two of five; p does not count"
    );
}

/// The leader's MEMBERSHIP (term 1) at `version` listing `members`.
fn membership(version: u64, members: Vec<MemberInfo>) -> GroupMessage {
    GroupMessage::Membership {
        term: 1,
        membership_term: 1,
        version,
        members,
    }
}

/// The leader's HEARTBEAT (term 1) carrying membership `version` = `members`.
fn heartbeat_v(version: u64, members: Vec<MemberInfo>) -> GroupMessage {
    GroupMessage::Heartbeat {
        term: 1,
        leader: "a".into(),
        membership_term: 1,
        membership_version: version,
        members,
    }
}

/// `g`'s members but `name`.
fn without(g: &Group, name: &str) -> Vec<MemberInfo> {
    g.members()
        .iter()
        .filter(|m| m.name != name)
        .cloned()
        .collect()
}

/// Whether `g` acknowledged `version` among `outputs`.
fn acked(outputs: &[Output], version: u64) -> bool {
    sends(outputs)
        .iter()
        .any(|(_, m)| matches!(m, GroupMessage::MembershipAck { version: v, .. } if *v == version))
}

#[test]
fn spec_12_5_an_elected_liar_cannot_add_a_name_that_never_asked() {
    // a leads; it lists a sock puppet: b holds the change, unacknowledged, and asks the
    // puppet for its word, which a puppet (registered, but never joining) never gives.
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    let version = b.membership_version();
    let mut padded = b.members().to_vec();
    padded.push(info("puppet", 7));
    b.step(now, "a", membership(version + 1, padded.clone()));
    let out = drain(b);
    assert_eq!(member_names(b), ["a", "b", "c"]);
    assert!(!acked(&out, version + 1), "{out:?}");
    assert!(
        sends(&out)
            .iter()
            .any(|(to, m)| to == "puppet" && matches!(m, GroupMessage::Join(j) if j.name == "b")),
        "b asks the puppet for its word: {out:?}"
    );
    // The honest case: the name's own JOIN is its word, and the change goes through.
    b.step(now, "puppet", GroupMessage::Join(info("puppet", 7)));
    let out = drain(b);
    assert_eq!(member_names(b), ["a", "b", "c", "puppet"]);
    assert!(acked(&out, version + 1), "{out:?}");
}

#[test]
fn spec_12_1_chat_from_a_name_the_leader_admitted_is_delivered_while_the_membership_waits() {
    // a lists d (which joined) and x (gone quiet; b, restarted, lacks its word): b
    // holds the membership for x, but d asked to be a member and a admitted it, so
    // d's lines are delivered meanwhile. x's are held: b cannot vouch for x.
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    let version = b.membership_version();
    let mut next = b.members().to_vec();
    next.extend([info("d", 4), info("x", 5)]);
    b.step(now, "a", membership(version + 1, next));
    drain(b);
    b.step(now, "d", line("d", 1));
    assert_eq!(chats(&drain(b)), 0, "before d's word: held");
    b.step(now, "d", GroupMessage::Join(info("d", 4)));
    assert_eq!(member_names(b), ["a", "b", "c"], "still waiting for x");
    assert_eq!(chats(&drain(b)), 1, "d's held line, once d gave its word");
    b.step(now, "d", line("d", 2));
    assert_eq!(chats(&drain(b)), 1);
    b.step(now, "x", line("x", 1));
    assert_eq!(chats(&drain(b)), 0, "x never gave its word");
}

#[test]
fn spec_12_5_a_member_removed_while_cut_off_asks_the_leader_the_members_name() {
    // c was removed while cut off; its own membership, older, lists b and d but no
    // longer a, who leads now. It stands: b answers with whom it follows, and c asks
    // that leader to list it again, each time it is named (at most once per
    // election_timeout_min).
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "d"], 4, now);
    b.hard.former_members.push("c".into());
    b.step(now, "a", heartbeat(4, "a", b.members().to_vec()));
    b.step(now, "d", GroupMessage::Support(support(4, "d", "a")));
    assert_eq!(b.leader(), Some("a"));
    drain(&mut b);
    let mut c = follower("c", &["b", "c", "d"], 2, now);
    let (at, term) = next_pre_vote_term(&mut c);
    b.step(
        at,
        "c",
        GroupMessage::PreVoteRequest(vote_request(term, "c", 1)),
    );
    let named = sends(&drain(&mut b));
    assert!(
        matches!(&named[..], [(to, GroupMessage::Support(s))] if to == "c" && s.leader == "a"),
        "{named:?}"
    );
    let asks = |c: &mut Group| {
        sends(&drain(c))
            .iter()
            .filter(|(to, m)| to == "a" && matches!(m, GroupMessage::Join(j) if j.name == "c"))
            .count()
    };
    for (to, msg) in named.iter().cloned() {
        assert_eq!(to, "c");
        c.step(at, "b", msg.clone());
        assert_eq!(asks(&mut c), 1, "c asks a to list it again");
        c.step(at, "b", msg.clone());
        assert_eq!(asks(&mut c), 0, "not again at once");
        let later = at + GroupConfig::new("lobby").election_timeout_min;
        c.step(later, "b", msg);
        assert_eq!(asks(&mut c), 1, "again once named after the wait");
    }
}

#[test]
fn spec_12_5_a_joiners_join_to_its_contacts_vouches_for_it_at_once() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let d = info("d", 1);
    nodes[1].step(now, "d", GroupMessage::Join(d.clone()));
    drain(&mut nodes[1]);
    let version = nodes[1].membership_version();
    let mut next = nodes[1].members().to_vec();
    next.push(d);
    nodes[1].step(now, "a", membership(version + 1, next));
    let out = drain(&mut nodes[1]);
    assert_eq!(member_names(&nodes[1]), ["a", "b", "c", "d"]);
    assert!(acked(&out, version + 1));
}

#[test]
fn spec_12_5_an_elected_liar_cannot_remove_a_member_that_still_follows_it() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let version = nodes[1].membership_version();
    let without_c = without(&nodes[1], "c");
    nodes[1].step(now, "a", membership(version + 1, without_c));
    let out = drain(&mut nodes[1]);
    let asked: Vec<GroupMessage> = sends(&out)
        .into_iter()
        .filter(|(to, _)| to == "c")
        .map(|(_, m)| m)
        .collect();
    assert!(
        asked.contains(&GroupMessage::Support(query(1, "b", "a"))),
        "b asks c whether it follows a: {out:?}"
    );
    // c, alive and following a, answers (and gives its word back).
    for m in asked {
        nodes[2].step(now, "b", m);
    }
    for (to, m) in sends(&drain(&mut nodes[2])) {
        if to == "b" {
            nodes[1].step(now, "c", m);
        }
    }
    // However long b waits, it keeps c: the question was answered.
    let later = now + Duration::from_millis(400);
    nodes[1].tick(later);
    let out = drain(&mut nodes[1]);
    assert_eq!(member_names(&nodes[1]), ["a", "b", "c"]);
    assert!(!acked(&out, version + 1));
}

#[test]
fn spec_12_5_a_member_that_does_not_answer_is_removed_after_the_wait() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    let version = b.membership_version();
    let without_c = without(b, "c");
    b.step(now, "a", membership(version + 1, without_c.clone()));
    drain(b);
    assert_eq!(member_names(b), ["a", "b", "c"], "not before the wait");
    // c is down: no answer. election_timeout_max (300 ms) later, with a's heartbeats
    // (carrying the same list) coming meanwhile, b takes the removal.
    let mut out = Vec::new();
    for step in 1..=6 {
        let t = now + Duration::from_millis(50 * step);
        b.tick(t);
        b.step(t, "a", heartbeat_v(version + 1, without_c.clone()));
        out.extend(drain(b));
        if step < 6 {
            assert_eq!(member_names(b), ["a", "b", "c"], "not before the wait");
        }
    }
    assert_eq!(member_names(b), ["a", "b"]);
    assert!(acked(&out, version + 1), "{out:?}");
}

#[test]
fn spec_12_5_a_member_that_left_is_removed_at_once() {
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let b = &mut nodes[1];
    let version = b.membership_version();
    let c = b.members().iter().find(|m| m.name == "c").cloned().unwrap();
    b.step(
        now,
        "c",
        GroupMessage::Leave {
            name: "c".into(),
            incarnation: c.incarnation,
        },
    );
    let without_c = without(b, "c");
    b.step(now, "a", membership(version + 1, without_c));
    let out = drain(b);
    assert_eq!(member_names(b), ["a", "b"]);
    assert!(acked(&out, version + 1));
}

#[test]
fn spec_12_5_a_leader_undoes_the_pending_removal_of_a_member_that_asks_to_stay() {
    // a removes c for failure (c's acknowledgements were lost), but c is alive: it
    // refuses its own removal and asks to be listed again, and a lists it at once
    // although the removal has not committed.
    let now = Instant::now();
    let mut nodes = quiet_group(&["a", "b", "c"], now);
    let c_info = nodes[2].me().clone();
    let a = &mut nodes[0];
    a.propose_removal(now, "c");
    let out = drain(a);
    let removal = sends(&out)
        .into_iter()
        .find(|(to, _)| to == "c")
        .map(|(_, m)| m)
        .expect("the change goes to c too");
    let c = &mut nodes[2];
    c.step(now, "a", removal);
    let out = drain(c);
    assert!(c.is_member(), "c does not take its own removal");
    let ask = sends(&out)
        .into_iter()
        .find(|(to, m)| to == "a" && matches!(m, GroupMessage::Join(_)))
        .map(|(_, m)| m)
        .expect("c asks a to list it again");
    let a = &mut nodes[0];
    let before = a.membership_version();
    a.step(now, "c", ask);
    drain(a);
    assert_eq!(a.membership_version(), before + 1);
    assert!(a.members().contains(&c_info));
}

#[test]
fn spec_12_3_a_member_stuck_ahead_in_a_failed_candidacy_steps_back_to_the_proven_leader() {
    // c stood alone in term 5 (cut off, or pushed there) while a majority elected a in
    // term 3: once it sees a's claim backed by a majority, it follows a in term 3.
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c"], 5, now);
    c.hard.voted_for = Some("c".into());
    let members = c.members().to_vec();
    c.step(now, "a", heartbeat(3, "a", members.clone()));
    assert_eq!(c.term(), 5, "not on the claimant's word alone");
    c.step(now, "b", GroupMessage::Support(support(3, "b", "a")));
    assert_eq!((c.term(), c.leader()), (3, Some("a")));
    assert_eq!(c.hard_state().voted_for.as_deref(), Some("a"));
}

#[test]
fn spec_12_3_the_proxys_record_does_not_make_a_member_step_back() {
    // c is in term 5 with no leader; a's old claim of term 3 is held. The proxy's
    // record says a won term 3, which proves that a majority elected a once, not that
    // one backs it now (terms 4 and 5 may have had leaders since): c does not go back.
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c"], 5, now);
    let members = c.members().to_vec();
    c.step(now, "a", heartbeat(3, "a", members));
    c.vouch(now, 3, "a");
    assert_eq!((c.term(), c.leader()), (5, None));
    // The members' own word does.
    c.step(now, "b", GroupMessage::Support(support(3, "b", "a")));
    assert_eq!((c.term(), c.leader()), (3, Some("a")));
}

#[test]
fn spec_12_3_a_member_that_voted_for_another_steps_back_and_keeps_that_vote() {
    // c granted m its vote in term 5 (m may be a liar): c may step back to follow a,
    // proven in term 3, but when it reaches term 5 again it has voted there already,
    // for m, and votes for no one else.
    let now = Instant::now();
    let mut c = follower("c", &["a", "b", "c", "m"], 5, now);
    c.hard.voted_for = Some("m".into());
    let members = c.members().to_vec();
    c.step(now, "a", heartbeat(3, "a", members));
    c.step(now, "b", GroupMessage::Support(support(3, "b", "a")));
    c.step(now, "m", GroupMessage::Support(support(3, "m", "a")));
    assert_eq!((c.term(), c.leader()), (3, Some("a")));
    assert_eq!(c.hard_state().votes_ahead, vec![(5, "m".to_owned())]);
    c.become_follower(now, 5, None);
    assert_eq!(c.hard_state().voted_for.as_deref(), Some("m"));
    assert!(c.hard_state().votes_ahead.is_empty());
    c.step(now, "b", GroupMessage::VoteRequest(vote_request(5, "b", 1)));
    let refused = sends(&drain(&mut c))
        .into_iter()
        .any(|(to, m)| to == "b" && matches!(m, GroupMessage::Vote(v) if !v.granted));
    assert!(refused, "b is refused: c voted for m in term 5");
}

#[test]
fn spec_12_3_remembered_votes_are_tidied_on_load_and_bar_stepping_back_to_another() {
    // c remembers (from an earlier step back) its vote for m in term 4; it is now in
    // term 6 and a claims term 4: following a there would be a second vote in term 4.
    let now = Instant::now();
    let hard = HardState {
        term: 6,
        votes_ahead: vec![
            (9, "z".into()),
            (7, "m".into()),
            (7, "x".into()),
            (2, "y".into()),
            (MAX_TERM + 1, "w".into()),
        ],
        ..HardState::default()
    };
    let c = Group::new(
        GroupConfig::new("lobby"),
        info("c", 1),
        hard,
        ChaCha8Rng::seed_from_u64(1),
        now,
    )
    .unwrap();
    assert_eq!(
        c.hard_state().votes_ahead,
        vec![(7, "m".to_owned()), (9, "z".to_owned())],
        "a state file is input: one vote per term, only after ours and within MAX_TERM, in \
         order"
    );
    let mut c = follower("c", &["a", "b", "c", "m"], 6, now);
    c.hard.votes_ahead = vec![(4, "m".into())];
    let members = c.members().to_vec();
    c.step(now, "a", heartbeat(4, "a", members));
    c.step(now, "b", GroupMessage::Support(support(4, "b", "a")));
    c.step(now, "m", GroupMessage::Support(support(4, "m", "a")));
    assert_eq!(
        c.term(),
        6,
        "c voted for m in term 4: it does not follow a there"
    );
}

#[test]
fn spec_12_3_two_members_ahead_raise_the_ceiling_one_term_per_election_timeout_min() {
    // c restarted (its ceiling is low) while the group's terms moved on: once two
    // members show terms beyond its ceiling (one may lie, so one such member is not
    // enough), the ceiling rises one term per election_timeout_min, to one beyond the
    // lower of the two, and no further.
    let now = Instant::now();
    let step = GroupConfig::new("lobby").election_timeout_min;
    let mut c = follower("c", &["a", "b", "c", "m"], 1, now);
    let low = c.term_ceiling(now);
    c.step(now, "m", ack(1_000));
    assert_eq!(c.term_ceiling(now), low, "one member's word raises nothing");
    let honest = low + 2;
    c.step(now, "a", ack(honest));
    assert_eq!(c.term_ceiling(now), low + 1);
    c.step(now, "a", ack(honest));
    assert_eq!(
        c.term_ceiling(now),
        low + 1,
        "not twice within election_timeout_min"
    );
    let mut at = now;
    for expected in [low + 2, low + 3, low + 3, low + 3] {
        at += step;
        c.step(at, "b", ack(1));
        assert_eq!(c.term_ceiling(at), expected, "at {:?}", at - now);
    }
}

#[test]
fn spec_12_3_members_that_stopped_answering_do_not_hold_the_pre_vote_term_down() {
    // Five members (a majority is three): d and m refused b's pre-vote from term 3 (a
    // lease they held), then went quiet (crashed, cut off, or liars); a and c answer
    // the next round from term 9. Only the last round's answers count, so b asks past
    // a and c rather than for the term d's and m's earlier answers would keep it at.
    let now = Instant::now();
    let mut b = follower("b", &["a", "b", "c", "d", "m"], 3, now);
    b.membership_term = 3;
    let (at, asked) = next_pre_vote_term(&mut b);
    assert_eq!(asked, 4);
    b.step(at, "d", pre_vote_refusal("d", 3));
    b.step(at, "m", pre_vote_refusal("m", 3));
    assert_eq!(b.role(), Role::PreCandidate);
    let (at, asked) = next_pre_vote_term(&mut b);
    assert_eq!(asked, 4, "b, d and m are a majority at 3");
    b.step(at, "a", pre_vote_refusal("a", 9));
    b.step(at, "c", pre_vote_refusal("c", 9));
    let (_, asked) = next_pre_vote_term(&mut b);
    assert_eq!(
        asked, 10,
        "b, a and c, who answered last, are a majority at 9"
    );
}
