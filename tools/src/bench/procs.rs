//! The processes a benchmark drives: a key manager, a proxy and `sockmsg-node`s, all on
//! loopback, each cleaned up when dropped (and so on failure and on Ctrl-C, which the
//! runner turns into an orderly stop).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Where the sibling binaries are: next to the running one (target/debug or release).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("where am I")?;
    let dir = exe.parent().ok_or_else(|| anyhow!("no parent directory"))?;
    // Test binaries run from target/*/deps.
    Ok(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

pub fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build -p {name}), or give --bin-dir",
            path.display()
        );
    }
    Ok(path)
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port")
}

/// A child process killed on drop.
pub struct Guarded(pub Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The key manager and the proxy, as their own processes, each of which can be killed
/// (SIGKILL) and started again at the same address: the key manager from its data
/// directory (same key, same registrations), the proxy empty (it keeps no state).
pub struct Services {
    pub keymgr: SocketAddr,
    pub proxy: SocketAddr,
    // The proxy first: stopped before the key manager it talks to.
    proxy_child: Option<Guarded>,
    keymgr_child: Option<Guarded>,
    keymgr_bin: PathBuf,
    proxy_bin: PathBuf,
    keymgr_dir: PathBuf,
    proxy_dir: PathBuf,
    fingerprint: String,
}

impl Services {
    pub fn start(bins: &Path, work: &Path) -> Result<Services> {
        let keymgr_bin = binary(bins, "sockmsg-keymgr")?;
        let proxy_bin = binary(bins, "sockmsg-proxy")?;
        let dir = work.join("keymgr");
        let init = Command::new(&keymgr_bin)
            .arg("init")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--bits")
            .arg("2048")
            .output()
            .context("sockmsg-keymgr init")?;
        if !init.status.success() {
            bail!(
                "sockmsg-keymgr init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let fingerprint = String::from_utf8_lossy(&init.stdout).trim().to_owned();
        if fingerprint.is_empty() {
            bail!("sockmsg-keymgr init printed no fingerprint");
        }
        let mut services = Services {
            keymgr: format!("127.0.0.1:{}", free_port()?).parse()?,
            proxy: format!("127.0.0.1:{}", free_port()?).parse()?,
            proxy_child: None,
            keymgr_child: None,
            keymgr_bin,
            proxy_bin,
            keymgr_dir: dir,
            proxy_dir: work.join("proxy"),
            fingerprint,
        };
        services.start_keymgr()?;
        services.start_proxy()?;
        Ok(services)
    }

    /// Starts the key manager from its data directory at its address, and returns once
    /// it accepts connections.
    pub fn start_keymgr(&mut self) -> Result<()> {
        if self.keymgr_child.is_some() {
            bail!("the key manager is running");
        }
        let mut child = Guarded(
            Command::new(&self.keymgr_bin)
                .arg("serve")
                .arg("--data-dir")
                .arg(&self.keymgr_dir)
                .arg("--listen")
                .arg(self.keymgr.to_string())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .context("start sockmsg-keymgr")?,
        );
        wait_ready(&mut child, self.keymgr, "sockmsg-keymgr")?;
        self.keymgr_child = Some(child);
        Ok(())
    }

    /// Starts a proxy (no records) at its address, and returns once it accepts
    /// connections.
    pub fn start_proxy(&mut self) -> Result<()> {
        if self.proxy_child.is_some() {
            bail!("the proxy is running");
        }
        let mut child = Guarded(
            Command::new(&self.proxy_bin)
                .arg("--listen")
                .arg(self.proxy.to_string())
                .arg("--keymgr")
                .arg(self.keymgr.to_string())
                .arg("--keymgr-fingerprint")
                .arg(&self.fingerprint)
                .arg("--data-dir")
                .arg(&self.proxy_dir)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .context("start sockmsg-proxy")?,
        );
        wait_ready(&mut child, self.proxy, "sockmsg-proxy")?;
        self.proxy_child = Some(child);
        Ok(())
    }

    /// SIGKILLs the key manager and reaps it (its sockets are closed on return).
    pub fn kill_keymgr(&mut self) {
        self.keymgr_child = None;
    }

    /// SIGKILLs the proxy and reaps it (its sockets are closed, its records gone).
    pub fn kill_proxy(&mut self) {
        self.proxy_child = None;
    }

    /// Starts whichever of the two is not running (never started again, or exited).
    pub fn ensure_running(&mut self) -> Result<()> {
        if !self.keymgr_child.as_mut().is_some_and(Guarded::running) {
            self.keymgr_child = None;
            self.start_keymgr()?;
        }
        if !self.proxy_child.as_mut().is_some_and(Guarded::running) {
            self.proxy_child = None;
            self.start_proxy()?;
        }
        Ok(())
    }
}

impl Guarded {
    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// Waits (bounded) until `child` accepts TCP at `addr`; fails at once if it exits.
fn wait_ready(child: &mut Guarded, addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait()? {
            bail!("{what} exited ({status}) before it answered at {addr}");
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        // Polling a port that is not open yet: refused at once, so poll often.
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("{what} does not answer at {addr} within 20 s")
}

/// Rung by the reader of every node that shares it, at each event and when the node's
/// output ends: one thing to wait on for "something happened to any of them".
#[derive(Default)]
pub struct Bell {
    rung: Mutex<u64>,
    cond: Condvar,
}

impl Bell {
    /// How many times it has rung so far.
    pub fn rung(&self) -> u64 {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cond.notify_all();
    }

    /// Waits until it has rung more than `seen` times, or until `deadline`.
    pub fn wait(&self, seen: u64, deadline: Instant) {
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        while *rung == seen {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            rung = self
                .cond
                .wait_timeout(rung, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// One event a node printed, and when the runner read it.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Instant,
    pub value: Value,
}

#[derive(Default)]
struct Log {
    events: Vec<Event>,
    closed: bool,
}

/// A `sockmsg-node --json` process.
pub struct Node {
    pub name: String,
    /// Its stderr (see [`node_log`]).
    log_path: PathBuf,
    child: Guarded,
    stdin: Option<ChildStdin>,
    log: Arc<(Mutex<Log>, Condvar)>,
}

impl Node {
    /// Starts `sockmsg-node --json` named `name` (its data directory under `work`, kept
    /// between starts), in `group` (None: the node's default); its reader rings `bell`
    /// at each event.
    pub fn spawn(
        bins: &Path,
        name: &str,
        work: &Path,
        services: &Services,
        config: &Path,
        group: Option<&str>,
        bell: &Arc<Bell>,
    ) -> Result<Node> {
        let bin = binary(bins, "sockmsg-node")?;
        let (filter, log_path, stderr) = node_log(work, name)?;
        let mut command = Command::new(bin);
        command
            .args(["--json", "--name", name, "--bind", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(work.join("nodes"))
            .arg("--config")
            .arg(config)
            .arg("--proxy")
            .arg(services.proxy.to_string())
            .arg("--keymgr")
            .arg(services.keymgr.to_string());
        if let Some(group) = group {
            command.args(["--group", group]);
        }
        let mut child = command
            .env("RUST_LOG", filter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("start sockmsg-node")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let reader = log.clone();
        let bell = bell.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                if let Ok(value) = serde_json::from_str(&line) {
                    let (lock, cond) = &*reader;
                    lock.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .events
                        .push(Event { at, value });
                    cond.notify_all();
                    bell.ring();
                }
            }
            let (lock, cond) = &*reader;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            cond.notify_all();
            bell.ring();
        });
        Ok(Node {
            name: name.to_owned(),
            log_path,
            stdin: child.stdin.take(),
            child: Guarded(child),
            log,
        })
    }

    pub fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{} is closed", self.name))?;
        writeln!(stdin, "{line}").context("write to node")?;
        stdin.flush().context("write to node")
    }

    /// Where the node receives datagrams and its group, from its `started` event.
    pub fn started(&self) -> Option<(SocketAddr, String)> {
        let event = self.events_since(0, "started").into_iter().next()?;
        let addr = event.value["addr"].as_str()?.parse().ok()?;
        let group = event.value["group"].as_str()?.to_owned();
        Some((addr, group))
    }

    pub fn mark(&self) -> usize {
        self.log
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .len()
    }

    /// Calls `f` with the events from `from` on; waits (up to `timeout`) while it says
    /// `None`.
    pub fn wait<T>(
        &self,
        from: usize,
        timeout: Duration,
        mut f: impl FnMut(&[Event]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(found) = f(log.events.get(from..).unwrap_or(&[])) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline || log.closed {
                return None;
            }
            log = cond
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The latest (term, leader, when read) this node reported.
    pub fn leader(&self) -> Option<(u64, Option<String>, Instant)> {
        let log = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        log.events
            .iter()
            .rev()
            .find(|e| e.value["event"] == "leader")
            .map(|e| {
                (
                    e.value["term"].as_u64().unwrap_or(0),
                    e.value["leader"].as_str().map(str::to_owned),
                    e.at,
                )
            })
    }

    /// The size of the latest membership this node reported.
    pub fn members(&self) -> usize {
        let log = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        log.events
            .iter()
            .rev()
            .find(|e| e.value["event"] == "members")
            .and_then(|e| e.value["members"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Asks `/peers` and tells whether the answer shows an established session (an
    /// RTT) with every other member.
    pub fn has_all_sessions(&mut self) -> Result<bool> {
        let mark = self.mark();
        self.say("/peers")?;
        let ready = self.wait(mark, Duration::from_secs(1), |events| {
            let peers = events.iter().find(|e| e.value["event"] == "peers")?;
            let members = peers.value["members"].as_array()?;
            Some(
                members
                    .iter()
                    .all(|m| m["me"] == true || m["rtt_us"].is_u64()),
            )
        });
        Ok(ready == Some(true))
    }

    /// For error messages: the last `n` events this node printed (JSON lines), whether
    /// it is still running, and the end of its log.
    pub fn last_events(&mut self, n: usize) -> String {
        let log = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.events.len().saturating_sub(n);
        let mut out: Vec<String> = log.events[skip..]
            .iter()
            .map(|e| e.value.to_string())
            .collect();
        drop(log);
        if let Ok(Some(status)) = self.child.0.try_wait() {
            out.push(format!("(it exited: {status})"));
        }
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(n).collect();
        out.extend(tail.into_iter().rev().map(|l| format!("log: {l}")));
        out.join("\n")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.running()
    }

    /// What this node's latest events say about its group.
    pub fn view(&mut self) -> View {
        let running = self.running();
        let log = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        let latest = |kind: &str| log.events.iter().rev().find(|e| e.value["event"] == kind);
        let admission = log
            .events
            .iter()
            .rev()
            .find(|e| {
                ["joined", "removed", "left"]
                    .iter()
                    .any(|k| e.value["event"] == *k)
            })
            .and_then(|e| e.value["event"].as_str().map(str::to_owned));
        let leader = latest("leader").map(|e| {
            (
                e.value["term"].as_u64().unwrap_or(0),
                e.value["leader"].as_str().map(str::to_owned),
                e.at,
            )
        });
        let members = latest("members").map(|e| {
            let names = e.value["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (names, e.at)
        });
        View {
            name: self.name.clone(),
            running,
            admission,
            leader,
            members,
        }
    }

    pub fn is_joined(&self) -> bool {
        let log = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        log.events.iter().any(|e| e.value["event"] == "joined")
    }

    /// Events of one kind since `from`, with when they were read.
    pub fn events_since(&self, from: usize, kind: &str) -> Vec<Event> {
        let log = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        log.events
            .iter()
            .skip(from)
            .filter(|e| e.value["event"] == kind)
            .cloned()
            .collect()
    }

    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Sends `/exit` and waits (bounded) for the process to end.
    pub fn exit(&mut self) -> Result<()> {
        self.say("/exit")?;
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.0.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        bail!("{} did not exit within 10 s of /exit", self.name)
    }
}

/// What one node's events say about its group ([`Node::view`]).
#[derive(Debug, Clone)]
pub struct View {
    pub name: String,
    pub running: bool,
    /// The latest of its `joined`, `removed` and `left` events.
    pub admission: Option<String>,
    /// Its latest `leader` event: term, leader, when it was read.
    pub leader: Option<(u64, Option<String>, Instant)>,
    /// Its latest `members` event: the names, when it was read.
    pub members: Option<(BTreeSet<String>, Instant)>,
}

impl View {
    /// One line for a diagnostic: `n0: leader n1 (term 3), members [n0, n1], joined`.
    pub fn line(&self) -> String {
        let leader = match &self.leader {
            Some((term, Some(leader), _)) => format!("leader {leader} (term {term})"),
            Some((term, None, _)) => format!("no leader (term {term})"),
            None => "no leader event".to_owned(),
        };
        let members = match &self.members {
            Some((names, _)) => format!(
                "members [{}]",
                names
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "no members event".to_owned(),
        };
        format!(
            "{}: {}{leader}, {members}, {}",
            self.name,
            if self.running { "" } else { "EXITED, " },
            self.admission.as_deref().unwrap_or("never joined"),
        )
    }
}

/// Where a node's log (stderr) goes: `DIR/<name>.log`, appended, where DIR is
/// `SOCKMSG_BENCH_LOG` if set (then at the level `RUST_LOG` gives, by default the
/// node's trace events, timestamped to the microsecond: what a slow round spent its
/// time on), else the run's scratch directory (errors only: why a node stopped).
fn node_log(work: &Path, name: &str) -> Result<(String, PathBuf, Stdio)> {
    let (dir, filter) = match std::env::var_os("SOCKMSG_BENCH_LOG").filter(|d| !d.is_empty()) {
        Some(dir) => (
            work.join(dir),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "sockmsg_node=trace".into()),
        ),
        None => (work.join("logs"), "error".into()),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    Ok((filter, path, Stdio::from(file)))
}

/// A config file for benchmark nodes: 2048-bit identities (made once per run).
pub fn write_config(work: &Path) -> Result<PathBuf> {
    let path = work.join("config.yml");
    std::fs::write(&path, "identity:\n  key_bits: 2048\n").context("write config")?;
    Ok(path)
}
