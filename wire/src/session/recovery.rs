//! Loss detection, RTT estimation and congestion control, after RFC 9002 (QUIC Loss
//! Detection and Congestion Control), for one session's packet number space.
//!
//! Packet numbers are never reused (SPEC.md §8): a lost packet is not resent, the
//! connection re-sends the *frames* it carried in new packets. So the state here is a
//! table of packets sent and not yet acknowledged or declared lost, each with a record
//! `F` of what it carried, which is handed back when the packet's fate is known.
//!
//! ```text
//!  connection ──on_packet_sent(now, pn, size, ack_eliciting, F)──▶ LossDetector
//!  connection ──on_ack_received(now, &Ack)──▶ AckOutcome { acked: F…, lost: F… }
//!  connection ──on_timeout(now)  (at timeout())──▶ Lost(F…) | Probe { count }
//!  connection ◀── can_send(bytes), pto(), silent_since()
//! ```
//!
//! Sans-IO: no clock is read; every `now` is passed in, so tests run on a fake clock.
//!
//! Simplifications against RFC 9002, all on the safe side:
//! - one packet number space (sockmsg acknowledges only DATA packets);
//! - a packet is "in flight" (counted against the congestion window) exactly when it is
//!   ack-eliciting: sockmsg sends no padding-only packets;
//! - the peer's `max_ack_delay` is a configuration constant, not a transport parameter;
//! - persistent congestion is judged within one batch of lost packets, and needs their
//!   packet numbers to be consecutive (see [`LossDetector::on_ack_received`]);
//! - no undo of a congestion event on spurious loss, no pacing, no ECN.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::frame::Ack;
use crate::limits::DEFAULT_DATAGRAM_SIZE;

/// RFC 9002 §6.1.1 kPacketThreshold: a packet is lost once a packet sent this many
/// packet numbers after it is acknowledged. 3 tolerates the reordering common on paths
/// without over-waiting (TCP's FACK uses the same).
pub const PACKET_THRESHOLD: u64 = 3;

/// RFC 9002 §6.1.2 kTimeThreshold = 9/8, as a fraction: a packet is lost once it is
/// older than 9/8 of an RTT and a later packet has been acknowledged.
const TIME_THRESHOLD_NUMERATOR: u32 = 9;
const TIME_THRESHOLD_DENOMINATOR: u32 = 8;

/// RFC 9002 §6.1.2 kGranularity: timers are never shorter than this, so that a tiny
/// RTT does not declare packets lost for scheduling noise.
pub const GRANULARITY: Duration = Duration::from_millis(1);

/// RFC 9002 §7.6.1 kPersistentCongestionThreshold: losses spanning this many PTOs,
/// with nothing acknowledged in between, mean the path is (nearly) dead.
pub const PERSISTENT_CONGESTION_THRESHOLD: u32 = 3;

/// RFC 9002 §6.2.2 kInitialRtt, used until the first RTT sample.
pub const DEFAULT_INITIAL_RTT: Duration = Duration::from_millis(333);

/// RFC 9000 §18.2's default `max_ack_delay`: how long the peer may hold an ACK.
pub const DEFAULT_MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// The PTO doubles at most this many times (2^16 × PTO is many hours even on a LAN), so
/// the backoff can neither overflow nor push a deadline past what an `Instant` holds.
const MAX_PTO_BACKOFF_EXPONENT: u32 = 16;

/// Default cap on the backed-off probe timeout, see [`RecoveryConfig::max_pto`].
pub const DEFAULT_MAX_PTO: Duration = Duration::from_secs(2);

/// Why an ACK was refused. The ACK is peer input; such an error means the peer broke the
/// protocol, and the connection closes with `PROTOCOL_VIOLATION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RecoveryError {
    /// The ACK acknowledges a packet number above the largest we sent (numbers below it
    /// are never reused, so only those can be told apart). RFC 9000 §13.1: "An endpoint
    /// SHOULD treat receipt of an acknowledgment for a packet it did not send as a
    /// connection error of type PROTOCOL_VIOLATION".
    #[error("ACK of packet number {acked}, never sent (largest sent: {largest_sent:?})")]
    AckOfUnsentPacket {
        acked: u64,
        largest_sent: Option<u64>,
    },
}

// ---------------------------------------------------------------------------------------
// RTT estimation
// ---------------------------------------------------------------------------------------

/// Round-trip time estimate, RFC 9002 §5.
///
/// Before the first sample, `smoothed` is the initial RTT and `rttvar` half of it
/// (§6.2.2), so the first PTO is conservative. `min` never includes the peer's ACK delay
/// (§5.2); `smoothed` and `rttvar` use samples from which the ACK delay was removed when
/// that does not take them below `min` (§5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Duration,
    rttvar: Duration,
    min: Duration,
    has_sample: bool,
}

impl RttEstimator {
    pub fn new(initial_rtt: Duration) -> Self {
        RttEstimator {
            latest: initial_rtt,
            smoothed: initial_rtt,
            rttvar: initial_rtt / 2,
            min: initial_rtt,
            has_sample: false,
        }
    }

    /// Takes one RTT sample (RFC 9002 §5.3). `ack_delay` is what the peer reported,
    /// already capped at its `max_ack_delay` by the caller; the first sample ignores it.
    pub fn update(&mut self, ack_delay: Duration, rtt_sample: Duration) {
        self.latest = rtt_sample;
        if !self.has_sample {
            self.has_sample = true;
            self.min = rtt_sample;
            self.smoothed = rtt_sample;
            self.rttvar = rtt_sample / 2;
            return;
        }
        self.min = self.min.min(rtt_sample);
        // Removing the ACK delay must not make the sample smaller than any RTT seen:
        // a peer (or a clock) overstating its delay would otherwise shrink our timers.
        let adjusted = match rtt_sample.checked_sub(ack_delay) {
            Some(adjusted) if adjusted >= self.min => adjusted,
            _ => rtt_sample,
        };
        let deviation = self.smoothed.abs_diff(adjusted);
        self.rttvar = self.rttvar.saturating_mul(3).saturating_add(deviation) / 4;
        self.smoothed = self.smoothed.saturating_mul(7).saturating_add(adjusted) / 8;
    }

    /// Whether a sample has been taken (otherwise every value is the initial RTT's).
    pub fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// The exponentially weighted moving average (RFC 9002 §5.3 smoothed_rtt).
    pub fn smoothed(&self) -> Duration {
        self.smoothed
    }

    /// The mean deviation of the samples (rttvar).
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The last sample (latest_rtt).
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// The smallest sample seen (min_rtt), ACK delay included.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The probe timeout before backoff, RFC 9002 §6.2.1:
    /// `smoothed + max(4 × rttvar, kGranularity) + max_ack_delay`.
    pub fn pto_base(&self, max_ack_delay: Duration) -> Duration {
        self.smoothed
            .saturating_add(self.rttvar.saturating_mul(4).max(GRANULARITY))
            .saturating_add(max_ack_delay)
    }

