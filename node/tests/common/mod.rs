//! Real `sockmsg-node` processes driven through `--json`, for the end-to-end suites.
//!
//! Each node runs as its own process with piped stdin (commands) and stdout (one JSON
//! event per line); a reader thread collects the events, and tests wait on them with a
//! deadline, never on sleeps. Identities are the checked-in test keys (copied into each
//! node's data directory), so no test pays for RSA key generation.

#![allow(dead_code)]

pub mod view;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sockmsg_keymgr::client::Trust;
use sockmsg_keymgr::registry::RegistrationMode;
use tokio::sync::watch;

pub const NAMES: [&str; 7] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];

/// How long any one awaited event may take (debug builds on a busy 2-core machine).
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn testdata_key(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/keys")
        .join(format!("{name}.pem"))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sockmsg-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts `name`'s test key where the node looks for its identity.
pub fn install_identity(data_dir: &Path, name: &str) {
    let dir = data_dir.join(name);
    std::fs::create_dir_all(&dir).expect("node dir");
    let target = dir.join("identity.pem");
    std::fs::copy(testdata_key(name), &target).expect("copy key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[derive(Default)]
struct Log {
    events: Vec<Value>,
    closed: bool,
}

/// One node process.
pub struct NodeProc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<(Mutex<Log>, Condvar)>,
}

impl NodeProc {
    /// Starts `sockmsg-node --json` with `args` after the common ones; `wrap` is a
    /// command prefix (e.g. `ip netns exec ns1`), empty for none.
    pub fn spawn(name: &str, data_dir: &Path, args: &[String], wrap: &[String]) -> NodeProc {
        let bin = env!("CARGO_BIN_EXE_sockmsg-node");
        let mut command = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command
            .args(["--json", "--name", name, "--data-dir"])
            .arg(data_dir)
            .args(args);
        NodeProc::from_command(name, command)
    }

    /// Sends one command line.
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to node");
        stdin.flush().expect("flush");
    }

    /// How many events so far: pass to `wait` to look only at later ones.
    pub fn mark(&self) -> usize {
        self.log.0.lock().unwrap().events.len()
    }

    /// The first event at index ≥ `from` that satisfies `pred`, waiting up to `DEADLINE`.
    pub fn wait(&self, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(from, DEADLINE, what, pred)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {what} within {DEADLINE:?}; events: {}",
                    self.name,
                    self.dump(from)
                )
            })
    }

    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        _what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap();
        let mut seen = from;
        loop {
            if let Some(found) = log.events.iter().skip(seen).find(|e| pred(e)) {
                return Some(found.clone());
            }
            seen = log.events.len().max(from);
            let now = Instant::now();
            if now >= deadline || log.closed {
                return None;
            }
            log = cond.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    pub fn events(&self) -> Vec<Value> {
        self.log.0.lock().unwrap().events.clone()
    }

    fn dump(&self, from: usize) -> String {
        let events = self.events();
        let tail: Vec<String> = events.iter().skip(from).map(|e| e.to_string()).collect();
        tail.join("\n  ")
    }

    /// The latest (term, leader) this node reported.
    pub fn leader(&self) -> Option<(u64, Option<String>)> {
        self.events()
            .iter()
            .rev()
            .find(|e| e["event"] == "leader")
            .map(|e| {
                (
                    e["term"].as_u64().unwrap_or(0),
                    e["leader"].as_str().map(str::to_owned),
                )
            })
    }

    /// Whether the process is still running (it has not exited, by itself or otherwise).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin after `/exit` and waits for the process to end.
    pub fn exit(&mut self) -> std::process::ExitStatus {
        self.say("/exit");
        self.stdin = None;
        self.wait_exit()
    }

    /// SIGTERM, as a service manager stops a process, and waits for it to end.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is(event: &Value, kind: &str) -> bool {
    event["event"] == kind
}

/// A chat event from `sender` with `text`.
pub fn chat_from(sender: &str, text: &str) -> impl Fn(&Value) -> bool {
    let (sender, text) = (sender.to_owned(), text.to_owned());
    move |e| is(e, "chat") && e["sender"] == sender.as_str() && e["text"] == text.as_str()
}

