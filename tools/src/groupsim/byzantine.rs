//! A liar in the group: [`Liar`], a participant with a registered key that sends
//! well-formed but hostile group frames, and [`byzantine_schedule`], which runs it
//! against a group of 3–7 honest members (faults or not) and checks the invariants of
//! [`super::invariants`] after every event.
//!
//! The liar is `mallory`. In the [`Variant::Member`] schedules it joins through the
//! honest leader like everyone else (a JOIN of its own, acknowledgements of the
//! leader's heartbeats, its word to the members) and turns hostile once admitted; in the [`Variant::Outsider`]
//! ones it is `outsider` and never joins. Either way it has three sock puppets,
//! `puppet1..3`: registered keys of its own that send frames too, but never JOIN (if
//! they joined, the honest leader would admit them, and the group would simply have
//! more members than honest ones: no rule can tell a puppet from a friend). So the
//! honest members always hold a majority of the membership, which is what the rules
//! rely on.
//!
//! The liar is not a [`sockmsg_node::Group`] run honestly: it is a seeded random frame
//! generator with a memory. It reads what the honest nodes send it (the last
//! [`MEMORY`] frames are kept, and the term, leader and membership they show), and
//! every few milliseconds sends a burst of frames, each to one honest node or to all:
//!
//! - terms 0, current ± k, far ahead, `MAX_TERM`, `MAX_TERM + 1`, `u64::MAX`;
//! - HEARTBEAT and MEMBERSHIP claiming leadership (its own, a puppet's), with forged
//!   member lists (honest members dropped, puppets added, or one puppet added to the
//!   real list: the "single addition" `is_proven` tolerates) and forged stamps; a
//!   HEARTBEAT naming an honest leader;
//! - VOTE_REQUEST floods (one term repeated, or increasing terms) and PRE_VOTE_REQUESTs,
//!   with the real membership stamp, an absurd one or a stale one;
//! - MEMBERSHIP_ACKs and vote refusals with huge terms, and grants for anyone (a liar
//!   may vote twice in a term);
//! - supports lying about whom it (or a puppet) follows, and support queries;
//! - TRANSFER_LEADERSHIP forgeries, JOINs and LEAVEs for other names (ghosts, puppets,
//!   honest members), chat lines in another's name or its own;
//! - replays: a frame an honest node sent it, resent to another node (its sender is
//!   still the liar: the session authenticates it).
//!
//! Every frame goes through the wire codec first (a frame the codec cannot carry is not
//! sent), so the group sees only what an authenticated peer could really send.
//!
//! The schedule: form the group, admit the liar, then 4 s of attack while the members
//! chat (and, in 40 % of the seeds, crash, restart, leave and get partitioned as in
//! [`super::schedule`]); then the liar goes quiet, the network heals, and within
//! [`super::schedule::HEAL_BOUND_WITH_PROXY`] every honest node must follow one leader
//! that lists them all, and
//! hold its membership (a listed liar gone quiet is removed as failed meanwhile); chat
//! then reaches every honest member exactly once, in order. Finally the honest nodes
//! must have rejected some of the liar's frames (the attack took place).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sockmsg_node::group::MAX_TERM;
use sockmsg_node::{ChatLine, GroupMessage, MemberInfo, SupportMsg, VoteMsg, VoteRequestMsg};
use sockmsg_wire::frame::Carrier;
use sockmsg_wire::limits::MAX_MEMBERS;
use sockmsg_wire::Frames;

use super::schedule::{
    check_quiet_chat, crash_departed, form, heal_and_settle, random_chat, random_fault,
};
use super::{describe, Sim, MS};

