//! `sockmsg-bench`: load tests on real processes, with latency histograms.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sockmsg_tools::bench::flood::Flood;
use sockmsg_tools::bench::rendezvous::{self, Fault, Options as RendezvousOptions};
use sockmsg_tools::bench::{self, report, Cluster, Departure};

/// Measures sockmsg on real processes and real sockets (loopback): election failover,
/// chat latency, and one group again after a fault of the proxy or the key manager,
/// reported as percentiles (with the full histogram kept: .hgrm, SVG).
///
/// It starts a key manager, a proxy and the nodes itself (the binaries next to this one:
/// build them with `cargo build --release -p sockmsg-node -p sockmsg-keymgr -p
/// sockmsg-proxy`, or give --bin-dir), bounds every step, and stops every process it
/// started, also on failure and on Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "sockmsg-bench", version)]
struct Cli {
    /// Where sockmsg-node, sockmsg-keymgr and sockmsg-proxy are. Default: next to this
    /// binary.
    #[arg(long, global = true, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// SIGKILL the leader (a crash).
    Kill,
    /// Send the leader /exit (a planned handover).
    Exit,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FaultArg {
    ProxyRestart,
    ProxyDown,
    KeymgrRestart,
    ColdStart,
    All,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Leader failover: R times take the leader away, time until every survivor reports
    /// the same new leader, restart it, wait until it has rejoined.
    Election {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_t = 100)]
        rounds: u64,
        #[arg(long, value_enum, default_value_t = Mode::Kill)]
        mode: Mode,
        /// Write the percentile distribution (.hgrm, HdrHistogram's format).
        #[arg(long, value_name = "FILE")]
        hgrm: Option<PathBuf>,
        /// Draw it (SVG).
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// One group after a fault of the services: R runs per fault of three nodes that
    /// form group G, the fault, a fourth node starting (or, cold-start, four nodes
    /// starting at once); timed until every node follows
    /// the same leader in a membership of the four and a line from the newcomer reaches
    /// an old member. A run that does not get there within --timeout is reported as
    /// failed (with what each node said), and the next one begins.
    Rendezvous {
        #[arg(long, default_value_t = 100)]
        runs: u64,
        /// proxy-restart: the proxy SIGKILLed and restarted empty at once, the newcomer
        /// started (timed from the kill); proxy-down: the proxy SIGKILLed, the newcomer
        /// started, the proxy back after --down-ms (timed from its return);
        /// keymgr-restart: the key manager SIGKILLed and restarted from its data
        /// directory, the newcomer started (timed from the kill); cold-start: no group
        /// before, all four nodes started at once against a proxy that knows no leader
        /// of the group (timed from their start); all: each in turn.
        #[arg(long, value_enum, default_value_t = FaultArg::All)]
        fault: FaultArg,
        /// How long the proxy stays down (proxy-down).
        #[arg(long, value_name = "MS", default_value_t = 3000)]
        down_ms: u64,
        /// Bound on one run, from its fault until one group that chats.
        #[arg(long, value_name = "S", default_value_t = 30)]
        timeout: u64,
    },
    /// The session layer against plain UDP and quinn, side by side, on loopback: builds
    /// and runs the transport benchmark (bench/transport, its own workspace so that
    /// quinn stays out of the main Cargo.lock); ARGS go to it (e.g. --messages 100000
    /// --layout threads; --help lists them). Prints its markdown tables.
    Transport {
        /// The benchmark's Cargo.toml. Default: bench/transport in this source tree.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Give up (and stop it) after this many seconds.
        #[arg(long, value_name = "S", default_value_t = 3600)]
        timeout: u64,
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// The group simulation's random fault schedules (crashes, restarts, partitions,
    /// loss, duplication; key manager and proxy in the loop): runs seeds FROM..FROM+N on
    /// every core, prints each failing seed (replay one with --seeds 1 --from SEED, or
    /// SOCKMSG_SIM_SEED=SEED in the test suite) and exits non-zero if any failed.
    Sim {
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Run the byzantine schedules instead: a liar (a member, or an outsider) and
        /// its sock puppets send hostile group frames (node/tests/byzantine_sim.rs).
        #[arg(long)]
        byzantine: bool,
    },
    /// Open-loop chat load: RATE lines per second across the nodes for S seconds;
    /// latency from each line's intended send time to each receiver.
    Chat {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, value_name = "MSGS_PER_S", default_value_t = 1000)]
        rate: u64,
        #[arg(long, value_name = "S", default_value_t = 10)]
        duration: u64,
        #[arg(long, value_name = "BYTES", default_value_t = 100)]
        size: usize,
        /// Meanwhile, flood every node from HOSTS loopback addresses (127.0.1.x) with
        /// cookie-bearing INITIALs that make it sign, as an outsider can (0: no flood).
        #[arg(long, value_name = "HOSTS", default_value_t = 0)]
        flood: u8,
        /// Cookies each flooding host asks every node for, per second.
        #[arg(long, value_name = "PER_S", default_value_t = 200)]
        flood_rate: u32,
        #[arg(long, value_name = "FILE")]
        hgrm: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_ctrl_c();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockmsg-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    bench::STOP.store(true, Ordering::Relaxed);
}

