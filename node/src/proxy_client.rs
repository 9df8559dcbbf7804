//! Asking the proxy who leads a group, claiming a new group, announcing a leadership:
//! one REQUEST, one RESPONSE, over UDP with a few tries (a LAN loses little; the proxy
//! answers from memory), falling back to TCP for an answer too big for UDP.
//!
//! [`ProxyClient`] is one proxy at one address; [`ProxySet`] is the one or several
//! proxies a node is configured with (SPEC.md §12.8), asked all at once, whose answers
//! it combines into the one [`ProxyAnswer`] the [`Rendezvous`] expects: the rendezvous
//! does not know how many proxies there are.
//!
//! [`Rendezvous`]: crate::rendezvous::Rendezvous

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use sockmsg_proxy::client::{query_request, RecordDraft};
use sockmsg_proxy::handler::{decode_response, RecordSummary};
use sockmsg_proxy::{GroupRank, Kind};
use sockmsg_wire::frame::{Frame, ProxyStatus};
use sockmsg_wire::session::crypto::Signer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::rendezvous::ProxyAnswer;

/// The leader's signature of `draft` (SPEC.md §9): an RSA signature, milliseconds of
/// CPU, so a caller with an event loop makes it on a blocking thread.
pub fn sign_record(draft: &RecordDraft, leader: &dyn Signer) -> Result<Vec<u8>, ProxyError> {
    let mut rng =
        sockmsg_keymgr::datadir::os_rng().map_err(|e| ProxyError::Build(e.to_string()))?;
    draft
        .sign(leader, &mut rng)
        .map_err(|e| ProxyError::Build(e.to_string()))
}

/// Bytes a query is padded to, so a LEADER_INFO of a full group fits the proxy's 3×
/// amplification bound (SPEC.md §4).
const QUERY_SIZE: usize = 1000;
const UDP_TRIES: u32 = 3;
const UDP_TIMEOUT: Duration = Duration::from_millis(300);
const TCP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a proxy exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the proxy at {0} did not answer")]
    NoAnswer(SocketAddr),
    #[error("the proxy at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the proxy at {0} answered something this node does not understand")]
    BadAnswer(SocketAddr),
    #[error("cannot build the request: {0}")]
    Build(String),
    #[error(
        "the proxy at {0} did not answer within {ms} ms of another proxy's answer",
        ms = GRACE.as_millis()
    )]
    Late(SocketAddr),
}

pub use crate::rendezvous::Verdict;

/// A proxy at one address.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    addr: SocketAddr,
}

