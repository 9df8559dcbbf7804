//! Vetting a leader's membership (SPEC.md §12.5): a member takes a new membership from
//! its leader only when it can vouch, from what it saw itself, for every change
//! between the membership it holds and the new one.
//!
//! Proof of election (§12.2) keeps a single member from *becoming* leader; it cannot
//! keep a liar that a majority genuinely elected from rewriting the membership. Raft
//! commits a change once a majority of the new membership acknowledges it, so if every
//! honest member acknowledges only changes it can check, a liar's change never commits,
//! and a member that acknowledges nothing of it never holds it either:
//!
//! - an **added** name (or a new incarnation of one) must have given this node its own
//!   word: a JOIN that the name itself sent here (the session authenticates it). A
//!   joiner's JOIN to its contacts, and the JOIN a member sends to every other member
//!   once admitted, are such words; a node that lacks one asks for it by sending its
//!   own JOIN, which a member answers with its own (at most once per
//!   `election_timeout_min` and name, so two members never echo each other for long).
//!   Any incarnation's word will do: a leader may still list an incarnation that has
//!   restarted since, and replaces it once the new one joins; what a liar cannot do
//!   is list a name that never asked (a sock puppet, a ghost).
//! - a **removed** name must have said LEAVE here, or given its word in another
//!   incarnation (the listed process restarted), or must not answer that it still
//!   follows the leader that removes it: the node asks it with a `SUPPORT`+`QUERY` for
//!   (term, leader), with its own word so that a restarted process answers in kind,
//!   and takes the removal once `election_timeout_max` passes without an answer. Only
//!   a node listed as the incarnation it is answers such a question. A leader that
//!   stops hearing a member it still reaches (acknowledgements lost one way) stops
//!   heartbeating it once it is removed, so the member soon stops following, and a
//!   member that asks to stay (below) makes the leader undo the removal.
//! - **this node's own removal** is never taken while it holds a membership that lists
//!   it: it is alive, so it asks the leader with its JOIN to list it again, and an
//!   honest leader does (undoing the removal if it is still pending). A liar's removal
//!   of it is thereby refused like any other.
//!
//! A node that holds no membership listing it (a joiner, or a node that restarted
//! without one) has nothing to check against and takes its proven leader's membership
//! as before. A held membership is not acknowledged; it is replaced by the leader's
//! next one, and dropped when the node stops following that leader.

use std::collections::BTreeMap;
use std::time::Instant;

use super::timers::Timer;
use super::{Group, Output, Role};
use crate::message::{GroupMessage, MemberInfo, SupportMsg};
use sockmsg_wire::limits::MAX_MEMBERS;

/// How many names' words (and how many "word sent" times) a node keeps, at most: twice
/// the largest membership, the oldest forgotten first (SPEC.md §11).
pub const MAX_WORDS: usize = 2 * MAX_MEMBERS;

/// A membership from the leader we follow that we have not taken yet: some change in it
/// is not vouched for.
#[derive(Debug, Clone)]
struct HeldMembership {
    leader: String,
    term: u64,
    stamp: (u64, u64),
    members: Vec<MemberInfo>,
    /// Removed name → our question whether it follows the leader.
    probes: BTreeMap<String, Probe>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    asked: Instant,
    /// It said it follows the leader, after we asked.
    answered: bool,
}

/// What vetting remembers (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Vetting {
    held: Option<HeldMembership>,
    /// Name → the incarnation its own JOIN gave us, and when it came.
    words: BTreeMap<String, (u64, Instant)>,
    /// Name → when we last sent it our own JOIN (at most once per `election_timeout_min`).
    word_sent: BTreeMap<String, Instant>,
}

/// Inserts into a table bounded by [`MAX_WORDS`], dropping the oldest entry when full.
fn insert_bounded<V: Copy>(
    table: &mut BTreeMap<String, V>,
    name: &str,
    value: V,
    at: impl Fn(&V) -> Instant,
) {
    if !table.contains_key(name) && table.len() >= MAX_WORDS {
        let oldest = table
            .iter()
            .min_by_key(|(_, v)| at(v))
            .map(|(n, _)| n.clone());
        if let Some(oldest) = oldest {
            table.remove(&oldest);
        }
    }
    table.insert(name.to_owned(), value);
}

