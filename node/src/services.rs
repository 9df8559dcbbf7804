//! The key manager and the proxy a node talks to: the configured ones if they answer,
//! else (when the user named none) both started in this process on their configured
//! loopback addresses, so a single machine needs no setup. They outlive the node that
//! started them: when it stops, another local node takes them over (from the same data
//! directory), so the key manager's key and registrations never change.
//!
//! A manager started here is trusted like any other ([`trust`]): its fingerprint goes
//! into the node's known-hosts file, so that whatever answers on that port later (the
//! manager another node started, or an impostor) must have the same key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sockmsg_config::{Config, ProxyConfig};
use sockmsg_keymgr::admission::Limits;
use sockmsg_keymgr::client::{remember_known_host, ClientConfig, ClientError, KeymgrClient, Trust};
use sockmsg_keymgr::server::{
    registration_mode, ServeConfig as KeymgrServe, Server as KeymgrServer,
};
use sockmsg_node::proxy_client::ProxySet;
use sockmsg_proxy::server::{ServeConfig as ProxyServe, Server as ProxyServer};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::cli::Args;
use crate::ui::Printer;

/// Where the services are, and the embedded ones' lifetime: dropping this stops them.
pub struct Services {
    pub keymgr: SocketAddr,
    /// The proxies, in the order they are asked (see [`proxy_addresses`]).
    pub proxies: Vec<SocketAddr>,
    /// Known when the key manager runs in this process.
    pub keymgr_fingerprint: Option<String>,
    /// The servers running in this process: started at once, or taken over later.
    embedded: Arc<Mutex<Option<Embedded>>>,
    /// Watches the services another local node runs, to take them over when it stops.
    watcher: Option<JoinHandle<()>>,
}

