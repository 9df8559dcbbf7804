//! The rules: which leader record the proxy holds for each group, and which claims and
//! announcements may replace it. Sans-IO: time comes in as [`Now`], keys as a
//! [`PeerKeys`] the driver filled from the key manager.
//!
//! A decision takes three steps so that the driver never holds the directory's lock
//! across the network or RSA work:
//!
//! 1. [`Directory::plan`]: cheap checks against the held state (term, issue time, who
//!    already leads), done before any key lookup, so a stale or replayed request costs
//!    neither a key manager round trip nor an RSA verification; the [`Plan`] says which
//!    keys are needed ([`Plan::key_names`]).
//! 2. [`Evidence::gather`]: the signatures, verified without the lock. Only votes of
//!    voters who can count (members of the relevant membership) are verified, so a
//!    request padded with 64 bogus votes costs no RSA work for them.
//! 3. [`Directory::decide`]: plans again against the state *now* (another request may
//!    have won meanwhile) and applies the verdict.
//!
//! [`Directory::submit`] runs all three at once, for callers that hold the keys already.

use std::collections::{BTreeSet, HashMap};

use sockmsg_wire::frame::{LeaderRecord, ProxyStatus, VoteFlags, VoteProof};
use sockmsg_wire::session::crypto::{AuthError, PeerKeys};
use sockmsg_wire::{Encode, List};

/// Label of a leader's signature over its record (SPEC.md §9).
pub const RECORD_LABEL: &[u8] = b"sockmsg/1 leader-record\0";
/// Label of a voter's signature over its granted VOTE (SPEC.md §9).
pub const VOTE_LABEL: &[u8] = b"sockmsg/1 vote\0";

/// Default lifetime of a record that is not re-announced (config.yml
/// `proxy.record_ttl_ms`).
pub const DEFAULT_RECORD_TTL_MS: u64 = 5_000;
/// How far a record's `issued_at_ms` may be from the proxy's clock, either way. Wide
/// enough for unsynchronised LAN clocks, narrow enough that an old record captured off
/// the wire is useless against a proxy that has forgotten the group.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// Groups held at most: each costs a few hundred bytes, and only holders of a registered
/// key can add one, but the bound keeps memory finite whatever they do.
pub const DEFAULT_MAX_GROUPS: usize = 100_000;

/// What the leader signs: the label, then the record's fields before `signature` as
/// encoded on the wire.
pub fn record_signing_input(record: &LeaderRecord<'_>) -> Vec<u8> {
    let mut input = RECORD_LABEL.to_vec();
    record.group.encode(&mut input);
    record.term.encode(&mut input);
    record.leader.encode(&mut input);
    record.leader_addr.encode(&mut input);
    record.membership_version.encode(&mut input);
    record.members.encode(&mut input);
    record.issued_at_ms.encode(&mut input);
    input
}

/// What a [`VoteProof`] in an announcement of `record` is a signature of: the granted
/// VOTE (group, term, voter, candidate = the record's leader, flags `GRANTED`) as the
/// voter sent it to the candidate.
pub fn vote_signing_input(record: &LeaderRecord<'_>, voter: sockmsg_wire::Name<'_>) -> Vec<u8> {
    let mut input = VOTE_LABEL.to_vec();
    record.group.encode(&mut input);
    record.term.encode(&mut input);
    voter.encode(&mut input);
    record.leader.encode(&mut input);
    VoteFlags::GRANTED.encode(&mut input);
    input
}

/// The two clocks a decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the Unix epoch: compared with the records' `issued_at_ms`.
    pub wall_ms: u64,
    /// A monotonic millisecond count (any origin): expiry, immune to clock steps.
    pub mono_ms: u64,
}

/// Tuning; [`DirectoryConfig::default`] matches config.yml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryConfig {
    pub record_ttl_ms: u64,
    pub max_clock_skew_ms: u64,
    pub max_groups: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            record_ttl_ms: DEFAULT_RECORD_TTL_MS,
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
            max_groups: DEFAULT_MAX_GROUPS,
        }
    }
}

/// Why a claim or announcement was not accepted: the PROXY_RESULT to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (status {})", status.0)]
pub struct Refusal {
    pub status: ProxyStatus,
    /// Short on purpose: it travels in the answer, which must stay small (SPEC.md §4).
    pub reason: String,
    /// The record held for the group, encoded (a LEADER_INFO body), when it is the
    /// reason: the refused leader learns of the competing group (SPEC.md §7.24, §12.7).
    pub held: Option<Vec<u8>>,
}