impl Group {
    /// A membership from `leader`, proven to lead `term` and followed by us: taken at
    /// once if every change in it is vouched for, held (and the missing words and
    /// answers asked for) otherwise.
    pub(super) fn consider_membership(
        &mut self,
        now: Instant,
        leader: &str,
        stamp: (u64, u64),
        members: Vec<MemberInfo>,
    ) {
        // Every heartbeat carries the list: the same one needs no vetting (and a group
        // of 50 would otherwise compare lists 1,000 times a second).
        if !self.is_member() || members == self.members {
            self.vetting.held = None;
            return self.adopt_membership(now, stamp, members);
        }
        let term = self.hard.term;
        let same = self.vetting.held.as_ref().is_some_and(|h| {
            h.leader == leader && h.term == term && h.stamp == stamp && h.members == members
        });
        if !same {
            self.vetting.held = Some(HeldMembership {
                leader: leader.to_owned(),
                term,
                stamp,
                members,
                probes: BTreeMap::new(),
            });
        }
        self.revet(now);
    }

    /// [`Group::revet`] after an input that was not the leader's own message (a word,
    /// an answer, a LEAVE, the timer): a membership taken then is acknowledged here.
    pub(super) fn revet_and_ack(&mut self, now: Instant) {
        let leader = self.vetting.held.as_ref().map(|h| h.leader.clone());
        if let (true, Some(leader)) = (self.revet(now), leader) {
            let ack = self.our_ack();
            self.send(&leader, ack);
        }
    }

    /// Takes the held membership if it is now vouched for; otherwise asks for what is
    /// missing and sets the timer by which unanswered questions count as answers.
    /// Returns whether it took the membership.
    pub(super) fn revet(&mut self, now: Instant) -> bool {
        let Some(mut held) = self.vetting.held.take() else {
            return false;
        };
        let following = self.role == Role::Follower
            && self.hard.term == held.term
            && self.leader.as_deref() == Some(held.leader.as_str());
        if !following {
            return false;
        }
        let (missing_words, open_probes) = self.unvouched(now, &mut held);
        let removes_me = !held.members.iter().any(|m| m.name == self.me.name);
        if missing_words.is_empty() && open_probes.is_empty() && !removes_me {
            self.adopt_membership(now, held.stamp, held.members);
            return true;
        }
        if removes_me {
            // We are alive: ask to be listed again (an honest leader that lost us
            // admits us at once) instead of taking a membership without us.
            let leader = held.leader.clone();
            self.send_word(now, &leader, None);
        }
        for name in missing_words {
            let addr = held.members.iter().find(|m| m.name == name).map(|m| m.addr);
            self.send_word(now, &name, addr);
        }
        let query = GroupMessage::Support(SupportMsg {
            query: true,
            ..self.own_support(held.term, &held.leader)
        });
        // Words and readmission are asked again (they may be lost) when this fires.
        let wait = self.config.election_timeout_max;
        let mut next = now + wait;
        for name in open_probes {
            let Some(probe) = held.probes.get(&name).copied() else {
                continue;
            };
            if probe.asked == now {
                // With our word: its answer in kind tells us if it restarted since.
                self.send_word(now, &name, None);
                self.send(&name, query.clone());
            }
            next = next.min(probe.asked + wait);
        }
        self.timers.set(Timer::Vetting, next);
        self.vetting.held = Some(held);
        false
    }

