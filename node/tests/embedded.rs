//! The embedded services outlive their host: real `sockmsg-node` processes started as
//! README.md's "Start here" starts them (no `--proxy`, no `--keymgr`), so that the first
//! one runs the key manager and the proxy inside itself (node/src/services.rs), and the
//! others use them. When that first node ends, another local node must take both over
//! from the same data directory (same manager key, same registrations) and say so.
//!
//! - `three_terminals_the_first_exits_and_a_third_joins_the_second`: alice starts (and
//!   hosts the services), bob joins, they chat both ways; alice types `/exit`. Within
//!   15 s bob, still running, says he took the services over; carol starts, and within
//!   15 s bob and carol are one group of two that chats both ways. The key manager's key
//!   never changed: every node's `known_keymgr` names the checked-in manager key, no
//!   node reports a changed key, and the key manager answering now presents that key.
//! - `the_service_host_is_killed_and_another_node_takes_over`: alice, bob and carol form
//!   a group that chats; alice (the host) is SIGKILLed. Within 2 s bob or carol says it
//!   took the services over; dave starts, and within 15 s bob, carol and dave are one
//!   group of three, dave's line reaches both, and each of them reaches dave.
//!
//! Each test has its own HOME (a temp dir; HOME and the XDG_* variables of the node
//! processes point into it, so the default data directories of the nodes and of the
//! embedded key manager are there) and its own config file (`--config`) whose key
//! manager and proxy `listen` and `address` are 127.0.0.1 on ports chosen by the test
//! (below the ephemeral range: no collision with other tests or with 7400/7401), and
//! `node.bind` 127.0.0.1:0. The key manager's data directory is made in advance with the
//! checked-in manager key (`testdata/keys/keymgr.pem`) and the nodes get the checked-in
//! identities, so no process generates an RSA key.
//!
//! Every wait is on JSON events (or a probe of the services), with a deadline. A failure
//! reports every node's view (running, leader, members), its answer to `/peers`, all its
//! notices, the proxy's record, what answers at the key manager's address and every
//! node's `known_keymgr`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::view::{one_group, View};
use common::{chat_from, install_identity, is, NodeProc, TempDir, DEADLINE};
use serde_json::Value;
use sockmsg_keymgr::client::{ClientConfig, ClientError, KeymgrClient, Trust};

