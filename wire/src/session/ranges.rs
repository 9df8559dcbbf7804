//! A bounded set of packet numbers kept as ranges: what a receiver has seen (to build ACK
//! frames, SPEC.md §7.3) or what a sender knows was acknowledged.
//!
//! Packet numbers mostly arrive in order, so a set of them is a few long runs: storing
//! runs (`start ..= end`) instead of numbers keeps the state small. The number of runs is
//! still chosen by the peer (it decides which packets we get), so it is capped: when one
//! more run would exceed the cap, the *lowest* run is dropped and everything below a
//! floor is forgotten. Old packet numbers are the ones least worth acknowledging again
//! (RFC 9000 §13.2.3 limits ACK ranges the same way).
//!
//! ```text
//!   forgotten    │ kept: at most max_ranges disjoint, non-adjacent runs
//! ───────────────┼──[a ..= b]────[c ..= d]───────[e ..= f]──▶ packet number
//!              floor
//! ```

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use crate::frame::{Ack, AckRange};
use crate::limits::MAX_ACK_RANGES;

/// A set of `u64` stored as at most `max_ranges` disjoint, non-adjacent inclusive ranges.
///
/// Invariants, kept by every method:
/// - each entry `start → end` of `ranges` has `start <= end`;
/// - two entries neither overlap nor touch (`end + 1 < next start`), so each run is
///   stored exactly one way and `range_count` means what it says;
/// - `ranges.len() <= max_ranges`;
/// - no stored value is below `floor`.
///
/// Every operation is O(log n) plus the number of ranges it merges or removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end (inclusive).
    ranges: BTreeMap<u64, u64>,
    max_ranges: usize,
    /// Values below this were dropped to respect `max_ranges`: whether they were ever in
    /// the set is no longer known, and they are not added again.
    floor: u64,
}

impl RangeSet {
    /// An empty set that keeps at most `max_ranges` ranges (at least 1).
    pub fn new(max_ranges: usize) -> Self {
        RangeSet {
            ranges: BTreeMap::new(),
            max_ranges: max_ranges.max(1),
            floor: 0,
        }
    }

    /// Adds `value`; true if it was not in the set before.
    ///
    /// A value below [`floor`](Self::floor) is not added (returns false): it belongs to
    /// the forgotten past, see [`is_forgotten`](Self::is_forgotten).
    pub fn insert(&mut self, value: u64) -> bool {
        if value < self.floor || self.contains(value) {
            return false;
        }
        self.insert_range(value..=value);
        true
    }

    /// Adds every value of `range`, merging it with the ranges it overlaps or touches.
    /// The part below [`floor`](Self::floor) is ignored.
    pub fn insert_range(&mut self, range: RangeInclusive<u64>) {
        let (mut start, mut end) = (self.floor.max(*range.start()), *range.end());
        if start > end {
            return;
        }
        // A range starting at or before `start` that reaches `start - 1` absorbs us.
        if let Some((&below_start, &below_end)) = self.ranges.range(..=start).next_back() {
            if below_end.saturating_add(1) >= start {
                start = below_start;
                end = end.max(below_end);
            }
        }
        // Every range starting inside `start ..= end + 1` overlaps or touches: absorb it.
        while let Some((&next_start, &next_end)) = self
            .ranges
            .range(start..=end.saturating_add(1))
            .find(|&(&next_start, _)| next_start != start)
        {
            self.ranges.remove(&next_start);
            end = end.max(next_end);
        }
        self.ranges.insert(start, end);
        self.forget_excess();
    }

    /// Whether `value` is in the set.
    pub fn contains(&self, value: u64) -> bool {
        self.ranges
            .range(..=value)
            .next_back()
            .is_some_and(|(_, &end)| value <= end)
    }

    /// Whether `value` is below the floor, i.e. its membership was dropped to keep the set
    /// bounded. A receiver cannot tell whether such a packet number is a duplicate.
    pub fn is_forgotten(&self, value: u64) -> bool {
        value < self.floor
    }

    /// Values below this have been forgotten (0 while nothing has been).
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The largest value in the set.
    pub fn max(&self) -> Option<u64> {
        self.ranges.last_key_value().map(|(_, &end)| end)
    }

    /// The smallest value in the set.
    pub fn min(&self) -> Option<u64> {
        self.ranges.first_key_value().map(|(&start, _)| start)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many disjoint ranges the set holds (at most `max_ranges`).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The cap on [`range_count`](Self::range_count) given to [`new`](Self::new).
    pub fn max_ranges(&self) -> usize {
        self.max_ranges
    }

    /// The ranges, highest first (the order of an ACK frame).
    pub fn iter_desc(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.ranges.iter().rev().map(|(&start, &end)| start..=end)
    }

    /// The ranges, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.ranges.iter().map(|(&start, &end)| start..=end)
    }