/// A key manager and a proxy (real servers, real sockets) on a thread of this process,
/// until dropped: on ephemeral loopback ports, or on given addresses inside a network
/// namespace (the thread moves into it, so its sockets belong there).
pub struct Services {
    pub keymgr: std::net::SocketAddr,
    /// The key manager's key fingerprint, for clients that pin it.
    pub keymgr_fingerprint: String,
    pub proxy: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Services {
    pub fn on_loopback() -> Services {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        Services::start(None, any, any)
    }

    pub fn start(
        netns: Option<String>,
        keymgr: std::net::SocketAddr,
        proxy: std::net::SocketAddr,
    ) -> Services {
        let dir = TempDir::new("services");
        let pem = std::fs::read_to_string(testdata_key("keymgr")).unwrap();
        let keymgr_dir = dir.0.join("keymgr");
        let fingerprint = sockmsg_keymgr::datadir::init_with_key(&keymgr_dir, &pem).unwrap();
        let keymgr_fingerprint = fingerprint.clone();
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns");
                // SAFETY: setns(2) on a namespace file we hold open; affects this thread.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let keymgr_server =
                    sockmsg_keymgr::server::Server::bind(sockmsg_keymgr::server::ServeConfig::new(
                        keymgr_dir,
                        keymgr,
                        RegistrationMode::Open,
                    ))
                    .await
                    .unwrap();
                let keymgr_at = keymgr_server.local_addr();
                let proxy_server =
                    sockmsg_proxy::server::Server::bind(sockmsg_proxy::server::ServeConfig::new(
                        proxy,
                        keymgr_at,
                        Trust::Pinned(fingerprint),
                    ))
                    .await
                    .unwrap();
                ready_tx
                    .send((keymgr_at, proxy_server.local_addr()))
                    .unwrap();
                let stopped = |mut rx: watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                let _ = tokio::join!(
                    keymgr_server.run(stopped(stop_rx.clone())),
                    proxy_server.run(stopped(stop_rx)),
                );
            });
        });
        let (keymgr, proxy) = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("services started");
        Services {
            keymgr,
            keymgr_fingerprint,
            proxy,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The flags that point a node at these services (and bind it to any loopback port).
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--proxy".into(),
            self.proxy.to_string(),
            "--keymgr".into(),
            self.keymgr.to_string(),
        ]
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server of this process on its own thread and tokio runtime, until stopped (or
/// dropped): the part of [`KeymgrServer`] and [`ProxyServer`] that can end on its own,
/// unlike [`Services`], whose key manager and proxy share one stop signal.
pub struct ServerThread {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Binds with `bind` on a new thread and serves with `serve` until stopped. `bind`
    /// is retried for `DEADLINE` (an address just released by a stopped server may take
    /// a moment to be free again); the bound address, or why it could not bind.
    fn spawn<S, B, BF, V, VF>(
        what: &'static str,
        bind: B,
        local_addr: fn(&S) -> std::net::SocketAddr,
        serve: V,
    ) -> (std::net::SocketAddr, ServerThread)
    where
        S: 'static,
        B: Fn() -> BF + Send + 'static,
        BF: std::future::Future<Output = Result<S, String>>,
        V: FnOnce(S, watch::Receiver<bool>) -> VF + Send + 'static,
        VF: std::future::Future<Output = ()>,
    {
        let (stop, stopping) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let deadline = Instant::now() + DEADLINE;
                let server = loop {
                    match bind().await {
                        Ok(server) => break server,
                        Err(e) if Instant::now() >= deadline => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                };
                let _ = ready_tx.send(Ok(local_addr(&server)));
                serve(server, stopping).await;
            });
        });
        let addr = match ready_rx.recv_timeout(DEADLINE + Duration::from_secs(5)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("{what} could not start: {e}"),
            Err(e) => panic!("{what} did not start: {e}"),
        };
        (
            addr,
            ServerThread {
                stop,
                thread: Some(thread),
            },
        )
    }

    /// Stops the server and waits until its thread has ended (its sockets are closed).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A key manager (real server, open registration) on a thread of this process, which a
