//! The node's business with the proxy, as a sans-IO state machine: whom to ask to be
//! admitted, when to claim a new group, when to announce and refresh a leadership, when
//! to found the group again.
//!
//! [`Rendezvous`] owns the policy and no I/O: the caller (the tokio driver, or the
//! group simulator, which runs this very code against the proxy's own [`Directory`]
//! rules) polls it for [`ProxyRequest`]s, performs them, and hands each answer back.
//! Time comes in as arguments; nothing here reads a clock or a socket.
//!
//! ```text
//!   Group event ─────────────► Rendezvous::handle_event
//!   loop turn ───────────────► Rendezvous::poll_request(now, wall_ms, &mut group)
//!                                 └─► ProxyRequest (Query | Claim | Announce) ─► the proxy
//!   the proxy's answer ──────► Rendezvous::handle_answer(now, &mut group, answer)
//!   Rendezvous::poll_event ──► RendezvousEvent (notices for the user)
//!   sleep until Rendezvous::poll_timeout
//! ```
//!
//! One request is outstanding at a time: a node asks or announces, never both (a leader
//! does not query, a follower does not announce), and a late answer to a request made
//! in another role is still meaningful (see [`Rendezvous::handle_answer`]).
//!
//! [`Directory`]: sockmsg_proxy::Directory

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockmsg_proxy::client::RecordDraft;
use sockmsg_proxy::handler::RecordSummary;
use sockmsg_proxy::{GroupRank, Kind};
use sockmsg_wire::frame::ProxyStatus;

use crate::group::{Group, GroupEvent, Role};
use crate::message::MemberInfo;

/// The timings of the policy. [`RendezvousConfig::default`] is what ships, and what the
/// group simulator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RendezvousConfig {
    /// How often a leader re-announces an unchanged record: the proxy forgets it after
    /// its TTL (5 s by default), and each announcement costs an RSA signature, so a
    /// little more than half the TTL (an exchange retries over UDP, then TCP, well
    /// within the rest).
    pub refresh_interval: Duration,
    /// How often a node that is not (or no longer) admitted asks the proxy again.
    pub requery_interval: Duration,
    /// A member with no leader for this long asks the proxy too (it may have been
    /// removed without hearing of it, or the others elected a leader it cannot reach).
    pub leaderless_requery: Duration,
    /// A node with a past in the group that finds no record at the proxy for this long
    /// founds the group again (in a term after every term it saw): its old members are
    /// gone.
    pub refound_after: Duration,
    /// How often a member that follows a leader asks the proxy whether another group of
    /// the same name holds the name (SPEC.md §12.7): how soon the members of a group
    /// that another outranks learn that they are to merge into it.
    pub merge_check_interval: Duration,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            refresh_interval: Duration::from_secs(3),
            requery_interval: Duration::from_secs(1),
            leaderless_requery: Duration::from_secs(1),
            refound_after: Duration::from_secs(10),
            merge_check_interval: Duration::from_secs(2),
        }
    }
}

/// What the caller is to send to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// LEADER_QUERY for the group.
    Query,
    /// LEADER_CLAIM of term 1, to be signed with the node's key.
    Claim(RecordDraft),
    /// LEADER_ANNOUNCE, to be signed with the node's key, with the signed votes that
    /// elected it.
    Announce {
        draft: RecordDraft,
        votes: Vec<(String, Vec<u8>)>,
    },
}

impl ProxyRequest {
    /// The record it proposes (none for a query), and as what.
    pub fn proposal(&self) -> Option<(Kind, &RecordDraft)> {
        match self {
            ProxyRequest::Query => None,
            ProxyRequest::Claim(draft) => Some((Kind::Claim, draft)),
            ProxyRequest::Announce { draft, .. } => Some((Kind::Announce, draft)),
        }
    }
}

/// The proxy's verdict on a claim or an announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused {
        status: ProxyStatus,
        reason: String,
        /// The record the proxy holds, when it is why (SPEC.md §7.24).
        held: Option<RecordSummary>,
    },
}

/// The answer to the outstanding [`ProxyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyAnswer {
    /// To a query: the record the proxy holds, or none (NO_LEADER).
    Record(Option<RecordSummary>),
    /// To a claim or an announcement.
    Verdict(Verdict),
    /// No answer (the proxy is down or unreachable), or one this node cannot read.
    Failed(String),
}

/// What the node should tell its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RendezvousEvent {
    Notice(String),
    /// This node founded the group (a new one, or again): a group of its own, in which
    /// it stands as leader. (A notice says so too.)
    Founded,
}

/// The request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asking {
    Query,
    Claim,
    Announce,
}

/// The last record this node announced: what it said, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Announced {
    term: u64,
    version: u64,
    at: Instant,
    issued_at_ms: u64,
}

