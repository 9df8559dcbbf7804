//! The driver's part in the group: events out, and the node's business with the proxy
//! (asking whom to join, claiming a new group, announcing and refreshing a leadership),
//! leaving, and the `/peers` view.

use super::*;

impl Driver {
    pub(super) fn on_group_event(&mut self, event: GroupEvent) {
        tracing::trace!(?event, "group event");
        match &event {
            GroupEvent::MembersChanged { members, .. } => {
                let me = self.me.name.clone();
                for m in members.iter().filter(|m| m.name != me) {
                    self.addrs.insert(m.name.clone(), m.addr);
                    let before = self.incarnations.insert(m.name.clone(), m.incarnation);
                    let restarted = before.is_some_and(|b| b != m.incarnation);
                    let moved = self
                        .sessions
                        .get(&m.name)
                        .and_then(|h| self.endpoint.connection(*h))
                        .is_some_and(|c| c.peer_addr() != m.addr);
                    if restarted || moved {
                        // Its sessions died with the old process: open a new one.
                        if let Some(handle) = self.sessions.get(&m.name).copied() {
                            self.retire_session(handle);
                        }
                    }
                }
            }
            GroupEvent::LeaderChanged { leader, .. } => {
                // Since the first term without a leader: a node that moves from term
                // to term without following anyone is still leaderless.
                self.leaderless_since = match leader {
                    Some(_) => None,
                    None => Some(self.leaderless_since.unwrap_or_else(Instant::now)),
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
        self.emit(NodeEvent::Group(event));
    }

    /// The node's business with the proxy: (re)join when not admitted or long without
    /// a leader; while leading, announce and refresh.
    pub(super) fn housekeeping(&mut self, now: Instant) {
        if self.exit_deadline.is_some() {
            return;
        }
        let leaderless_long = self
            .leaderless_since
            .is_some_and(|since| now - since >= LEADERLESS_REQUERY);
        // A leader we already hear from is the best contact.
        if !self.joined && self.group.role() != Role::Leader {
            if let Some(leader) = self.group.leader().map(str::to_owned) {
                if self.join_sent_to.as_deref() != Some(leader.as_str()) {
                    let _ = self.group.join(now, &leader);
                    self.join_sent_to = Some(leader);
                }
            }
        }
        let want_proxy = !self.joined || leaderless_long;
        let due = self.last_query.is_none_or(|at| now - at >= REJOIN_INTERVAL);
        if want_proxy && due && !self.querying && self.group.role() != Role::Leader {
            self.querying = true;
            self.last_query = Some(now);
            let proxy = self.proxy.clone();
            let group = self.settings.group.clone();
            let tasks = self.tasks_tx.clone();
            tokio::spawn(async move {
                let result = proxy.query(&group).await.map_err(|e| e.to_string());
                let _ = tasks.send(TaskResult::Query(result));
            });
        }
        if self.group.role() == Role::Leader {
            self.announce_if_due(now);
        }
        self.keep_sessions(now);
    }

    /// Keeps a session open with every other member, so that an election's (pre-)vote
    /// requests go out at once instead of waiting for a key lookup and a handshake (in
    /// which time a second candidate's timer fires and the votes split). Of each pair, the
    /// smaller name opens it; every session is pinged before its idle timeout.
    fn keep_sessions(&mut self, now: Instant) {
        if !self.joined {
            return;
        }
        let others: Vec<String> = self
            .group
            .members()
            .iter()
            .filter(|m| m.name > self.me.name)
            .map(|m| m.name.clone())
            .collect();
        for name in others {
            if !self.sessions.contains_key(&name) {
                self.open_session(now, &name);
            }
        }
        if now >= self.keepalive_at {
            self.keepalive_at = now + KEEPALIVE_INTERVAL;
            let handles: Vec<ConnectionHandle> = self.sessions.values().copied().collect();
            for handle in handles {
                self.endpoint.ping(handle);
            }
        }
    }

    pub(super) fn on_record(&mut self, now: Instant, record: RecordSummary) {
        if record.leader == self.me.name {
            // Our own record from before a restart: the members will elect anew.
            return;
        }
        self.addrs
            .entry(record.leader.clone())
            .or_insert(record.leader_addr);
        let known_leader = self.group.leader().is_some();
        // The proxy checked a majority of signed votes for this (term, leader): evidence
        // enough for a joiner to follow it (SPEC.md §12.2).
        self.group.vouch(now, record.term, &record.leader);
        if !self.joined || !known_leader {
            // The proxy's record may lag an election: a leader we hear from wins; else
            // every member of the record is a contact (the leader among them admits us,
            // and a majority of them is whom a later leader must be backed by).
            match self.group.leader().filter(|l| *l != self.me.name) {
                Some(leader) => {
                    let leader = leader.to_owned();
                    let _ = self.group.join(now, &leader);
                    self.join_sent_to = Some(leader);
                }
                None => {
                    let mut contacts = vec![record.leader.as_str()];
                    contacts.extend(
                        record
                            .members
                            .iter()
                            .map(String::as_str)
                            .filter(|m| *m != record.leader),
                    );
                    let _ = self.group.join_via(now, &contacts);
                    self.join_sent_to = Some(record.leader.clone());
                }
            }
        }
    }

    /// No leader at the proxy. A newcomer claims the group (and founds it once the
    /// proxy accepts); a node with a past in the group waits for its members to elect,
    /// and founds it again only if nobody announced anything for [`REFOUND_AFTER`].
    pub(super) fn on_no_record(&mut self, now: Instant) {
        let since = *self.no_record_since.get_or_insert(now);
        if self.group.role() == Role::Leader {
            return;
        }
        if self.newcomer {
            self.claim();
        } else if now - since >= REFOUND_AFTER && self.group.leader().is_none() {
            self.emit(NodeEvent::Notice(
                "no member of the group has been heard of for a while: founding it again".into(),
            ));
            let term = self.group.term();
            let _ = self.group.bootstrap(now, term);
            self.no_record_since = None;
        }
    }

    pub(super) fn claim(&mut self) {
        let draft = RecordDraft {
            group: self.settings.group.clone(),
            term: 1,
            leader: self.me.name.clone(),
            leader_addr: self.me.addr,
            membership_version: 1,
            members: vec![self.me.name.clone()],
            issued_at_ms: sockmsg_keymgr::datadir::now_ms(),
        };
        self.querying = true;
        self.spawn_proposal(Kind::Claim, draft, Vec::new());
    }

    pub(super) fn announce_if_due(&mut self, now: Instant) {
        if self.announcing {
            return;
        }
        let term = self.group.term();
        let version = self.group.membership_version();
        let due = match self.announced {
            None => true,
            Some((t, v, at, _)) => t != term || v != version || now - at >= REFRESH_INTERVAL,
        };
        if !due {
            return;
        }
        // A new leader's votes are signed a few milliseconds after they elected it.
        let Some(votes) = self.group.election_proof() else {
            return;
        };
        let wall = sockmsg_keymgr::datadir::now_ms();
        let issued_at_ms = match self.announced {
            Some((.., issued)) => wall.max(issued + 1),
            None => wall,
        };
        self.announced = Some((term, version, now, issued_at_ms));
        let draft = RecordDraft {
            group: self.settings.group.clone(),
            term,
            leader: self.me.name.clone(),
            leader_addr: self.me.addr,
            membership_version: version,
            members: self
                .group
                .members()
                .iter()
                .map(|m| m.name.clone())
                .collect(),
            issued_at_ms,
        };
        self.announcing = true;
        self.spawn_proposal(Kind::Announce, draft, votes);
    }

    /// Signs and sends a claim or an announcement off the event loop; the verdict comes
    /// back as [`TaskResult::Claim`] or [`TaskResult::Announce`]. The signature is made on
    /// a blocking thread: on the loop, a leader's refresh every 3 s held up every
    /// session for the 2–7 ms of RSA.
    fn spawn_proposal(&self, kind: Kind, draft: RecordDraft, votes: Vec<(String, Vec<u8>)>) {
        let proxy = self.proxy.clone();
        let signer = self.signer.clone();
        let tasks = self.tasks_tx.clone();
        tokio::spawn(async move {
            let signed = tokio::task::spawn_blocking(move || {
                let signature = sign_record(&draft, signer.as_ref());
                (draft, signature)
            })
            .await;
            let result = match signed {
                Ok((draft, Ok(signature))) => proxy
                    .propose(kind, &draft, &signature, &votes)
                    .await
                    .map_err(|e| e.to_string()),
                Ok((_, Err(e))) => Err(e.to_string()),
                Err(e) => Err(format!("signing the record failed: {e}")),
            };
            let _ = tasks.send(match kind {
                Kind::Claim => TaskResult::Claim(result),
                Kind::Announce => TaskResult::Announce(result),
            });
        });
    }

    pub(super) fn begin_exit(&mut self) {
        if self.exit_deadline.is_some() {
            return;
        }
        let now = Instant::now();
        self.exit_deadline = Some(now + EXIT_GRACE);
        if self.group.leave(now).is_err() {
            // Already left: nothing to hand over.
            self.exit_deadline = Some(now);
        }
    }

    pub(super) fn peers_report(&self) -> PeersReport {
        let leader = self.group.leader().map(str::to_owned);
        let members = self
            .group
            .members()
            .iter()
            .map(|m| PeerLine {
                leader: leader.as_deref() == Some(m.name.as_str()),
                me: m.name == self.me.name,
                rtt: self
                    .sessions
                    .get(&m.name)
                    .and_then(|h| self.endpoint.connection(*h))
                    .filter(|c| c.is_established())
                    .map(|c| c.rtt()),
                info: m.clone(),
            })
            .collect();
        let refused = self
            .group
            .rejections()
            .iter()
            .map(|(violation, n)| (violation.name(), n))
            .collect();
        PeersReport {
            term: self.group.term(),
            leader,
            members,
            refused,
        }
    }

    pub(super) fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }
}
