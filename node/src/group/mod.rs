//! The sans-IO [`Group`] state machine.
//!
//! Inputs: [`Group::step`] (a message from an authenticated peer), [`Group::tick`] (time
//! passed), [`Group::vote_signed`] (a signature asked by [`Output::SignVote`]; RSA is the
//! driver's business, and slow) and the commands [`Group::bootstrap`], [`Group::join`],
//! [`Group::send_chat`], [`Group::leave`], [`Group::transfer_leadership`]. Outputs: drain
//! [`Group::poll_output`] after every input, then sleep until [`Group::poll_timeout`].
//!
//! Poll order and the persistence contract: outputs come out in the order the driver must
//! perform them. An [`Output::Persist`] must be written durably *before* any output that
//! follows it is performed; in particular a VOTE is always preceded by the `Persist` of the
//! vote it carries (Raft §5.2 / Figure 2: "updated on stable storage before responding").

mod authority;
mod chat;
mod election;
mod membership;
mod timers;
mod vetting;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use sockmsg_wire::frame::MessageClass;

use crate::message::{GroupMessage, MemberInfo, VoteMsg};
use timers::{Timer, Timers};

pub use authority::{
    Rejections, Violation, MAX_FORMER_MEMBERS, MAX_HELD_CHAT, MAX_TERM, SUPPORT_WINDOW, TERM_SLACK,
};
pub use vetting::MAX_WORDS;

/// Timing of the group protocol (config.yml `group:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The group's name (signed into votes).
    pub group: String,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// A leader removes a member it has not heard from for this long. Must exceed
    /// `election_timeout_max` (the check-quorum window) so that a leader cut off in a
    /// minority steps down before it could shrink the group to what it still reaches.
    pub failure_removal: Duration,
    /// A joining node repeats its JOIN this often until it is admitted.
    pub join_retry: Duration,
}

