//! `sockmsg-keymgr`: the key manager's command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sockmsg_config::Config;
use sockmsg_keymgr::admission::Limits;
use sockmsg_keymgr::datadir;
use sockmsg_keymgr::registry::RegistrationMode;
use sockmsg_keymgr::server::{self, ServeConfig};
use sockmsg_wire::frame::KeyStatus;

/// The sockmsg key manager: binds node names to RSA keys and serves signed key records.
///
/// Nodes register their name with proof of possession of their key; the manager signs each
/// record once, when it is written, and answers lookups over UDP and TCP. Nodes pin the
/// manager's key fingerprint (`keymgr.fingerprint` in config.yml) or trust it on first use.
///
/// Start with `sockmsg-keymgr init`, then `sockmsg-keymgr serve`.
#[derive(Debug, Parser)]
#[command(name = "sockmsg-keymgr", version, propagate_version = true)]
struct Cli {
    /// Configuration file to read instead of the built-in defaults (config.yml); flags
    /// override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct DataDirArg {
    /// Data directory (manager key, invite secret, key database). Default: keymgr.data_dir
    /// from the config, else $XDG_DATA_HOME/sockmsg/keymgr (~/.local/share/sockmsg/keymgr).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory and the manager's RSA key, and print its fingerprint.
    ///
    /// Refuses to overwrite an existing key. Give the printed fingerprint to every node
    /// (config.yml `keymgr.fingerprint`).
    Init {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// RSA modulus size in bits (2048..=8192). Default: keymgr.key_bits (3072).
        #[arg(long, value_name = "N")]
        bits: Option<usize>,
    },
    /// Serve registrations and lookups over UDP and TCP (same port) until SIGTERM or
    /// Ctrl-C. Log level: RUST_LOG (default info).
    ///
    /// Challenge nonces are single use. Registrations are limited per source address
    /// (keymgr.register_burst, keymgr.register_per_minute) and per key
    /// (keymgr.max_names_per_key); set them in a file given with --config.
    Serve {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// Address to bind, UDP and TCP. Default: keymgr.listen (127.0.0.1:7401). Serving
        /// the LAN is a choice: e.g. 0.0.0.0:7401.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Who may bind a free name: anyone (open) or holders of an invite token (invite).
        /// Default: keymgr.registration.
        #[arg(long, value_enum, value_name = "MODE")]
        registration: Option<Registration>,
    },
    /// Mint a one-time invite token (hex) for registration in invite mode. Works while the
    /// server runs.
    Invite {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// List the registered names: serial, status, issue time and key fingerprint. Needs
    /// the server stopped (the database is locked while it runs).
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Revoke the key bound to NAME (operator revocation, signed by the manager key).
    /// Needs the server stopped (the database is locked while it runs).
    Revoke {
        /// The name whose key to revoke.
        name: String,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Registration {
    /// Anyone may bind a free name (with proof of possession of its key).
    Open,
    /// Binding a free name also needs an invite token (`sockmsg-keymgr invite`).
    Invite,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    sockmsg_service::init_logging(if serving { "info" } else { "warn" });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockmsg-keymgr: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

fn data_dir(arg: &DataDirArg, config: &Config) -> Result<PathBuf> {
    arg.data_dir
        .clone()
        .or_else(|| config.keymgr.data_dir.clone())
        .or_else(datadir::default_data_dir)
        .ok_or_else(|| {
            anyhow!("cannot tell where the data directory is (no HOME): give --data-dir DIR")
        })
}

fn run(cli: Cli) -> Result<()> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Init {
            data_dir: arg,
            bits,
        } => {
            let dir = data_dir(&arg, &config)?;
            let bits = match bits {
                Some(bits) => bits,
                None => usize::try_from(config.keymgr.key_bits)?,
            };
            if dir.join(datadir::MANAGER_KEY_FILE).exists() {
                // init refuses too; say so before promising a key.
                return datadir::init(&dir, bits).map(drop);
            }
            eprintln!("generating a {bits}-bit RSA key for the key manager (this may take a few seconds)...");
            let fingerprint = datadir::init(&dir, bits)?;
            eprintln!("initialised {}", dir.display());
            eprintln!("manager key fingerprint (pin it in every node's config.yml as keymgr.fingerprint):");
            println!("{fingerprint}");
            Ok(())
        }
        Command::Serve {
            data_dir: arg,
            listen,
            registration,
        } => {
            let dir = data_dir(&arg, &config)?;
            let listen = listen.unwrap_or(config.keymgr.listen);
            let registration = match registration {
                Some(Registration::Open) => RegistrationMode::Open,
                Some(Registration::Invite) => RegistrationMode::Invite,
                None => server::registration_mode(config.keymgr.registration),
            };
            let mut serve_config = ServeConfig::new(dir, listen, registration);
            // keymgr.register_burst, register_per_minute, max_names_per_key.
            serve_config.limits = Limits::from_config(&config.keymgr);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(server::serve(
                serve_config,
                sockmsg_service::shutdown_signal(),
            ))
        }
        Command::Invite { data_dir: arg } => {
            let dir = data_dir(&arg, &config)?;
            let token = datadir::mint_invite(&dir)?;
            println!("{}", hex(&token));
            eprintln!(
                "one-time invite: a node registers with it once (serve --registration invite)"
            );
            Ok(())
        }
        Command::List { data_dir: arg } => {
            let dir = data_dir(&arg, &config)?;
            let data = datadir::open(&dir)?;
            let listing = data.list()?;
            println!(
                "{:<32}  {:>6}  {:<7}  {:<20}  FINGERPRINT",
                "NAME", "SERIAL", "STATUS", "ISSUED (UTC)"
            );
            for entry in listing {
                let status = match entry.status {
                    KeyStatus::ACTIVE => "active".to_owned(),
                    KeyStatus::REVOKED => "revoked".to_owned(),
                    other => format!("code {}", other.0),
                };
                println!(
                    "{:<32}  {:>6}  {:<7}  {:<20}  {}",
                    entry.name,
                    entry.serial,
                    status,
                    utc(entry.issued_at_ms),
                    entry.fingerprint
                );
            }
            Ok(())
        }
        Command::Revoke {
            name,
            data_dir: arg,
        } => {
            let dir = data_dir(&arg, &config)?;
            let data = datadir::open(&dir)?;
            let serial = data.revoke(&name)?;
            println!("revoked {name} (record serial {serial})");
            Ok(())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