impl ProxyClient {
    pub fn new(addr: SocketAddr) -> ProxyClient {
        ProxyClient { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The record the proxy holds for `group`, or `None` (no leader known).
    pub async fn query(&self, group: &str) -> Result<Option<RecordSummary>, ProxyError> {
        let id = rand::rng().random::<u64>();
        let request =
            query_request(id, group, QUERY_SIZE).map_err(|e| ProxyError::Build(e.to_string()))?;
        let answer = self.exchange(id, &request).await?;
        match decode_response(&answer) {
            Some((_, Frame::LeaderInfo(record))) => Ok(Some(RecordSummary::from(&record))),
            Some((_, Frame::NoLeader(_))) => Ok(None),
            _ => Err(ProxyError::BadAnswer(self.addr)),
        }
    }

    /// LEADER_CLAIM (term 1) or LEADER_ANNOUNCE of `draft` with the leader's
    /// `signature` of it ([`sign_record`]) and the signed `votes` that elected it.
    pub async fn propose(
        &self,
        kind: Kind,
        draft: &RecordDraft,
        signature: &[u8],
        votes: &[(String, Vec<u8>)],
    ) -> Result<Verdict, ProxyError> {
        let id = rand::rng().random::<u64>();
        let request = draft
            .request(id, kind, signature, votes, 0)
            .map_err(|e| ProxyError::Build(e.to_string()))?;
        let answer = self.exchange(id, &request).await?;
        match decode_response(&answer) {
            Some((_, Frame::ProxyResult(result))) if result.status == ProxyStatus::ACCEPTED => {
                Ok(Verdict::Accepted)
            }
            Some((_, Frame::ProxyResult(result))) => Ok(Verdict::Refused {
                status: result.status,
                reason: result.reason.as_str().to_owned(),
                held: result.held.iter().next().map(|r| RecordSummary::from(&r)),
            }),
            _ => Err(ProxyError::BadAnswer(self.addr)),
        }
    }

    /// One request, its answer: UDP first; TCP if UDP gets no answer or a "pad or use
    /// TCP" refusal.
    async fn exchange(&self, id: u64, request: &[u8]) -> Result<Vec<u8>, ProxyError> {
        let io = |source| ProxyError::Io {
            addr: self.addr,
            source,
        };
        let local: SocketAddr = if self.addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(self.addr)
        } else {
            "[::]:0".parse().unwrap_or(self.addr)
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(self.addr).await.map_err(io)?;
        let mut buf = vec![0; 65_536];
        for _ in 0..UDP_TRIES {
            socket.send(request).await.map_err(io)?;
            let deadline = tokio::time::Instant::now() + UDP_TIMEOUT;
            while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await
            {
                let Ok(n) = received else { break };
                let answer = &buf[..n];
                match decode_response(answer) {
                    Some((answer_id, frame)) if answer_id == id => {
                        let too_big = matches!(&frame, Frame::ProxyResult(r)
                            if r.status == ProxyStatus::BAD_REQUEST
                                && r.reason.as_str().contains("TCP"));
                        if too_big {
                            return self.exchange_tcp(request).await;
                        }
                        return Ok(answer.to_vec());
                    }
                    _ => continue,
                }
            }
        }
        self.exchange_tcp(request)
            .await
            .map_err(|_| ProxyError::NoAnswer(self.addr))
    }

    async fn exchange_tcp(&self, request: &[u8]) -> Result<Vec<u8>, ProxyError> {
        let io = |source| ProxyError::Io {
            addr: self.addr,
            source,
        };
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.write_all(request).await?;
            let mut header = [0; sockmsg_wire::HEADER_LEN];
            stream.read_exact(&mut header).await?;
            // The header's payload_len (SPEC.md §3), checked by the decoder below.
            let len = usize::from(u16::from_be_bytes([header[6], header[7]]));
            let mut answer = header.to_vec();
            answer.resize(sockmsg_wire::HEADER_LEN + len, 0);
            stream
                .read_exact(&mut answer[sockmsg_wire::HEADER_LEN..])
                .await?;
            Ok(answer)
        };
        match tokio::time::timeout(TCP_TIMEOUT, exchange).await {
            Ok(result) => result.map_err(io),
            Err(_) => Err(ProxyError::NoAnswer(self.addr)),
        }
    }
}

/// How long the other proxies still have once one has answered: a lost datagram and its
/// retry (`UDP_TIMEOUT`) on a LAN. A dead proxy then delays an answer by this much, not by
/// its whole timeout (UDP tries, then TCP: seconds).
pub const GRACE: Duration = Duration::from_millis(400);

/// Most proxies one node talks to: every request goes to each.
pub const MAX_PROXIES: usize = 16;

/// Why a list of proxy addresses cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyListError {
    #[error("no proxy address given")]
    Empty,
    #[error("{0} proxies given: at most {max} (every request goes to each)", max = MAX_PROXIES)]
    TooMany(usize),
}

