//! The driver's part in the group: events out, and the node's business with the proxy
//! (asking whom to join, claiming a new group, announcing and refreshing a leadership),
//! leaving, and the `/peers` view.

use super::*;

impl Driver {
    pub(super) fn on_group_event(&mut self, event: GroupEvent) {
        tracing::trace!(?event, "group event");
        self.rendezvous.handle_event(Instant::now(), &event);
        if let GroupEvent::MembersChanged { members, .. } = &event {
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
        self.emit(NodeEvent::Group(event));
    }

    /// The node's business with the proxy ([`Rendezvous`] decides, the driver carries
    /// the requests), and the sessions kept open with the other members.
    pub(super) fn housekeeping(&mut self, now: Instant) {
        if self.exit_deadline.is_some() {
            return;
        }
        let wall_ms = sockmsg_keymgr::datadir::now_ms();
        while let Some(request) = self.rendezvous.poll_request(now, wall_ms, &mut self.group) {
            self.spawn_proxy_request(request);
        }
        while let Some(event) = self.rendezvous.poll_event() {
            match event {
                RendezvousEvent::Notice(text) => self.emit(NodeEvent::Notice(text)),
                RendezvousEvent::Founded => {}
            }
        }
        self.keep_sessions(now);
    }

    /// Keeps a session open with every other member, so that an election's (pre-)vote
    /// requests go out at once instead of waiting for a key lookup and a handshake (in
    /// which time a second candidate's timer fires and the votes split). Of each pair, the
    /// smaller name opens it; every session is pinged before its idle timeout.
    fn keep_sessions(&mut self, now: Instant) {
        if !self.rendezvous.joined() {
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

    /// Performs a request off the event loop, with every proxy at once ([`ProxySet`]
    /// combines their answers into one); the answer comes back as
    /// [`TaskResult::Proxy`]. A claim or an announcement is signed once, on a blocking
    /// thread (on the loop, a leader's refresh every 3 s held up every session for the
    /// 2–7 ms of RSA), and the same signature goes to each proxy.
    fn spawn_proxy_request(&self, request: ProxyRequest) {
        let proxy = self.proxy.clone();
        let group = self.settings.group.clone();
        let signer = self.signer.clone();
        let tasks = self.tasks_tx.clone();
        tokio::spawn(async move {
            let answer = match request {
                ProxyRequest::Query => proxy.query(&group).await,
                ProxyRequest::Claim(draft) => {
                    propose(&proxy, signer, Kind::Claim, draft, vec![]).await
                }
                ProxyRequest::Announce { draft, votes } => {
                    propose(&proxy, signer, Kind::Announce, draft, votes).await
                }
            };
            let _ = tasks.send(TaskResult::Proxy(answer));
        });
    }

    pub(super) fn begin_exit(&mut self) {
        if self.exit_deadline.is_some() {
            return;
        }
        let now = Instant::now();
        self.exit_deadline = Some(now + EXIT_GRACE);
        self.rendezvous.stop();
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

/// Signs `draft` once, on a blocking thread, and proposes it to every proxy.
async fn propose(
    proxy: &ProxySet,
    signer: Arc<RsaSigner>,
    kind: Kind,
    draft: RecordDraft,
    votes: Vec<(String, Vec<u8>)>,
) -> ProxyAnswer {
    let signed = tokio::task::spawn_blocking(move || {
        let signature = sign_record(&draft, signer.as_ref());
        (draft, signature)
    })
    .await;
    match signed {
        Ok((draft, Ok(signature))) => proxy.propose(kind, draft, signature, votes).await,
        Ok((_, Err(e))) => ProxyAnswer::Failed(e.to_string()),
        Err(e) => ProxyAnswer::Failed(format!("signing the record failed: {e}")),
    }
}