fn refuse<T>(status: ProxyStatus, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        status,
        reason: reason.into(),
        held: None,
    })
}

/// A refusal because of `held`, which goes with it.
fn refuse_for<T>(
    status: ProxyStatus,
    reason: impl Into<String>,
    held: &Entry,
) -> Result<T, Refusal> {
    Err(Refusal {
        status,
        reason: reason.into(),
        held: Some(held.record.clone()),
    })
}

/// Whether a record came as LEADER_CLAIM or LEADER_ANNOUNCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Claim,
    Announce,
}

/// A claim or an announcement, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct Proposal<'a> {
    pub kind: Kind,
    pub record: LeaderRecord<'a>,
    /// `None` for a claim.
    pub votes: Option<List<'a, VoteProof<'a>>>,
}

/// What a proposal needs in order to be accepted, given the held state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No live record: the first valid term-1 record wins (a claim, or a term-1
    /// announcement after the proxy forgot the group). Needs the leader's signature.
    First,
    /// Same term, same leader, newer issue time. Needs the leader's signature.
    Refresh,
    /// A higher term: the leader's signature and granted votes of more than half of
    /// `membership`.
    Election { membership: BTreeSet<String> },
    /// Another group of the same name that outranks the held one (SPEC.md §12.7): its
    /// membership shares no name with the held record's and is larger (or as large,
    /// with a leader name that sorts first). Needs the leader's signature and granted
    /// votes of more than half of `membership`, the proposal's own, whatever the terms.
    Merge { membership: BTreeSet<String> },
}

impl Plan {
    /// The membership whose majority must have voted, if any.
    pub fn voters(&self) -> Option<&BTreeSet<String>> {
        match self {
            Plan::First | Plan::Refresh => None,
            Plan::Election { membership } | Plan::Merge { membership } => Some(membership),
        }
    }

    /// The names whose keys the decision needs: the leader, then the voters who can
    /// count (at most [`sockmsg_wire::limits::MAX_MEMBERS`] of them), each once.
    pub fn key_names(&self, proposal: &Proposal<'_>) -> Vec<String> {
        let leader = proposal.record.leader.as_str();
        let mut names = vec![leader.to_owned()];
        if let Some(membership) = self.voters() {
            let mut seen = BTreeSet::from([leader]);
            for vote in proposal.votes.iter().flat_map(|votes| votes.iter()) {
                let voter = vote.voter.as_str();
                if membership.contains(voter) && seen.insert(voter) {
                    names.push(voter.to_owned());
                }
            }
        }
        names
    }
}

/// The result of checking a proposal's signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The leader's signature over the record.
    pub leader: Result<(), AuthError>,
    /// Voters (among those who can count) whose granted vote verifies.
    pub granted: BTreeSet<String>,
    /// Voters who can count but whose vote signature does not verify under their key.
    pub forged: BTreeSet<String>,
}

impl Evidence {
    /// Verifies the leader's signature and the votes of the voters `plan` lets count.
    /// Votes of unknown or revoked voters count for nothing (they are in neither set).
    pub fn gather(proposal: &Proposal<'_>, plan: &Plan, keys: &dyn PeerKeys) -> Evidence {
        let record = &proposal.record;
        let leader = keys.verify(
            record.leader.as_str(),
            &record_signing_input(record),
            record.signature.as_bytes(),
        );
        let mut granted = BTreeSet::new();
        let mut forged = BTreeSet::new();
        if let Some(membership) = plan.voters() {
            for vote in proposal.votes.iter().flat_map(|votes| votes.iter()) {
                let voter = vote.voter.as_str();
                if !membership.contains(voter) || granted.contains(voter) || forged.contains(voter)
                {
                    continue;
                }
                match keys.verify(
                    voter,
                    &vote_signing_input(record, vote.voter),
                    vote.signature.as_bytes(),
                ) {
                    Ok(()) => {
                        granted.insert(voter.to_owned());
                    }
                    Err(AuthError::BadSignature) => {
                        forged.insert(voter.to_owned());
                    }
                    Err(AuthError::UnknownPeer | AuthError::Revoked) => {}
                }
            }
        }
        Evidence {
            leader,
            granted,
            forged,
        }
    }
}

/// What an accepted proposal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A new group's first leader (term 1).
    First,
    /// The same leader's re-announcement: TTL refreshed, membership updated.
    Refresh,
    /// A new term, proven by a majority's votes.
    Election,
    /// Another group of the same name that outranks the held one, proven by a majority
    /// of its own membership (SPEC.md §12.7).
    Merge,
}

