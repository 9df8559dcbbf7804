//! sockmsg configuration: the defaults every component reads, loaded strictly.
//!
//! The workspace's `config.yml` is the single source of truth for defaults: it is embedded
//! here at build time ([`DEFAULT_YAML`]) and [`Config::default()`] is that file, parsed.
//! A user's file is read with [`Config::load`] (or [`Config::from_yaml_str`]) and may give
//! only some keys; every key it leaves out keeps its default. An unknown key, a value of the
//! wrong type or a setting that makes no sense (see [`Config::validate`]) is a
//! [`ConfigError`] that names the key, and for a file, the path.
//!
//! ```text
//! config.yml (embedded) ──parse──▶ Config::default()
//!                                        │ keys the user's file gives replace defaults
//! user's file ──parse (every key optional, unknown keys rejected)──▶ Config ──validate──▶ ✓
//!                                        ▲
//!                  command-line flags mutate fields, then call validate() again
//! ```
//!
//! [`Config`] mirrors the file section by section: [`NodeConfig`], [`ProxyConfig`],
//! [`KeymgrConfig`] (with [`Registration`]), [`TimingConfig`], [`TransportConfig`] and
//! [`IdentityConfig`]. Addresses are [`SocketAddr`]s, durations are integer milliseconds
//! (`_ms`) or seconds (`_secs`), paths are `Option<PathBuf>` where `None` means "the user's
//! data directory", which the binaries resolve.
//!
//! No input makes this crate panic. The only `expect` is on the embedded defaults, a
//! build-time constant that the tests parse and validate.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize};

/// The checked-in `config.yml`, embedded at build time: the defaults.
pub const DEFAULT_YAML: &str = include_str!("../../config.yml");

/// Smallest `transport.datagram_size`: the IPv4 minimum reassembly size (RFC 791).
pub const MIN_DATAGRAM_SIZE: usize = 576;

/// Largest `transport.datagram_size`: 65535 − 20 (IPv4 header) − 8 (UDP header).
pub const MAX_DATAGRAM_SIZE: usize = 65_507;

/// Smallest RSA modulus accepted for any key (NIST SP 800-57: 112-bit security).
pub const MIN_KEY_BITS: u32 = 2048;

/// Largest RSA modulus accepted; the wire format bounds signatures at 8192-bit keys.
pub const MAX_KEY_BITS: u32 = 8192;

/// Longest chat line in bytes (the wire's bound). One
/// peer's buffer must hold at least one.
pub const MAX_CHAT_MESSAGE_LEN: usize = sockmsg_wire::limits::MAX_CHAT_MESSAGE_LEN;

/// Why a configuration could not be read, parsed or accepted.
///
/// Each message is complete on its own (it includes the underlying cause), so a binary can
/// print it as is; `source()` is therefore not set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The text is not YAML, has an unknown key or a value of the wrong type.
    /// The parser's message names the key and gives the line and column, e.g.
    /// ``timing: unknown field `heartbeat_msx`, expected one of … at line 2 column 3``.
    #[error("{}{error}", origin(path.as_deref()))]
    Parse {
        /// The file the text came from, if any.
        path: Option<PathBuf>,
        /// The parser's error.
        error: serde_yaml_ng::Error,
    },
    /// Every value is well-typed but the combination makes no sense.
    #[error("{}{key}: {reason}", origin(path.as_deref()))]
    Invalid {
        /// The file the configuration came from, if any.
        path: Option<PathBuf>,
        /// The offending key, dotted (`timing.heartbeat_ms`).
        key: &'static str,
        /// What is wrong with it, and what would be right.
        reason: String,
    },
}

/// Prefix for a message about `path`: `"path: "`, or nothing without a path.
fn origin(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl ConfigError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: None,
            key,
            reason: reason.into(),
        }
    }

    /// Attaches the file the configuration came from to a parse or validation error.
    fn in_file(self, file: &Path) -> Self {
        match self {
            ConfigError::Parse { error, .. } => ConfigError::Parse {
                path: Some(file.to_path_buf()),
                error,
            },
            ConfigError::Invalid { key, reason, .. } => ConfigError::Invalid {
                path: Some(file.to_path_buf()),
                key,
                reason,
            },
            read @ ConfigError::Read { .. } => read,
        }
    }
}

