//! Invariants that must hold however hostile the other participants are (see
//! [`super::byzantine`]), checked after every input to every honest node. They hold in
//! honest runs too, and are checked there as well.
//!
//! - **Leaders are elected.** A node follows (`LeaderChanged` with `Some(l)`, `l` not
//!   itself) only a leader that a majority elected: an honest `l` must have passed
//!   [`Sim::check_majority`] in that term; a hostile `l` must be backed, among the
//!   members the follower held before that input, by a majority of granted votes as
//!   sent on the wire, itself, and honest nodes that already follow it. Authenticated
//!   frames cannot make a liar's word count as anyone else's, so this is what SPEC.md
//!   §12.2 promises: a single member is one voice, never the majority.
//! - **Memberships come from leaders.** Every membership an honest node holds (by its
//!   stamp `(membership_term, version)`) is exactly the one the leader of
//!   `membership_term` created; one stamp, one list. A leader's own change that drops
//!   an honest member must follow that leader's `PeerUnreachable` for it (in its term)
//!   or the member's own LEAVE (of that incarnation). A membership from a liar that was
//!   genuinely elected is the liar's to write, but it must not drop an honest member,
//!   nor list a name that is no node and no liar (a sock puppet that never joined).
//! - **Failure detection is honest.** A leader reports an honest member unreachable
//!   only if that member was down, restarted or had a link cut (or the leader had one)
//!   within the last `failure_removal + election_timeout_max`: a liar's frames never
//!   get a live, connected member removed.
//! - **Terms cannot be pushed.** No honest node ever holds a term above [`MAX_TERM`].
//!   An honest node's term moves either by one in its own election (it votes for
//!   itself in the new term), or to at most `H + TERM_SLACK + ⌊w /
//!   election_timeout_max⌋` (its own election too, when it skips terms), where `H` is the highest term any majority-elected leader holds so far and `w` is the
//!   time since the node last followed another leader (or booted). That is the
//!   `term_ceiling` rule (authority.rs): its base, the last leader heard or the creator
//!   of the membership held, is at most `H`; and the node last heard a leader no
//!   earlier than it last followed one, so `w` bounds its wait. Both sides of the
//!   bound are taken from what the simulation saw, not from the node. So the highest
//!   honest term is at most the number of honest elections plus `TERM_SLACK + w` for
//!   each time a majority elected a leader: a liar adds at most the slack once per
//!   real election, never compounds it by itself.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use sockmsg_node::group::MAX_TERM;
use sockmsg_node::{Group, MemberInfo, Role};

use super::Sim;

/// How many terms a vote request may take a node beyond the last leader it heard:
/// `TERM_SLACK` in node/src/group/authority.rs, which the node crate does not export.
pub const TERM_SLACK: u64 = 8;

/// What a node held after its last input.
#[derive(Debug, Clone, Default)]
struct View {
    term: u64,
    role: Option<Role>,
    stamp: (u64, u64),
    members: Vec<MemberInfo>,
    /// Names that left memberships it held (SPEC.md §12.2).
    former: Vec<String>,
}

impl View {
    fn of(g: &Group) -> View {
        View {
            term: g.term(),
            role: Some(g.role()),
            stamp: (g.membership_term(), g.membership_version()),
            members: g.members().to_vec(),
            former: g.hard_state().former_members.clone(),
        }
    }

    fn names(&self) -> Vec<String> {
        names(&self.members)
    }
}

fn names(members: &[MemberInfo]) -> Vec<String> {
    members.iter().map(|m| m.name.clone()).collect()
}

/// What the invariants remember across events.
#[derive(Debug)]
pub struct Watch {
    views: Vec<View>,
    /// Memberships leaders created: (lineage, membership_term, version) → names. One
    /// stamp, one list, except in a term where the liar's double vote made two leaders
    /// (then one list each). Two groups of one name (SPEC.md §12.7) stamp on their own.
    created: HashMap<(u32, u64, u64), Vec<Vec<String>>>,
    /// (leader, name, term) of every `PeerUnreachable`.
    unreachable: HashSet<(String, String, u64)>,
    /// (name, incarnation) of every node that left.
    left: HashSet<(String, u64)>,
    /// Per node: the last instant it was down, restarted, or had a link cut.
    disturbed: Vec<Instant>,
    /// Per node: when it booted or last followed another leader (see the module doc).
    anchor: Vec<Instant>,
    /// Per node: the highest term it has held.
    highest: Vec<u64>,
    /// Elections started by honest nodes.
    pub elections: u64,
    /// The highest term any honest node held.
    pub max_term: u64,
    /// Terms in which a hostile actor was genuinely elected.
    pub hostile_terms: BTreeSet<u64>,
    /// Terms with two leaders that the liar made (its double vote, or majorities of
    /// memberships its acknowledgements split: SPEC.md §12.6; see
    /// `Sim::check_second_leader`). Any other second leader in a term fails the schedule.
    pub double_votes: BTreeSet<u64>,
    /// Frames rejected by nodes that have crashed since.
    rejections_before: u64,
}