    /// Removes every value below `value`. This is a deliberate removal (say, once the
    /// peer has seen our ACK of them), not forgetting: the floor does not move, so such
    /// values can be inserted again.
    pub fn remove_below(&mut self, value: u64) {
        let mut kept = self.ranges.split_off(&value);
        // The last range starting below `value` may reach into the kept part.
        if let Some((_, &end)) = self.ranges.last_key_value() {
            if end >= value {
                kept.insert(value, end);
            }
        }
        self.ranges = kept;
    }

    /// Removes every value of `range`. Cutting a hole in a range splits it in two, which
    /// can exceed `max_ranges`; the lowest range is then forgotten as on insertion.
    pub fn remove_range(&mut self, range: RangeInclusive<u64>) {
        let (start, end) = (*range.start(), *range.end());
        if start > end {
            return;
        }
        // A range starting below `start` keeps its part below `start`.
        if let Some((&below_start, &below_end)) = self.ranges.range(..start).next_back() {
            if below_end >= start {
                self.ranges.insert(below_start, start - 1);
                self.keep_above(end, below_end);
            }
        }
        // Ranges starting inside `start ..= end` keep only their part above `end`.
        while let Some((&inner_start, &inner_end)) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&inner_start);
            self.keep_above(end, inner_end);
        }
        self.forget_excess();
    }

    /// Builds an ACK frame (SPEC.md §7.3) of the highest ranges into `storage`: the first
    /// range, then at most [`MAX_ACK_RANGES`] more. None if the set is empty.
    ///
    /// The frame's fields are 32-bit: a range longer than 2^32 values is acknowledged
    /// only in its top 2^32 values, and no range after it (or after a gap of 2^32 or
    /// more) is sent, because the frame could not say where it lies. Acknowledging less
    /// than we hold is always safe; the peer only retransmits.
    pub fn to_ack<'a>(&self, ack_delay_us: u32, storage: &'a mut Vec<AckRange>) -> Option<Ack<'a>> {
        storage.clear();
        let mut ranges = self.iter_desc();
        let first = ranges.next()?;
        let largest = *first.end();
        let (first_range, mut complete) = clamp_u32(largest - first.start());
        let mut smallest = largest - u64::from(first_range);
        for range in ranges.take(MAX_ACK_RANGES) {
            if !complete {
                break;
            }
            // Non-adjacent ranges: smallest ≥ end + 2, so the gap is at least 1.
            let (gap, gap_fits) = clamp_u32(smallest - range.end() - 1);
            if !gap_fits {
                break;
            }
            let (len, len_fits) = clamp_u32(range.end() - range.start());
            storage.push(AckRange::new(gap, len));
            smallest = range.end() - u64::from(len);
            complete = len_fits;
        }
        Ack::new(largest, ack_delay_us, first_range, storage).ok()
    }

    /// Re-adds the part of a removed range that lies above `end`.
    fn keep_above(&mut self, end: u64, range_end: u64) {
        if range_end > end {
            self.ranges.insert(end + 1, range_end);
        }
    }

    /// Drops the lowest ranges until at most `max_ranges` remain, raising the floor past
    /// each one so that it is not added back.
    fn forget_excess(&mut self) {
        while self.ranges.len() > self.max_ranges {
            let Some((_, end)) = self.ranges.pop_first() else {
                break;
            };
            self.floor = end.saturating_add(1);
        }
    }
}

