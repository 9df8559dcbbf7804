//! quinn 0.11 with rustls (ring), a self-signed certificate made by rcgen at start-up,
//! and quinn's default transport configuration: the reference QUIC stack.
//!
//! Messages go over one bidirectional stream, 100 bytes per `write_all` (one call per
//! message, as the other transports get); fixed-size messages need no framing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ClientConfig, Endpoint, EndpointConfig, ServerConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use crate::harness::{self, run_pair, Latency, OneWayTally, Params, Throughput, MESSAGE_LEN};

const SERVER_NAME: &str = "localhost";

/// How long the closing side waits for quinn to finish closing (not measured).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// A self-signed certificate for [`SERVER_NAME`] and its key, as DER.
#[derive(Clone)]
pub struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Identity {
    pub fn generate() -> Result<Self, String> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| e.to_string())?;
        Ok(Identity {
            cert: certified.cert.der().to_vec(),
            key: certified.signing_key.serialize_der(),
        })
    }

    fn server(&self, p: &Params) -> Result<Endpoint, String> {
        let cert = CertificateDer::from(self.cert.clone());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let config = ServerConfig::with_single_cert(vec![cert], key).map_err(|e| e.to_string())?;
        endpoint(p, Some(config))
    }

    fn client(&self, p: &Params) -> Result<Endpoint, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.clone()))
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let quic = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut endpoint = endpoint(p, None)?;
        endpoint.set_default_client_config(ClientConfig::new(Arc::new(quic)));
        Ok(endpoint)
    }
}

/// A quinn endpoint on a socket from [`harness::loopback_socket`].
fn endpoint(p: &Params, server: Option<ServerConfig>) -> Result<Endpoint, String> {
    let socket = harness::loopback_socket(p.rcvbuf).map_err(|e| e.to_string())?;
    Endpoint::new(
        EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| e.to_string())
}