impl Watch {
    pub fn new(nodes: usize, start: Instant) -> Watch {
        Watch {
            views: vec![View::default(); nodes],
            created: HashMap::new(),
            unreachable: HashSet::new(),
            left: HashSet::new(),
            disturbed: vec![start; nodes],
            anchor: vec![start; nodes],
            highest: vec![0; nodes],
            elections: 0,
            max_term: 0,
            hostile_terms: BTreeSet::new(),
            double_votes: BTreeSet::new(),
            rejections_before: 0,
        }
    }

    pub(super) fn booted(&mut self, i: usize, now: Instant, g: Option<&Group>) {
        self.views[i] = g.map(View::of).unwrap_or_default();
        self.anchor[i] = now;
        self.disturbed[i] = now;
    }

    pub(super) fn crashed(&mut self, i: usize, now: Instant, g: &Group) {
        self.disturbed[i] = now;
        self.rejections_before += g.rejections().total();
    }

    /// Every node with a cut link in `blocked` was disturbed until `now`.
    pub(super) fn links_changed(&mut self, now: Instant, blocked: &HashSet<(usize, usize)>) {
        for &(a, b) in blocked {
            self.disturbed[a] = now;
            self.disturbed[b] = now;
        }
    }

    pub(super) fn left(&mut self, me: &MemberInfo) {
        self.left.insert((me.name.clone(), me.incarnation));
    }
}

impl Sim {
    /// Frames dropped by the authorization rules, by every honest node so far.
    pub fn rejections_total(&self) -> u64 {
        let up: u64 = (0..self.nodes.len())
            .filter_map(|i| self.group(i))
            .map(|g| g.rejections().total())
            .sum();
        self.watch.rejections_before + up
    }

    /// After an input to node `i`: its term and its membership.
    pub(super) fn observe(&mut self, i: usize) {
        let Some(g) = self.group(i) else { return };
        let now = View::of(g);
        let voted_self = g.hard_state().voted_for.as_deref() == Some(g.name());
        let before = std::mem::replace(&mut self.watch.views[i], now.clone());
        self.check_term(i, &before, &now, voted_self);
        if (now.stamp, now.names()) != (before.stamp, before.names()) {
            self.check_membership(i, &before, &now);
        }
    }

    /// The highest term a majority-elected leader holds so far.
    fn highest_elected(&self) -> u64 {
        self.elected.keys().copied().max().unwrap_or(0)
    }

    fn check_term(&mut self, i: usize, before: &View, now: &View, voted_self: bool) {
        self.watch.max_term = self.watch.max_term.max(now.term);
        let others = (0..self.watch.highest.len())
            .filter(|&j| j != i)
            .map(|j| self.watch.highest[j])
            .max()
            .unwrap_or(0);
        self.watch.highest[i] = self.watch.highest[i].max(now.term);
        if now.term > MAX_TERM {
            let why = format!("{} holds term {} > MAX_TERM", self.nodes[i].name, now.term);
            return self.fail(why);
        }
        if now.term <= before.term {
            return;
        }
        if voted_self {
            // Only its own election has a node vote for itself in a new term. One that
            // skips terms (a pre-vote won for the term a majority is at, SPEC.md §12.3)
            // must stay within the same bound as any other move.
            self.watch.elections += 1;
            if now.term == before.term + 1 {
                return;
            }
        }
        let waited = (self.now - self.watch.anchor[i]).as_nanos()
            / self.config.election_timeout_max.as_nanos();
        // Or one term beyond where another honest node has been: a ceiling raised by
        // two members' terms (SPEC.md §12.3), one of which is honest.
        let bound = self
            .highest_elected()
            .saturating_add(TERM_SLACK)
            .saturating_add(u64::try_from(waited).unwrap_or(u64::MAX))
            .max(others.saturating_add(1))
            .min(MAX_TERM);
        if now.term > bound {
            let why = format!(
                "{} moved from term {} to {} > {bound} (highest elected {} + slack {TERM_SLACK} \
                 + {waited} timeouts waited, or one beyond another honest node's {others})",
                self.nodes[i].name,
                before.term,
                now.term,
                self.highest_elected()
            );
            self.fail(why);
        }
    }

