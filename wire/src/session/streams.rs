//! Message buffers: what a connection still has to get acknowledged, and what it has
//! received but not yet delivered, per reliability class.
//!
//! The sender cuts each message into fragments of a fixed size when it is queued, so a
//! retransmission re-sends the very same fragment (in a new packet, under a new packet
//! number) and acknowledgement is tracked per fragment. The receiver does not rely on
//! those boundaries: it reassembles byte ranges.
//!
//! Both sides are bounded. The sender refuses new messages beyond its buffer and keeps at
//! most [`ID_WINDOW`] reliable messages of a class outstanding; the receiver refuses a
//! fragment it cannot buffer ([`Refusal`]), and the connection then drops the whole packet
//! *unacknowledged*, so the sender simply retransmits it later. Nothing acknowledged is
//! ever dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::BufMut;

use super::ranges::RangeSet;
use crate::codec::Encode;
use crate::frame::{Fragment, Frame, Message, MessageClass};
use crate::limits::MAX_MESSAGE_LEN;

/// How far ahead of the oldest undelivered message a sender may run, per class. The
/// receiver refuses ids beyond it, so its bookkeeping of delivered ids stays bounded.
pub const ID_WINDOW: u64 = 4096;

/// Bytes a MESSAGE frame takes besides its data: type, class, id, total_len, offset, len.
pub const MESSAGE_OVERHEAD: usize = 1 + 1 + 8 + 4 + 4 + 2;

/// Unreliable messages of which fragments may be in reassembly at once; older partial
/// ones are dropped (they would be superseded anyway).
const UNRELIABLE_PARTIALS: usize = 4;

/// Most distinct byte ranges one partial message may hold; a sender cuts a message into
/// at most 65536 / (fragment size) pieces, so only a misbehaving peer gets near this.
const MAX_PARTIAL_RANGES: usize = 256;

/// Identifies one message a connection sent: its class and number within the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub class: MessageClass,
    pub id: u64,
}

/// One fragment of a queued message, as recorded in a sent packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentRef {
    pub message: MessageId,
    pub index: u32,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("message of {len} bytes is empty or longer than {MAX_MESSAGE_LEN}")]
    BadLength { len: usize },
    #[error("send buffer full ({buffered} of {cap} bytes); wait for acknowledgements")]
    BufferFull { buffered: usize, cap: usize },
    #[error("{ID_WINDOW} {class:?} messages are already unacknowledged")]
    WindowFull { class: MessageClass },
    #[error("the connection is closed")]
    Closed,
}

/// A queued message: its bytes and which fragments the peer has acknowledged.
#[derive(Debug)]
struct Outgoing {
    data: Vec<u8>,
    acked: Vec<bool>,
    unacked: usize,
}

/// The sending side of a connection's messages.
#[derive(Debug)]
pub struct SendQueue {
    fragment_len: usize,
    cap: usize,
    buffered: usize,
    next_id: [u64; 3],
    messages: BTreeMap<MessageId, Outgoing>,
    /// Fragments to transmit; retransmissions go to the front.
    pending: VecDeque<FragmentRef>,
}