/// One group's accepted record.
#[derive(Debug, Clone)]
struct Entry {
    /// The record as its leader signed it, encoded (a LEADER_INFO body).
    record: Vec<u8>,
    term: u64,
    leader: String,
    members: BTreeSet<String>,
    issued_at_ms: u64,
    expires_at_mono_ms: u64,
}

/// The held records, by group.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    config: DirectoryConfig,
    groups: HashMap<String, Entry>,
}

impl Directory {
    pub fn new(config: DirectoryConfig) -> Self {
        Directory {
            config,
            groups: HashMap::new(),
        }
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// Live groups (expired ones may linger until [`Directory::sweep`] or a request
    /// touches them).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The live record of `group`, encoded as its leader signed it (the body of
    /// LEADER_INFO), or `None`: then the asker may claim term 1.
    pub fn query(&mut self, group: &str, now: Now) -> Option<&[u8]> {
        self.expire(group, now);
        self.groups.get(group).map(|entry| entry.record.as_slice())
    }

    /// The held term of `group`, if it has a live record.
    pub fn term(&mut self, group: &str, now: Now) -> Option<u64> {
        self.expire(group, now);
        self.groups.get(group).map(|entry| entry.term)
    }

    /// Forgets every expired group; returns how many.
    pub fn sweep(&mut self, now: Now) -> usize {
        let before = self.groups.len();
        self.groups
            .retain(|_, entry| entry.expires_at_mono_ms > now.mono_ms);
        before - self.groups.len()
    }

    fn expire(&mut self, group: &str, now: Now) {
        if self
            .groups
            .get(group)
            .is_some_and(|entry| entry.expires_at_mono_ms <= now.mono_ms)
        {
            self.groups.remove(group);
        }
    }

    /// The cheap checks, before any key lookup or RSA work: what the proposal would need
    /// to be accepted, or why it cannot be.
    pub fn plan(&mut self, proposal: &Proposal<'_>, now: Now) -> Result<Plan, Refusal> {
        let record = &proposal.record;
        let group = record.group.as_str();
        if record.term == 0 {
            return refuse(ProxyStatus::BAD_REQUEST, "term 0");
        }
        if proposal.kind == Kind::Claim && record.term != 1 {
            return refuse(ProxyStatus::BAD_REQUEST, "a claim is for term 1");
        }
        if !record.members.iter().any(|member| member == record.leader) {
            return refuse(ProxyStatus::BAD_REQUEST, "leader not among members");
        }
        if now.wall_ms.abs_diff(record.issued_at_ms) > self.config.max_clock_skew_ms {
            return refuse(ProxyStatus::REPLAYED, "issued_at out of window");
        }
        self.expire(group, now);
        let Some(held) = self.groups.get(group) else {
            if self.groups.len() >= self.config.max_groups && self.sweep(now) == 0 {
                return refuse(ProxyStatus::UNAVAILABLE, "directory full");
            }
            return Ok(if record.term == 1 {
                Plan::First
            } else {
                // Nothing held (a restart, or the group expired): the record's own
                // membership is the best the proxy knows.
                Plan::Election {
                    membership: names(&record.members),
                }
            });
        };
        if proposal.kind == Kind::Claim {
            return refuse_for(ProxyStatus::ALREADY_CLAIMED, "group has a leader", held);
        }
        if outranks(record, held) {
            return Ok(Plan::Merge {
                membership: names(&record.members),
            });
        }
        if record.term < held.term {
            return refuse_for(
                ProxyStatus::STALE_TERM,
                format!("term {} < {}", record.term, held.term),
                held,
            );
        }
        if record.term == held.term {
            if record.leader.as_str() != held.leader {
                return if record.term == 1 {
                    refuse_for(ProxyStatus::ALREADY_CLAIMED, "group has a leader", held)
                } else {
                    refuse_for(ProxyStatus::STALE_TERM, "term has another leader", held)
                };
            }
            if record.issued_at_ms <= held.issued_at_ms {
                return refuse(ProxyStatus::REPLAYED, "not newer than held");
            }
            return Ok(Plan::Refresh);
        }
        Ok(Plan::Election {
            membership: held.members.clone(),
        })
    }

    /// Decides with the signatures checked: plans again against the current state, then
    /// accepts (storing the record, votes left out, with a fresh TTL) or refuses.
    pub fn decide(
        &mut self,
        proposal: &Proposal<'_>,
        evidence: &Evidence,
        now: Now,
    ) -> Result<Accepted, Refusal> {
        let plan = self.plan(proposal, now)?;
        match evidence.leader {
            Ok(()) => {}
            Err(AuthError::UnknownPeer) => {
                return refuse(ProxyStatus::UNKNOWN_KEY, "leader not registered")
            }
            Err(AuthError::Revoked) => return refuse(ProxyStatus::UNKNOWN_KEY, "leader revoked"),
            Err(AuthError::BadSignature) => {
                return refuse(ProxyStatus::BAD_SIGNATURE, "leader signature")
            }
        }
        let accepted = match &plan {
            Plan::First => Accepted::First,
            Plan::Refresh => Accepted::Refresh,
            Plan::Election { membership } | Plan::Merge { membership } => {
                if let Some(voter) = evidence
                    .forged
                    .iter()
                    .find(|voter| membership.contains(*voter))
                {
                    return refuse(
                        ProxyStatus::BAD_SIGNATURE,
                        format!("vote of {}", truncate(voter, 32)),
                    );
                }
                let votes = evidence
                    .granted
                    .iter()
                    .filter(|voter| membership.contains(*voter))
                    .count();
                if votes * 2 <= membership.len() {
                    let reason = format!("{votes} of {} votes", membership.len());
                    return match self.groups.get(record_group(proposal)) {
                        Some(held) => refuse_for(ProxyStatus::INSUFFICIENT_VOTES, reason, held),
                        None => refuse(ProxyStatus::INSUFFICIENT_VOTES, reason),
                    };
                }
                if matches!(plan, Plan::Merge { .. }) {
                    Accepted::Merge
                } else {
                    Accepted::Election
                }
            }
        };
        let record = &proposal.record;
        let mut bytes = Vec::with_capacity(record.encoded_len());
        record.encode(&mut bytes);
        self.groups.insert(
            record.group.as_str().to_owned(),
            Entry {
                record: bytes,
                term: record.term,
                leader: record.leader.as_str().to_owned(),
                members: names(&record.members),
                issued_at_ms: record.issued_at_ms,
                expires_at_mono_ms: now.mono_ms.saturating_add(self.config.record_ttl_ms),
            },
        );
        Ok(accepted)
    }

    /// [`plan`](Directory::plan), [`Evidence::gather`] and [`decide`](Directory::decide)
    /// at once, with `keys` holding (at least) the keys [`Plan::key_names`] lists.
    pub fn submit(
        &mut self,
        proposal: &Proposal<'_>,
        keys: &dyn PeerKeys,
        now: Now,
    ) -> Result<Accepted, Refusal> {
        let plan = self.plan(proposal, now)?;
        let evidence = Evidence::gather(proposal, &plan, keys);
        self.decide(proposal, &evidence, now)
    }
}

fn record_group<'a>(proposal: &Proposal<'a>) -> &'a str {
    proposal.record.group.as_str()
}