/// The liar that joins.
pub const LIAR: &str = "mallory";
/// The liar that never joins.
pub const OUTSIDER: &str = "outsider";
/// The liar's sock puppets: registered keys that never join.
pub const PUPPETS: [&str; 3] = ["puppet1", "puppet2", "puppet3"];
/// Names nobody holds a key for.
const GHOSTS: [&str; 2] = ["ghost", "casper"];
/// Frames from honest nodes the liar keeps for replays.
pub const MEMORY: usize = 16;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_millis(4000);
/// The group's name; frames for another group carry `OTHER_GROUP`.
const GROUP: &str = "lobby";
const OTHER_GROUP: &str = "other";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    /// Admitted as a member first (then hostile).
    Member,
    /// Never admitted.
    Outsider,
}

/// The liar: a random frame generator with a memory (see the module doc).
pub struct Liar {
    pub name: String,
    pub variant: Variant,
    me: MemberInfo,
    rng: ChaCha8Rng,
    /// Frames honest nodes sent to the liar or its puppets: (sender, frame), newest last.
    memory: VecDeque<(String, GroupMessage)>,
    /// The highest term, the leader, and the membership it has seen.
    term: u64,
    leader: Option<String>,
    stamp: (u64, u64),
    members: Vec<MemberInfo>,
    /// Whether it acknowledges heartbeats as a live member would (otherwise the
    /// leader soon removes it for silence).
    acks: bool,
    /// Sends hostile frames (false while it joins).
    hostile: bool,
    /// Sends nothing at all.
    quiet: bool,
    last_join: Option<Instant>,
    /// It gave every member its word (its own JOIN) once admitted, as members do.
    announced: bool,
    /// Frames it sent.
    pub sent: u64,
}

impl Liar {
    /// A liar of `variant` with its puppets, registered in `sim`.
    pub fn new(sim: &mut Sim, variant: Variant, seed: u64) -> Liar {
        let name = match variant {
            Variant::Member => LIAR,
            Variant::Outsider => OUTSIDER,
        };
        sim.add_hostile(name);
        for puppet in PUPPETS {
            sim.add_hostile(puppet);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let me = MemberInfo {
            name: name.to_owned(),
            addr: "10.0.0.66:7402".parse().expect("a literal address"),
            rank: rng.random(),
            incarnation: rng.random(),
        };
        Liar {
            name: name.to_owned(),
            variant,
            me,
            rng,
            memory: VecDeque::new(),
            term: 0,
            leader: None,
            stamp: (0, 0),
            members: Vec::new(),
            acks: true,
            hostile: false,
            quiet: false,
            last_join: None,
            announced: false,
            sent: 0,
        }
    }

    /// From now on, hostile; `acks`: whether it still answers heartbeats.
    pub fn turn_hostile(&mut self, acks: bool) {
        self.hostile = true;
        self.acks = acks;
    }

    /// From now on, silent.
    pub fn go_quiet(&mut self) {
        self.quiet = true;
    }

    /// Whether the membership the liar last heard of lists it.
    pub fn listed(&self) -> bool {
        self.members.iter().any(|m| m.name == self.name)
    }

    /// Reads what came in, answers as a member would, and (hostile) attacks.
    pub fn act(&mut self, sim: &mut Sim) {
        for (to, from, msg) in sim.take_inbox() {
            self.learn(&from, &msg);
            if !self.quiet && to == self.name {
                self.answer(sim, &from, &msg);
            }
            if self.memory.len() >= MEMORY {
                self.memory.pop_front();
            }
            self.memory.push_back((from, msg));
        }
        if self.quiet {
            return;
        }
        self.announce(sim);
        if !self.hostile {
            return self.join(sim);
        }
        if self.rng.random_bool(0.05) {
            self.peek_at_proxy(sim);
        }
        let burst = if self.rng.random_bool(0.05) {
            10
        } else {
            self.rng.random_range(1..=3)
        };
        for _ in 0..burst {
            self.attack(sim);
        }
    }

    /// Asks the honest leader to admit it, every `join_retry` until listed.
    fn join(&mut self, sim: &mut Sim) {
        if self.variant != Variant::Member || self.listed() {
            return;
        }
        let due = self
            .last_join
            .is_none_or(|at| sim.now - at >= sim.config.join_retry);
        let Some(l) = sim.oracle_leader().filter(|_| due) else {
            return;
        };
        self.last_join = Some(sim.now);
        let leader = sim.nodes[l].name.clone();
        let join = GroupMessage::Join(self.me.clone());
        self.send(sim, &self.name.clone(), &leader, join);
    }

    /// Once admitted, its word to every member (SPEC.md §12.5), as an honest member
    /// gives it: without it, the members would never vouch for its admission.
    fn announce(&mut self, sim: &mut Sim) {
        if self.variant != Variant::Member || self.announced || !self.listed() {
            return;
        }
        self.announced = true;
        let word = GroupMessage::Join(self.me.clone());
        let others: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.name != self.name)
            .map(|m| m.name.clone())
            .collect();
        for to in others {
            self.send(sim, &self.name.clone(), &to, word.clone());
        }
    }