    /// Node `i` now follows `leader` in `term` (not itself: see `check_majority`).
    pub(super) fn check_followed(&mut self, i: usize, term: u64, leader: &str) {
        self.watch.anchor[i] = self.now;
        if !self.is_hostile(leader) {
            if !self.is_elected(term, leader) {
                let why = format!(
                    "{} follows {leader} in term {term}, which no majority elected (elected: {:?})",
                    self.nodes[i].name,
                    self.elected.get(&term)
                );
                self.fail(why);
            }
            return;
        }
        let basis = self.basis_before(i);
        let backers = basis.iter().filter(|m| self.backs(m, term, leader)).count();
        if backers * 2 <= basis.len() && !self.backed_by_claimed(i, &basis, term, leader) {
            let why = format!(
                "{} follows the liar {leader} in term {term}, backed by {backers} of {basis:?}",
                self.nodes[i].name
            );
            return self.fail(why);
        }
        self.trace(|| format!("LIAR {leader} genuinely elected in term {term}"));
        self.watch.hostile_terms.insert(term);
        self.note_elected(term, leader.to_owned());
    }

    /// The second form of SPEC.md §12.2: the membership node `i` took with the claim
    /// lists every name of `basis`, and a majority of it backs `leader` in `term`,
    /// counting only names of `basis` and names that had left memberships `i` held
    /// before this input (its former members). Made-up names never count, and no name
    /// of `basis` is left out, so a majority of it overlaps every majority of `basis`
    /// enough that one term cannot have two such leaders (Raft's single-change
    /// argument).
    fn backed_by_claimed(&self, i: usize, basis: &[String], term: u64, leader: &str) -> bool {
        let Some(g) = self.group(i) else {
            return false;
        };
        let claimed = names(g.members());
        if !basis.iter().all(|b| claimed.contains(b)) {
            return false;
        }
        let former = &self.watch.views[i].former;
        let backers = claimed
            .iter()
            .filter(|m| basis.contains(m) || former.contains(m))
            .filter(|m| self.backs(m, term, leader))
            .count();
        backers * 2 > claimed.len()
    }

    /// The members node `i` held before its current input; a node that held none
    /// (a joiner) is judged by the newest membership a leader created.
    fn basis_before(&self, i: usize) -> Vec<String> {
        let view = &self.watch.views[i];
        if !view.members.is_empty() {
            return view.names();
        }
        let lineage = self.nodes[i].lineage;
        self.watch
            .created
            .iter()
            .filter(|(key, _)| key.0 == lineage)
            .max_by_key(|(key, _)| **key)
            .and_then(|(_, lists)| lists.first().cloned())
            .unwrap_or_default()
    }

    /// Whether `name` backs `leader` in `term`: it is the leader, granted it its vote
    /// in `term` (on the wire), or, honest, follows it in `term`.
    fn backs(&self, name: &str, term: u64, leader: &str) -> bool {
        if name == leader {
            return true;
        }
        let voted = self
            .granted
            .get(&(term, leader.to_owned()))
            .is_some_and(|v| v.contains(name));
        let follows = self
            .nodes
            .iter()
            .any(|n| n.name == name && n.known_leader == (term, Some(leader.to_owned())));
        voted || follows
    }

    fn check_membership(&mut self, i: usize, before: &View, now: &View) {
        if now.members.is_empty() {
            return;
        }
        // The leader of the stamp's term, still in it: its own making (it may have
        // stepped down in the same input, by check-quorum).
        let name = &self.nodes[i].name;
        let own = now.term == now.stamp.0 && self.is_elected(now.term, name);
        if own {
            self.record_created(i, now);
            if before.role == Some(Role::Leader) && before.term == now.term {
                self.check_leader_removals(i, before, now);
            }
            return;
        }
        let leader = self.nodes[i].known_leader.1.clone();
        if let Some(liar) = leader.filter(|l| self.is_hostile(l)) {
            return self.check_liars_membership(i, &liar, before, now);
        }
        let names = now.names();
        match self.watch.created.get(&self.stamp_key(i, now.stamp)) {
            Some(created) if created.contains(&names) => {}
            Some(created) => {
                let why = format!(
                    "{} holds membership {:?} = {names:?}, but its leader created {created:?}",
                    self.nodes[i].name, now.stamp
                );
                self.fail(why);
            }
            None => {
                let why = format!(
                    "{} holds membership {:?} = {names:?}, which no leader created",
                    self.nodes[i].name, now.stamp
                );
                self.fail(why);
            }
        }
    }

    /// Node `i`, leading, holds a membership of its own making.
    fn record_created(&mut self, i: usize, now: &View) {
        let names = now.names();
        let twice = self.watch.double_votes.contains(&now.stamp.0);
        let key = self.stamp_key(i, now.stamp);
        let created = self.watch.created.entry(key).or_default();
        if created.contains(&names) {
            return;
        }
        if created.is_empty() || (twice && created.len() < 2) {
            created.push(names);
            return;
        }
        let why = format!(
            "{} created membership {:?} = {names:?}, already created as {created:?}",
            self.nodes[i].name, now.stamp
        );
        self.fail(why);
    }