/// Whether `record` is another group of the same name than the `held` one, and
/// outranks it (see [`GroupRank`]).
fn outranks(record: &LeaderRecord<'_>, held: &Entry) -> bool {
    let challenger = GroupRank::new(
        record.members.iter().map(|m| m.as_str()),
        record.leader.as_str(),
    );
    let incumbent = GroupRank::new(held.members.iter().map(String::as_str), &held.leader);
    challenger.outranks(&incumbent)
}

/// A group of a given name as a record shows it, for choosing which of two groups of the
/// same name the other merges into (SPEC.md §12.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRank<'a> {
    members: BTreeSet<&'a str>,
    leader: &'a str,
}

impl<'a> GroupRank<'a> {
    pub fn new(members: impl IntoIterator<Item = &'a str>, leader: &'a str) -> GroupRank<'a> {
        GroupRank {
            members: members.into_iter().collect(),
            leader,
        }
    }

    /// Whether this group and `other` are two groups, not two views of one: no member
    /// in common. (Any two memberships of one group that a leader was elected by
    /// share a member.)
    pub fn is_other_group(&self, other: &GroupRank<'_>) -> bool {
        self.members.is_disjoint(&other.members)
    }

    /// Whether this is another group than `other` and the one that `other` merges
    /// into: more distinct members, or as many and a leader name that sorts first. A
    /// total order, so that every proxy and every node comparing the same two records
    /// picks the same group; not on terms, which a group of one raises at will.
    pub fn outranks(&self, other: &GroupRank<'_>) -> bool {
        self.is_other_group(other) && self.ranks_above(other)
    }

    /// The order of [`outranks`](GroupRank::outranks) alone, members in common or not:
    /// for a node left behind by a merge, whose group shares the members that already
    /// went over (SPEC.md §12.7).
    pub fn ranks_above(&self, other: &GroupRank<'_>) -> bool {
        (self.members.len(), std::cmp::Reverse(self.leader))
            > (other.members.len(), std::cmp::Reverse(other.leader))
    }
}