/// One node's rendezvous with the proxy. See the module documentation.
#[derive(Debug)]
pub struct Rendezvous {
    config: RendezvousConfig,
    group_name: String,
    me: String,
    addr: SocketAddr,
    /// Whether the persisted state said we never belonged to the group: only such a node
    /// claims a group the proxy knows no leader of; one with a past waits for its
    /// members first.
    newcomer: bool,
    /// Whether this incarnation has been admitted (GroupEvent::Joined, until Removed). A
    /// restarted member is listed in its persisted membership, but under its previous
    /// incarnation and address: it must still ask to be admitted anew.
    joined: bool,
    /// The leader this incarnation last sent a JOIN to (the group repeats it).
    join_sent_to: Option<String>,
    asking: Option<Asking>,
    last_query: Option<Instant>,
    /// Since when the proxy has answered NO_LEADER without a break.
    no_record_since: Option<Instant>,
    /// Since the first term without a leader: a node that moves from term to term
    /// without following anyone is still leaderless.
    leaderless_since: Option<Instant>,
    announced: Option<Announced>,
    /// The proxy knows no leader and this newcomer is to claim the group.
    claim_due: bool,
    /// The last request got no answer (said once, until one comes).
    unreachable: bool,
    stopped: bool,
    events: VecDeque<RendezvousEvent>,
}

impl Rendezvous {
    /// `newcomer`: the node's persisted state holds no term and no membership.
    pub fn new(
        config: RendezvousConfig,
        group_name: &str,
        me: &MemberInfo,
        newcomer: bool,
        now: Instant,
    ) -> Rendezvous {
        Rendezvous {
            config,
            group_name: group_name.to_owned(),
            me: me.name.clone(),
            addr: me.addr,
            newcomer,
            joined: false,
            join_sent_to: None,
            asking: None,
            last_query: None,
            no_record_since: None,
            leaderless_since: Some(now),
            announced: None,
            claim_due: false,
            unreachable: false,
            stopped: false,
            events: VecDeque::new(),
        }
    }

    /// Whether this incarnation is admitted.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// The node is leaving: no more requests.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Follows what the group reports.
    pub fn handle_event(&mut self, now: Instant, event: &GroupEvent) {
        match event {
            GroupEvent::LeaderChanged { leader, .. } => {
                self.leaderless_since = match leader {
                    Some(_) => None,
                    None => Some(self.leaderless_since.unwrap_or(now)),
                };
            }
            GroupEvent::Joined => {
                self.newcomer = false;
                self.joined = true;
            }
            GroupEvent::Removed => {
                self.joined = false;
                self.join_sent_to = None;
                self.last_query = None;
            }
            _ => {}
        }
    }

    /// When [`poll_request`](Rendezvous::poll_request) next has something to do, if the
    /// group's state does not change before (the caller polls again after every input
    /// to the group anyway). Never a time that has passed unless a poll would act on it.
    pub fn poll_timeout(&self, group: &Group) -> Option<Instant> {
        if self.stopped || self.asking.is_some() {
            return None;
        }
        if group.role() == Role::Leader {
            // A new term or membership is announced as soon as its votes are signed,
            // which is an input to the group; only the refresh is a deadline.
            return self
                .announced
                .filter(|a| a.term == group.term() && a.version == group.membership_version())
                .map(|a| a.at + self.config.refresh_interval);
        }
        if self.claim_due {
            // Due already: since the query that found no leader.
            return self.last_query;
        }
        let last_query = self.last_query?;
        if self.joined && group.leader().is_none() {
            // Asks once it has been without a leader for `leaderless_requery`.
            let leaderless_long = self.leaderless_since? + self.config.leaderless_requery;
            return Some(leaderless_long.max(last_query + self.config.requery_interval));
        }
        let interval = if self.joined {
            self.config.merge_check_interval
        } else {
            self.config.requery_interval
        };
        Some(last_query + interval)
    }

    /// The next request for the proxy, if one is due: a query while not admitted or long
    /// without a leader; while leading, an announcement of each new term and membership,
    /// and a refresh every `refresh_interval`. Also sends a JOIN to a leader the node
    /// already hears from (the best contact), once per leader.
    pub fn poll_request(
        &mut self,
        now: Instant,
        wall_ms: u64,
        group: &mut Group,
    ) -> Option<ProxyRequest> {
        if self.stopped {
            return None;
        }
        let leading = group.role() == Role::Leader;
        if !self.joined && !leading {
            if let Some(leader) = group.leader().map(str::to_owned) {
                if self.join_sent_to.as_deref() != Some(leader.as_str()) {
                    let _ = group.join(now, &leader);
                    self.join_sent_to = Some(leader);
                }
            }
        }
        if self.asking.is_some() {
            return None;
        }
        if std::mem::take(&mut self.claim_due) && !leading {
            return Some(self.claim(wall_ms));
        }
        if leading {
            return self.announce_if_due(now, wall_ms, group);
        }
        let due = self
            .last_query
            .is_none_or(|at| now - at >= self.query_interval(now, group));
        if due {
            self.last_query = Some(now);
            self.asking = Some(Asking::Query);
            return Some(ProxyRequest::Query);
        }
        None
    }