    /// A `MembersChanged` event of node `i`: if it is the elected leader of its term, a
    /// membership it created. One input may create several (a change committed at once
    /// in a group of one, then the next); the check after the input sees only the last.
    pub(super) fn note_members_changed(&mut self, i: usize, version: u64, members: &[MemberInfo]) {
        let Some(g) = self.group(i).filter(|g| g.role() == Role::Leader) else {
            return;
        };
        let term = g.term();
        if self.is_elected(term, &self.nodes[i].name) {
            self.note_first_created(i, (term, version), names(members));
        }
    }

    /// Leader `i` changed its own membership: an honest member it dropped was reported
    /// unreachable by it in this term, or left.
    fn check_leader_removals(&mut self, i: usize, before: &View, now: &View) {
        let leader = self.nodes[i].name.clone();
        for m in &before.members {
            let kept = now.members.iter().any(|n| n.name == m.name);
            if kept || self.is_hostile(&m.name) {
                continue;
            }
            let detected =
                self.watch
                    .unreachable
                    .contains(&(leader.clone(), m.name.clone(), now.term));
            let left = self.watch.left.contains(&(m.name.clone(), m.incarnation));
            if !detected && !left {
                let stale = self.watch.left.iter().any(|(name, _)| *name == m.name);
                let why = format!(
                    "{leader} removed honest {} (incarnation {}) in term {} without failure \
                     detection or its LEAVE{}",
                    m.name,
                    m.incarnation,
                    now.term,
                    if stale {
                        " (a former incarnation of it left)"
                    } else {
                        ""
                    }
                );
                self.fail(why);
            }
        }
    }

    /// Node `i` follows `liar`, genuinely elected (see `check_followed`), and holds a
    /// membership from it: the liar's to write, but without dropping an honest member
    /// or listing a name that is neither a node nor the liar (a sock puppet).
    fn check_liars_membership(&mut self, i: usize, liar: &str, before: &View, now: &View) {
        let node = |name: &str| self.nodes.iter().any(|n| n.name == name);
        let dropped: Vec<&str> = before
            .members
            .iter()
            .filter(|m| node(&m.name) && !now.members.iter().any(|n| n.name == m.name))
            .map(|m| m.name.as_str())
            .collect();
        let puppets: Vec<&str> = now
            .members
            .iter()
            .filter(|m| !node(&m.name) && m.name != liar)
            .map(|m| m.name.as_str())
            .collect();
        if !dropped.is_empty() || !puppets.is_empty() {
            let why = format!(
                "{} follows the liar {liar} (elected) and took its membership {:?}: honest \
                 members dropped {dropped:?}, sock puppets listed {puppets:?}",
                self.nodes[i].name, now.stamp
            );
            return self.fail(why);
        }
        self.note_first_created(i, now.stamp, now.names());
    }

    /// The key of a membership stamp node `i` holds: its group's (see `Node::lineage`).
    fn stamp_key(&self, i: usize, stamp: (u64, u64)) -> (u32, u64, u64) {
        (self.nodes[i].lineage, stamp.0, stamp.1)
    }

    /// Records `names` as the list created for `stamp` in node `i`'s group, unless one is
    /// known already.
    fn note_first_created(&mut self, i: usize, stamp: (u64, u64), names: Vec<String>) {
        let key = self.stamp_key(i, stamp);
        let created = self.watch.created.entry(key).or_default();
        if created.is_empty() {
            created.push(names);
        }
    }

    /// Leader `i` reports `name` unreachable: an honest member must have been down or
    /// cut off lately.
    pub(super) fn check_unreachable(&mut self, i: usize, name: &str) {
        let term = self.group(i).map_or(0, |g| g.term());
        let leader = self.nodes[i].name.clone();
        self.watch
            .unreachable
            .insert((leader.clone(), name.to_owned(), term));
        let Some(h) = self.nodes.iter().position(|n| n.name == name) else {
            return;
        };
        let window = self.config.failure_removal + self.config.election_timeout_max;
        let lately =
            |j: usize| self.now.saturating_duration_since(self.watch.disturbed[j]) < window;
        let impaired =
            !self.is_up(h) || self.cut_off(h) || self.cut_off(i) || lately(h) || lately(i);
        if !impaired {
            let why = format!(
                "{leader} reports {name} unreachable in term {term}, though both were up and \
                 connected for the last {window:?}"
            );
            self.fail(why);
        }
    }
}
