//! Authorization: what each sender may do in the group (SPEC.md §12), and the evidence
//! that makes a node recognise a leader.
//!
//! The session layer proves *who* sent a frame; this module decides whether that sender
//! may do what the frame asks. Every check here runs before any state changes: a frame
//! that fails one is dropped and counted in [`Rejections`], and nothing else happens.
//!
//! The rules, in short (the table is SPEC.md §12.1):
//!
//! - Group frames come from members of the receiver's membership. The exceptions: JOIN
//!   (only the joiner itself may send it, and it is never forwarded), a support *query*
//!   (any authenticated peer may ask whom we follow), and a leader claim of a later term
//!   (our membership may be behind the group's), which still needs its proof. Chat from a
//!   peer that is not a member yet is held, bounded, until its admission reaches us.
//! - A leader is recognised in a term only with evidence that a majority backs it
//!   (§12.2, [`Group::is_proven`]): the supports that voters send every member when they
//!   grant a vote, the answers to a support query, our own vote, or the proxy's verified
//!   record. A claim without it is held and changes nothing; a single member's word is
//!   one voice in that majority, never the majority.
//! - Terms cannot be pushed (§12.3): no term beyond [`MAX_TERM`]; a (PRE_)VOTE_REQUEST
//!   may move our term only when no live leader holds our lease (thesis §4.2.3), unless
//!   it comes from that leader itself or the member it hands over to, and never beyond
//!   [`Group::term_ceiling`]. Acknowledgements and refusals never move a term: a leader
//!   told of a later term by a member stands again ([`Group::stand_again`]) instead of
//!   stepping down, so no single member can depose it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Group, Role};
use crate::message::{ChatLine, GroupMessage, MemberInfo, SupportMsg, VoteMsg, VoteRequestMsg};

/// The highest term any frame may carry, and any node may hold: 2^48, so that `term + 1`
/// never wraps and a node can recover from an absurd persisted term. At one election a
/// millisecond, a group needs 8,900 years to reach it.
pub const MAX_TERM: u64 = 1 << 48;

/// How many terms a vote request may take us beyond the last leader we heard, at
/// once (SPEC.md §12.3). One more is allowed for every `election_timeout_max` without
/// a leader: terms move no faster than elections could move them.
pub const TERM_SLACK: u64 = 8;

/// How far beyond our term we keep supports (`SUPPORT_WINDOW` × members entries at most).
pub const SUPPORT_WINDOW: u64 = 16;

/// Names of former members kept for [`Group::is_proven`] (and persisted), at most.
pub const MAX_FORMER_MEMBERS: usize = sockmsg_wire::limits::MAX_MEMBERS;

/// Votes remembered for terms after ours ([`HardState::votes_ahead`](super::HardState)),
/// at most: a member steps back no further once it holds this many.
pub const MAX_VOTES_AHEAD: usize = 8;

/// Chat lines held from peers that are not (yet) members, at most.
pub const MAX_HELD_CHAT: usize = 256;

/// How many pre-vote grants (term, candidate) we keep per member (SPEC.md §11).
pub const MAX_PRE_VOTES_PER_MEMBER: usize = 4;

/// Why a group frame was dropped (SPEC.md §12.1). Every drop is counted per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// A group frame from a peer outside the receiver's membership.
    NotMember,
    /// A frame about someone other than its sender where only the subject may send it
    /// (a JOIN for another name, a forwarded JOIN).
    NotSubject,
    /// A frame for another group.
    WrongGroup,
    /// A term above [`MAX_TERM`], or a vote request beyond [`Group::term_ceiling`].
    TermOutOfRange,
    /// A leader claim (HEARTBEAT, MEMBERSHIP) without evidence of its election: held
    /// until the evidence comes, never acted on before.
    UnprovenLeader,
    /// A VOTE_REQUEST that would move our term while a live leader holds our lease
    /// (thesis §4.2.3).
    Disruptive,
    /// A MEMBERSHIP that could not come from any leader (created in a later term than
    /// its own).
    BadMembership,
    /// A bounded table was full (held chat lines).
    Overflow,
}

impl Violation {
    /// A short name for logs and reports (`/peers`, `--json`).
    pub fn name(self) -> &'static str {
        match self {
            Violation::NotMember => "not_member",
            Violation::NotSubject => "not_subject",
            Violation::WrongGroup => "wrong_group",
            Violation::TermOutOfRange => "term_out_of_range",
            Violation::UnprovenLeader => "unproven_leader",
            Violation::Disruptive => "disruptive",
            Violation::BadMembership => "bad_membership",
            Violation::Overflow => "overflow",
        }
    }

    const ALL: [Violation; 8] = [
        Violation::NotMember,
        Violation::NotSubject,
        Violation::WrongGroup,
        Violation::TermOutOfRange,
        Violation::UnprovenLeader,
        Violation::Disruptive,
        Violation::BadMembership,
        Violation::Overflow,
    ];
}

/// Frames dropped by the authorization rules, per [`Violation`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections([u64; Violation::ALL.len()]);

impl Rejections {
    pub fn get(&self, violation: Violation) -> u64 {
        self.0[violation as usize]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// The non-zero counters, for logs.
    pub fn iter(&self) -> impl Iterator<Item = (Violation, u64)> + '_ {
        Violation::ALL
            .into_iter()
            .map(|v| (v, self.get(v)))
            .filter(|(_, n)| *n > 0)
    }
    fn count(&mut self, violation: Violation) {
        self.0[violation as usize] += 1;
    }
}

/// How often reports of a later term may make a leader stand again (SPEC.md §12.3):
/// at the first report at once, then after `election_timeout_min`, the wait doubling
/// at each stand-again up to `failure_removal`; it starts over once no member has
/// reported a later term for `failure_removal`.
///
/// The two members that send such reports cannot be told apart: an honest one whose
/// own candidacy came a moment too late (it voted for itself in a term the group never
/// held) and is caught up by the first stand-again, and a liar that never stops, which
/// then moves the term a handful of times in the first seconds and once per
/// `failure_removal` after. The member is not removed meanwhile: its reports prove it
/// alive (`Progress::last_alive`).
#[derive(Debug, Default)]
struct StandAgainBackoff {
    /// When we last stood again, and how many times since reports began.
    stood: Option<Instant>,
    streak: u32,
    /// When a member last reported a later term.
    reported: Option<Instant>,
}

