//! A pre-authentication flood for `sockmsg-bench chat --flood`: what an outsider can make
//! a node do before any identity is proven.
//!
//! Each flooding host (its own loopback address, 127.0.1.x) asks every node for a cookie
//! with a padded INITIAL, and sends each cookie straight back in a padded INITIAL that
//! names a registered member: the most a host can get out of a node, since a verified
//! cookie is what makes the responder derive keys and sign (SPEC.md §5.1). The node's
//! per-source and half-open limits decide how many of those it signs; the flood only
//! pushes. It runs for a fixed time and stops by itself.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sockmsg_wire::frame::{HandshakeInit, Padding, Retry};
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, Encode, Frame, Name, PacketType, Token, HEADER_LEN,
};

/// Every INITIAL is padded to this (SPEC.md §4), or the node drops it unread.
const INITIAL_LEN: usize = 1200;

/// What the flooding hosts sent and got back, added up.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodStats {
    /// INITIALs without a cookie (each asks for a RETRY).
    pub asked: u64,
    /// RETRYs received, each answered with a cookie-bearing INITIAL.
    pub cookies_returned: u64,
    /// HANDSHAKE packets received: each one a signature the node made for the flood.
    pub responses: u64,
}

/// Flooding hosts at work; [`Flood::stop`] ends them and adds up what they did.
pub struct Flood {
    stop: Arc<AtomicBool>,
    hosts: Vec<JoinHandle<FloodStats>>,
}

impl Flood {
    /// Starts `hosts` flooding hosts against `targets` for at most `limit`, their
    /// INITIALs for `group` in the name of `claimed` (a registered member).
    pub fn start(
        hosts: u8,
        targets: &[SocketAddr],
        group: &str,
        claimed: &str,
        limit: Duration,
    ) -> Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for host in 0..hosts {
            let socket = UdpSocket::bind((Ipv4Addr::new(127, 0, 1, host + 1), 0))
                .context("bind a flooding host on 127.0.1.x")?;
            socket.set_read_timeout(Some(Duration::from_millis(1)))?;
            let (targets, group, claimed) =
                (targets.to_vec(), group.to_owned(), claimed.to_owned());
            let stop = stop.clone();
            let deadline = Instant::now() + limit;
            let seed = u64::from(host) << 40;
            handles.push(std::thread::spawn(move || {
                flood_from(&socket, &targets, &group, &claimed, seed, &stop, deadline)
            }));
        }
        Ok(Flood {
            stop,
            hosts: handles,
        })
    }

    /// Stops every host and adds up what they did.
    pub fn stop(self) -> FloodStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = FloodStats::default();
        for host in self.hosts {
            if let Ok(stats) = host.join() {
                total.asked += stats.asked;
                total.cookies_returned += stats.cookies_returned;
                total.responses += stats.responses;
            }
        }
        total
    }
}

/// One host's loop: a cookie request to every target, then every answer that came,
/// until stopped or `deadline`.
fn flood_from(
    socket: &UdpSocket,
    targets: &[SocketAddr],
    group: &str,
    claimed: &str,
    mut cid: u64,
    stop: &AtomicBool,
    deadline: Instant,
) -> FloodStats {
    let mut stats = FloodStats::default();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        for target in targets {
            cid += 1;
            if let Some(initial) = initial(group, claimed, cid, &[]) {
                if socket.send_to(&initial, target).is_ok() {
                    stats.asked += 1;
                }
            }
        }
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            match answer(&buf[..len]) {
                Some(Answer::Retry { cid, cookie }) => {
                    if let Some(initial) = initial(group, claimed, cid, &cookie) {
                        if socket.send_to(&initial, from).is_ok() {
                            stats.cookies_returned += 1;
                        }
                    }
                }
                Some(Answer::Handshake) => stats.responses += 1,
                None => {}
            }
        }
    }
    stats
}

enum Answer {
    Retry { cid: u64, cookie: Vec<u8> },
    Handshake,
}

fn answer(datagram: &[u8]) -> Option<Answer> {
    let packet = Datagram::new(datagram).next()?.ok()?;
    match packet.packet_type() {
        PacketType::RETRY => packet.frames().find_map(|frame| match frame {
            Ok(Frame::Retry(Retry { cookie })) => Some(Answer::Retry {
                cid: packet.header().connection_id(),
                cookie: cookie.as_bytes().to_vec(),
            }),
            _ => None,
        }),
        PacketType::HANDSHAKE => Some(Answer::Handshake),
        _ => None,
    }
}

/// A padded INITIAL for `cid`, with `cookie` (empty: asking for one).
fn initial(group: &str, claimed: &str, cid: u64, cookie: &[u8]) -> Option<Vec<u8>> {
    let ephemeral = [7u8; 32];
    let init = Frame::HandshakeInit(HandshakeInit {
        group: Name::new(group).ok()?,
        initiator: Name::new(claimed).ok()?,
        initiator_cid: cid,
        ephemeral: &ephemeral,
        cookie: Token::new(cookie).ok()?,
    });
    let unpadded = HEADER_LEN + init.encoded_len();
    let mut frames = vec![init];
    if unpadded < INITIAL_LEN {
        frames.push(Frame::Padding(Padding::new(INITIAL_LEN - unpadded).ok()?));
    }
    let mut out = Vec::with_capacity(INITIAL_LEN);
    encode_cleartext_packet(&mut out, PacketType::INITIAL, cid, 0, &frames).ok()?;
    Some(out)
}