impl SendQueue {
    /// `fragment_len`: data bytes per fragment (sized so one fragment fills a packet);
    /// `cap`: most message bytes held at once.
    pub fn new(fragment_len: usize, cap: usize) -> Self {
        SendQueue {
            fragment_len: fragment_len.max(1),
            cap,
            buffered: 0,
            next_id: [0; 3],
            messages: BTreeMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// Queues `data` as one message of `class`.
    ///
    /// A new unreliable message supersedes any older unreliable one not yet sent.
    pub fn push(&mut self, class: MessageClass, data: &[u8]) -> Result<MessageId, SendError> {
        if data.is_empty() || data.len() > MAX_MESSAGE_LEN {
            return Err(SendError::BadLength { len: data.len() });
        }
        if class == MessageClass::Unreliable {
            self.drop_unreliable();
        }
        if self.buffered + data.len() > self.cap {
            return Err(SendError::BufferFull {
                buffered: self.buffered,
                cap: self.cap,
            });
        }
        let next = self.next_id[class as usize];
        if class.is_reliable()
            && self
                .oldest_unacked(class)
                .is_some_and(|o| next - o >= ID_WINDOW)
        {
            return Err(SendError::WindowFull { class });
        }
        self.next_id[class as usize] += 1;
        let message = MessageId { class, id: next };
        let count = data.len().div_ceil(self.fragment_len);
        self.pending
            .extend((0..count as u32).map(|index| FragmentRef { message, index }));
        self.buffered += data.len();
        self.messages.insert(
            message,
            Outgoing {
                data: data.to_vec(),
                acked: vec![false; count],
                unacked: count,
            },
        );
        Ok(message)
    }

    fn oldest_unacked(&self, class: MessageClass) -> Option<u64> {
        let from = MessageId { class, id: 0 };
        self.messages
            .range(from..)
            .next()
            .filter(|(m, _)| m.class == class)
            .map(|(m, _)| m.id)
    }

    fn drop_unreliable(&mut self) {
        let stale: Vec<MessageId> = self
            .messages
            .keys()
            .filter(|m| m.class == MessageClass::Unreliable)
            .copied()
            .collect();
        for message in stale {
            self.forget(message);
        }
        self.pending
            .retain(|f| f.message.class != MessageClass::Unreliable);
    }

    fn forget(&mut self, message: MessageId) {
        if let Some(out) = self.messages.remove(&message) {
            self.buffered -= out.data.len();
        }
    }

    /// Whether a fragment is waiting to be sent.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether every queued reliable message has been acknowledged.
    pub fn is_drained(&self) -> bool {
        self.messages.is_empty()
    }

    /// Encodes the next pending fragment as a MESSAGE frame into `buf` if it fits in
    /// `space` bytes, and returns which fragment it was.
    pub fn write_next<B: BufMut>(&mut self, space: usize, buf: &mut B) -> Option<FragmentRef> {
        while let Some(&frag) = self.pending.front() {
            let Some(out) = self.messages.get(&frag.message) else {
                self.pending.pop_front();
                continue;
            };
            let index = frag.index as usize;
            if out.acked.get(index).copied().unwrap_or(true) {
                self.pending.pop_front();
                continue;
            }
            let start = index * self.fragment_len;
            let end = (start + self.fragment_len).min(out.data.len());
            if MESSAGE_OVERHEAD + (end - start) > space {
                return None;
            }
            // Lengths were checked by `push`: 1 ≤ total ≤ MAX_MESSAGE_LEN, data inside it.
            let fragment =
                Fragment::new(out.data.len() as u32, start as u32, &out.data[start..end]).ok()?;
            Frame::Message(Message {
                class: frag.message.class,
                id: frag.message.id,
                fragment,
            })
            .encode(buf);
            self.pending.pop_front();
            if frag.message.class == MessageClass::Unreliable
                && !self.pending.iter().any(|f| f.message == frag.message)
            {
                // Sent in full: an unreliable message is never retransmitted.
                self.forget(frag.message);
            }
            return Some(frag);
        }
        None
    }

    /// Records that the packet carrying `frag` was acknowledged. Returns the message if
    /// this completed it.
    pub fn on_acked(&mut self, frag: FragmentRef) -> Option<MessageId> {
        let out = self.messages.get_mut(&frag.message)?;
        let slot = out.acked.get_mut(frag.index as usize)?;
        if std::mem::replace(slot, true) {
            return None;
        }
        out.unacked -= 1;
        if out.unacked > 0 {
            return None;
        }
        self.forget(frag.message);
        frag.message.class.is_reliable().then_some(frag.message)
    }

    /// Records that the packets carrying `fragments` (in the order they were sent) were
    /// lost: the reliable ones not yet acknowledged go to the front of the queue, still
    /// in that order, oldest first.
    pub fn on_lost_all(&mut self, fragments: &[FragmentRef]) {
        for frag in fragments.iter().rev() {
            self.on_lost(*frag);
        }
    }

    /// Records that the packet carrying `frag` was lost: a reliable fragment not yet
    /// acknowledged goes to the front of the queue.
    pub fn on_lost(&mut self, frag: FragmentRef) {
        let unacked = self
            .messages
            .get(&frag.message)
            .and_then(|out| out.acked.get(frag.index as usize))
            .is_some_and(|acked| !acked);
        if frag.message.class.is_reliable() && unacked && !self.pending.contains(&frag) {
            self.pending.push_front(frag);
        }
    }

    /// Queues the oldest unacknowledged reliable fragment again, for a PTO probe.
    /// Returns false if there is none (the probe should be a PING).
    pub fn requeue_oldest(&mut self) -> bool {
        let oldest = self.messages.iter().find_map(|(message, out)| {
            let index = out.acked.iter().position(|acked| !acked)?;
            message.class.is_reliable().then_some(FragmentRef {
                message: *message,
                index: index as u32,
            })
        });
        let Some(frag) = oldest else {
            return false;
        };
        // Bring it to the front even if it is queued further back: the receiver may be
        // waiting for exactly this fragment before it accepts anything later.
        self.pending.retain(|queued| *queued != frag);
        self.pending.push_front(frag);
        true
    }
}

/// Why a received fragment was not accepted; the packet carrying it must not be
/// acknowledged (the sender will retransmit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("receive buffer full")]
    BufferFull,
    #[error("message id too far ahead of delivery")]
    TooFarAhead,
    #[error("fragment disagrees with earlier fragments of its message")]
    Inconsistent,
}

/// A message being reassembled.
#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    have: RangeSet,
}