impl StandAgainBackoff {
    /// Records a report of a later term at `now`; whether we may stand again for it.
    fn permits(&mut self, now: Instant, first: Duration, cap: Duration) -> bool {
        let quiet = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= cap);
        self.reported = Some(now);
        if quiet {
            self.streak = 0;
        }
        let wait = match self.streak {
            0 => Duration::ZERO,
            n => first.saturating_mul(1 << (n - 1).min(16)).min(cap),
        };
        self.stood
            .is_none_or(|at| now.saturating_duration_since(at) >= wait)
    }

    fn stood(&mut self, now: Instant) {
        self.stood = Some(now);
        self.streak = self.streak.saturating_add(1);
    }
}

/// A leader claim held until a majority backs it.
#[derive(Debug, Clone)]
struct HeldClaim {
    term: u64,
    first_seen: Instant,
    /// When we last asked the members about it: again every `election_timeout_max`
    /// while it stays unproven (answers may be lost to a partition or a restart).
    queried: Option<Instant>,
    msg: GroupMessage,
}

/// What this node has been told about who leads which term. Every table is bounded by
/// the membership (one entry per member, or per member and term within
/// [`SUPPORT_WINDOW`]).
#[derive(Debug, Default)]
pub(super) struct Evidence {
    /// (term, supporter) → the leader the supporter backs in that term. The first word
    /// of a supporter in a term is kept: an honest member backs one leader per term.
    support: BTreeMap<(u64, String), String>,
    /// A (term, leader) a third party proved to us: the proxy's verified record.
    vouched: Option<(u64, String)>,
    /// Claimant → its latest unproven claim.
    claims: BTreeMap<String, HeldClaim>,
    /// (term, candidate) our leader sanctioned by TRANSFER_LEADERSHIP: its VOTE_REQUEST
    /// may overrule our leader lease.
    sanctioned: Option<(u64, String)>,
    /// Member → the (term, candidate) pre-votes it told us it granted, for terms after
    /// ours, at most [`MAX_PRE_VOTES_PER_MEMBER`] (ours included, under our name): what
    /// lets a VOTE_REQUEST move our term (see [`Group::pre_vote_backed`]).
    pre_votes: BTreeMap<String, Vec<(u64, String)>>,
    /// Candidate → a VOTE_REQUEST that arrived while our lease was held (a transfer
    /// target's request may overtake the leader's sanction of it), or before the
    /// pre-vote grants that back it.
    held_requests: BTreeMap<String, VoteRequestMsg>,
    /// The leader a member last named when it answered our JOIN (see
    /// [`Group::join_through`]).
    pub(super) redirected: Option<String>,
    /// How often a member's later term may make us stand again as leader (see
    /// [`Group::stand_again`]).
    stand_again: StandAgainBackoff,
    /// Leader: our term, and the members that asked us whether we lead it, with when
    /// each first asked (see [`Group::on_unconvinced_member`]); bounded by the
    /// membership.
    unconvinced: (u64, BTreeMap<String, Instant>),
    /// Until when [`Group::standing_lease`] holds.
    pub(super) standing_lease_until: Option<Instant>,
    /// The term of the last leader we heard from (see [`Group::term_ceiling`]).
    leader_term_heard: u64,
    /// When this node started: the ceiling's clock before any leader is heard.
    pub(super) started: Option<Instant>,
    /// Member → the highest term it showed itself in, in a frame it sent us (see
    /// [`Group::note_member_term`]): what may raise our term ceiling.
    member_terms: BTreeMap<String, u64>,
    /// The term ceiling as raised by other members' terms (see
    /// [`Group::raise_ceiling`]), and when it was last raised.
    raised_ceiling: (u64, Option<Instant>),
    /// The (term, candidate) of the one granted vote we asked the driver to sign: one
    /// RSA signature per term however often the request is repeated.
    pub(super) signature_asked: Option<(u64, String)>,
    /// Chat lines from peers not (yet) in our membership, oldest first.
    held_chat: Vec<(Instant, ChatLine)>,
    pub(super) rejections: Rejections,
}

impl Group {
    /// Frames dropped by the authorization rules (SPEC.md §12), per kind.
    pub fn rejections(&self) -> &Rejections {
        &self.evidence.rejections
    }

    pub(super) fn reject(&mut self, violation: Violation) {
        self.evidence.rejections.count(violation);
    }

    /// The rules of SPEC.md §12.1 that a frame must pass before it is acted on. Those
    /// that need the frame's own state (JOIN, supports, vote grants) are checked where it
    /// is handled.
    pub(super) fn authorize(&mut self, now: Instant, from: &str, msg: &GroupMessage) -> bool {
        let verdict = match msg {
            GroupMessage::Join(_) | GroupMessage::Support(_) => Ok(()),
            GroupMessage::Chat(line) if line.sender != from => Err(Violation::NotSubject),
            GroupMessage::Chat(line) if !self.may_chat(line) => {
                self.hold_chat(now, line.clone());
                return false;
            }
            GroupMessage::Chat(_) => Ok(()),
            GroupMessage::PreVoteRequest(req) | GroupMessage::VoteRequest(req)
                if req.candidate != from =>
            {
                Err(Violation::NotSubject)
            }
            GroupMessage::PreVoteRequest(_) | GroupMessage::VoteRequest(_)
                if !self.in_basis(from) =>
            {
                // A member removed without hearing of it stands again and again: the
                // leader tells it (it may then join again); its request counts for nothing.
                self.tell_removed(from);
                Err(Violation::NotMember)
            }
            // The signed copy of a vote that elected us, from a voter that has left since
            // (a former leader's LEAVE may overtake it): still part of our proof.
            GroupMessage::Vote(vote)
                if vote.voter == from
                    && vote.candidate == self.me.name
                    && self.proof.contains_key(from) =>
            {
                Ok(())
            }
            GroupMessage::Heartbeat { leader, .. } if leader != from => Err(Violation::NotSubject),
            GroupMessage::Membership {
                term,
                membership_term,
                ..
            } if membership_term > term => Err(Violation::BadMembership),
            // A leader we do not list may still be proven (our membership may be behind
            // the group's, see `Group::is_proven`); one of a term before ours is not.
            GroupMessage::Heartbeat { term, .. } | GroupMessage::Membership { term, .. }
                if !self.in_basis(from) && *term < self.hard.term =>
            {
                Err(Violation::NotMember)
            }
            GroupMessage::Heartbeat { term, .. } | GroupMessage::Membership { term, .. } => {
                return self.admit_leader_claim(now, from, *term, msg);
            }
            _ if !self.in_basis(from) => Err(Violation::NotMember),
            GroupMessage::Vote(vote) if vote.voter != from => Err(Violation::NotSubject),
            GroupMessage::Vote(vote) if vote.group != self.config.group => {
                Err(Violation::WrongGroup)
            }
            GroupMessage::Leave { name, .. } if name != from => Err(Violation::NotSubject),
            GroupMessage::Vote(VoteMsg { term, .. })
            | GroupMessage::MembershipAck { term, .. }
            | GroupMessage::TransferLeadership { term, .. }
                if *term > MAX_TERM =>
            {
                Err(Violation::TermOutOfRange)
            }
            GroupMessage::PreVoteRequest(req) if req.term > MAX_TERM => {
                Err(Violation::TermOutOfRange)
            }
            _ => Ok(()),
        };
        match verdict {
            Ok(()) => true,
            Err(violation) => {
                self.reject(violation);
                false
            }
        }
    }