    /// How often a node that does not lead asks the proxy: often while not admitted or
    /// long without a leader (to find whom to join), now and then while following (to
    /// learn of another group of the same name).
    fn query_interval(&self, now: Instant, group: &Group) -> Duration {
        let leaderless_long = self
            .leaderless_since
            .is_some_and(|since| now - since >= self.config.leaderless_requery);
        if !self.joined || leaderless_long || group.leader().is_none() {
            self.config.requery_interval
        } else {
            self.config.merge_check_interval
        }
    }

    fn announce_if_due(
        &mut self,
        now: Instant,
        wall_ms: u64,
        group: &Group,
    ) -> Option<ProxyRequest> {
        let (term, version) = (group.term(), group.membership_version());
        let due = self.announced.is_none_or(|a| {
            a.term != term || a.version != version || now - a.at >= self.config.refresh_interval
        });
        if !due {
            return None;
        }
        // A new leader's votes are signed a few milliseconds after they elected it.
        let votes = group.election_proof()?;
        // Strictly increasing: the proxy takes a refresh only if it is newer.
        let issued_at_ms = match self.announced {
            Some(a) => wall_ms.max(a.issued_at_ms + 1),
            None => wall_ms,
        };
        self.announced = Some(Announced {
            term,
            version,
            at: now,
            issued_at_ms,
        });
        let draft = RecordDraft {
            group: self.group_name.clone(),
            term,
            leader: self.me.clone(),
            leader_addr: self.addr,
            membership_version: version,
            members: group.members().iter().map(|m| m.name.clone()).collect(),
            issued_at_ms,
        };
        self.asking = Some(Asking::Announce);
        Some(ProxyRequest::Announce { draft, votes })
    }

    /// The answer to the outstanding request.
    pub fn handle_answer(&mut self, now: Instant, group: &mut Group, answer: ProxyAnswer) {
        let Some(asked) = self.asking.take() else {
            return;
        };
        let failed = matches!(answer, ProxyAnswer::Failed(_));
        if !failed && std::mem::take(&mut self.unreachable) {
            self.notice("the proxy answers again".into());
        }
        match (asked, answer) {
            (_, ProxyAnswer::Failed(why)) => {
                // Said once, not at every retry: members ask every few seconds.
                if !std::mem::replace(&mut self.unreachable, true) {
                    self.notice(format!("proxy: {why} (asking again until it does)"));
                }
            }
            (Asking::Query, ProxyAnswer::Record(Some(record))) => {
                self.no_record_since = None;
                self.on_record(now, group, &record);
            }
            (Asking::Query, ProxyAnswer::Record(None)) => self.on_no_record(now, group),
            (Asking::Claim, ProxyAnswer::Verdict(verdict)) => self.on_claim(now, group, verdict),
            (Asking::Announce, ProxyAnswer::Verdict(verdict)) => {
                self.on_announce(now, group, verdict)
            }
            (asked, answer) => {
                tracing::debug!(?asked, ?answer, "an answer that does not fit the request")
            }
        }
    }

    /// Pops what the node should tell its user.
    pub fn poll_event(&mut self) -> Option<RendezvousEvent> {
        self.events.pop_front()
    }

    fn notice(&mut self, text: String) {
        self.events.push_back(RendezvousEvent::Notice(text));
    }

    fn on_record(&mut self, now: Instant, group: &mut Group, record: &RecordSummary) {
        if record.leader == self.me {
            // Our own record from before a restart: the members will elect anew.
            return;
        }
        if self.joined && self.is_other_group(group, record) {
            // Another group of the same name. If it outranks ours, we merge into it;
            // if not, our leader replaces its record at the proxy at its next refresh,
            // and its members learn of us as we learned of them.
            if group.leader().is_some() && self.outranked_by(group, record) {
                self.merge_into(now, group, record, Dissolve::Forgetting);
            }
            return;
        }
        if self.joined && self.left_behind(group, record) {
            self.merge_into(now, group, record, Dissolve::KeepingVotes);
            return;
        }
        let known_leader = group.leader().is_some();
        // The proxy checked a majority of signed votes for this (term, leader): evidence
        // enough for a joiner to follow it (SPEC.md §12.2).
        group.vouch(now, record.term, &record.leader);
        if self.joined && known_leader {
            return;
        }
        // The proxy's record may lag an election: a leader we hear from wins; else every
        // member of the record is a contact (the leader among them admits us, and a
        // majority of them is whom a later leader must be backed by).
        match group.leader().filter(|l| *l != self.me).map(str::to_owned) {
            Some(leader) => {
                let _ = group.join(now, &leader);
                self.join_sent_to = Some(leader);
            }
            None => {
                let _ = group.join_via(now, &contacts(record));
                self.join_sent_to = Some(record.leader.clone());
            }
        }
    }