/// The group of README's story: the default one.
const GROUP: &str = "lobby";
/// How long the first node may take to start the services (no key is generated: the key
/// manager's data directory is made in advance).
const FIRST_START: Duration = DEADLINE;
/// How long after the host's `/exit` another node must say it took the services over.
const TAKEOVER_AFTER_EXIT: Duration = Duration::from_secs(15);
/// How long after the host's SIGKILL another node must say it took the services over
/// (the survivors watch the key manager every ~300 ms and take over within ~1 s).
const TAKEOVER_AFTER_KILL: Duration = Duration::from_secs(2);
/// How long the nodes have to be one group once a newcomer has started.
const SETTLE: Duration = Duration::from_secs(15);
/// How long one chat line may take once they are one group.
const CHAT: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch (the clock of the events' `ts`).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fingerprint as known-hosts files compare them: no `sha256:`, no colons, lowercase.
fn normalized(fingerprint: &str) -> String {
    let text = fingerprint.trim();
    let text = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("SHA256:"))
        .unwrap_or(text);
    text.chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// One user's machine: a HOME of its own, the config file every node is started with,
/// the key manager's data directory made in advance.
struct Home {
    _tmp: TempDir,
    home: PathBuf,
    /// The environment of every node process: HOME and XDG_*, all inside `home`.
    env: Vec<(&'static str, PathBuf)>,
    config: PathBuf,
    /// `sockmsg_config::default_data_dir("node")` under this HOME.
    node_dir: PathBuf,
    /// `sockmsg_config::default_data_dir("keymgr")` under this HOME.
    keymgr_dir: PathBuf,
    keymgr: SocketAddr,
    proxy: SocketAddr,
    /// The manager key's fingerprint (the checked-in test key).
    fingerprint: String,
}

impl Home {
    fn new(tag: &str, names: &[&str]) -> Home {
        let tmp = TempDir::new(tag);
        let home = tmp.0.join("home");
        let data = home.join(".local/share");
        let runtime = home.join("run");
        let env = vec![
            ("HOME", home.clone()),
            ("XDG_DATA_HOME", data.clone()),
            ("XDG_CONFIG_HOME", home.join(".config")),
            ("XDG_STATE_HOME", home.join(".local/state")),
            ("XDG_CACHE_HOME", home.join(".cache")),
            ("XDG_RUNTIME_DIR", runtime.clone()),
        ];
        for (_, dir) in &env {
            std::fs::create_dir_all(dir).expect("home directories");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        }

        // The embedded key manager's data directory, as `sockmsg-keymgr init` (or the
        // first node) would make it, with the checked-in manager key.
        let keymgr_dir = data.join("sockmsg").join("keymgr");
        let pem = std::fs::read_to_string(common::testdata_key("keymgr")).unwrap();
        let fingerprint = sockmsg_keymgr::datadir::init_with_key(&keymgr_dir, &pem)
            .expect("the key manager's data directory");
        let node_dir = data.join("sockmsg").join("node");
        for name in names {
            install_identity(&node_dir, name);
        }

        let keymgr = SocketAddr::from(([127, 0, 0, 1], common::free_fixed_port()));
        let proxy = SocketAddr::from(([127, 0, 0, 1], common::free_fixed_port()));
        let config = home.join("sockmsg.yml");
        std::fs::write(
            &config,
            format!(
                "# {tag}: the services on ports of this test's own\n\
                 node:\n  bind: 127.0.0.1:0\n\
                 keymgr:\n  listen: {keymgr}\n  address: {keymgr}\n\
                 proxy:\n  listen: {proxy}\n  address: {proxy}\n"
            ),
        )
        .expect("config file");
        Home {
            _tmp: tmp,
            home,
            env,
            config,
            node_dir,
            keymgr_dir,
            keymgr,
            proxy,
            fingerprint,
        }
    }

    /// `sockmsg-node --json --name NAME --config FILE` in this HOME: no --proxy, no
    /// --keymgr, no --data-dir, no --bind.
    fn spawn(&self, name: &str) -> NodeProc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sockmsg-node"));
        command
            .args(["--json", "--name", name, "--config"])
            .arg(&self.config)
            .current_dir(&self.home)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        NodeProc::from_command(name, command)
    }

    /// What answers at the key manager's address now, as a line of diagnostic; `Ok` if
    /// it is a key manager with the expected key.
    fn probe_keymgr(&self) -> Result<String, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let config = ClientConfig {
            udp_timeout: Duration::from_millis(300),
            udp_tries: 1,
            tcp_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        let client =
            KeymgrClient::with_config(self.keymgr, Trust::Pinned(self.fingerprint.clone()), config)
                .map_err(|e| e.to_string())?;
        let answer = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), client.manager_key()).await
        });
        match answer {
            Ok(Ok(key)) => Ok(format!(
                "a key manager with the expected key {} answers at {}",
                key.fingerprint(),
                self.keymgr
            )),
            Ok(Err(e @ (ClientError::Timeout { .. } | ClientError::Io { .. }))) => {
                Err(format!("NOTHING answers at {} ({e})", self.keymgr))
            }
            Ok(Err(e)) => Err(format!(
                "something answers at {}, but not with the expected key: {e}",
                self.keymgr
            )),
            Err(_) => Err(format!("no answer at {} within 5 s", self.keymgr)),
        }
    }

    /// What the proxy holds for the group now, as a line of diagnostic.
    fn proxy_record(&self) -> String {
        match common::query_proxy(self.proxy, GROUP) {
            Ok(Some(r)) => format!(
                "leader {} (term {}), membership version {}, members {:?}",
                r.leader, r.term, r.membership_version, r.members
            ),
            Ok(None) => "no leader".to_owned(),
            Err(e) => format!("NO ANSWER at {}: {e}", self.proxy),
        }
    }

    /// `name`'s known-hosts file for the key manager, if it has one.
    fn known_keymgr(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.node_dir.join(name).join("known_keymgr")).ok()
    }
}