impl GroupConfig {
    pub fn new(group: impl Into<String>) -> Self {
        GroupConfig {
            group: group.into(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            failure_removal: Duration::from_millis(1000),
            join_retry: Duration::from_millis(300),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.election_timeout_min
        {
            return Err(ConfigError(
                "heartbeat_interval must be in (0, election_timeout_min)",
            ));
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(ConfigError(
                "election_timeout_min must be < election_timeout_max",
            ));
        }
        if self.failure_removal <= self.election_timeout_max {
            return Err(ConfigError(
                "failure_removal must exceed election_timeout_max (the check-quorum window)",
            ));
        }
        if self.join_retry.is_zero() {
            return Err(ConfigError("join_retry must be positive"));
        }
        sockmsg_wire::Name::new(&self.group)
            .map_err(|_| ConfigError("group is not a valid name"))?;
        Ok(())
    }
}

/// An invalid [`GroupConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid group config: {0}")]
pub struct ConfigError(pub &'static str);

/// What must survive a restart: Raft Figure 2's currentTerm and votedFor, and the
/// membership (Raft keeps its configuration in the persistent log). Without the
/// membership a restarted voter would forget its version and could vote for a candidate
/// with a stale membership whose quorum does not overlap the current one.
/// `(membership_term, membership_version)` orders memberships like Raft's
/// (lastLogTerm, lastLogIndex) (dissertation §4.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub voted_for: Option<String>,
    /// The term of the leader that created the membership.
    pub membership_term: u64,
    pub membership_version: u64,
    pub members: Vec<MemberInfo>,
    /// Names that were in memberships this node held before and are not in `members`,
    /// oldest first, at most [`MAX_FORMER_MEMBERS`]: their supports still count when a
    /// leader claims a membership that lists them again (SPEC.md §12.2), after a
    /// restart too.
    pub former_members: Vec<String>,
    /// Votes this node cast in terms after `term`, in term order, at most
    /// [`MAX_VOTES_AHEAD`](authority::MAX_VOTES_AHEAD): a member that steps back to an
    /// earlier term (SPEC.md §12.3) keeps the vote of the term it leaves, so that when it
    /// reaches that term again it has voted there already and votes for no one else.
    pub votes_ahead: Vec<(u64, String)>,
}

/// Signs granted votes (SPEC.md §9) for [`Output::SignVote`]. The driver uses the
/// node's RSA key (off its event loop); the simulator a memoised or a cheap
/// deterministic signer.
pub trait VoteSigner {
    fn sign_vote(&self, input: &[u8]) -> Vec<u8>;
}

/// What the state machine tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// This node is listed, with its incarnation, in a membership from a leader.
    Joined,
    MembersChanged {
        version: u64,
        members: Vec<MemberInfo>,
    },
    /// The leader this node knows changed (`None`: none known in `term`).
    LeaderChanged { term: u64, leader: Option<String> },
    ChatReceived {
        sender: String,
        incarnation: u64,
        seq: u64,
        /// Sent to this node alone ([`Group::send_direct`]).
        direct: bool,
        text: String,
    },
    /// Our line `seq` reached `to` (`None`: there was nobody to send it to); `delivered`
    /// of the line's `of` recipients have it so far.
    Delivered {
        seq: u64,
        to: Option<String>,
        delivered: usize,
        of: usize,
    },
    /// Our line `seq` could not be delivered to `to` (its session was lost first).
    Undelivered { seq: u64, to: String },
    /// The leader has not heard from `name` for `failure_removal` and removes it.
    PeerUnreachable { name: String },
    /// The leader removed this node from the group; it may [`Group::join`] again.
    Removed,
    /// [`Group::leave`] finished; the node takes no further part.
    Left,
}

/// One thing for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send {
        to: String,
        class: MessageClass,
        frame: GroupMessage,
    },
    /// Write durably before performing any later output (see the module docs).
    Persist(HardState),
    Event(GroupEvent),
    /// Sign this granted vote of ours (SPEC.md §9), not before `at`, and hand it back
    /// through [`Group::vote_signed`]. The grant itself has gone out unsigned (the
    /// session authenticates it and the candidate counts it); only the proxy needs the
    /// signature. `at` is one heartbeat interval away: an RSA signature is milliseconds
    /// of CPU, and made at once by every voter it competed with the election it is
    /// for (on a 2-core host, it put the planned handover's p99 at 13 ms instead of
    /// 2.5 ms). Dropped if the node stops first.
    SignVote {
        vote: VoteMsg,
        at: Instant,
    },
    /// Where `name` listens, by a membership this node is vetting (SPEC.md §12.5) and
    /// is about to send to: the leader's word, so use it only for a name whose address
    /// is not known yet.
    Locate {
        name: String,
        addr: std::net::SocketAddr,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("this node is not a member of the group")]
    NotMember,
    #[error("this node has left the group")]
    Left,
    #[error("this node is not the leader")]
    NotLeader,
    #[error("no other member to hand leadership to")]
    NoTransferTarget,
    #[error("{0} is not another member of the group")]
    UnknownMember(String),
    #[error("chat line is empty or longer than {max} bytes")]
    LineLength { max: usize },
}

/// Raft roles (§5.1), with the pre-vote phase (thesis §9.6) as its own role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// Left the group (after [`Group::leave`]).
    Left,
}

/// What the leader knows about one follower.
#[derive(Debug, Clone)]
struct Progress {
    /// Its last acknowledgement in our term: what check-quorum counts.
    last_heard: Instant,
    /// Its last acknowledgement in any term: what failure detection counts. A member
    /// that reports a later term is alive, only behind our standing again.
    last_alive: Instant,
    acked_version: u64,
}

impl Progress {
    fn new(now: Instant) -> Progress {
        Progress {
            last_heard: now,
            last_alive: now,
            acked_version: 0,
        }
    }
}

/// The group state machine of one node.
pub struct Group {
    config: GroupConfig,
    me: MemberInfo,
    rng: ChaCha8Rng,
    outputs: VecDeque<Output>,
    timers: Timers,

