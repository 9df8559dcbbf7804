//! Chat lines longer than one session message (SPEC.md §7.10): the sender cuts a line
//! into CHAT fragments, each its own ordered session message; the receiver joins them.
//!
//! A session message holds at most [`sockmsg_wire::limits::MAX_MESSAGE_LEN`] bytes, a
//! line up to [`MAX_LINE_LEN`], so a line of the maximum length cannot travel whole.
//! Fragments of one line go out back to back in the ordered class, so a receiver gets
//! them consecutively, in order, from each peer: reassembly needs one partial line per
//! peer and no reordering buffer. Anything else (a fragment that does not continue the
//! partial line) is a protocol violation: the partial line is dropped and counted.

use std::collections::HashMap;

use sockmsg_wire::frame::{ChatFlags, Frame};

use crate::message::{ChatLine, FromWireError, GroupMessage, ToWireError, MAX_LINE_LEN};

/// The largest piece of a line one CHAT frame carries. Small enough that a fragment and
/// its header stay far below one session message, large enough that a maximal line
/// needs only four.
pub const MAX_FRAGMENT_LEN: usize = 16 * 1024;

impl GroupMessage {
    /// The session messages that carry this message, in order: one, or for a chat
    /// line longer than [`MAX_FRAGMENT_LEN`], one per fragment (cut at UTF-8 boundaries
    /// is not needed: the receiver checks UTF-8 on the whole line).
    pub fn to_wire_messages(&self) -> Result<Vec<Vec<u8>>, ToWireError> {
        let GroupMessage::Chat(line) = self else {
            let mut out = Vec::new();
            self.to_wire(&mut out)?;
            return Ok(vec![out]);
        };
        let text = line.text.as_bytes();
        if text.len() <= MAX_FRAGMENT_LEN {
            let mut out = Vec::new();
            self.to_wire(&mut out)?;
            return Ok(vec![out]);
        }
        let total_len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        text.chunks(MAX_FRAGMENT_LEN)
            .enumerate()
            .map(|(i, piece)| {
                let offset = (i * MAX_FRAGMENT_LEN) as u32;
                let mut out = Vec::new();
                line.encode_fragment(total_len, offset, piece, &mut out)?;
                Ok(out)
            })
            .collect()
    }
}

/// A line being received in fragments from one peer.
#[derive(Debug)]
struct Partial {
    sender: String,
    incarnation: u64,
    seq: u64,
    direct: bool,
    total_len: usize,
    data: Vec<u8>,
}

/// Joins CHAT fragments per session peer; every other group frame passes through.
#[derive(Debug, Default)]
pub struct ChatReassembly {
    partial: HashMap<String, Partial>,
    /// Partial lines dropped because a fragment did not continue them.
    pub dropped: u64,
}

impl ChatReassembly {
    /// The group message in `frame` from session peer `from`: `Ok(None)` while a line
    /// is incomplete.
    pub fn accept(
        &mut self,
        from: &str,
        frame: &Frame<'_>,
    ) -> Result<Option<GroupMessage>, FromWireError> {
        let Frame::Chat(chat) = frame else {
            return GroupMessage::from_wire(frame).map(Some);
        };
        let fragment = &chat.fragment;
        if fragment.is_whole() {
            if self.partial.remove(from).is_some() {
                self.dropped += 1;
            }
            return GroupMessage::from_wire(frame).map(Some);
        }
        let total_len = fragment.total_len() as usize;
        if total_len > MAX_LINE_LEN {
            return Err(FromWireError::FragmentOutOfOrder);
        }
        let direct = chat.flags.contains(ChatFlags::DIRECT);
        let continues = self.partial.get(from).is_some_and(|p| {
            p.sender == chat.sender.as_str()
                && p.incarnation == chat.incarnation
                && p.seq == chat.seq
                && p.direct == direct
                && p.total_len == total_len
                && p.data.len() == fragment.offset() as usize
        });
        if !continues {
            if self.partial.remove(from).is_some() {
                self.dropped += 1;
            }
            if fragment.offset() != 0 {
                return Err(FromWireError::FragmentOutOfOrder);
            }
            let partial = Partial {
                sender: chat.sender.as_str().to_owned(),
                incarnation: chat.incarnation,
                seq: chat.seq,
                direct,
                total_len,
                data: Vec::with_capacity(total_len),
            };
            self.partial.insert(from.to_owned(), partial);
        }
        let Some(partial) = self.partial.get_mut(from) else {
            return Ok(None);
        };
        partial.data.extend_from_slice(fragment.data());
        if partial.data.len() < partial.total_len {
            return Ok(None);
        }
        let Some(done) = self.partial.remove(from) else {
            return Ok(None);
        };
        let text = String::from_utf8(done.data).map_err(|_| FromWireError::ChatNotUtf8)?;
        Ok(Some(GroupMessage::Chat(ChatLine {
            sender: done.sender,
            incarnation: done.incarnation,
            seq: done.seq,
            direct: done.direct,
            text,
        })))
    }

