//! Chat: the sender sends each line straight to every member (no leader on the path);
//! receivers deliver each (sender, incarnation)'s lines exactly once, in seq order.

use std::collections::HashMap;

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
}

impl Group {
    /// Sends `text` to every other member; returns the line's seq.
    pub fn send_chat(&mut self, text: &str) -> Result<u64, CommandError> {
        if self.role == Role::Left {
            return Err(CommandError::Left);
        }
        if !self.is_member() {
            return Err(CommandError::NotMember);
        }
        if text.is_empty() || text.len() > MAX_LINE_LEN {
            return Err(CommandError::LineLength { max: MAX_LINE_LEN });
        }
        self.chat.last_seq += 1;
        let line = ChatLine {
            sender: self.me.name.clone(),
            incarnation: self.me.incarnation,
            seq: self.chat.last_seq,
            direct: false,
            text: text.to_owned(),
        };
        for to in self.others() {
            self.send(&to, GroupMessage::Chat(line.clone()));
        }
        Ok(line.seq)
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
            text: line.text,
        });
    }
}