/// A key manager and a proxy running in this process.
struct Embedded {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Embedded {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Where the embedded servers listen, and the manager's key.
struct Started {
    embedded: Embedded,
    keymgr_at: SocketAddr,
    proxy_at: SocketAddr,
    fingerprint: String,
}

/// How often a node that does not run the services checks that the node that runs them
/// is still there: a key manager that stops answering is taken over within about this
/// much (plus the start, a few milliseconds with its key already made).
const TAKEOVER_POLL: Duration = Duration::from_millis(300);

/// How the node trusts the key manager of `services`. A fingerprint pinned in the
/// configuration wins (an embedded manager with another key is refused like any other).
/// Otherwise the node's known-hosts file decides (trust on first use); a manager started
/// in this process is recorded there first, and refused if the file already names
/// another key for its address (its data directory was replaced, say).
pub fn trust(services: &Services, pinned: Option<&str>, known_hosts: &Path) -> Result<Trust> {
    if let Some(fingerprint) = pinned {
        return Ok(Trust::Pinned(fingerprint.to_owned()));
    }
    if let Some(fingerprint) = &services.keymgr_fingerprint {
        remember_known_host(known_hosts, services.keymgr, fingerprint)
            .context("the key manager started in this process is not the one trusted before")?;
    }
    Ok(Trust::TrustOnFirstUse {
        known_hosts: known_hosts.to_owned(),
    })
}

/// Finds (or starts) the services. When the node may start them (`embed_allowed`, and
/// the configured addresses are on this machine), it also watches the ones another
/// local node started, and takes them over when that node stops, so that the services
/// outlive the node that started them (see [`Services::watch_host`]).
pub async fn ensure(
    config: &Config,
    args: &Args,
    embed_allowed: bool,
    printer: &Printer,
) -> Result<Services> {
    let keymgr = args.keymgr.unwrap_or(config.keymgr.address);
    let proxies = proxy_addresses(&args.proxy, &config.proxy)?;
    let mut services = Services {
        keymgr,
        proxies,
        keymgr_fingerprint: None,
        embedded: Arc::new(Mutex::new(None)),
        watcher: None,
    };
    let local = keymgr.ip().is_loopback() && services.proxies.iter().all(|p| p.ip().is_loopback());
    if !embed_allowed || !local {
        // Named services, or configured elsewhere: starting our own would split the LAN.
        return Ok(services);
    }
    if !keymgr_answers(keymgr).await {
        if let Some(started) = start_embedded(config, printer).await? {
            printer.notice(&format!(
                "started a key manager ({}, data in {}) and a proxy ({}) in this process; \
                 other nodes on this machine use them, and one of them takes them over when \
                 this node stops",
                started.keymgr_at,
                keymgr_data_dir(config).display(),
                started.proxy_at
            ));
            services.adopt(config, started)?;
        }
    }
    services.watch_host(config, printer);
    Ok(services)
}

/// The key manager's data directory: configured, or the user's default.
fn keymgr_data_dir(config: &Config) -> PathBuf {
    config
        .keymgr
        .data_dir
        .clone()
        .or_else(|| sockmsg_config::default_data_dir("keymgr"))
        .unwrap_or_else(|| PathBuf::from("sockmsg-keymgr"))
}

/// Starts the key manager (making its key first, once) and the proxy in this process, on
/// their configured listen addresses. `None` if another node started a key manager
/// meanwhile (the bind failed, and one answers now).
async fn start_embedded(config: &Config, printer: &Printer) -> Result<Option<Started>> {
    let keymgr = config.keymgr.address;
    let data_dir = keymgr_data_dir(config);
    if !data_dir.join("manager.pem").exists() {
        printer.notice(&format!(
            "no key manager at {keymgr}: creating one in {} (its {}-bit key is made once; this \
             takes a few seconds)…",
            data_dir.display(),
            config.keymgr.key_bits
        ));
        let bits = config.keymgr.key_bits as usize;
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || sockmsg_keymgr::datadir::init(&dir, bits))
            .await
            .context("key manager init")??;
    }
    let mut serve = KeymgrServe::new(
        &data_dir,
        config.keymgr.listen,
        registration_mode(config.keymgr.registration),
    );
    serve.limits = Limits::from_config(&config.keymgr);
    let server = match KeymgrServer::bind(serve).await {
        Ok(server) => server,
        Err(e) => {
            // Another node on this host may have started one just now.
            if keymgr_answers(keymgr).await {
                return Ok(None);
            }
            return Err(e).context("cannot start the embedded key manager");
        }
    };
    let (stop, stop_rx) = watch::channel(false);
    let fingerprint = server.fingerprint().to_owned();
    let keymgr_at = server.local_addr();
    let mut tasks = Vec::new();
    let mut stopped = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = server
            .run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
    }));
    let mut proxy_serve = ProxyServe::new(
        config.proxy.listen,
        keymgr_at,
        Trust::Pinned(fingerprint.clone()),
    );
    proxy_serve.directory.record_ttl_ms = config.proxy.record_ttl_ms;
    let proxy_server = match ProxyServer::bind(proxy_serve).await {
        Ok(server) => server,
        Err(e) => {
            Embedded { stop, tasks }.stop().await;
            return Err(e).context("cannot start the embedded proxy");
        }
    };
    let proxy_at = proxy_server.local_addr();
    let mut stopped = stop_rx;
    tasks.push(tokio::spawn(async move {
        let _ = proxy_server
            .run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
    }));
    Ok(Some(Started {
        embedded: Embedded { stop, tasks },
        keymgr_at,
        proxy_at,
        fingerprint,
    }))
}

/// The proxies a node uses, in the order it asks them: those given with `--proxy`
/// (`flags`) if any; else `proxy.addresses` if not empty; else `proxy.address`. An address
/// given twice counts once; an unspecified address or port, no address or more than
/// [`MAX_PROXIES`](sockmsg_node::proxy_client::MAX_PROXIES) is an error that says where
/// it came from.
pub fn proxy_addresses(flags: &[SocketAddr], config: &ProxyConfig) -> Result<Vec<SocketAddr>> {
    let (list, source) = if !flags.is_empty() {
        (flags, "--proxy")
    } else if !config.addresses.is_empty() {
        (config.addresses.as_slice(), "proxy.addresses")
    } else {
        (std::slice::from_ref(&config.address), "proxy.address")
    };
    for addr in list {
        if addr.ip().is_unspecified() {
            bail!("{source} {addr}: a bind-all address; give the address of the proxy's host");
        }
        if addr.port() == 0 {
            bail!("{source} {addr}: no port");
        }
    }
    let set = ProxySet::new(list).map_err(|e| anyhow!("{source}: {e}"))?;
    Ok(set.addrs())
}