    /// What a frame from an honest node tells about the group.
    fn learn(&mut self, from: &str, msg: &GroupMessage) {
        let claim = match msg {
            GroupMessage::Heartbeat {
                term,
                membership_term,
                membership_version,
                members,
                ..
            } => Some((*term, (*membership_term, *membership_version), members)),
            GroupMessage::Membership {
                term,
                membership_term,
                version,
                members,
            } => Some((*term, (*membership_term, *version), members)),
            _ => None,
        };
        if let Some((term, stamp, members)) = claim {
            if (term, stamp) >= (self.term, self.stamp) {
                self.leader = Some(from.to_owned());
                self.stamp = stamp;
                self.members = members.clone();
            }
        }
        let term = match msg {
            GroupMessage::Heartbeat { term, .. }
            | GroupMessage::Membership { term, .. }
            | GroupMessage::MembershipAck { term, .. } => *term,
            GroupMessage::VoteRequest(req) | GroupMessage::PreVoteRequest(req) => req.term,
            GroupMessage::Vote(vote) => vote.term,
            GroupMessage::Support(support) => support.term,
            _ => 0,
        };
        if term <= MAX_TERM {
            self.term = self.term.max(term);
        }
    }

    /// The member's part it keeps playing (if it acknowledges at all): acknowledge a
    /// leader's HEARTBEAT or MEMBERSHIP with its term and version.
    fn answer(&mut self, sim: &mut Sim, from: &str, msg: &GroupMessage) {
        if self.variant != Variant::Member {
            return;
        }
        if let GroupMessage::Join(_) = msg {
            // A member asking for its word (SPEC.md §12.5).
            let word = GroupMessage::Join(self.me.clone());
            return self.send(sim, &self.name.clone(), from, word);
        }
        if !self.acks {
            return;
        }
        let ack = match msg {
            GroupMessage::Heartbeat {
                term,
                membership_version,
                ..
            } => GroupMessage::MembershipAck {
                term: *term,
                version: *membership_version,
            },
            GroupMessage::Membership { term, version, .. } => GroupMessage::MembershipAck {
                term: *term,
                version: *version,
            },
            _ => return,
        };
        self.send(sim, &self.name.clone(), from, ack);
    }

    /// What anyone can learn: the proxy's record of the group.
    fn peek_at_proxy(&mut self, sim: &mut Sim) {
        let elapsed = sim.elapsed();
        if let Some(record) = sim.services.as_mut().and_then(|s| s.query(elapsed)) {
            self.term = self.term.max(record.term.min(MAX_TERM));
            if self.leader.is_none() {
                self.leader = Some(record.leader);
            }
        }
    }