    /// How long after a later packet's acknowledgement an earlier one is declared lost,
    /// RFC 9002 §6.1.2: `max(9/8 × max(smoothed, latest), kGranularity)`. Taking the
    /// larger RTT guards against a sudden RTT increase causing spurious losses.
    pub fn loss_delay(&self) -> Duration {
        let rtt = self.smoothed.max(self.latest);
        (rtt.saturating_mul(TIME_THRESHOLD_NUMERATOR) / TIME_THRESHOLD_DENOMINATOR).max(GRANULARITY)
    }
}

// ---------------------------------------------------------------------------------------
// Congestion control
// ---------------------------------------------------------------------------------------

/// NewReno congestion control, RFC 9002 §7 and Appendix B.
///
/// The window starts at [`initial_window`](Self::initial_window) and never drops below
/// [`minimum_window`](Self::minimum_window). It doubles per round trip in slow start
/// (`window < ssthresh`, §7.3.1) and grows by one datagram per window acknowledged in
/// congestion avoidance (§7.3.3). A loss halves it and starts a recovery period; losses
/// of packets sent before that period began are the same congestion event and do not
/// reduce it again (§7.3.2). Persistent congestion collapses it to the minimum (§7.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewReno {
    max_datagram_size: usize,
    window: usize,
    ssthresh: usize,
    /// Bytes acknowledged in congestion avoidance since the window last grew; counting
    /// them avoids rounding `mds × bytes / window` down to nothing for small packets.
    bytes_acked: usize,
    /// When the last recovery period began (RFC 9002 congestion_recovery_start_time);
    /// None before the first congestion event and after persistent congestion.
    recovery_start: Option<Instant>,
}

impl NewReno {
    pub fn new(max_datagram_size: usize) -> Self {
        NewReno {
            max_datagram_size,
            window: Self::initial_window(max_datagram_size),
            ssthresh: usize::MAX,
            bytes_acked: 0,
            recovery_start: None,
        }
    }

    /// RFC 9002 §7.2: `min(10 × mds, max(2 × mds, 14720))`: ten datagrams, limited to
    /// about 14.5 kB (RFC 6928's bound) unless datagrams are so large that two exceed it.
    pub fn initial_window(max_datagram_size: usize) -> usize {
        let two = max_datagram_size.saturating_mul(2);
        max_datagram_size.saturating_mul(10).min(two.max(14_720))
    }

    /// RFC 9002 §7.2 kMinimumWindow: two datagrams, so that a loss can still be detected
    /// by a later packet's acknowledgement.
    pub fn minimum_window(&self) -> usize {
        self.max_datagram_size.saturating_mul(2)
    }

    /// The congestion window, in bytes.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The slow start threshold (`usize::MAX` until the first congestion event).
    pub fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    pub fn max_datagram_size(&self) -> usize {
        self.max_datagram_size
    }

    /// Whether a packet sent at `sent_time` was sent before the last recovery period
    /// began, so that its loss belongs to that congestion event (RFC 9002 B.4
    /// InCongestionRecovery).
    pub fn in_recovery(&self, sent_time: Instant) -> bool {
        self.recovery_start.is_some_and(|start| sent_time <= start)
    }

    /// An in-flight packet sent at `sent_time`, of `bytes` bytes, was acknowledged
    /// (RFC 9002 B.5). The caller skips this while application-limited (§7.8).
    pub fn on_packet_acked(&mut self, sent_time: Instant, bytes: usize) {
        // §7.3.2: the window does not grow for packets sent before recovery began. The
        // start time is kept after recovery ends (the first acknowledgement of a later
        // packet), so that a late loss of an earlier packet cannot halve it again.
        if self.in_recovery(sent_time) {
            return;
        }
        if self.window < self.ssthresh {
            self.window = self.window.saturating_add(bytes);
            return;
        }
        self.bytes_acked = self.bytes_acked.saturating_add(bytes);
        if self.bytes_acked >= self.window {
            self.bytes_acked -= self.window;
            self.window = self.window.saturating_add(self.max_datagram_size);
        }
    }

    /// Packets were lost, the latest of them sent at `sent_time` (RFC 9002 B.6
    /// OnCongestionEvent): halve the window, once per recovery period.
    pub fn on_congestion_event(&mut self, now: Instant, sent_time: Instant) {
        if self.in_recovery(sent_time) {
            return;
        }
        self.recovery_start = Some(now);
        // kLossReductionFactor = 0.5
        self.ssthresh = self.window / 2;
        self.window = self.ssthresh.max(self.minimum_window());
        self.bytes_acked = 0;
    }

    /// RFC 9002 §7.6.2: the path lost everything for several PTOs; restart from the
    /// minimum window, outside any recovery period, as after an idle restart.
    pub fn on_persistent_congestion(&mut self) {
        self.window = self.minimum_window();
        self.recovery_start = None;
        self.bytes_acked = 0;
    }
}

// ---------------------------------------------------------------------------------------
// Loss detection
// ---------------------------------------------------------------------------------------

/// The constants of one session's recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// The RTT assumed before the first sample (RFC 9002 §6.2.2).
    pub initial_rtt: Duration,
    /// The longest the peer delays an ACK: it caps the delay the peer reports (§5.3)
    /// and is part of every PTO (§6.2.1).
    pub max_ack_delay: Duration,
    /// The largest datagram we send (`transport.datagram_size`); the congestion window
    /// is counted in these.
    pub max_datagram_size: usize,
    /// The longest the backed-off probe timeout grows. RFC 9002 sets no bound; on a LAN,
    /// waiting minutes between probes after a partition heals helps nobody, and the
    /// connection declares the peer unreachable on its own limit anyway.
    pub max_pto: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            initial_rtt: DEFAULT_INITIAL_RTT,
            max_ack_delay: DEFAULT_MAX_ACK_DELAY,
            max_datagram_size: DEFAULT_DATAGRAM_SIZE,
            max_pto: DEFAULT_MAX_PTO,
        }
    }
}

/// What an ACK told us. Both lists are sorted by packet number, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckOutcome<F> {
    /// Packets newly acknowledged, with what they carried.
    pub acked: Vec<(u64, F)>,
    /// Packets declared lost (RFC 9002 §6.1): their frames need re-sending if reliable.
    pub lost: Vec<(u64, F)>,
    /// Whether the ACK gave an RTT sample (§5.1).
    pub rtt_sampled: bool,
    /// Whether the losses amounted to persistent congestion (§7.6).
    pub persistent_congestion: bool,
}

impl<F> AckOutcome<F> {
    fn nothing() -> Self {
        AckOutcome {
            acked: Vec::new(),
            lost: Vec::new(),
            rtt_sampled: false,
            persistent_congestion: false,
        }
    }
}

/// What [`LossDetector::on_timeout`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeoutOutcome<F> {
    /// No timer has expired at `now`: nothing to do.
    NotDue,
    /// The loss timer expired (RFC 9002 §6.1.2): these packets are lost, lowest first.
    Lost {
        lost: Vec<(u64, F)>,
        persistent_congestion: bool,
    },
    /// The probe timeout expired (§6.2.4): send `count` ack-eliciting packets now, even
    /// beyond the congestion window, with new data or data already in flight (or a PING).
    Probe { count: usize },
}

