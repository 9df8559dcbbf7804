//! Term bounds: no frame may carry, and no node may hold, a term above [`MAX_TERM`].
//!
//! A term is a `u64` that every election increments. Before this check, one frame from
//! any member with term 2^64−1 (a VOTE_REQUEST, a MEMBERSHIP_ACK) set and persisted that
//! term, and the next `term + 1` wrapped to 0 in a release build: the group was wedged
//! for good, across restarts. With the cap, `term + 1` never wraps, a frame above it is
//! dropped and counted ([`Violation::TermOutOfRange`]) without any state change, and a
//! node that persisted such a term before recovers at start.
//!
//! This is the first of the authorization rules of issue "membership is the group's
//! trust boundary"; the others (members only, proof of election, bounded term moves)
//! build on the same [`Rejections`] counters.

use super::Group;
use crate::message::GroupMessage;

/// The highest term any frame may carry and any node may hold: 2^48, so `term + 1`
/// never wraps. At one election a millisecond a group needs 8,900 years to reach it.
pub const MAX_TERM: u64 = 1 << 48;

/// Why a group frame was dropped before it could change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// A term above [`MAX_TERM`].
    TermOutOfRange,
    /// A MEMBERSHIP created in a later term than the one it is sent in.
    BadMembership,
}

impl Violation {
    const ALL: [Violation; 2] = [Violation::TermOutOfRange, Violation::BadMembership];
}

/// Frames dropped by the checks, per [`Violation`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections([u64; Violation::ALL.len()]);

impl Rejections {
    pub fn get(&self, violation: Violation) -> u64 {
        self.0[violation as usize]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub(super) fn count(&mut self, violation: Violation) {
        self.0[violation as usize] += 1;
    }
}

impl Group {
    /// Frames dropped before they could change anything, per kind.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// The term checks every group frame passes before it is acted on.
    pub(super) fn check_terms(&self, msg: &GroupMessage) -> Result<(), Violation> {
        let term = match msg {
            GroupMessage::Heartbeat { term, .. }
            | GroupMessage::MembershipAck { term, .. }
            | GroupMessage::TransferLeadership { term, .. } => *term,
            GroupMessage::Membership {
                term,
                membership_term,
                ..
            } => {
                if membership_term > term {
                    return Err(Violation::BadMembership);
                }
                *term
            }
            GroupMessage::PreVoteRequest(req) | GroupMessage::VoteRequest(req) => req.term,
            GroupMessage::Vote(vote) => vote.term,
            GroupMessage::Join(_) | GroupMessage::Leave { .. } | GroupMessage::Chat(_) => 0,
        };
        if term > MAX_TERM {
            return Err(Violation::TermOutOfRange);
        }
        Ok(())
    }

    /// A term above [`MAX_TERM`] on disk can only come from an older version under
    /// attack: start again from the term of the membership we hold (created by a leader
    /// we followed), with no vote cast. A vote in a term between that one and the absurd
    /// one may be cast twice; no honest election can have used such a term, since the
    /// absurd one was pushed by a single frame.
    pub(super) fn recover_absurd_term(&mut self) {
        if self.hard.term <= MAX_TERM && self.hard.membership_term <= MAX_TERM {
            return;
        }
        self.hard.membership_term = self.hard.membership_term.min(MAX_TERM);
        self.membership_term = self.hard.membership_term;
        self.hard.term = self.hard.membership_term;
        self.hard.voted_for = None;
        self.announced = (self.hard.term, None);
        self.persist();
    }
}
