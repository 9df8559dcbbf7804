//! sockmsg-bench runs each subcommand briefly on real processes (the workspace's
//! sockmsg-node, sockmsg-keymgr and sockmsg-proxy binaries) and reports well-formed
//! results; the .hgrm files parse back.

use std::path::PathBuf;
use std::process::Command;

use sockmsg_tools::bench::report::parse_hgrm;

/// target/<profile>, where `cargo test --workspace` put the other packages' binaries.
fn bins() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_sockmsg-bench"))
        .parent()?
        .to_path_buf();
    let all = ["sockmsg-node", "sockmsg-keymgr", "sockmsg-proxy"]
        .iter()
        .all(|b| dir.join(b).exists());
    if all {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: the node, key manager and proxy binaries are not built next to \
             sockmsg-bench (run `cargo test --workspace`, or build them first)"
        );
        None
    }
}

/// Runs `sockmsg-bench ARGS`, asserts that it succeeded, and returns its stdout.
fn run_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sockmsg-bench"))
        .args(args)
        .output()
        .expect("run sockmsg-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sockmsg-bench {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a subcommand that writes `--hgrm`, and checks the file parses back, monotone.
fn bench(args: &[&str], hgrm: &std::path::Path) -> String {
    let hgrm_arg = hgrm.to_str().expect("a UTF-8 temp path");
    let stdout = run_ok(&[args, &["--hgrm", hgrm_arg]].concat());
    let rows = parse_hgrm(&std::fs::read_to_string(hgrm).expect("hgrm written"))
        .expect("the .hgrm parses");
    assert!(!rows.is_empty());
    assert!(
        rows.windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].0 <= w[1].0),
        "monotone"
    );
    stdout
}

#[test]
fn election_and_chat_report_percentiles_and_write_hgrm() {
    let Some(_) = bins() else { return };
    let dir = std::env::temp_dir().join(format!("sockmsg-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let out = bench(
        &["election", "--nodes", "3", "--rounds", "2"],
        &dir.join("election.hgrm"),
    );
    assert!(out.contains("count 2"), "{out}");
    for field in ["min", "p50", "p90", "p99", "p99.9", "max"] {
        assert!(out.contains(field), "{field} in {out}");
    }
    assert!(out.contains("split votes"), "{out}");

    let out = bench(
        &[
            "election", "--nodes", "3", "--rounds", "1", "--mode", "exit",
        ],
        &dir.join("exit.hgrm"),
    );
    assert!(out.contains("/exit") && out.contains("count 1"), "{out}");

    let out = bench(
        &[
            "chat",
            "--nodes",
            "3",
            "--rate",
            "100",
            "--duration",
            "1",
            "--size",
            "64",
        ],
        &dir.join("chat.hgrm"),
    );
    assert!(
        out.contains("count 200"),
        "every line reached both others: {out}"
    );
    assert!(out.contains("lost 0"), "{out}");

    // The same under a pre-authentication flood: the nodes sign for it (their limits
    // allow a burst per source) and still deliver every line.
    let out = bench(
        &[
            "chat",
            "--nodes",
            "3",
            "--rate",
            "100",
            "--duration",
            "1",
            "--flood",
            "2",
        ],
        &dir.join("flood.hgrm"),
    );
    let signed: u64 = out
        .split("cookie-bearing INITIALs, ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the flood's figures in {out}"));
    assert!(signed > 0, "the flood made the nodes sign: {out}");
    assert!(out.contains("count 200") && out.contains("lost 0"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_request_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sockmsg-bench"))
        .args(["election", "--nodes", "1", "--bin-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") || err.contains("at least 2"),
        "{err}"
    );
}

#[test]
fn sim_runs_fault_schedules_and_reports_them() {
    let stdout = run_ok(&["sim", "--seeds", "6", "--from", "100"]);
    assert!(stdout.contains("6 schedules (seeds 100..106)"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
}

#[test]
fn transport_runs_the_session_benchmark_side_by_side() {
    // Builds bench/transport (its own workspace) on first use: minutes on a new machine.
    let stdout = run_ok(&[
        "transport",
        "--timeout",
        "1800",
        "--",
        "--messages",
        "1000",
        "--round-trips",
        "100",
        "--handshakes",
        "2",
        "--runs",
        "1",
        "--layout",
        "shared",
        "--tests",
        "throughput,pingpong",
    ]);
    for transport in ["plain UDP", "quinn", "sockmsg"] {
        assert!(stdout.contains(transport), "{transport} in {stdout}");
    }
    assert!(
        stdout.contains("msgs/s") && stdout.contains("RTT p50"),
        "{stdout}"
    );
}

/// The numbers of a `report::summary` line: count, then min, p50, p90, p99, p99.9, max.
fn summary_numbers(line: &str) -> Vec<f64> {
    let (_, figures) = line
        .split_once(": count ")
        .unwrap_or_else(|| panic!("a summary line: {line}"));
    figures
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect()
}

#[test]
fn rendezvous_times_one_group_after_a_proxy_restart() {
    // Two runs of about 2-4 s each, after an untimed first start of each name.
    let Some(_) = bins() else { return };
    let began = std::time::Instant::now();
    let out = run_ok(&["rendezvous", "--runs", "2", "--fault", "proxy-restart"]);
    let failures: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("proxy-restart: failures: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a failures line in {out}"));
    assert!(
        out.contains(&format!("failures: {failures} of 2 runs")),
        "{out}"
    );
    let chats = out
        .lines()
        .find(|l| {
            l.starts_with("proxy-restart: from the proxy's SIGKILL until one group that chats")
        })
        .unwrap_or_else(|| panic!("the headline in {out}"));
    if failures == 2 {
        assert!(chats.ends_with("no samples"), "{out}");
    } else {
        let numbers = summary_numbers(chats);
        assert_eq!(
            numbers.len(),
            7,
            "count, min, p50, p90, p99, p99.9, max: {chats}"
        );
        assert_eq!(numbers[0] as u64 + failures, 2, "{out}");
        assert!(
            numbers[1..].windows(2).all(|w| w[0] <= w[1]) && numbers[1] > 0.0,
            "monotone, positive: {chats}"
        );
    }
    eprintln!("{out}(the bench took {:?})", began.elapsed());
}