    /// No leader at the proxy. A newcomer claims the group (and founds it once the
    /// proxy accepts); a node with a past in the group waits for its members to elect,
    /// and founds it again only if nobody announced anything for `refound_after`.
    fn on_no_record(&mut self, now: Instant, group: &mut Group) {
        let since = *self.no_record_since.get_or_insert(now);
        if group.role() == Role::Leader {
            return;
        }
        if self.newcomer {
            // Sent by the next poll, which has the wall clock.
            self.claim_due = true;
        } else if now - since >= self.config.refound_after && group.leader().is_none() {
            self.notice(
                "no member of the group has been heard of for a while: founding it again".into(),
            );
            let term = group.term();
            let _ = group.bootstrap(now, term);
            self.events.push_back(RendezvousEvent::Founded);
            self.no_record_since = None;
        }
    }

    /// A claim of term 1 for this node, signed at `wall_ms`.
    fn claim(&mut self, wall_ms: u64) -> ProxyRequest {
        self.asking = Some(Asking::Claim);
        ProxyRequest::Claim(RecordDraft {
            group: self.group_name.clone(),
            term: 1,
            leader: self.me.clone(),
            leader_addr: self.addr,
            membership_version: 1,
            members: vec![self.me.clone()],
            issued_at_ms: wall_ms,
        })
    }

    fn on_claim(&mut self, now: Instant, group: &mut Group, verdict: Verdict) {
        match verdict {
            Verdict::Accepted => {
                let _ = group.bootstrap(now, 0);
                self.events.push_back(RendezvousEvent::Founded);
                self.newcomer = false;
                self.notice(format!(
                    "founded group {} (the proxy knew no leader)",
                    self.group_name
                ));
            }
            Verdict::Refused { status, reason, .. } => {
                // Someone else claimed it first: ask again at once, then join them.
                tracing::debug!("claim refused: {status:?} {reason}");
                self.last_query = None;
            }
        }
    }

    fn on_announce(&mut self, now: Instant, group: &mut Group, verdict: Verdict) {
        let Verdict::Refused {
            status,
            reason,
            held,
        } = verdict
        else {
            return;
        };
        tracing::debug!("announcement refused: {status:?} {reason}");
        match held {
            Some(held) if self.is_other_group(group, &held) => {
                if self.outranked_by(group, &held) {
                    self.merge_into(now, group, &held, Dissolve::Forgetting);
                } else if group.stand_again_for_proof(now, &[]) {
                    self.notice(format!(
                        "the proxy holds another group named {} (led by {}, {} members); \
                         this one is larger: standing again so that its members' votes \
                         prove it",
                        self.group_name,
                        held.leader,
                        held.members.len()
                    ));
                } else {
                    self.notice(format!(
                        "the proxy refused this group's record ({reason}) in favour of \
                         another group named {} led by {}; asking again",
                        self.group_name, held.leader
                    ));
                }
            }
            held if status == ProxyStatus::INSUFFICIENT_VOTES => {
                // Our own group's older record, or none: the votes that elected us are
                // no majority of what the proxy counts. A new election gives them.
                let held_members = held.map(|h| h.members).unwrap_or_default();
                if group.stand_again_for_proof(now, &held_members) {
                    self.notice(format!(
                        "the proxy wants more votes than elected this leader ({reason}): \
                         standing again"
                    ));
                } else {
                    // The votes it lacked may be late grants, signed since: try again
                    // soon rather than at the next refresh.
                    self.retry_announce_after(now, self.config.requery_interval);
                    self.notice(format!("the proxy refused this leader's record: {reason}"));
                }
            }
            _ if status == ProxyStatus::STALE_TERM => {
                self.notice("the proxy knows a newer leader than this one".into())
            }
            _ => self.notice(format!("the proxy refused this leader's record: {reason}")),
        }
    }

    /// Makes the next announcement due `after` from `now`, not a refresh interval after
    /// the last one.
    fn retry_announce_after(&mut self, now: Instant, after: Duration) {
        if let Some(announced) = self.announced.as_mut() {
            let due = now + after;
            announced.at = due
                .checked_sub(self.config.refresh_interval)
                .unwrap_or(announced.at)
                .min(announced.at);
        }
    }