/// A notice about the key manager (the one the first node prints when it starts the
/// services, or says it made a new key).
fn keymgr_notice(e: &Value) -> bool {
    is(e, "notice")
        && e["text"]
            .as_str()
            .is_some_and(|t| t.to_lowercase().contains("key manager"))
}

/// The notice of a node that starts (or had to create) the services.
fn hosting_notice(e: &Value) -> bool {
    keymgr_notice(e)
        && e["text"].as_str().is_some_and(|t| {
            let t = t.to_lowercase();
            t.contains("this process") || t.contains("creating")
        })
}

/// The notice of a node that took over the services of a node that ended: it names the
/// key manager and says that it now runs it ("... in this process", "took over", ...).
fn takeover_notice(e: &Value) -> bool {
    keymgr_notice(e)
        && e["text"].as_str().is_some_and(|t| {
            let t = t.to_lowercase();
            [
                "this process",
                "took over",
                "taken over",
                "takes over",
                "taking over",
                "take over",
                "runs them",
                "now runs",
                "running them",
            ]
            .iter()
            .any(|w| t.contains(w))
        })
}

/// A notice that the key manager's key is not the one trusted before.
fn key_changed_notice(e: &Value) -> bool {
    is(e, "notice")
        && e["text"].as_str().is_some_and(|t| {
            t.contains("HAS CHANGED")
                || t.contains("impersonat")
                || t.contains("not the one trusted before")
        })
}

/// The names of `views`: what one group of them must list, exactly.
fn names_of(views: &[View]) -> BTreeSet<String> {
    views.iter().map(|v| v.name.clone()).collect()
}

/// The node processes of one test, all in one HOME.
struct Cluster {
    home: Home,
    nodes: Vec<NodeProc>,
    began: Instant,
    began_ms: u64,
}

impl Cluster {
    fn new(tag: &str, names: &[&str]) -> Cluster {
        let home = Home::new(tag, names);
        eprintln!(
            "HOME {}: key manager {} (data in {}, key {}), proxy {}, config {}",
            home.home.display(),
            home.keymgr,
            home.keymgr_dir.display(),
            home.fingerprint,
            home.proxy,
            home.config.display()
        );
        Cluster {
            home,
            nodes: Vec::new(),
            began: Instant::now(),
            began_ms: now_ms(),
        }
    }

