//! Command line, settings and start-up of `sockmsg-node`.

use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use sockmsg_config::Config;
use sockmsg_keymgr::client::ClientError;
use sockmsg_node::datadir::NodeDir;
use sockmsg_node::driver::{check_name, Driver, NodeSettings};
use sockmsg_node::group::GroupConfig;
use sockmsg_wire::frame::KeyResultCode;
use sockmsg_wire::session::SessionConfig;
use tokio::sync::mpsc;

use crate::{services, ui};

/// sockmsg-node: group chat for the hosts of a LAN, peer to peer over UDP.
///
/// Joins GROUP (the proxy says who leads it; with no leader, this node founds it) and
/// chats: every line goes straight to every member over an encrypted, authenticated
/// session. Members elect a leader among themselves; if it fails, another takes over in
/// about 150-300 ms.
///
/// With no key manager and proxy reachable at their configured addresses (and none named
/// with --keymgr/--proxy), the node starts both in this process on their default
/// loopback ports, so one command gives a working chat on a single machine: run the same
/// command in another terminal to join. On a LAN run `sockmsg-keymgr` and `sockmsg-proxy`
/// on one host and point every node at them.
///
/// Interactive commands: /help, /peers, /leader, /msg NAME TEXT, /whois NAME, /exit.
/// With --json: the same commands as lines on stdin, one JSON object per event on stdout.
///
/// Settings come from config.yml (--config), then these flags. Log level: RUST_LOG.
#[derive(Debug, Parser)]
#[command(name = "sockmsg-node", version)]
pub struct Args {
    /// Your name in the group (1-32 ASCII letters, digits, '-', '_', '.'), bound to your
    /// key at the key manager. Default: node.name; asked for at a terminal.
    #[arg(long)]
    pub name: Option<String>,

    /// The group to join (or found). Default: node.group ("lobby").
    #[arg(long)]
    pub group: Option<String>,

    /// UDP address for peer traffic, IP:PORT; port 0 = any, a taken port moves to the
    /// next free one. Default: node.bind (127.0.0.1:7402); asked for at a terminal. Use
    /// your LAN address (or 0.0.0.0) to chat across hosts.
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,

    /// A proxy (who leads which group), IP:PORT. Repeat the flag, or separate addresses
    /// with commas, for several: a leader announces to every one and a joining node asks
    /// them all at once, so the group keeps working while any one of them answers
    /// (SPEC.md §12.8; at most 16). Given here, the list replaces both proxy.addresses and
    /// proxy.address. Default: proxy.addresses if not empty, else proxy.address
    /// (127.0.0.1:7400).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub proxy: Vec<SocketAddr>,

    /// The key manager. Default: keymgr.address (127.0.0.1:7401).
    #[arg(long, value_name = "ADDR")]
    pub keymgr: Option<SocketAddr>,

    /// Configuration file (see config.yml); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where your key, group state and known keys live. Default: node.data_dir, else
    /// $XDG_DATA_HOME/sockmsg/node (~/.local/share/sockmsg/node).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// One-time enrollment token (hex, as `sockmsg-keymgr invite` prints it) for a key
    /// manager that runs with `registration: invite`. Needed only the first time this
    /// name registers. Default: node.invite.
    #[arg(long, value_name = "TOKEN")]
    pub invite: Option<String>,

    /// Scripting mode: commands as lines on stdin, one JSON object per event on stdout,
    /// each with a millisecond timestamp ("ts"). No prompts.
    #[arg(long)]
    pub json: bool,
}

/// The node reports what the key manager client would warn about (first-use trust) as
/// its own notice, above the prompt, so that client logs only errors by default.
pub fn init_logging() {
    sockmsg_service::init_logging("warn,sockmsg_keymgr::client=error");
}