impl Partial {
    fn new(total_len: usize) -> Self {
        Partial {
            data: vec![0; total_len],
            have: RangeSet::new(MAX_PARTIAL_RANGES),
        }
    }

    /// Adds a fragment; returns whether the message is now complete.
    fn add(&mut self, fragment: &Fragment<'_>) -> Result<bool, Refusal> {
        if fragment.total_len() as usize != self.data.len() {
            return Err(Refusal::Inconsistent);
        }
        if self.have.range_count() >= MAX_PARTIAL_RANGES {
            return Err(Refusal::BufferFull);
        }
        let start = fragment.offset() as usize;
        let end = start + fragment.data().len();
        self.data[start..end].copy_from_slice(fragment.data());
        self.have.insert_range(start as u64..=end as u64 - 1);
        Ok(self.is_complete())
    }

    fn is_complete(&self) -> bool {
        self.have.range_count() == 1
            && self.have.min() == Some(0)
            && self.have.max() == Some(self.data.len() as u64 - 1)
    }
}

/// Delivered ids of one reliable class: all below `floor`, and the set above it.
#[derive(Debug, Default)]
struct DeliveredIds {
    floor: u64,
    above: BTreeSet<u64>,
}

impl DeliveredIds {
    fn contains(&self, id: u64) -> bool {
        id < self.floor || self.above.contains(&id)
    }

    fn insert(&mut self, id: u64) {
        self.above.insert(id);
        while self.above.remove(&self.floor) {
            self.floor += 1;
        }
    }
}

/// The receiving side of a connection's messages.
#[derive(Debug)]
pub struct RecvBuffer {
    cap: usize,
    buffered: usize,
    partial: BTreeMap<MessageId, Partial>,
    reliable: DeliveredIds,
    ordered_next: u64,
    ordered_ready: BTreeMap<u64, Vec<u8>>,
    unreliable_newest: Option<u64>,
    deliverable: VecDeque<(MessageClass, Vec<u8>)>,
}

impl RecvBuffer {
    /// `cap`: most bytes held at once (partial, out-of-order and undelivered messages),
    /// but for the next ordered message, which is always admitted.
    pub fn new(cap: usize) -> Self {
        RecvBuffer {
            cap,
            buffered: 0,
            partial: BTreeMap::new(),
            reliable: DeliveredIds::default(),
            ordered_next: 0,
            ordered_ready: BTreeMap::new(),
            unreliable_newest: None,
            deliverable: VecDeque::new(),
        }
    }