    fn spawn(&mut self, name: &str) -> usize {
        self.nodes.push(self.home.spawn(name));
        self.nodes.len() - 1
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn marks(&self) -> Vec<usize> {
        self.nodes.iter().map(NodeProc::mark).collect()
    }

    /// Waits for `name`'s `joined`.
    fn joined(&mut self, name: &str) {
        let i = self.index(name);
        if self.nodes[i]
            .wait_for(0, DEADLINE, "joined", |e| is(e, "joined"))
            .is_none()
        {
            self.fail(&format!("{name} did not join within {DEADLINE:?}"));
        }
    }

    /// Waits until `names` follow one leader in a membership of exactly `names`; the
    /// (term, leader), or the nodes' views at `deadline`.
    fn settle(&mut self, names: &[&str], deadline: Instant) -> Result<(u64, String), String> {
        let indices: Vec<usize> = names.iter().map(|n| self.index(n)).collect();
        loop {
            let views: Vec<View> = indices
                .iter()
                .map(|&i| View::of(&mut self.nodes[i]))
                .collect();
            if let Some(agreed) = one_group(&views, &names_of(&views)) {
                return Ok(agreed);
            }
            if Instant::now() >= deadline {
                let lines: Vec<String> = views.iter().map(View::line).collect();
                return Err(lines.join("\n  "));
            }
            // Events arrive on reader threads: look again at the next event of the first
            // node, or after 50 ms.
            let first = &self.nodes[indices[0]];
            first.wait_for(first.mark(), Duration::from_millis(50), "any event", |_| {
                true
            });
        }
    }

    /// [`Cluster::settle`] within `within` of `since`, or the test fails with `what`.
    fn one_group_of(&mut self, names: &[&str], since: Instant, within: Duration, what: &str) {
        match self.settle(names, since + within) {
            Ok((term, leader)) => eprintln!(
                "{what}: one group {names:?} led by {leader} (term {term}) after {:?}",
                since.elapsed()
            ),
            Err(_) => self.fail(&format!(
                "NOT ONE GROUP: {what}: {names:?} do not follow one leader in one membership \
                 of exactly them within {within:?}"
            )),
        }
    }

    /// `from` says a line; waits (up to `CHAT`) until each of `to` receives it.
    fn line(&mut self, from: &str, to: &[&str], text: &str) {
        let f = self.index(from);
        let marks: Vec<(usize, usize)> = to
            .iter()
            .map(|n| {
                let t = self.index(n);
                (t, self.nodes[t].mark())
            })
            .collect();
        let said = Instant::now();
        self.nodes[f].say(text);
        let deadline = said + CHAT;
        for (t, mark) in marks {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.nodes[t]
                .wait_for(mark, left, "the line", chat_from(from, text))
                .is_none()
            {
                let to = self.nodes[t].name.clone();
                self.fail(&format!(
                    "the line {text:?} from {from} did not reach {to} within {CHAT:?}"
                ));
            }
        }
        eprintln!("{from} -> {to:?}: {text:?} in {:?}", said.elapsed());
    }

    /// The notices of every node, with their time into the test.
    fn notices(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let notices: Vec<Value> = node
                .events()
                .into_iter()
                .filter(|e| is(e, "notice"))
                .collect();
            out += &format!(
                "\n  {} (pid {}): {} notice(s)",
                node.name,
                node.pid(),
                notices.len()
            );
            for e in notices {
                let at = e["ts"].as_u64().unwrap_or(0) as i64 - self.began_ms as i64;
                out += &format!("\n    +{at} ms: {}", e["text"]);
            }
        }
        out
    }

    /// Fails the test with `what` and everything that says why: each node's view and
    /// answer to `/peers`, the services, the known-hosts files and all notices.
    fn fail(&mut self, what: &str) -> ! {
        let views: Vec<View> = self.nodes.iter_mut().map(View::of).collect();
        let mut out = format!("{what} ({:?} into the test)\nviews:", self.began.elapsed());
        for v in &views {
            out += &format!("\n  {}", v.line());
        }
        let asked: Vec<Option<usize>> = self
            .nodes
            .iter_mut()
            .zip(&views)
            .map(|(node, view)| {
                view.running.then(|| {
                    let mark = node.mark();
                    node.say("/peers");
                    mark
                })
            })
            .collect();
        out += "\n/peers, as each running node answers it now:";
        for (node, mark) in self.nodes.iter().zip(&asked) {
            let Some(mark) = mark else { continue };
            let text =
                match node.wait_for(*mark, Duration::from_secs(3), "peers", |e| is(e, "peers")) {
                    Some(p) => common::peers_line(&p),
                    None => "(no answer within 3 s)".to_owned(),
                };
            out += &format!("\n  {:>6}: {text}", node.name);
        }
        let keymgr = match self.home.probe_keymgr() {
            Ok(line) | Err(line) => line,
        };
        out += &format!(
            "\nservices now: key manager: {keymgr}\n              proxy {}: record of {GROUP}: {}",
            self.home.proxy,
            self.home.proxy_record()
        );
        out += &format!(
            "\nknown_keymgr files (the manager key is {} at {}):",
            self.home.fingerprint, self.home.keymgr
        );
        for node in &self.nodes {
            let text = self
                .home
                .known_keymgr(&node.name)
                .map(|t| format!("{:?}", t.trim_end()))
                .unwrap_or_else(|| "(none)".to_owned());
            out += &format!("\n  {:>6}: {text}", node.name);
        }
        out += "\nnotices (time since the test began):";
        out += &self.notices();
        panic!("{out}");
    }

