//! `transport-bench`: runs every test for every transport, in every thread layout, and
//! prints markdown tables.
//!
//! ```text
//! cargo run --release --manifest-path bench/transport/Cargo.toml -- \
//!     [--messages N] [--round-trips N] [--handshakes N] [--seconds N] \
//!     [--only udp,quinn,sockmsg] [--tests throughput,pingpong,handshake,inmemory,aead] \
//!     [--layout threads,shared,multi] [--runs N] [--rcvbuf BYTES]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use sockmsg_transport_bench::harness::{repeat, Layout, Params, TransportResults};
use sockmsg_transport_bench::{aead, quic, report, session, udp};

const USAGE: &str = "usage: transport-bench [--messages N] [--round-trips N] \
                     [--handshakes N] [--seconds N] [--only udp,quinn,sockmsg] \
                     [--tests throughput,pingpong,handshake,inmemory,aead] \
                     [--layout threads,shared,multi] [--runs N] [--rcvbuf BYTES]";

struct Args {
    params: Params,
    runs: usize,
    layouts: Vec<Layout>,
    only: Vec<String>,
    tests: Vec<String>,
}

fn list(v: String) -> Vec<String> {
    v.split(',').map(str::to_owned).collect()
}

fn parse_args() -> Result<Args, String> {
    let mut params = Params::default();
    let mut layouts = vec![Layout::Threads, Layout::Shared, Layout::Multi];
    let mut only = list("udp,quinn,sockmsg".into());
    let mut tests = list("throughput,pingpong,handshake,inmemory,aead".into());
    let mut runs = 3;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--messages" => params.messages = number(value()?)?,
            "--round-trips" => params.round_trips = number(value()?)?,
            "--handshakes" => params.handshakes = number(value()?)?,
            "--seconds" => params.max_duration = Duration::from_secs(number(value()?)?.max(1)),
            "--only" => only = list(value()?),
            "--runs" => runs = number(value()?)?.clamp(1, 100) as usize,
            "--rcvbuf" => params.rcvbuf = Some(number(value()?)? as usize),
            "--tests" => tests = list(value()?),
            "--layout" => {
                layouts = list(value()?)
                    .iter()
                    .map(|l| Layout::parse(l).ok_or(format!("unknown layout {l}")))
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    params.warmup_messages = params.warmup_messages.min(params.messages / 10);
    Ok(Args {
        params,
        runs,
        layouts,
        only,
        tests,
    })
}

/// Runs the selected tests of every selected transport in one layout.
fn run_layout(args: &Args, p: Params) -> Vec<TransportResults> {
    let transport = |name: &str| args.only.iter().any(|o| o == name);
    let test = |name: &str| args.tests.iter().any(|t| t == name);
    let n = args.runs;
    let mut results = Vec::new();

    if transport("udp") {
        eprintln!("  plain UDP");
        results.push(TransportResults {
            name: "plain UDP (tokio)",
            throughput: test("throughput").then(|| repeat(n, || udp::throughput(p))),
            ping_pong: test("pingpong").then(|| repeat(n, || udp::ping_pong(p))),
            handshake: None,
        });
    }
    if transport("quinn") {
        eprintln!("  quinn");
        match quic::Identity::generate() {
            Ok(id) => results.push(TransportResults {
                name: "quinn 0.11 (1 bidi stream)",
                throughput: test("throughput").then(|| repeat(n, || quic::throughput(p, &id))),
                ping_pong: test("pingpong").then(|| repeat(n, || quic::ping_pong(p, &id))),
                handshake: test("handshake").then(|| repeat(n, || quic::handshake(p, &id))),
            }),
            Err(e) => eprintln!("quinn skipped: no certificate: {e}"),
        }
    }
    if transport("sockmsg") {
        eprintln!("  sockmsg");
        match session::Identities::rsa() {
            Ok(ids) => results.push(TransportResults {
                name: "sockmsg (Ordered)",
                throughput: test("throughput").then(|| repeat(n, || session::throughput(p, &ids))),
                ping_pong: test("pingpong").then(|| repeat(n, || session::ping_pong(p, &ids))),
                handshake: test("handshake").then(|| repeat(n, || session::handshake(p, &ids))),
            }),
            Err(e) => eprintln!("sockmsg skipped: test keys: {e}"),
        }
        if test("inmemory") {
            if let Ok(ids) = session::Identities::rsa() {
                results.push(TransportResults {
                    name: "sockmsg session only (no I/O)",
                    throughput: Some(repeat(n, || session::in_memory(p, &ids))),
                    ping_pong: None,
                    handshake: None,
                });
            }
        }
        if test("handshake") {
            let insecure = session::Identities::insecure();
            results.push(TransportResults {
                name: insecure.label,
                throughput: None,
                ping_pong: None,
                handshake: Some(repeat(n, || session::handshake(p, &insecure))),
            });
        }
    }
    results
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "transport-bench: {} CPUs, 127.0.0.1 only, times in µs, SO_RCVBUF {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.params
            .rcvbuf
            .map_or("system default".to_owned(), |b| format!("{b} B requested"))
    );
    if args.tests.iter().any(|t| t == "aead") {
        println!("{}", aead::compare(Duration::from_millis(300)));
        match aead::rsa_costs(Duration::from_millis(500)) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("RSA timing skipped: {e}"),
        }
    }
    for &layout in &args.layouts {
        let p = Params {
            layout,
            ..args.params
        };
        eprintln!("layout {layout:?}");
        let results = run_layout(&args, p);
        println!("## Layout: {}\n", layout.describe());
        println!("{}", report::render(&p, args.runs, &results));
    }
    ExitCode::SUCCESS
}