pub async fn run(args: Args) -> Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path).with_context(|| format!("reading {}", path.display()))?,
        None => Config::default(),
    };
    let interactive = !args.json && std::io::stdin().is_terminal();
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| config.node.data_dir.clone())
        .or_else(|| sockmsg_config::default_data_dir("node"))
        .ok_or_else(|| anyhow!("no data directory: give --data-dir (HOME is not set)"))?;

    let name = match args.name.clone().or_else(|| config.node.name.clone()) {
        Some(name) => name,
        None if interactive => ask_name(&data_dir)?,
        None => bail!("--name is required when stdin is not a terminal"),
    };
    check_name(&name)?;
    let bind = match args.bind {
        Some(bind) => bind,
        None if interactive && args.config.is_none() => ask_bind(config.node.bind)?,
        None => config.node.bind,
    };
    let group = args.group.clone().unwrap_or(config.node.group.clone());
    check_name(&group).context("group name")?;
    let invite = match &args.invite {
        Some(text) => {
            Some(sockmsg_config::parse_invite(text).map_err(|e| anyhow!("--invite: {e}"))?)
        }
        None => config.invite_token()?,
    };

    let dir = NodeDir::open(&data_dir, &name)?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let printer = ui::Printer::new(args.json);

    // The services: named ones are used as they are; otherwise start them here if
    // nothing answers at the configured addresses.
    let embed_allowed = args.proxy.is_empty() && args.keymgr.is_none();
    let services = services::ensure(&config, &args, embed_allowed, &printer).await?;

    if !dir.path().join("identity.pem").exists() {
        printer.notice(&format!(
            "generating your {}-bit identity key (once; this takes a few seconds)…",
            config.identity.key_bits
        ));
    }
    let bits = config.identity.key_bits as usize;
    let dir = Arc::new(dir);
    let (signer, generated) = {
        let (dir, name) = (dir.clone(), name.clone());
        tokio::task::spawn_blocking(move || dir.identity(&name, bits))
            .await
            .context("identity key")??
    };
    let dir = Arc::try_unwrap(dir).map_err(|_| anyhow!("data directory still in use"))?;
    if generated {
        printer.notice(&format!(
            "your key is in {}",
            dir.path().join("identity.pem").display()
        ));
    }
    let trust = services::trust(
        &services,
        config.keymgr.fingerprint.as_deref(),
        &dir.known_keymgr_file(),
    )?;
    let advertise = (bind.ip().is_unspecified()).then(detect_lan_ip).flatten();
    let settings = NodeSettings {
        name: name.clone(),
        group: group.clone(),
        bind,
        advertise,
        proxies: services.proxies.clone(),
        keymgr: services.keymgr,
        keymgr_trust: trust,
        invite: invite.clone(),
        group_config: group_config(&config, &group),
        session: session_config(&config),
        socket_buffer: 2 << 20,
    };
    let history = dir.history_file();
    let driver = Driver::start(settings, Arc::new(signer), dir, events_tx)
        .await
        .map_err(|e| explain_refusal(e, invite.is_some()))?;
    let (commands_tx, commands_rx) = mpsc::channel(256);
    // The input side ends by itself (end of input, /exit); it is not joined, since a
    // blocked read of stdin cannot be interrupted.
    ui::spawn_input(commands_tx, history, &printer, interactive)?;
    let output = ui::spawn_output(events_rx, printer.clone());
    let result = driver
        .run(commands_rx, sockmsg_service::shutdown_signal())
        .await;
    let _ = output.await;
    services.stop().await;
    result
}

/// Adds what to do to a registration the key manager refused for want of an invite.
fn explain_refusal(error: anyhow::Error, had_invite: bool) -> anyhow::Error {
    let needs_invite = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ClientError>(),
            Some(ClientError::Refused {
                code: KeyResultCode::INVITE_REQUIRED,
                ..
            })
        )
    });
    match (needs_invite, had_invite) {
        (false, _) => error,
        (true, false) => error.context(
            "this key manager registers new names only with an invite token: ask its \
             operator for one (`sockmsg-keymgr invite`) and start again with --invite TOKEN \
             (or node.invite in the config file)",
        ),
        (true, true) => error.context(
            "the key manager did not accept the invite token (already used, or minted by \
             another key manager): ask its operator for a new one (`sockmsg-keymgr invite`)",
        ),
    }
}