fn install_ctrl_c() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// A scratch directory for one run, removed at the end.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {{msg}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// One schedule (byzantine or not); a panic is a failure of the seed.
fn sim_schedule(seed: u64, byzantine: bool) -> Result<(), String> {
    let run = || {
        if byzantine {
            sockmsg_tools::groupsim::byzantine_schedule(seed).map(|_| ())
        } else {
            sockmsg_tools::groupsim::schedule(seed).map(|_| ())
        }
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err("panicked".into()))
}

/// Runs schedules `from..from + seeds` on every core; fails if any schedule did.
fn run_sim(seeds: u64, from: u64, byzantine: bool) -> Result<()> {
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;
    let next = AtomicU64::new(from);
    let end = from.saturating_add(seeds);
    let failures = Mutex::new(Vec::new());
    let progress = bar(seeds, "schedules");
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if bench::STOP.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                if let Err(why) = sim_schedule(seed, byzantine) {
                    let flag = if byzantine { " --byzantine" } else { "" };
                    progress.println(format!(
                        "seed {seed} FAILED: {why}  (replay: sockmsg-bench sim{flag} --seeds 1 --from {seed})"
                    ));
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(seed);
                }
                progress.inc(1);
            });
        }
    });
    progress.finish_and_clear();
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_unstable();
    let ran = next.load(Ordering::Relaxed).min(end) - from;
    println!(
        "{ran} schedules (seeds {from}..{}) in {:.1?}: {} failed{}",
        from + ran,
        started.elapsed(),
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(": {failures:?}")
        }
    );
    if bench::STOP.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted");
    }
    if !failures.is_empty() {
        anyhow::bail!("{} schedule(s) violated an invariant", failures.len());
    }
    Ok(())
}

