//! The driver's sessions: one per peer (opened on demand after the peer's key is
//! fetched, or accepted), group messages in and out of them, chat receipts from their
//! acknowledgements, and the datagrams to the socket.

use super::*;

impl Driver {
    pub(super) fn on_session_event(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        event: Event,
    ) {
        match event {
            Event::Connected { peer } => {
                self.peer_of.insert(handle, peer.clone());
                self.log_secrets(handle);
                // Both sides may have opened a session at once: each sends on the one
                // opened by the smaller name, so both settle on the same.
                let new_addr = self.endpoint.connection(handle).map(|c| c.peer_addr());
                let keep = match self.sessions.get(&peer) {
                    None => true,
                    Some(&current) if current == handle => true,
                    // The peer moved or restarted: its old session is dead.
                    Some(&current)
                        if self.endpoint.connection(current).map(|c| c.peer_addr()) != new_addr =>
                    {
                        self.retire_session(current);
                        true
                    }
                    Some(_) => {
                        let initiated_by_us = self
                            .endpoint
                            .connection(handle)
                            .is_some_and(|c| c.role() == sockmsg_wire::session::Role::Initiator);
                        let opener = if initiated_by_us {
                            &self.me.name
                        } else {
                            &peer
                        };
                        let other_opener = if initiated_by_us {
                            &peer
                        } else {
                            &self.me.name
                        };
                        opener < other_opener
                    }
                };
                if keep {
                    self.sessions.insert(peer.clone(), handle);
                }
                if let Some(addr) = self.endpoint.connection(handle).map(|c| c.peer_addr()) {
                    self.addrs.entry(peer.clone()).or_insert(addr);
                }
                self.flush_waiting(now, &peer);
            }
            Event::Message { data, .. } => {
                let Some(peer) = self.peer_of.get(&handle).cloned() else {
                    return;
                };
                for frame in Frames::new(Carrier::Message, &data, 0) {
                    let Ok(frame) = frame else {
                        tracing::debug!("malformed group frame from {peer}");
                        break;
                    };
                    match self.reassembly.accept(&peer, &frame) {
                        Ok(Some(msg)) => {
                            // Only a peer's own JOIN tells where it listens: a JOIN naming
                            // anyone else is refused by the group (SPEC.md §12), and must not
                            // grow this map either.
                            if let GroupMessage::Join(member) = &msg {
                                if member.name == peer {
                                    self.addrs.insert(peer.clone(), member.addr);
                                }
                            }
                            tracing::trace!(kind = msg.kind(), from = %peer, "group frame in");
                            self.group.step(now, &peer, msg);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!("group frame from {peer} dropped: {e}"),
                    }
                }
            }
            Event::Acked(id) => {
                if let Some((to, seq)) = self.receipts.remove(&(handle, id)) {
                    self.group.chat_delivered(&to, seq);
                }
            }
            Event::Unreachable => {
                if let Some(peer) = self.peer_of.get(&handle).cloned() {
                    self.emit(NodeEvent::Unreachable { peer });
                }
            }
            Event::Closed(reason) => self.on_closed(handle, reason),
        }
    }

    pub(super) fn on_closed(&mut self, handle: ConnectionHandle, reason: CloseReason) {
        let peer = self.peer_of.remove(&handle).or_else(|| {
            self.sessions
                .iter()
                .find(|(_, h)| **h == handle)
                .map(|(p, _)| p.clone())
        });
        let failed: Vec<(ConnectionHandle, MessageId)> = self
            .receipts
            .keys()
            .filter(|(h, _)| *h == handle)
            .copied()
            .collect();
        for key in failed {
            if let Some((to, seq)) = self.receipts.remove(&key) {
                self.group.chat_failed(&to, seq);
            }
        }
        let Some(peer) = peer else { return };
        if self.sessions.get(&peer) == Some(&handle) {
            self.sessions.remove(&peer);
            self.reassembly.forget(&peer);
        }
        if let CloseReason::AuthenticationFailed(why) = reason {
            self.emit(NodeEvent::Notice(format!(
                "session with {peer} refused: {why}"
            )));
        }
    }

    /// Sends a group message to `to`, opening a session first if none is open.
    pub(super) fn send(
        &mut self,
        now: Instant,
        to: &str,
        class: MessageClass,
        frame: GroupMessage,
    ) {
        if let Some(&handle) = self.sessions.get(to) {
            if self
                .endpoint
                .connection(handle)
                .is_some_and(|c| !c.is_closed())
            {
                self.send_on(handle, to, class, frame);
                return;
            }
            self.sessions.remove(to);
        }
        let queue = self.waiting.entry(to.to_owned()).or_default();
        if queue.len() >= MAX_WAITING {
            if let Some(dropped) = queue.pop_front() {
                if let GroupMessage::Chat(line) = dropped.frame {
                    self.group.chat_failed(to, line.seq);
                }
            }
        }
        self.waiting
            .entry(to.to_owned())
            .or_default()
            .push_back(Waiting { class, frame });
        self.open_session(now, to);
    }

    pub(super) fn send_on(
        &mut self,
        handle: ConnectionHandle,
        to: &str,
        class: MessageClass,
        frame: GroupMessage,
    ) {
        let pieces = match frame.to_wire_messages() {
            Ok(pieces) => pieces,
            Err(e) => {
                tracing::warn!("cannot encode {} for {to}: {e}", frame.kind());
                return;
            }
        };
        let mut last = None;
        for piece in &pieces {
            match self.endpoint.send(handle, class, piece) {
                Ok(id) => last = Some(id),
                Err(e) => {
                    tracing::debug!("{} to {to} not queued: {e}", frame.kind());
                    last = None;
                    break;
                }
            }
        }
        if let GroupMessage::Chat(line) = &frame {
            match last {
                Some(id) => {
                    self.receipts
                        .insert((handle, id), (to.to_owned(), line.seq));
                }
                None => self.group.chat_failed(to, line.seq),
            }
        }
    }

    /// Opens a session to `to` if its address and key are known (fetching the key if
    /// not; the waiting messages go out once it is connected).
    pub(super) fn open_session(&mut self, now: Instant, to: &str) {
        if self.sessions.contains_key(to) {
            return;
        }
        let Some(&addr) = self.addrs.get(to) else {
            tracing::debug!("no address for {to}: message dropped");
            self.fail_waiting(to);
            return;
        };
        if !self.keys.contains(to) {
            self.fetch_key(to);
            return;
        }
        let handle = self.endpoint.connect(now, addr, to);
        self.sessions.insert(to.to_owned(), handle);
        self.peer_of.insert(handle, to.to_owned());
    }

    pub(super) fn flush_waiting(&mut self, now: Instant, peer: &str) {
        let Some(&handle) = self.sessions.get(peer) else {
            if self.waiting.contains_key(peer) {
                self.open_session(now, peer);
            }
            return;
        };
        let established = self
            .endpoint
            .connection(handle)
            .is_some_and(|c| c.is_established());
        if !established {
            return;
        }
        if let Some(queue) = self.waiting.remove(peer) {
            for waiting in queue {
                self.send_on(handle, peer, waiting.class, waiting.frame);
            }
        }
    }

    /// Appends the session's secrets to the key log (SPEC.md §5.4).
    pub(super) fn log_secrets(&mut self, handle: ConnectionHandle) {
        use std::io::Write as _;
        let (Some(file), Some(secrets)) = (
            self.keylog.as_mut(),
            self.endpoint
                .connection(handle)
                .and_then(|c| c.keylog_secrets()),
        ) else {
            return;
        };
        let mut lines = String::new();
        for (cid, secret) in secrets {
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            lines += &format!("SOCKMSG_TRAFFIC_SECRET {cid:016x} {hex}\n");
        }
        if let Err(e) = file.write_all(lines.as_bytes()) {
            tracing::warn!("cannot write the key log: {e}");
        }
    }

    /// Stops sending on `handle` (its peer is gone): closes it, so that its unacknowledged
    /// chat lines are reported undelivered when it ends, and unmaps it.
    pub(super) fn retire_session(&mut self, handle: ConnectionHandle) {
        self.sessions.retain(|_, h| *h != handle);
        self.endpoint
            .close(Instant::now(), handle, CloseCode::NORMAL, "peer restarted");
    }

    pub(super) fn fail_waiting(&mut self, peer: &str) {
        if let Some(queue) = self.waiting.remove(peer) {
            for waiting in queue {
                if let GroupMessage::Chat(line) = waiting.frame {
                    self.group.chat_failed(peer, line.seq);
                }
            }
        }
    }

    pub(super) fn fetch_key(&mut self, name: &str) {
        if !self.fetching.insert(name.to_owned()) {
            return;
        }
        let keymgr = self.keymgr.clone();
        let tasks = self.tasks_tx.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let result = keymgr.lookup(&name).await.map_err(|e| e.to_string());
            let _ = tasks.send(TaskResult::Key(name, result));
        });
    }

    /// Sends every datagram the endpoint has ready.
    pub(super) async fn flush(&mut self) {
        let now = Instant::now();
        while let Some(transmit) = self.endpoint.poll_transmit(now) {
            if let Err(e) = self
                .socket
                .send_to(&transmit.contents, transmit.destination)
                .await
            {
                tracing::debug!("send to {}: {e}", transmit.destination);
            }
        }
    }

    pub(super) fn all_acked(&self) -> bool {
        self.endpoint
            .connections()
            .all(|(_, c)| c.bytes_in_flight() == 0)
    }

    pub(super) async fn close_all(&mut self) {
        let now = Instant::now();
        let handles: Vec<ConnectionHandle> = self.endpoint.connections().map(|(h, _)| h).collect();
        for handle in handles {
            self.endpoint.close(now, handle, CloseCode::NORMAL, "bye");
        }
        self.flush().await;
    }
}