    /// A term above [`MAX_TERM`] on disk can only come from a bug or from an attack on
    /// an older version: recover by starting again from the term of the membership we
    /// hold (proven by the leader that created it), with no vote cast. We might vote a
    /// second time in a term between that one and the absurd one; no honest member can
    /// have pushed us there, so such a term was never held by a majority.
    pub(super) fn recover_absurd_term(&mut self) {
        if self.hard.term <= MAX_TERM && self.hard.membership_term <= MAX_TERM {
            return;
        }
        self.hard.membership_term = self.hard.membership_term.min(MAX_TERM);
        self.membership_term = self.hard.membership_term;
        self.enter_term(self.hard.membership_term);
        self.announced = (self.hard.term, None);
        self.persist();
    }

    /// The state file is input like any other: keep remembered votes only for terms
    /// after ours and within [`MAX_TERM`], one per term (the first), in order, at most
    /// [`MAX_VOTES_AHEAD`].
    pub(super) fn tidy_votes_ahead(&mut self) {
        let term = self.hard.term;
        let ahead = &mut self.hard.votes_ahead;
        ahead.retain(|(t, _)| *t > term && *t <= MAX_TERM);
        ahead.sort_by_key(|(t, _)| *t);
        ahead.dedup_by_key(|(t, _)| *t);
        ahead.truncate(MAX_VOTES_AHEAD);
    }

    /// The proxy's verified record says `leader` leads `term`: the proxy checked a
    /// majority of signed votes for it (SPEC.md §7.23), so a joiner may follow it.
    pub fn vouch(&mut self, now: Instant, term: u64, leader: &str) {
        if term <= MAX_TERM {
            self.evidence.vouched = Some((term, leader.to_owned()));
            self.retry_claims(now);
        }
    }

    /// The sets of names whose majority decides whom we recognise ([`Group::is_proven`]
    /// tries each): our membership; and while we are not admitted (a newcomer, a
    /// restarted or removed member), our membership together with the contacts we join
    /// through (the proxy's record, which it checked against signed votes). A
    /// restarted member's own membership may be newer than the proxy's record, and a
    /// removed member's older: either basis may be the one that proves the leader.
    fn bases(&self) -> Vec<Vec<&str>> {
        let members: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        if self.joined || self.join_contacts.is_empty() {
            return vec![members];
        }
        let mut with_contacts = members.clone();
        for contact in &self.join_contacts {
            if !with_contacts.contains(&contact.as_str()) {
                with_contacts.push(contact);
            }
        }
        vec![members, with_contacts]
    }

    /// Every name of any basis (see [`Group::bases`]).
    fn basis(&self) -> Vec<&str> {
        let mut all: Vec<&str> = Vec::new();
        for basis in self.bases() {
            for name in basis {
                if !all.contains(&name) {
                    all.push(name);
                }
            }
        }
        all
    }

    pub(super) fn in_basis(&self, name: &str) -> bool {
        self.basis().contains(&name)
    }

    /// Whether `leader`'s claim to lead `term` with membership `claimed` (the names
    /// in its HEARTBEAT or MEMBERSHIP; empty if unknown) is proven (SPEC.md §12.2):
    ///
    /// - the proxy vouched for it (it verified a majority of signed votes), or
    /// - a majority of our basis backs it, or
    /// - the claimed membership keeps a majority of our basis, and a majority of it
    ///   backs the claim counting only names we know (our basis, and the names of
    ///   memberships we held before). This is how a member whose membership the group
    ///   has moved past (an uncommitted change of its own, a change it missed)
    ///   recognises the leader the others elected. A liar cannot use it: the claimed
    ///   membership must keep a majority of ours, so it holds honest members, and
    ///   names of its own making (sock puppets) back nothing.
    pub(super) fn is_proven(&self, term: u64, leader: &str, claimed: &[String]) -> bool {
        if self
            .evidence
            .vouched
            .as_ref()
            .is_some_and(|(t, l)| *t == term && l == leader)
        {
            return true;
        }
        self.is_backed_now(term, leader, claimed)
    }

    /// [`Group::is_proven`] by the members' own word alone, without the proxy's: a
    /// majority backs `leader` in `term` *now*. This is what stepping back needs
    /// ([`Group::may_step_back`]): the proxy's record says that a majority elected its
    /// leader once, not that none has moved on since (after a restart it may even be
    /// older than elections the record's voters took part in).
    fn is_backed_now(&self, term: u64, leader: &str, claimed: &[String]) -> bool {
        self.bases()
            .iter()
            .any(|basis| self.proven_against(basis, term, leader, claimed))
    }

    /// Whether a held claim may be acted on: one of a term before ours only to step
    /// back to it, which needs the members' word ([`Group::is_backed_now`]).
    fn claim_proven(&self, term: u64, leader: &str, claimed: &[String]) -> bool {
        if term < self.hard.term {
            self.is_backed_now(term, leader, claimed)
        } else {
            self.is_proven(term, leader, claimed)
        }
    }

    /// [`Group::is_proven`] against one basis.
    fn proven_against(&self, basis: &[&str], term: u64, leader: &str, claimed: &[String]) -> bool {
        if basis.is_empty() {
            return false;
        }
        let majority = |backers: usize, of: usize| backers > of / 2;
        let basis_backers = basis
            .iter()
            .filter(|name| self.backs(name, term, leader))
            .count();
        if majority(basis_backers, basis.len()) {
            return true;
        }
        if claimed.is_empty() {
            return false;
        }
        // The claimed membership must list all of ours: a shorter one would let a liar
        // choose the smaller majority, and names it makes up never count.
        let keeps_ours = basis.iter().all(|b| claimed.iter().any(|c| c == b));
        let known = |name: &str| basis.contains(&name) || self.is_former_member(name);
        let claim_backers = claimed
            .iter()
            .filter(|name| known(name) && self.backs(name, term, leader))
            .count();
        keeps_ours && majority(claim_backers, claimed.len())
    }