/// A packet sent and neither acknowledged nor declared lost yet.
#[derive(Debug, Clone)]
struct SentPacket<F> {
    time_sent: Instant,
    size: usize,
    /// Ack-eliciting packets are also the ones in flight, see the module docs.
    ack_eliciting: bool,
    frames: F,
}

/// Loss detection for one session (RFC 9002 §6, Appendix A), with its RTT estimator and
/// congestion controller.
///
/// `F` is whatever the connection records about a packet's contents; it is returned
/// when the packet is acknowledged or declared lost.
///
/// Invariants:
/// - `sent` holds every packet passed to [`on_packet_sent`](Self::on_packet_sent) that
///   has been neither acknowledged nor declared lost;
/// - `bytes_in_flight` and `ack_eliciting_in_flight` are the size sum and count of the
///   ack-eliciting packets in `sent`;
/// - `loss_time` is set only while some packet in `sent` awaits the time threshold.
///
/// Memory: an ACK can only remove entries. Packets that are not ack-eliciting stay until
/// a later packet is acknowledged (then they are acknowledged or declared lost by
/// threshold), so a connection that only sends ACKs must now and then send an
/// ack-eliciting packet (RFC 9000 §13.2.4), e.g. a PING once per RTT.
#[derive(Debug, Clone)]
pub struct LossDetector<F> {
    config: RecoveryConfig,
    sent: BTreeMap<u64, SentPacket<F>>,
    largest_sent: Option<u64>,
    largest_acked: Option<u64>,
    bytes_in_flight: usize,
    ack_eliciting_in_flight: usize,
    time_of_last_ack_eliciting: Option<Instant>,
    /// When the earliest packet awaiting the time threshold becomes lost (§6.1.2).
    loss_time: Option<Instant>,
    /// Consecutive PTOs without an acknowledgement (§6.2.1), the backoff exponent.
    pto_count: u32,
    /// When the first RTT sample was taken: persistent congestion only considers
    /// packets sent after it (§7.6.2).
    first_rtt_sample: Option<Instant>,
    /// See [`silent_since`](Self::silent_since).
    silent_since: Option<Instant>,
    rtt: RttEstimator,
    congestion: NewReno,
}

impl<F> LossDetector<F> {
    pub fn new(config: RecoveryConfig) -> Self {
        LossDetector {
            config,
            sent: BTreeMap::new(),
            largest_sent: None,
            largest_acked: None,
            bytes_in_flight: 0,
            ack_eliciting_in_flight: 0,
            time_of_last_ack_eliciting: None,
            loss_time: None,
            pto_count: 0,
            first_rtt_sample: None,
            silent_since: None,
            rtt: RttEstimator::new(config.initial_rtt),
            congestion: NewReno::new(config.max_datagram_size),
        }
    }

    /// Records a packet just sent (RFC 9002 A.5). `pn` must exceed every packet number
    /// passed before: packet numbers are never reused. An ack-eliciting packet counts
    /// against the congestion window and arms the PTO.
    pub fn on_packet_sent(
        &mut self,
        now: Instant,
        pn: u64,
        size: usize,
        ack_eliciting: bool,
        frames: F,
    ) {
        debug_assert!(
            self.largest_sent.is_none_or(|largest| pn > largest),
            "packet number {pn} reused or decreasing"
        );
        self.largest_sent = Some(self.largest_sent.map_or(pn, |largest| largest.max(pn)));
        if ack_eliciting {
            self.bytes_in_flight = self.bytes_in_flight.saturating_add(size);
            self.ack_eliciting_in_flight += 1;
            self.time_of_last_ack_eliciting = Some(now);
            self.silent_since.get_or_insert(now);
        }
        let packet = SentPacket {
            time_sent: now,
            size,
            ack_eliciting,
            frames,
        };
        // Only a caller bug can replace an entry; keep the accounting right regardless.
        if let Some(replaced) = self.sent.insert(pn, packet) {
            self.forget_in_flight(&replaced);
        }
    }

    /// Records a packet that elicits no acknowledgement (an ACK-only packet): only its
    /// number, so that the peer acknowledging it is not taken for a violation. It is not
    /// kept: a receiver that only ever sends ACKs would otherwise pile them up, since
    /// nothing makes the peer acknowledge them.
    pub fn on_unelicited_packet_sent(&mut self, pn: u64) {
        debug_assert!(
            self.largest_sent.is_none_or(|largest| pn > largest),
            "packet number {pn} reused or decreasing"
        );
        self.largest_sent = Some(self.largest_sent.map_or(pn, |largest| largest.max(pn)));
    }

    /// Processes an ACK frame from the peer (RFC 9002 A.7 OnAckReceived).
    ///
    /// Refuses an ACK of a packet number never sent, before changing anything. Numbers
    /// already acknowledged or declared lost are ignored, so duplicate and reordered
    /// ACKs are harmless; an ACK that acknowledges nothing new changes nothing (not even
    /// the PTO backoff).
    ///
    /// Work is bounded by the packets we have in flight, not by the numbers the ACK
    /// covers: each of its ranges (at most 33) is looked up in the sent-packet table.
    ///
    /// Persistent congestion (§7.6) is declared when two ack-eliciting packets lost in
    /// this batch were sent more than 3 × PTO apart, every packet number between them
    /// is lost in this batch too (so none was acknowledged), and both were sent after
    /// the first RTT sample.
    pub fn on_ack_received(
        &mut self,
        now: Instant,
        ack: &Ack<'_>,
    ) -> Result<AckOutcome<F>, RecoveryError> {
        if self
            .largest_sent
            .is_none_or(|largest| ack.largest > largest)
        {
            return Err(RecoveryError::AckOfUnsentPacket {
                acked: ack.largest,
                largest_sent: self.largest_sent,
            });
        }
        self.largest_acked = Some(
            self.largest_acked
                .map_or(ack.largest, |l| l.max(ack.largest)),
        );
        let newly_acked = self.remove_acked(ack);
        if newly_acked.is_empty() {
            return Ok(AckOutcome::nothing());
        }
        let rtt_sampled = self.maybe_sample_rtt(now, ack, &newly_acked);
        // §7.8: judged on what was in flight when the ACK arrived.
        let cwnd_limited = self.is_cwnd_limited();
        for (_, packet) in &newly_acked {
            self.forget_in_flight(packet);
        }
        // A.7's order: losses first, so that acknowledgements of packets sent before
        // the congestion event do not grow the window it just reduced.
        let lost = self.detect_lost(now);
        let persistent_congestion = self.on_packets_lost(now, &lost);
        if cwnd_limited {
            self.grow_window(&newly_acked);
        }
        // §6.2.1: the peer is responding, so the backoff restarts.
        self.pto_count = 0;
        self.silent_since = (self.ack_eliciting_in_flight > 0).then_some(now);
        Ok(AckOutcome {
            acked: into_frames(newly_acked),
            lost: into_frames(lost),
            rtt_sampled,
            persistent_congestion,
        })
    }

    /// When [`on_timeout`](Self::on_timeout) is next due (RFC 9002 A.8
    /// SetLossDetectionTimer): the loss timer if set, else the probe timeout while
    /// ack-eliciting packets are in flight, else None.
    ///
    /// The PTO runs from the last ack-eliciting packet sent and doubles with each
    /// consecutive PTO (§6.2.1).
    pub fn timeout(&self) -> Option<Instant> {
        if self.loss_time.is_some() {
            return self.loss_time;
        }
        if self.ack_eliciting_in_flight == 0 {
            return None;
        }
        self.time_of_last_ack_eliciting?.checked_add(self.pto())
    }

