//! The processes a benchmark drives: a key manager, a proxy and `sockmsg-node`s, all on
//! loopback, each cleaned up when dropped (and so on failure and on Ctrl-C, which the
//! runner turns into an orderly stop).

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

/// The key manager and the proxy, as their own processes.
pub struct Services {
    pub keymgr: SocketAddr,
    pub proxy: SocketAddr,
    _keymgr: Guarded,
    _proxy: Guarded,
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
        let keymgr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let keymgr_child = Guarded(
            Command::new(&keymgr_bin)
                .arg("serve")
                .arg("--data-dir")
                .arg(&dir)
                .arg("--listen")
                .arg(keymgr.to_string())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .context("start sockmsg-keymgr")?,
        );
        let proxy_child = Guarded(
            Command::new(&proxy_bin)
                .arg("--listen")
                .arg(proxy.to_string())
                .arg("--keymgr")
                .arg(keymgr.to_string())
                .arg("--keymgr-fingerprint")
                .arg(&fingerprint)
                .arg("--data-dir")
                .arg(work.join("proxy"))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .context("start sockmsg-proxy")?,
        );
        wait_tcp(keymgr)?;
        wait_tcp(proxy)?;
        Ok(Services {
            keymgr,
            proxy,
            _keymgr: keymgr_child,
            _proxy: proxy_child,
        })
    }
}

/// Waits (bounded) until something accepts TCP at `addr`.
fn wait_tcp(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing answers at {addr}")
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
    pub fn spawn(
        bins: &Path,
        name: &str,
        work: &Path,
        services: &Services,
        config: &Path,
    ) -> Result<Node> {
        let bin = binary(bins, "sockmsg-node")?;
        let (filter, log_path, stderr) = node_log(work, name)?;
        let mut child = Command::new(bin)
            .args(["--json", "--name", name, "--bind", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(work.join("nodes"))
            .arg("--config")
            .arg(config)
            .arg("--proxy")
            .arg(services.proxy.to_string())
            .arg("--keymgr")
            .arg(services.keymgr.to_string())
            .env("RUST_LOG", filter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("start sockmsg-node")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let reader = log.clone();
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
                }
            }
            let (lock, cond) = &*reader;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            cond.notify_all();
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