/// Builds and runs bench/transport with `args`, bounded by `timeout`.
fn run_transport(manifest: Option<PathBuf>, timeout: Duration, args: &[String]) -> Result<()> {
    let manifest = manifest.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/transport/Cargo.toml")
    });
    if !manifest.exists() {
        anyhow::bail!(
            "{} not found: run from the source tree, or give --manifest",
            manifest.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building and running {} (release)…", manifest.display());
    let mut child = std::process::Command::new(cargo)
        .args(["run", "--quiet", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--")
        .args(args)
        .spawn()
        .context("start cargo")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                anyhow::bail!("the transport benchmark failed ({status})");
            }
            return Ok(());
        }
        if bench::STOP.load(Ordering::Relaxed) || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("stopped (interrupted or past --timeout)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sim {
            seeds,
            from,
            byzantine,
        } => return run_sim(seeds, from, byzantine),
        Command::Transport {
            manifest,
            timeout,
            ref args,
        } => return run_transport(manifest, Duration::from_secs(timeout), args),
        _ => {}
    }
    let bins = match cli.bin_dir {
        Some(dir) => dir,
        None => bench::procs::bin_dir()?,
    };
    let work = Work(std::env::temp_dir().join(format!("sockmsg-bench-{}", std::process::id())));
    std::fs::create_dir_all(&work.0).context("scratch directory")?;
    match cli.command {
        Command::Election {
            nodes,
            rounds,
            mode,
            hgrm,
            svg,
        } => {
            eprintln!("starting a key manager, a proxy and {nodes} nodes…");
            let mut cluster = Cluster::start(&bins, &work.0, nodes)?;
            let departure = match mode {
                Mode::Kill => Departure::Kill,
                Mode::Exit => Departure::Exit,
            };
            let progress = bar(rounds, "rounds");
            let started = Instant::now();
            let result = bench::election(&mut cluster, rounds, departure, |done| {
                progress.set_position(done)
            });
            progress.finish_and_clear();
            let report = result?;
            let title = format!(
                "failover after leader {} ({nodes} nodes, {:?})",
                match departure {
                    Departure::Kill => "SIGKILL",
                    Departure::Exit => "/exit",
                },
                started.elapsed()
            );
            print!("{}", report::summary(&title, &report.failover));
            println!(
                "elections needing more than one round (split votes): {} of {}",
                report.extra_rounds,
                report.failover.len()
            );
            write_outputs(&report.failover, &title, hgrm, svg)
        }
        Command::Chat {
            nodes,
            rate,
            duration,
            size,
            flood,
            flood_rate,
            hgrm,
            svg,
        } => {
            eprintln!("starting a key manager, a proxy and {nodes} nodes…");
            let mut cluster = Cluster::start(&bins, &work.0, nodes)?;
            let flooding = if flood > 0 {
                let started: Vec<(SocketAddr, String)> = cluster
                    .nodes
                    .iter()
                    .filter_map(|node| node.started())
                    .collect();
                let targets: Vec<SocketAddr> = started.iter().map(|(addr, _)| *addr).collect();
                let group = started.first().map(|(_, g)| g.clone()).unwrap_or_default();
                let claimed = cluster.nodes[0].name.clone();
                let limit = Duration::from_secs(duration + 2);
                Some(Flood::start(
                    flood, flood_rate, &targets, &group, &claimed, limit,
                )?)
            } else {
                None
            };
            let total = rate * duration;
            let progress = bar(total, "lines");
            let result = bench::chat(
                &mut cluster,
                rate,
                Duration::from_secs(duration),
                size,
                |done| progress.set_position(done),
            );
            progress.finish_and_clear();
            let flooded = flooding.map(Flood::stop);
            let report = result?;
            let mut title = format!(
                "chat latency, {rate} lines/s of {size} B across {nodes} nodes for {duration} s"
            );
            if let Some(stats) = flooded {
                title.push_str(&format!(
                    ", flooded from {flood} hosts at {flood_rate} cookies/s per node each"
                ));
                println!(
                    "flood: {} cookie requests, {} cookie-bearing INITIALs, {} signed responses",
                    stats.asked, stats.cookies_returned, stats.responses
                );
            }
            print!("{}", report::summary(&title, &report.latency));
            println!(
                "sent {} lines; delivered {} of {} (line, receiver) pairs; lost {}",
                report.sent,
                report.delivered,
                report.expected,
                report.expected.saturating_sub(report.delivered)
            );
            write_outputs(&report.latency, &title, hgrm, svg)
        }
        Command::Rendezvous {
            runs,
            fault,
            down_ms,
            timeout,
        } => {
            let faults = match fault {
                FaultArg::ProxyRestart => vec![Fault::ProxyRestart],
                FaultArg::ProxyDown => vec![Fault::ProxyDown],
                FaultArg::KeymgrRestart => vec![Fault::KeymgrRestart],
                FaultArg::ColdStart => vec![Fault::ColdStart],
                FaultArg::All => Fault::ALL.to_vec(),
            };
            let options = RendezvousOptions {
                runs,
                faults,
                down: Duration::from_millis(down_ms),
                timeout: Duration::from_secs(timeout),
            };
            eprintln!("starting a key manager and a proxy; 4 nodes per run…");
            let mut cluster = Cluster::services_only(&bins, &work.0)?;
            let progress = bar(runs * options.faults.len() as u64, "runs");
            let started = Instant::now();
            let result = rendezvous::rendezvous(&mut cluster, &options, |fault, run, outcome| {
                let line = match outcome {
                    Ok(line) => line,
                    Err(line) => {
                        // Shown as it happens, whether or not the bar is (a terminal).
                        progress.suspend(|| eprintln!("{} run {run}: {line}", fault.name()));
                        line
                    }
                };
                progress.set_message(format!("{} run {run}: {line}", fault.name()));
                progress.inc(1);
            });
            progress.finish_and_clear();
            let reports = result?;
            println!(
                "rendezvous: {runs} run(s) of each of {} (3 nodes form a group, the fault, a \
                 4th node starts; cold-start: 4 nodes start at once), {:.1?} in all",
                options
                    .faults
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                started.elapsed()
            );
            for report in &reports {
                print!("{}", report.text());
            }
            Ok(())
        }
        Command::Sim { .. } | Command::Transport { .. } => Ok(()),
    }
}

fn write_outputs(
    h: &hdrhistogram::Histogram<u64>,
    title: &str,
    hgrm: Option<PathBuf>,
    svg: Option<PathBuf>,
) -> Result<()> {
    if let Some(path) = hgrm {
        std::fs::write(&path, report::hgrm(h))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = svg {
        report::svg(&path, title, h)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