    /// Whether `record` is of another group than the one `group` holds (SPEC.md §12.7):
    /// no member in common.
    fn is_other_group(&self, group: &Group, record: &RecordSummary) -> bool {
        let ours = GroupRank::new(group.members().iter().map(|m| m.name.as_str()), "");
        !group.members().is_empty() && record_rank(record).is_other_group(&ours)
    }

    /// Whether we are what is left of a group that merged into the group of `record`
    /// without us (SPEC.md §12.7): members of ours have dissolved and joined it, so the
    /// two are no longer of other groups, but its leader is none of ours, it does not
    /// list us, it outranks what we hold, and we follow no leader (what remains of our
    /// group cannot elect one). Such a node merges as the others did.
    fn left_behind(&self, group: &Group, record: &RecordSummary) -> bool {
        let ours = |name: &str| group.members().iter().any(|m| m.name == name);
        let electing = matches!(group.role(), Role::PreCandidate | Role::Candidate);
        !record.members.contains(&self.me)
            && !ours(&record.leader)
            && (electing || group.leader().is_none())
            && record_rank(record).ranks_above(&self.our_rank(group))
    }

    /// Whether the group of `record` outranks ours, which merges into it then.
    fn outranked_by(&self, group: &Group, record: &RecordSummary) -> bool {
        record_rank(record).outranks(&self.our_rank(group))
    }

    fn our_rank<'g>(&'g self, group: &'g Group) -> GroupRank<'g> {
        let leader = group.leader().unwrap_or(self.me.as_str());
        GroupRank::new(group.members().iter().map(|m| m.name.as_str()), leader)
    }

    /// Leaves our group for the group of `record`, which outranks it (SPEC.md §12.7):
    /// forgets it ([`Group::dissolve`]) and asks the other group's members to admit us,
    /// as any newcomer the proxy directed to them.
    fn merge_into(
        &mut self,
        now: Instant,
        group: &mut Group,
        record: &RecordSummary,
        how: Dissolve,
    ) {
        self.notice(format!(
            "another group named {} (led by {}, {} members) outranks this one ({} \
             members): merging into it",
            self.group_name,
            record.leader,
            record.members.len(),
            group.members().len()
        ));
        match how {
            Dissolve::Forgetting => group.dissolve(now),
            Dissolve::KeepingVotes => group.dissolve_keeping_votes(now),
        }
        self.newcomer = true;
        self.joined = false;
        self.announced = None;
        self.no_record_since = None;
        self.claim_due = false;
        self.last_query = Some(now);
        group.vouch(now, record.term, &record.leader);
        let _ = group.join_via(now, &contacts(record));
        self.join_sent_to = Some(record.leader.clone());
    }
}

/// How a node leaves its group for another (SPEC.md §12.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dissolve {
    /// Of another group (no member in common): its terms mean nothing there.
    Forgetting,
    /// Left behind: the other group may be its own, so no vote is cast twice.
    KeepingVotes,
}

/// Whom to ask to be admitted into the group of `record`: its leader first, then every
/// other member (the record may lag an election, and any live member points a joiner
/// to the leader it follows).
fn contacts(record: &RecordSummary) -> Vec<&str> {
    let others = record.members.iter().map(String::as_str);
    std::iter::once(record.leader.as_str())
        .chain(others.filter(|m| *m != record.leader))
        .collect()
}

fn record_rank(record: &RecordSummary) -> GroupRank<'_> {
    GroupRank::new(record.members.iter().map(String::as_str), &record.leader)
}

#[cfg(test)]
mod tests {
    //! The policy against a real [`Group`], with the proxy's answers written by hand.

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::group::{GroupConfig, HardState, Output, VoteSigner};
    use crate::message::GroupMessage;

    const WALL: u64 = 1_767_225_600_000;

    struct TestSigner;

    impl VoteSigner for TestSigner {
        fn sign_vote(&self, input: &[u8]) -> Vec<u8> {
            input.to_vec()
        }
    }