    /// Handles the expiry of [`timeout`](Self::timeout) (RFC 9002 A.9
    /// OnLossDetectionTimeout); does nothing if it is not due at `now`.
    ///
    /// The first PTO asks for one probe (a tail loss usually took one packet); later
    /// ones ask for two, making it likelier that one gets through a lossy path (§6.2.4
    /// allows up to two).
    pub fn on_timeout(&mut self, now: Instant) -> TimeoutOutcome<F> {
        if self.timeout().is_none_or(|deadline| now < deadline) {
            return TimeoutOutcome::NotDue;
        }
        if self.loss_time.is_some() {
            let lost = self.detect_lost(now);
            let persistent_congestion = self.on_packets_lost(now, &lost);
            if self.ack_eliciting_in_flight == 0 {
                self.silent_since = None;
            }
            return TimeoutOutcome::Lost {
                lost: into_frames(lost),
                persistent_congestion,
            };
        }
        self.pto_count = self.pto_count.saturating_add(1);
        let count = if self.pto_count == 1 { 1 } else { 2 };
        TimeoutOutcome::Probe { count }
    }

    /// Whether a packet of `bytes` fits in the congestion window (RFC 9002 §7). Probes
    /// asked for by [`on_timeout`](Self::on_timeout) are sent regardless.
    pub fn can_send(&self, bytes: usize) -> bool {
        self.bytes_in_flight.saturating_add(bytes) <= self.congestion.window()
    }

    /// The current probe timeout, backoff included: `pto_base × 2^pto_count`, capped at
    /// `max_pto` (but never below `pto_base`).
    pub fn pto(&self) -> Duration {
        let exponent = self.pto_count.min(MAX_PTO_BACKOFF_EXPONENT);
        let base = self.rtt.pto_base(self.config.max_ack_delay);
        base.saturating_mul(1 << exponent)
            .min(self.config.max_pto.max(base))
    }

    /// Bytes of ack-eliciting packets sent and not yet acknowledged or lost.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    /// Consecutive probe timeouts since the peer last acknowledged something.
    pub fn pto_count(&self) -> u32 {
        self.pto_count
    }

    /// Since when the peer has acknowledged nothing while ack-eliciting packets were in
    /// flight: the later of the last acknowledgement and the first ack-eliciting send
    /// after nothing was in flight. None while nothing ack-eliciting is in flight. The
    /// connection declares the peer unreachable once this is older than
    /// `transport.unreachable_after_ms`.
    pub fn silent_since(&self) -> Option<Instant> {
        self.silent_since
    }

    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    pub fn congestion(&self) -> &NewReno {
        &self.congestion
    }

    pub fn config(&self) -> &RecoveryConfig {
        &self.config
    }

    /// The largest packet number the peer has acknowledged.
    pub fn largest_acked(&self) -> Option<u64> {
        self.largest_acked
    }

    /// The largest packet number sent.
    pub fn largest_sent(&self) -> Option<u64> {
        self.largest_sent
    }

    /// How many packets await acknowledgement or loss (ack-eliciting or not).
    pub fn tracked_packets(&self) -> usize {
        self.sent.len()
    }

    /// Removes and returns the sent packets the ACK covers, lowest first. Looks up each
    /// range in `sent` rather than walking its numbers: a range can span 2^32 numbers.
    fn remove_acked(&mut self, ack: &Ack<'_>) -> Vec<(u64, SentPacket<F>)> {
        let mut numbers = Vec::new();
        for range in ack.ranges() {
            numbers.extend(self.sent.range(range).map(|(&pn, _)| pn));
        }
        numbers.sort_unstable();
        numbers
            .into_iter()
            .filter_map(|pn| self.sent.remove(&pn).map(|packet| (pn, packet)))
            .collect()
    }

    /// RFC 9002 §5.1: an ACK gives an RTT sample if it newly acknowledges its largest
    /// packet number and at least one newly acknowledged packet is ack-eliciting (the
    /// peer may hold ACKs of other packets arbitrarily long).
    fn maybe_sample_rtt(
        &mut self,
        now: Instant,
        ack: &Ack<'_>,
        newly_acked: &[(u64, SentPacket<F>)],
    ) -> bool {
        let Some((largest_pn, largest)) = newly_acked.last() else {
            return false;
        };
        if *largest_pn != ack.largest || !newly_acked.iter().any(|(_, p)| p.ack_eliciting) {
            return false;
        }
        let sample = now.saturating_duration_since(largest.time_sent);
        // §5.3: the reported delay is peer input; never trust more than max_ack_delay.
        let ack_delay =
            Duration::from_micros(u64::from(ack.ack_delay_us)).min(self.config.max_ack_delay);
        self.rtt.update(ack_delay, sample);
        self.first_rtt_sample.get_or_insert(now);
        true
    }

    /// RFC 9002 §7.8: a sender that does not use its window must not grow it, or a
    /// long quiet chat would build a window the path never proved it can carry. The
    /// window counts as used while at least half of it is in flight (after Linux's
    /// tcp_is_cwnd_limited in slow start).
    fn is_cwnd_limited(&self) -> bool {
        self.bytes_in_flight.saturating_mul(2) >= self.congestion.window()
    }

    fn grow_window(&mut self, newly_acked: &[(u64, SentPacket<F>)]) {
        for (_, packet) in newly_acked.iter().filter(|(_, p)| p.ack_eliciting) {
            self.congestion
                .on_packet_acked(packet.time_sent, packet.size);
        }
    }

    /// RFC 9002 A.10 DetectAndRemoveLostPackets: removes and returns, lowest first, the
    /// packets below the largest acknowledged that are [`PACKET_THRESHOLD`] numbers
    /// behind it or older than the loss delay; sets `loss_time` for the rest.
    ///
    /// Every packet left below the largest acknowledged is within 3 numbers of it or
    /// younger than the loss delay, so the walk visits few packets beyond those it
    /// removes.
    fn detect_lost(&mut self, now: Instant) -> Vec<(u64, SentPacket<F>)> {
        self.loss_time = None;
        let Some(largest_acked) = self.largest_acked else {
            return Vec::new();
        };
        let loss_delay = self.rtt.loss_delay();
        // None: `now` is too close to the clock's origin for anything to be that old.
        let lost_send_time = now.checked_sub(loss_delay);
        let mut lost = Vec::new();
        for (&pn, packet) in self.sent.range(..largest_acked) {
            let too_far_behind = largest_acked - pn >= PACKET_THRESHOLD;
            let too_old = lost_send_time.is_some_and(|limit| packet.time_sent <= limit);
            if too_far_behind || too_old {
                lost.push(pn);
            } else if let Some(when) = packet.time_sent.checked_add(loss_delay) {
                self.loss_time = Some(self.loss_time.map_or(when, |t| t.min(when)));
            }
        }
        lost.into_iter()
            .filter_map(|pn| self.sent.remove(&pn).map(|packet| (pn, packet)))
            .collect()
    }