/// `value` as a u32, saturated; and whether it fitted.
fn clamp_u32(value: u64) -> (u32, bool) {
    match u32::try_from(value) {
        Ok(value) => (value, true),
        Err(_) => (u32::MAX, false),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::{Encode, Frame};

    fn set_of(ranges: &[RangeInclusive<u64>], max_ranges: usize) -> RangeSet {
        let mut set = RangeSet::new(max_ranges);
        for range in ranges {
            set.insert_range(range.clone());
        }
        set
    }

    fn ranges_desc(set: &RangeSet) -> Vec<RangeInclusive<u64>> {
        set.iter_desc().collect()
    }

    #[test]
    fn insert_merges_adjacent_values_into_one_range() {
        let mut set = RangeSet::new(8);
        assert!(set.insert(5));
        assert!(set.insert(7));
        assert_eq!(set.range_count(), 2);
        assert!(set.insert(6));
        assert_eq!(ranges_desc(&set), vec![5..=7]);
        assert!(!set.insert(6), "a value already present is not newly added");
        assert_eq!((set.min(), set.max()), (Some(5), Some(7)));
    }

    #[test]
    fn insert_range_absorbs_every_range_it_overlaps_or_touches() {
        let mut set = set_of(&[1..=2, 5..=6, 9..=9, 20..=30], 8);
        set.insert_range(3..=9);
        assert_eq!(ranges_desc(&set), vec![20..=30, 1..=9]);
        set.insert_range(10..=19);
        assert_eq!(ranges_desc(&set), vec![1..=30]);
        set.insert_range(RangeInclusive::new(25, 24));
        assert_eq!(
            ranges_desc(&set),
            vec![1..=30],
            "an empty range adds nothing"
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut set = RangeSet::new(4);
        assert!(set.insert(u64::MAX));
        assert!(set.insert(0));
        set.insert_range(u64::MAX - 5..=u64::MAX);
        assert_eq!(ranges_desc(&set), vec![u64::MAX - 5..=u64::MAX, 0..=0]);
        set.insert_range(0..=u64::MAX);
        assert_eq!(ranges_desc(&set), vec![0..=u64::MAX]);
        set.remove_range(0..=u64::MAX);
        assert!(set.is_empty());
    }

    #[test]
    fn exceeding_max_ranges_forgets_the_lowest_range() {
        let mut set = set_of(&[10..=11, 20..=21], 2);
        assert!(set.insert(30));
        assert_eq!(ranges_desc(&set), vec![30..=30, 20..=21]);
        assert_eq!(set.floor(), 12);
        assert!(set.is_forgotten(11) && !set.is_forgotten(12));
        assert!(!set.insert(5), "a forgotten value is not added back");
        assert!(!set.contains(5));
        set.insert_range(0..=14);
        assert_eq!(
            ranges_desc(&set),
            vec![30..=30, 20..=21],
            "12..=14 kept 3 ranges"
        );
        assert_eq!(set.floor(), 15);
    }

    #[test]
    fn a_new_lowest_range_beyond_the_cap_is_forgotten_at_once() {
        let mut set = set_of(&[10..=10, 20..=20], 2);
        set.insert(5);
        assert_eq!(ranges_desc(&set), vec![20..=20, 10..=10]);
        assert_eq!(set.floor(), 6);
    }

    #[test]
    fn remove_below_cuts_the_range_that_straddles_the_bound() {
        let mut set = set_of(&[1..=3, 6..=10, 15..=15], 8);
        set.remove_below(8);
        assert_eq!(ranges_desc(&set), vec![15..=15, 8..=10]);
        assert_eq!(set.floor(), 0, "removing is not forgetting");
        assert!(set.insert(2));
        set.remove_below(100);
        assert!(set.is_empty());
    }

    #[test]
    fn remove_range_splits_and_trims() {
        let mut set = set_of(&[0..=20, 30..=40], 8);
        set.remove_range(5..=9);
        assert_eq!(ranges_desc(&set), vec![30..=40, 10..=20, 0..=4]);
        set.remove_range(15..=35);
        assert_eq!(ranges_desc(&set), vec![36..=40, 10..=14, 0..=4]);
    }

    #[test]
    fn remove_range_that_splits_beyond_the_cap_forgets_the_lowest() {
        let mut set = set_of(&[0..=20], 1);
        set.remove_range(5..=9);
        assert_eq!(ranges_desc(&set), vec![10..=20]);
        assert_eq!(set.floor(), 5);
    }

    #[test]
    fn to_ack_of_an_empty_set_is_none() {
        assert!(RangeSet::new(4).to_ack(0, &mut Vec::new()).is_none());
    }

    /// SPEC.md §7.3's vector acknowledges 8..=10 and 4..=5 with a delay of 250 µs.
    #[test]
    fn to_ack_encodes_the_spec_vector() {
        let set = set_of(&[4..=5, 8..=10], 8);
        let mut storage = Vec::new();
        let Some(ack) = set.to_ack(250, &mut storage) else {
            panic!("a non-empty set gives an ACK");
        };
        let mut bytes = Vec::new();
        Frame::Ack(ack).encode(&mut bytes);
        let expected = [
            0x02, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0xfa, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 0x02, 0,
            0, 0, 0x01,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn to_ack_sends_only_the_highest_ranges() {
        let ranges: Vec<_> = (0..50u64).map(|i| i * 10..=i * 10 + 3).collect();
        let set = set_of(&ranges, 64);
        let mut storage = Vec::new();
        let Some(ack) = set.to_ack(0, &mut storage) else {
            panic!("a non-empty set gives an ACK");
        };
        let acked: Vec<_> = ack.ranges().collect();
        assert_eq!(acked.len(), 1 + MAX_ACK_RANGES);
        assert_eq!(acked, ranges_desc(&set)[..1 + MAX_ACK_RANGES]);
    }

    #[test]
    fn to_ack_stops_where_32_bit_fields_cannot_reach() {
        let huge = 1u64 << 40;
        let mut storage = Vec::new();
        // A first range longer than 2^32: only its top 2^32 values, nothing below.
        let set = set_of(&[0..=0, 10..=huge], 8);
        let Some(ack) = set.to_ack(0, &mut storage) else {
            panic!("a non-empty set gives an ACK");
        };
        let top = huge - u64::from(u32::MAX)..=huge;
        assert_eq!(ack.ranges().collect::<Vec<_>>(), vec![top]);
        // A gap of 2^32 or more ends the frame.
        let set = set_of(&[0..=0, huge..=huge], 8);
        let Some(ack) = set.to_ack(0, &mut storage) else {
            panic!("a non-empty set gives an ACK");
        };
        assert_eq!(ack.ranges().collect::<Vec<_>>(), vec![huge..=huge]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        InsertRange(u64, u64),
        RemoveRange(u64, u64),
        RemoveBelow(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..200u64).prop_map(Op::Insert),
            2 => (0..200u64, 0..8u64).prop_map(|(start, len)| Op::InsertRange(start, start + len)),
            1 => (0..200u64, 0..20u64).prop_map(|(start, len)| Op::RemoveRange(start, start + len)),
            1 => (0..200u64).prop_map(Op::RemoveBelow),
        ]
    }

    fn check_invariants(set: &RangeSet) -> Result<(), TestCaseError> {
        prop_assert!(set.range_count() <= set.max_ranges());
        let ranges: Vec<_> = set.iter().collect();
        for range in &ranges {
            prop_assert!(range.start() <= range.end());
            prop_assert!(*range.start() >= set.floor());
        }
        for pair in ranges.windows(2) {
            prop_assert!(
                pair[0].end() + 1 < *pair[1].start(),
                "ranges overlap or touch: {:?}",
                pair
            );
        }
        Ok(())
    }

    proptest! {
        /// The set holds exactly what a `BTreeSet` given the same operations holds, minus
        /// what lies below the floor; the floor only moves when the cap is hit.
        #[test]
        fn matches_a_btreeset_model(
            ops in proptest::collection::vec(op(), 0..200),
            max_ranges in 1..12usize,
        ) {
            let mut set = RangeSet::new(max_ranges);
            let mut model = BTreeSet::new();
            for op in ops {
                let floor_before = set.floor();
                match op {
                    Op::Insert(value) => {
                        let newly = value >= set.floor() && !model.contains(&value);
                        prop_assert_eq!(set.insert(value), newly);
                        model.insert(value);
                    }
                    Op::InsertRange(start, end) => {
                        set.insert_range(start..=end);
                        model.extend(start..=end);
                    }
                    Op::RemoveRange(start, end) => {
                        set.remove_range(start..=end);
                        model.retain(|value| !(start..=end).contains(value));
                    }
                    Op::RemoveBelow(bound) => {
                        set.remove_below(bound);
                        model.retain(|&value| value >= bound);
                    }
                }
                check_invariants(&set)?;
                prop_assert!(set.floor() >= floor_before);
                if set.floor() > floor_before {
                    prop_assert_eq!(set.range_count(), max_ranges, "forgot without need");
                }
                let kept: Vec<u64> = model.range(set.floor()..).copied().collect();
                let held: Vec<u64> = set.iter().flatten().collect();
                prop_assert_eq!(&held, &kept);
                prop_assert_eq!(set.min(), kept.first().copied());
                prop_assert_eq!(set.max(), kept.last().copied());
                for value in 0..210 {
                    prop_assert_eq!(set.contains(value), kept.binary_search(&value).is_ok());
                }
            }
        }

        /// RangeSet → to_ack → encode → decode → Ack::ranges() gives back the set's
        /// highest 1 + MAX_ACK_RANGES ranges.
        #[test]
        fn to_ack_round_trips_through_the_codec(
            ranges in proptest::collection::vec((0..u64::from(u32::MAX), 0..1000u64), 1..60),
            ack_delay_us: u32,
        ) {
            let set = set_of(
                &ranges.iter().map(|&(start, len)| start..=start + len).collect::<Vec<_>>(),
                64,
            );
            let mut storage = Vec::new();
            let Some(ack) = set.to_ack(ack_delay_us, &mut storage) else {
                return Err(TestCaseError::fail("a non-empty set gives no ACK"));
            };
            let mut bytes = Vec::new();
            Frame::Ack(ack).encode(&mut bytes);
            let Ok((Frame::Ack(decoded), _)) = Frame::decode(&bytes, 0) else {
                return Err(TestCaseError::fail("the ACK does not decode"));
            };
            prop_assert_eq!(decoded.ack_delay_us, ack_delay_us);
            let expected: Vec<_> = set.iter_desc().take(1 + MAX_ACK_RANGES).collect();
            prop_assert_eq!(decoded.ranges().collect::<Vec<_>>(), expected);
        }
    }
}
