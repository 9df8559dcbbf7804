//! A pre-authentication flood for `sockmsg-bench chat --flood`: what an outsider can make
//! a node do before any identity is proven.
//!
//! Each flooding host (its own loopback address, 127.0.1.x) asks every node for a cookie
//! with a padded INITIAL, and sends each cookie straight back in a padded INITIAL that
//! names a registered member: the most a host can get out of a node, since a verified
//! cookie is what makes the responder derive keys and sign (SPEC.md §5.1). The node's
//! per-source and half-open limits decide how many of those it signs; the flood only
//! pushes. It runs for a fixed time and stops by itself.
//!
//! A real attacker floods from other hosts; here the flooding threads share the nodes'
//! CPU, so they run at nice 19 and send at a fixed rate, to measure what the flood does
//! to the nodes rather than what the flood's own threads take from them.

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
    /// Starts `hosts` flooding hosts against `targets` for at most `limit`, each asking
    /// every target for `rate` cookies a second, their INITIALs for `group` in the name
    /// of `claimed` (a registered member).
    pub fn start(
        hosts: u8,
        rate: u32,
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
            let interval = Duration::from_secs(1) / rate.max(1);
            handles.push(std::thread::spawn(move || {
                lower_this_threads_priority();
                let host = Host {
                    socket: &socket,
                    targets: &targets,
                    group: &group,
                    claimed: &claimed,
                    interval,
                };
                host.flood(seed, &stop, deadline)
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

/// One flooding host.
struct Host<'a> {
    socket: &'a UdpSocket,
    targets: &'a [SocketAddr],
    group: &'a str,
    claimed: &'a str,
    /// Between two rounds of cookie requests (one to every target).
    interval: Duration,
}

impl Host<'_> {
    /// A round of cookie requests every `interval`, every answer in between, until
    /// stopped or `deadline`.
    fn flood(&self, mut cid: u64, stop: &AtomicBool, deadline: Instant) -> FloodStats {
        let mut stats = FloodStats::default();
        let mut buf = vec![0u8; 65_536];
        let mut next_round = Instant::now();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if Instant::now() >= next_round {
                next_round += self.interval;
                for target in self.targets {
                    cid += 1;
                    if self.send(cid, &[], *target) {
                        stats.asked += 1;
                    }
                }
            }
            while let Ok((len, from)) = self.socket.recv_from(&mut buf) {
                match answer(&buf[..len]) {
                    Some(Answer::Retry { cid, cookie }) if self.send(cid, &cookie, from) => {
                        stats.cookies_returned += 1
                    }
                    Some(Answer::Handshake) => stats.responses += 1,
                    Some(Answer::Retry { .. }) | None => {}
                }
            }
        }
        stats
    }

    fn send(&self, cid: u64, cookie: &[u8], to: SocketAddr) -> bool {
        initial(self.group, self.claimed, cid, cookie)
            .is_some_and(|initial| self.socket.send_to(&initial, to).is_ok())
    }
}

/// Nice 19 for the calling flooding thread (see the module docs).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
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