/// A writes `warmup + messages` messages on one stream; B reads and times them.
pub fn throughput(p: Params, id: &Identity) -> Result<Throughput, String> {
    let (id_a, id_b) = (id.clone(), id.clone());
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let (a, b) = run_pair(
        p.layout,
        move || async move {
            let endpoint = id_a.client(&p)?;
            let peer = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let conn = endpoint
                .connect(peer, SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let total = p.warmup_messages + p.messages;
            let limit = Instant::now() + p.max_duration;
            let mut m = harness::message(0);
            let mut sent = 0;
            for seq in 0..total {
                if seq % 1024 == 0 && Instant::now() >= limit {
                    break;
                }
                harness::stamp(&mut m, seq);
                send.write_all(&m).await.map_err(|e| e.to_string())?;
                sent += 1;
            }
            let _ = send.finish();
            // Keep the connection until B has read everything (or gives up).
            let _ = timeout(p.hard_limit(), done_rx).await;
            conn.close(VarInt::from_u32(0), b"done");
            let _ = timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
            Ok::<u64, String>(sent)
        },
        move || async move {
            let endpoint = id_b.server(&p)?;
            let _ = addr_tx.send(endpoint.local_addr().map_err(|e| e.to_string())?);
            let run = async {
                let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
                let conn = incoming.await.map_err(|e| e.to_string())?;
                let (_send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
                let mut tally = OneWayTally::new(p.warmup_messages);
                let mut buf = [0u8; MESSAGE_LEN];
                while tally.received < p.messages {
                    if recv.read_exact(&mut buf).await.is_err() {
                        break; // the stream ended early (A hit its time limit)
                    }
                    tally.on_message(&buf);
                }
                Ok::<_, String>((tally, conn))
            };
            let result = timeout(p.hard_limit(), run).await;
            let _ = done_tx.send(());
            let (tally, conn) = result.map_err(|_| "timed out".to_string())??;
            let _ = timeout(CLOSE_GRACE, conn.closed()).await;
            Ok::<_, String>(tally)
        },
    );
    let sent = a?.saturating_sub(p.warmup_messages);
    Ok(b?.into_result(sent, String::new()))
}

/// A writes a message, B reads it and writes it back, A reads the echo; one at a time.
pub fn ping_pong(p: Params, id: &Identity) -> Result<Latency, String> {
    let (id_a, id_b) = (id.clone(), id.clone());
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (a, b) = run_pair(
        p.layout,
        move || async move {
            let endpoint = id_a.client(&p)?;
            let peer = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let conn = endpoint
                .connect(peer, SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let mut result = Latency::new();
            let mut m = harness::message(0);
            let mut buf = [0u8; MESSAGE_LEN];
            let limit = Instant::now() + p.max_duration;
            let run = async {
                for seq in 0..p.warmup_round_trips + p.round_trips {
                    if Instant::now() >= limit {
                        result.note = format!("stopped at the time limit after {seq}");
                        break;
                    }
                    harness::stamp(&mut m, seq);
                    let sent_at = std::time::Instant::now();
                    send.write_all(&m).await.map_err(|e| e.to_string())?;
                    recv.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                    if seq >= p.warmup_round_trips {
                        harness::record(&mut result.latency, sent_at.elapsed().as_nanos() as u64);
                    }
                }
                Ok::<(), String>(())
            };
            let outcome = timeout(p.hard_limit(), run).await;
            let _ = send.finish();
            conn.close(VarInt::from_u32(0), b"done");
            let _ = timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
            outcome.map_err(|_| "timed out".to_string())??;
            Ok::<_, String>(result)
        },
        move || async move {
            let endpoint = id_b.server(&p)?;
            let _ = addr_tx.send(endpoint.local_addr().map_err(|e| e.to_string())?);
            let run = async {
                let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
                let conn = incoming.await.map_err(|e| e.to_string())?;
                let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
                let mut buf = [0u8; MESSAGE_LEN];
                // Ends when A finishes the stream or closes the connection.
                while recv.read_exact(&mut buf).await.is_ok() {
                    if send.write_all(&buf).await.is_err() {
                        break;
                    }
                }
                Ok::<(), String>(())
            };
            timeout(p.hard_limit(), run)
                .await
                .map_err(|_| "timed out".to_string())?
        },
    );
    b?;
    a
}

/// A connects `warmup + handshakes` times, one after another; each counts from
/// `connect` until both ends report the connection established.
pub fn handshake(p: Params, id: &Identity) -> Result<Latency, String> {
    let (id_a, id_b) = (id.clone(), id.clone());
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (accepted_tx, mut accepted_rx) = mpsc::unbounded_channel::<std::time::Instant>();
    let (a, b) = run_pair(
        p.layout,
        move || async move {
            let endpoint = id_a.client(&p)?;
            let peer = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let mut result = Latency::new();
            let limit = Instant::now() + p.max_duration;
            for i in 0..p.warmup_handshakes + p.handshakes {
                if Instant::now() >= limit {
                    result.note = format!("stopped at the time limit after {i}");
                    break;
                }
                let start = std::time::Instant::now();
                let connecting = endpoint
                    .connect(peer, SERVER_NAME)
                    .map_err(|e| e.to_string())?;
                let conn = match timeout(Duration::from_secs(2), connecting).await {
                    Ok(Ok(conn)) => conn,
                    _ => {
                        result.failures += 1;
                        continue;
                    }
                };
                let client_done = std::time::Instant::now();
                let server_done = match timeout(Duration::from_secs(2), accepted_rx.recv()).await {
                    Ok(Some(at)) => at,
                    _ => {
                        result.failures += 1;
                        continue;
                    }
                };
                if i >= p.warmup_handshakes {
                    let done = client_done.max(server_done);
                    harness::record(&mut result.latency, (done - start).as_nanos() as u64);
                }
                conn.close(VarInt::from_u32(0), b"done");
            }
            let _ = timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
            Ok::<_, String>(result)
        },
        move || async move {
            let endpoint = id_b.server(&p)?;
            let _ = addr_tx.send(endpoint.local_addr().map_err(|e| e.to_string())?);
            let run = async {
                let mut connections = Vec::new();
                for _ in 0..p.warmup_handshakes + p.handshakes {
                    let Some(incoming) = endpoint.accept().await else {
                        break;
                    };
                    if let Ok(conn) = incoming.await {
                        let _ = accepted_tx.send(std::time::Instant::now());
                        // Kept open until A closes it, so B does not close first.
                        connections.push(conn);
                    }
                }
                connections
            };
            let _connections = timeout(p.hard_limit(), run).await;
            let _ = timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
            Ok::<(), String>(())
        },
    );
    b?;
    a
}