    /// RFC 9002 B.6/B.8 OnPacketsLost: one congestion event for the batch, keyed by the
    /// latest send time among the lost in-flight packets; then the persistent
    /// congestion check. Returns whether there was persistent congestion.
    fn on_packets_lost(&mut self, now: Instant, lost: &[(u64, SentPacket<F>)]) -> bool {
        let mut latest_sent: Option<Instant> = None;
        for (_, packet) in lost {
            self.forget_in_flight(packet);
            if packet.ack_eliciting {
                latest_sent =
                    Some(latest_sent.map_or(packet.time_sent, |t| t.max(packet.time_sent)));
            }
        }
        let Some(latest_sent) = latest_sent else {
            return false;
        };
        self.congestion.on_congestion_event(now, latest_sent);
        let persistent = self.is_persistent_congestion(lost);
        if persistent {
            self.congestion.on_persistent_congestion();
        }
        persistent
    }

    /// RFC 9002 §7.6, simplified (see [`on_ack_received`](Self::on_ack_received)): a run
    /// of consecutive lost packet numbers whose ack-eliciting packets sent after the
    /// first RTT sample span more than 3 × PTO (without backoff).
    fn is_persistent_congestion(&self, lost: &[(u64, SentPacket<F>)]) -> bool {
        let Some(first_rtt_sample) = self.first_rtt_sample else {
            return false;
        };
        let period = self
            .rtt
            .pto_base(self.config.max_ack_delay)
            .saturating_mul(PERSISTENT_CONGESTION_THRESHOLD);
        let mut run_start: Option<Instant> = None;
        let mut previous_pn: Option<u64> = None;
        for (pn, packet) in lost {
            if previous_pn.and_then(|p| p.checked_add(1)) != Some(*pn) {
                run_start = None;
            }
            previous_pn = Some(*pn);
            if !packet.ack_eliciting || packet.time_sent <= first_rtt_sample {
                continue;
            }
            match run_start {
                None => run_start = Some(packet.time_sent),
                Some(start) if packet.time_sent.saturating_duration_since(start) > period => {
                    return true
                }
                Some(_) => {}
            }
        }
        false
    }

    /// Takes a packet that left `sent` out of the in-flight accounting.
    fn forget_in_flight(&mut self, packet: &SentPacket<F>) {
        if packet.ack_eliciting {
            self.bytes_in_flight = self.bytes_in_flight.saturating_sub(packet.size);
            self.ack_eliciting_in_flight = self.ack_eliciting_in_flight.saturating_sub(1);
        }
    }
}

