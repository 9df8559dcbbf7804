//! Leader election: Raft §5.2 with pre-vote (thesis §9.6), check-quorum (thesis §6.2)
//! and leadership transfer (thesis §3.10), timeouts biased by rank.

use std::time::{Duration, Instant};

use rand::RngExt;

use super::timers::Timer;
use super::{CommandError, Group, GroupEvent, Output, Progress, Role};
use crate::message::{GroupMessage, VoteMsg, VoteRequestMsg};

impl Group {
    /// A randomised election timeout in `[min + margin, max)`, biased by rank: the
    /// members other than the known leader are sorted by rank (highest first) and the
    /// range is cut into one slot per member; each member draws its timeout in the first
    /// half of its slot. So the highest-ranked live follower times out first, at least
    /// half a slot (18 ms with 5 members and the defaults) before the next one: time
    /// for its pre-vote and vote, RSA signatures included, to reach the others before
    /// they stand too (with the whole slot as the range, two members in adjacent slots
    /// stood within a few milliseconds of each other in 1.5 % of real failovers, and the
    /// votes split). The small margin above `min` keeps a candidate from asking voters
    /// whose pre-vote lease (heard from the leader within `min`) has not quite run out
    /// because the last heartbeat reached them a fraction of a millisecond later.
    pub(super) fn election_timeout(&mut self) -> Duration {
        let min = self.config.election_timeout_min;
        let max = self.config.election_timeout_max;
        let margin = (self.config.heartbeat_interval / 10).min((max - min) / 10);
        let low = min + margin;
        let mut ranked: Vec<(u64, &str)> = self
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != self.leader.as_deref() || m.name == self.me.name)
            .map(|m| (m.rank, m.name.as_str()))
            .collect();
        ranked.sort_by(|a, b| b.cmp(a));
        let slots = ranked.len().max(1) as u32;
        let slot = ranked
            .iter()
            .position(|&(_, name)| name == self.me.name)
            .unwrap_or(ranked.len().saturating_sub(1)) as u32;
        let width = (max - low) / slots;
        let jitter = self
            .rng
            .random_range(0..(width.as_nanos() / 2).max(1) as u64);
        low + width * slot + Duration::from_nanos(jitter)
    }

    pub(super) fn reset_election_timer(&mut self, now: Instant) {
        if self.is_member() && self.role != Role::Leader {
            let timeout = self.election_timeout();
            self.timers.set(Timer::Election, now + timeout);
        } else {
            self.timers.stop(Timer::Election);
        }
    }

    pub(super) fn on_election_timeout(&mut self, now: Instant) {
        if !self.is_member() || self.role == Role::Leader {
            return;
        }
        self.raise_ceiling(now);
        self.start_pre_vote(now);
    }

    /// Thesis §9.6: ask whether we could win in term + 1 before disturbing anyone.
    fn start_pre_vote(&mut self, now: Instant) {
        if self.hard.term >= super::MAX_TERM {
            // Not reachable through the rules (SPEC.md §12.3); never wrap.
            return;
        }
        self.role = Role::PreCandidate;
        self.votes.clear();
        self.votes.insert(self.me.name.clone(), Vec::new());
        self.reset_election_timer(now);
        if self.votes.len() >= self.quorum() {
            self.start_election(now);
            return;
        }
        self.pre_vote_term = self.pre_vote_term(now);
        // Only the answers to this round count for the next: a member that stopped
        // answering (crashed, cut off, or a liar gone quiet) must not hold the next
        // term down, or up, with what it said before.
        self.peer_terms.clear();
        let req = self.vote_request(self.pre_vote_term);
        for to in self.others() {
            self.send(&to, GroupMessage::PreVoteRequest(req.clone()));
        }
    }

    /// The term to ask pre-votes for (SPEC.md §12.3). Normally our term + 1. But a
    /// refusal never moves our term, so a member behind in term (yet ahead in
    /// membership, after a partition) would ask for a term the others already passed,
    /// for ever. So when the members' last answers (see `peer_terms`) tell us the terms
    /// they hold, we ask for one past the term that a majority, us included, is at or
    /// below: the lowest term a majority could grant. One member's word cannot lift it
    /// (a majority's terms decide, unless exactly a majority answered), and it never
    /// exceeds our term ceiling, which bounds any vote request.
    pub(super) fn pre_vote_term(&self, now: Instant) -> u64 {
        let next = self.hard.term + 1;
        let mut terms: Vec<u64> = self
            .members
            .iter()
            .filter(|m| m.name != self.me.name)
            .filter_map(|m| self.peer_terms.get(&m.name).copied())
            .collect();
        terms.push(self.hard.term);
        let quorum = self.quorum();
        if terms.len() < quorum {
            return next;
        }
        terms.sort_unstable();
        terms[quorum - 1]
            .saturating_add(1)
            .min(self.term_ceiling(now))
            .max(next)
    }

    /// Remembers what a pre-vote answer from a member tells about its term.
    fn note_peer_term(&mut self, vote: &VoteMsg) {
        if !self.is_voter(&vote.voter) || vote.term > super::MAX_TERM {
            return;
        }
        let at_most = if vote.granted {
            vote.term.saturating_sub(1)
        } else {
            vote.term
        };
        self.peer_terms.insert(vote.voter.clone(), at_most);
    }

    /// Raft §5.2: increment the term, vote for ourselves, ask everyone.
    pub(super) fn start_election(&mut self, now: Instant) {
        self.start_election_in(now, self.hard.term.saturating_add(1));
    }

    /// Stands in `term` (after our term): the next, or the one a pre-vote won (see
    /// [`Group::pre_vote_term`]).
    fn start_election_in(&mut self, now: Instant, term: u64) {
        if self.hard.term >= super::MAX_TERM || term <= self.hard.term || term > super::MAX_TERM {
            return;
        }
        // We voted for another candidate in that term before stepping back (SPEC.md
        // §12.3): we may not vote for ourselves there too. Wait for the next timeout.
        if self.vote_ahead(term).is_some_and(|v| *v != self.me.name) {
            self.reset_election_timer(now);
            return;
        }
        self.role = Role::Candidate;
        self.enter_term(term);
        self.hard.voted_for = Some(self.me.name.clone());
        self.persist();
        self.prune_evidence();
        self.leader = None;
        self.announce_leader();
        self.votes.clear();
        self.votes.insert(self.me.name.clone(), Vec::new());
        let own = self.vote(self.hard.term, &self.me.name.clone(), false, true);
        self.sign_later(now, own);
        self.reset_election_timer(now);
        if self.votes.len() >= self.quorum() {
            self.become_leader(now);
            return;
        }
        let req = self.vote_request(self.hard.term);
        for to in self.others() {
            self.send(&to, GroupMessage::VoteRequest(req.clone()));
        }
    }

    fn vote_request(&self, term: u64) -> VoteRequestMsg {
        VoteRequestMsg {
            term,
            candidate: self.me.name.clone(),
            membership_term: self.membership_term,
            membership_version: self.version,
            rank: self.me.rank,
        }
    }

    pub(super) fn vote(
        &self,
        term: u64,
        candidate: &str,
        pre_vote: bool,
        granted: bool,
    ) -> VoteMsg {
        VoteMsg {
            group: self.config.group.clone(),
            term,
            voter: self.me.name.clone(),
            candidate: candidate.to_owned(),
            pre_vote,
            granted,
            signature: Vec::new(),
        }
    }

    /// Answers a (pre-)vote request. A granted real vote goes out at once unsigned
    /// (SPEC.md §7.13: the session authenticates it, and the candidate counts it), and
    /// signed again once [`Group::vote_signed`] hands the signature back: the RSA
    /// signature, which only the proxy needs, is not on the election's critical path.
    ///
    /// A granted real vote is also told to every other member (a support, SPEC.md
    /// §12.2): their evidence for recognising the candidate once it leads. A repeated
    /// request is answered again but signed and told only once.
    pub(super) fn answer(
        &mut self,
        now: Instant,
        term: u64,
        candidate: &str,
        pre_vote: bool,
        granted: bool,
    ) {
        let vote = self.vote(term, candidate, pre_vote, granted);
        self.send(candidate, GroupMessage::Vote(vote.clone()));
        if !granted || pre_vote {
            return;
        }
        let first = (term, candidate.to_owned());
        if self.evidence.signature_asked.as_ref() != Some(&first) {
            self.evidence.signature_asked = Some(first);
            self.broadcast_support(term, candidate);
            self.signatures_owed += 1;
            self.sign_later(now, vote);
        }
    }

    /// Asks the driver for the signature of our granted `vote`, after the election's
    /// busy moment (see [`Output::SignVote`]). Also when we are leaving and wait for
    /// it: signed at once, the former leader's signature alone put the handover's p99
    /// at 6 ms instead of 2.6.
    pub(super) fn sign_later(&mut self, now: Instant, vote: VoteMsg) {
        let at = now + self.config.heartbeat_interval;
        self.outputs.push_back(Output::SignVote { vote, at });
    }

    /// Whether we heard from a live leader within the minimum election timeout (the
    /// lease that makes a voter refuse pre-votes, thesis §9.6 / §4.2.3).
    pub(super) fn leader_lease_active(&self, now: Instant) -> bool {
        self.role == Role::Leader
            || self.standing_lease(now)
            || (self.leader.is_some()
                && self
                    .last_heard_leader
                    .is_some_and(|t| now.duration_since(t) < self.config.election_timeout_min))
    }

    /// Dissertation §4.1 (as corrected in 2015): the candidate's membership must be at
    /// least as up-to-date as ours, comparing (creating leader's term, version)
    /// lexicographically like (lastLogTerm, lastLogIndex). Versions alone are not enough:
    /// leaders of different terms can each create version v + 1 with different members.
    pub(super) fn membership_up_to_date(&self, req: &VoteRequestMsg) -> bool {
        (req.membership_term, req.membership_version) >= (self.membership_term, self.version)
    }

    /// Whether we grant `req` a pre-vote now: it asks for a later term, within our
    /// ceiling, with a membership as up to date as ours, and no leader holds our lease.
    pub(super) fn would_pre_vote(&self, now: Instant, req: &VoteRequestMsg) -> bool {
        req.term > self.hard.term
            && req.term <= self.term_ceiling(now)
            && self.membership_up_to_date(req)
            && !self.leader_lease_active(now)
    }

    /// Thesis §9.6: a pre-vote changes neither our term nor our vote.
    pub(super) fn on_pre_vote_request(&mut self, now: Instant, req: VoteRequestMsg) {
        self.tell_removed(&req.candidate);
        let granted = self.would_pre_vote(now, &req);
        // A grant names the asked term; a refusal our own, so a candidate behind us
        // catches up (as raft-rs does).
        let term = if granted { req.term } else { self.hard.term };
        self.answer(now, term, &req.candidate, true, granted);
        if granted {
            self.broadcast_pre_vote(&req);
        }
    }

    /// Raft §5.1/§5.2 RequestVote receiver.
    pub(super) fn on_vote_request(&mut self, now: Instant, req: VoteRequestMsg) {
        if !self.admit_vote_request(now, &req) {
            return;
        }
        if req.term > self.hard.term {
            // Our leader standing again (SPEC.md §12.3) keeps the lease it held.
            if self.leader.as_deref() == Some(req.candidate.as_str()) {
                self.evidence.standing_lease_until = self
                    .last_heard_leader
                    .map(|t| t + self.config.election_timeout_min);
            }
            // §5.1: a higher term makes us a follower of no one yet.
            self.become_follower(now, req.term, None);
        }
        let granted = req.term == self.hard.term
            && self.role != Role::Leader
            && self.membership_up_to_date(&req)
            && self
                .hard
                .voted_for
                .as_deref()
                .is_none_or(|v| v == req.candidate);
        if granted {
            if self.hard.voted_for.is_none() {
                self.hard.voted_for = Some(req.candidate.clone());
                // Persisted before the vote that follows it in output order.
                self.persist();
            }
            self.reset_election_timer(now);
        }
        self.answer(now, self.hard.term, &req.candidate, false, granted);
    }

    pub(super) fn on_vote(&mut self, now: Instant, vote: VoteMsg) {
        if vote.pre_vote {
            // A refusal carries the voter's term. Raft §5.1 would follow a newer one;
            // we only note it for our next pre-vote's term (SPEC.md §12.3: a refusal
            // never moves a term, or any one member could push the group's term).
            if vote.candidate == self.me.name {
                self.note_peer_term(&vote);
            }
            if !vote.granted {
                return;
            }
            if self.role == Role::PreCandidate
                && vote.term == self.pre_vote_term
                && vote.candidate == self.me.name
                && self.is_voter(&vote.voter)
            {
                self.votes.insert(vote.voter, Vec::new());
                if self.votes.len() >= self.quorum() {
                    self.start_election_in(now, self.pre_vote_term);
                }
            }
            return;
        }
        if vote.term != self.hard.term || vote.candidate != self.me.name || !vote.granted {
            return;
        }
        match self.role {
            Role::Candidate if self.is_voter(&vote.voter) => {
                self.keep_signature(vote.voter, vote.signature);
                if self.votes.len() >= self.quorum() {
                    self.become_leader(now);
                }
            }
            // The signed copy of a vote that elected us (its voter may have left since:
            // a former leader's LEAVE may overtake it), or a late grant of a member.
            Role::Leader if self.proof.contains_key(&vote.voter) || self.is_voter(&vote.voter) => {
                self.keep_signature(vote.voter, vote.signature)
            }
            _ => {}
        }
    }

    /// Keeps a signed vote of this term for the proxy: a leader in its proof (a late
    /// grant included), a candidate with the votes that will become it. An unsigned
    /// copy never replaces a signed one: duplicates may come in any order.
    pub(super) fn keep_signature(&mut self, voter: String, signature: Vec<u8>) {
        let held = match self.role {
            Role::Leader => self.proof.entry(voter).or_default(),
            Role::Candidate => self.votes.entry(voter).or_default(),
            _ => return,
        };
        if held.is_empty() {
            *held = signature;
        }
    }

    fn is_voter(&self, name: &str) -> bool {
        self.members.iter().any(|m| m.name == name)
    }

    pub(super) fn become_leader(&mut self, now: Instant) {
        self.role = Role::Leader;
        self.leader = Some(self.me.name.clone());
        self.proof = self.votes.drain().collect();
        self.proof_needed = self.quorum();
        self.proof_deadline = Some(now + self.config.election_timeout_max * 10);
        self.timers.stop(Timer::Election);
        self.progress = self
            .others()
            .into_iter()
            .map(|name| (name, Progress::new(now)))
            .collect();
        self.pending = None;
        self.queue.clear();
        self.announce_leader();
        // Before any heartbeat: every message of this term carries our stamp.
        self.commit_own_term_first(now);
        // Announce at once (Raft §5.2: "sends heartbeat messages to all of the other
        // servers to establish its authority").
        self.on_heartbeat_timer(now);
        self.timers
            .set(Timer::CheckQuorum, now + self.config.election_timeout_max);
        // Members that said LEAVE while someone else led, if the incarnation that left
        // is still the one listed (a member may have left and joined again since).
        let mut departed: Vec<String> = self
            .departed
            .iter()
            .filter(|(name, incarnation)| {
                self.members
                    .iter()
                    .any(|m| m.name == **name && m.incarnation == **incarnation)
            })
            .map(|(name, _)| name.clone())
            .collect();
        departed.sort();
        for name in departed {
            self.propose_removal(now, &name);
        }
    }

    /// Moves our term to `term` (persisted by the caller) with the vote we cast there
    /// before stepping back, if any, or none: the one place a term changes, so a
    /// remembered vote is never lost (SPEC.md §12.3).
    pub(super) fn enter_term(&mut self, term: u64) {
        self.hard.voted_for = self.vote_ahead(term).cloned();
        self.hard.votes_ahead.retain(|(t, _)| *t > term);
        self.hard.term = term;
    }

    /// The vote we cast in `term`, after ours, before stepping back.
    pub(super) fn vote_ahead(&self, term: u64) -> Option<&String> {
        self.hard
            .votes_ahead
            .iter()
            .find(|(t, _)| *t == term)
            .map(|(_, v)| v)
    }

    /// Raft §5.1: step down to follower in `term` (persisting a new term), following
    /// `leader` if known.
    pub(super) fn become_follower(&mut self, now: Instant, term: u64, leader: Option<String>) {
        if term > self.hard.term && term <= super::MAX_TERM {
            self.enter_term(term);
            self.persist();
            self.prune_evidence();
        }
        let was_leader = self.role == Role::Leader;
        self.role = Role::Follower;
        if was_leader {
            self.proof.clear();
            self.progress.clear();
            self.pending = None;
            self.queue.clear();
            self.timers.stop(Timer::Heartbeat);
            self.timers.stop(Timer::CheckQuorum);
        }
        // Following a leader of this term counts as our vote in it (SPEC.md §12.3): a
        // member that joined after the election, or whose vote went unasked, must not
        // grant another candidate a vote in a term that already has a leader.
        if let Some(leader) = &leader {
            if self.hard.term == term && self.hard.voted_for.is_none() {
                self.hard.voted_for = Some(leader.clone());
                self.persist();
            }
        }
        self.leader = leader;
        self.announce_leader();
        if self.leader.is_some() {
            self.heard_leader(now);
        }
        self.reset_election_timer(now);
    }

    /// Emits `LeaderChanged` when the (term, leader) pair differs from the last one told.
    pub(super) fn announce_leader(&mut self) {
        let now = (self.hard.term, self.leader.clone());
        if self.announced != now {
            self.announced = now.clone();
            self.event(GroupEvent::LeaderChanged {
                term: now.0,
                leader: now.1,
            });
        }
    }

    /// Thesis §6.2: a leader that has not heard from a majority within an election
    /// timeout steps down, so a leader cut off in a minority does not lead forever.
    ///
    /// Also: a leader that still cannot prove its election 10 election timeouts after
    /// winning stands again. Signatures come a heartbeat after the grants; short of a
    /// majority by then, some were lost (a voter restarted or left before signing), and
    /// without the proof the proxy keeps naming the old leader, so newcomers cannot
    /// find the group. A new election collects fresh ones.
    pub(super) fn on_check_quorum(&mut self, now: Instant) {
        if self.role != Role::Leader {
            return;
        }
        let window = self.config.election_timeout_max;
        let heard = 1 + self
            .others()
            .iter()
            .filter(|name| {
                self.progress
                    .get(*name)
                    .is_some_and(|p| now.duration_since(p.last_heard) < window)
            })
            .count();
        let unproven = self.election_proof().is_none()
            && self.proof_deadline.is_some_and(|deadline| now >= deadline);
        if heard < self.quorum() {
            self.become_follower(now, self.hard.term, None);
        } else if unproven {
            self.become_follower(now, self.hard.term, None);
            self.start_election(now);
        } else {
            self.timers.set(Timer::CheckQuorum, now + window);
        }
    }

    /// Leader: hand leadership to the most up-to-date follower (thesis §3.10).
    pub fn transfer_leadership(&mut self, now: Instant) -> Result<String, CommandError> {
        if self.role == Role::Left {
            return Err(CommandError::Left);
        }
        if self.role != Role::Leader {
            return Err(CommandError::NotLeader);
        }
        let target = self
            .transfer_target(now)
            .ok_or(CommandError::NoTransferTarget)?;
        // To every member, not only the target: the others let the target's
        // VOTE_REQUEST overrule our lease (SPEC.md §12.3), and so do we.
        let transfer = GroupMessage::TransferLeadership {
            term: self.hard.term,
            target: target.clone(),
        };
        for to in self.others() {
            self.send(&to, transfer.clone());
        }
        self.sanction_transfer(now, self.hard.term, &target);
        Ok(target)
    }

    /// The follower with the newest acknowledged membership, then heard most recently
    /// within the check-quorum window, then of highest rank.
    fn transfer_target(&self, now: Instant) -> Option<String> {
        let window = self.config.election_timeout_max;
        self.members
            .iter()
            .filter(|m| m.name != self.me.name)
            .filter_map(|m| {
                let p = self.progress.get(&m.name)?;
                let live = now.duration_since(p.last_heard) < window;
                Some(((live, p.acked_version, m.rank), m.name.clone()))
            })
            .max()
            .map(|(_, name)| name)
    }

    /// Raft's TimeoutNow: the target stands at once, skipping pre-vote.
    pub(super) fn on_transfer_leadership(
        &mut self,
        now: Instant,
        from: &str,
        term: u64,
        target: String,
    ) {
        if term != self.hard.term || self.leader.as_deref() != Some(from) {
            return;
        }
        if target != self.me.name {
            self.sanction_transfer(now, term, &target);
        } else if self.is_member() {
            self.start_election(now);
        }
    }
}
