//! `sockmsg-node --invite` against a key manager in invite mode (a real server on
//! 127.0.0.1, real node processes): without a token the node is refused with an error
//! that says what to do; with one (flag or `node.invite` in a config file) it registers;
//! a used token is refused; a registered node restarts without one. Every wait has a
//! deadline; nothing sleeps.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use common::{install_identity, is, NodeProc, TempDir, DEADLINE};
use sockmsg_keymgr::client::{KeymgrClient, Trust};
use sockmsg_keymgr::registry::RegistrationMode;
use tokio::sync::watch;

/// A key manager in invite mode on a thread of this process, until dropped.
struct InviteManager {
    addr: SocketAddr,
    fingerprint: String,
    dir: std::path::PathBuf,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InviteManager {
    fn start(root: &Path) -> InviteManager {
        let dir = root.join("keymgr");
        let pem = std::fs::read_to_string(common::testdata_key("keymgr")).unwrap();
        let fingerprint = sockmsg_keymgr::datadir::init_with_key(&dir, &pem).unwrap();
        let (stop, mut stopping) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel();
        let serve_dir = dir.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server =
                    sockmsg_keymgr::server::Server::bind(sockmsg_keymgr::server::ServeConfig::new(
                        serve_dir,
                        "127.0.0.1:0".parse().unwrap(),
                        RegistrationMode::Invite,
                    ))
                    .await
                    .unwrap();
                ready_tx.send(server.local_addr()).unwrap();
                let _ = server
                    .run(async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await;
            });
        });
        let addr = ready_rx
            .recv_timeout(DEADLINE)
            .expect("key manager started");
        InviteManager {
            addr,
            fingerprint,
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// A fresh one-time token, hex, as `sockmsg-keymgr invite` prints it.
    fn invite(&self) -> String {
        let token = sockmsg_keymgr::datadir::mint_invite(&self.dir).unwrap();
        token.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The flags pointing a node at this manager (and at a proxy nobody runs: this
    /// test is about registration, which happens before the node asks the proxy).
    fn node_args(&self) -> Vec<String> {
        let proxy = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--keymgr".into(),
            self.addr.to_string(),
            "--proxy".into(),
            proxy.to_string(),
        ]
    }

    /// Whether `name` is registered, asked the way a node would.
    fn registered(&self, name: &str) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client =
                KeymgrClient::new(self.addr, Trust::Pinned(self.fingerprint.clone())).unwrap();
            tokio::time::timeout(DEADLINE, client.lookup(name))
                .await
                .expect("an answer in time")
                .is_ok_and(|record| record.is_active())
        })
    }
}

impl Drop for InviteManager {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `sockmsg-node --json` to its end (it is expected to fail at start), within the
/// deadline; its output.
fn run_to_failure(name: &str, data_dir: &Path, args: &[String]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_sockmsg-node"))
        .args(["--json", "--name", name, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sockmsg-node");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(DEADLINE)
        .expect("the node exits in time")
        .expect("its output")
}

#[test]
fn a_node_registers_with_an_invite_and_is_refused_without_one() {
    let root = TempDir::new("invite");
    let manager = InviteManager::start(&root.0);
    let data = root.0.join("nodes");
    for name in ["alice", "bob", "carol"] {
        install_identity(&data, name);
    }
    let args = manager.node_args();

    // No token: refused, with an error that says what to do, and nothing registered.
    let refused = run_to_failure("alice", &data, &args);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("INVITE_REQUIRED"), "{stderr}");
    assert!(stderr.contains("--invite TOKEN"), "{stderr}");
    assert!(stderr.contains("sockmsg-keymgr invite"), "{stderr}");
    assert!(!manager.registered("alice"));

    // A malformed token is refused before anything is sent, without echoing it.
    let mut bad = args.clone();
    bad.extend(["--invite".into(), "not-hex-at-all".into()]);
    let malformed = run_to_failure("alice", &data, &bad);
    assert!(!malformed.status.success());
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert!(
        stderr.contains("--invite: the invite token must be hexadecimal"),
        "{stderr}"
    );

    // With a token: registered.
    let token = manager.invite();
    let mut with_token = args.clone();
    with_token.extend(["--invite".into(), token.clone()]);
    let mut alice = NodeProc::spawn("alice", &data, &with_token, &[]);
    alice.wait(0, "started", |e| is(e, "started"));
    assert!(manager.registered("alice"));
    assert!(alice.exit().success());

    // The same token again, for another name: refused, saying the token was not taken.
    let used = run_to_failure("bob", &data, &with_token);
    assert!(!used.status.success());
    let stderr = String::from_utf8_lossy(&used.stderr);
    assert!(
        stderr.contains("did not accept the invite token"),
        "{stderr}"
    );
    assert!(!manager.registered("bob"));

    // A fresh token from a config file (node.invite).
    let config = root.0.join("bob.yml");
    std::fs::write(&config, format!("node:\n  invite: {}\n", manager.invite())).unwrap();
    let mut from_config = args.clone();
    from_config.extend(["--config".into(), config.display().to_string()]);
    let mut bob = NodeProc::spawn("bob", &data, &from_config, &[]);
    bob.wait(0, "started", |e| is(e, "started"));
    assert!(manager.registered("bob"));
    assert!(bob.exit().success());

    // A registered node needs no token to start again.
    let mut alice = NodeProc::spawn("alice", &data, &args, &[]);
    alice.wait(0, "started again", |e| is(e, "started"));
    assert!(alice.exit().success());
    assert!(!manager.registered("carol"));
}