    /// Records, in the hard state, the names that `previous` listed and the membership
    /// we now hold does not (for [`Group::is_proven`]; bounded by
    /// [`MAX_FORMER_MEMBERS`], the oldest forgotten first).
    pub(super) fn remember_former_members(&mut self, previous: &[MemberInfo]) {
        let members = &self.members;
        let former = &mut self.hard.former_members;
        former.retain(|name| !members.iter().any(|m| m.name == *name));
        for m in previous {
            let gone = !members.iter().any(|n| n.name == m.name);
            if gone && !former.contains(&m.name) {
                former.push(m.name.clone());
            }
        }
        let excess = former.len().saturating_sub(MAX_FORMER_MEMBERS);
        former.drain(..excess);
    }

    pub(super) fn is_former_member(&self, name: &str) -> bool {
        self.hard.former_members.iter().any(|n| n == name)
    }

    fn backs(&self, name: &str, term: u64, leader: &str) -> bool {
        if name == leader {
            return true;
        }
        if name == self.me.name {
            return self.supports(term, leader);
        }
        self.evidence
            .support
            .get(&(term, name.to_owned()))
            .is_some_and(|l| l == leader)
    }

    /// Whether we would tell others that `leader` leads `term`: we voted for it then, or
    /// follow it.
    fn supports(&self, term: u64, leader: &str) -> bool {
        self.hard.term == term
            && (self.leader.as_deref() == Some(leader)
                || self.hard.voted_for.as_deref() == Some(leader))
    }

    /// Whether we answer a `SUPPORT`+`QUERY` about `leader` in `term`: we are a member,
    /// and either follow it and were heartbeated by it within `election_timeout_max`,
    /// or voted for it and follow nobody yet (its first heartbeat is on its way).
    ///
    /// The heartbeat matters to a member vetting a removal (SPEC.md §12.5), which asks
    /// the removed member this question: a leader heartbeats only the members it lists,
    /// so a member it has removed (and which, alive, does not take its own removal but
    /// asks to be listed again) stops answering, and the removal goes through; one it
    /// still heartbeats answers, and the removal does not.
    fn vouches_for_leader(&self, now: Instant, term: u64, leader: &str) -> bool {
        if !self.is_member() || !self.supports(term, leader) {
            return false;
        }
        let voted_only = self.leader.is_none() && self.role == Role::Follower;
        let heartbeated = self.last_heartbeat.as_ref().is_some_and(|(t, l, at)| {
            *t == term && l == leader && now.duration_since(*at) < self.config.election_timeout_max
        });
        voted_only || (self.role == Role::Follower && heartbeated)
    }

    /// Our own SUPPORT VOTE (SPEC.md §7.13): we back `leader` in `term`. Queries and
    /// pre-vote supports set their flag on it.
    pub(super) fn own_support(&self, term: u64, leader: &str) -> SupportMsg {
        SupportMsg {
            group: self.config.group.clone(),
            term,
            supporter: self.me.name.clone(),
            leader: leader.to_owned(),
            query: false,
            pre_vote: false,
        }
    }

    /// Sends `support` about `candidate` to each of `names` but the candidate itself.
    fn tell_all_but_candidate(&mut self, names: Vec<String>, support: SupportMsg) {
        let candidate = support.leader.clone();
        let support = GroupMessage::Support(support);
        for to in names.into_iter().filter(|to| *to != candidate) {
            self.send(&to, support.clone());
        }
    }

    /// Tells every member but the candidate that we granted it our vote in `term`: the
    /// evidence they need to recognise it once it leads (SPEC.md §12.2).
    pub(super) fn broadcast_support(&mut self, term: u64, candidate: &str) {
        let support = self.own_support(term, candidate);
        self.tell_all_but_candidate(self.others(), support);
    }

    /// We granted `candidate` our pre-vote for `term`: note it as our own backing and
    /// tell every other member but the candidate (SPEC.md §12.3), whose VOTE_REQUEST
    /// may move a term only once a majority is known to have granted its pre-vote.
    /// When the candidate's membership is newer than ours, ours may have lost members
    /// that are back in its: the names we remember as former members are told too.
    pub(super) fn broadcast_pre_vote(&mut self, req: &VoteRequestMsg) {
        let me = self.me.name.clone();
        self.note_pre_vote(&me, req.term, &req.candidate);
        let mut told = self.others();
        if self.membership_newer(req) {
            told.extend(self.hard.former_members.iter().cloned());
        }
        let support = SupportMsg {
            pre_vote: true,
            ..self.own_support(req.term, &req.candidate)
        };
        self.tell_all_but_candidate(told, support);
    }

    fn note_pre_vote(&mut self, member: &str, term: u64, candidate: &str) {
        let granted = self
            .evidence
            .pre_votes
            .entry(member.to_owned())
            .or_default();
        let grant = (term, candidate.to_owned());
        if granted.contains(&grant) {
            return;
        }
        if granted.len() >= MAX_PRE_VOTES_PER_MEMBER {
            granted.sort_unstable();
            granted.remove(0);
        }
        granted.push(grant);
    }

    /// Whether a majority of our membership is known to have granted `req`'s candidate
    /// its pre-vote for `req.term` (SPEC.md §12.3): the candidate itself, we if we
    /// granted it or would now, and every other member whose pre-vote support says so.
    /// A lone member cannot move anyone's term with VOTE_REQUESTs, only a candidate
    /// that a majority would have: a node cut off with a liar keeps its term.
    pub(super) fn pre_vote_backed(&self, now: Instant, req: &VoteRequestMsg) -> bool {
        let grant = (req.term, req.candidate.clone());
        let granted = |name: &str| {
            self.evidence
                .pre_votes
                .get(name)
                .is_some_and(|granted| granted.contains(&grant))
        };
        let others = self
            .members
            .iter()
            .filter(|m| m.name != req.candidate && m.name != self.me.name)
            .filter(|m| granted(&m.name))
            .count();
        let we = granted(&self.me.name) || self.would_pre_vote(now, req);
        1 + usize::from(we) + others >= self.quorum()
    }

    /// Whether `req`'s candidate holds a membership created after ours. We cannot
    /// count a majority of a membership we have not seen (the candidate's may no
    /// longer list members of ours, which will never back it), so such a request is
    /// judged by lease and by the ceiling at rest (not the one that rises while we
    /// wait without a leader, which a liar cut off with us would climb). SPEC.md §12.6
    /// says what a liar gains by claiming a newer membership.
    fn membership_newer(&self, req: &VoteRequestMsg) -> bool {
        (req.membership_term, req.membership_version) > (self.membership_term, self.version)
    }