    /// One hostile frame (or a flood of vote requests), to one honest node or to all.
    fn attack(&mut self, sim: &mut Sim) {
        let sender = self.sender();
        let frames = match self.rng.random_range(0..24) {
            0..=3 => vec![self.leader_claim(&sender)],
            4 => vec![self.claim_for_another(sim)],
            5..=6 => self.vote_requests(&sender),
            7 => vec![self.ack()],
            8..=9 => vec![self.vote(sim, &sender)],
            10..=11 => vec![self.support(sim, &sender)],
            12 => vec![self.transfer(sim)],
            13 => vec![self.join_for_another(sim)],
            14 => vec![self.leave_for_another(sim)],
            15 => vec![self.chat(sim, &sender)],
            16..=18 => return self.replay(sim),
            19..=20 => return self.answer_vote_request(sim),
            _ => vec![self.leader_claim(&sender)],
        };
        let sender = match frames.first() {
            // Only the candidate itself can ask for votes (a puppet for itself).
            Some(GroupMessage::VoteRequest(req) | GroupMessage::PreVoteRequest(req)) => {
                req.candidate.clone()
            }
            // The liar's own JOINs and LEAVEs are for other names; a puppet never joins.
            Some(GroupMessage::Join(_) | GroupMessage::Leave { .. }) => self.name.clone(),
            _ => sender,
        };
        let targets = self.targets(sim);
        for frame in frames {
            for to in &targets {
                self.send(sim, &sender, to, frame.clone());
            }
        }
    }

    /// Sends `frame` as `from` (the liar or a puppet), if the wire can carry it.
    fn send(&mut self, sim: &mut Sim, from: &str, to: &str, frame: GroupMessage) {
        if well_formed(&frame) {
            self.sent += 1;
            sim.inject(from, to, frame);
        }
    }

    /// The liar itself, mostly; now and then a puppet.
    fn sender(&mut self) -> String {
        if self.rng.random_bool(0.7) {
            self.name.clone()
        } else {
            self.puppet()
        }
    }

    fn puppet(&mut self) -> String {
        PUPPETS[self.rng.random_range(0..PUPPETS.len())].to_owned()
    }

    /// One honest node, or (one time in five) every one.
    fn targets(&mut self, sim: &Sim) -> Vec<String> {
        let honest: Vec<String> = sim.nodes.iter().map(|n| n.name.clone()).collect();
        if self.rng.random_bool(0.2) {
            honest
        } else {
            vec![honest[self.rng.random_range(0..honest.len())].clone()]
        }
    }

    fn honest_name(&mut self, sim: &Sim) -> String {
        sim.nodes[self.rng.random_range(0..sim.nodes.len())]
            .name
            .clone()
    }

    /// Any name: honest, the liar's, a puppet's, a ghost's.
    fn any_name(&mut self, sim: &Sim) -> String {
        match self.rng.random_range(0..6) {
            0..=2 => self.honest_name(sim),
            3 => self.name.clone(),
            4 => self.puppet(),
            _ => GHOSTS[self.rng.random_range(0..GHOSTS.len())].to_owned(),
        }
    }

    /// A term to lie with: old, current, a little or far ahead, or absurd.
    fn term(&mut self) -> u64 {
        let current = self.term;
        match self.rng.random_range(0..12) {
            0 => 0,
            1 => current.saturating_sub(self.rng.random_range(1..=3)),
            2..=3 => current,
            4..=6 => current.saturating_add(self.rng.random_range(1..=3)),
            7 => current.saturating_add(self.rng.random_range(4..=100)),
            8 => MAX_TERM - self.rng.random_range(0..=1),
            9 => MAX_TERM + 1,
            _ => u64::MAX,
        }
    }

    /// A member entry for `name`: the real one if the liar knows it, else made up.
    fn member(&mut self, name: &str) -> MemberInfo {
        if let Some(m) = self.members.iter().find(|m| m.name == name) {
            return m.clone();
        }
        if name == self.name {
            return self.me.clone();
        }
        MemberInfo {
            name: name.to_owned(),
            addr: format!("10.0.9.{}:7402", self.rng.random_range(1..250u8))
                .parse()
                .expect("a valid address"),
            rank: self.rng.random(),
            incarnation: self.rng.random(),
        }
    }