impl Services {
    /// Uses servers just started here: their addresses replace the configured ones.
    fn adopt(&mut self, config: &Config, started: Started) -> Result<()> {
        self.keymgr = started.keymgr_at;
        // The embedded proxy takes the place of the configured address it listens at
        // (the first one if none is: it may listen on port 0); the others stay.
        let slot = self
            .proxies
            .iter()
            .position(|addr| *addr == config.proxy.listen)
            .unwrap_or(0);
        if let Some(addr) = self.proxies.get_mut(slot) {
            *addr = started.proxy_at;
        }
        self.proxies = ProxySet::new(&self.proxies)
            .map_err(|e| anyhow!("proxy addresses: {e}"))?
            .addrs();
        self.keymgr_fingerprint = Some(started.fingerprint);
        if let Ok(mut embedded) = self.embedded.try_lock() {
            *embedded = Some(started.embedded);
        }
        Ok(())
    }

    /// While this node runs no services, checks every [`TAKEOVER_POLL`] that the key
    /// manager at the configured address answers; when it stops answering (the node
    /// that ran it, and the proxy, has stopped), starts both here, from the same data
    /// directory: the same manager key, every registration it committed. Nodes that
    /// race for it are settled by the bind (one wins, the others find it answering).
    /// The proxy starts empty; leaders re-announce within a refresh, and a group
    /// founded meanwhile merges (SPEC.md §12.7). Only with fixed listen ports, which
    /// the others can find again.
    fn watch_host(&mut self, config: &Config, printer: &Printer) {
        if config.keymgr.listen.port() == 0 || config.proxy.listen.port() == 0 {
            return;
        }
        let (config, printer) = (config.clone(), printer.clone());
        let embedded = Arc::clone(&self.embedded);
        let keymgr = config.keymgr.address;
        self.watcher = Some(tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(TAKEOVER_POLL).await;
                if embedded.lock().await.is_some() || keymgr_answers(keymgr).await {
                    continue;
                }
                match start_embedded(&config, &printer).await {
                    Ok(Some(started)) => {
                        printer.notice(&format!(
                            "the node that ran the key manager and the proxy has stopped: this \
                             process runs them now ({} and {}, data in {}; the same key)",
                            started.keymgr_at,
                            started.proxy_at,
                            keymgr_data_dir(&config).display()
                        ));
                        *embedded.lock().await = Some(started.embedded);
                        failing = false;
                    }
                    Ok(None) => failing = false,
                    Err(e) if !failing => {
                        printer.notice(&format!(
                            "the key manager at {keymgr} does not answer, and this node cannot \
                             run it: {e:#} (trying again)"
                        ));
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        }));
    }