/// The proxies a node is configured with (one or several, SPEC.md §12.8), as one: every
/// request goes to all of them at once, and their answers are combined into the one
/// [`ProxyAnswer`] the [`Rendezvous`](crate::rendezvous::Rendezvous) expects. Records are
/// self-certifying (signed by the leader; an announcement carries its voters' signed
/// votes), so the proxies need no coordination and one proxy's record is as good as
/// another's.
///
/// **When to combine.** Once every proxy has answered (or failed), or [`GRACE`] after the
/// first answer, whichever comes first; a proxy that has not answered by then counts as
/// not answering. A dead proxy thus delays a request by the grace at most, not by its
/// UDP and TCP timeouts. A proposal's late exchanges run on to their end (the record
/// still reaches a slow proxy; their outcome is only logged), a query's are dropped.
///
/// **A query (LEADER_QUERY).**
/// 1. A LEADER_INFO beats NO_LEADER, whichever came first: a proxy that restarted (or was
///    unreachable when the leader announced) knows nothing, which says nothing against
///    another proxy's record.
/// 2. Of several records, the one a single proxy that had received them all would hold:
///    of two records of one group (a member in common), the newer by term, then
///    membership version, then issue time; of two groups of the name (no member in
///    common), the one that outranks the other (SPEC.md §12.7: more members, then the
///    leader name that sorts first), whatever the terms, since that is the group both
///    will end in. Records are compared pairwise in the configured order, the first kept
///    on a tie.
/// 3. NO_LEADER only when every proxy that answered said so.
/// 4. `Failed` only when no proxy answered; its text names each proxy and why.
///
/// **A claim or an announcement (LEADER_CLAIM, LEADER_ANNOUNCE),** signed once and sent
/// to every proxy.
/// 1. A refusal whose held record is of another group than the proposed one (no member
///    in common) is the answer, even if other proxies accepted: it is how a leader learns
///    of the other group, and what drives the merge (§12.7). Of several, the one whose
///    held record comes first by rule 2 of a query. For a claim, only a held group that
///    outranks the claimant's counts: the rendezvous answers a refused claim by asking
///    again, and a claim accepted elsewhere yet reported refused would leave a record
///    that outranks the competitor's and that nobody leads, until it expires.
/// 2. Else `Accepted` if any proxy accepted (a refusal for our own group's older or newer
///    record at a proxy that missed announcements is healed by the next refresh, or the
///    record's expiry).
/// 3. Else the first refusal, in the configured order.
/// 4. `Failed` only when no proxy answered.
///
/// One proxy's failure next to another's answer is logged (`tracing::debug`, naming the
/// proxy), never reported to the rendezvous. With a single proxy every answer passes
/// through unchanged.
#[derive(Debug, Clone)]
pub struct ProxySet {
    clients: Arc<[ProxyClient]>,
}

/// What becomes of the exchanges still out when the grace is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stragglers {
    /// They run on (a proposal: the record still reaches a slow proxy).
    RunOn,
    /// They are dropped (a query: its answer would come too late to count).
    Drop,
}