    /// A forged member list for `claimant`'s claim: the real one, one honest member
    /// dropped, one puppet added (a "single addition"), half the honest dropped and the
    /// puppets added, or the claimant and its puppets alone.
    fn forged_members(&mut self, claimant: &str) -> Vec<MemberInfo> {
        let mut list = self.members.clone();
        match self.rng.random_range(0..5) {
            0 => {}
            1 if !list.is_empty() => {
                let drop = self.rng.random_range(0..list.len());
                list.remove(drop);
            }
            2 => {
                let puppet = self.puppet();
                list.push(self.member(&puppet));
            }
            3 => {
                list.retain(|_| self.rng.random_bool(0.5));
                for puppet in PUPPETS {
                    list.push(self.member(puppet));
                }
            }
            _ => {
                list.clear();
                for puppet in PUPPETS {
                    list.push(self.member(puppet));
                }
            }
        }
        if !list.iter().any(|m| m.name == claimant) && self.rng.random_bool(0.8) {
            list.push(self.member(claimant));
        }
        list.dedup_by(|a, b| a.name == b.name);
        list.truncate(MAX_MEMBERS);
        list
    }

    /// A membership stamp for a claim in `term`: the real one, a version ahead,
    /// created in the claimed term, or created after it (malformed).
    fn forged_stamp(&mut self, term: u64) -> (u64, u64) {
        let (created, version) = self.stamp;
        match self.rng.random_range(0..5) {
            0 => (created, version),
            1 => (created, version + 1),
            2 => (term, version + 1),
            3 => (term, 1),
            _ => (term.saturating_add(1), version),
        }
    }

    /// HEARTBEAT or MEMBERSHIP: `claimant` (the sender) says it leads.
    fn leader_claim(&mut self, claimant: &str) -> GroupMessage {
        let term = self.term();
        let members = self.forged_members(claimant);
        let (membership_term, version) = self.forged_stamp(term);
        if self.rng.random_bool(0.5) {
            GroupMessage::Heartbeat {
                term,
                leader: claimant.to_owned(),
                membership_term,
                membership_version: version,
                members,
            }
        } else {
            GroupMessage::Membership {
                term,
                membership_term,
                version,
                members,
            }
        }
    }

    /// A HEARTBEAT in an honest member's name (the leader's, often).
    fn claim_for_another(&mut self, sim: &Sim) -> GroupMessage {
        let leader = match self.leader.clone() {
            Some(l) if self.rng.random_bool(0.5) => l,
            _ => self.honest_name(sim),
        };
        let term = self.term();
        let (membership_term, membership_version) = self.forged_stamp(term);
        let members = self.forged_members(&leader);
        GroupMessage::Heartbeat {
            term,
            leader,
            membership_term,
            membership_version,
            members,
        }
    }

    /// A (pre-)vote request, or a flood of them: one term repeated, or rising.
    fn vote_requests(&mut self, sender: &str) -> Vec<GroupMessage> {
        let count = if self.rng.random_bool(0.3) {
            self.rng.random_range(5..=20)
        } else {
            1
        };
        let rising = self.rng.random_bool(0.5);
        let pre_vote = self.rng.random_bool(0.3);
        let first = self.term();
        let (membership_term, membership_version) = match self.rng.random_range(0..4) {
            0..=1 => self.stamp,
            2 => (MAX_TERM, u64::MAX),
            _ => (0, 0),
        };
        let rank = self.rng.random();
        (0..count)
            .map(|k| {
                let term = if rising {
                    first.saturating_add(k)
                } else {
                    first
                };
                let req = VoteRequestMsg {
                    term,
                    candidate: sender.to_owned(),
                    membership_term,
                    membership_version,
                    rank,
                };
                if pre_vote {
                    GroupMessage::PreVoteRequest(req)
                } else {
                    GroupMessage::VoteRequest(req)
                }
            })
            .collect()
    }

    /// A MEMBERSHIP_ACK with a term of its choosing (huge, often).
    fn ack(&mut self) -> GroupMessage {
        let term = self.term();
        let version = if self.rng.random_bool(0.5) {
            self.stamp.1
        } else {
            self.rng.random()
        };
        GroupMessage::MembershipAck { term, version }
    }

