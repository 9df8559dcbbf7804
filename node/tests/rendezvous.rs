//! One group per name, whatever happens to the proxy (or the key manager): real
//! `sockmsg-node` processes on loopback, with a key manager and a proxy run by this test
//! process (`common::RestartableServices`) that the tests stop and start again at the
//! same address.
//!
//! - `proxy_restart_then_a_newcomer_ends_in_one_group`: alice, bob and carol form group
//!   `g` and chat; the proxy restarts with empty state; dave starts at once. Within 15 s
//!   of the proxy's return the four follow one leader in one membership of four, and a
//!   line goes from dave to alice and from alice to dave.
//! - `proxy_down_while_a_node_starts_ends_in_one_group`: the same, but dave starts while
//!   the proxy is down, and the proxy comes back (empty) 10 s later (past the record's
//!   5 s TTL).
//! - `key_manager_restart_keeps_one_group`: the key manager restarts from its data
//!   directory (same key, same registrations) while the proxy keeps running; dave starts
//!   at once.
//! - `four_nodes_started_at_once_against_an_empty_proxy_form_one_group`: no group
//!   before; the four start at the same instant and race to claim `g`.
//!
//! "One group" is read from the nodes' JSON events: every node's latest `leader` event
//! names the same leader in the same term, its latest `members` event lists exactly the
//! four, and its latest `joined`/`removed`/`left` is `joined`. Every wait is on events
//! with a deadline; the only sleep makes the proxy's outage last 10 s.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::view::{one_group, View};
use common::{chat_from, install_identity, is, NodeProc, RestartableServices, TempDir};
use serde_json::Value;

const GROUP: &str = "g";
/// The three that form the group before the fault, and the newcomer.
const FIRST: [&str; 3] = ["alice", "bob", "carol"];
const NEWCOMER: &str = "dave";
/// How long the nodes have to end in one group once the fault is over.
const SETTLE: Duration = Duration::from_secs(15);
/// How long one chat line may take once they are in one group.
const CHAT: Duration = Duration::from_secs(10);
/// How long the proxy stays down in the second scenario.
const OUTAGE: Duration = Duration::from_secs(10);

/// The views as a diagnostic: one line per node, then who follows whom.
fn describe(views: &[View]) -> String {
    let mut out: Vec<String> = views.iter().map(View::line).collect();
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for v in views {
        let key = match &v.leader {
            Some((term, Some(leader))) => format!("{leader} (term {term})"),
            _ => "(no leader)".to_owned(),
        };
        groups.entry(key).or_default().push(&v.name);
    }
    let leaders = groups
        .iter()
        .filter(|(k, _)| k.as_str() != "(no leader)")
        .count();
    let summary: Vec<String> = groups
        .iter()
        .map(|(leader, followers)| format!("{leader} <- {}", followers.join(", ")))
        .collect();
    out.push(format!(
        "{leaders} distinct leader(s) of group {GROUP}: {}",
        summary.join("; ")
    ));
    out.join("\n  ")
}

/// What the proxy at `proxy` holds for group `g` now, as a line of diagnostic.
fn proxy_record(proxy: SocketAddr) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = sockmsg_node::proxy_client::ProxyClient::new(proxy);
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), client.query(GROUP)).await
    });
    match answer {
        Ok(Ok(Some(r))) => format!(
            "leader {} (term {}), membership version {}, members {:?}",
            r.leader, r.term, r.membership_version, r.members
        ),
        Ok(Ok(None)) => "no leader".to_owned(),
        Ok(Err(e)) => format!("no answer: {e}"),
        Err(_) => "no answer within 5 s".to_owned(),
    }
}

/// The node processes of one test, all in group `g`.
struct Cluster {
    nodes: Vec<NodeProc>,
    args: Vec<String>,
    proxy: SocketAddr,
    data: TempDir,
    began: Instant,
}

impl Cluster {
    fn new(services: &RestartableServices) -> Cluster {
        let data = TempDir::new("rendezvous");
        for name in FIRST.iter().chain([&NEWCOMER]) {
            install_identity(&data.0, name);
        }
        let mut args = services.node_args();
        args.extend(["--group".to_owned(), GROUP.to_owned()]);
        Cluster {
            nodes: Vec::new(),
            args,
            proxy: services.proxy.addr,
            data,
            began: Instant::now(),
        }
    }

