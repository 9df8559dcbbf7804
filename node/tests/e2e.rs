//! End to end on loopback: a key manager and a proxy (real servers on real sockets, run
//! by this test process), five real `sockmsg-node` processes. Chat reaches everyone; a
//! long line arrives whole; SIGKILL of the leader is followed by one agreed new leader
//! and chat goes on; the killed node restarts and rejoins; `/exit` of a leader hands
//! over. Every wait is on a JSON event, with a deadline.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{chat_from, install_identity, is, NodeProc, Services, TempDir, NAMES};

/// Waits until every node in `nodes` reports the same leader in a term above `after`;
/// returns (term, leader).
fn agreed_leader(nodes: &[&NodeProc], after: u64) -> (u64, String) {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let views: BTreeSet<Option<(u64, Option<String>)>> =
            nodes.iter().map(|n| n.leader()).collect();
        if views.len() == 1 {
            if let Some(Some((term, Some(leader)))) = views.iter().next() {
                if *term > after {
                    return (*term, leader.clone());
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader after term {after}: {views:?}"
        );
        // Events arrive on reader threads; poll the views at a short interval.
        nodes[0].wait_for(
            nodes[0].mark(),
            Duration::from_millis(50),
            "any event",
            |_| true,
        );
    }
}

#[test]
fn five_nodes_chat_survive_a_leader_kill_rejoin_and_hand_over_on_exit() {
    let services = Services::on_loopback();
    let data = TempDir::new("nodes");
    let names = &NAMES[..5];
    for name in names {
        install_identity(&data.0, name);
    }
    let args = services.node_args();
    let mut nodes: Vec<NodeProc> = Vec::new();
    for name in names {
        let node = NodeProc::spawn(name, &data.0, &args, &[]);
        node.wait(0, "joined", |e| is(e, "joined"));
        nodes.push(node);
    }
    // Everyone sees all five and one leader.
    for node in &nodes {
        node.wait(0, "five members", |e| {
            is(e, "members") && e["members"].as_array().is_some_and(|m| m.len() == 5)
        });
    }
    let all: Vec<&NodeProc> = nodes.iter().collect();
    let (term, leader) = agreed_leader(&all, 0);

    // Each node's line reaches the four others, exactly once; receipts come back.
    let marks: Vec<usize> = nodes.iter().map(NodeProc::mark).collect();
    for node in nodes.iter_mut() {
        let text = format!("hello from {}", node.name);
        node.say(&text);
    }
    for (i, node) in nodes.iter().enumerate() {
        for other in names.iter().filter(|n| **n != node.name) {
            node.wait(
                marks[i],
                "a line",
                chat_from(other, &format!("hello from {other}")),
            );
        }
        node.wait(marks[i], "all receipts", |e| {
            is(e, "delivered") && e["delivered"] == 4 && e["of"] == 4
        });
    }
    // A line longer than one session message arrives whole (fragmented on the way).
    let long: String = "0123456789abcdef".repeat(3000);
    let marks: Vec<usize> = nodes.iter().map(NodeProc::mark).collect();
    nodes[1].say(&long);
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != 1) {
        node.wait(marks[i], "the long line", chat_from(names[1], &long));
    }

    // SIGKILL the leader: the others agree on a new one, and chat goes on.
    let l = names.iter().position(|n| *n == leader).unwrap();
    nodes[l].kill();
    let killed_at = Instant::now();
    let survivors: Vec<&NodeProc> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != l)
        .map(|(_, n)| n)
        .collect();
    let (new_term, new_leader) = agreed_leader(&survivors, term);
    assert_ne!(new_leader, leader);
    eprintln!(
        "failover after SIGKILL of {leader}: {new_leader} leads term {new_term} after {:?}",
        killed_at.elapsed()
    );
    let s = (l + 1) % names.len();
    let marks: Vec<usize> = nodes.iter().map(NodeProc::mark).collect();
    nodes[s].say("still here");
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != l && *i != s) {
        node.wait(
            marks[i],
            "chat after failover",
            chat_from(names[s], "still here"),
        );
    }

    // The killed node restarts from its data directory and rejoins.
    nodes[l] = NodeProc::spawn(names[l], &data.0, &args, &[]);
    nodes[l].wait(0, "rejoined", |e| is(e, "joined"));
    let all: Vec<&NodeProc> = nodes.iter().collect();
    let (term_now, leader_now) = agreed_leader(&all, term);
    let marks: Vec<usize> = nodes.iter().map(NodeProc::mark).collect();
    nodes[s].say("welcome back");
    nodes[l].wait(
        marks[l],
        "chat after rejoining",
        chat_from(names[s], "welcome back"),
    );

    // /exit of the leader hands leadership over: the others agree on a successor.
    let l2 = names.iter().position(|n| *n == leader_now).unwrap();
    let exit_at = Instant::now();
    let status = nodes[l2].exit();
    assert!(status.success(), "{} exited with {status}", names[l2]);
    assert!(nodes[l2].events().iter().any(|e| is(e, "left")));
    let rest: Vec<&NodeProc> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != l2)
        .map(|(_, n)| n)
        .collect();
    let (_, successor) = agreed_leader(&rest, term_now);
    assert_ne!(successor, leader_now);
    eprintln!(
        "handover on /exit of {leader_now}: {successor} leads after {:?}",
        exit_at.elapsed()
    );

    // SIGTERM of the new leader: a clean exit too (LEAVE after a handover).
    let l3 = names.iter().position(|n| *n == successor).unwrap();
    let status = nodes[l3].terminate();
    assert!(
        status.success(),
        "{} exited with {status} on SIGTERM",
        names[l3]
    );
    assert!(
        nodes[l3].events().iter().any(|e| is(e, "left")),
        "left on SIGTERM"
    );
    let rest: Vec<&NodeProc> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != l2 && *i != l3)
        .map(|(_, n)| n)
        .collect();
    let (_, third) = agreed_leader(&rest, 0);
    assert!(third != successor && third != leader_now);
    drop(services);
}