    /// A member tells us it granted a candidate its pre-vote: a VOTE_REQUEST held for
    /// want of that backing may now be answered.
    fn on_pre_vote_support(&mut self, now: Instant, from: &str, msg: SupportMsg) {
        if !self.in_basis(from) {
            return self.reject(Violation::NotMember);
        }
        if msg.query || msg.term <= self.hard.term {
            return;
        }
        self.note_pre_vote(from, msg.term, &msg.leader);
        // A request held under our leader's lease waits for the lease, not for
        // backing: evaluating it again would only count it as disruptive once more.
        if !self.leader_lease_active(now) {
            self.release_held_request(now, &msg.leader, msg.term);
        }
    }

    /// Evaluates again the VOTE_REQUEST held from `candidate` for `term`, if any, now
    /// that what it waited for (backing, or a sanctioned transfer) may have come.
    fn release_held_request(&mut self, now: Instant, candidate: &str, term: u64) {
        let held = &mut self.evidence.held_requests;
        if held.get(candidate).is_some_and(|req| req.term == term) {
            if let Some(req) = held.remove(candidate) {
                self.step(now, candidate, GroupMessage::VoteRequest(req));
            }
        }
    }

    /// A support or a support query from `from`.
    pub(super) fn on_support(&mut self, now: Instant, from: &str, msg: SupportMsg) {
        if msg.group != self.config.group {
            return self.reject(Violation::WrongGroup);
        }
        if msg.supporter != from {
            return self.reject(Violation::NotSubject);
        }
        if msg.term > MAX_TERM {
            return self.reject(Violation::TermOutOfRange);
        }
        if msg.pre_vote {
            return self.on_pre_vote_support(now, from, msg);
        }
        if msg.query {
            if msg.leader == self.me.name {
                self.on_unconvinced_member(now, from, msg.term);
            }
            // Anyone authenticated may ask (a joiner is not a member yet); the answer is
            // as small as the question.
            if self.vouches_for_leader(now, msg.term, &msg.leader) {
                let answer = GroupMessage::Support(self.own_support(msg.term, &msg.leader));
                self.send(from, answer);
            }
            return;
        }
        self.note_probe_answer(from, msg.term, &msg.leader);
        self.revet_and_ack(now);
        let in_a_claim = self
            .evidence
            .claims
            .values()
            .any(|c| claimed_names(&c.msg).iter().any(|n| n == from));
        if !self.in_basis(from) && !self.is_former_member(from) && !in_a_claim {
            return self.reject(Violation::NotMember);
        }
        let lowest = self.hard.term;
        let about_a_claim = self
            .evidence
            .claims
            .get(&msg.leader)
            .is_some_and(|c| c.term == msg.term);
        let in_window = msg.term >= lowest && msg.term <= lowest.saturating_add(SUPPORT_WINDOW);
        if !in_window && !about_a_claim {
            return;
        }
        // A redirect counts only from a name we would join through anyway, and only
        // while we follow no one: not admitted, no leader, or standing (a member removed
        // while cut off stands for ever unless someone tells it whom to ask).
        let standing = matches!(self.role, Role::PreCandidate | Role::Candidate);
        let redirect = !self.joined || self.leader.is_none() || standing;
        if redirect && msg.leader != self.me.name && self.in_basis(from) {
            if self.joined && standing {
                // Perhaps removed while cut off: ask the leader to list us again, as
                // often as the members name it (at most once per election_timeout_min).
                let leader = msg.leader.clone();
                self.send_word(now, &leader, None);
            } else {
                self.join_through(&msg.leader);
            }
        }
        self.evidence
            .support
            .entry((msg.term, msg.supporter))
            .or_insert(msg.leader);
        self.retry_claims(now);
    }

    /// Whether a HEARTBEAT or MEMBERSHIP from `from` claiming `term` may be acted on now.
    /// An unproven claim is held (the newest per claimant) and, if it is still unproven
    /// a heartbeat interval later, the members are asked whom they support. A claim of
    /// a term before ours is stale (answered with our term) unless we may step back to
    /// it, in which case it is held and proven like any other.
    pub(super) fn admit_leader_claim(
        &mut self,
        now: Instant,
        from: &str,
        term: u64,
        msg: &GroupMessage,
    ) -> bool {
        if term > MAX_TERM {
            self.reject(Violation::TermOutOfRange);
            return false;
        }
        let followed = term == self.hard.term && self.leader.as_deref() == Some(from);
        if !followed {
            self.ask_to_be_listed(now, from, msg);
        }
        let behind = term < self.hard.term && self.may_step_back(now, term, from);
        if behind {
            if self.is_backed_now(term, from, &claimed_names(msg)) {
                self.step_back(term, from);
                return true;
            }
            // Until it is proven, as to any stale leader: our term (Raft §5.1), so that
            // it may stand again for it (SPEC.md §12.3).
            let ack = self.our_ack();
            self.send(from, ack);
        }
        // A stale claim changes nothing: it is answered with our term (Raft §5.1).
        let stale = !behind
            && (term < self.hard.term || (term == self.hard.term && self.role == Role::Leader));
        if followed || stale || self.claim_proven(term, from, &claimed_names(msg)) {
            return true;
        }
        self.reject(Violation::UnprovenLeader);
        // A member usually has the supports already on their way (voters send them as
        // they grant): it asks only if they have not come half a heartbeat later. A
        // joiner or a restarted node has none coming: it asks at once.
        let patience = if self.members.iter().any(|m| m.name == self.me.name) {
            self.config.heartbeat_interval / 2
        } else {
            std::time::Duration::ZERO
        };
        if !self.evidence.claims.contains_key(from)
            && self.evidence.claims.len() >= sockmsg_wire::limits::MAX_MEMBERS
        {
            self.reject(Violation::Overflow);
            return false;
        }
        let fresh = HeldClaim {
            term,
            first_seen: now,
            queried: None,
            msg: msg.clone(),
        };
        let claim = self
            .evidence
            .claims
            .entry(from.to_owned())
            .or_insert_with(|| fresh.clone());
        if claim.term != term {
            *claim = fresh;
        } else {
            claim.msg = msg.clone();
        }
        let retry = self.config.election_timeout_max;
        let ask = match claim.queried {
            None => now.duration_since(claim.first_seen) >= patience,
            Some(at) => now.duration_since(at) >= retry,
        };
        if ask {
            claim.queried = Some(now);
            self.query_support(term, from, &claimed_names(msg));
        }
        false
    }

