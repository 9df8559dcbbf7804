//! What one node's JSON events say about its group, and whether several nodes are one
//! group: the check of the rendezvous and embedded-services suites.

use std::collections::BTreeSet;

use super::{is, NodeProc};

/// One node's group, as its latest events tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub name: String,
    pub running: bool,
    /// The latest of `joined`, `removed`, `left`.
    pub admission: Option<String>,
    /// The latest `leader` event: term, leader.
    pub leader: Option<(u64, Option<String>)>,
    /// The latest `members` event: version, names.
    pub members: Option<(u64, BTreeSet<String>)>,
}

impl View {
    pub fn of(node: &mut NodeProc) -> View {
        let running = node.running();
        let events = node.events();
        let latest = |kind: &str| events.iter().rev().find(|e| is(e, kind));
        let admission = events
            .iter()
            .rev()
            .find(|e| is(e, "joined") || is(e, "removed") || is(e, "left"))
            .and_then(|e| e["event"].as_str().map(str::to_owned));
        let leader = latest("leader").map(|e| {
            (
                e["term"].as_u64().unwrap_or(0),
                e["leader"].as_str().map(str::to_owned),
            )
        });
        let members = latest("members").map(|e| {
            let names = e["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (e["version"].as_u64().unwrap_or(0), names)
        });
        View {
            name: node.name.clone(),
            running,
            admission,
            leader,
            members,
        }
    }

    /// The view as one line of a diagnostic.
    pub fn line(&self) -> String {
        let leader = match &self.leader {
            Some((term, Some(leader))) => format!("leader {leader} (term {term})"),
            Some((term, None)) => format!("no leader (term {term})"),
            None => "no leader event".to_owned(),
        };
        let members = match &self.members {
            Some((version, names)) => format!(
                "{} members {:?} (version {version})",
                names.len(),
                names.iter().collect::<Vec<_>>()
            ),
            None => "no members event".to_owned(),
        };
        format!(
            "{:>6}: {}{leader}, {members}, last admission event {}",
            self.name,
            if self.running { "" } else { "EXITED, " },
            self.admission.as_deref().unwrap_or("none"),
        )
    }
}

/// The (term, leader) all of `views` follow, if they are one group whose members are
/// exactly `expected`: every node running and joined, the same (term, leader), the
/// leader one of them.
pub fn one_group(views: &[View], expected: &BTreeSet<String>) -> Option<(u64, String)> {
    let first = views.first()?;
    let Some((term, Some(leader))) = &first.leader else {
        return None;
    };
    let agreed = views.iter().all(|v| {
        v.running
            && v.admission.as_deref() == Some("joined")
            && v.leader == first.leader
            && v.members
                .as_ref()
                .is_some_and(|(_, names)| names == expected)
    });
    (agreed && expected.contains(leader)).then(|| (*term, leader.clone()))
}