    /// The added names whose word we lack, and the removed names still being asked
    /// (a question is (re)started here when none is open).
    fn unvouched(&self, now: Instant, held: &mut HeldMembership) -> (Vec<String>, Vec<String>) {
        let skip = |name: &str| name == self.me.name || name == held.leader;
        let missing_words = held
            .members
            .iter()
            .filter(|m| !skip(&m.name) && !self.members.contains(m))
            .filter(|m| !self.vetting.words.contains_key(&m.name))
            .map(|m| m.name.clone())
            .collect();
        let wait = self.config.election_timeout_max;
        let mut open = Vec::new();
        for m in &self.members {
            let kept = held.members.iter().any(|n| n.name == m.name);
            let left = self.departed.get(&m.name) == Some(&m.incarnation);
            // Its latest word is of another incarnation: the listed process is gone.
            let restarted = self
                .vetting_word(&m.name)
                .is_some_and(|incarnation| incarnation != m.incarnation);
            if skip(&m.name) || kept || left || restarted {
                continue;
            }
            let probe = held.probes.entry(m.name.clone()).or_insert(Probe {
                asked: now,
                answered: false,
            });
            let expired = now >= probe.asked + wait;
            if expired && !probe.answered {
                continue;
            }
            if expired {
                *probe = Probe {
                    asked: now,
                    answered: false,
                };
            }
            open.push(m.name.clone());
        }
        (missing_words, open)
    }

    /// Whether `name`, as `incarnation`, is listed by the membership we hold from our
    /// leader and gave us its own word: the leader admitted it, and we vouch for that
    /// addition whatever else in the membership we cannot vouch for yet (a listed
    /// member gone quiet whose word we lack, after a restart). Its chat lines are
    /// delivered meanwhile (SPEC.md §12.1): lines are held against names that never
    /// asked us to be members, not against a membership that waits for someone else.
    pub(super) fn admitted_by_leader(&self, name: &str, incarnation: u64) -> bool {
        let Some(held) = &self.vetting.held else {
            return false;
        };
        let listed = held
            .members
            .iter()
            .any(|m| m.name == name && m.incarnation == incarnation);
        listed && self.vetting_word(name) == Some(incarnation)
    }

    /// The incarnation of `name`'s latest word (its own JOIN to us), if we hold one.
    pub(super) fn vetting_word(&self, name: &str) -> Option<u64> {
        self.vetting
            .words
            .get(name)
            .map(|(incarnation, _)| *incarnation)
    }

    /// A member's SUPPORT (not a query): if it answers our question about a removal
    /// we hold, it still follows the leader that removes it.
    pub(super) fn note_probe_answer(&mut self, from: &str, term: u64, leader: &str) {
        if let Some(held) = self.vetting.held.as_mut() {
            if held.term == term && held.leader == leader {
                if let Some(probe) = held.probes.get_mut(from) {
                    probe.answered = true;
                }
            }
        }
    }

    /// `from`'s own JOIN: its word that it asked to be a member with that incarnation.
    /// A member answers with its own (so that a member vetting us has it).
    pub(super) fn note_word(&mut self, now: Instant, member: &MemberInfo) {
        insert_bounded(
            &mut self.vetting.words,
            &member.name,
            (member.incarnation, now),
            |w| w.1,
        );
        // Whoever asks: a member that has moved past our membership (or we past its) may
        // need our word as much as one we list. One small frame per asker and
        // `election_timeout_min`, no more than it sent.
        if self.is_member() {
            self.send_word(now, &member.name, None);
        }
        self.revet_and_ack(now);
    }

    /// Sends our own JOIN to `to` as our word, at most once per `election_timeout_min`.
    /// `addr`: where `to` listens by the membership we hold, which the driver may not
    /// know yet (it learns addresses from memberships we take).
    pub(super) fn send_word(&mut self, now: Instant, to: &str, addr: Option<std::net::SocketAddr>) {
        let gap = self.config.election_timeout_min;
        if self
            .vetting
            .word_sent
            .get(to)
            .is_some_and(|at| now.duration_since(*at) < gap)
        {
            return;
        }
        insert_bounded(&mut self.vetting.word_sent, to, now, |at| *at);
        if let Some(addr) = addr {
            self.outputs.push_back(Output::Locate {
                name: to.to_owned(),
                addr,
            });
        }
        self.send(to, GroupMessage::Join(self.me.clone()));
    }

    /// Admitted: our word to every other member (the leader has it), so that they can
    /// vouch for our addition.
    pub(super) fn announce_word(&mut self, now: Instant) {
        let leader = self.leader.clone();
        for to in self.others() {
            if Some(&to) != leader.as_ref() {
                self.send_word(now, &to, None);
            }
        }
    }
}