    /// A member of ours claims to lead a membership that omits us: we were removed
    /// while cut off (or restarted, or left behind by changes made without us). The
    /// membership we hold may be one of which its voters are no majority, so that we
    /// cannot prove it (SPEC.md §12.2), and its term may be behind ours: either way we
    /// would stand for ever, and it does not hear us (we are not its member, and no
    /// member of ours may name it to us in a SUPPORT). We send it our JOIN
    /// (at most once per `election_timeout_min`, [`Group::send_word`]): listed again,
    /// we can prove it, or ask it to stand again so that we can
    /// ([`Group::on_unconvinced_member`]). Only a claimant of our membership: no one
    /// else's claim makes us ask to be listed.
    fn ask_to_be_listed(&mut self, now: Instant, from: &str, msg: &GroupMessage) {
        let omits_us = !claimed_names(msg).contains(&self.me.name);
        if omits_us && self.is_member() && self.in_basis(from) {
            self.send_word(now, from, None);
        }
    }

    /// Whether we may step back to `term`, before ours, to follow a leader a majority
    /// backs there (SPEC.md §12.3): only while no leader holds our lease and we stand in
    /// no election (a candidate may still win: a transfer target must not go back to
    /// the leader that handed over to it on that leader's last heartbeat), only to a
    /// term after that of the last leader we heard (a leader we left behind brings us
    /// back by standing again, in a new term), only with room to remember the vote of
    /// the term we leave ([`MAX_VOTES_AHEAD`]), and only if we voted for nobody else in
    /// `term` before (a vote remembered from an earlier step back).
    ///
    /// Why it is safe: a majority backs that leader in `term` now, and honest nodes
    /// step back only this way, so no majority ever reached a term between `term` and
    /// ours (it would share an honest member with the current one, which could not
    /// have come back down: by induction on step-backs, the first one needs a member
    /// that went down without one). No leader was elected in those terms, so the votes
    /// we cast in them, which we no longer remember, elected nobody. The vote of our
    /// own term may still count (its election may not be over, and its candidate may be
    /// a liar that would use it twice): we keep it ([`Group::step_back`]), so we never
    /// vote for anyone else in that term.
    fn may_step_back(&self, now: Instant, term: u64, leader: &str) -> bool {
        let room = self.hard.voted_for.is_none() || self.hard.votes_ahead.len() < MAX_VOTES_AHEAD;
        let free = self.vote_ahead(term).is_none_or(|v| v == leader);
        matches!(self.role, Role::Follower | Role::PreCandidate)
            && !self.leader_lease_active(now)
            && room
            && free
            && term > self.evidence.leader_term_heard
            && self.is_member()
    }

    /// Steps back to `term` to follow `leader`, proven there (see
    /// [`Group::may_step_back`]): the vote of the term we leave is kept for when we
    /// reach it again, and following counts as our vote in `term`.
    fn step_back(&mut self, term: u64, leader: &str) {
        if let Some(vote) = self.hard.voted_for.take() {
            // Every remembered vote is for a term after ours (`enter_term`,
            // `tidy_votes_ahead`), so ours goes first.
            self.hard.votes_ahead.insert(0, (self.hard.term, vote));
        }
        self.enter_term(term);
        self.hard.voted_for = Some(leader.to_owned());
        self.persist();
        self.evidence.held_requests.clear();
        self.evidence.pre_votes.clear();
        self.evidence.claims.remove(leader);
    }

    /// Asks every other name of our basis and of the claimed membership whether it
    /// supports `leader` in `term`.
    fn query_support(&mut self, term: u64, leader: &str, claimed: &[String]) {
        let query = GroupMessage::Support(SupportMsg {
            query: true,
            ..self.own_support(term, leader)
        });
        let mut ask: Vec<String> = self.basis().into_iter().map(str::to_owned).collect();
        ask.extend(claimed.iter().cloned());
        ask.sort();
        ask.dedup();
        // The claimant too, when it is one of ours: a leader we cannot prove learns so
        // (see `Group::on_unconvinced_member`).
        let leader_is_ours = self.in_basis(leader);
        ask.retain(|n| (n != leader || leader_is_ours) && *n != self.me.name);
        for to in ask {
            self.send(&to, query.clone());
        }
    }

    /// Acts on every held claim that is now proven: one of a term before ours too, when
    /// we may step back to it (see [`Group::may_step_back`]).
    pub(super) fn retry_claims(&mut self, now: Instant) {
        let proven: Vec<String> = self
            .evidence
            .claims
            .iter()
            .filter(|(from, c)| self.claim_proven(c.term, from, &claimed_names(&c.msg)))
            .map(|(from, _)| from.clone())
            .collect();
        for from in proven {
            if let Some(claim) = self.evidence.claims.remove(&from) {
                self.step(now, &from, claim.msg);
            }
        }
    }

    /// Forgets evidence about terms before ours (called whenever our term moves).
    pub(super) fn prune_evidence(&mut self) {
        let term = self.hard.term;
        self.evidence.support.retain(|(t, _), _| *t >= term);
        self.evidence.held_requests.retain(|_, r| r.term > term);
        self.evidence.pre_votes.retain(|_, granted| {
            granted.retain(|(t, _)| *t > term);
            !granted.is_empty()
        });
        if self
            .evidence
            .sanctioned
            .as_ref()
            .is_some_and(|(t, _)| *t < term)
        {
            self.evidence.sanctioned = None;
        }
    }

    /// Whether a VOTE_REQUEST may be considered (SPEC.md §12.3). One for our term or an
    /// older one always may (it cannot move our term); one that would move our term
    /// must not disturb a live leader (unless it is that leader standing again, or the
    /// member it hands over to), must stay within [`Group::term_ceiling`], and must
    /// come from a candidate a majority granted its pre-vote
    /// ([`Group::pre_vote_backed`]).
    pub(super) fn admit_vote_request(&mut self, now: Instant, req: &VoteRequestMsg) -> bool {
        if req.term > MAX_TERM {
            self.reject(Violation::TermOutOfRange);
            return false;
        }
        if req.term <= self.hard.term {
            return true;
        }
        // Our leader standing again (see `Group::stand_again`), or the member it hands
        // over to.
        let standing_again = self.leader.as_deref() == Some(req.candidate.as_str())
            && req.term == self.hard.term + 1;
        let sanctioned = standing_again
            || self
                .evidence
                .sanctioned
                .as_ref()
                .is_some_and(|(t, c)| *t == req.term && *c == req.candidate);
        if sanctioned {
            return true;
        }
        if self.leader_lease_active(now) {
            self.reject(Violation::Disruptive);
            self.evidence
                .held_requests
                .insert(req.candidate.clone(), req.clone());
            return false;
        }
        if req.term > self.term_ceiling(now) {
            self.reject(Violation::TermOutOfRange);
            return false;
        }
        let newer = self.membership_newer(req) && req.term <= self.term_ceiling_at_rest();
        if !self.pre_vote_backed(now, req) && !newer {
            if !self.membership_up_to_date(req) {
                // We would refuse it whoever backs it (dissertation §4.1): say so now,
                // in our term, which it does not move.
                self.answer(now, self.hard.term, &req.candidate, false, false);
                return false;
            }
            // Not yet: the pre-vote supports may be on their way (they travel one hop,
            // the request two), or never come (a liar's request).
            self.evidence
                .held_requests
                .insert(req.candidate.clone(), req.clone());
            return false;
        }
        true
    }