    // Raft state.
    hard: HardState,
    role: Role,
    leader: Option<String>,
    /// The (term, leader) last told in `GroupEvent::LeaderChanged`.
    announced: (u64, Option<String>),
    /// When this node last heard from a live leader (pre-vote lease, thesis §9.6).
    last_heard_leader: Option<Instant>,
    /// The (term, leader) of the last HEARTBEAT we took, and when: a leader heartbeats
    /// only the members it lists, so this is what says it still counts us in (see
    /// [`Group::vouches_for_leader`]).
    last_heartbeat: Option<(u64, String, Instant)>,
    /// Pre-votes or votes granted to us in the current (pre-)election, with the
    /// signature once it has come (empty before).
    votes: HashMap<String, Vec<u8>>,
    /// PreCandidate: the term we ask pre-votes for (see [`Group::pre_vote_term`]).
    pre_vote_term: u64,
    /// Member → the term its last pre-vote answer told us it is below or at: its own
    /// term in a refusal, the asked term − 1 in a grant. Bounded by the membership.
    peer_terms: BTreeMap<String, u64>,
    /// The granted votes that elected us, signed or still to be (kept while we lead).
    proof: BTreeMap<String, Vec<u8>>,
    /// How many signed votes make the proof: a majority of the membership we were
    /// elected in (it may grow or shrink while we lead).
    proof_needed: usize,
    /// Leader: when we stand again if the proof is still short (see
    /// [`Group::on_check_quorum`]).
    proof_deadline: Option<Instant>,
    /// Votes we granted in the current term whose signed copy has not gone out yet: a
    /// leaving node stays until it has, or a group of two could not prove its new
    /// leader to the proxy.
    signatures_owed: usize,

    // Membership.
    members: Vec<MemberInfo>,
    /// The term of the leader that created `members` (compared before `version`).
    membership_term: u64,
    version: u64,
    joined: bool,
    /// Whom to send JOIN while no leader is known (see [`Group::join_via`]).
    join_contacts: Vec<String>,
    /// Leader only: per follower.
    progress: HashMap<String, Progress>,
    /// Leader only: the change in flight and the previous membership it needs a majority of.
    pending: Option<membership::Pending>,
    /// Leader only: changes waiting for the one in flight.
    queue: VecDeque<membership::Change>,
    /// leave() was called while leading, in this term: we stay until we have voted in a
    /// later term (for the transfer target) or the deadline passes.
    leaving: Option<u64>,
    /// While leaving: we adopted our successor's MEMBERSHIP stamped with its term (a
    /// reliable message, so our acknowledgement goes reliably too).
    leave_restamped: bool,
    /// Names that said LEAVE, with the incarnation: removed when we lead.
    departed: HashMap<String, u64>,

    // Chat.
    chat: chat::ChatState,

    /// What we were told about who leads which term, and what we refused (SPEC.md §12).
    evidence: authority::Evidence,
    /// The words and answers that vouch for a leader's membership changes (SPEC.md §12.5).
    vetting: vetting::Vetting,
}

impl Group {
    /// A node starting at `now`. `hard` is what it persisted before (default for a new
    /// node): a node whose persisted membership lists it is a member at once (it votes
    /// and stands), but should still [`Group::join`] to announce its new incarnation; any
    /// other node calls [`Group::bootstrap`] or [`Group::join`]. `rng` seeds the
    /// election timeouts, so a run replays from its seed.
    pub fn new(
        config: GroupConfig,
        me: MemberInfo,
        hard: HardState,
        rng: ChaCha8Rng,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        sockmsg_wire::Name::new(&me.name).map_err(|_| ConfigError("member name is invalid"))?;
        let hard_term = hard.term;
        let members = hard.members.clone();
        let version = hard.membership_version;
        let membership_term = hard.membership_term;
        let mut group = Group {
            config,
            me,
            rng,
            outputs: VecDeque::new(),
            timers: Timers::default(),
            hard,
            role: Role::Follower,
            leader: None,
            announced: (hard_term, None),
            last_heard_leader: None,
            last_heartbeat: None,
            votes: HashMap::new(),
            pre_vote_term: 0,
            peer_terms: BTreeMap::new(),
            proof: BTreeMap::new(),
            proof_needed: 0,
            proof_deadline: None,
            signatures_owed: 0,
            leave_restamped: false,
            members,
            membership_term,
            version,
            joined: false,
            join_contacts: Vec::new(),
            progress: HashMap::new(),
            pending: None,
            queue: VecDeque::new(),
            departed: HashMap::new(),
            leaving: None,
            chat: chat::ChatState::default(),
            evidence: authority::Evidence::default(),
            vetting: vetting::Vetting::default(),
        };
        group.evidence.started = Some(now);
        group.recover_absurd_term();
        group.tidy_votes_ahead();
        group.reset_election_timer(now);
        // A vote granted before a restart may never have been signed, and its candidate
        // may need the signature to prove its election: sign it (again).
        if let Some(candidate) = group.hard.voted_for.clone() {
            if candidate != group.me.name {
                let vote = group.vote(group.hard.term, &candidate, false, true);
                group.evidence.signature_asked = Some((group.hard.term, candidate));
                group.sign_later(now, vote);
            }
        }
        Ok(group)
    }