    /// A VOTE: a refusal with a huge term, or a grant for anyone (a second vote in a
    /// term, maybe), in its own name or (dropped) another's, or for another group.
    fn vote(&mut self, sim: &Sim, sender: &str) -> GroupMessage {
        let granted = self.rng.random_bool(0.4);
        let term = if granted && self.rng.random_bool(0.7) {
            self.term + self.rng.random_range(0..=1)
        } else {
            self.term()
        };
        let voter = if self.rng.random_bool(0.9) {
            sender.to_owned()
        } else {
            self.honest_name(sim)
        };
        let group = if self.rng.random_bool(0.9) {
            GROUP
        } else {
            OTHER_GROUP
        };
        GroupMessage::Vote(VoteMsg {
            group: group.to_owned(),
            term,
            voter,
            candidate: self.any_name(sim),
            pre_vote: self.rng.random_bool(0.3),
            granted,
            signature: if self.rng.random_bool(0.5) {
                Vec::new()
            } else {
                vec![0x5a; 64]
            },
        })
    }

    /// A support lying about whom the sender follows, or a support query.
    fn support(&mut self, sim: &Sim, sender: &str) -> GroupMessage {
        let term = if self.rng.random_bool(0.6) {
            self.term + self.rng.random_range(0..=2)
        } else {
            self.term()
        };
        let supporter = if self.rng.random_bool(0.9) {
            sender.to_owned()
        } else {
            self.honest_name(sim)
        };
        let leader = if self.rng.random_bool(0.5) {
            self.name.clone()
        } else {
            self.any_name(sim)
        };
        let group = if self.rng.random_bool(0.95) {
            GROUP
        } else {
            OTHER_GROUP
        };
        GroupMessage::Support(SupportMsg {
            group: group.to_owned(),
            term,
            supporter,
            leader,
            query: self.rng.random_bool(0.3),
            pre_vote: self.rng.random_bool(0.3),
        })
    }

    fn transfer(&mut self, sim: &Sim) -> GroupMessage {
        let term = if self.rng.random_bool(0.5) {
            self.term
        } else {
            self.term()
        };
        GroupMessage::TransferLeadership {
            term,
            target: self.any_name(sim),
        }
    }

    /// A JOIN for someone else: a ghost, a puppet, an honest member (a new incarnation).
    fn join_for_another(&mut self, sim: &Sim) -> GroupMessage {
        let mut name = self.any_name(sim);
        if name == self.name {
            name = self.puppet();
        }
        let mut member = self.member(&name);
        if self.rng.random_bool(0.5) {
            member.incarnation = self.rng.random();
        }
        GroupMessage::Join(member)
    }

    /// A LEAVE in someone else's name (with its real incarnation if known).
    fn leave_for_another(&mut self, sim: &Sim) -> GroupMessage {
        let mut name = self.any_name(sim);
        if name == self.name {
            name = self.honest_name(sim);
        }
        let incarnation = self.member(&name).incarnation;
        GroupMessage::Leave { name, incarnation }
    }

    /// A chat line in an honest member's name, or in its own with any numbering.
    fn chat(&mut self, sim: &Sim, sender: &str) -> GroupMessage {
        let sender = if self.rng.random_bool(0.5) {
            self.honest_name(sim)
        } else {
            sender.to_owned()
        };
        GroupMessage::Chat(ChatLine {
            sender,
            incarnation: self.rng.random_range(0..3),
            seq: self.rng.random_range(0..20),
            direct: self.rng.random_bool(0.2),
            text: "spam".into(),
        })
    }

    /// An honest node's frame, resent (as the liar) to another honest node.
    fn replay(&mut self, sim: &mut Sim) {
        if self.memory.is_empty() {
            return;
        }
        let (origin, frame) = self.memory[self.rng.random_range(0..self.memory.len())].clone();
        let to = self.honest_name(sim);
        if to != origin {
            self.send(sim, &self.name.clone(), &to, frame);
        }
    }