    /// Leader: member `from` says it holds `term`, after ours (its own election
    /// failed, or it lies). Raft would step down; here a single member must not depose
    /// the leader (SPEC.md §12.3), so the leader stands again in the next term, which
    /// its followers grant it despite their lease, and wins. It does so only for a
    /// term within the ceiling, and only as often as [`StandAgainBackoff`] permits, so
    /// a lying member gains a few terms and then one per `failure_removal`, and
    /// changes no leader.
    pub(super) fn stand_again(&mut self, now: Instant, from: &str, term: u64) {
        let member = self.members.iter().any(|m| m.name == from);
        // Not while handing over: the newer term is our successor's election.
        let handing_over = self.leaving.is_some()
            || self
                .evidence
                .sanctioned
                .as_ref()
                .is_some_and(|(t, _)| *t > self.hard.term);
        if !member || handing_over || term > self.term_ceiling(now) {
            return;
        }
        let (first, cap) = (
            self.config.election_timeout_min,
            self.config.failure_removal,
        );
        if !self.evidence.stand_again.permits(now, first, cap) {
            return;
        }
        self.evidence.stand_again.stood(now);
        self.evidence.standing_lease_until = Some(now + self.config.election_timeout_min);
        self.become_follower(now, self.hard.term, None);
        self.start_election(now);
    }