    // ---- getters ----

    pub fn name(&self) -> &str {
        &self.me.name
    }
    pub fn me(&self) -> &MemberInfo {
        &self.me
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.hard.term
    }
    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }
    pub fn members(&self) -> &[MemberInfo] {
        &self.members
    }
    pub fn membership_version(&self) -> u64 {
        self.version
    }
    /// The term of the leader that created the current membership.
    pub fn membership_term(&self) -> u64 {
        self.membership_term
    }
    /// Whether [`Group::leave`] was called and the node stays only to vote for the
    /// member it handed leadership to.
    pub fn is_leaving(&self) -> bool {
        self.leaving.is_some()
    }
    /// Whether this node is listed in its own view of the membership.
    pub fn is_member(&self) -> bool {
        self.role != Role::Left && self.members.iter().any(|m| m.name == self.me.name)
    }
    /// The signed votes that elected this node, for the proxy's announcement (§7.23):
    /// `None` unless it leads and holds signatures from a majority of the membership it
    /// was elected in (they come a few milliseconds after the grants that elected it).
    pub fn election_proof(&self) -> Option<Vec<(String, Vec<u8>)>> {
        let signed: Vec<(String, Vec<u8>)> = self
            .proof
            .iter()
            .filter(|(_, signature)| !signature.is_empty())
            .map(|(voter, signature)| (voter.clone(), signature.clone()))
            .collect();
        (self.role == Role::Leader && signed.len() >= self.proof_needed).then_some(signed)
    }

    // ---- inputs ----

    /// A message from the authenticated session peer `from`.
    pub fn step(&mut self, now: Instant, from: &str, msg: GroupMessage) {
        if self.role == Role::Left {
            return;
        }
        if !self.authorize(now, from, &msg) {
            return;
        }
        self.note_member_term(from, &msg);
        self.raise_ceiling(now);
        let membership_stamp = match &msg {
            GroupMessage::Membership {
                membership_term, ..
            } => Some(*membership_term),
            _ => None,
        };
        match msg {
            GroupMessage::Heartbeat {
                term,
                leader: _,
                membership_term,
                membership_version,
                members,
            } => {
                let stamp = (membership_term, membership_version);
                self.on_leader_message(now, from, term, stamp, members, false);
                if self.hard.term == term && self.leader.as_deref() == Some(from) {
                    self.last_heartbeat = Some((term, from.to_owned(), now));
                }
            }
            GroupMessage::Membership {
                term,
                membership_term,
                version,
                members,
            } => self.on_leader_message(now, from, term, (membership_term, version), members, true),
            GroupMessage::MembershipAck { term, version } => {
                self.on_membership_ack(now, from, term, version)
            }
            GroupMessage::PreVoteRequest(req) => self.on_pre_vote_request(now, req),
            GroupMessage::VoteRequest(req) => self.on_vote_request(now, req),
            GroupMessage::Vote(vote) => self.on_vote(now, vote),
            GroupMessage::Support(support) => self.on_support(now, from, support),
            GroupMessage::TransferLeadership { term, target } => {
                self.on_transfer_leadership(now, from, term, target)
            }
            GroupMessage::Join(member) => self.on_join(now, from, member),
            GroupMessage::Leave { name, incarnation } => self.on_leave(now, name, incarnation),
            GroupMessage::Chat(line) => self.on_chat(line),
        }
        // A new membership or term may settle what was held for want of it.
        self.release_held_chat();
        self.retry_claims(now);
        if self.role == Role::Left {
            return;
        }
        if let (Some(led), Some(stamp)) = (self.leaving, membership_stamp) {
            if stamp > led && self.membership_term == stamp {
                self.leave_restamped = true;
            }
        }
        self.leave_if_handed_over();
    }

    /// Our granted vote `vote` (from [`Output::SignVote`]), now signed: our own goes
    /// into our proof, any other to its candidate (if still in this term; a stale one
    /// could not help anyone).
    pub fn vote_signed(&mut self, vote: VoteMsg) {
        if vote.candidate != self.me.name {
            self.signatures_owed = self.signatures_owed.saturating_sub(1);
        }
        if self.role == Role::Left || vote.voter != self.me.name || vote.term != self.hard.term {
            return;
        }
        if vote.candidate == self.me.name {
            self.keep_signature(vote.voter, vote.signature);
        } else {
            let candidate = vote.candidate.clone();
            self.send(&candidate, GroupMessage::Vote(vote));
            self.leave_if_handed_over();
        }
    }

    /// A leaving former leader goes once it has voted for its successor, holds the
    /// membership the successor stamped with its term (dissertation §4.1: the new
    /// leader changes no membership, so cannot remove us, until a majority holds one;
    /// in a group of two that needs us) and has sent the signed copy of its vote (which
    /// the successor shows the proxy).
    fn leave_if_handed_over(&mut self) {
        let Some(led) = self.leaving else { return };
        let voted = self.hard.term > led
            && self
                .hard
                .voted_for
                .as_ref()
                .is_some_and(|v| *v != self.me.name);
        if voted && self.leave_restamped && self.signatures_owed == 0 && self.role != Role::Leader {
            self.finish_leave();
        }
    }

    /// Time has passed: fire every timer due at `now`.
    pub fn tick(&mut self, now: Instant) {
        if self.role == Role::Left {
            return;
        }
        while let Some(timer) = self.timers.expired(now) {
            match timer {
                Timer::Election => self.on_election_timeout(now),
                Timer::Heartbeat => self.on_heartbeat_timer(now),
                Timer::CheckQuorum => self.on_check_quorum(now),
                Timer::JoinRetry => self.on_join_retry(now),
                Timer::Vetting => self.revet_and_ack(now),
            }
        }
    }

    // ---- outputs ----

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest instant [`Group::tick`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.role == Role::Left {
            return None;
        }
        self.timers.next()
    }

    // ---- helpers shared by the submodules ----

    fn send(&mut self, to: &str, frame: GroupMessage) {
        let class = frame.class();
        self.send_class(to, class, frame);
    }

    fn send_class(&mut self, to: &str, class: MessageClass, frame: GroupMessage) {
        self.outputs.push_back(Output::Send {
            to: to.to_owned(),
            class,
            frame,
        });
    }

    fn event(&mut self, event: GroupEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    /// Asks the driver to write the hard state. Only the newest state matters to a
    /// restart, so a `Persist` not yet followed by anything that must come after it (a
    /// send, a signature; events are only told) is updated in place: one write and one
    /// fsync where a voter moving to a new term and voting in it would make two.
    fn persist(&mut self) {
        for output in self.outputs.iter_mut().rev() {
            match output {
                Output::Event(_) => continue,
                Output::Persist(state) => {
                    *state = self.hard.clone();
                    return;
                }
                Output::Send { .. } | Output::SignVote { .. } | Output::Locate { .. } => break,
            }
        }
        self.outputs.push_back(Output::Persist(self.hard.clone()));
    }

    /// Names of the other members, in membership order.
    fn others(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.name != self.me.name)
            .map(|m| m.name.clone())
            .collect()
    }

    fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

#[cfg(test)]
mod tests;