/// test can stop and start again at the same address from the same data directory.
pub struct KeymgrServer {
    pub addr: std::net::SocketAddr,
    pub fingerprint: String,
    data_dir: PathBuf,
    running: Option<ServerThread>,
    _dir: TempDir,
}

impl KeymgrServer {
    /// A new key manager (the checked-in manager key) on an ephemeral loopback port.
    pub fn on_loopback() -> KeymgrServer {
        let dir = TempDir::new("keymgr");
        let pem = std::fs::read_to_string(testdata_key("keymgr")).unwrap();
        let data_dir = dir.0.join("keymgr");
        let fingerprint = sockmsg_keymgr::datadir::init_with_key(&data_dir, &pem).unwrap();
        let (addr, running) = Self::serve(data_dir.clone(), "127.0.0.1:0".parse().unwrap());
        KeymgrServer {
            addr,
            fingerprint,
            data_dir,
            running: Some(running),
            _dir: dir,
        }
    }

    fn serve(
        data_dir: PathBuf,
        listen: std::net::SocketAddr,
    ) -> (std::net::SocketAddr, ServerThread) {
        ServerThread::spawn(
            "key manager",
            move || {
                let config = sockmsg_keymgr::server::ServeConfig::new(
                    data_dir.clone(),
                    listen,
                    RegistrationMode::Open,
                );
                async move {
                    sockmsg_keymgr::server::Server::bind(config)
                        .await
                        .map_err(|e| format!("{e:#}"))
                }
            },
            sockmsg_keymgr::server::Server::local_addr,
            |server, mut stopping| async move {
                let _ = server
                    .run(async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await;
            },
        )
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the server; its sockets are closed and its database released on return.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }

    /// Starts it again at the same address, from the same data directory (same key, same
    /// registrations).
    pub fn start(&mut self) {
        assert!(self.running.is_none(), "the key manager is running");
        let (addr, running) = Self::serve(self.data_dir.clone(), self.addr);
        assert_eq!(
            addr, self.addr,
            "the key manager came back at another address"
        );
        self.running = Some(running);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }
}

/// A proxy (real server) on a thread of this process, which a test can stop and start
/// again at the same UDP/TCP address, each time with empty state (the proxy keeps only
/// soft state: a restarted proxy knows no group).
pub struct ProxyServer {
    pub addr: std::net::SocketAddr,
    keymgr: std::net::SocketAddr,
    keymgr_fingerprint: String,
    running: Option<ServerThread>,
}

impl ProxyServer {
    /// A new proxy at `listen` (port 0: an ephemeral one) that checks keys with the key
    /// manager at `keymgr`, pinned to `keymgr_fingerprint`.
    pub fn start_new(
        listen: std::net::SocketAddr,
        keymgr: std::net::SocketAddr,
        keymgr_fingerprint: &str,
    ) -> ProxyServer {
        let (addr, running) = Self::serve(listen, keymgr, keymgr_fingerprint.to_owned());
        ProxyServer {
            addr,
            keymgr,
            keymgr_fingerprint: keymgr_fingerprint.to_owned(),
            running: Some(running),
        }
    }