    /// Leader: the proxy refused our record for want of votes, and a new election by
    /// the members we hold now would give them: our election counted fewer than a
    /// majority of the membership we hold now (members joined since; the proxy counts
    /// a record's own membership when it holds none, or for a merge, SPEC.md §12.7), or
    /// fewer than a majority of `held`, the older membership of our own group that the
    /// proxy holds, most of which we still list. Stands again, as for a member that
    /// reports a later term (with the same backoff); the next announcement carries the
    /// new votes, late grants included. Returns whether it stood.
    pub fn stand_again_for_proof(&mut self, now: Instant, held: &[String]) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let proven = |names: &mut dyn Iterator<Item = &String>| {
            let (mut voted, mut all) = (0, 0);
            for name in names {
                all += 1;
                voted += usize::from(self.proof.contains_key(name));
            }
            voted * 2 > all
        };
        let ours_proven = proven(&mut self.members.iter().map(|m| &m.name));
        let listed = held
            .iter()
            .filter(|name| self.members.iter().any(|m| &m.name == *name))
            .count();
        let held_reachable = listed * 2 > held.len();
        let held_proven = held.is_empty() || proven(&mut held.iter());
        if ours_proven && (held_proven || !held_reachable) {
            return false;
        }
        let (me, term) = (self.me.name.clone(), self.hard.term.saturating_add(1));
        self.stand_again(now, &me, term);
        self.role != Role::Leader
    }

    /// Leader: member `from` asked us whether we lead `term`, our term: it holds our
    /// claim and cannot prove it. That happens when it holds a membership our election
    /// did not count (a change made in an earlier term that never reached our voters,
    /// whose majority our voters are not), and nothing else ends it: our followers'
    /// lease refuses its candidacies, and it refuses our heartbeats. A member that asks
    /// again, at least `election_timeout_min` after its first question (it re-asks
    /// only while still unproven, `election_timeout_max` later; a duplicate is not a
    /// retry), gets a new election from us, in which it can vote, and whose grants
    /// prove it; this is [`Group::stand_again`], with its backoff, so a liar that keeps
    /// asking gains no more than one that reports later terms (SPEC.md §12.3).
    fn on_unconvinced_member(&mut self, now: Instant, from: &str, term: u64) {
        let member = self.members.iter().any(|m| m.name == from);
        if self.role != Role::Leader || term != self.hard.term || !member {
            return;
        }
        let unconvinced = &mut self.evidence.unconvinced;
        if unconvinced.0 != term {
            *unconvinced = (term, BTreeMap::new());
        }
        let first = *unconvinced.1.entry(from.to_owned()).or_insert(now);
        // A question repeated sooner is the same one (duplicated, or asked of every
        // name at once), not a retry.
        if now.saturating_duration_since(first) >= self.config.election_timeout_min {
            self.stand_again(now, from, term.saturating_add(1));
        }
    }

    /// A member told us, not admitted yet, whom it follows (its answer to our JOIN):
    /// ask that leader directly. A JOIN is never forwarded (SPEC.md §12.1).
    ///
    /// Every retry asks the named leader too, besides the leader we knew (which may be
    /// the member that redirected us) or the proxy's contacts; a new proxy answer does
    /// not undo it. A JOIN goes out at once only when the name is new, so two members
    /// with stale views cannot bounce us between them faster than the retry.
    fn join_through(&mut self, leader: &str) {
        if self.evidence.redirected.as_deref() != Some(leader) {
            self.evidence.redirected = Some(leader.to_owned());
            self.send(leader, GroupMessage::Join(self.me.clone()));
        }
    }

    /// A member that is not the leader answers a joiner's JOIN with whom it follows, so
    /// that the joiner asks the leader itself.
    pub(super) fn redirect_joiner(&mut self, joiner: &str) {
        let Some(leader) = self.leader.clone().filter(|l| *l != self.me.name) else {
            return;
        };
        let support = GroupMessage::Support(self.own_support(self.hard.term, &leader));
        self.send(joiner, support);
    }

    /// Drops what we keep per member for names no longer in the membership.
    pub(super) fn forget_non_members(&mut self) {
        let members = &self.members;
        let listed = |name: &String| members.iter().any(|m| m.name == *name);
        self.evidence.held_requests.retain(|name, _| listed(name));
        self.evidence.pre_votes.retain(|name, _| listed(name));
        self.peer_terms.retain(|name, _| listed(name));
        self.evidence.member_terms.retain(|name, _| listed(name));
        let basis: Vec<String> = self.basis().into_iter().map(str::to_owned).collect();
        self.evidence.claims.retain(|name, _| basis.contains(name));
    }

    /// We heard from the leader we follow at `now`: its lease, and the base of the
    /// term ceiling.
    pub(super) fn heard_leader(&mut self, now: Instant) {
        self.last_heard_leader = Some(now);
        self.evidence.leader_term_heard = self.evidence.leader_term_heard.max(self.hard.term);
    }

    /// The highest term a (pre-)vote request may bring us to (SPEC.md §12.3): the term
    /// of the last leader we heard (or of our membership's creator), plus
    /// [`TERM_SLACK`], plus one for every `election_timeout_max` since we last heard a
    /// leader. A lying member can push the group's term only this far, and only while
    /// no leader holds the lease; honest candidates that failed a few elections stay
    /// well inside it, and a group wedged at the ceiling gets one more term per timeout,
    /// the pace of real elections.
    pub fn term_ceiling(&self, now: Instant) -> u64 {
        let base = self.term_ceiling_at_rest();
        let since = self
            .last_heard_leader
            .or(self.evidence.started)
            .unwrap_or(now);
        let waited = now.saturating_duration_since(since).as_nanos()
            / self.config.election_timeout_max.as_nanos().max(1);
        base.saturating_add(u64::try_from(waited).unwrap_or(u64::MAX))
            .max(self.evidence.raised_ceiling.0)
            .min(MAX_TERM)
    }

    /// Remembers the term `from`, a member, shows itself in by sending `msg`: the term
    /// of its vote request, of its vote or refusal, of its acknowledgement, of the
    /// leader it supports, or of its own leadership (a pre-vote says nothing of its
    /// sender's term). Only the highest is kept, one entry per member.
    pub(super) fn note_member_term(&mut self, from: &str, msg: &GroupMessage) {
        let term = match msg {
            GroupMessage::Heartbeat { term, .. }
            | GroupMessage::Membership { term, .. }
            | GroupMessage::MembershipAck { term, .. } => *term,
            GroupMessage::VoteRequest(req) => req.term,
            GroupMessage::Vote(vote) if !(vote.pre_vote && vote.granted) => vote.term,
            GroupMessage::Support(support) if !support.query && !support.pre_vote => support.term,
            _ => return,
        };
        if from == self.me.name || term > MAX_TERM || !self.members.iter().any(|m| m.name == from) {
            return;
        }
        let known = self
            .evidence
            .member_terms
            .entry(from.to_owned())
            .or_default();
        *known = (*known).max(term);
    }

    /// Raises our term ceiling by one, at most once per `election_timeout_min`, while
    /// two other members have shown themselves in terms at or above it (SPEC.md §12.3).
    /// One of the two is honest (a single member may lie), and an honest member reached
    /// its term within its own ceiling, so the ceiling rises only as far as one term
    /// beyond where an honest member already is, and no faster than elections: this is
    /// how a member that restarted, or heard no leader for long, catches up with a
    /// group whose terms moved while it could not follow, instead of refusing every
    /// candidate the others could elect.
    pub(super) fn raise_ceiling(&mut self, now: Instant) {
        // The second-highest term, in one pass: this runs on every frame received.
        let (mut first, mut second) = (None, None);
        for &term in self.evidence.member_terms.values() {
            if first.is_none_or(|f| term > f) {
                (first, second) = (Some(term), first);
            } else if second.is_none_or(|s| term > s) {
                second = Some(term);
            }
        }
        let Some(second) = second else {
            return;
        };
        let ceiling = self.term_ceiling(now);
        let rested =
            self.evidence.raised_ceiling.1.is_none_or(|at| {
                now.saturating_duration_since(at) >= self.config.election_timeout_min
            });
        if second >= ceiling && ceiling < MAX_TERM && rested {
            self.evidence.raised_ceiling = (ceiling + 1, Some(now));
        }
    }

    /// The term ceiling before it starts to rise: the term of the last leader we heard
    /// (or of our membership's creator) plus [`TERM_SLACK`].
    pub(super) fn term_ceiling_at_rest(&self) -> u64 {
        self.evidence
            .leader_term_heard
            .max(self.membership_term)
            .saturating_add(TERM_SLACK)
            .min(MAX_TERM)
    }

    /// A lease that outlives our leader standing again (see [`Group::stand_again`]): its
    /// followers that granted it, and the leader itself while it stands, refuse other
    /// candidates' terms until the election resolves, as they would have while it led.
    pub(super) fn standing_lease(&self, now: Instant) -> bool {
        self.evidence
            .standing_lease_until
            .is_some_and(|until| now < until)
    }

    /// Our leader hands over to `target` in `term + 1` (TRANSFER_LEADERSHIP to every
    /// member): its VOTE_REQUEST may overrule our lease. A request that came first is
    /// answered now.
    pub(super) fn sanction_transfer(&mut self, now: Instant, term: u64, target: &str) {
        let next = term + 1;
        self.evidence.sanctioned = Some((next, target.to_owned()));
        self.release_held_request(now, target, next);
    }

    /// Holds a chat line from `from`, not a member of ours yet (its admission may be on
    /// its way), for at most `failure_removal`; the oldest goes when the table is full.
    pub(super) fn hold_chat(&mut self, now: Instant, line: ChatLine) {
        let limit = self.config.failure_removal;
        self.evidence
            .held_chat
            .retain(|(at, _)| now.duration_since(*at) < limit);
        if self.evidence.held_chat.len() >= MAX_HELD_CHAT {
            self.evidence.held_chat.remove(0);
            self.reject(Violation::Overflow);
        }
        self.evidence.held_chat.push((now, line));
    }

    /// Whether `line` (from its sender, authenticated) is delivered now rather than
    /// held: its sender is one of ours, or our leader admitted it as that incarnation
    /// and gave us its word ([`Group::admitted_by_leader`]).
    fn may_chat(&self, line: &ChatLine) -> bool {
        self.in_basis(&line.sender) || self.admitted_by_leader(&line.sender, line.incarnation)
    }

    /// Delivers the held lines of senders that may chat now ([`Group::may_chat`]).
    pub(super) fn release_held_chat(&mut self) {
        if self.evidence.held_chat.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.evidence.held_chat);
        let (members, others): (Vec<_>, Vec<_>) =
            held.into_iter().partition(|(_, line)| self.may_chat(line));
        self.evidence.held_chat = others;
        for (_, line) in members {
            self.on_chat(line);
        }
    }
}

/// The member names a leader claim (HEARTBEAT, MEMBERSHIP) carries.
pub(super) fn claimed_names(msg: &GroupMessage) -> Vec<String> {
    match msg {
        GroupMessage::Heartbeat { members, .. } | GroupMessage::Membership { members, .. } => {
            members.iter().map(|m| m.name.clone()).collect()
        }
        _ => Vec::new(),
    }
}