impl ProxySet {
    /// The proxies at `addrs`, in that order (which breaks ties, see above); an address
    /// given twice counts once.
    pub fn new(addrs: &[SocketAddr]) -> Result<ProxySet, ProxyListError> {
        let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if !unique.contains(addr) {
                unique.push(*addr);
            }
        }
        if unique.is_empty() {
            return Err(ProxyListError::Empty);
        }
        if unique.len() > MAX_PROXIES {
            return Err(ProxyListError::TooMany(unique.len()));
        }
        Ok(ProxySet {
            clients: unique.into_iter().map(ProxyClient::new).collect(),
        })
    }

    /// The proxies' addresses, in the order they are asked.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.clients.iter().map(ProxyClient::addr).collect()
    }

    /// Asks every proxy who leads `group`; the combined answer (see [`ProxySet`]).
    pub async fn query(&self, group: &str) -> ProxyAnswer {
        let group: Arc<str> = Arc::from(group);
        let answers = self
            .ask_all("query", Stragglers::Drop, move |proxy| {
                let group = group.clone();
                async move { proxy.query(&group).await }
            })
            .await;
        combine_records(answers)
    }

    /// Proposes `draft` as `kind`, with the leader's `signature` of it (made once,
    /// [`sign_record`]) and the signed `votes` that elected it, to every proxy; the
    /// combined answer (see [`ProxySet`]).
    pub async fn propose(
        &self,
        kind: Kind,
        draft: RecordDraft,
        signature: Vec<u8>,
        votes: Vec<(String, Vec<u8>)>,
    ) -> ProxyAnswer {
        let what = match kind {
            Kind::Claim => "claim",
            Kind::Announce => "announcement",
        };
        let proposal = Arc::new((draft, signature, votes));
        let shared = proposal.clone();
        let answers = self
            .ask_all(what, Stragglers::RunOn, move |proxy| {
                let proposal = shared.clone();
                async move {
                    let (draft, signature, votes) = &*proposal;
                    proxy.propose(kind, draft, signature, votes).await
                }
            })
            .await;
        combine_verdicts(kind, &proposal.0, answers)
    }

    /// Runs `ask` against every proxy at once, each on its own task; the answers in the
    /// configured order, once all are in or [`GRACE`] after the first answer (the
    /// missing ones as [`ProxyError::Late`]). Each failure is logged with its proxy.
    async fn ask_all<T, F, Fut>(
        &self,
        what: &'static str,
        stragglers: Stragglers,
        ask: F,
    ) -> Vec<Result<T, ProxyError>>
    where
        T: Debug + Send + 'static,
        F: Fn(ProxyClient) -> Fut,
        Fut: Future<Output = Result<T, ProxyError>> + Send + 'static,
    {
        let mut tasks = JoinSet::new();
        for (index, client) in self.clients.iter().enumerate() {
            let addr = client.addr();
            let exchange = ask(client.clone());
            tasks.spawn(async move {
                let result = exchange.await;
                match &result {
                    Ok(answer) => tracing::trace!(proxy = %addr, ?answer, "{what}: answered"),
                    Err(e) => tracing::debug!(proxy = %addr, "{what}: {e}"),
                }
                (index, result)
            });
        }
        let mut answers: Vec<Option<Result<T, ProxyError>>> =
            self.clients.iter().map(|_| None).collect();
        let mut grace_until = None;
        loop {
            let joined = match grace_until {
                None => tasks.join_next().await,
                Some(until) => match tokio::time::timeout_at(until, tasks.join_next()).await {
                    Ok(joined) => joined,
                    Err(_) => break,
                },
            };
            let Some(joined) = joined else { break };
            match joined {
                Ok((index, result)) => {
                    if result.is_ok() && grace_until.is_none() {
                        grace_until = Some(tokio::time::Instant::now() + GRACE);
                    }
                    if let Some(slot) = answers.get_mut(index) {
                        *slot = Some(result);
                    }
                }
                Err(e) => tracing::debug!("{what}: an exchange with a proxy ended: {e}"),
            }
        }
        match stragglers {
            Stragglers::RunOn => tasks.detach_all(),
            Stragglers::Drop => tasks.abort_all(),
        }
        self.clients
            .iter()
            .zip(answers)
            .map(|(client, answer)| {
                answer.unwrap_or_else(|| {
                    let late = ProxyError::Late(client.addr());
                    tracing::debug!(proxy = %client.addr(), "{what}: {late}; going on without it");
                    Err(late)
                })
            })
            .collect()
    }
}

/// The answers of several proxies to one LEADER_QUERY, in the configured order, as one
/// (the rules are in [`ProxySet`]'s documentation).
pub fn combine_records(answers: Vec<Result<Option<RecordSummary>, ProxyError>>) -> ProxyAnswer {
    let mut best: Option<RecordSummary> = None;
    let mut no_leader = false;
    let mut failures = Vec::new();
    for answer in answers {
        match answer {
            Ok(Some(record)) => {
                if best.as_ref().is_none_or(|b| supersedes(&record, b)) {
                    best = Some(record);
                }
            }
            Ok(None) => no_leader = true,
            Err(e) => failures.push(e),
        }
    }
    match best {
        Some(record) => ProxyAnswer::Record(Some(record)),
        None if no_leader => ProxyAnswer::Record(None),
        None => failed(failures),
    }
}