    /// Answers a vote request it heard: grants it (whoever else it granted in that
    /// term), or refuses with an absurd term.
    fn answer_vote_request(&mut self, sim: &mut Sim) {
        let requests: Vec<(VoteRequestMsg, bool)> = self
            .memory
            .iter()
            .filter_map(|(_, frame)| match frame {
                GroupMessage::VoteRequest(req) => Some((req.clone(), false)),
                GroupMessage::PreVoteRequest(req) => Some((req.clone(), true)),
                _ => None,
            })
            .collect();
        if requests.is_empty() {
            return;
        }
        let (req, pre_vote) = requests[self.rng.random_range(0..requests.len())].clone();
        let granted = self.rng.random_bool(0.6);
        let vote = VoteMsg {
            group: GROUP.to_owned(),
            term: if granted { req.term } else { self.term() },
            voter: self.name.clone(),
            candidate: req.candidate.clone(),
            pre_vote,
            granted,
            signature: Vec::new(),
        };
        self.send(
            sim,
            &self.name.clone(),
            &req.candidate,
            GroupMessage::Vote(vote),
        );
    }
}

/// Whether the wire codec carries `frame` unchanged: what an authenticated peer can
/// really send.
pub fn well_formed(frame: &GroupMessage) -> bool {
    let mut bytes = Vec::new();
    if frame.to_wire(&mut bytes).is_err() {
        return false;
    }
    let mut frames = Frames::new(Carrier::Message, &bytes, 0);
    let decoded = match frames.next() {
        Some(Ok(decoded)) => GroupMessage::from_wire(&decoded),
        _ => return false,
    };
    frames.next().is_none() && decoded.as_ref() == Ok(frame)
}

/// What one byzantine schedule did, for the suite's summary.
#[derive(Debug, Clone, Default)]
pub struct ByzantineReport {
    /// The proxy's verdicts by outcome.
    pub verdicts: BTreeMap<String, u64>,
    pub variant: Option<Variant>,
    pub faults: bool,
    /// Frames the liar and its puppets sent.
    pub frames: u64,
    /// Frames the honest nodes rejected (all causes).
    pub rejections: u64,
    /// Elections honest nodes started, and the highest term one held.
    pub elections: u64,
    pub max_term: u64,
    /// Terms the liar won by a majority of honest votes.
    pub liar_elected: usize,
    /// Terms with two leaders, both elected with the liar's vote (SPEC.md §12.6).
    pub liar_double_votes: usize,
}

/// One byzantine schedule (see the module doc). A failure names the kind of schedule.
/// What [`byzantine_schedule`] will run for `seed`, without running it: the liar's
/// variant, and whether the schedule injects faults (crashes, restarts, partitions).
/// The draws are the schedule's own, in its order.
pub fn byzantine_kind(seed: u64) -> (Variant, bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6279_7a61_6e74_696e);
    let _n = rng.random_range(3..=7usize);
    let faults = rng.random_bool(0.4);
    let _loss = rng.random_range(0..3usize);
    let _dup = rng.random_range(0..3usize);
    let member = rng.random_bool(0.75);
    let variant = if member {
        Variant::Member
    } else {
        Variant::Outsider
    };
    (variant, faults)
}

pub fn byzantine_schedule(seed: u64) -> Result<ByzantineReport, String> {
    let mut kind = String::new();
    run_byzantine(seed, &mut kind).map_err(|why| format!("[{kind}] {why}"))
}