    /// Takes one MESSAGE frame. `Ok` means the packet may be acknowledged (the fragment
    /// is stored, or was a duplicate of something already delivered).
    pub fn on_message(&mut self, message: &Message<'_>) -> Result<(), Refusal> {
        let id = MessageId {
            class: message.class,
            id: message.id,
        };
        if self.is_stale(id)? {
            return Ok(());
        }
        let total_len = message.fragment.total_len() as usize;
        if !self.partial.contains_key(&id) {
            // The next ordered message is always admitted, even past the cap: the
            // messages waiting behind it only leave the buffer once it is delivered, so
            // refusing it could stall the class for good. This bounds the buffer at
            // `cap` plus one message.
            let head_of_line = id.class == MessageClass::Ordered && id.id == self.ordered_next;
            if self.buffered + total_len > self.cap && !head_of_line {
                return Err(Refusal::BufferFull);
            }
            self.buffered += total_len;
            self.partial.insert(id, Partial::new(total_len));
        }
        let complete = match self.partial.get_mut(&id) {
            Some(partial) => partial.add(&message.fragment)?,
            None => false,
        };
        if complete {
            if let Some(partial) = self.partial.remove(&id) {
                self.complete(id, partial.data);
            }
        }
        Ok(())
    }

    /// Whether `id` was already delivered or superseded (a duplicate, to be acknowledged
    /// and ignored); an error if it is too far ahead to track.
    fn is_stale(&self, id: MessageId) -> Result<bool, Refusal> {
        match id.class {
            MessageClass::Ordered => {
                if id.id >= self.ordered_next.saturating_add(ID_WINDOW) {
                    return Err(Refusal::TooFarAhead);
                }
                Ok(id.id < self.ordered_next || self.ordered_ready.contains_key(&id.id))
            }
            MessageClass::Reliable => {
                if id.id >= self.reliable.floor.saturating_add(ID_WINDOW) {
                    return Err(Refusal::TooFarAhead);
                }
                Ok(self.reliable.contains(id.id))
            }
            MessageClass::Unreliable => Ok(self.unreliable_newest.is_some_and(|n| id.id <= n)),
        }
    }

    fn complete(&mut self, id: MessageId, data: Vec<u8>) {
        match id.class {
            MessageClass::Ordered => {
                self.ordered_ready.insert(id.id, data);
                while let Some(data) = self.ordered_ready.remove(&self.ordered_next) {
                    self.deliverable.push_back((MessageClass::Ordered, data));
                    self.ordered_next += 1;
                }
            }
            MessageClass::Reliable => {
                self.reliable.insert(id.id);
                self.deliverable.push_back((MessageClass::Reliable, data));
            }
            MessageClass::Unreliable => {
                self.unreliable_newest = Some(id.id);
                self.drop_unreliable_partials(|older| older < id.id);
                self.deliverable.push_back((MessageClass::Unreliable, data));
            }
        }
        self.trim_unreliable_partials();
    }

    fn drop_unreliable_partials(&mut self, mut drop: impl FnMut(u64) -> bool) {
        let doomed: Vec<MessageId> = self
            .partial
            .keys()
            .filter(|m| m.class == MessageClass::Unreliable && drop(m.id))
            .copied()
            .collect();
        for id in doomed {
            if let Some(partial) = self.partial.remove(&id) {
                self.buffered -= partial.data.len();
            }
        }
    }

    fn trim_unreliable_partials(&mut self) {
        let ids: Vec<u64> = self
            .partial
            .keys()
            .filter(|m| m.class == MessageClass::Unreliable)
            .map(|m| m.id)
            .collect();
        if ids.len() > UNRELIABLE_PARTIALS {
            let keep_from = ids[ids.len() - UNRELIABLE_PARTIALS];
            self.drop_unreliable_partials(|id| id < keep_from);
        }
    }

