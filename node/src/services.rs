//! The key manager and the proxy a node talks to: the configured ones if they answer,
//! else (when the user named none) both started in this process on their configured
//! loopback addresses, so a single machine needs no setup. They stop with the node.
//!
//! A manager started here is trusted like any other ([`trust`]): its fingerprint goes
//! into the node's known-hosts file, so that whatever answers on that port later (the
//! manager another node started, or an impostor) must have the same key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use tokio::sync::watch;
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
    _stop: Option<watch::Sender<bool>>,
    /// The embedded servers' tasks.
    tasks: Vec<JoinHandle<()>>,
}

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

/// Finds (or starts) the services.
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
        _stop: None,
        tasks: Vec::new(),
    };
    if !embed_allowed || keymgr_answers(keymgr).await {
        return Ok(services);
    }
    if !keymgr.ip().is_loopback() || !services.proxies.iter().all(|p| p.ip().is_loopback()) {
        // Configured to use services elsewhere: starting our own would split the LAN.
        return Ok(services);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let data_dir = config
        .keymgr
        .data_dir
        .clone()
        .or_else(|| sockmsg_config::default_data_dir("keymgr"))
        .unwrap_or_else(|| PathBuf::from("sockmsg-keymgr"));
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
                return Ok(services);
            }
            return Err(e).context("cannot start the embedded key manager");
        }
    };
    let fingerprint = server.fingerprint().to_owned();
    let keymgr_at = server.local_addr();
    let mut stop = stop_rx.clone();
    services.tasks.push(tokio::spawn(async move {
        let _ = server
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    }));
    let mut proxy_serve = ProxyServe::new(
        config.proxy.listen,
        keymgr_at,
        Trust::Pinned(fingerprint.clone()),
    );
    proxy_serve.directory.record_ttl_ms = config.proxy.record_ttl_ms;
    let proxy_server = ProxyServer::bind(proxy_serve)
        .await
        .context("cannot start the embedded proxy")?;
    let proxy_at = proxy_server.local_addr();
    let mut stop = stop_rx;
    services.tasks.push(tokio::spawn(async move {
        let _ = proxy_server
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    }));
    printer.notice(&format!(
        "started a key manager ({keymgr_at}, data in {}) and a proxy ({proxy_at}) in this \
         process; other nodes on this machine use them, and they stop when this node does",
        data_dir.display()
    ));
    services.keymgr = keymgr_at;
    // The embedded proxy takes the place of the configured address it listens at (the
    // first one if none is: it may listen on port 0); the others stay.
    let slot = services
        .proxies
        .iter()
        .position(|addr| *addr == config.proxy.listen)
        .unwrap_or(0);
    if let Some(addr) = services.proxies.get_mut(slot) {
        *addr = proxy_at;
    }
    services.proxies = ProxySet::new(&services.proxies)
        .map_err(|e| anyhow!("proxy addresses: {e}"))?
        .addrs();
    services.keymgr_fingerprint = Some(fingerprint);
    services._stop = Some(stop_tx);
    Ok(services)
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
    /// Stops the embedded servers (if any) and waits until they are done (a key manager
    /// answers what it accepted) and have let go of their ports. Dropping stops them
    /// too, without waiting.
    pub async fn stop(mut self) {
        if let Some(stop) = self._stop.take() {
            let _ = stop.send(true);
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(stop) = &self._stop {
            let _ = stop.send(true);
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
            _stop: None,
            tasks: Vec::new(),
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
