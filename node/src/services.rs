//! The key manager and the proxy a node talks to: the configured ones if they answer,
//! else (when the user named none) both started in this process on their configured
//! loopback addresses, so a single machine needs no setup. They stop with the node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use sockmsg_config::Config;
use sockmsg_keymgr::client::{ClientConfig, ClientError, KeymgrClient, Trust};
use sockmsg_keymgr::server::{
    registration_mode, ServeConfig as KeymgrServe, Server as KeymgrServer,
};
use sockmsg_proxy::server::{ServeConfig as ProxyServe, Server as ProxyServer};
use tokio::sync::watch;

use crate::cli::Args;
use crate::ui::Printer;

/// Where the services are, and the embedded ones' lifetime: dropping this stops them.
pub struct Services {
    pub keymgr: SocketAddr,
    pub proxy: SocketAddr,
    /// Known when the key manager runs in this process.
    pub keymgr_fingerprint: Option<String>,
    _stop: Option<watch::Sender<bool>>,
}

/// Finds (or starts) the services.
pub async fn ensure(
    config: &Config,
    args: &Args,
    embed_allowed: bool,
    printer: &Printer,
) -> Result<Services> {
    let keymgr = args.keymgr.unwrap_or(config.keymgr.address);
    let proxy = args.proxy.unwrap_or(config.proxy.address);
    let mut services = Services {
        keymgr,
        proxy,
        keymgr_fingerprint: None,
        _stop: None,
    };
    if !embed_allowed || keymgr_answers(keymgr).await {
        return Ok(services);
    }
    if !keymgr.ip().is_loopback() || !proxy.ip().is_loopback() {
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
    let serve = KeymgrServe::new(
        &data_dir,
        config.keymgr.listen,
        registration_mode(config.keymgr.registration),
    );
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
    tokio::spawn(async move {
        let _ = server
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
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
    tokio::spawn(async move {
        let _ = proxy_server
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    printer.notice(&format!(
        "started a key manager ({keymgr_at}, data in {}) and a proxy ({proxy_at}) in this \
         process; other nodes on this machine use them, and they stop when this node does",
        data_dir.display()
    ));
    services.keymgr = keymgr_at;
    services.proxy = proxy_at;
    services.keymgr_fingerprint = Some(fingerprint);
    services._stop = Some(stop_tx);
    Ok(services)
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