    /// The next message ready for the application.
    pub fn pop(&mut self) -> Option<(MessageClass, Vec<u8>)> {
        let (class, data) = self.deliverable.pop_front()?;
        self.buffered -= data.len();
        Some((class, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragments(queue: &mut SendQueue, space: usize) -> Vec<(FragmentRef, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match queue.write_next(space, &mut buf) {
                Some(frag) => out.push((frag, buf)),
                None => return out,
            }
        }
    }

    fn message_of(bytes: &[u8]) -> Message<'_> {
        match Frame::decode(bytes, 0) {
            Ok((Frame::Message(message), _)) => message,
            other => panic!("not a MESSAGE: {other:?}"),
        }
    }

    fn recv_all(recv: &mut RecvBuffer) -> Vec<(MessageClass, Vec<u8>)> {
        std::iter::from_fn(|| recv.pop()).collect()
    }

    #[test]
    fn a_long_message_is_cut_into_fixed_fragments_and_reassembled() {
        let mut send = SendQueue::new(100, 1 << 20);
        let data: Vec<u8> = (0..=255).cycle().take(950).collect();
        let id = send.push(MessageClass::Ordered, &data).unwrap();
        let sent = fragments(&mut send, 1200);
        assert_eq!(sent.len(), 10);
        let mut recv = RecvBuffer::new(1 << 20);
        // Deliver in reverse order: reassembly does not depend on arrival order.
        for (_, bytes) in sent.iter().rev() {
            recv.on_message(&message_of(bytes)).unwrap();
        }
        assert_eq!(recv_all(&mut recv), vec![(MessageClass::Ordered, data)]);
        for (frag, _) in &sent[..9] {
            assert_eq!(send.on_acked(*frag), None);
        }
        assert_eq!(send.on_acked(sent[9].0), Some(id));
        assert!(send.is_drained());
    }

    #[test]
    fn a_fragment_that_does_not_fit_waits_for_the_next_packet() {
        let mut send = SendQueue::new(100, 1 << 20);
        send.push(MessageClass::Reliable, &[7; 100]).unwrap();
        assert!(send
            .write_next(MESSAGE_OVERHEAD + 99, &mut Vec::new())
            .is_none());
        assert!(send
            .write_next(MESSAGE_OVERHEAD + 100, &mut Vec::new())
            .is_some());
    }

    #[test]
    fn lost_reliable_fragments_are_resent_and_unreliable_ones_are_not() {
        let mut send = SendQueue::new(100, 1 << 20);
        send.push(MessageClass::Reliable, b"vote").unwrap();
        send.push(MessageClass::Unreliable, b"heartbeat").unwrap();
        let sent = fragments(&mut send, 1200);
        assert_eq!(sent.len(), 2);
        for (frag, _) in &sent {
            send.on_lost(*frag);
        }
        let again = fragments(&mut send, 1200);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.message.class, MessageClass::Reliable);
        assert_eq!(again[0].1, sent[0].1, "the same fragment, byte for byte");
    }

