//! Chat: the sender sends each line straight to every member (no leader on the path);
//! receivers deliver each (sender, incarnation)'s lines exactly once, in seq order.
//!
//! Receipts: the session layer acknowledges each line's message once the peer's session
//! holds it (and delivers it to the peer's group in order), so the driver reports
//! [`Group::chat_delivered`] on that acknowledgement and [`Group::chat_failed`] when the
//! session to the recipient is lost first; the group turns them into per-line counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{CommandError, Group, GroupEvent, Role};
use crate::message::{ChatLine, GroupMessage, MAX_LINE_LEN};

#[derive(Debug, Default)]
pub(super) struct ChatState {
    /// Our last line number (this incarnation).
    last_seq: u64,
    /// Per sender: its incarnation we hear from and the next seq we would deliver.
    /// Lines travel in the ordered class, so they arrive in order within one session;
    /// `next` drops duplicates and older lines, and a gap (lines sent while we were not
    /// in the sender's membership, or a session lost in a partition) is skipped.
    receivers: HashMap<String, (u64, u64)>,
    /// Lines whose receipts are still awaited, by seq (oldest first, at most
    /// [`MAX_TRACKED_LINES`]: the oldest is forgotten, never an unbounded backlog).
    pub(super) receipts: BTreeMap<u64, Receipt>,
}

/// How many sent lines wait for receipts at most.
pub const MAX_TRACKED_LINES: usize = 4096;

#[derive(Debug)]
pub(super) struct Receipt {
    waiting: BTreeSet<String>,
    delivered: usize,
    of: usize,
}

impl Group {
    /// Sends `text` to every other member; returns the line's seq.
    pub fn send_chat(&mut self, text: &str) -> Result<u64, CommandError> {
        self.check_can_chat(text)?;
        let recipients = self.others();
        Ok(self.send_line(text, false, recipients))
    }

    /// Sends `text` to member `to` alone (a direct message); returns the line's seq. It
    /// shares the sender's numbering with group lines, so the others see a gap there,
    /// which receivers skip.
    pub fn send_direct(&mut self, to: &str, text: &str) -> Result<u64, CommandError> {
        self.check_can_chat(text)?;
        if to == self.me.name || !self.members.iter().any(|m| m.name == to) {
            return Err(CommandError::UnknownMember(to.to_owned()));
        }
        Ok(self.send_line(text, true, vec![to.to_owned()]))
    }

    fn check_can_chat(&self, text: &str) -> Result<(), CommandError> {
        if self.role == Role::Left {
            return Err(CommandError::Left);
        }
        if !self.is_member() {
            return Err(CommandError::NotMember);
        }
        if text.is_empty() || text.len() > MAX_LINE_LEN {
            return Err(CommandError::LineLength { max: MAX_LINE_LEN });
        }
        Ok(())
    }

    fn send_line(&mut self, text: &str, direct: bool, recipients: Vec<String>) -> u64 {
        self.chat.last_seq += 1;
        let line = ChatLine {
            sender: self.me.name.clone(),
            incarnation: self.me.incarnation,
            seq: self.chat.last_seq,
            direct,
            text: text.to_owned(),
        };
        for to in &recipients {
            self.send(to, GroupMessage::Chat(line.clone()));
        }
        if recipients.is_empty() {
            self.event(GroupEvent::Delivered {
                seq: line.seq,
                to: None,
                delivered: 0,
                of: 0,
            });
        } else {
            if self.chat.receipts.len() >= MAX_TRACKED_LINES {
                self.chat.receipts.pop_first();
            }
            let of = recipients.len();
            let receipt = Receipt {
                waiting: recipients.into_iter().collect(),
                delivered: 0,
                of,
            };
            self.chat.receipts.insert(line.seq, receipt);
        }
        line.seq
    }

    /// The driver: the session to `to` acknowledged our line `seq`.
    pub fn chat_delivered(&mut self, to: &str, seq: u64) {
        self.receipt(to, seq, true);
    }

    /// The driver: the session to `to` was lost before it acknowledged our line `seq`.
    pub fn chat_failed(&mut self, to: &str, seq: u64) {
        self.receipt(to, seq, false);
    }

    fn receipt(&mut self, to: &str, seq: u64, delivered: bool) {
        let Some(receipt) = self.chat.receipts.get_mut(&seq) else {
            return;
        };
        if !receipt.waiting.remove(to) {
            return;
        }
        let event = if delivered {
            receipt.delivered += 1;
            GroupEvent::Delivered {
                seq,
                to: Some(to.to_owned()),
                delivered: receipt.delivered,
                of: receipt.of,
            }
        } else {
            GroupEvent::Undelivered {
                seq,
                to: to.to_owned(),
            }
        };
        if receipt.waiting.is_empty() {
            self.chat.receipts.remove(&seq);
        }
        self.event(event);
    }

    pub(super) fn on_chat(&mut self, line: ChatLine) {
        if line.seq == 0 {
            return;
        }
        let entry = self
            .chat
            .receivers
            .entry(line.sender.clone())
            .or_insert((line.incarnation, line.seq));
        if entry.0 != line.incarnation {
            // A restarted sender: a new numbering. (An old incarnation's late lines
            // after that are dropped with it.)
            *entry = (line.incarnation, line.seq);
        }
        if line.seq < entry.1 {
            return;
        }
        entry.1 = line.seq + 1;
        self.event(GroupEvent::ChatReceived {
            sender: line.sender,
            incarnation: line.incarnation,
            seq: line.seq,
            direct: line.direct,
            text: line.text,
        });
    }
}