    /// Stops the watch and the embedded servers (if any), and waits until they are done
    /// (a key manager answers what it accepted) and have let go of their ports.
    /// Dropping stops them too, without waiting.
    pub async fn stop(mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        let embedded = self.embedded.lock().await.take();
        if let Some(embedded) = embedded {
            embedded.stop().await;
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        if let Ok(embedded) = self.embedded.try_lock() {
            if let Some(embedded) = embedded.as_ref() {
                let _ = embedded.stop.send(true);
            }
        }
    }
}

/// Whether a key manager answers at `addr`: it is asked for its own record under a
/// fingerprint nobody has, so any answer fails verification, and only silence (or a
/// refused connection) means nobody is there.
async fn keymgr_answers(addr: SocketAddr) -> bool {
    let config = ClientConfig {
        udp_timeout: Duration::from_millis(200),
        udp_tries: 1,
        tcp_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let Ok(client) = KeymgrClient::with_config(addr, Trust::Pinned("00".repeat(32)), config) else {
        return false;
    };
    !matches!(
        client.manager_key().await,
        Err(ClientError::Timeout { .. } | ClientError::Io { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;
    use clap::Parser as _;
    use sockmsg_keymgr::registry::RegistrationMode;

    const KEYMGR_PEM: &str = include_str!("../../testdata/keys/keymgr.pem");
    const DAVE_PEM: &str = include_str!("../../testdata/keys/dave.pem");
    /// Bound on each awaited step.
    const WAIT: Duration = Duration::from_secs(20);

    /// A loopback port free (for now) for both TCP and UDP.
    fn free_port() -> u16 {
        for _ in 0..50 {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!("no free loopback port");
    }

    async fn manager_key(addr: SocketAddr, trust: Trust) -> Result<String, ClientError> {
        let client = KeymgrClient::new(addr, trust)?;
        let key = tokio::time::timeout(WAIT, client.manager_key())
            .await
            .expect("an answer in time")?;
        Ok(key.fingerprint().to_owned())
    }

    /// `--proxy` replaces the configuration; a non-empty `proxy.addresses` replaces
    /// `proxy.address`; duplicates count once; bad addresses say where they came from.
    #[test]
    fn proxy_addresses_flags_then_list_then_address() {
        let a: SocketAddr = "10.0.0.1:7400".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7400".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:7400".parse().unwrap();
        let mut config = Config::default().proxy;
        assert_eq!(
            proxy_addresses(&[], &config).unwrap(),
            [config.address],
            "the single address by default"
        );
        config.addresses = vec![b, c, b];
        assert_eq!(proxy_addresses(&[], &config).unwrap(), [b, c]);
        assert_eq!(proxy_addresses(&[a], &config).unwrap(), [a]);
        let args = Args::parse_from(["sockmsg-node", "--proxy", "10.0.0.1:7400,10.0.0.2:7400"]);
        assert_eq!(args.proxy, [a, b]);
        let args = Args::parse_from([
            "sockmsg-node",
            "--proxy",
            "10.0.0.3:7400",
            "--proxy",
            "10.0.0.1:7400",
        ]);
        assert_eq!(proxy_addresses(&args.proxy, &config).unwrap(), [c, a]);

        let error = proxy_addresses(&["0.0.0.0:7400".parse().unwrap()], &config).unwrap_err();
        assert!(
            format!("{error:#}").contains("--proxy 0.0.0.0:7400"),
            "{error:#}"
        );
        let many: Vec<SocketAddr> = (1..=17)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 7400)))
            .collect();
        config.addresses = many;
        let error = proxy_addresses(&[], &config).unwrap_err();
        assert!(
            format!("{error:#}").contains("proxy.addresses: 17 proxies given"),
            "{error:#}"
        );
    }

    /// The services outlive the node that started them: a node that found them running
    /// runs them itself once their host stops, from the same data directory (the same
    /// manager key), within about a second.
    #[tokio::test]
    async fn another_node_takes_the_services_over_when_their_host_stops() {
        let tmp = TempDir::new("takeover");
        let keymgr_dir = tmp.0.join("keymgr");
        let fingerprint = sockmsg_keymgr::datadir::init_with_key(&keymgr_dir, KEYMGR_PEM).unwrap();
        let keymgr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = Config::default();
        (config.keymgr.listen, config.keymgr.address) = (keymgr, keymgr);
        (config.proxy.listen, config.proxy.address) = (proxy, proxy);
        config.keymgr.data_dir = Some(keymgr_dir);
        let args = Args::parse_from(["sockmsg-node"]);
        let printer = crate::ui::Printer::new(true);

        let host = ensure(&config, &args, true, &printer).await.unwrap();
        assert_eq!(host.keymgr_fingerprint.as_deref(), Some(&*fingerprint));
        let other = ensure(&config, &args, true, &printer).await.unwrap();
        assert_eq!(other.keymgr_fingerprint, None, "it found the host's");
        assert_eq!(
            (other.keymgr, other.proxies.as_slice()),
            (keymgr, &[proxy][..])
        );

        host.stop().await;
        let stopped = std::time::Instant::now();
        let pinned = Trust::Pinned(fingerprint.clone());
        while manager_key(keymgr, pinned.clone()).await.is_err() {
            assert!(
                stopped.elapsed() < Duration::from_secs(5),
                "nobody took the key manager over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = stopped.elapsed();
        assert!(took < Duration::from_secs(2), "took over after {took:?}");
        let record = sockmsg_node::proxy_client::ProxyClient::new(proxy)
            .query("lobby")
            .await;
        assert!(matches!(record, Ok(None)), "the proxy answers: {record:?}");
        other.stop().await;
        assert!(
            manager_key(keymgr, pinned).await.is_err(),
            "stopped with the node that took them over"
        );
    }

    /// A node that starts the embedded key manager records its fingerprint; when another
    /// manager (another key) later answers on the same port, the node refuses it, both
    /// when it finds it running and when its own manager's key has changed.
    #[tokio::test]
    async fn the_embedded_managers_fingerprint_is_pinned() {
        let tmp = TempDir::new("pin");
        let keymgr_dir = tmp.0.join("keymgr");
        let fingerprint = sockmsg_keymgr::datadir::init_with_key(&keymgr_dir, KEYMGR_PEM).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = Config::default();
        config.keymgr.listen = addr;
        config.keymgr.address = addr;
        config.keymgr.data_dir = Some(keymgr_dir);
        config.proxy.listen = "127.0.0.1:0".parse().unwrap();
        let args = Args::parse_from(["sockmsg-node"]);
        let printer = crate::ui::Printer::new(true);
        let known_hosts = tmp.0.join("alice/known_keymgr");

        // First start: nothing answers, so the node starts a manager and records it.
        let services = ensure(&config, &args, true, &printer).await.unwrap();
        assert_eq!(services.keymgr, addr);
        assert_eq!(services.keymgr_fingerprint.as_deref(), Some(&*fingerprint));
        let trusted = trust(&services, None, &known_hosts).unwrap();
        assert_eq!(
            trusted,
            Trust::TrustOnFirstUse {
                known_hosts: known_hosts.clone()
            }
        );
        assert_eq!(
            std::fs::read_to_string(&known_hosts).unwrap(),
            format!("{addr} {fingerprint}\n")
        );
        assert_eq!(
            manager_key(addr, trusted.clone()).await.unwrap(),
            fingerprint
        );
        // A pinned fingerprint in the config wins.
        assert_eq!(
            trust(&services, Some("ab"), &known_hosts).unwrap(),
            Trust::Pinned("ab".into())
        );
        services.stop().await;

        // Another manager, with another key, on the same port.
        let impostor_dir = tmp.0.join("impostor");
        let impostor_fp = sockmsg_keymgr::datadir::init_with_key(&impostor_dir, DAVE_PEM).unwrap();
        let impostor = KeymgrServer::bind(KeymgrServe::new(
            &impostor_dir,
            addr,
            RegistrationMode::Open,
        ))
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(impostor.run(async move {
            let _ = stopped.await;
        }));

        // Next start: something answers, so nothing is embedded; it is refused.
        let services = ensure(&config, &args, true, &printer).await.unwrap();
        assert_eq!(services.keymgr_fingerprint, None);
        let trusted = trust(&services, None, &known_hosts).unwrap();
        match manager_key(addr, trusted).await {
            Err(ClientError::FingerprintChanged {
                expected, found, ..
            }) => {
                assert_eq!(expected, fingerprint);
                assert_eq!(found, impostor_fp);
            }
            other => panic!("expected FingerprintChanged, got {other:?}"),
        }
        services.stop().await;
        let _ = stop.send(());
        tokio::time::timeout(WAIT, running)
            .await
            .expect("stopped in time")
            .unwrap()
            .unwrap();

        // A node whose own embedded manager comes up with another key refuses it too.
        let replaced = Services {
            keymgr: addr,
            proxies: vec![addr],
            keymgr_fingerprint: Some(impostor_fp),
            embedded: Arc::new(Mutex::new(None)),
            watcher: None,
        };
        let error = trust(&replaced, None, &known_hosts).unwrap_err();
        assert!(format!("{error:#}").contains("HAS CHANGED"), "{error:#}");
        assert_eq!(
            std::fs::read_to_string(&known_hosts).unwrap(),
            format!("{addr} {fingerprint}\n"),
            "the recorded key stays"
        );
    }
}
