//! The group's timers: a small table whose minimum is the next deadline (as in
//! quinn-proto's `connection/timer.rs`).

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Follower/candidate: no leader heard for a (randomised) election timeout.
    Election = 0,
    /// Leader: send heartbeats, look for failed members.
    Heartbeat = 1,
    /// Leader: step down unless a majority was heard within the window (thesis §6.2).
    CheckQuorum = 2,
    /// Joiner: repeat JOIN until admitted.
    JoinRetry = 3,
    /// Member: a question about a removal we vet has gone unanswered (SPEC.md §12.5).
    Vetting = 4,
}

const ALL: [Timer; 5] = [
    Timer::Election,
    Timer::Heartbeat,
    Timer::CheckQuorum,
    Timer::JoinRetry,
    Timer::Vetting,
];

#[derive(Debug, Default, Clone)]
pub(super) struct Timers([Option<Instant>; 5]);

impl Timers {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// Takes one timer due at `now` (the earliest first), clearing it.
    pub fn expired(&mut self, now: Instant) -> Option<Timer> {
        let timer = ALL
            .into_iter()
            .filter(|&t| self.0[t as usize].is_some_and(|at| at <= now))
            .min_by_key(|&t| self.0[t as usize])?;
        self.0[timer as usize] = None;
        Some(timer)
    }
}