/// Declares one section of the file twice: the public struct with every key required (the
/// embedded defaults must give them all), and a private partial twin with every key
/// optional (a user's file), plus the merge of the second into the first. Both reject
/// unknown keys. One declaration keeps the two in step.
///
/// Partial sections cannot simply use `#[serde(default)]`: their default *is* the embedded
/// file parsed into these same types, and a container default is computed on every parse,
/// so it would recurse.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident / $partial:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields, expecting = "a mapping of keys to values")]
        struct $partial {
            $(
                #[serde(default, deserialize_with = "present")]
                $field: Option<$ty>,
            )*
        }

        impl $partial {
            fn merge_into(self, section: &mut $name) {
                $( if let Some(value) = self.$field { section.$field = value; } )*
            }
        }
    };
}

/// For a partial key: a key that is present becomes `Some`, even when its value is `null`
/// (so `data_dir: null` overrides a non-null default); an absent key stays `None` through
/// `#[serde(default)]`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

section! {
    /// `node:` — this member of the group.
    pub struct NodeConfig / PartialNode {
        /// Member name (1–32 ASCII letters, digits, `-`, `_`, `.`); `None` (or `""` in the
        /// file) means ask at start, offering the login user name.
        pub name: Option<String>,
        /// The group to join, or to found when the proxy knows no leader for it.
        pub group: String,
        /// UDP address for peer traffic; the driver tries the next ports if it is taken.
        pub bind: SocketAddr,
        /// Identity key, persisted vote and incarnation; `None` = the user's data directory.
        pub data_dir: Option<PathBuf>,
        /// One-time enrollment token for a key manager in invite mode, hex (as
        /// `sockmsg-keymgr invite` prints it); `None` (or `""` in the file) = none.
        /// [`Config::invite_token`] decodes it.
        pub invite: Option<String>,
    }
}

section! {
    /// `proxy:` — the "who leads group G?" directory.
    pub struct ProxyConfig / PartialProxy {
        /// Where the proxy binds (UDP and TCP).
        pub listen: SocketAddr,
        /// Where nodes reach the proxy (when `addresses` is empty).
        pub address: SocketAddr,
        /// Where nodes reach several proxies: a leader announces to each, a joining node
        /// asks them all. When not empty it replaces `address`.
        pub addresses: Vec<SocketAddr>,
        /// Lifetime of a leader record that is not re-announced, in ms.
        pub record_ttl_ms: u64,
    }
}

section! {
    /// `keymgr:` — the key manager.
    pub struct KeymgrConfig / PartialKeymgr {
        /// Where the key manager binds (UDP and TCP).
        pub listen: SocketAddr,
        /// Where nodes reach the key manager.
        pub address: SocketAddr,
        /// RSA modulus of the manager's own signing key, in bits.
        pub key_bits: u32,
        /// Who may register a name.
        pub registration: Registration,
        /// New names or key rotations one source may make at once (its token bucket).
        pub register_burst: u32,
        /// Tokens a source's bucket gets back per minute.
        pub register_per_minute: u32,
        /// Names one public key may be bound to.
        pub max_names_per_key: u32,
        /// Manager key and database; `None` = the user's data directory.
        pub data_dir: Option<PathBuf>,
        /// Pinned fingerprint of the manager's key, as `sockmsg-keymgr init` prints it;
        /// `None` (or `""` in the file) = trust on first use and remember.
        pub fingerprint: Option<String>,
    }
}

section! {
    /// `timing:` — heartbeats, elections, failure detection and session timers, all in ms.
    pub struct TimingConfig / PartialTiming {
        /// Leader heartbeat interval.
        pub heartbeat_ms: u64,
        /// Lower bound of the randomised election timeout.
        pub election_timeout_min_ms: u64,
        /// Upper bound of the randomised election timeout.
        pub election_timeout_max_ms: u64,
        /// A leader that heard from no majority for this long steps down.
        pub check_quorum_ms: u64,
        /// A leader removes a member silent for this long; longer than `check_quorum_ms`.
        pub failure_removal_ms: u64,
        /// A peer session without traffic for this long is closed.
        pub idle_timeout_ms: u64,
        /// A handshake not complete after this long is abandoned.
        pub handshake_timeout_ms: u64,
    }
}