/// The group timers from `timing:`.
fn group_config(config: &Config, name: &str) -> GroupConfig {
    let t = &config.timing;
    let mut group = GroupConfig::new(name);
    group.heartbeat_interval = Duration::from_millis(t.heartbeat_ms);
    group.election_timeout_min = Duration::from_millis(t.election_timeout_min_ms);
    group.election_timeout_max = Duration::from_millis(t.election_timeout_max_ms);
    group.failure_removal = Duration::from_millis(t.failure_removal_ms);
    group
}

/// The session tunables from `timing:` and `transport:`.
fn session_config(config: &Config) -> SessionConfig {
    let (t, x) = (&config.timing, &config.transport);
    SessionConfig {
        datagram_size: x.datagram_size,
        idle_timeout: Duration::from_millis(t.idle_timeout_ms),
        handshake_timeout: Duration::from_millis(t.handshake_timeout_ms),
        unreachable_after: Duration::from_millis(x.unreachable_after_ms),
        send_buffer: x.per_peer_buffer_bytes,
        recv_buffer: x.per_peer_buffer_bytes,
        rekey_after_packets: x.rekey_after_packets,
        rekey_after: Duration::from_secs(x.rekey_after_secs),
        keylog: std::env::var_os("SOCKMSG_KEYLOG").is_some_and(|p| !p.is_empty()),
        // Handshake signatures are made on the driver's signing thread, never on its
        // event loop (see `driver::HandshakeSigningThread`).
        defer_signatures: true,
        ..SessionConfig::default()
    }
}

/// The address the host uses towards the LAN: the source the kernel picks for an
/// outside destination (a UDP "connect" sends nothing). `None` without a route.
pub fn detect_lan_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // TEST-NET-1 (RFC 5737): never routed anywhere, and nothing is sent.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn prompt(question: &str, default: &str) -> Result<String> {
    print!("{question} [{default}]: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        bail!("no answer (end of input)");
    }
    let line = line.trim();
    Ok(if line.is_empty() { default } else { line }.to_owned())
}

/// Asks for a name, offering the login name (or the first free variant of it on this
/// machine, so a second terminal gets `ann-2` rather than a clash).
fn ask_name(data_dir: &Path) -> Result<String> {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "me".into());
    let login: String = login
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(28)
        .collect();
    let login = if login.is_empty() {
        "me".to_owned()
    } else {
        login
    };
    let default = (1..100)
        .map(|i| {
            if i == 1 {
                login.clone()
            } else {
                format!("{login}-{i}")
            }
        })
        .find(|candidate| NodeDir::open(data_dir, candidate).is_ok())
        .unwrap_or(login);
    loop {
        let name = prompt("Your name", &default)?;
        match check_name(&name) {
            Ok(()) => return Ok(name),
            Err(e) => println!("{e}"),
        }
    }
}

/// Asks where to listen, as the predecessor did: the detected LAN address (if any) as
/// the default, else the configured one; then the port.
fn ask_bind(configured: SocketAddr) -> Result<SocketAddr> {
    let ip = match detect_lan_ip() {
        Some(lan) => {
            let answer = prompt(
                &format!("Use the detected LAN address {lan}? (n: this machine only) y/n"),
                "y",
            )?;
            if answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes") {
                lan
            } else {
                ask_ip(configured.ip())?
            }
        }
        None => ask_ip(configured.ip())?,
    };
    loop {
        let port = prompt(
            "Port (0 = any; a taken port moves to the next)",
            &configured.port().to_string(),
        )?;
        match port.parse::<u16>() {
            Ok(port) => return Ok(SocketAddr::new(ip, port)),
            Err(_) => println!("{port:?} is not a port number"),
        }
    }
}

fn ask_ip(default: IpAddr) -> Result<IpAddr> {
    loop {
        let answer = prompt("Address", &default.to_string())?;
        match answer.parse() {
            Ok(ip) => return Ok(ip),
            Err(_) => println!("{answer:?} is not an IP address"),
        }
    }
}