/// The answers of several proxies to one claim or announcement of `draft`, in the
/// configured order, as one (the rules are in [`ProxySet`]'s documentation).
pub fn combine_verdicts(
    kind: Kind,
    draft: &RecordDraft,
    answers: Vec<Result<Verdict, ProxyError>>,
) -> ProxyAnswer {
    let ours = GroupRank::new(draft.members.iter().map(String::as_str), &draft.leader);
    let mut accepted = false;
    let mut first_refusal: Option<Verdict> = None;
    // A refusal in favour of another group, and that group's record.
    let mut competitor: Option<(Verdict, RecordSummary)> = None;
    let mut failures = Vec::new();
    for answer in answers {
        let refusal = match answer {
            Ok(Verdict::Accepted) => {
                accepted = true;
                continue;
            }
            Ok(refusal) => refusal,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        if let Verdict::Refused {
            held: Some(held), ..
        } = &refusal
        {
            let theirs = record_rank(held);
            let counts = match kind {
                Kind::Announce => theirs.is_other_group(&ours),
                Kind::Claim => theirs.outranks(&ours),
            };
            if counts
                && competitor
                    .as_ref()
                    .is_none_or(|(_, best)| supersedes(held, best))
            {
                competitor = Some((refusal.clone(), held.clone()));
            }
        }
        first_refusal.get_or_insert(refusal);
    }
    if let Some((refusal, _)) = competitor {
        return ProxyAnswer::Verdict(refusal);
    }
    if accepted {
        return ProxyAnswer::Verdict(Verdict::Accepted);
    }
    match first_refusal {
        Some(refusal) => ProxyAnswer::Verdict(refusal),
        None => failed(failures),
    }
}

/// Whether record `a` is the one to act on rather than `b`: of one group, the newer; of
/// two groups, the one that outranks the other (SPEC.md §12.7).
fn supersedes(a: &RecordSummary, b: &RecordSummary) -> bool {
    let (rank_a, rank_b) = (record_rank(a), record_rank(b));
    if rank_a.is_other_group(&rank_b) {
        rank_a.outranks(&rank_b)
    } else {
        (a.term, a.membership_version, a.issued_at_ms)
            > (b.term, b.membership_version, b.issued_at_ms)
    }
}

fn record_rank(record: &RecordSummary) -> GroupRank<'_> {
    GroupRank::new(record.members.iter().map(String::as_str), &record.leader)
}