/// The distinct names of a list.
fn names(list: &List<'_, sockmsg_wire::Name<'_>>) -> BTreeSet<String> {
    list.iter().map(|name| name.as_str().to_owned()).collect()
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    //! The rules with the wire crate's insecure test signer (cheap, deterministic): the
    //! same code paths as RSA, since the directory only sees `PeerKeys`.

    use rand_chacha::rand_core::SeedableRng as _;
    use rand_chacha::ChaCha20Rng;
    use sockmsg_wire::session::crypto::insecure::{TestKeys, TestSigner};

    use super::*;
    use crate::client::RecordDraft;
    use crate::handler::{self, Request, Transport};

    const T0: u64 = 1_750_000_000_000;

    fn now(mono_ms: u64) -> Now {
        Now {
            wall_ms: T0 + mono_ms,
            mono_ms,
        }
    }

    fn draft(term: u64, leader: &str, members: &[&str], issued_at_ms: u64) -> RecordDraft {
        RecordDraft {
            group: "lobby".into(),
            term,
            leader: leader.into(),
            leader_addr: "127.0.0.1:7402".parse().expect("addr"),
            membership_version: 1,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            issued_at_ms,
        }
    }

    fn keys() -> TestKeys {
        TestKeys::with_names(["alice", "bob", "carol", "dave", "mallory"])
    }

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::from_seed([7; 32])
    }

    /// Encodes the proposal, parses it back, and submits it.
    fn submit_with(
        directory: &mut Directory,
        kind: Kind,
        draft: &RecordDraft,
        signature: &[u8],
        votes: &[(String, Vec<u8>)],
        keys: &TestKeys,
        at: Now,
    ) -> Result<Accepted, Refusal> {
        let bytes = draft
            .request(1, kind, signature, votes, 0)
            .expect("request");
        let parsed = handler::parse(&bytes, Transport::Tcp).expect("parses");
        let Request::Propose(proposal) = parsed.request else {
            panic!("a proposal")
        };
        directory.submit(&proposal, keys, at)
    }

    fn signed(draft: &RecordDraft) -> Vec<u8> {
        draft
            .sign(&TestSigner::new(draft.leader.clone()), &mut rng())
            .expect("sign")
    }

    fn votes(draft: &RecordDraft, voters: &[&str]) -> Vec<(String, Vec<u8>)> {
        voters
            .iter()
            .map(|voter| {
                let signature = draft
                    .sign_vote(&TestSigner::new(*voter), &mut rng())
                    .expect("vote");
                ((*voter).to_owned(), signature)
            })
            .collect()
    }

    fn claim(directory: &mut Directory, draft: &RecordDraft, at: Now) -> Result<Accepted, Refusal> {
        submit_with(
            directory,
            Kind::Claim,
            draft,
            &signed(draft),
            &[],
            &keys(),
            at,
        )
    }

    fn announce(
        directory: &mut Directory,
        draft: &RecordDraft,
        voters: &[&str],
        at: Now,
    ) -> Result<Accepted, Refusal> {
        let votes = votes(draft, voters);
        submit_with(
            directory,
            Kind::Announce,
            draft,
            &signed(draft),
            &votes,
            &keys(),
            at,
        )
    }

    fn status(result: Result<Accepted, Refusal>) -> ProxyStatus {
        result.expect_err("refused").status
    }

    const ABC: &[&str] = &["alice", "bob", "carol"];

    fn with_term1(at: Now) -> Directory {
        let mut directory = Directory::default();
        let first = draft(1, "alice", ABC, at.wall_ms);
        assert_eq!(claim(&mut directory, &first, at), Ok(Accepted::First));
        directory
    }

    #[test]
    fn first_claim_wins_and_a_second_is_refused() {
        let mut directory = with_term1(now(0));
        assert_eq!(directory.term("lobby", now(1)), Some(1));
        let second = draft(1, "bob", ABC, T0 + 1);
        assert_eq!(
            status(claim(&mut directory, &second, now(1))),
            ProxyStatus::ALREADY_CLAIMED
        );
        // Even the same leader cannot claim twice: it re-announces instead.
        let again = draft(1, "alice", ABC, T0 + 2);
        assert_eq!(
            status(claim(&mut directory, &again, now(2))),
            ProxyStatus::ALREADY_CLAIMED
        );
    }

    #[test]
    fn a_claim_is_for_term_one_and_names_a_member() {
        let mut directory = Directory::default();
        let term2 = draft(2, "alice", ABC, T0);
        assert_eq!(
            status(claim(&mut directory, &term2, now(0))),
            ProxyStatus::BAD_REQUEST
        );
        let outsider = draft(1, "dave", ABC, T0);
        assert_eq!(
            status(claim(&mut directory, &outsider, now(0))),
            ProxyStatus::BAD_REQUEST
        );
        assert!(directory.is_empty());
    }

    #[test]
    fn signatures_and_keys_are_checked() {
        let mut directory = Directory::default();
        let record = draft(1, "alice", ABC, T0);
        // Signed by someone else's key.
        let forged = record
            .sign(&TestSigner::new("mallory"), &mut rng())
            .expect("sign");
        let result = submit_with(
            &mut directory,
            Kind::Claim,
            &record,
            &forged,
            &[],
            &keys(),
            now(0),
        );
        assert_eq!(status(result), ProxyStatus::BAD_SIGNATURE);
        // Unsigned.
        let result = submit_with(
            &mut directory,
            Kind::Claim,
            &record,
            &[],
            &[],
            &keys(),
            now(0),
        );
        assert_eq!(status(result), ProxyStatus::BAD_SIGNATURE);
        // Unregistered leader.
        let result = submit_with(
            &mut directory,
            Kind::Claim,
            &record,
            &signed(&record),
            &[],
            &TestKeys::with_names(["bob"]),
            now(0),
        );
        assert_eq!(status(result), ProxyStatus::UNKNOWN_KEY);
        assert!(directory.is_empty(), "no refused claim was kept");
    }

    #[test]
    fn issue_time_must_be_within_the_window() {
        let mut directory = Directory::default();
        let old = draft(1, "alice", ABC, T0 - 31_000);
        assert_eq!(
            status(claim(&mut directory, &old, now(0))),
            ProxyStatus::REPLAYED
        );
        let future = draft(1, "alice", ABC, T0 + 31_000);
        assert_eq!(
            status(claim(&mut directory, &future, now(0))),
            ProxyStatus::REPLAYED
        );
        let skewed = draft(1, "alice", ABC, T0 + 29_000);
        assert_eq!(claim(&mut directory, &skewed, now(0)), Ok(Accepted::First));
    }

    #[test]
    fn refresh_needs_the_same_leader_and_a_newer_record() {
        let mut directory = with_term1(now(0));
        let newer = draft(1, "alice", &["alice", "bob", "carol", "dave"], T0 + 100);
        assert_eq!(
            announce(&mut directory, &newer, &[], now(100)),
            Ok(Accepted::Refresh)
        );
        // Replaying the same or an older record.
        assert_eq!(
            status(announce(&mut directory, &newer, &[], now(200))),
            ProxyStatus::REPLAYED
        );
        let older = draft(1, "alice", ABC, T0 + 50);
        assert_eq!(
            status(announce(&mut directory, &older, &[], now(200))),
            ProxyStatus::REPLAYED
        );
        // Another leader in the same term.
        let usurper = draft(1, "bob", ABC, T0 + 300);
        assert_eq!(
            status(announce(&mut directory, &usurper, &[], now(300))),
            ProxyStatus::ALREADY_CLAIMED
        );
    }

    #[test]
    fn a_new_term_needs_a_majority_of_the_held_membership() {
        let mut directory = with_term1(now(0));
        let term2 = draft(2, "bob", ABC, T0 + 10);
        // One of three: not a majority.
        assert_eq!(
            status(announce(&mut directory, &term2, &["bob"], now(10))),
            ProxyStatus::INSUFFICIENT_VOTES
        );
        // The same vote twice still counts once.
        assert_eq!(
            status(announce(&mut directory, &term2, &["bob", "bob"], now(10))),
            ProxyStatus::INSUFFICIENT_VOTES
        );
        // Non-members' votes count for nothing, whatever the new record lists.
        let packed = draft(2, "bob", &["bob", "dave", "mallory"], T0 + 10);
        assert_eq!(
            status(announce(
                &mut directory,
                &packed,
                &["bob", "dave", "mallory"],
                now(10)
            )),
            ProxyStatus::INSUFFICIENT_VOTES
        );
        // Two of three.
        assert_eq!(
            announce(&mut directory, &term2, &["bob", "carol"], now(10)),
            Ok(Accepted::Election)
        );
        assert_eq!(directory.term("lobby", now(11)), Some(2));
        // Lower terms are now stale.
        let stale = draft(1, "alice", ABC, T0 + 20);
        assert_eq!(
            status(announce(&mut directory, &stale, &[], now(20))),
            ProxyStatus::STALE_TERM
        );
    }

    #[test]
    fn votes_must_be_for_this_term_and_leader() {
        let mut directory = with_term1(now(0));
        let term2 = draft(2, "bob", ABC, T0 + 10);
        // Votes that carol gave for term 3, or for another candidate in term 2.
        let term3 = draft(3, "bob", ABC, T0 + 10);
        let for_alice = draft(2, "alice", ABC, T0 + 10);
        let mut proofs = votes(&term2, &["bob"]);
        proofs.extend(votes(&term3, &["carol"]));
        proofs.extend(votes(&for_alice, &["alice"]));
        let result = submit_with(
            &mut directory,
            Kind::Announce,
            &term2,
            &signed(&term2),
            &proofs,
            &keys(),
            now(10),
        );
        assert_eq!(status(result), ProxyStatus::BAD_SIGNATURE);
        assert_eq!(directory.term("lobby", now(10)), Some(1));
    }

    #[test]
    fn records_expire_after_the_ttl_and_a_restart_relearns_them() {
        let mut directory = with_term1(now(0));
        let ttl = DEFAULT_RECORD_TTL_MS;
        assert!(directory.query("lobby", now(ttl - 1)).is_some());
        let refresh = draft(1, "alice", ABC, T0 + ttl - 1);
        assert_eq!(
            announce(&mut directory, &refresh, &[], now(ttl - 1)),
            Ok(Accepted::Refresh)
        );
        assert!(
            directory.query("lobby", now(2 * ttl - 2)).is_some(),
            "refreshed"
        );
        assert!(
            directory.query("lobby", now(2 * ttl - 1)).is_none(),
            "expired"
        );
        assert_eq!(directory.sweep(now(2 * ttl)), 0, "already forgotten");

        // A fresh proxy learns a term-3 record from the votes of its own membership.
        let mut fresh = Directory::default();
        let term3 = draft(3, "carol", ABC, T0 + 5);
        assert_eq!(
            status(announce(&mut fresh, &term3, &["carol"], now(5))),
            ProxyStatus::INSUFFICIENT_VOTES
        );
        assert_eq!(
            announce(&mut fresh, &term3, &["carol", "alice"], now(5)),
            Ok(Accepted::Election)
        );
        // And a term-1 announcement is a claim.
        let mut fresh = Directory::default();
        let term1 = draft(1, "alice", ABC, T0 + 5);
        assert_eq!(
            announce(&mut fresh, &term1, &[], now(5)),
            Ok(Accepted::First)
        );
    }

    #[test]
    fn the_stored_record_is_the_signed_one_without_votes() {
        let mut directory = with_term1(now(0));
        let term2 = draft(2, "bob", ABC, T0 + 10);
        assert!(announce(&mut directory, &term2, ABC, now(10)).is_ok());
        let stored = directory.query("lobby", now(11)).expect("held").to_vec();
        let signature = signed(&term2);
        let expected = term2
            .request(0, Kind::Claim, &signature, &[], 0)
            .expect("request");
        // A claim packet is header, frame type, record body.
        assert_eq!(stored, expected[sockmsg_wire::HEADER_LEN + 1..]);
    }

    #[test]
    fn the_directory_is_bounded() {
        let mut directory = Directory::new(DirectoryConfig {
            max_groups: 1,
            ..DirectoryConfig::default()
        });
        assert!(claim(&mut directory, &draft(1, "alice", ABC, T0), now(0)).is_ok());
        let mut other = draft(1, "alice", ABC, T0);
        other.group = "other".into();
        assert_eq!(
            status(claim(&mut directory, &other, now(0))),
            ProxyStatus::UNAVAILABLE
        );
        // Once the first expires, there is room again.
        assert!(claim(&mut directory, &other, now(DEFAULT_RECORD_TTL_MS)).is_ok());
    }

    /// The record `directory` holds, decoded.
    fn held(directory: &mut Directory, at: Now) -> RecordSummary {
        let bytes = directory.query("lobby", at).expect("a record").to_vec();
        summary(&bytes)
    }

    fn summary(body: &[u8]) -> RecordSummary {
        RecordSummary::from_body(body).expect("a record")
    }

    /// The held record a refusal carries (it must carry one).
    fn held_by(refusal: &Refusal) -> RecordSummary {
        summary(
            refusal
                .held
                .as_deref()
                .expect("the held record goes with it"),
        )
    }

    use crate::handler::RecordSummary;

    #[test]
    fn spec_12_7_another_group_that_outranks_the_held_one_replaces_it_whatever_its_term() {
        let mut directory = Directory::default();
        // After a restart, a newcomer claimed the group first...
        claim(&mut directory, &draft(1, "dave", &["dave"], T0), now(0)).unwrap();
        // ...and the group that lived on, larger, announces an earlier term than it
        // might: terms do not decide between two groups.
        let group = draft(1, "alice", &["alice", "bob", "carol"], T0 + 1);
        assert_eq!(
            announce(&mut directory, &group, &["alice", "bob"], now(1)),
            Ok(Accepted::Merge)
        );
        assert_eq!(held(&mut directory, now(2)).leader, "alice");
    }

    #[test]
    fn spec_12_7_a_merge_needs_votes_of_a_majority_of_its_own_membership() {
        let mut directory = Directory::default();
        claim(&mut directory, &draft(1, "dave", &["dave"], T0), now(0)).unwrap();
        // One member cannot list names to outrank a group: they must have voted.
        let puffed = draft(4, "mallory", &["mallory", "alice", "bob"], T0 + 1);
        let refusal = announce(&mut directory, &puffed, &["mallory"], now(1)).unwrap_err();
        assert_eq!(refusal.status, ProxyStatus::INSUFFICIENT_VOTES);
        let held = held_by(&refusal);
        assert_eq!(held.leader, "dave");
    }

    #[test]
    fn spec_12_7_a_smaller_group_is_refused_and_told_which_group_holds_the_name() {
        let mut directory = Directory::default();
        let group = draft(1, "alice", &["alice", "bob", "carol"], T0);
        announce(&mut directory, &group, &["alice", "bob"], now(0)).unwrap();
        let small = draft(9, "dave", &["dave"], T0 + 1);
        let refusal = announce(&mut directory, &small, &["dave"], now(1)).unwrap_err();
        assert_eq!(refusal.status, ProxyStatus::INSUFFICIENT_VOTES);
        let held = held_by(&refusal);
        assert_eq!((held.leader.as_str(), held.members.len()), ("alice", 3));
        // A claim is told too.
        let refusal = claim(
            &mut directory,
            &draft(1, "mallory", &["mallory"], T0 + 2),
            now(2),
        )
        .unwrap_err();
        assert_eq!(refusal.status, ProxyStatus::ALREADY_CLAIMED);
        assert!(refusal.held.is_some());
    }

    #[test]
    fn spec_12_7_groups_of_one_size_merge_into_the_leader_name_that_sorts_first() {
        let mut directory = Directory::default();
        claim(&mut directory, &draft(1, "dave", &["dave"], T0), now(0)).unwrap();
        let later = draft(1, "erin", &["erin"], T0 + 1);
        let keys = TestKeys::with_names(["dave", "erin", "bob"]);
        let erin = votes(&later, &["erin"]);
        let refused = submit_with(
            &mut directory,
            Kind::Announce,
            &later,
            &signed(&later),
            &erin,
            &keys,
            now(1),
        );
        assert_eq!(refused.unwrap_err().status, ProxyStatus::ALREADY_CLAIMED);
        let first = draft(3, "bob", &["bob"], T0 + 2);
        let bob = votes(&first, &["bob"]);
        let accepted = submit_with(
            &mut directory,
            Kind::Announce,
            &first,
            &signed(&first),
            &bob,
            &keys,
            now(2),
        );
        assert_eq!(accepted, Ok(Accepted::Merge));
    }

    #[test]
    fn spec_12_7_a_group_that_shares_a_member_with_the_held_one_is_the_same_group() {
        let mut directory = Directory::default();
        let group = draft(5, "alice", &["alice", "bob", "carol"], T0);
        announce(&mut directory, &group, &["alice", "bob"], now(0)).unwrap();
        // An older leader of the same group, cut off, with a larger membership of old:
        // not a merge, and its term is stale.
        let stale = draft(4, "dave", &["dave", "carol", "mallory", "bob"], T0 + 1);
        let refusal = announce(
            &mut directory,
            &stale,
            &["dave", "carol", "mallory"],
            now(1),
        )
        .unwrap_err();
        assert_eq!(refusal.status, ProxyStatus::STALE_TERM);
        assert_eq!(held(&mut directory, now(2)).leader, "alice");
    }
}