    /// Starts `name`, the first node: it must start the key manager (from the data
    /// directory made in advance, with no new key) and the proxy in its own process.
    fn start_host(&mut self, name: &str) {
        let started = Instant::now();
        let i = self.spawn(name);
        let Some(notice) = self.nodes[i].wait_for(0, FIRST_START, "hosting notice", hosting_notice)
        else {
            self.fail(&format!(
                "{name}, the first node, did not say within {FIRST_START:?} that it started the \
                 key manager and the proxy in its process"
            ));
        };
        let text = notice["text"].as_str().unwrap_or_default().to_owned();
        if text.to_lowercase().contains("creating") {
            self.fail(&format!(
                "{name} did not find the key manager's data directory made in advance at {} \
                 (is HOME/XDG_DATA_HOME passed on?), and makes a new manager key: {text:?}",
                self.home.keymgr_dir.display()
            ));
        }
        self.joined(name);
        if let Err(why) = self.home.probe_keymgr() {
            self.fail(&format!(
                "{name} says it hosts the services ({text:?}), but {why}"
            ));
        }
        eprintln!(
            "{name} hosts the services after {:?}: {text:?}",
            started.elapsed()
        );
    }

    /// The takeover notice of `name` among its events from `mark`, if any.
    fn takeover_of(&self, name: &str, mark: usize) -> Option<Value> {
        let node = &self.nodes[self.index(name)];
        node.events().into_iter().skip(mark).find(takeover_notice)
    }