    #[test]
    fn an_acked_fragment_is_not_resent_after_a_spurious_loss() {
        let mut send = SendQueue::new(100, 1 << 20);
        send.push(MessageClass::Reliable, &[1; 150]).unwrap();
        let sent = fragments(&mut send, 1200);
        send.on_acked(sent[0].0);
        send.on_lost(sent[0].0);
        send.on_lost(sent[1].0);
        let again = fragments(&mut send, 1200);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.index, 1);
    }

    #[test]
    fn a_new_unreliable_message_supersedes_an_unsent_one() {
        let mut send = SendQueue::new(100, 1 << 20);
        send.push(MessageClass::Unreliable, b"old").unwrap();
        let newer = send.push(MessageClass::Unreliable, b"new").unwrap();
        let sent = fragments(&mut send, 1200);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.message, newer);
        assert!(send.is_drained(), "unreliable data is not kept once sent");
    }

    #[test]
    fn the_send_buffer_and_window_are_bounded() {
        let mut send = SendQueue::new(100, 250);
        send.push(MessageClass::Reliable, &[0; 200]).unwrap();
        assert_eq!(
            send.push(MessageClass::Reliable, &[0; 51]),
            Err(SendError::BufferFull {
                buffered: 200,
                cap: 250
            })
        );
        assert_eq!(
            send.push(MessageClass::Ordered, &[]),
            Err(SendError::BadLength { len: 0 })
        );
        let mut send = SendQueue::new(100, usize::MAX);
        for _ in 0..ID_WINDOW {
            send.push(MessageClass::Ordered, b"x").unwrap();
        }
        assert_eq!(
            send.push(MessageClass::Ordered, b"x"),
            Err(SendError::WindowFull {
                class: MessageClass::Ordered
            })
        );
        assert!(send.push(MessageClass::Reliable, b"x").is_ok());
    }

    fn whole(class: MessageClass, id: u64, data: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        Frame::Message(Message {
            class,
            id,
            fragment: Fragment::whole(data).unwrap(),
        })
        .encode(&mut bytes);
        bytes
    }

    #[test]
    fn ordered_messages_are_delivered_in_order_exactly_once() {
        let mut recv = RecvBuffer::new(1 << 20);
        for id in [2, 0, 2, 1, 0, 3] {
            let bytes = whole(MessageClass::Ordered, id, &[id as u8]);
            recv.on_message(&message_of(&bytes)).unwrap();
        }
        let got: Vec<u8> = recv_all(&mut recv).into_iter().map(|(_, d)| d[0]).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn reliable_messages_are_delivered_once_in_arrival_order() {
        let mut recv = RecvBuffer::new(1 << 20);
        for id in [5, 0, 5, 3, 0] {
            let bytes = whole(MessageClass::Reliable, id, &[id as u8]);
            recv.on_message(&message_of(&bytes)).unwrap();
        }
        let got: Vec<u8> = recv_all(&mut recv).into_iter().map(|(_, d)| d[0]).collect();
        assert_eq!(got, vec![5, 0, 3]);
    }

    #[test]
    fn an_older_unreliable_message_is_never_delivered_after_a_newer_one() {
        let mut recv = RecvBuffer::new(1 << 20);
        for id in [4, 2, 4, 6] {
            let bytes = whole(MessageClass::Unreliable, id, &[id as u8]);
            recv.on_message(&message_of(&bytes)).unwrap();
        }
        let got: Vec<u8> = recv_all(&mut recv).into_iter().map(|(_, d)| d[0]).collect();
        assert_eq!(got, vec![4, 6]);
    }

    #[test]
    fn the_receiver_refuses_what_it_cannot_hold() {
        let mut recv = RecvBuffer::new(100);
        let big = whole(MessageClass::Reliable, 0, &[0; 101]);
        assert_eq!(recv.on_message(&message_of(&big)), Err(Refusal::BufferFull));
        let far = whole(MessageClass::Ordered, ID_WINDOW, b"x");
        assert_eq!(
            recv.on_message(&message_of(&far)),
            Err(Refusal::TooFarAhead)
        );
        // Undelivered messages count until the application takes them.
        let first = whole(MessageClass::Reliable, 0, &[0; 60]);
        let second = whole(MessageClass::Reliable, 1, &[0; 60]);
        recv.on_message(&message_of(&first)).unwrap();
        assert_eq!(
            recv.on_message(&message_of(&second)),
            Err(Refusal::BufferFull)
        );
        recv.pop().unwrap();
        recv.on_message(&message_of(&second)).unwrap();
    }

    #[test]
    fn fragments_that_disagree_on_the_length_are_refused() {
        let mut recv = RecvBuffer::new(1 << 20);
        let mut a = Vec::new();
        Frame::Message(Message {
            class: MessageClass::Reliable,
            id: 0,
            fragment: Fragment::new(10, 0, b"abc").unwrap(),
        })
        .encode(&mut a);
        let mut b = Vec::new();
        Frame::Message(Message {
            class: MessageClass::Reliable,
            id: 0,
            fragment: Fragment::new(12, 3, b"def").unwrap(),
        })
        .encode(&mut b);
        recv.on_message(&message_of(&a)).unwrap();
        assert_eq!(recv.on_message(&message_of(&b)), Err(Refusal::Inconsistent));
    }
}