/// No proxy answered: why, for each (one proxy's error as it is).
fn failed(failures: Vec<ProxyError>) -> ProxyAnswer {
    match failures.as_slice() {
        [] => ProxyAnswer::Failed("no proxy to ask".into()),
        [one] => ProxyAnswer::Failed(one.to_string()),
        several => ProxyAnswer::Failed(format!(
            "no proxy answered: {}",
            several
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

#[cfg(test)]
mod tests {
    //! The combining rules as pure functions (no sockets), then the one thing that needs
    //! sockets: a silent proxy delays an answer by the grace, not by its timeout.

    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7400 + n))
    }

    fn record(leader: &str, members: &[&str], term: u64) -> RecordSummary {
        RecordSummary {
            group: "lobby".into(),
            term,
            leader: leader.into(),
            leader_addr: addr(100),
            membership_version: 1,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            issued_at_ms: 1_767_225_600_000,
        }
    }

    fn draft(leader: &str, members: &[&str]) -> RecordDraft {
        RecordDraft {
            group: "lobby".into(),
            term: 3,
            leader: leader.into(),
            leader_addr: addr(100),
            membership_version: 2,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            issued_at_ms: 1_767_225_600_000,
        }
    }

    fn refused(status: ProxyStatus, held: Option<RecordSummary>) -> Verdict {
        Verdict::Refused {
            status,
            reason: format!("{status:?}"),
            held,
        }
    }

    fn dead(n: u16) -> ProxyError {
        ProxyError::NoAnswer(addr(n))
    }

    fn announce(
        leader: &str,
        members: &[&str],
        answers: Vec<Result<Verdict, ProxyError>>,
    ) -> ProxyAnswer {
        combine_verdicts(Kind::Announce, &draft(leader, members), answers)
    }

    #[test]
    fn one_proxys_answer_passes_through_unchanged() {
        let r = record("alice", &["alice", "bob"], 4);
        assert_eq!(
            combine_records(vec![Ok(Some(r.clone()))]),
            ProxyAnswer::Record(Some(r))
        );
        assert_eq!(combine_records(vec![Ok(None)]), ProxyAnswer::Record(None));
        assert_eq!(
            combine_records(vec![Err(dead(1))]),
            ProxyAnswer::Failed("the proxy at 127.0.0.1:7401 did not answer".into()),
            "the single-proxy message, as before"
        );
        let refusal = refused(
            ProxyStatus::INSUFFICIENT_VOTES,
            Some(record("alice", &["alice", "bob", "carol"], 4)),
        );
        for verdict in [Verdict::Accepted, refusal] {
            assert_eq!(
                announce("dave", &["dave"], vec![Ok(verdict.clone())]),
                ProxyAnswer::Verdict(verdict)
            );
        }
        assert_eq!(
            announce("dave", &["dave"], vec![Err(dead(1))]),
            ProxyAnswer::Failed("the proxy at 127.0.0.1:7401 did not answer".into())
        );
    }

    #[test]
    fn a_record_beats_no_leader_from_a_restarted_proxy_in_either_order() {
        let r = record("alice", &["alice", "bob"], 4);
        for answers in [
            vec![Ok(None), Ok(Some(r.clone()))],
            vec![Ok(Some(r.clone())), Ok(None)],
            vec![Ok(None), Err(dead(2)), Ok(Some(r.clone()))],
        ] {
            assert_eq!(
                combine_records(answers),
                ProxyAnswer::Record(Some(r.clone()))
            );
        }
        assert_eq!(
            combine_records(vec![Ok(None), Ok(None)]),
            ProxyAnswer::Record(None),
            "no leader only when every proxy that answered says so"
        );
    }

    #[test]
    fn a_dead_proxy_is_no_failure_when_another_answers() {
        let r = record("alice", &["alice", "bob"], 4);
        assert_eq!(
            combine_records(vec![Err(dead(1)), Ok(None)]),
            ProxyAnswer::Record(None)
        );
        assert_eq!(
            combine_records(vec![Ok(Some(r.clone())), Err(ProxyError::Late(addr(2)))]),
            ProxyAnswer::Record(Some(r))
        );
        assert_eq!(
            announce(
                "alice",
                &["alice", "bob"],
                vec![Err(dead(1)), Ok(Verdict::Accepted)]
            ),
            ProxyAnswer::Verdict(Verdict::Accepted)
        );
        let stale = refused(ProxyStatus::STALE_TERM, None);
        assert_eq!(
            announce(
                "alice",
                &["alice", "bob"],
                vec![Ok(stale.clone()), Err(dead(2))]
            ),
            ProxyAnswer::Verdict(stale)
        );
    }

    #[test]
    fn failed_only_when_no_proxy_answered_and_says_which() {
        let answers = || {
            vec![
                Err(dead(1)),
                Err(ProxyError::Io {
                    addr: addr(2),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                }),
            ]
        };
        for answer in [
            combine_records(answers().into_iter().map(|e| e.map(|()| None)).collect()),
            announce(
                "alice",
                &["alice"],
                answers()
                    .into_iter()
                    .map(|e| e.map(|()| Verdict::Accepted))
                    .collect(),
            ),
        ] {
            let ProxyAnswer::Failed(why) = answer else {
                panic!("expected a failure, got {answer:?}");
            };
            assert!(why.starts_with("no proxy answered: "), "{why}");
            assert!(
                why.contains("127.0.0.1:7401 did not answer") && why.contains("127.0.0.1:7402"),
                "{why}"
            );
        }
    }

    #[test]
    fn of_one_groups_records_the_newest_wins_in_either_order() {
        let old = record("alice", &["alice", "bob", "carol"], 4);
        let newer_term = record("bob", &["alice", "bob", "carol"], 5);
        let mut newer_version = old.clone();
        newer_version.membership_version += 1;
        newer_version.members.push("dave".into());
        let mut newer_issue = old.clone();
        newer_issue.issued_at_ms += 3000;
        for newer in [newer_term, newer_version, newer_issue] {
            for answers in [
                vec![Ok(Some(old.clone())), Ok(Some(newer.clone()))],
                vec![Ok(Some(newer.clone())), Ok(Some(old.clone()))],
            ] {
                assert_eq!(
                    combine_records(answers),
                    ProxyAnswer::Record(Some(newer.clone()))
                );
            }
        }
    }

    #[test]
    fn of_two_groups_the_outranking_one_wins_whatever_the_terms() {
        let large = record("carol", &["alice", "bob", "carol"], 2);
        let small_high_term = record("dave", &["dave", "erin"], 40);
        for answers in [
            vec![Ok(Some(large.clone())), Ok(Some(small_high_term.clone()))],
            vec![Ok(Some(small_high_term.clone())), Ok(Some(large.clone()))],
        ] {
            assert_eq!(
                combine_records(answers),
                ProxyAnswer::Record(Some(large.clone()))
            );
        }
        // As large: the leader's name that sorts first.
        let (a, b) = (record("dave", &["dave"], 1), record("erin", &["erin"], 9));
        assert_eq!(
            combine_records(vec![Ok(Some(b)), Ok(Some(a.clone()))]),
            ProxyAnswer::Record(Some(a))
        );
    }

    #[test]
    fn a_refusal_for_another_group_outweighs_an_acceptance() {
        // The held group outranks ours: the rendezvous merges.
        let outranking = refused(
            ProxyStatus::INSUFFICIENT_VOTES,
            Some(record("alice", &["alice", "bob", "carol"], 4)),
        );
        // Ours outranks the held one: the rendezvous stands again for proof.
        let outranked = refused(
            ProxyStatus::ALREADY_CLAIMED,
            Some(record("erin", &["erin"], 7)),
        );
        for refusal in [outranking, outranked] {
            for answers in [
                vec![Ok(Verdict::Accepted), Ok(refusal.clone())],
                vec![Ok(refusal.clone()), Ok(Verdict::Accepted)],
                vec![Err(dead(1)), Ok(refusal.clone()), Ok(Verdict::Accepted)],
            ] {
                assert_eq!(
                    announce("dave", &["dave"], answers),
                    ProxyAnswer::Verdict(refusal.clone())
                );
            }
        }
    }

    #[test]
    fn a_refusal_for_our_own_group_does_not_outweigh_an_acceptance() {
        let stale = refused(
            ProxyStatus::STALE_TERM,
            Some(record("bob", &["alice", "bob", "carol"], 9)),
        );
        assert_eq!(
            announce(
                "alice",
                &["alice", "bob", "carol"],
                vec![Ok(stale.clone()), Ok(Verdict::Accepted)]
            ),
            ProxyAnswer::Verdict(Verdict::Accepted)
        );
        assert_eq!(
            announce("alice", &["alice", "bob", "carol"], vec![Ok(stale.clone())]),
            ProxyAnswer::Verdict(stale),
            "alone, it is the answer"
        );
    }

    #[test]
    fn of_several_refusals_for_other_groups_the_highest_ranked_is_reported() {
        let small = refused(
            ProxyStatus::ALREADY_CLAIMED,
            Some(record("bob", &["bob", "carol"], 8)),
        );
        let large = refused(
            ProxyStatus::INSUFFICIENT_VOTES,
            Some(record("erin", &["erin", "frank", "grace"], 2)),
        );
        for answers in [
            vec![Ok(small.clone()), Ok(large.clone()), Ok(Verdict::Accepted)],
            vec![Ok(Verdict::Accepted), Ok(large.clone()), Ok(small.clone())],
        ] {
            assert_eq!(
                announce("alice", &["alice"], answers),
                ProxyAnswer::Verdict(large.clone())
            );
        }
    }

    #[test]
    fn a_claim_counts_as_refused_only_for_a_group_that_outranks_the_claimant() {
        let claim = |leader: &str, answers| {
            combine_verdicts(Kind::Claim, &draft(leader, &[leader]), answers)
        };
        // bob claimed at one proxy, alice at the other: alice's group outranks bob's.
        let for_alice = refused(
            ProxyStatus::ALREADY_CLAIMED,
            Some(record("alice", &["alice"], 1)),
        );
        let for_bob = refused(
            ProxyStatus::ALREADY_CLAIMED,
            Some(record("bob", &["bob"], 1)),
        );
        assert_eq!(
            claim("bob", vec![Ok(Verdict::Accepted), Ok(for_alice.clone())]),
            ProxyAnswer::Verdict(for_alice),
            "bob learns of alice and asks again"
        );
        assert_eq!(
            claim("alice", vec![Ok(for_bob.clone()), Ok(Verdict::Accepted)]),
            ProxyAnswer::Verdict(Verdict::Accepted),
            "alice founds; bob's claim loses to hers wherever the two meet"
        );
        assert_eq!(
            claim("alice", vec![Ok(for_bob.clone()), Err(dead(2))]),
            ProxyAnswer::Verdict(for_bob),
            "accepted nowhere: refused"
        );
    }

    #[test]
    fn without_an_acceptance_the_first_refusal_in_the_configured_order_counts() {
        let (first, second) = (
            refused(ProxyStatus::STALE_TERM, None),
            refused(ProxyStatus::REPLAYED, None),
        );
        assert_eq!(
            announce(
                "alice",
                &["alice"],
                vec![Err(dead(1)), Ok(first.clone()), Ok(second)]
            ),
            ProxyAnswer::Verdict(first)
        );
    }

    #[test]
    fn a_proxy_set_counts_each_address_once_and_is_bounded() {
        let set = ProxySet::new(&[addr(2), addr(1), addr(2)]).unwrap();
        assert_eq!(set.addrs(), [addr(2), addr(1)]);
        assert_eq!(ProxySet::new(&[]).unwrap_err(), ProxyListError::Empty);
        let many: Vec<SocketAddr> = (1..=17).map(addr).collect();
        assert_eq!(
            ProxySet::new(&many).unwrap_err(),
            ProxyListError::TooMany(17)
        );
        assert!(ProxySet::new(&many[..16]).is_ok());
    }

    /// A fake proxy on loopback that refuses every claim or announcement (STALE_TERM)
    /// at once, until dropped.
    async fn refusing_proxy() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        use sockmsg_proxy::handler::{parse, refusal_action, Action, Transport};
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(parsed) = parse(&buf[..n], Transport::Udp) else {
                    continue;
                };
                let reply = refusal_action(
                    parsed.request_id,
                    ProxyStatus::STALE_TERM,
                    "term 3 < 5",
                    parsed.reply_limit,
                );
                if let Action::Reply { packet, .. } = reply {
                    let _ = socket.send_to(&packet, from).await;
                }
            }
        });
        (at, task)
    }

    #[tokio::test]
    async fn a_silent_proxy_costs_the_grace_not_its_timeout() {
        let (live, server) = refusing_proxy().await;
        // Silent over UDP, and over TCP a listener that never answers: on its own, an
        // exchange with it gives up only after 3 × 300 ms of UDP and 3 s of TCP.
        let silent_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = silent_udp.local_addr().unwrap();
        let _silent_tcp = std::net::TcpListener::bind(silent).unwrap();
        let set = ProxySet::new(&[silent, live]).unwrap();
        let began = std::time::Instant::now();
        let answer = set
            .propose(
                Kind::Announce,
                draft("alice", &["alice", "bob"]),
                vec![0xaa; 384],
                vec![("bob".into(), vec![0xbb; 384])],
            )
            .await;
        let took = began.elapsed();
        assert_eq!(
            answer,
            ProxyAnswer::Verdict(Verdict::Refused {
                status: ProxyStatus::STALE_TERM,
                reason: "term 3 < 5".into(),
                held: None,
            })
        );
        assert!(took >= GRACE, "waited for the other proxy: {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "a silent proxy cost {took:?}: more than the grace"
        );
        server.abort();
    }
}
