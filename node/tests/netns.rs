//! Three hosts on a LAN, made of network namespaces: a bridge in its own namespace and
//! three "hosts", each with one veth on the bridge and an address in 10.199.0.0/24
//! (addresses that exist only inside the namespaces this test creates and removes). The
//! key manager and the proxy serve from host 1 (in this process, on a thread moved into
//! host 1's namespace); a `sockmsg-node` process runs in each host, bound to its own
//! address; they form a group and chat across the bridge.
//!
//! Needs root and iproute2 (`.ci/run` installs it). Where namespaces cannot be made, the
//! test says so and passes without running: it cannot prove anything there.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{chat_from, install_identity, is, NodeProc, Services, TempDir, NAMES};

const HOSTS: usize = 3;

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The namespaces of one run; removed (with their links) on drop.
struct Lan {
    bridge: String,
    hosts: Vec<String>,
}

impl Lan {
    fn host_ip(i: usize) -> String {
        format!("10.199.0.{}", i + 1)
    }

    fn create() -> Result<Lan, String> {
        let tag = std::process::id();
        let mut lan = Lan {
            bridge: format!("smbr{tag}"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lan.bridge])?;
        ip(&["-n", &lan.bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.bridge, "link", "set", "br0", "up"])?;
        for i in 0..HOSTS {
            let host = format!("smh{tag}x{i}");
            ip(&["netns", "add", &host])?;
            lan.hosts.push(host.clone());
            let (inner, outer) = (format!("vh{i}"), format!("vb{i}"));
            ip(&[
                "link",
                "add",
                &inner,
                "netns",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                &outer,
                "netns",
                &lan.bridge,
            ])?;
            ip(&["-n", &lan.bridge, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &lan.bridge, "link", "set", &outer, "up"])?;
            let addr = format!("{}/24", Lan::host_ip(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &host, "link", "set", &inner, "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn three_hosts_on_a_bridge_chat() {
    let lan = match Lan::create() {
        Ok(lan) => lan,
        Err(why) => {
            eprintln!(
                "SKIPPED three_hosts_on_a_bridge_chat: cannot create network namespaces \
                 here ({why}); run as root with iproute2 installed"
            );
            return;
        }
    };
    let keymgr: SocketAddr = format!("{}:7401", Lan::host_ip(0)).parse().unwrap();
    let proxy: SocketAddr = format!("{}:7400", Lan::host_ip(0)).parse().unwrap();
    let services = Services::start(Some(lan.hosts[0].clone()), keymgr, proxy);
    let data = TempDir::new("netns-nodes");
    let mut nodes = Vec::new();
    for (i, host) in lan.hosts.iter().enumerate() {
        install_identity(&data.0, NAMES[i]);
        let args = vec![
            "--bind".to_string(),
            format!("{}:7402", Lan::host_ip(i)),
            "--proxy".into(),
            proxy.to_string(),
            "--keymgr".into(),
            keymgr.to_string(),
        ];
        let wrap = vec![
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            host.clone(),
        ];
        let node = NodeProc::spawn(NAMES[i], &data.0, &args, &wrap);
        node.wait(0, "joined", |e| is(e, "joined"));
        let started = node.wait(0, "started", |e| is(e, "started"));
        assert_eq!(
            started["addr"],
            format!("{}:7402", Lan::host_ip(i)),
            "bound to its host's address"
        );
        nodes.push(node);
    }
    for node in &nodes {
        node.wait(0, "three members", |e| {
            is(e, "members") && e["members"].as_array().is_some_and(|m| m.len() == HOSTS)
        });
    }
    let marks: Vec<usize> = nodes.iter().map(NodeProc::mark).collect();
    for node in nodes.iter_mut() {
        let text = format!("hello across the bridge from {}", node.name);
        node.say(&text);
    }
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in NAMES[..HOSTS].iter().enumerate().filter(|(j, _)| *j != i) {
            let line = node.wait(
                marks[i],
                "a line from another host",
                chat_from(other, &format!("hello across the bridge from {other}")),
            );
            assert_eq!(line["sender"], NAMES[j]);
        }
    }
    // Members know each other by their namespace addresses.
    let members = nodes[2].wait(0, "members", |e| {
        is(e, "members") && e["members"].as_array().is_some_and(|m| m.len() == HOSTS)
    });
    for m in members["members"].as_array().unwrap() {
        assert!(m["addr"].as_str().unwrap().starts_with("10.199.0."), "{m}");
    }
    drop(nodes);
    drop(services);
    drop(lan);
}
