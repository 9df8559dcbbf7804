//! Asking the proxy who leads a group, claiming a new group, announcing a leadership:
//! one REQUEST, one RESPONSE, over UDP with a few tries (a LAN loses little; the proxy
//! answers from memory), falling back to TCP for an answer too big for UDP.

use std::net::SocketAddr;
use std::time::Duration;

use rand::RngExt;
use sockmsg_proxy::client::{query_request, RecordDraft};
use sockmsg_proxy::handler::{decode_response, RecordSummary};
use sockmsg_proxy::Kind;
use sockmsg_wire::frame::{Frame, ProxyStatus};
use sockmsg_wire::session::crypto::Signer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

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