    /// Forgets `peer`'s partial line (its session ended: the rest will never come).
    pub fn forget(&mut self, peer: &str) {
        self.partial.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmsg_wire::frame::Carrier;
    use sockmsg_wire::Frames;

    fn decode(bytes: &[u8]) -> Frame<'_> {
        Frames::new(Carrier::Message, bytes, 0)
            .next()
            .expect("a frame")
            .expect("decodes")
    }

    fn line(text: String) -> GroupMessage {
        GroupMessage::Chat(ChatLine {
            sender: "alice".into(),
            incarnation: 7,
            seq: 3,
            direct: true,
            text,
        })
    }

    #[test]
    fn a_maximal_line_travels_in_fragments_and_comes_back_whole() {
        // Multi-byte characters straddle fragment boundaries on purpose.
        let text: String = "é€😀x".chars().cycle().take(40_000).collect::<String>();
        let text: String = text
            .char_indices()
            .take_while(|(i, _)| *i < MAX_LINE_LEN - 4)
            .map(|(_, c)| c)
            .collect();
        let msg = line(text);
        let pieces = msg.to_wire_messages().unwrap();
        assert!(pieces.len() > 1);
        assert!(pieces
            .iter()
            .all(|p| p.len() <= sockmsg_wire::limits::MAX_MESSAGE_LEN));
        let mut joiner = ChatReassembly::default();
        let mut out = Vec::new();
        for piece in &pieces {
            out.push(joiner.accept("alice", &decode(piece)).unwrap());
        }
        assert!(out[..pieces.len() - 1].iter().all(Option::is_none));
        assert_eq!(out.last().unwrap().as_ref(), Some(&msg));
    }

    #[test]
    fn a_short_line_is_one_message() {
        let msg = line("hi".into());
        let pieces = msg.to_wire_messages().unwrap();
        assert_eq!(pieces.len(), 1);
        let got = ChatReassembly::default()
            .accept("alice", &decode(&pieces[0]))
            .unwrap();
        assert_eq!(got, Some(msg));
    }

    #[test]
    fn a_fragment_that_does_not_continue_the_line_is_refused() {
        let msg = line("z".repeat(3 * MAX_FRAGMENT_LEN));
        let pieces = msg.to_wire_messages().unwrap();
        let mut joiner = ChatReassembly::default();
        // Starting in the middle.
        assert_eq!(
            joiner.accept("alice", &decode(&pieces[1])),
            Err(FromWireError::FragmentOutOfOrder)
        );
        // A gap.
        assert_eq!(joiner.accept("alice", &decode(&pieces[0])), Ok(None));
        assert_eq!(
            joiner.accept("alice", &decode(&pieces[2])),
            Err(FromWireError::FragmentOutOfOrder)
        );
        assert_eq!(joiner.dropped, 1);
        // Fragments from two peers do not mix, and a whole line passes through.
        assert_eq!(joiner.accept("alice", &decode(&pieces[0])), Ok(None));
        assert_eq!(joiner.accept("bob", &decode(&pieces[0])), Ok(None));
        assert_eq!(joiner.accept("alice", &decode(&pieces[1])), Ok(None));
        assert_eq!(joiner.accept("alice", &decode(&pieces[2])), Ok(Some(msg)));
        joiner.forget("bob");
        assert!(joiner.partial.is_empty());
    }
}