    fn serve(
        listen: std::net::SocketAddr,
        keymgr: std::net::SocketAddr,
        fingerprint: String,
    ) -> (std::net::SocketAddr, ServerThread) {
        ServerThread::spawn(
            "proxy",
            move || {
                let config = sockmsg_proxy::server::ServeConfig::new(
                    listen,
                    keymgr,
                    Trust::Pinned(fingerprint.clone()),
                );
                async move {
                    sockmsg_proxy::server::Server::bind(config)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
            sockmsg_proxy::server::Server::local_addr,
            |server, mut stopping| async move {
                let _ = server
                    .run(async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await;
            },
        )
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the proxy; its sockets are closed and its records gone on return.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }

    /// Starts a fresh proxy (no records) at the same address.
    pub fn start(&mut self) {
        assert!(self.running.is_none(), "the proxy is running");
        let (addr, running) = Self::serve(self.addr, self.keymgr, self.keymgr_fingerprint.clone());
        assert_eq!(addr, self.addr, "the proxy came back at another address");
        self.running = Some(running);
    }

    /// [`stop`](ProxyServer::stop), then [`start`](ProxyServer::start).
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }
}

/// Like [`Services`] on loopback, but each server can be stopped and started again on
/// its own: the proxy with empty state, the key manager from its data directory, both at
/// their first addresses.
pub struct RestartableServices {
    // The proxy first: dropped (stopped) before the key manager it talks to.
    pub proxy: ProxyServer,
    pub keymgr: KeymgrServer,
}

impl RestartableServices {
    pub fn on_loopback() -> RestartableServices {
        let keymgr = KeymgrServer::on_loopback();
        let proxy = ProxyServer::start_new(
            "127.0.0.1:0".parse().unwrap(),
            keymgr.addr,
            &keymgr.fingerprint,
        );
        RestartableServices { proxy, keymgr }
    }

    /// The flags that point a node at these services (and bind it to any loopback port).
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--proxy".into(),
            self.proxy.addr.to_string(),
            "--keymgr".into(),
            self.keymgr.addr.to_string(),
        ]
    }
}

/// What the proxy at `proxy` holds for `group` now: its record, `None` for NO_LEADER, or
/// why it did not answer (within 5 s).
pub fn query_proxy(
    proxy: std::net::SocketAddr,
    group: &str,
) -> Result<Option<sockmsg_proxy::handler::RecordSummary>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let client = sockmsg_node::proxy_client::ProxyClient::new(proxy);
    match runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), client.query(group)).await })
    {
        Ok(Ok(record)) => Ok(record),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// Waits (up to `DEADLINE`) until the proxy at `proxy` holds a record of `group` whose
/// members are exactly `members`; the record, or what it held last.
pub fn wait_for_proxy_record(
    proxy: std::net::SocketAddr,
    group: &str,
    members: &[&str],
) -> Result<sockmsg_proxy::handler::RecordSummary, String> {
    let expected: std::collections::BTreeSet<&str> = members.iter().copied().collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let last = query_proxy(proxy, group);
        if let Ok(Some(record)) = &last {
            let names: std::collections::BTreeSet<&str> =
                record.members.iter().map(String::as_str).collect();
            if names == expected {
                return Ok(record.clone());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the proxy at {proxy} did not hold a record of {group} with members \
                 {expected:?} within {DEADLINE:?}; last: {last:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl NodeProc {
    /// Starts `command` (a `sockmsg-node --json ...` command line the caller built, with
    /// its own environment and working directory) as a node named `name`: stdin and
    /// stdout piped as [`NodeProc::spawn`] does, stderr inherited.
    pub fn from_command(name: &str, mut command: Command) -> NodeProc {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start sockmsg-node");
        let stdout = child.stdout.take().expect("stdout");
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let reader_log = log.clone();
        let who = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SOCKMSG_E2E_TRACE").is_some() {
                    eprintln!("{who}: {line}");
                }
                let value: Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(e) => panic!("{who} printed a line that is not JSON ({e}): {line}"),
                };
                let (lock, cond) = &*reader_log;
                lock.lock().unwrap().events.push(value);
                cond.notify_all();
            }
            let (lock, cond) = &*reader_log;
            lock.lock().unwrap().closed = true;
            cond.notify_all();
        });
        NodeProc {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            log,
        }
    }

    /// The process id, for diagnostics.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A loopback port free (for now) for both TCP and UDP, below the kernel's ephemeral
/// range (32768 and up on Linux), so that no socket bound to port 0 (every node's, in
/// every test binary) can take it before the test uses it; and never handed out twice
/// by this process, so that tests running in parallel do not pick the same one.
pub fn free_fixed_port() -> u16 {
    use rand::RngExt as _;
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port: u16 = rng.random_range(20_000..32_000);
        if taken.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            taken.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// A `/peers` answer (a `peers` event) in one line, for diagnostics: term, leader, and
/// the members, the leader starred.
pub fn peers_line(p: &Value) -> String {
    let members: Vec<String> = p["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    let star = if m["leader"] == true { "*" } else { "" };
                    format!("{star}{}", m["name"].as_str().unwrap_or("?"))
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "term {}, leader {}, {} members [{}]",
        p["term"],
        p["leader"],
        members.len(),
        members.join(", ")
    )
}