    fn me(name: &str) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            addr: "127.0.0.1:7402".parse().unwrap(),
            rank: 1,
            incarnation: 7,
        }
    }

    /// A persisted state of term `term` holding `members` (version 2, made in
    /// `membership_term`).
    fn past(term: u64, members: &[&str], membership_term: u64) -> HardState {
        HardState {
            term,
            members: members.iter().map(|m| me(m)).collect(),
            membership_term,
            membership_version: 2,
            ..HardState::default()
        }
    }

    /// A node `name` with `hard` as its persisted state, and its rendezvous.
    fn node(name: &str, hard: HardState, now: Instant) -> (Group, Rendezvous) {
        let newcomer = hard.term == 0 && hard.members.is_empty();
        let group = Group::new(
            GroupConfig::new("lobby"),
            me(name),
            hard,
            ChaCha8Rng::seed_from_u64(1),
            now,
        )
        .unwrap();
        let rendezvous = Rendezvous::new(
            RendezvousConfig::default(),
            "lobby",
            &me(name),
            newcomer,
            now,
        );
        (group, rendezvous)
    }

    /// Performs the group's outputs as far as they concern these tests: votes are signed
    /// at once, events go to the rendezvous; returns the frames sent.
    fn pump(
        group: &mut Group,
        rendezvous: &mut Rendezvous,
        now: Instant,
    ) -> Vec<(String, GroupMessage)> {
        let mut sent = Vec::new();
        while let Some(output) = group.poll_output() {
            match output {
                Output::SignVote { vote, .. } => group.vote_signed(vote.signed(&TestSigner)),
                Output::Event(event) => rendezvous.handle_event(now, &event),
                Output::Send { to, frame, .. } => sent.push((to, frame)),
                _ => {}
            }
        }
        sent
    }

    /// To whom the group sends a JOIN now.
    fn joins_sent(group: &mut Group, rendezvous: &mut Rendezvous, now: Instant) -> Vec<String> {
        pump(group, rendezvous, now)
            .into_iter()
            .filter(|(_, m)| matches!(m, GroupMessage::Join(_)))
            .map(|(to, _)| to)
            .collect()
    }

    fn record(leader: &str, members: &[&str], term: u64) -> RecordSummary {
        RecordSummary {
            group: "lobby".into(),
            term,
            leader: leader.into(),
            leader_addr: "127.0.0.1:7403".parse().unwrap(),
            membership_version: 3,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            issued_at_ms: WALL,
        }
    }

    fn notices(rendezvous: &mut Rendezvous) -> Vec<String> {
        std::iter::from_fn(|| rendezvous.poll_event())
            .filter_map(|event| match event {
                RendezvousEvent::Notice(text) => Some(text),
                RendezvousEvent::Founded => None,
            })
            .collect()
    }

    #[test]
    fn a_newcomer_claims_a_group_the_proxy_knows_no_leader_of_then_announces_it() {
        let now = Instant::now();
        let (mut g, mut r) = node("alice", HardState::default(), now);
        assert_eq!(r.poll_request(now, WALL, &mut g), Some(ProxyRequest::Query));
        assert_eq!(
            r.poll_request(now, WALL, &mut g),
            None,
            "one request at a time"
        );
        r.handle_answer(now, &mut g, ProxyAnswer::Record(None));
        let Some(ProxyRequest::Claim(draft)) = r.poll_request(now, WALL, &mut g) else {
            panic!("a newcomer claims the group");
        };
        assert_eq!(
            (draft.term, draft.members.as_slice()),
            (1, &["alice".to_owned()][..])
        );
        assert_eq!(
            g.role(),
            Role::Follower,
            "nothing founded before the proxy agrees"
        );
        r.handle_answer(now, &mut g, ProxyAnswer::Verdict(Verdict::Accepted));
        pump(&mut g, &mut r, now);
        assert_eq!(g.role(), Role::Leader);
        assert!(notices(&mut r).iter().any(|n| n.contains("founded")));
        let Some(ProxyRequest::Announce { draft, votes }) = r.poll_request(now, WALL, &mut g)
        else {
            panic!("the new leader announces its term");
        };
        assert_eq!(draft.term, g.term());
        assert_eq!(votes.len(), 1, "its own signed vote");
    }

    #[test]
    fn a_leader_refreshes_its_record_every_refresh_interval_and_not_before() {
        let t0 = Instant::now();
        let (mut g, mut r) = node("alice", HardState::default(), t0);
        g.bootstrap(t0, 0).unwrap();
        pump(&mut g, &mut r, t0);
        assert!(matches!(
            r.poll_request(t0, WALL, &mut g),
            Some(ProxyRequest::Announce { .. })
        ));
        r.handle_answer(t0, &mut g, ProxyAnswer::Verdict(Verdict::Accepted));
        let refresh = t0 + RendezvousConfig::default().refresh_interval;
        assert_eq!(r.poll_timeout(&g), Some(refresh));
        let just_before = refresh - Duration::from_millis(1);
        assert_eq!(r.poll_request(just_before, WALL + 2999, &mut g), None);
        let Some(ProxyRequest::Announce { draft, .. }) = r.poll_request(refresh, WALL, &mut g)
        else {
            panic!("a refresh is due");
        };
        assert_eq!(
            draft.issued_at_ms,
            WALL + 1,
            "issue times only grow, whatever the clock"
        );
    }

    #[test]
    fn a_joiner_asks_every_member_of_the_record_and_takes_its_leader_as_proven() {
        let now = Instant::now();
        let (mut g, mut r) = node("dave", HardState::default(), now);
        assert_eq!(r.poll_request(now, WALL, &mut g), Some(ProxyRequest::Query));
        r.handle_answer(
            now,
            &mut g,
            ProxyAnswer::Record(Some(record("alice", &["alice", "bob", "carol"], 4))),
        );
        let joins: Vec<String> = pump(&mut g, &mut r, now)
            .into_iter()
            .filter(|(_, m)| matches!(m, GroupMessage::Join(_)))
            .map(|(to, _)| to)
            .collect();
        assert_eq!(joins, ["alice", "bob", "carol"]);
        // Not admitted yet: it asks again a requery interval later.
        let again = now + RendezvousConfig::default().requery_interval;
        assert_eq!(r.poll_timeout(&g), Some(again));
        assert_eq!(
            r.poll_request(again, WALL, &mut g),
            Some(ProxyRequest::Query)
        );
    }

    #[test]
    fn a_refused_claim_asks_again_at_once() {
        let now = Instant::now();
        let (mut g, mut r) = node("bob", HardState::default(), now);
        r.poll_request(now, WALL, &mut g);
        r.handle_answer(now, &mut g, ProxyAnswer::Record(None));
        assert!(matches!(
            r.poll_request(now, WALL, &mut g),
            Some(ProxyRequest::Claim(_))
        ));
        let refused = Verdict::Refused {
            status: ProxyStatus::ALREADY_CLAIMED,
            reason: "group has a leader".into(),
            held: Some(record("alice", &["alice"], 1)),
        };
        r.handle_answer(now, &mut g, ProxyAnswer::Verdict(refused));
        assert_eq!(g.role(), Role::Follower, "founded nothing");
        assert_eq!(r.poll_request(now, WALL, &mut g), Some(ProxyRequest::Query));
    }

    #[test]
    fn a_node_with_a_past_waits_for_its_members_and_founds_again_only_after_refound_after() {
        let t0 = Instant::now();
        let hard = past(6, &["carol", "alice"], 5);
        let (mut g, mut r) = node("carol", hard, t0);
        let config = RendezvousConfig::default();
        let mut now = t0;
        while now < t0 + config.refound_after {
            if let Some(request) = r.poll_request(now, WALL, &mut g) {
                assert_eq!(request, ProxyRequest::Query, "never a claim: it has a past");
                r.handle_answer(now, &mut g, ProxyAnswer::Record(None));
                pump(&mut g, &mut r, now);
            }
            assert_ne!(g.role(), Role::Leader, "founded again too early");
            now += Duration::from_millis(100);
        }
        now += config.requery_interval;
        assert_eq!(r.poll_request(now, WALL, &mut g), Some(ProxyRequest::Query));
        r.handle_answer(now, &mut g, ProxyAnswer::Record(None));
        pump(&mut g, &mut r, now);
        assert_eq!(g.role(), Role::Leader);
        assert!(
            g.term() > 6,
            "in a term after every term it saw: {}",
            g.term()
        );
        assert!(notices(&mut r)
            .iter()
            .any(|n| n.contains("founding it again")));
    }

    #[test]
    fn an_unreachable_proxy_is_reported_once_and_asked_again() {
        let now = Instant::now();
        let (mut g, mut r) = node("erin", HardState::default(), now);
        let down = || ProxyAnswer::Failed("the proxy did not answer".into());
        r.poll_request(now, WALL, &mut g);
        r.handle_answer(now, &mut g, down());
        assert_eq!(
            notices(&mut r),
            ["proxy: the proxy did not answer (asking again until it does)"]
        );
        let again = now + RendezvousConfig::default().requery_interval;
        assert_eq!(r.poll_timeout(&g), Some(again));
        assert_eq!(
            r.poll_request(again, WALL, &mut g),
            Some(ProxyRequest::Query)
        );
        r.handle_answer(again, &mut g, down());
        assert!(notices(&mut r).is_empty(), "said once");
        let later = again + RendezvousConfig::default().requery_interval;
        assert_eq!(
            r.poll_request(later, WALL, &mut g),
            Some(ProxyRequest::Query)
        );
        r.handle_answer(later, &mut g, ProxyAnswer::Record(None));
        assert_eq!(notices(&mut r), ["the proxy answers again"]);
    }

    #[test]
    fn a_stopped_node_asks_nothing() {
        let now = Instant::now();
        let (mut g, mut r) = node("frank", HardState::default(), now);
        r.stop();
        assert_eq!(r.poll_request(now, WALL, &mut g), None);
        assert_eq!(r.poll_timeout(&g), None);
    }

    /// A leader of a group of one, `name`, whose first announcement is out and answered
    /// with `refusal`.
    fn refused_leader(name: &str, refusal: Verdict, now: Instant) -> (Group, Rendezvous) {
        let (mut g, mut r) = node(name, HardState::default(), now);
        g.bootstrap(now, 0).unwrap();
        pump(&mut g, &mut r, now);
        assert!(matches!(
            r.poll_request(now, WALL, &mut g),
            Some(ProxyRequest::Announce { .. })
        ));
        r.handle_answer(now, &mut g, ProxyAnswer::Verdict(refusal));
        (g, r)
    }

    #[test]
    fn spec_12_7_a_leader_refused_for_a_group_that_outranks_its_own_merges_into_it() {
        let now = Instant::now();
        let refusal = Verdict::Refused {
            status: ProxyStatus::INSUFFICIENT_VOTES,
            reason: "0 of 3 votes".into(),
            held: Some(record("alice", &["alice", "bob", "carol"], 4)),
        };
        let (mut g, mut r) = refused_leader("dave", refusal, now);
        assert_eq!(g.role(), Role::Follower);
        assert_eq!(
            (g.term(), g.members().len()),
            (0, 0),
            "forgot its own group"
        );
        assert_eq!(joins_sent(&mut g, &mut r, now), ["alice", "bob", "carol"]);
        let said = notices(&mut r);
        assert!(
            said.iter()
                .any(|n| n.contains("merging into it") && n.contains("alice")),
            "{said:?}"
        );
        assert!(!r.joined());
    }

    #[test]
    fn spec_12_7_a_leader_whose_group_outranks_the_held_one_keeps_it_and_says_so() {
        let now = Instant::now();
        // As large (one member each), and "dave" sorts before "erin": ours outranks.
        let refusal = Verdict::Refused {
            status: ProxyStatus::ALREADY_CLAIMED,
            reason: "group has a leader".into(),
            held: Some(record("erin", &["erin"], 1)),
        };
        let (g, mut r) = refused_leader("dave", refusal, now);
        assert_eq!(g.role(), Role::Leader);
        assert_eq!(g.members().len(), 1);
        let said = notices(&mut r);
        assert!(
            said.iter().any(|n| n.contains("erin")),
            "never silently: {said:?}"
        );
    }

    /// dave, admitted to a group of two with carol, which has no leader now (carol
    /// went over to another group, SPEC.md §12.7), and the proxy's answer to its query.
    fn left_with_carol(answer: RecordSummary, now: Instant) -> (Group, Rendezvous) {
        let hard = past(1, &["carol", "dave"], 1);
        let (mut g, mut r) = node("dave", hard, now);
        r.handle_event(now, &GroupEvent::Joined);
        assert_eq!(r.poll_request(now, WALL, &mut g), Some(ProxyRequest::Query));
        r.handle_answer(now, &mut g, ProxyAnswer::Record(Some(answer)));
        (g, r)
    }

    #[test]
    fn spec_12_7_a_member_left_behind_by_a_merge_follows_its_group_over() {
        let now = Instant::now();
        // carol is in both: the two are no longer "other groups", yet alice's does not
        // list dave, is led by none of dave's, and outranks what dave holds.
        let (mut g, mut r) = left_with_carol(record("alice", &["alice", "bob", "carol"], 2), now);
        assert_eq!(
            (g.term(), g.members().len()),
            (1, 0),
            "dissolved, its term kept"
        );
        assert!(!r.joined());
        assert_eq!(joins_sent(&mut g, &mut r, now), ["alice", "bob", "carol"]);
    }

    #[test]
    fn spec_12_7_a_record_that_lists_us_or_is_led_by_one_of_ours_is_not_left_behind() {
        let now = Instant::now();
        // Our own group, grown: it lists dave.
        let (g, _) = left_with_carol(record("alice", &["alice", "carol", "dave"], 2), now);
        assert_eq!(g.members().len(), 2, "kept");
        // Led by carol, one of ours: dave was removed from its own group, and waits
        // to be told so by a member that remembers it (SPEC.md §12.5).
        let (g, _) = left_with_carol(record("carol", &["alice", "bob", "carol"], 2), now);
        assert_eq!(g.members().len(), 2, "kept");
    }

    #[test]
    fn spec_12_7_a_record_of_the_same_group_is_never_a_merge() {
        let now = Instant::now();
        // The held record shares a member with ours: a newer term of our own group.
        let refusal = Verdict::Refused {
            status: ProxyStatus::STALE_TERM,
            reason: "term 1 < 5".into(),
            held: Some(record("alice", &["alice", "dave", "bob", "carol"], 5)),
        };
        let (g, mut r) = refused_leader("dave", refusal, now);
        assert_eq!(g.members().len(), 1, "kept");
        assert_eq!(
            notices(&mut r),
            ["the proxy knows a newer leader than this one"]
        );
    }
}