    /// Waits (up to `within` from `since`) until one of `candidates` says it took the
    /// services over after its event `marks[i]`; its name and notice.
    fn await_takeover(
        &mut self,
        candidates: &[&str],
        marks: &[usize],
        since: Instant,
        within: Duration,
    ) -> Option<(String, Value)> {
        let deadline = since + within;
        loop {
            for name in candidates {
                let mark = marks[self.index(name)];
                if let Some(notice) = self.takeover_of(name, mark) {
                    return Some(((*name).to_owned(), notice));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            let first = &self.nodes[self.index(candidates[0])];
            first.wait_for(first.mark(), Duration::from_millis(50), "any event", |_| {
                true
            });
        }
    }

    /// The key manager's key never changed: every node's `known_keymgr` names the
    /// checked-in manager key at the configured address and nothing else, no node
    /// reported a changed key, and the key manager answering now has that key.
    fn same_manager_key(&mut self) {
        let expected = format!(
            "{} {}",
            self.home.keymgr,
            normalized(&self.home.fingerprint)
        );
        let mut wrong = Vec::new();
        for node in &self.nodes {
            match self.home.known_keymgr(&node.name) {
                None => wrong.push(format!("{} has no known_keymgr file", node.name)),
                Some(text) => {
                    let lines: Vec<String> = text
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| match l.split_once(' ') {
                            Some((addr, fp)) => format!("{addr} {}", normalized(fp)),
                            None => l.to_owned(),
                        })
                        .collect();
                    if lines != [expected.clone()] {
                        wrong.push(format!("{}'s known_keymgr says {text:?}", node.name));
                    }
                }
            }
            for e in node.events().iter().filter(|e| key_changed_notice(e)) {
                wrong.push(format!(
                    "{} reported a key manager key change: {}",
                    node.name, e["text"]
                ));
            }
        }
        if let Err(why) = self.home.probe_keymgr() {
            wrong.push(why);
        }
        if !wrong.is_empty() {
            self.fail(&format!(
                "THE KEY MANAGER'S KEY CHANGED (or is not known): expected {expected:?} \
                 everywhere:\n  {}",
                wrong.join("\n  ")
            ));
        }
        eprintln!(
            "every node's known_keymgr names the same key manager key: {expected:?}; the key \
             manager answering has it"
        );
    }
}

/// README's "Start here" with three terminals: the first one (the services' host) exits,
/// the second takes the services over, a third joins the second.
#[test]
fn three_terminals_the_first_exits_and_a_third_joins_the_second() {
    let mut c = Cluster::new("embedded-exit", &["alice", "bob", "carol"]);

    // Terminal 1: alice starts the services in her process and founds the group.
    c.start_host("alice");
    // Terminal 2: bob finds them and joins; they chat both ways.
    c.spawn("bob");
    c.joined("bob");
    c.one_group_of(
        &["alice", "bob"],
        Instant::now(),
        DEADLINE,
        "bob joined alice",
    );
    let bob = c.index("bob");
    if let Some(own) = c.nodes[bob].events().iter().find(|e| {
        keymgr_notice(e)
            && e["text"]
                .as_str()
                .is_some_and(|t| t.contains("started a key manager"))
    }) {
        let own = own["text"].clone();
        c.fail(&format!(
            "bob started services of his own instead of using alice's: {own}"
        ));
    }
    c.line("alice", &["bob"], "hello bob");
    c.line("bob", &["alice"], "hello alice");

    // Terminal 1 types /exit: alice's process ends, and her services with it.
    let marks = c.marks();
    let alice = c.index("alice");
    let status = c.nodes[alice].exit();
    let exited = Instant::now();
    if !status.success() {
        c.fail(&format!("alice's /exit ended her process with {status}"));
    }
    if !c.nodes[alice].events().iter().any(|e| is(e, "left")) {
        c.fail("alice's /exit: no `left` event");
    }
    eprintln!("alice typed /exit; her process ended ({status})");

    // Bob keeps running and takes the services over.
    match c.await_takeover(&["bob"], &marks, exited, TAKEOVER_AFTER_EXIT) {
        Some((_, notice)) => eprintln!(
            "bob took the services over {:?} after alice's exit: {}",
            exited.elapsed(),
            notice["text"]
        ),
        None => {
            let state = if c.nodes[bob].running() {
                "bob is still running"
            } else {
                "BOB'S PROCESS ENDED"
            };
            c.fail(&format!(
                "NO TAKEOVER: within {TAKEOVER_AFTER_EXIT:?} of alice's exit (she ran the key \
                 manager and the proxy), bob printed no notice that he took them over \
                 ({state}; a notice naming the key manager and \"this process\", \"took \
                 over\", \"runs them\" or the like)"
            ));
        }
    }
    if !c.nodes[bob].running() {
        c.fail("bob's process ended after taking the services over");
    }
    if let Err(why) = c.home.probe_keymgr() {
        c.fail(&format!("bob says he took the services over, but {why}"));
    }

    // Terminal 3: carol joins bob.
    let carol_from = now_ms();
    c.spawn("carol");
    let carol_started = Instant::now();
    c.joined("carol");
    c.one_group_of(
        &["bob", "carol"],
        carol_started,
        SETTLE,
        "carol started after the takeover",
    );
    c.line("bob", &["carol"], "hello carol");
    c.line("carol", &["bob"], "hello bob, from carol");
    if c.settle(&["bob", "carol"], Instant::now()).is_err() {
        c.fail("bob and carol came apart after chatting");
    }
    let carol = c.index("carol");
    let founded: Vec<String> = c.nodes[carol]
        .events()
        .iter()
        .filter(|e| is(e, "leader") && e["leader"] == "carol")
        .map(|e| format!("term {}", e["term"]))
        .collect();
    eprintln!(
        "carol led a group of her own {} time(s) before the merge {founded:?} (transient: \
         fine); {:?} from her start to one group",
        founded.len(),
        Duration::from_millis(now_ms().saturating_sub(carol_from))
    );

    c.same_manager_key();
    eprintln!("whole test: {:?}", c.began.elapsed());
}

/// The services' host is SIGKILLed (no goodbye): a survivor takes them over within 2 s,
/// and a newcomer joins the survivors and chats with them.
#[test]
fn the_service_host_is_killed_and_another_node_takes_over() {
    let mut c = Cluster::new("embedded-kill", &["alice", "bob", "carol", "dave"]);
    c.start_host("alice");
    for name in ["bob", "carol"] {
        c.spawn(name);
        c.joined(name);
    }
    c.one_group_of(
        &["alice", "bob", "carol"],
        Instant::now(),
        DEADLINE,
        "alice, bob and carol",
    );
    c.line("alice", &["bob", "carol"], "hello from alice");
    c.line("bob", &["alice", "carol"], "hello from bob");
    c.line("carol", &["alice", "bob"], "hello from carol");

    let marks = c.marks();
    let alice = c.index("alice");
    c.nodes[alice].kill();
    let killed = Instant::now();
    eprintln!("alice (the services' host) SIGKILLed");

    // Wait longer than the bound, to tell a late takeover from none.
    let (taker, notice) =
        match c.await_takeover(&["bob", "carol"], &marks, killed, TAKEOVER_AFTER_EXIT) {
            Some(found) => found,
            None => {
                let running: Vec<String> = ["bob", "carol"]
                    .iter()
                    .map(|n| {
                        let i = c.index(n);
                        let state = if c.nodes[i].running() {
                            "running"
                        } else {
                            "EXITED"
                        };
                        format!("{n} {state}")
                    })
                    .collect();
                c.fail(&format!(
                    "NO TAKEOVER: within {TAKEOVER_AFTER_EXIT:?} of alice's SIGKILL (she ran the \
                 key manager and the proxy), neither bob nor carol printed a notice that it \
                 took them over ({}; a notice naming the key manager and \"this process\", \
                 \"took over\", \"runs them\" or the like)",
                    running.join(", ")
                ));
            }
        };
    let took = killed.elapsed();
    eprintln!(
        "{taker} took the services over {took:?} after alice's SIGKILL: {}",
        notice["text"]
    );
    if took > TAKEOVER_AFTER_KILL {
        c.fail(&format!(
            "TAKEOVER TOO LATE: {taker} took the services over {took:?} after alice's SIGKILL, \
             more than {TAKEOVER_AFTER_KILL:?}"
        ));
    }
    for name in ["bob", "carol"] {
        let i = c.index(name);
        if !c.nodes[i].running() {
            c.fail(&format!("{name}'s process ended after alice's SIGKILL"));
        }
    }
    let other = if taker == "bob" { "carol" } else { "bob" };
    if let Some(second) = c.takeover_of(other, marks[c.index(other)]) {
        eprintln!(
            "note: {other} also printed a takeover notice: {}",
            second["text"]
        );
    }

    // A newcomer joins the survivors and chats with them.
    c.spawn("dave");
    let dave_started = Instant::now();
    c.joined("dave");
    c.one_group_of(
        &["bob", "carol", "dave"],
        dave_started,
        SETTLE,
        "dave started after the takeover",
    );
    c.line("dave", &["bob", "carol"], "hello from dave");
    c.line("bob", &["dave"], "hello dave, from bob");
    c.line("carol", &["dave"], "hello dave, from carol");
    if c.settle(&["bob", "carol", "dave"], Instant::now()).is_err() {
        c.fail("bob, carol and dave came apart after chatting");
    }

    c.same_manager_key();
    eprintln!("whole test: {:?}", c.began.elapsed());
}