fn into_frames<F>(packets: Vec<(u64, SentPacket<F>)>) -> Vec<(u64, F)> {
    packets
        .into_iter()
        .map(|(pn, packet)| (pn, packet.frames))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::ops::RangeInclusive;

    use super::*;
    use crate::frame::AckRange;
    use crate::session::ranges::RangeSet;

    const MDS: usize = 1200;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn us(micros: u64) -> Duration {
        Duration::from_micros(micros)
    }

    /// A fake clock: every instant is `base + offset`, and nothing sleeps.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Clock(Instant::now())
        }
        fn at(&self, offset: Duration) -> Instant {
            self.0 + offset
        }
    }

    fn config(initial_rtt: Duration) -> RecoveryConfig {
        RecoveryConfig {
            initial_rtt,
            max_ack_delay: ms(25),
            max_datagram_size: MDS,
            max_pto: Duration::MAX,
        }
    }

    #[test]
    fn the_backed_off_pto_is_capped_at_max_pto_but_not_below_its_base() {
        let mut capped = LossDetector::<u64>::new(RecoveryConfig {
            max_pto: ms(1000),
            ..config(ms(100))
        });
        let base = capped.pto();
        assert!(base < ms(1000));
        capped.pto_count = 10;
        assert_eq!(capped.pto(), ms(1000));
        let tiny = LossDetector::<u64>::new(RecoveryConfig {
            max_pto: ms(1),
            ..config(ms(100))
        });
        assert_eq!(
            tiny.pto(),
            base,
            "the cap never shortens the unbacked-off PTO"
        );
    }

    /// A detector whose packets record their own packet number as their "frames".
    fn detector(initial_rtt: Duration) -> LossDetector<u64> {
        LossDetector::new(config(initial_rtt))
    }

    fn send(ld: &mut LossDetector<u64>, now: Instant, pn: u64) {
        ld.on_packet_sent(now, pn, MDS, true, pn);
    }

    fn ack(
        ld: &mut LossDetector<u64>,
        now: Instant,
        acked: &[RangeInclusive<u64>],
        ack_delay_us: u32,
    ) -> Result<AckOutcome<u64>, RecoveryError> {
        let mut set = RangeSet::new(64);
        for range in acked {
            set.insert_range(range.clone());
        }
        let mut storage = Vec::new();
        let frame = set
            .to_ack(ack_delay_us, &mut storage)
            .expect("ranges given");
        ld.on_ack_received(now, &frame)
    }

    fn numbers(packets: &[(u64, u64)]) -> Vec<u64> {
        packets.iter().map(|&(pn, _)| pn).collect()
    }

    // --- RttEstimator (RFC 9002 §5) ---

    #[test]
    fn rtt_before_any_sample_is_the_initial_rtt() {
        let rtt = RttEstimator::new(ms(333));
        assert!(!rtt.has_sample());
        assert_eq!((rtt.smoothed(), rtt.rttvar()), (ms(333), us(166_500)));
    }

    #[test]
    fn rtt_first_sample_replaces_the_initial_estimate_and_ignores_ack_delay() {
        let mut rtt = RttEstimator::new(ms(333));
        rtt.update(ms(10), ms(100));
        assert_eq!(rtt.smoothed(), ms(100));
        assert_eq!(rtt.rttvar(), ms(50));
        assert_eq!((rtt.min(), rtt.latest()), (ms(100), ms(100)));
    }

    #[test]
    fn rtt_later_samples_are_smoothed_by_one_eighth_and_one_quarter() {
        let mut rtt = RttEstimator::new(ms(333));
        rtt.update(Duration::ZERO, ms(100));
        rtt.update(Duration::ZERO, ms(200));
        // rttvar = 3/4·50 + 1/4·|100 − 200|; smoothed = 7/8·100 + 1/8·200
        assert_eq!(rtt.rttvar(), us(62_500));
        assert_eq!(rtt.smoothed(), us(112_500));
        assert_eq!((rtt.min(), rtt.latest()), (ms(100), ms(200)));
        rtt.update(Duration::ZERO, ms(80));
        assert_eq!(rtt.min(), ms(80));
    }

    #[test]
    fn rtt_ack_delay_is_removed_only_if_the_sample_stays_above_min_rtt() {
        let mut rtt = RttEstimator::new(ms(333));
        rtt.update(Duration::ZERO, ms(100));
        // 120 − 30 = 90 < min_rtt 100: the delay is not subtracted.
        rtt.update(ms(30), ms(120));
        assert_eq!(rtt.smoothed(), us(102_500));
        // 120 − 10 = 110 ≥ 100: it is.
        rtt.update(ms(10), ms(120));
        assert_eq!(rtt.smoothed(), (us(102_500) * 7 + ms(110)) / 8);
        assert_eq!(rtt.min(), ms(100), "min_rtt never has the delay removed");
    }

    #[test]
    fn pto_base_adds_four_rttvar_at_least_granularity_and_max_ack_delay() {
        let mut rtt = RttEstimator::new(ms(100));
        assert_eq!(rtt.pto_base(ms(25)), ms(100 + 200 + 25));
        for _ in 0..100 {
            rtt.update(Duration::ZERO, ms(10));
        }
        assert!(rtt.rttvar() * 4 < GRANULARITY);
        assert_eq!(rtt.pto_base(ms(25)), ms(10) + GRANULARITY + ms(25));
    }

    #[test]
    fn ack_delay_reported_by_the_peer_is_capped_at_max_ack_delay() {
        let clock = Clock::new();
        let mut ld = detector(ms(333));
        send(&mut ld, clock.at(ms(0)), 0);
        ack(&mut ld, clock.at(ms(100)), &[0..=0], 0).unwrap();
        send(&mut ld, clock.at(ms(100)), 1);
        // Sample 200 ms, claimed delay 150 ms, capped to 25: adjusted 175 ms.
        let outcome = ack(&mut ld, clock.at(ms(300)), &[1..=1], 150_000).unwrap();
        assert!(outcome.rtt_sampled);
        assert_eq!(ld.rtt().smoothed(), (ms(100) * 7 + ms(175)) / 8);
    }

    #[test]
    fn no_rtt_sample_unless_the_largest_is_newly_acked_and_something_ack_eliciting() {
        let clock = Clock::new();
        let mut ld = detector(ms(333));
        send(&mut ld, clock.at(ms(0)), 0);
        ld.on_packet_sent(clock.at(ms(0)), 1, 50, false, 1);
        // Largest (1) is newly acked but not ack-eliciting, and 0 is not acked.
        let outcome = ack(&mut ld, clock.at(ms(40)), &[1..=1], 0).unwrap();
        assert_eq!(numbers(&outcome.acked), vec![1]);
        assert!(!outcome.rtt_sampled);
        assert!(!ld.rtt().has_sample());
        // An older ACK, its largest (0) newly acked and ack-eliciting: a sample.
        let outcome = ack(&mut ld, clock.at(ms(50)), &[0..=0], 0).unwrap();
        assert!(outcome.rtt_sampled);
        assert_eq!(ld.rtt().latest(), ms(50));
    }

    // --- Loss detection (RFC 9002 §6.1) ---

    #[test]
    fn packet_threshold_declares_a_packet_three_numbers_behind_lost() {
        let clock = Clock::new();
        let mut ld = detector(ms(333));
        for pn in 0..=4 {
            send(&mut ld, clock.at(ms(0)), pn);
        }
        let outcome = ack(&mut ld, clock.at(ms(10)), &[3..=3], 0).unwrap();
        assert_eq!(numbers(&outcome.acked), vec![3]);
        assert_eq!(
            numbers(&outcome.lost),
            vec![0],
            "only 0 is 3 behind; 1, 2 wait"
        );
        assert_eq!(ld.bytes_in_flight(), 3 * MDS, "1, 2 and 4 remain in flight");
        // 1 and 2 are lost at 9/8 of the 10 ms RTT after they were sent.
        assert_eq!(ld.timeout(), Some(clock.at(us(11_250))));
    }

    #[test]
    fn loss_timer_declares_the_remaining_packets_lost_at_the_time_threshold() {
        let clock = Clock::new();
        let mut ld = detector(ms(333));
        for pn in 0..=4 {
            send(&mut ld, clock.at(ms(0)), pn);
        }
        ack(&mut ld, clock.at(ms(10)), &[3..=3], 0).unwrap();
        assert_eq!(ld.on_timeout(clock.at(us(11_249))), TimeoutOutcome::NotDue);
        let TimeoutOutcome::Lost { lost, .. } = ld.on_timeout(clock.at(us(11_250))) else {
            panic!("the loss timer was due");
        };
        assert_eq!(numbers(&lost), vec![1, 2]);
        assert_eq!(ld.bytes_in_flight(), MDS, "only 4 remains");
        // No loss timer left; the PTO of packet 4 takes over.
        assert_eq!(ld.timeout(), Some(clock.at(ms(0) + ld.pto())));
    }

    #[test]
    fn time_threshold_declares_an_old_packet_lost_on_ack() {
        let clock = Clock::new();
        let mut ld = detector(ms(333));
        send(&mut ld, clock.at(ms(0)), 0);
        send(&mut ld, clock.at(ms(50)), 1);
        // RTT 10 ms: 0 was sent 60 ms ago, more than 9/8 · 10 ms, though only 1 behind.
        let outcome = ack(&mut ld, clock.at(ms(60)), &[1..=1], 0).unwrap();
        assert_eq!(numbers(&outcome.lost), vec![0]);
        assert_eq!(ld.bytes_in_flight(), 0);
        assert_eq!(ld.timeout(), None);
    }

    #[test]
    fn loss_delay_is_at_least_the_timer_granularity() {
        let clock = Clock::new();
        let mut ld = detector(ms(333));
        send(&mut ld, clock.at(us(0)), 0);
        send(&mut ld, clock.at(us(500)), 1);
        // RTT 100 µs: 9/8 of it would make 0 (600 µs old) lost; 1 ms does not.
        let outcome = ack(&mut ld, clock.at(us(600)), &[1..=1], 0).unwrap();
        assert!(outcome.lost.is_empty());
        assert_eq!(ld.timeout(), Some(clock.at(ms(1))));
    }

    #[test]
    fn time_threshold_uses_the_larger_of_smoothed_and_latest_rtt() {
        let clock = Clock::new();
        let mut ld = detector(ms(333));
        send(&mut ld, clock.at(ms(0)), 0);
        ack(&mut ld, clock.at(ms(10)), &[0..=0], 0).unwrap();
        send(&mut ld, clock.at(ms(10)), 1);
        send(&mut ld, clock.at(ms(20)), 2);
        // latest 90 ms, smoothed 7/8·10 + 1/8·90 = 20 ms: the delay is 9/8 · 90 ms.
        let outcome = ack(&mut ld, clock.at(ms(110)), &[2..=2], 0).unwrap();
        assert!(
            outcome.lost.is_empty(),
            "1 was sent 100 ms ago, < 101.25 ms"
        );
        assert_eq!(ld.timeout(), Some(clock.at(ms(10) + us(101_250))));
    }

    // --- Probe timeout (RFC 9002 §6.2) ---

    #[test]
    fn pto_fires_after_the_pto_period_and_backs_off_exponentially() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        send(&mut ld, clock.at(ms(0)), 0);
        // 100 + max(4 · 50, 1) + 25 ms.
        assert_eq!(ld.timeout(), Some(clock.at(ms(325))));
        assert_eq!(ld.on_timeout(clock.at(ms(324))), TimeoutOutcome::NotDue);
        assert_eq!(
            ld.on_timeout(clock.at(ms(325))),
            TimeoutOutcome::Probe { count: 1 }
        );
        assert_eq!(ld.pto_count(), 1);
        assert_eq!(ld.timeout(), Some(clock.at(ms(650))));
        assert_eq!(
            ld.on_timeout(clock.at(ms(650))),
            TimeoutOutcome::Probe { count: 2 }
        );
        assert_eq!(ld.pto_count(), 2);
        // The probe restarts the timer from its own send time, still backed off.
        send(&mut ld, clock.at(ms(700)), 1);
        assert_eq!(ld.timeout(), Some(clock.at(ms(700 + 4 * 325))));
        // An acknowledgement resets the backoff.
        ack(&mut ld, clock.at(ms(800)), &[1..=1], 0).unwrap();
        assert_eq!(ld.pto_count(), 0);
    }

    #[test]
    fn pto_backoff_saturates_instead_of_overflowing() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        send(&mut ld, clock.at(ms(0)), 0);
        for _ in 0..100 {
            let Some(deadline) = ld.timeout() else {
                panic!("a packet is in flight");
            };
            assert!(matches!(
                ld.on_timeout(deadline),
                TimeoutOutcome::Probe { .. }
            ));
        }
        assert_eq!(ld.pto(), ms(325) * (1 << MAX_PTO_BACKOFF_EXPONENT));
    }

    #[test]
    fn no_pto_without_ack_eliciting_packets_in_flight() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        assert_eq!(ld.timeout(), None);
        ld.on_packet_sent(clock.at(ms(0)), 0, 40, false, 0);
        assert_eq!(ld.timeout(), None, "an ACK-only packet arms no timer");
        assert_eq!(ld.on_timeout(clock.at(ms(10_000))), TimeoutOutcome::NotDue);
        assert_eq!(ld.bytes_in_flight(), 0);
        send(&mut ld, clock.at(ms(5)), 1);
        ack(&mut ld, clock.at(ms(15)), &[0..=1], 0).unwrap();
        assert_eq!(ld.timeout(), None);
    }

    #[test]
    fn loss_timer_takes_precedence_over_the_pto() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        send(&mut ld, clock.at(ms(0)), 0);
        send(&mut ld, clock.at(ms(0)), 1);
        ack(&mut ld, clock.at(ms(5)), &[1..=1], 0).unwrap();
        // RTT 5 ms: packet 0 is lost at 0 + 9/8 · 5 ms, long before its PTO (40 ms).
        assert_eq!(ld.timeout(), Some(clock.at(us(5_625))));
        assert!(matches!(
            ld.on_timeout(clock.at(ms(10))),
            TimeoutOutcome::Lost { .. }
        ));
    }

    // --- Congestion control (RFC 9002 §7, Appendix B) ---

    #[test]
    fn initial_and_minimum_windows_follow_rfc_9002_section_7_2() {
        assert_eq!(NewReno::initial_window(1200), 12_000);
        assert_eq!(NewReno::initial_window(1500), 14_720);
        assert_eq!(NewReno::initial_window(9000), 18_000);
        assert_eq!(NewReno::new(1200).minimum_window(), 2400);
    }

    #[test]
    fn slow_start_grows_the_window_by_the_bytes_acknowledged() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        for pn in 0..10 {
            assert!(ld.can_send(MDS));
            send(&mut ld, clock.at(ms(0)), pn);
        }
        assert!(
            !ld.can_send(1),
            "the initial window of 12 000 bytes is full"
        );
        ack(&mut ld, clock.at(ms(20)), &[0..=9], 0).unwrap();
        assert_eq!(ld.congestion().window(), 24_000);
        assert_eq!(ld.bytes_in_flight(), 0);
    }

    #[test]
    fn an_application_limited_sender_does_not_grow_its_window() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        send(&mut ld, clock.at(ms(0)), 0);
        ack(&mut ld, clock.at(ms(20)), &[0..=0], 0).unwrap();
        assert_eq!(ld.congestion().window(), 12_000);
    }

    #[test]
    fn congestion_avoidance_grows_one_datagram_per_window_acknowledged() {
        let clock = Clock::new();
        let mut cc = NewReno::new(MDS);
        cc.on_congestion_event(clock.at(ms(10)), clock.at(ms(0)));
        assert_eq!((cc.window(), cc.ssthresh()), (6000, 6000));
        for _ in 0..4 {
            cc.on_packet_acked(clock.at(ms(20)), MDS);
        }
        assert_eq!(cc.window(), 6000, "4 800 of 6 000 bytes acknowledged");
        cc.on_packet_acked(clock.at(ms(20)), MDS);
        assert_eq!(cc.window(), 6000 + MDS);
    }

    #[test]
    fn a_loss_halves_the_window_once_per_recovery_period() {
        let clock = Clock::new();
        let mut cc = NewReno::new(MDS);
        cc.on_congestion_event(clock.at(ms(100)), clock.at(ms(50)));
        assert_eq!(cc.window(), 6000);
        // Another loss of a packet sent before recovery began: same event.
        cc.on_congestion_event(clock.at(ms(120)), clock.at(ms(90)));
        assert_eq!(cc.window(), 6000);
        // Nor does an acknowledgement of such a packet grow the window.
        cc.on_packet_acked(clock.at(ms(100)), 100 * MDS);
        assert_eq!(cc.window(), 6000);
        // A packet sent after recovery began is a new event.
        cc.on_congestion_event(clock.at(ms(200)), clock.at(ms(150)));
        assert_eq!(cc.window(), 3000);
        cc.on_congestion_event(clock.at(ms(300)), clock.at(ms(250)));
        assert_eq!(cc.window(), 2400, "never below the minimum window");
    }

    #[test]
    fn a_late_loss_of_a_packet_sent_before_recovery_does_not_reduce_again() {
        let clock = Clock::new();
        let mut cc = NewReno::new(MDS);
        cc.on_congestion_event(clock.at(ms(100)), clock.at(ms(50)));
        // A packet sent after recovery began is acknowledged: recovery is over…
        cc.on_packet_acked(clock.at(ms(150)), MDS);
        assert!(!cc.in_recovery(clock.at(ms(150))));
        // …but a packet from before it, declared lost late, is still the old event.
        cc.on_congestion_event(clock.at(ms(200)), clock.at(ms(90)));
        assert_eq!(cc.window(), 6000);
    }

    #[test]
    fn a_detected_loss_reduces_the_window_once_for_the_batch() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        for pn in 0..10 {
            send(&mut ld, clock.at(ms(0)), pn);
        }
        let outcome = ack(&mut ld, clock.at(ms(20)), &[6..=9], 0).unwrap();
        assert_eq!(numbers(&outcome.lost), vec![0, 1, 2, 3, 4, 5]);
        assert!(!outcome.persistent_congestion);
        // Halved once; the acknowledgements of 6..=9, sent before recovery, add nothing.
        assert_eq!(ld.congestion().window(), 6000);
    }

    #[test]
    fn persistent_congestion_collapses_the_window_to_the_minimum() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        send(&mut ld, clock.at(ms(0)), 0);
        ack(&mut ld, clock.at(ms(10)), &[0..=0], 0).unwrap();
        for (pn, sent_ms) in [(1, 20), (2, 100), (3, 200), (4, 250), (5, 300)] {
            send(&mut ld, clock.at(ms(sent_ms)), pn);
        }
        // PTO ≈ 10 + 4 · 3.75 + 25 = 50 ms; 1..=4 span 230 ms > 3 · PTO.
        let outcome = ack(&mut ld, clock.at(ms(310)), &[5..=5], 0).unwrap();
        assert_eq!(numbers(&outcome.lost), vec![1, 2, 3, 4]);
        assert!(outcome.persistent_congestion);
        // The minimum window, then (A.7: losses before acknowledgements) slow start
        // from it for packet 5, as persistent congestion ends the recovery period.
        assert_eq!(ld.congestion().window(), 2 * MDS + MDS);
    }

    #[test]
    fn persistent_congestion_resets_to_the_minimum_window_outside_recovery() {
        let clock = Clock::new();
        let mut cc = NewReno::new(MDS);
        cc.on_congestion_event(clock.at(ms(100)), clock.at(ms(50)));
        cc.on_persistent_congestion();
        assert_eq!(cc.window(), 2 * MDS);
        assert!(!cc.in_recovery(clock.at(ms(50))));
        cc.on_packet_acked(clock.at(ms(50)), MDS);
        assert_eq!(cc.window(), 3 * MDS, "slow start again (ssthresh is 6 000)");
    }

    #[test]
    fn no_persistent_congestion_if_a_packet_between_the_losses_was_acknowledged() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        send(&mut ld, clock.at(ms(0)), 0);
        ack(&mut ld, clock.at(ms(10)), &[0..=0], 0).unwrap();
        for (pn, sent_ms) in [(1, 20), (2, 100), (3, 200), (4, 250), (5, 300)] {
            send(&mut ld, clock.at(ms(sent_ms)), pn);
        }
        // 3 is acknowledged: the lost packets on either side span < 3 · PTO each.
        let outcome = ack(&mut ld, clock.at(ms(310)), &[5..=5, 3..=3], 0).unwrap();
        assert_eq!(numbers(&outcome.lost), vec![1, 2, 4]);
        assert!(!outcome.persistent_congestion);
        assert_eq!(ld.congestion().window(), 6000);
    }

    #[test]
    fn no_persistent_congestion_for_losses_within_three_ptos() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        send(&mut ld, clock.at(ms(0)), 0);
        ack(&mut ld, clock.at(ms(10)), &[0..=0], 0).unwrap();
        for (pn, sent_ms) in [(1, 20), (2, 60), (3, 100), (4, 300)] {
            send(&mut ld, clock.at(ms(sent_ms)), pn);
        }
        let outcome = ack(&mut ld, clock.at(ms(310)), &[4..=4], 0).unwrap();
        assert_eq!(numbers(&outcome.lost), vec![1, 2, 3]);
        assert!(!outcome.persistent_congestion, "1..=3 span 80 ms < 150 ms");
    }

    // --- Peer input: duplicates, violations, bounds ---

    #[test]
    fn a_duplicate_ack_changes_nothing() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        for pn in 0..10 {
            send(&mut ld, clock.at(ms(0)), pn);
        }
        ack(&mut ld, clock.at(ms(20)), &[0..=4], 0).unwrap();
        let Some(deadline) = ld.timeout() else {
            panic!("5..=9 are in flight");
        };
        ld.on_timeout(deadline);
        let (window, rtt) = (ld.congestion().window(), *ld.rtt());
        let outcome = ack(&mut ld, clock.at(ms(900)), &[0..=4], 0).unwrap();
        assert!(outcome.acked.is_empty() && outcome.lost.is_empty());
        assert!(!outcome.rtt_sampled);
        assert_eq!(ld.pto_count(), 1, "a duplicate is no sign of life");
        assert_eq!((ld.congestion().window(), *ld.rtt()), (window, rtt));
        assert_eq!(ld.bytes_in_flight(), 5 * MDS);
    }

    #[test]
    fn an_ack_of_a_lost_packet_is_ignored() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        for pn in 0..5 {
            send(&mut ld, clock.at(ms(0)), pn);
        }
        let outcome = ack(&mut ld, clock.at(ms(10)), &[4..=4], 0).unwrap();
        assert_eq!(numbers(&outcome.lost), vec![0, 1]);
        let outcome = ack(&mut ld, clock.at(ms(12)), &[0..=4], 0).unwrap();
        assert_eq!(
            numbers(&outcome.acked),
            vec![2, 3],
            "0, 1 were already given up"
        );
    }

    #[test]
    fn an_ack_of_an_unsent_packet_is_a_protocol_violation() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        assert_eq!(
            ack(&mut ld, clock.at(ms(0)), &[0..=0], 0),
            Err(RecoveryError::AckOfUnsentPacket {
                acked: 0,
                largest_sent: None
            })
        );
        for pn in 0..3 {
            send(&mut ld, clock.at(ms(0)), pn);
        }
        assert_eq!(
            ack(&mut ld, clock.at(ms(10)), &[0..=3], 0),
            Err(RecoveryError::AckOfUnsentPacket {
                acked: 3,
                largest_sent: Some(2)
            })
        );
        assert_eq!(
            ld.tracked_packets(),
            3,
            "a refused ACK acknowledges nothing"
        );
        assert_eq!(ld.bytes_in_flight(), 3 * MDS);
        assert_eq!(ld.largest_acked(), None);
    }

    #[test]
    fn an_ack_spanning_2_pow_37_numbers_is_processed_by_looking_up_packets() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        let top = 1u64 << 40;
        let low = top - 20 * (1u64 << 32);
        send(&mut ld, clock.at(ms(0)), low);
        send(&mut ld, clock.at(ms(0)), top);
        // Every range as long as the frame allows: 33 · 2^32 packet numbers.
        let ranges = [AckRange::new(1, u32::MAX); 32];
        let Ok(frame) = Ack::new(top, 0, u32::MAX, &ranges) else {
            panic!("a valid ACK");
        };
        let outcome = ld.on_ack_received(clock.at(ms(10)), &frame).unwrap();
        assert_eq!(numbers(&outcome.acked), vec![low, top]);
        assert_eq!(ld.bytes_in_flight(), 0);
    }

    #[test]
    fn silent_since_tracks_the_last_sign_of_life_while_data_is_outstanding() {
        let clock = Clock::new();
        let mut ld = detector(ms(100));
        assert_eq!(ld.silent_since(), None);
        send(&mut ld, clock.at(ms(0)), 0);
        send(&mut ld, clock.at(ms(10)), 1);
        assert_eq!(ld.silent_since(), Some(clock.at(ms(0))));
        ack(&mut ld, clock.at(ms(20)), &[0..=0], 0).unwrap();
        assert_eq!(ld.silent_since(), Some(clock.at(ms(20))));
        let Some(deadline) = ld.timeout() else {
            panic!("1 is in flight");
        };
        ld.on_timeout(deadline);
        assert_eq!(
            ld.silent_since(),
            Some(clock.at(ms(20))),
            "a PTO is no sign of life"
        );
        ack(&mut ld, clock.at(ms(30)), &[1..=1], 0).unwrap();
        assert_eq!(ld.silent_since(), None);
    }
}
