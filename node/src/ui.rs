//! What the person (or the script) sees and types: the line editor with its commands, or
//! the JSON line protocol; both print every [`NodeEvent`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{json, Value};
use sockmsg_node::driver::{Command, NodeEvent, PeersReport};
use sockmsg_node::group::GroupEvent;
use sockmsg_node::keys::KeyNews;
use tokio::sync::{mpsc, oneshot};

const HELP: &str = "\
Commands:
  TEXT              send a line to every member
  /msg NAME TEXT    send a line to NAME alone
  /peers            members: address, rank, round-trip time, who leads
  /leader           who leads, in which term
  /whois NAME       NAME's key fingerprint, as the key manager signed it
  /help             this text
  /exit             leave the group (a leader hands over first) and quit ($exit works too)";

/// One parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Chat(String),
    Direct(String, String),
    Peers,
    Leader,
    Whois(String),
    Help,
    Exit,
    Empty,
    Bad(String),
}

fn parse(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Input::Empty;
    }
    if !line.starts_with('/') && line.trim() != "$exit" {
        return Input::Chat(line.to_owned());
    }
    let mut words = line.trim().splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("/exit" | "/quit" | "$exit"), None, _) => Input::Exit,
        (Some("/help"), ..) => Input::Help,
        (Some("/peers"), None, _) => Input::Peers,
        (Some("/leader"), None, _) => Input::Leader,
        (Some("/whois"), Some(name), None) => Input::Whois(name.to_owned()),
        (Some("/msg"), Some(name), Some(text)) if !text.trim().is_empty() => {
            Input::Direct(name.to_owned(), text.to_owned())
        }
        (Some("/msg"), ..) => Input::Bad("usage: /msg NAME TEXT".into()),
        (Some("/whois"), ..) => Input::Bad("usage: /whois NAME".into()),
        (Some(other), ..) => Input::Bad(format!("unknown command {other}: try /help")),
        (None, ..) => Input::Empty,
    }
}

/// Prints one line above the line editor's prompt.
type ExternalPrint = Box<dyn FnMut(String) + Send>;