    fn spawn(&mut self, name: &str) -> usize {
        self.nodes
            .push(NodeProc::spawn(name, &self.data.0, &self.args, &[]));
        self.nodes.len() - 1
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn views(&mut self) -> Vec<View> {
        self.nodes.iter_mut().map(View::of).collect()
    }

    /// Waits until every node follows one leader in a membership of exactly the nodes;
    /// the (term, leader), or the diagnostic at `deadline`.
    fn settle(&mut self, deadline: Instant) -> Result<(u64, String), String> {
        let expected: BTreeSet<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        loop {
            let views = self.views();
            if let Some(agreed) = one_group(&views, &expected) {
                return Ok(agreed);
            }
            if Instant::now() >= deadline {
                return Err(describe(&views));
            }
            // Events arrive on reader threads: look again at the next event of the first
            // node, or after 50 ms.
            let first = &self.nodes[0];
            first.wait_for(first.mark(), Duration::from_millis(50), "any event", |_| {
                true
            });
        }
    }

    /// Fails the test with `what`, the nodes' views, each node's own answer to `/peers`
    /// and its notices since `marks`.
    fn fail(&mut self, what: &str, marks: &[usize]) -> ! {
        let views = self.views();
        let mut out = format!(
            "{what} ({:?} into the test)\n  {}",
            self.began.elapsed(),
            describe(&views)
        );
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
        out += "\n/peers, as each node answers it now:";
        for (node, mark) in self.nodes.iter().zip(&asked) {
            let answer = mark.and_then(|mark| {
                node.wait_for(mark, Duration::from_secs(3), "peers", |e| is(e, "peers"))
            });
            let text = match answer {
                Some(p) => common::peers_line(&p),
                None => "(no answer)".to_owned(),
            };
            out += &format!("\n  {:>6}: {text}", node.name);
        }
        out += &format!(
            "\nthe proxy's record of group {GROUP}: {}",
            proxy_record(self.proxy)
        );
        out += "\nnotices since the fault:";
        for (i, node) in self.nodes.iter().enumerate() {
            let from = marks.get(i).copied().unwrap_or(0);
            for e in node.events().iter().skip(from).filter(|e| is(e, "notice")) {
                out += &format!("\n  {:>6}: {}", node.name, e["text"]);
            }
        }
        panic!("{out}");
    }

    /// `from` says a line; waits (up to `CHAT`) until `to` receives it.
    fn line(&mut self, from: &str, to: &str, marks: &[usize]) -> Duration {
        let (f, t) = (self.index(from), self.index(to));
        let text = format!("{from} to {to} after the fault");
        let mark = self.nodes[t].mark();
        let said = Instant::now();
        self.nodes[f].say(&text);
        if self.nodes[t]
            .wait_for(mark, CHAT, "the line", chat_from(from, &text))
            .is_none()
        {
            let sender: Vec<String> = self.nodes[f]
                .events()
                .iter()
                .rev()
                .take(8)
                .map(Value::to_string)
                .collect();
            self.fail(
                &format!(
                    "a line from {from} did not reach {to} within {CHAT:?} (the latest events \
                     of {from}, newest first:\n    {})",
                    sender.join("\n    ")
                ),
                marks,
            );
        }
        said.elapsed()
    }

    /// Starts `FIRST`, waits for one group of three, and has each say a line that the
    /// two others receive.
    fn form(&mut self) {
        for name in FIRST {
            let i = self.spawn(name);
            self.nodes[i].wait(0, "joined", |e| is(e, "joined"));
        }
        if let Err(views) = self.settle(Instant::now() + common::DEADLINE) {
            panic!(
                "the first three did not form one group within {:?}:\n  {views}",
                common::DEADLINE
            );
        }
        let marks: Vec<usize> = self.nodes.iter().map(NodeProc::mark).collect();
        for node in self.nodes.iter_mut() {
            let text = format!("hello from {}", node.name);
            node.say(&text);
        }
        for (i, node) in self.nodes.iter().enumerate() {
            for other in FIRST.iter().filter(|n| **n != node.name) {
                node.wait(
                    marks[i],
                    "a line before the fault",
                    chat_from(other, &format!("hello from {other}")),
                );
            }
        }
    }

    /// The end of every scenario: one group of four within `SETTLE` of `back`, a line
    /// each way between the newcomer and alice, and still one group after that.
    fn one_group_of_four_that_chats(&mut self, back: Instant, marks: &[usize], fault: &str) {
        let (term, leader) = match self.settle(back + SETTLE) {
            Ok(agreed) => agreed,
            Err(_) => self.fail(
                &format!(
                    "NOT ONE GROUP: {SETTLE:?} after {fault}, the four nodes do not follow one \
                     leader in one membership of four"
                ),
                marks,
            ),
        };
        let settled = back.elapsed();
        let there = self.line(NEWCOMER, "alice", marks);
        let back_again = self.line("alice", NEWCOMER, marks);
        // Still one group after the exchange (not a passing agreement).
        if self.settle(Instant::now()).is_err() {
            self.fail(
                &format!("one group (leader {leader}, term {term}) came apart after the chat"),
                marks,
            );
        }
        eprintln!(
            "after {fault}: one group of 4 led by {leader} (term {term}) after {settled:?}; \
             {NEWCOMER} -> alice in {there:?}, alice -> {NEWCOMER} in {back_again:?}"
        );
    }
}

#[test]
fn proxy_restart_then_a_newcomer_ends_in_one_group() {
    let began = Instant::now();
    let mut services = RestartableServices::on_loopback();
    let mut cluster = Cluster::new(&services);
    cluster.form();

    let marks: Vec<usize> = cluster.nodes.iter().map(NodeProc::mark).collect();
    let stopping = Instant::now();
    services.proxy.restart();
    let back = Instant::now();
    cluster.spawn(NEWCOMER);
    eprintln!(
        "proxy restarted at {} with empty state ({:?} to stop and start); {NEWCOMER} started",
        services.proxy.addr,
        back - stopping
    );
    cluster.one_group_of_four_that_chats(back, &marks, "the proxy's restart");
    eprintln!("whole test: {:?}", began.elapsed());
}

#[test]
fn proxy_down_while_a_node_starts_ends_in_one_group() {
    let began = Instant::now();
    let mut services = RestartableServices::on_loopback();
    let mut cluster = Cluster::new(&services);
    cluster.form();

    let marks: Vec<usize> = cluster.nodes.iter().map(NodeProc::mark).collect();
    services.proxy.stop();
    let down = Instant::now();
    let d = cluster.spawn(NEWCOMER);
    // Registered at the key manager and running, while the proxy is still down.
    cluster.nodes[d].wait(0, "started", |e| is(e, "started"));
    // The fault's timing, not a synchronisation: the proxy stays down for OUTAGE (or
    // until dave has started, if that takes longer).
    std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
    services.proxy.start();
    let back = Instant::now();
    eprintln!(
        "proxy down for {:?} ({NEWCOMER} started meanwhile), back at {} with empty state",
        back - down,
        services.proxy.addr
    );
    cluster.one_group_of_four_that_chats(back, &marks, "the proxy's return");
    eprintln!("whole test: {:?}", began.elapsed());
}

#[test]
fn four_nodes_started_at_once_against_an_empty_proxy_form_one_group() {
    let began = Instant::now();
    let services = RestartableServices::on_loopback();
    let mut cluster = Cluster::new(&services);
    let start = Instant::now();
    for name in FIRST.iter().chain([&NEWCOMER]) {
        cluster.spawn(name);
    }
    cluster.one_group_of_four_that_chats(start, &[], "the four nodes' start");
    eprintln!("whole test: {:?}", began.elapsed());
}

#[test]
fn key_manager_restart_keeps_one_group() {
    let began = Instant::now();
    let mut services = RestartableServices::on_loopback();
    let mut cluster = Cluster::new(&services);
    cluster.form();

    let marks: Vec<usize> = cluster.nodes.iter().map(NodeProc::mark).collect();
    let stopping = Instant::now();
    services.keymgr.restart();
    let back = Instant::now();
    cluster.spawn(NEWCOMER);
    eprintln!(
        "key manager restarted at {} from its data directory ({:?} to stop and start); \
         {NEWCOMER} started",
        services.keymgr.addr,
        back - stopping
    );
    cluster.one_group_of_four_that_chats(back, &marks, "the key manager's restart");
    eprintln!("whole test: {:?}", began.elapsed());
}

impl Cluster {
    /// The cluster of [`Cluster::new`], with the nodes' flags given: for nodes pointed
    /// at other proxies than one `RestartableServices`. `proxy` is the one whose record
    /// a failure reports.
    fn with_args(args: Vec<String>, proxy: SocketAddr) -> Cluster {
        let data = TempDir::new("rendezvous");
        for name in FIRST.iter().chain([&NEWCOMER]) {
            install_identity(&data.0, name);
        }
        Cluster {
            nodes: Vec::new(),
            args,
            proxy,
            data,
            began: Instant::now(),
        }
    }
}

/// Several proxies (SPEC.md §12.8), one of them dead at any time: every node is given
/// two, `second` first, which is dead from the start (started once for a free address,
/// then stopped). alice, bob and carol form one group of three and each line reaches the
/// two others (`first` holds the group's record). `second` comes back with empty state
/// and learns the record of three from the leader's announcements alone (leaders
/// announce to every proxy). Then `first` is killed, and dave, a newcomer, starts: he
/// finds the group through `second`; within 15 s the four follow one leader in one
/// membership of four, a line goes from dave to alice and back, and `second`'s record
/// lists the four. No node ever reports the proxies unreachable (one always answered).
#[test]
fn two_proxies_one_dead_at_a_time_keep_one_group_that_chats() {
    let began = Instant::now();
    let keymgr = common::KeymgrServer::on_loopback();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut first = common::ProxyServer::start_new(any, keymgr.addr, &keymgr.fingerprint);
    let mut second = common::ProxyServer::start_new(any, keymgr.addr, &keymgr.fingerprint);
    second.stop();
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1:0",
        "--proxy",
        &second.addr.to_string(),
        "--proxy",
        &first.addr.to_string(),
        "--keymgr",
        &keymgr.addr.to_string(),
        "--group",
        GROUP,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut cluster = Cluster::with_args(args, first.addr);

    cluster.form();
    let formed = began.elapsed();
    if let Err(why) = common::wait_for_proxy_record(first.addr, GROUP, &FIRST) {
        cluster.fail(&why, &[]);
    }
    eprintln!(
        "alice, bob, carol: one group that chats, with the proxy at {} dead ({formed:?})",
        second.addr
    );

    second.start();
    let restarted = Instant::now();
    if let Err(why) = common::wait_for_proxy_record(second.addr, GROUP, &FIRST) {
        cluster.fail(
            &format!("the restarted proxy never learned the record: {why}"),
            &[],
        );
    }
    eprintln!(
        "the proxy at {} came back empty and holds the group's record after {:?}",
        second.addr,
        restarted.elapsed()
    );

    let marks: Vec<usize> = cluster.nodes.iter().map(NodeProc::mark).collect();
    first.stop();
    cluster.proxy = second.addr;
    let killed = Instant::now();
    cluster.spawn(NEWCOMER);
    eprintln!("the proxy at {} killed; {NEWCOMER} started", first.addr);
    cluster.one_group_of_four_that_chats(killed, &marks, "the first proxy's death");

    let four = [FIRST[0], FIRST[1], FIRST[2], NEWCOMER];
    if let Err(why) = common::wait_for_proxy_record(second.addr, GROUP, &four) {
        cluster.fail(&format!("the surviving proxy's record: {why}"), &marks);
    }
    for node in &cluster.nodes {
        let unreachable: Vec<String> = node
            .events()
            .iter()
            .filter(|e| is(e, "notice"))
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .filter(|text| text.starts_with("proxy:"))
            .collect();
        assert!(
            unreachable.is_empty(),
            "{} reported the proxies unreachable while one answered: {unreachable:?}",
            node.name
        );
    }
    eprintln!("whole test: {:?}", began.elapsed());
}
