//! Membership: bootstrap, join, leave, heartbeats, failure removal, and single-member
//! changes, each committed by a majority of the membership it creates (Raft dissertation
//! §4.1: a server uses a configuration as soon as it has it).

use std::time::Instant;

use super::timers::Timer;
use super::{CommandError, Group, GroupEvent, Progress, Role};
use crate::message::{GroupMessage, MemberInfo};
use sockmsg_wire::frame::MessageClass;

/// A single-member change the leader has queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// Admit a member, or replace the entry of the same name (a new incarnation).
    Add(MemberInfo),
    /// Remove this incarnation of a member: a LEAVE or a failure of an incarnation
    /// that has since joined again must not remove the new one.
    Remove { name: String, incarnation: u64 },
}

/// The change in flight: it has taken effect on the leader, and the next may start once
/// a majority of `voters` (the membership `version` itself, as in Raft) has acknowledged
/// it. Single-member changes keep any majority of the old membership and any of the new
/// one overlapping, so either rule is safe; the new one's lets a group of two drop a
/// departed member (a majority of one) instead of waiting for it forever.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    version: u64,
    voters: Vec<String>,
    /// The change it makes (none for a new leader's re-issue).
    change: Option<Change>,
}

impl Group {
    /// Founds the group: this node becomes its only member and leader. The proxy knew
    /// no leader; `last_term` is the last term it knew for the group (0 if none), so the
    /// founder stands in a term no earlier leader used.
    pub fn bootstrap(&mut self, now: Instant, last_term: u64) -> Result<(), CommandError> {
        if self.role == Role::Left {
            return Err(CommandError::Left);
        }
        if self.hard.term < last_term {
            self.enter_term(last_term);
        }
        // Stamped with the term we are about to lead in (start_election increments it).
        let stamp = (self.hard.term + 1, self.version + 1);
        self.adopt_membership(now, stamp, vec![self.me.clone()]);
        self.start_election(now);
        Ok(())
    }

    /// Leaves this group for another group of the same name that outranks it (SPEC.md
    /// §12.7): the node forgets this one entirely (term, vote, membership, former
    /// members, chat state) and is a newcomer, to be admitted by the other group's
    /// leader ([`Group::join_via`]), under a new incarnation. The new state is persisted
    /// first thing; frames not yet sent are dropped (they were for the group it leaves;
    /// lines not yet acknowledged are not delivered, and the node is told so as
    /// `Removed`).
    ///
    /// Why forgetting the term is safe: the two groups share no member (they could not
    /// be told apart otherwise), so no election of the group it joins counted a vote of
    /// this node's past, and the proxy takes the other group's record only with signed
    /// votes of a majority of that group's own membership, of which this node's past
    /// votes, cast for candidates of the group it leaves, are none.
    pub fn dissolve(&mut self, now: Instant) {
        self.dissolve_into(now, super::HardState::default());
    }

    /// [`Group::dissolve`], but keeping the term, the vote and the votes remembered
    /// ahead: for a member *left behind* by a merge (SPEC.md §12.7), which cannot tell
    /// another group that took its members from its own group that removed it. In its
    /// own group, a vote forgotten could be cast again in the same term for another
    /// candidate, electing two leaders; kept, it is Raft's rule for any restart.
    pub fn dissolve_keeping_votes(&mut self, now: Instant) {
        let votes = super::HardState {
            term: self.hard.term,
            voted_for: self.hard.voted_for.clone(),
            votes_ahead: self.hard.votes_ahead.clone(),
            ..super::HardState::default()
        };
        self.dissolve_into(now, votes);
    }