/// Prints events and notices, as text above the prompt or as JSON lines.
#[derive(Clone)]
pub struct Printer {
    json: bool,
    /// Where text goes while the line editor owns the terminal.
    external: Arc<Mutex<Option<ExternalPrint>>>,
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        Printer {
            json,
            external: Arc::new(Mutex::new(None)),
        }
    }

    fn text(&self, line: String) {
        let mut external = self.external.lock().unwrap_or_else(|e| e.into_inner());
        match external.as_mut() {
            Some(print) => print(line),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    fn json(&self, mut value: Value) {
        if let Value::Object(map) = &mut value {
            map.insert("ts".into(), json!(now_ms()));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    pub fn notice(&self, text: &str) {
        if self.json {
            self.json(json!({"event": "notice", "text": text}));
        } else {
            self.text(format!("-- {text}"));
        }
    }

    fn event(&self, event: &NodeEvent) {
        if self.json {
            if let Some(value) = event_json(event) {
                self.json(value);
            }
        } else if let Some(text) = event_text(event) {
            self.text(text);
        }
    }

    fn peers(&self, report: &PeersReport, leader_only: bool) {
        if self.json {
            let members: Vec<Value> = report
                .members
                .iter()
                .map(|p| {
                    json!({
                        "name": p.info.name, "addr": p.info.addr.to_string(), "rank": p.info.rank,
                        "leader": p.leader, "me": p.me,
                        "rtt_us": p.rtt.map(|d| d.as_micros() as u64),
                    })
                })
                .collect();
            let refused: serde_json::Map<String, Value> = report
                .refused
                .iter()
                .map(|(rule, n)| ((*rule).to_owned(), json!(n)))
                .collect();
            self.json(json!({
                "event": "peers", "term": report.term, "leader": report.leader,
                "members": members, "rejections": refused,
            }));
            return;
        }
        let leader = report
            .leader
            .as_deref()
            .unwrap_or("(none: election under way)");
        if leader_only {
            self.text(format!("-- leader: {leader} (term {})", report.term));
            return;
        }
        let mut out = format!(
            "-- {} members, term {}, leader {leader}",
            report.members.len(),
            report.term
        );
        for p in &report.members {
            let rtt = match (p.me, p.rtt) {
                (true, _) => "(you)".to_owned(),
                (false, Some(rtt)) => format!("rtt {:.2} ms", rtt.as_secs_f64() * 1000.0),
                (false, None) => "no session yet".to_owned(),
            };
            out += &format!(
                "\n   {} {:<20} {:<22} rank {:>20}  {rtt}",
                if p.leader { "*" } else { " " },
                p.info.name,
                p.info.addr,
                p.info.rank
            );
        }
        if !report.refused.is_empty() {
            let counts: Vec<String> = report
                .refused
                .iter()
                .map(|(rule, n)| format!("{rule} {n}"))
                .collect();
            out += &format!("\n   refused group frames: {}", counts.join(", "));
        }
        self.text(out);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `HH:MM:SS` (UTC) of now.
fn clock() -> String {
    let secs = now_ms() / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

fn event_json(event: &NodeEvent) -> Option<Value> {
    Some(match event {
        NodeEvent::Started {
            name,
            group,
            addr,
            key_fingerprint,
        } => {
            json!({"event": "started", "name": name, "group": group, "addr": addr.to_string(), "fingerprint": key_fingerprint})
        }
        NodeEvent::Group(event) => match event {
            GroupEvent::Joined => json!({"event": "joined"}),
            GroupEvent::MembersChanged { version, members } => json!({
                "event": "members", "version": version,
                "members": members.iter().map(|m| json!({"name": m.name, "addr": m.addr.to_string(), "rank": m.rank})).collect::<Vec<_>>(),
            }),
            GroupEvent::LeaderChanged { term, leader } => {
                json!({"event": "leader", "term": term, "leader": leader})
            }
            GroupEvent::ChatReceived {
                sender,
                incarnation,
                seq,
                direct,
                text,
            } => {
                json!({"event": "chat", "sender": sender, "incarnation": incarnation, "seq": seq, "direct": direct, "text": text})
            }
            GroupEvent::Delivered {
                seq,
                to,
                delivered,
                of,
            } => {
                json!({"event": "delivered", "seq": seq, "to": to, "delivered": delivered, "of": of})
            }
            GroupEvent::Undelivered { seq, to } => {
                json!({"event": "undelivered", "seq": seq, "to": to})
            }
            GroupEvent::PeerUnreachable { name } => {
                json!({"event": "unreachable", "peer": name, "removed": true})
            }
            GroupEvent::Removed => json!({"event": "removed"}),
            GroupEvent::Left => json!({"event": "left"}),
        },
        NodeEvent::Sent {
            seq,
            to,
            recipients,
        } => json!({"event": "sent", "seq": seq, "to": to, "recipients": recipients}),
        NodeEvent::Key { name, news } => match news {
            KeyNews::New { fingerprint } => {
                json!({"event": "key", "name": name, "status": "new", "fingerprint": fingerprint})
            }
            KeyNews::Changed { old, new } => {
                json!({"event": "key", "name": name, "status": "changed", "fingerprint": new, "old": old})
            }
            KeyNews::Revoked => json!({"event": "key", "name": name, "status": "revoked"}),
            KeyNews::Same => return None,
        },
        NodeEvent::Unreachable { peer } => json!({"event": "unreachable", "peer": peer}),
        NodeEvent::Notice(text) => json!({"event": "notice", "text": text}),
        NodeEvent::Stopped => json!({"event": "stopped"}),
    })
}

fn event_text(event: &NodeEvent) -> Option<String> {
    Some(match event {
        NodeEvent::Started {
            name,
            group,
            addr,
            key_fingerprint,
        } => format!(
            "-- you are {name} at {addr}, joining {group} (key {}…); /help for commands",
            &key_fingerprint[..key_fingerprint.len().min(16)]
        ),
        NodeEvent::Group(event) => match event {
            GroupEvent::Joined => "-- you are in the group".into(),
            GroupEvent::MembersChanged { members, .. } => format!(
                "-- members: {}",
                members
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            GroupEvent::LeaderChanged { term, leader } => match leader {
                Some(leader) => format!("-- leader: {leader} (term {term})"),
                None => format!("-- no leader (term {term}): electing…"),
            },
            GroupEvent::ChatReceived {
                sender,
                direct,
                text,
                ..
            } => {
                let direct = if *direct { " (to you)" } else { "" };
                format!("[{}] {sender}{direct}: {text}", clock())
            }
            GroupEvent::Delivered {
                seq,
                to,
                delivered,
                of,
            } => match to {
                None => format!("   #{seq}: nobody else is in the group yet"),
                Some(_) if delivered == of => format!("   #{seq}: delivered to all {of}"),
                Some(_) => format!("   #{seq}: delivered to {delivered} of {of}"),
            },
            GroupEvent::Undelivered { seq, to } => {
                format!("   #{seq}: NOT delivered to {to} (unreachable)")
            }
            GroupEvent::PeerUnreachable { name } => {
                format!("-- {name} has not been heard from: removed from the group")
            }
            GroupEvent::Removed => "-- the leader removed you from the group: rejoining…".into(),
            GroupEvent::Left => "-- you left the group".into(),
        },
        NodeEvent::Sent {
            seq,
            to,
            recipients,
        } => match to {
            Some(to) => format!("   #{seq} → {to}"),
            None => format!("   #{seq} → {recipients} member(s)"),
        },
        NodeEvent::Key { name, news } => match news {
            KeyNews::New { fingerprint } => {
                format!("-- {name}'s key: {fingerprint} (first seen; /whois {name} to show again)")
            }
            KeyNews::Changed { old, new } => format!(
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
                 @  WARNING: {name}'s KEY HAS CHANGED!\n\
                 @  It was {old}\n\
                 @  It is  {new}\n\
                 @  Someone may be impersonating {name}, or {name} made a new key.\n\
                 @  Check the fingerprint with {name} by another channel.\n\
                 @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@"
            ),
            KeyNews::Revoked => format!("-- WARNING: {name}'s key is revoked at the key manager"),
            KeyNews::Same => return None,
        },
        NodeEvent::Unreachable { peer } => format!("-- {peer} is not answering"),
        NodeEvent::Notice(text) => format!("-- {text}"),
        NodeEvent::Stopped => "-- bye".into(),
    })
}

/// Prints every event until the node stops.
pub fn spawn_output(
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    printer: Printer,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            printer.event(&event);
            if event == NodeEvent::Stopped {
                break;
            }
        }
    })
}

/// Carries out one input line. Returns false on exit (or once the node is gone).
fn dispatch(
    input: Input,
    printer: &Printer,
    wait: impl Fn(oneshot::Receiver<PeersReport>) -> Option<PeersReport>,
    wait_whois: impl Fn(oneshot::Receiver<Result<String, String>>) -> Option<Result<String, String>>,
    send: impl Fn(Command) -> bool,
) -> bool {
    match input {
        Input::Empty => true,
        Input::Help => {
            if printer.json {
                printer.json(json!({"event": "help", "text": HELP}));
            } else {
                printer.text(HELP.into());
            }
            true
        }
        Input::Bad(why) => {
            printer.notice(&why);
            true
        }
        Input::Chat(text) => send(Command::Chat(text)),
        Input::Direct(to, text) => send(Command::Direct { to, text }),
        Input::Exit => {
            send(Command::Exit);
            false
        }
        Input::Peers | Input::Leader => {
            let leader_only = input == Input::Leader;
            let (tx, rx) = oneshot::channel();
            if !send(Command::Peers(tx)) {
                return false;
            }
            if let Some(report) = wait(rx) {
                printer.peers(&report, leader_only);
            }
            true
        }
        Input::Whois(name) => {
            let (tx, rx) = oneshot::channel();
            if !send(Command::Whois(name.clone(), tx)) {
                return false;
            }
            match wait_whois(rx) {
                Some(Ok(fingerprint)) if printer.json => printer
                    .json(json!({"event": "whois", "name": name, "fingerprint": fingerprint})),
                Some(Ok(fingerprint)) => printer.text(format!("-- {name}: key {fingerprint}")),
                Some(Err(why)) => {
                    printer.notice(&format!("{why} (asked the key manager; try again)"))
                }
                None => {}
            }
            true
        }
    }
}

/// The input thread: the line editor (with history) at a terminal, else plain lines
/// from stdin (`--json`, scripts). Ctrl-C, Ctrl-D, end of input and /exit leave.
pub fn spawn_input(
    commands: mpsc::Sender<Command>,
    history: PathBuf,
    printer: &Printer,
    terminal: bool,
) -> Result<std::thread::JoinHandle<()>> {
    let printer = printer.clone();
    let mut editor = if terminal {
        let mut editor = rustyline::DefaultEditor::new()?;
        let _ = editor.load_history(&history);
        if let Ok(mut external) = editor.create_external_printer() {
            use rustyline::ExternalPrinter as _;
            *printer.external.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Box::new(move |line: String| {
                    let _ = external.print(format!("{line}\n"));
                }));
        }
        Some(editor)
    } else {
        None
    };
    let handle = std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            let send = |command: Command| commands.blocking_send(command).is_ok();
            let wait = |rx: oneshot::Receiver<PeersReport>| rx.blocking_recv().ok();
            let wait_whois =
                |rx: oneshot::Receiver<Result<String, String>>| rx.blocking_recv().ok();
            loop {
                let line = match editor.as_mut() {
                    Some(editor) => match editor.readline("> ") {
                        Ok(line) => {
                            if !line.trim().is_empty() {
                                let _ = editor.add_history_entry(line.as_str());
                            }
                            line
                        }
                        Err(_) => {
                            // Ctrl-C, Ctrl-D, or the terminal went away.
                            send(Command::Exit);
                            break;
                        }
                    },
                    None => {
                        let mut line = String::new();
                        match std::io::stdin().read_line(&mut line) {
                            Ok(0) | Err(_) => {
                                send(Command::Exit);
                                break;
                            }
                            Ok(_) => line,
                        }
                    }
                };
                if !dispatch(parse(&line), &printer, wait, wait_whois, send) {
                    break;
                }
            }
            if let Some(editor) = editor.as_mut() {
                let _ = editor.save_history(&history);
            }
            *printer.external.lock().unwrap_or_else(|e| e.into_inner()) = None;
        })?;
    // Give the editor a moment to draw its prompt before the first events print.
    std::thread::sleep(Duration::from_millis(10));
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("hello there"), Input::Chat("hello there".into()));
        assert_eq!(parse("  "), Input::Empty);
        assert_eq!(parse("/exit"), Input::Exit);
        assert_eq!(parse("$exit"), Input::Exit);
        assert_eq!(
            parse("/msg bob hi there"),
            Input::Direct("bob".into(), "hi there".into())
        );
        assert!(matches!(parse("/msg bob"), Input::Bad(_)));
        assert_eq!(parse("/whois bob"), Input::Whois("bob".into()));
        assert!(matches!(parse("/frobnicate"), Input::Bad(_)));
        assert_eq!(parse("/peers"), Input::Peers);
        assert_eq!(parse("/leader"), Input::Leader);
        assert_eq!(parse("/help"), Input::Help);
    }
}