fn run_byzantine(seed: u64, kind: &mut String) -> Result<ByzantineReport, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6279_7a61_6e74_696e);
    let n = rng.random_range(3..=7usize);
    let faults = rng.random_bool(0.4);
    let loss = if faults {
        [0.0, 0.05, 0.3][rng.random_range(0..3usize)]
    } else {
        [0.0, 0.0, 0.05][rng.random_range(0..3usize)]
    };
    let mut sim = Sim::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xb12, n, loss);
    sim.dup = [0.0, 0.02, 0.2][rng.random_range(0..3usize)];
    let variant = if rng.random_bool(0.75) {
        Variant::Member
    } else {
        Variant::Outsider
    };
    let mut liar = Liar::new(&mut sim, variant, rng.random());
    *kind = format!(
        "{variant:?}, {n} honest, {}loss {loss}, dup {}",
        if faults { "faults, " } else { "" },
        sim.dup
    );
    form(&mut sim, n)?;
    if variant == Variant::Member {
        admit(&mut sim, &mut liar)?;
    }
    liar.turn_hostile(rng.random_bool(0.8));
    attack(&mut sim, &mut liar, &mut rng, n, faults)?;
    liar.go_quiet();
    liar.act(&mut sim);
    let leader = heal_and_settle(&mut sim, n)?;
    check_quiet_chat(&mut sim, leader)?;
    if let Some(failure) = sim.failure.take() {
        return Err(failure);
    }
    let rejections = sim.rejections_total();
    if rejections == 0 {
        return Err(format!(
            "the honest nodes rejected none of the liar's {} frames",
            liar.sent
        ));
    }
    Ok(ByzantineReport {
        verdicts: sim.services.take().map(|s| s.verdicts).unwrap_or_default(),
        variant: Some(variant),
        faults,
        frames: liar.sent,
        rejections,
        elections: sim.watch.elections,
        max_term: sim.watch.max_term,
        liar_elected: sim.watch.hostile_terms.len(),
        liar_double_votes: sim.watch.double_votes.len(),
    })
}

/// The liar joins like anyone (and behaves until every honest node lists it).
fn admit(sim: &mut Sim, liar: &mut Liar) -> Result<(), String> {
    let deadline = sim.now + 2000 * MS;
    while sim.now < deadline {
        liar.act(sim);
        sim.run_for(5 * MS);
        let everyone_lists_it = (0..sim.nodes.len()).all(|i| {
            sim.group(i)
                .is_some_and(|g| g.members().iter().any(|m| m.name == liar.name))
        });
        if everyone_lists_it && liar.listed() {
            return Ok(());
        }
    }
    Err(format!("{} was not admitted: {}", liar.name, describe(sim)))
}

/// The attack: the liar acts every 1–15 ms while members chat, and (with `faults`)
/// faults strike as in [`super::schedule`].
fn attack(
    sim: &mut Sim,
    liar: &mut Liar,
    rng: &mut ChaCha8Rng,
    n: usize,
    faults: bool,
) -> Result<(), String> {
    let end = sim.now + ATTACK;
    let mut next_chat = sim.now + rng.random_range(5..40) * MS;
    let mut next_liar = sim.now + rng.random_range(1..15) * MS;
    let mut next_fault = sim.now + rng.random_range(50..400) * MS;
    let mut next_rejoin = sim.now + 300 * MS;
    while sim.now < end {
        let mut next = next_chat.min(next_liar).min(next_rejoin);
        if faults {
            next = next.min(next_fault);
        }
        sim.run_for(next.saturating_duration_since(sim.now));
        if sim.now >= next_chat {
            random_chat(sim, rng, n);
            next_chat = sim.now + rng.random_range(5..40) * MS;
        }
        if sim.now >= next_liar {
            liar.act(sim);
            next_liar = sim.now + rng.random_range(1..15) * MS;
        }
        if sim.now >= next_rejoin {
            sim.rejoin_strays();
            next_rejoin = sim.now + 300 * MS;
        }
        if faults && sim.now >= next_fault {
            random_fault(sim, rng, n);
            next_fault = sim.now + rng.random_range(50..400) * MS;
        }
        crash_departed(sim, n);
        if let Some(failure) = sim.failure.take() {
            return Err(failure);
        }
    }
    Ok(())
}