section! {
    /// `transport:` — the per-peer session layer.
    pub struct TransportConfig / PartialTransport {
        /// Largest UDP payload sent, in bytes.
        pub datagram_size: usize,
        /// A peer acknowledging nothing for this long (ms) with data in flight is unreachable.
        pub unreachable_after_ms: u64,
        /// Cap on one peer session's send and receive buffers, in bytes.
        pub per_peer_buffer_bytes: usize,
        /// Rekey after this many packets under one key.
        pub rekey_after_packets: u64,
        /// Rekey after this many seconds under one key.
        pub rekey_after_secs: u64,
    }
}

section! {
    /// `identity:` — this node's own key.
    pub struct IdentityConfig / PartialIdentity {
        /// RSA modulus of a node's identity key, in bits.
        pub key_bits: u32,
    }
}

/// `keymgr.registration`: who may bind a name at the key manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone may bind a free name, with proof of possession of its key.
    Open,
    /// Registration also needs an invite token issued by the operator.
    Invite,
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Registration::Open => "open",
            Registration::Invite => "invite",
        })
    }
}

/// The whole configuration: one field per section of `config.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `node:`
    pub node: NodeConfig,
    /// `proxy:`
    pub proxy: ProxyConfig,
    /// `keymgr:`
    pub keymgr: KeymgrConfig,
    /// `timing:`
    pub timing: TimingConfig,
    /// `transport:`
    pub transport: TransportConfig,
    /// `identity:`
    pub identity: IdentityConfig,
}

/// A user's file: every section and key optional, unknown ones rejected. A section given
/// as `null` (every key under it commented out) keeps its defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of sections (node, proxy, ...)"
)]
struct PartialConfig {
    #[serde(default)]
    node: Option<PartialNode>,
    #[serde(default)]
    proxy: Option<PartialProxy>,
    #[serde(default)]
    keymgr: Option<PartialKeymgr>,
    #[serde(default)]
    timing: Option<PartialTiming>,
    #[serde(default)]
    transport: Option<PartialTransport>,
    #[serde(default)]
    identity: Option<PartialIdentity>,
}

impl PartialConfig {
    fn merge_into(self, config: &mut Config) {
        if let Some(node) = self.node {
            node.merge_into(&mut config.node);
        }
        if let Some(proxy) = self.proxy {
            proxy.merge_into(&mut config.proxy);
        }
        if let Some(keymgr) = self.keymgr {
            keymgr.merge_into(&mut config.keymgr);
        }
        if let Some(timing) = self.timing {
            timing.merge_into(&mut config.timing);
        }
        if let Some(transport) = self.transport {
            transport.merge_into(&mut config.transport);
        }
        if let Some(identity) = self.identity {
            identity.merge_into(&mut config.identity);
        }
    }
}

impl Default for Config {
    /// The checked-in `config.yml`, parsed once.
    fn default() -> Self {
        static DEFAULTS: OnceLock<Config> = OnceLock::new();
        DEFAULTS
            .get_or_init(|| {
                // A build-time constant, not user input: the tests parse and validate it
                // (`checked_in_config_parses_and_validates`), so this cannot fail.
                let mut config: Config = serde_yaml_ng::from_str(DEFAULT_YAML)
                    .expect("the embedded config.yml gives every key, well-typed");
                config.normalize();
                config
            })
            .clone()
    }
}

