//! `sockmsg-proxy`: the proxy's command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;
use sockmsg_config::Config;
use sockmsg_keymgr::client::Trust;
use sockmsg_proxy::server::{self, ServeConfig};

/// The sockmsg proxy: tells a joining node who leads its group.
///
/// A node asks "who leads group G?" and gets the leader's signed record, or "no leader":
/// then it may claim term 1, and the first valid claim wins. Every record must be signed
/// by its leader's key as registered at the key manager; a new term is accepted only with
/// the signed votes of a majority of the membership the proxy last accepted. Records
/// expire unless the leader re-announces them (proxy.record_ttl_ms), so the proxy keeps
/// nothing on disk and may be restarted at any time.
///
/// UDP and TCP on the same port. Log level: RUST_LOG (default info).
#[derive(Debug, Parser)]
#[command(name = "sockmsg-proxy", version)]
struct Cli {
    /// Configuration file to read instead of the built-in defaults (config.yml); flags
    /// override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to bind, UDP and TCP. Default: proxy.listen (127.0.0.1:7400). Serving the
    /// LAN is a choice: e.g. 0.0.0.0:7400.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// The key manager, which vouches for the leaders' and voters' keys. Default:
    /// keymgr.address (127.0.0.1:7401).
    #[arg(long, value_name = "ADDR")]
    keymgr: Option<SocketAddr>,

    /// The key manager's key fingerprint, as `sockmsg-keymgr init` printed it. Default:
    /// keymgr.fingerprint; if that is unset too, the key seen first is trusted and
    /// remembered in DATA_DIR/known_hosts (as ssh does), and a different key later is
    /// refused.
    #[arg(long, value_name = "FP")]
    keymgr_fingerprint: Option<String>,

    /// Where the known_hosts file lives (trust on first use only). Default:
    /// $XDG_DATA_HOME/sockmsg/proxy (~/.local/share/sockmsg/proxy).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Lifetime (ms) of a record that is not re-announced. Default: proxy.record_ttl_ms
    /// (5000).
    #[arg(long, value_name = "MS")]
    record_ttl_ms: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sockmsg_service::init_logging("info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockmsg-proxy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(path) => Config::load(path).with_context(|| format!("reading {}", path.display())),
        None => Ok(Config::default()),
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = load_config(cli.config.as_deref())?;
    let listen = cli.listen.unwrap_or(config.proxy.listen);
    let keymgr = cli.keymgr.unwrap_or(config.keymgr.address);
    let trust = match cli
        .keymgr_fingerprint
        .or_else(|| config.keymgr.fingerprint.clone())
        .filter(|fp| !fp.trim().is_empty())
    {
        Some(fingerprint) => Trust::Pinned(fingerprint),
        None => {
            let dir = cli
                .data_dir
                .or_else(|| sockmsg_config::default_data_dir("proxy"))
                .ok_or_else(|| {
                    anyhow!(
                        "cannot tell where to keep known_hosts (no HOME): give --data-dir DIR \
                     or --keymgr-fingerprint FP"
                    )
                })?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Trust::TrustOnFirstUse {
                known_hosts: dir.join("known_hosts"),
            }
        }
    };
    let mut serve_config = ServeConfig::new(listen, keymgr, trust);
    serve_config.directory.record_ttl_ms = cli.record_ttl_ms.unwrap_or(config.proxy.record_ttl_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(server::serve(
            serve_config,
            sockmsg_service::shutdown_signal(),
        ))
        .map_err(Into::into)
}