    fn dissolve_into(&mut self, now: Instant, hard: super::HardState) {
        use rand::{RngExt, SeedableRng};
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.rng.random());
        // A new incarnation: to every group it is a new process, whose lines are
        // numbered afresh (a receiver orders and deduplicates per incarnation).
        let me = MemberInfo {
            incarnation: self.rng.random(),
            ..self.me.clone()
        };
        let fresh = Group::new(self.config.clone(), me, hard, rng, now);
        // The configuration and the name were valid when this group was made.
        let Ok(fresh) = fresh else { return };
        *self = fresh;
        self.persist();
        self.event(GroupEvent::LeaderChanged {
            term: 0,
            leader: None,
        });
        self.event(GroupEvent::MembersChanged {
            version: 0,
            members: Vec::new(),
        });
        self.event(GroupEvent::Removed);
    }

    /// A (pre-)vote request from a former member means it was removed without hearing
    /// of it; tell it, so it stops standing and can join again. The leader sends its
    /// membership; a follower names its leader, as to a joiner (the removed node may no
    /// longer list the leader, and then never asks it).
    ///
    /// A candidate we never listed is of another group of the same name (SPEC.md
    /// §12.7): a member of an outranked group that has not dissolved yet asks one that
    /// has. It is not told: joining here without dissolving would bring its old terms
    /// and vote into ours. It learns of the merge from the proxy, as its group does.
    pub(super) fn tell_removed(&mut self, candidate: &str) {
        if self.members.iter().any(|m| m.name == candidate) || !self.is_former_member(candidate) {
            return;
        }
        if self.role == Role::Leader {
            let msg = self.membership_msg();
            self.send(candidate, msg);
        } else if self.role == Role::Follower {
            self.redirect_joiner(candidate);
        }
    }

    /// MEMBERSHIP_ACK of the membership we hold, in our term: what a follower answers
    /// a leader's message with, and what tells a stale leader our term (Raft §5.1).
    pub(super) fn our_ack(&self) -> GroupMessage {
        GroupMessage::MembershipAck {
            term: self.hard.term,
            version: self.version,
        }
    }

    /// Whether our membership lists this incarnation of `name`.
    fn lists(&self, name: &str, incarnation: u64) -> bool {
        self.members
            .iter()
            .any(|m| m.name == name && m.incarnation == incarnation)
    }

    /// MEMBERSHIP carrying our current membership in our current term.
    fn membership_msg(&self) -> GroupMessage {
        GroupMessage::Membership {
            term: self.hard.term,
            membership_term: self.membership_term,
            version: self.version,
            members: self.members.clone(),
        }
    }

    /// A new leader (dissertation §4.1, as corrected in 2015: commit an entry of the new
    /// term before changing the membership). Re-issues the current membership stamped
    /// with our term and starts no change until a majority of it has acknowledged that
    /// (acknowledgements in this term come only from members that adopted our stamp).
    /// Otherwise a change from an older leader that we never saw could still win an
    /// election with a quorum that does not overlap ours.
    pub(super) fn commit_own_term_first(&mut self, now: Instant) {
        let stamp = (self.hard.term, self.version);
        self.adopt_membership(now, stamp, self.members.clone());
        self.pending = Some(Pending {
            version: self.version,
            voters: self.members.iter().map(|m| m.name.clone()).collect(),
            change: None,
        });
        // Reliably, so the acknowledgements come reliably too (a leaving former leader
        // waits for this before it goes, see `Group::leave_if_handed_over`).
        let msg = self.membership_msg();
        for to in self.others() {
            self.send(&to, msg.clone());
        }
        self.maybe_commit(now);
    }

    /// Asks `leader` (from the proxy) to admit this node; repeated every `join_retry`
    /// (to the leader heard of since, if any) until admitted.
    pub fn join(&mut self, now: Instant, leader: &str) -> Result<(), CommandError> {
        self.join_via(now, &[leader])
    }

    /// Asks to be admitted through `contacts`: the leader the proxy named first, then the
    /// other members of its record. The proxy's record may lag an election by up to its
    /// TTL, and its leader may be gone; any live member forwards a JOIN to the leader it
    /// follows, so one live contact suffices. Repeated every `join_retry` (to the leader
    /// heard of since, else to every contact) until admitted.
    pub fn join_via(&mut self, now: Instant, contacts: &[&str]) -> Result<(), CommandError> {
        if self.role == Role::Left {
            return Err(CommandError::Left);
        }
        self.join_contacts = contacts
            .iter()
            .filter(|c| **c != self.me.name)
            .take(sockmsg_wire::limits::MAX_MEMBERS)
            .map(|c| (*c).to_owned())
            .collect();
        self.send_joins();
        self.timers
            .set(Timer::JoinRetry, now + self.config.join_retry);
        Ok(())
    }

    fn send_joins(&mut self) {
        // The leader we know (else every contact), and the leader a member last
        // pointed us to (see `Group::join_through`): the leader we know, and the
        // proxy's record, may be stale.
        let mut targets = match self.leader.clone().filter(|l| *l != self.me.name) {
            Some(leader) => vec![leader],
            None => self.join_contacts.clone(),
        };
        if let Some(redirected) = self.evidence.redirected.clone() {
            if !targets.contains(&redirected) && redirected != self.me.name {
                targets.push(redirected);
            }
        }
        for to in targets {
            self.send(&to, GroupMessage::Join(self.me.clone()));
        }
    }

    pub(super) fn on_join_retry(&mut self, now: Instant) {
        if self.leaving.is_some() {
            self.finish_leave();
            return;
        }
        if self.joined {
            return;
        }
        self.send_joins();
        self.timers
            .set(Timer::JoinRetry, now + self.config.join_retry);
    }

    /// Leaves the group gracefully. A leader first hands leadership to its most
    /// up-to-date follower and stays to vote for it (so even a two-member group elects
    /// the survivor), leaving once it has voted in a later term or after
    /// `election_timeout_max`.
    pub fn leave(&mut self, now: Instant) -> Result<(), CommandError> {
        if self.role == Role::Left {
            return Err(CommandError::Left);
        }
        if self.role == Role::Leader && self.transfer_leadership(now).is_ok() {
            self.leaving = Some(self.hard.term);
            self.leave_restamped = false;
            self.timers
                .set(Timer::JoinRetry, now + self.config.election_timeout_max);
            return Ok(());
        }
        self.finish_leave();
        Ok(())
    }

    pub(super) fn finish_leave(&mut self) {
        self.leaving = None;
        let leave = GroupMessage::Leave {
            name: self.me.name.clone(),
            incarnation: self.me.incarnation,
        };
        for to in self.others() {
            self.send(&to, leave.clone());
        }
        self.role = Role::Left;
        self.timers = Default::default();
        self.event(GroupEvent::Left);
    }

    /// HEARTBEAT or MEMBERSHIP from `from`, who claims to lead `term`.
    pub(super) fn on_leader_message(
        &mut self,
        now: Instant,
        from: &str,
        term: u64,
        (membership_term, version): (u64, u64),
        members: Vec<MemberInfo>,
        reliable: bool,
    ) {
        let class = if reliable {
            MessageClass::Reliable
        } else {
            MessageClass::Unreliable
        };
        if term < self.hard.term {
            // Raft §5.1: reject a stale term; our answer tells the old leader of the new
            // (which stands again, see `Group::on_membership_ack`).
            let ack = self.our_ack();
            self.send_class(from, class, ack);
            return;
        }
        if membership_term > term {
            // No leader can hold a membership created in a later term: malformed.
            return;
        }
        if term == self.hard.term && self.role == Role::Leader {
            // Two leaders in one term cannot happen (one vote per term); ignore.
            return;
        }
        let same_leader = term == self.hard.term && self.leader.as_deref() == Some(from);
        if !same_leader || self.role != Role::Follower {
            self.become_follower(now, term, Some(from.to_owned()));
        } else {
            self.heard_leader(now);
            self.reset_election_timer(now);
        }
        // The leader is the authority on membership in its term; within the term its
        // (term, version) stamps only grow, so a lower one is a heartbeat overtaken by a
        // MEMBERSHIP.
        let stamp = (membership_term, version);
        if !same_leader || stamp >= (self.membership_term, self.version) {
            self.consider_membership(now, from, stamp, members);
        }
        let ack = self.our_ack();
        self.send_class(from, class, ack);
    }

    pub(super) fn adopt_membership(
        &mut self,
        now: Instant,
        (membership_term, version): (u64, u64),
        members: Vec<MemberInfo>,
    ) {
        let same_members = version == self.version && members == self.members;
        if same_members && membership_term == self.membership_term {
            return;
        }
        let was_member = self.is_member();
        let previous = std::mem::replace(&mut self.members, members);
        self.remember_former_members(&previous);
        self.forget_non_members();
        self.membership_term = membership_term;
        self.version = version;
        self.hard.membership_term = membership_term;
        self.hard.membership_version = version;
        self.hard.members = self.members.clone();
        self.persist();
        if same_members {
            // Only re-stamped by a new leader: nothing the application sees changed.
            return;
        }
        self.event(GroupEvent::MembersChanged {
            version,
            members: self.members.clone(),
        });
        let listed = self.members.contains(&self.me);
        if listed && !self.joined {
            self.joined = true;
            self.evidence.redirected = None;
            self.timers.stop(Timer::JoinRetry);
            self.event(GroupEvent::Joined);
            self.announce_word(now);
        }
        if was_member && !self.is_member() {
            self.joined = false;
            self.event(GroupEvent::Removed);
        }
        if was_member != self.is_member() {
            self.reset_election_timer(now);
        }
    }

    pub(super) fn on_membership_ack(&mut self, now: Instant, from: &str, term: u64, version: u64) {
        // A newer term in an acknowledgement never deposes us (SPEC.md §12.3): a
        // stale leader hears of its successor from the successor, with evidence, or
        // steps down by check-quorum since such acks do not count as heard. A member
        // ahead of us (its own election failed) is brought back by our standing again.
        if self.role == Role::Leader && term > self.hard.term {
            if let Some(p) = self.progress.get_mut(from) {
                p.last_alive = now;
            }
            return self.stand_again(now, from, term);
        }
        if self.role != Role::Leader || term != self.hard.term {
            return;
        }
        if let Some(p) = self.progress.get_mut(from) {
            p.last_heard = now;
            p.last_alive = now;
            p.acked_version = p.acked_version.max(version);
        }
        self.maybe_commit(now);
    }

    /// JOIN from `from`, which must be the joiner itself (SPEC.md §12.1): nobody joins
    /// on another's word, so no member can add names that never asked. A joiner sends
    /// its JOIN to every contact the proxy gave it; the leader among them admits it, the
    /// others drop it (no forwarding).
    pub(super) fn on_join(&mut self, now: Instant, from: &str, member: MemberInfo) {
        if from != member.name {
            return self.reject(super::Violation::NotSubject);
        }
        self.note_word(now, &member);
        if self.role != Role::Leader {
            // A member's word to us needs no answer about the leader; a joiner's (or a
            // restarted member's, of a new incarnation) does.
            if !self.lists(&member.name, member.incarnation) {
                self.redirect_joiner(from);
            }
            return;
        }
        self.departed.remove(&member.name);
        let removing = Change::Remove {
            name: member.name.clone(),
            incarnation: member.incarnation,
        };
        if self.pending.as_ref().and_then(|p| p.change.as_ref()) == Some(&removing) {
            // The member we are removing for failure asks to stay: it is alive, and the
            // members that still hear it will not vouch for its removal (SPEC.md §12.5).
            // Undo it now rather than after it commits: the membership this makes is
            // the one before the removal, so any two of the three overlap as
            // single-member changes do.
            self.queue.retain(|c| *c != removing);
            if let Some(p) = self.progress.get_mut(&member.name) {
                *p = Progress::new(now);
            }
            self.start_change(now, Change::Add(member));
            return;
        }
        if self.members.contains(&member) {
            // Already admitted (the MEMBERSHIP may still be on its way): say so again.
            let msg = self.membership_msg();
            self.send(&member.name, msg);
            return;
        }
        let change = Change::Add(member);
        if !self.queue.contains(&change) {
            self.queue.push_back(change);
        }
        self.drive_changes(now);
    }

    pub(super) fn on_leave(&mut self, now: Instant, name: String, incarnation: u64) {
        if !self.lists(&name, incarnation) {
            return;
        }
        self.departed.insert(name.clone(), incarnation);
        if self.role == Role::Leader {
            self.propose_removal(now, &name);
        }
        self.revet_and_ack(now);
    }

    /// Queues the removal of the incarnation of `name` listed now (none: nothing to do).
    pub(super) fn propose_removal(&mut self, now: Instant, name: &str) {
        let Some(incarnation) = self
            .members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.incarnation)
        else {
            return;
        };
        let change = Change::Remove {
            name: name.to_owned(),
            incarnation,
        };
        if !self.queue.contains(&change) {
            self.queue.push_back(change);
        }
        self.drive_changes(now);
    }

    /// Starts queued changes one at a time (dissertation §4.1: a change may start only
    /// once the previous one is committed, so any two quorums overlap).
    fn drive_changes(&mut self, now: Instant) {
        while self.pending.is_none() {
            let Some(change) = self.queue.pop_front() else {
                return;
            };
            self.start_change(now, change);
        }
    }

    /// Puts `change` in flight (unless it changes nothing): it takes effect here, goes
    /// to the old and the new members, and is the pending change until a majority of
    /// the new membership acknowledges it.
    fn start_change(&mut self, now: Instant, change: Change) {
        let mut next = self.members.clone();
        match &change {
            Change::Add(member) => match next.iter_mut().find(|m| m.name == member.name) {
                Some(entry) if entry == member => return,
                Some(entry) => *entry = member.clone(),
                None => next.push(member.clone()),
            },
            Change::Remove { name, incarnation } => {
                let listed = |m: &MemberInfo| m.name == *name && m.incarnation == *incarnation;
                if *name == self.me.name || !next.iter().any(listed) {
                    return;
                }
                next.retain(|m| !listed(m));
            }
        }
        let previous: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        let version = self.version + 1;
        for m in &next {
            if m.name != self.me.name {
                self.progress
                    .entry(m.name.clone())
                    .or_insert(Progress::new(now));
            }
        }
        self.adopt_membership(now, (self.hard.term, version), next);
        self.pending = Some(Pending {
            version,
            voters: self.members.iter().map(|m| m.name.clone()).collect(),
            change: Some(change),
        });
        let msg = self.membership_msg();
        let mut to: Vec<String> = previous;
        to.extend(self.members.iter().map(|m| m.name.clone()));
        to.sort();
        to.dedup();
        to.retain(|n| *n != self.me.name);
        for name in to {
            self.send(&name, msg.clone());
        }
        self.maybe_commit(now);
    }

    /// Commits the pending change once a majority of the new membership has it. The
    /// subject of an addition counts by its own JOIN of the listed incarnation (SPEC.md
    /// §7.15): it asked to be a member, and its acknowledgement may never come, since a
    /// member added back into a membership that shrank while it was away cannot prove
    /// the leader by the membership it holds (§12.2) until enough of that membership is
    /// listed again, which this change must commit for. Without its ack the members
    /// that did ack are still at least half the old membership, so every majority of
    /// the old one meets one of them, as single-member changes need.
    fn maybe_commit(&mut self, now: Instant) {
        let Some(pending) = &self.pending else {
            return;
        };
        let joiner = match &pending.change {
            Some(Change::Add(member))
                if self
                    .vetting_word(&member.name)
                    .is_some_and(|incarnation| incarnation == member.incarnation) =>
            {
                Some(member.name.as_str())
            }
            _ => None,
        };
        let acked = pending
            .voters
            .iter()
            .filter(|name| {
                **name == self.me.name
                    || joiner == Some(name.as_str())
                    || self
                        .progress
                        .get(*name)
                        .is_some_and(|p| p.acked_version >= pending.version)
            })
            .count();
        if acked < pending.voters.len() / 2 + 1 {
            return;
        }
        self.pending = None;
        let members = &self.members;
        self.progress
            .retain(|name, _| members.iter().any(|m| m.name == *name));
        self.departed
            .retain(|name, _| members.iter().any(|m| m.name == *name));
        self.drive_changes(now);
    }

    /// Leader: heartbeat every member, and remove members not heard from for
    /// `failure_removal`.
    pub(super) fn on_heartbeat_timer(&mut self, now: Instant) {
        if self.role != Role::Leader {
            return;
        }
        // Our own lease and term ceiling run from our last heartbeat, as a follower's
        // from the last one it heard (see `Group::term_ceiling`).
        self.heard_leader(now);
        let heartbeat = GroupMessage::Heartbeat {
            term: self.hard.term,
            leader: self.me.name.clone(),
            membership_term: self.membership_term,
            membership_version: self.version,
            members: self.members.clone(),
        };
        for to in self.others() {
            self.send(&to, heartbeat.clone());
        }
        self.timers
            .set(Timer::Heartbeat, now + self.config.heartbeat_interval);
        let limit = self.config.failure_removal;
        let failed: Vec<String> = self
            .others()
            .into_iter()
            .filter(|name| {
                self.progress
                    .get(name)
                    .is_some_and(|p| now.duration_since(p.last_alive) >= limit)
            })
            .filter(|name| {
                !self
                    .queue
                    .iter()
                    .any(|c| matches!(c, Change::Remove { name: n, .. } if n == name))
            })
            .collect();
        for name in failed {
            self.event(GroupEvent::PeerUnreachable { name: name.clone() });
            self.propose_removal(now, &name);
        }
    }
}