impl Config {
    /// Parses a configuration file's text over the defaults and validates the result.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        // An empty file (or one of comments only, or `---`) is a null document: defaults.
        let partial: Option<PartialConfig> = serde_yaml_ng::from_str(text)
            .map_err(|error| ConfigError::Parse { path: None, error })?;
        let partial = partial.unwrap_or_default();
        let mut config = Config::default();
        partial.merge_into(&mut config);
        config.normalize();
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`; every error names the path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::from_yaml_str(&text).map_err(|e| e.in_file(path))
    }

    /// `node.invite` decoded: `Ok(None)` if none is set, `Err` (naming the key) if it is
    /// not hex or too long for the wire's token (64 bytes).
    pub fn invite_token(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        self.node
            .invite
            .as_deref()
            .map(|text| {
                parse_invite(text).map_err(|reason| ConfigError::invalid("node.invite", reason))
            })
            .transpose()
    }

    /// `""` for an optional name, fingerprint or invite means the same as `null`.
    fn normalize(&mut self) {
        for value in [
            &mut self.node.name,
            &mut self.keymgr.fingerprint,
            &mut self.node.invite,
        ] {
            if value.as_deref().is_some_and(|s| s.trim().is_empty()) {
                *value = None;
            }
        }
    }

    /// Rejects settings that are well-typed but make no sense, naming the first offending
    /// key. [`Config::load`] and [`Config::from_yaml_str`] call it; call it again after
    /// applying command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::invalid(key, reason)
        }

        if let Some(name) = &self.node.name {
            check_name("node.name", name)?;
        }
        check_name("node.group", &self.node.group)?;
        self.invite_token()?;
        check_reachable("proxy.address", self.proxy.address)?;
        for addr in &self.proxy.addresses {
            check_reachable("proxy.addresses", *addr)?;
        }
        check_reachable("keymgr.address", self.keymgr.address)?;
        check_key_bits("keymgr.key_bits", self.keymgr.key_bits)?;
        check_key_bits("identity.key_bits", self.identity.key_bits)?;
        for (key, value) in [
            ("keymgr.register_burst", self.keymgr.register_burst),
            (
                "keymgr.register_per_minute",
                self.keymgr.register_per_minute,
            ),
            ("keymgr.max_names_per_key", self.keymgr.max_names_per_key),
        ] {
            if value == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1 (0 would refuse every registration)",
                ));
            }
        }

        let t = &self.timing;
        if t.heartbeat_ms == 0 {
            return Err(invalid("timing.heartbeat_ms", "must be at least 1 ms"));
        }
        if t.election_timeout_min_ms >= t.election_timeout_max_ms {
            return Err(invalid(
                "timing.election_timeout_min_ms",
                format!(
                    "must be less than timing.election_timeout_max_ms ({} ms), is {} ms; \
                     the range is what keeps candidates from tying",
                    t.election_timeout_max_ms, t.election_timeout_min_ms
                ),
            ));
        }
        if t.heartbeat_ms >= t.election_timeout_min_ms {
            return Err(invalid(
                "timing.heartbeat_ms",
                format!(
                    "must be less than timing.election_timeout_min_ms ({} ms), is {} ms; \
                     otherwise followers start elections between heartbeats",
                    t.election_timeout_min_ms, t.heartbeat_ms
                ),
            ));
        }
        if t.check_quorum_ms <= t.heartbeat_ms {
            return Err(invalid(
                "timing.check_quorum_ms",
                format!(
                    "must be greater than timing.heartbeat_ms ({} ms), is {} ms; \
                     a leader needs a heartbeat round to hear from a majority",
                    t.heartbeat_ms, t.check_quorum_ms
                ),
            ));
        }
        if t.failure_removal_ms <= t.check_quorum_ms {
            return Err(invalid(
                "timing.failure_removal_ms",
                format!(
                    "must be greater than timing.check_quorum_ms ({} ms), is {} ms; \
                     a leader cut off in a minority must step down before it could remove \
                     the members it cannot reach",
                    t.check_quorum_ms, t.failure_removal_ms
                ),
            ));
        }
        if t.idle_timeout_ms <= t.heartbeat_ms {
            return Err(invalid(
                "timing.idle_timeout_ms",
                format!(
                    "must be greater than timing.heartbeat_ms ({} ms), is {} ms; \
                     sessions would close between heartbeats",
                    t.heartbeat_ms, t.idle_timeout_ms
                ),
            ));
        }
        if t.handshake_timeout_ms == 0 {
            return Err(invalid(
                "timing.handshake_timeout_ms",
                "must be at least 1 ms",
            ));
        }

        if self.proxy.record_ttl_ms <= t.election_timeout_max_ms {
            return Err(invalid(
                "proxy.record_ttl_ms",
                format!(
                    "must be greater than timing.election_timeout_max_ms ({} ms), is {} ms; \
                     the leader record would lapse during an ordinary election and a \
                     joining node would found a rival group",
                    t.election_timeout_max_ms, self.proxy.record_ttl_ms
                ),
            ));
        }

        let tr = &self.transport;
        if !(MIN_DATAGRAM_SIZE..=MAX_DATAGRAM_SIZE).contains(&tr.datagram_size) {
            return Err(invalid(
                "transport.datagram_size",
                format!(
                    "must be in {MIN_DATAGRAM_SIZE}..={MAX_DATAGRAM_SIZE} bytes, is {}",
                    tr.datagram_size
                ),
            ));
        }
        if tr.unreachable_after_ms == 0 {
            return Err(invalid(
                "transport.unreachable_after_ms",
                "must be at least 1 ms",
            ));
        }
        if tr.per_peer_buffer_bytes < MAX_CHAT_MESSAGE_LEN {
            return Err(invalid(
                "transport.per_peer_buffer_bytes",
                format!(
                    "must be at least {MAX_CHAT_MESSAGE_LEN} bytes (one full-length chat \
                     line), is {}",
                    tr.per_peer_buffer_bytes
                ),
            ));
        }
        if tr.rekey_after_packets == 0 {
            return Err(invalid(
                "transport.rekey_after_packets",
                "must be at least 1",
            ));
        }
        if tr.rekey_after_secs == 0 {
            return Err(invalid(
                "transport.rekey_after_secs",
                "must be at least 1 s",
            ));
        }
        Ok(())
    }
}

/// The wire's name rule ([`sockmsg_wire::Name`]), so a configured name is one the
/// protocol can carry.
fn check_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
    sockmsg_wire::Name::new(name)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("{name:?}: {e}")))
}

/// An invite token as `sockmsg-keymgr invite` prints it: hex (spaces around it
/// ignored), 1..=64 bytes. The message says what is wrong, never echoing the token.
pub fn parse_invite(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let max = sockmsg_wire::limits::MAX_TOKEN_LEN;
    if text.is_empty() {
        return Err("the invite token is empty".into());
    }
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the invite token must be hexadecimal, as `sockmsg-keymgr invite` prints it \
             ({} characters given)",
            text.len()
        ));
    }
    if text.len() / 2 > max {
        return Err(format!(
            "the invite token is {} bytes long; at most {max}",
            text.len() / 2
        ));
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    Ok(text
        .as_bytes()
        .chunks(2)
        .map(|pair| digit(pair[0]) << 4 | digit(pair[1]))
        .collect())
}

/// An address others connect to must name a host and a port.
fn check_reachable(key: &'static str, addr: SocketAddr) -> Result<(), ConfigError> {
    if addr.ip().is_unspecified() {
        return Err(ConfigError::invalid(
            key,
            format!("{addr} is a bind-all address; give the host's address to connect to"),
        ));
    }
    if addr.port() == 0 {
        return Err(ConfigError::invalid(key, format!("{addr} has no port")));
    }
    Ok(())
}

fn check_key_bits(key: &'static str, bits: u32) -> Result<(), ConfigError> {
    if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
        return Err(ConfigError::invalid(
            key,
            format!("must be in {MIN_KEY_BITS}..={MAX_KEY_BITS} bits, is {bits}"),
        ));
    }
    Ok(())
}

/// The user's data directory for one sockmsg component (`keymgr`, `proxy`, `node`):
/// `$XDG_DATA_HOME/sockmsg/<component>`, else `~/.local/share/sockmsg/<component>`.
/// `None` when neither variable holds an absolute path.
pub fn default_data_dir(component: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".local").join("share"))
        })?;
    Some(base.join("sockmsg").join(component))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`, expecting an error; returns its message.
    fn error_of(text: &str) -> String {
        match Config::from_yaml_str(text) {
            Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn checked_in_config_parses_and_validates() {
        // Strictly: every key present, none unknown, no defaults filled in.
        let strict: Config = serde_yaml_ng::from_str(DEFAULT_YAML).expect("config.yml parses");
        strict.validate().expect("config.yml validates");
        let default = Config::default();
        assert_eq!(default, strict);
        assert_eq!(Config::from_yaml_str(DEFAULT_YAML).unwrap(), default);

        // The values DESIGN.md names.
        assert_eq!(default.node.name, None);
        assert_eq!(default.node.group, "lobby");
        assert_eq!(default.node.bind, "127.0.0.1:7402".parse().unwrap());
        assert_eq!(default.proxy.address, "127.0.0.1:7400".parse().unwrap());
        assert!(default.proxy.addresses.is_empty());
        assert_eq!(default.keymgr.address, "127.0.0.1:7401".parse().unwrap());
        assert_eq!(default.keymgr.registration, Registration::Open);
        assert_eq!(default.timing.heartbeat_ms, 50);
        assert_eq!(default.timing.election_timeout_min_ms, 150);
        assert_eq!(default.timing.election_timeout_max_ms, 300);
        assert_eq!(default.transport.datagram_size, 1200);
        assert_eq!(default.identity.key_bits, 3072);
    }

    #[test]
    fn load_reads_the_checked_in_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn load_error_names_the_path() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-config.yml");
        let message = Config::load(&path).unwrap_err().to_string();
        assert!(message.contains("no-such-config.yml"), "{message}");
    }

    #[test]
    fn parse_and_validation_errors_from_a_file_name_the_path() {
        let path = Path::new("/etc/sockmsg/config.yml");
        let bad_key = Config::from_yaml_str("timing: {heartbeat_msx: 5}")
            .unwrap_err()
            .in_file(path)
            .to_string();
        assert!(
            bad_key.starts_with("/etc/sockmsg/config.yml: "),
            "{bad_key}"
        );
        let bad_value = Config::from_yaml_str("timing: {heartbeat_ms: 0}")
            .unwrap_err()
            .in_file(path)
            .to_string();
        assert!(
            bad_value.starts_with("/etc/sockmsg/config.yml: timing.heartbeat_ms"),
            "{bad_value}"
        );
    }

    #[test]
    fn unknown_key_error_names_the_key() {
        let message = error_of("timing:\n  heartbeat_msx: 50\n");
        assert!(message.contains("heartbeat_msx"), "{message}");
        assert!(message.contains("timing"), "{message}");

        let message = error_of("timming:\n  heartbeat_ms: 50\n");
        assert!(message.contains("timming"), "{message}");
    }

    #[test]
    fn partial_file_keeps_the_other_defaults() {
        let config =
            Config::from_yaml_str("node:\n  name: alice\ntiming:\n  heartbeat_ms: 20\n").unwrap();
        let mut expected = Config::default();
        expected.node.name = Some("alice".into());
        expected.timing.heartbeat_ms = 20;
        assert_eq!(config, expected);
    }

    #[test]
    fn empty_file_and_empty_sections_mean_defaults() {
        for text in [
            "",
            "\n",
            "# nothing here\n",
            "---\n",
            "~",
            "node:\ntiming:\n",
            "{}",
            "node: {}",
        ] {
            assert_eq!(
                Config::from_yaml_str(text).unwrap(),
                Config::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn empty_name_and_fingerprint_mean_unset() {
        let config =
            Config::from_yaml_str("node: {name: '', invite: ' '}\nkeymgr: {fingerprint: ''}")
                .unwrap();
        assert_eq!(config.node.name, None);
        assert_eq!(config.node.invite, None);
        assert_eq!(config.keymgr.fingerprint, None);
    }

    #[test]
    fn registration_limits_and_the_invite_token() {
        let default = Config::default();
        assert_eq!(default.keymgr.register_burst, 64);
        assert_eq!(default.keymgr.register_per_minute, 60);
        assert_eq!(default.keymgr.max_names_per_key, 4);
        assert_eq!(default.node.invite, None);
        assert_eq!(default.invite_token().unwrap(), None);

        let config = Config::from_yaml_str(
            "keymgr: {register_burst: 2, register_per_minute: 1, max_names_per_key: 1}\n\
             node: {invite: ' 00FFa1 '}",
        )
        .unwrap();
        assert_eq!(
            (
                config.keymgr.register_burst,
                config.keymgr.register_per_minute,
                config.keymgr.max_names_per_key
            ),
            (2, 1, 1)
        );
        assert_eq!(config.invite_token().unwrap(), Some(vec![0x00, 0xff, 0xa1]));

        let message = error_of("keymgr: {register_brust: 2}");
        assert!(message.contains("register_brust"), "{message}");
        for (text, key) in [
            ("keymgr: {register_burst: 0}", "keymgr.register_burst"),
            (
                "keymgr: {register_per_minute: 0}",
                "keymgr.register_per_minute",
            ),
            ("keymgr: {max_names_per_key: 0}", "keymgr.max_names_per_key"),
            ("node: {invite: 'xyz1'}", "node.invite"),
            ("node: {invite: 'abc'}", "node.invite"),
        ] {
            match Config::from_yaml_str(text) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: expected Invalid({key}), got {other:?}"),
            }
        }
        let long = "ab".repeat(65);
        let message = error_of(&format!("node: {{invite: '{long}'}}"));
        assert!(message.contains("65 bytes"), "{message}");
        assert!(
            !message.contains(&long),
            "the token is not echoed: {message}"
        );
        assert!(error_of("keymgr: {register_burst: -1}").contains("register_burst"));
    }

    #[test]
    fn explicit_null_overrides_a_path() {
        let config = Config::from_yaml_str("node: {data_dir: /tmp/a}\n").unwrap();
        assert_eq!(config.node.data_dir, Some(PathBuf::from("/tmp/a")));
        // `present` turns a null that is given into Some(None): the key is overridden.
        let partial: PartialNode = serde_yaml_ng::from_str("data_dir: null").unwrap();
        let mut node = config.node;
        partial.merge_into(&mut node);
        assert_eq!(node.data_dir, None);
    }

    #[test]
    fn registration_is_lowercase() {
        let config = Config::from_yaml_str("keymgr: {registration: invite}").unwrap();
        assert_eq!(config.keymgr.registration, Registration::Invite);
        let message = error_of("keymgr: {registration: Invite}");
        assert!(message.contains("registration"), "{message}");
        assert!(message.contains("invite"), "{message}");
    }

    #[test]
    fn invalid_address_is_a_readable_error() {
        let message = error_of("proxy:\n  address: 127.0.0.1\n");
        assert!(message.contains("proxy.address"), "{message}");
        assert!(message.contains("socket address"), "{message}");
        assert!(message.contains("line 2"), "{message}");

        let message = error_of("node: {bind: 'localhost:99999'}");
        assert!(message.contains("node.bind"), "{message}");
    }

    #[test]
    fn wrong_types_and_bad_yaml_are_errors_not_panics() {
        for text in [
            "timing: {heartbeat_ms: -1}",
            "timing: {heartbeat_ms: fast}",
            "timing: {heartbeat_ms: null}",
            "timing: 5",
            "transport: {datagram_size: 1e400}",
            "identity: {key_bits: 99999999999}",
            "node: [1, 2]",
            "- a list",
            "just a string",
            "node: {name: alice",
            "\t- :",
            "&a [*a]",
        ] {
            assert!(Config::from_yaml_str(text).is_err(), "{text:?}");
        }
        let message = error_of("timing: {heartbeat_ms: null}");
        assert!(message.contains("timing.heartbeat_ms"), "{message}");
        let message = error_of("timing: 5");
        assert!(
            message.contains("timing: invalid type: integer `5`, expected a mapping"),
            "{message}"
        );
    }

    #[test]
    fn each_validation_rule_fires() {
        let cases: &[(&str, &str)] = &[
            ("node: {name: 'has space'}", "node.name"),
            (
                "node: {name: 'abcdefghijklmnopqrstuvwxyz0123456'}",
                "node.name",
            ),
            ("node: {group: ''}", "node.group"),
            ("node: {group: 'lobby!'}", "node.group"),
            ("proxy: {address: '0.0.0.0:7400'}", "proxy.address"),
            ("proxy: {address: '127.0.0.1:0'}", "proxy.address"),
            (
                "proxy: {addresses: ['10.0.0.1:7400', '0.0.0.0:7400']}",
                "proxy.addresses",
            ),
            ("keymgr: {address: '[::]:7401'}", "keymgr.address"),
            ("keymgr: {key_bits: 1024}", "keymgr.key_bits"),
            ("identity: {key_bits: 2047}", "identity.key_bits"),
            ("identity: {key_bits: 16384}", "identity.key_bits"),
            ("timing: {heartbeat_ms: 0}", "timing.heartbeat_ms"),
            (
                "timing: {election_timeout_min_ms: 300, election_timeout_max_ms: 300}",
                "timing.election_timeout_min_ms",
            ),
            (
                "timing: {election_timeout_min_ms: 400, election_timeout_max_ms: 300}",
                "timing.election_timeout_min_ms",
            ),
            ("timing: {heartbeat_ms: 150}", "timing.heartbeat_ms"),
            ("timing: {check_quorum_ms: 50}", "timing.check_quorum_ms"),
            (
                "timing: {failure_removal_ms: 300}",
                "timing.failure_removal_ms",
            ),
            (
                "timing: {failure_removal_ms: 100}",
                "timing.failure_removal_ms",
            ),
            ("timing: {idle_timeout_ms: 50}", "timing.idle_timeout_ms"),
            (
                "timing: {handshake_timeout_ms: 0}",
                "timing.handshake_timeout_ms",
            ),
            ("proxy: {record_ttl_ms: 300}", "proxy.record_ttl_ms"),
            ("transport: {datagram_size: 575}", "transport.datagram_size"),
            (
                "transport: {datagram_size: 65508}",
                "transport.datagram_size",
            ),
            (
                "transport: {unreachable_after_ms: 0}",
                "transport.unreachable_after_ms",
            ),
            (
                "transport: {per_peer_buffer_bytes: 65535}",
                "transport.per_peer_buffer_bytes",
            ),
            (
                "transport: {rekey_after_packets: 0}",
                "transport.rekey_after_packets",
            ),
            (
                "transport: {rekey_after_secs: 0}",
                "transport.rekey_after_secs",
            ),
        ];
        for (text, key) in cases {
            match Config::from_yaml_str(text) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, *key, "{text}"),
                other => panic!("{text}: expected Invalid({key}), got {other:?}"),
            }
        }
        // The bounds themselves are accepted.
        for text in [
            "transport: {datagram_size: 576}",
            "transport: {datagram_size: 65507}",
            "identity: {key_bits: 2048}",
            "keymgr: {key_bits: 8192}",
            "node: {name: 'a-b_c.D9', group: 'abcdefghijklmnopqrstuvwxyz012345'}",
            "proxy: {listen: '0.0.0.0:7400'}",
            "proxy: {addresses: ['10.0.0.1:7400', '[fd00::2]:7400']}",
        ] {
            Config::from_yaml_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn validation_message_explains() {
        let message = error_of("timing: {failure_removal_ms: 200}");
        assert!(
            message.contains("timing.failure_removal_ms")
                && message.contains("timing.check_quorum_ms (300 ms)")
                && message.contains("200 ms"),
            "{message}"
        );
    }

    #[test]
    fn validate_catches_overrides_after_loading() {
        let mut config = Config::default();
        config.transport.datagram_size = 100;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                key: "transport.datagram_size",
                ..
            })
        ));
    }

    #[test]
    fn serialized_config_reads_back() {
        let mut config = Config::default();
        config.node.name = Some("bob".into());
        config.keymgr.registration = Registration::Invite;
        config.node.data_dir = Some(PathBuf::from("/var/lib/sockmsg"));
        let text = serde_yaml_ng::to_string(&config).unwrap();
        assert_eq!(Config::from_yaml_str(&text).unwrap(), config);
    }
}
