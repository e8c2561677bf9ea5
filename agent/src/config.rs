//! The agent's configuration file: TOML, unknown fields refused, secrets by
//! indirection (`file:PATH` or `env:NAME`). The commented reference is
//! `agent/keyward-agent.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::settings::{check_private_file, ListenAddr, SecretRef};

/// Where the agent reads its configuration when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/keyward/keyward-agent.toml";

/// Longest virtual or backend token label (`CK_TOKEN_INFO.label` is 32 bytes).
const MAX_LABEL_LEN: usize = 32;

/// Why the configuration cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not have the expected shape; the
    /// message carries line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// The shape is right but a value is not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `[agent]` table.
    pub agent: AgentConfig,
    /// The `[[token]]` tables, in slot order.
    #[serde(rename = "token", default)]
    pub tokens: Vec<TokenConfig>,
    /// The `[audit]` table (every field has a default).
    #[serde(default)]
    pub audit: AuditConfig,
    /// The `[metrics]` table; absent: no metrics endpoint (the default).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The `[webhook]` table; absent: no notifications (the default).
    #[serde(default)]
    pub webhook: Option<crate::notify::WebhookConfig>,
    /// The `[postgres]` table: the shared store, with `store = "postgres"`.
    #[serde(default)]
    pub postgres: Option<crate::store::PostgresConfig>,
    /// The `[remote]` table; absent: no remote clients (the default).
    #[serde(default)]
    pub remote: Option<crate::listener::remote::RemoteConfig>,
}

/// The `[audit]` table: how the trail is written and sealed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A checkpoint after this many records (at least 1).
    pub checkpoint_events: u64,
    /// A checkpoint this many seconds after the last one when records came
    /// since (at least 1).
    pub checkpoint_seconds: u64,
    /// Whether cryptographic uses are recorded. Refusals, logins, lifecycle,
    /// admin and agent events always are. `false` exists to measure what
    /// recording uses costs; the agent warns at start when it is set.
    pub record_uses: bool,
    /// What happens to applications' operations while use records cannot be
    /// written: keep serving (`continue`) or refuse them (`refuse`). Admin
    /// and lifecycle actions are refused either way.
    pub on_write_failure: OnWriteFailure,
    /// Also send every record to syslog (facility authpriv), as one JSON
    /// object per message, after it is stored.
    pub syslog: bool,
    /// The syslog socket.
    pub syslog_socket: PathBuf,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_events: 1000,
            checkpoint_seconds: 60,
            record_uses: true,
            on_write_failure: OnWriteFailure::Continue,
            syslog: false,
            syslog_socket: PathBuf::from("/dev/log"),
        }
    }
}

/// `[audit] on_write_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnWriteFailure {
    /// Serve applications; the lost records are counted and the failure
    /// logged at error level until the trail is written again.
    Continue,
    /// Refuse applications' cryptographic operations
    /// (`CKR_FUNCTION_FAILED`) until the trail is written again.
    Refuse,
}

/// The `[metrics]` table: a Prometheus text-format endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served: a loopback address (127.0.0.0/8 or
    /// ::1) and a port; port 0 binds a free port, written to
    /// `metrics.addr` in the state directory.
    pub listen: ListenAddr,
}

/// The `[agent]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The application socket.
    pub socket: PathBuf,
    /// Its file mode, octal (`"0666"`).
    pub socket_mode: FileMode,
    /// The administrators' socket.
    pub admin_socket: PathBuf,
    /// Its file mode, octal (`"0660"`).
    pub admin_socket_mode: FileMode,
    /// The admin socket's group (a name or a number); its members, root
    /// and the agent's own user may use the admin socket. Absent: the
    /// agent's group.
    #[serde(default)]
    pub admin_socket_group: Option<String>,
    /// Application connections at once, in total (each holds a thread and
    /// two descriptors).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Application connections at once of one uid.
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// Whether peers in another mount namespace than the agent's (a
    /// container given the socket) may be served. Off: they are refused,
    /// since the executable path they show names a file of their own
    /// namespace.
    #[serde(default)]
    pub foreign_mount_namespaces: bool,
    /// Where PIN hashes and token state live (created 0700).
    pub state_dir: PathBuf,
    /// The policy file (see `policy/example-policy.toml`). Without one the
    /// agent runs the built-in lab policy: a plain PKCS#11 token for local
    /// peers running as root or as the agent's own user.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Where the inventory and the trail live: `"sqlite"` (the default,
    /// a file in `state_dir`) or `"postgres"` (the fleet's shared store,
    /// `[postgres]`).
    #[serde(default)]
    pub store: crate::store::StoreKind,
    /// How long a change of a managed key (a revocation, a suspension, any
    /// lifecycle change, also one another agent of the fleet made) waits
    /// for the uses of that key already running, in milliseconds (0 to
    /// 60000). A use still running then is checked again when it ends and
    /// withheld if the change refuses it.
    #[serde(default = "default_change_wait_ms")]
    pub change_wait_ms: u64,
}

fn default_change_wait_ms() -> u64 {
    crate::enforce::gate::DEFAULT_WAIT_MS
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_connections_per_uid() -> usize {
    256
}

/// One `[[token]]`: a virtual token and the backend token behind it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The label applications see.
    pub label: String,
    /// Path of the backend PKCS#11 library.
    pub library: PathBuf,
    /// The backend token's label (exactly one of this and `backend_serial`).
    pub backend_token_label: Option<String>,
    /// The backend token's serial number.
    pub backend_serial: Option<String>,
    /// Where the backend (HSM) user PIN comes from.
    pub backend_pin: SecretRef,
    /// Where the backend's security officer PIN comes from: needed only
    /// to mark keys `CKA_TRUSTED` (the backup key, the transport keys of
    /// `keyward key export`), which only the SO may do. The agent logs in
    /// as SO in a short-lived child process, never in its own sessions.
    #[serde(default)]
    pub backend_so_pin: Option<SecretRef>,
    /// Whether `C_InitToken` may clear this token (a lab setting).
    #[serde(default)]
    pub allow_init_token: bool,
}

/// How the backend token is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSelector {
    /// By token label.
    Label(String),
    /// By serial number.
    Serial(String),
}

impl AgentConfig {
    /// The application socket file.
    pub fn socket_spec(&self) -> crate::listener::sockets::SocketSpec {
        crate::listener::sockets::SocketSpec {
            path: self.socket.clone(),
            mode: self.socket_mode.0,
            gid: None,
        }
    }

    /// The admin socket file, with its group.
    pub fn admin_socket_spec(&self) -> crate::listener::sockets::SocketSpec {
        crate::listener::sockets::SocketSpec {
            path: self.admin_socket.clone(),
            mode: self.admin_socket_mode.0,
            gid: self.admin_gid(),
        }
    }

    /// The admin socket's group id (validated by [`Config::load`]).
    pub fn admin_gid(&self) -> Option<u32> {
        self.admin_socket_group
            .as_deref()
            .and_then(|g| crate::listener::sockets::group_id(g).ok())
    }

    /// What the listeners admit.
    pub fn limits(&self) -> crate::listener::admission::Limits {
        let d = crate::listener::admission::Limits::default();
        crate::listener::admission::Limits {
            app: crate::listener::admission::Caps {
                total: self.max_connections,
                per_uid: self.max_connections_per_uid,
            },
            foreign_mounts: self.foreign_mount_namespaces,
            admin_gid: self.admin_gid(),
            ..d
        }
    }
}

impl TokenConfig {
    /// How to find the backend token (validated by [`Config::load`]).
    pub fn selector(&self) -> BackendSelector {
        match (&self.backend_token_label, &self.backend_serial) {
            (Some(l), _) => BackendSelector::Label(l.clone()),
            (None, Some(s)) => BackendSelector::Serial(s.clone()),
            (None, None) => BackendSelector::Label(String::new()),
        }
    }
}

/// A file mode written as an octal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix("0o").unwrap_or(&s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(FileMode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "file mode {s:?} is not an octal mode like \"0660\""
            ))),
        }
    }
}

/// toml's message with line and column, but without the quoted source
/// line that toml's `Display` adds: that line may hold a secret someone
/// wrote inline by mistake.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(text, &e),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.audit.checkpoint_events == 0 {
            return Err("[audit] checkpoint_events must be at least 1".into());
        }
        if self.audit.checkpoint_seconds == 0 {
            return Err("[audit] checkpoint_seconds must be at least 1".into());
        }
        if self.tokens.is_empty() {
            return Err("no [[token]] is configured".into());
        }
        if self.agent.socket == self.agent.admin_socket {
            return Err("socket and admin_socket must be different paths".into());
        }
        if self.agent.max_connections == 0 || self.agent.max_connections_per_uid == 0 {
            return Err("max_connections and max_connections_per_uid must be at least 1".into());
        }
        if self.agent.change_wait_ms > crate::enforce::gate::MAX_WAIT_MS {
            return Err(format!(
                "[agent] change_wait_ms must be at most {} (it is {})",
                crate::enforce::gate::MAX_WAIT_MS,
                self.agent.change_wait_ms
            ));
        }
        if let Some(g) = &self.agent.admin_socket_group {
            crate::listener::sockets::group_id(g)
                .map_err(|e| format!("admin_socket_group: {e}"))?;
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let which = format!("[[token]] #{} ({:?})", i + 1, t.label);
            if t.label.is_empty() || t.label.len() > MAX_LABEL_LEN {
                return Err(format!("{which}: label must be 1 to 32 bytes"));
            }
            if self.tokens[..i].iter().any(|o| o.label == t.label) {
                return Err(format!("{which}: label is used by another token"));
            }
            match (&t.backend_token_label, &t.backend_serial) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(format!(
                        "{which}: give exactly one of backend_token_label and backend_serial"
                    ))
                }
                (Some(l), None) if l.is_empty() || l.len() > MAX_LABEL_LEN => {
                    return Err(format!(
                        "{which}: backend_token_label must be 1 to 32 bytes"
                    ))
                }
                (None, Some(s)) if s.is_empty() || s.len() > 16 => {
                    return Err(format!("{which}: backend_serial must be 1 to 16 bytes"))
                }
                _ => {}
            }
        }
        if let Some(w) = &self.webhook {
            w.validate()?;
        }
        match (self.agent.store, &self.postgres) {
            (crate::store::StoreKind::Postgres, Some(p)) => p.validate()?,
            (crate::store::StoreKind::Postgres, None) => {
                return Err("store = \"postgres\" needs a [postgres] table".into())
            }
            (crate::store::StoreKind::Sqlite, Some(_)) => {
                return Err(
                    "[postgres] is set but store is \"sqlite\": set store = \"postgres\" in [agent] or remove the table"
                        .into(),
                )
            }
            (crate::store::StoreKind::Sqlite, None) => {}
        }
        if let Some(m) = &self.metrics {
            // The endpoint has no authentication: it must not be reachable
            // from another host.
            if !m.listen.0.ip().is_loopback() {
                return Err(format!(
                    "[metrics] listen: {} is not a loopback address (127.0.0.0/8 or ::1); \
                     the metrics endpoint has no authentication and is served on loopback only",
                    m.listen.0
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agent]
socket = "/tmp/kw/keyward.sock"
socket_mode = "0666"
admin_socket = "/tmp/kw/admin.sock"
admin_socket_mode = "0660"
state_dir = "/tmp/kw/state"

[[token]]
label = "keyward"
library = "/usr/lib/softhsm/libsofthsm2.so"
backend_token_label = "kw-backend"
backend_pin = "file:/etc/keyward/backend.pin"
allow_init_token = true

[[token]]
label = "second"
library = "/usr/lib/softhsm/libsofthsm2.so"
backend_serial = "0123456789abcdef"
backend_pin = "env:KW_PIN"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/kw.toml"))
    }

    #[test]
    fn reference_shape_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.agent.socket_mode, FileMode(0o666));
        assert_eq!(c.agent.admin_socket_mode, FileMode(0o660));
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(
            c.tokens[0].selector(),
            BackendSelector::Label("kw-backend".into())
        );
        assert!(c.tokens[0].allow_init_token);
        assert!(!c.tokens[1].allow_init_token);
        assert_eq!(c.tokens[1].backend_pin, SecretRef::Env("KW_PIN".into()));
    }

    #[test]
    fn change_wait_ms_defaults_to_two_seconds_and_is_bounded() {
        assert_eq!(parse(GOOD).unwrap().agent.change_wait_ms, 2000);
        let with =
            |v: &str| GOOD.replace("state_dir =", &format!("change_wait_ms = {v}\nstate_dir ="));
        assert_eq!(parse(&with("0")).unwrap().agent.change_wait_ms, 0);
        assert_eq!(parse(&with("60000")).unwrap().agent.change_wait_ms, 60000);
        let msg = parse(&with("60001")).unwrap_err().to_string();
        assert!(
            msg.contains("change_wait_ms must be at most 60000"),
            "{msg}"
        );
        assert!(parse(&with("-1")).is_err());
    }

    #[test]
    fn the_shipped_reference_config_parses() {
        let text = include_str!("../keyward-agent.toml");
        parse(text).unwrap();
    }

    #[test]
    fn unknown_fields_are_refused_with_file_and_line() {
        let text = GOOD.replace("allow_init_token = true", "allow_init_tokens = true");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.starts_with("/etc/kw.toml: "), "{msg}");
        assert!(msg.contains("allow_init_tokens"), "{msg}");
        assert!(msg.contains("line 14"), "{msg}");
    }

    #[test]
    fn inline_secrets_are_refused_without_echoing_them() {
        let text = GOOD.replace("file:/etc/keyward/backend.pin", "123456");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("\"file:PATH\" or \"env:NAME\""), "{msg}");
        assert!(!msg.contains("123456"), "{msg}");
        let text = GOOD.replace("file:/etc/keyward/backend.pin", "file:");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn selectors_and_labels_are_checked() {
        let text = GOOD.replace(
            "backend_serial = \"0123456789abcdef\"",
            "backend_serial = \"0123456789abcdef\"\nbackend_token_label = \"x\"",
        );
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("exactly one of"), "{msg}");
        let text = GOOD.replace("label = \"second\"", "label = \"keyward\"");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("used by another"));
        let text = GOOD.replace("\"0660\"", "\"rw-rw----\"");
        assert!(parse(&text).unwrap_err().to_string().contains("octal"));
    }

    #[test]
    fn metrics_are_off_by_default_and_loopback_only() {
        assert!(parse(GOOD).unwrap().metrics.is_none());
        for ok in ["127.0.0.1:9466", "127.3.2.1:0", "[::1]:9466"] {
            let text = format!("{GOOD}\n[metrics]\nlisten = \"{ok}\"\n");
            let c = parse(&text).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.metrics.unwrap().listen.0, ok.parse().unwrap());
        }
        for bad in [
            "0.0.0.0:9466",
            "10.1.2.3:9466",
            "[::]:9466",
            "[::ffff:127.0.0.1]:9466",
        ] {
            let text = format!("{GOOD}\n[metrics]\nlisten = \"{bad}\"\n");
            let msg = parse(&text).unwrap_err().to_string();
            assert!(msg.starts_with("/etc/kw.toml: [metrics] listen: "), "{msg}");
            assert!(msg.contains("not a loopback address"), "{msg}");
        }
        let text = format!("{GOOD}\n[metrics]\nlisten = \"localhost:9466\"\n");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("not an IP address and port"), "{msg}");
        let text = format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:1\"\nport = 2\n");
        assert!(parse(&text).unwrap_err().to_string().contains("port"));
    }

    #[test]
    fn the_reference_metrics_table_parses_when_uncommented() {
        let text = include_str!("../keyward-agent.toml")
            .replace("# [metrics]", "[metrics]")
            .replace("# listen = ", "listen = ");
        let c = parse(&text).unwrap();
        assert_eq!(
            c.metrics.unwrap().listen.0,
            "127.0.0.1:9466".parse().unwrap()
        );
    }

    #[test]
    fn the_reference_webhook_table_parses_when_uncommented() {
        let text = include_str!("../keyward-agent.toml");
        let start = text.find("# [webhook]").unwrap();
        // The table's lines run to the next blank line.
        let end = text[start..].find("\n\n").map_or(text.len(), |i| start + i);
        let mut uncommented = text[..start].to_owned();
        for line in text[start..end].lines() {
            let line = line.strip_prefix("# ").unwrap_or(line);
            if line.starts_with('[') || line.contains(" = ") {
                uncommented.push_str(line);
                uncommented.push('\n');
            }
        }
        // The token file of the reference does not exist here.
        let uncommented = uncommented.replace("bearer_token_file = ", "# ");
        let c = parse(&uncommented).unwrap();
        let w = c.webhook.unwrap();
        assert_eq!(w.url, "https://alerts.example.org/keyward");
        assert_eq!((w.timeout_seconds, w.retries, w.backoff_ms), (5, 3, 1000));
        assert_eq!(
            (w.queue, w.check_seconds, w.overdue_grace_seconds),
            (256, 60, 900)
        );
        assert!(parse(GOOD).unwrap().webhook.is_none());
    }

    #[test]
    fn the_reference_postgres_table_parses_when_uncommented() {
        let text = include_str!("../keyward-agent.toml");
        let start = text.find("# [postgres]").unwrap();
        let mut uncommented = text[..start].replace("# store = \"sqlite\"", "store = \"postgres\"");
        for line in text[start..].lines() {
            let line = line.strip_prefix("# ").unwrap_or(line);
            if line.starts_with('[') || line.contains(" = ") {
                uncommented.push_str(line);
                uncommented.push('\n');
            }
        }
        let c = parse(&uncommented).unwrap();
        assert_eq!(c.agent.store, crate::store::StoreKind::Postgres);
        let pg = c.postgres.unwrap();
        assert_eq!((pg.lease_seconds, pg.connect_timeout_seconds), (5, 3));
        assert_eq!(pg.host_name().unwrap(), "web-01");
        assert!(parse(GOOD).unwrap().postgres.is_none());
    }

    #[test]
    fn a_bad_webhook_table_names_the_file_and_the_field() {
        let text = format!("{GOOD}\n[webhook]\nurl = \"gopher://example.org/\"\n");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(
            msg.starts_with("/etc/kw.toml: [webhook] url: ") && msg.contains("not http or https"),
            "{msg}"
        );
        let text = format!("{GOOD}\n[webhook]\nurl = \"http://127.0.0.1:1/\"\nretry = 1\n");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("unknown field `retry`"), "{msg}");
    }

    #[test]
    fn secrets_are_read_by_reference() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\nignored\n").unwrap();
        assert_eq!(&SecretRef::File(p.clone()).read().unwrap()[..], b"1234");
        std::fs::write(&p, "\n").unwrap();
        assert!(SecretRef::File(p).read().unwrap_err().contains("empty"));
        let e = SecretRef::Env("KEYWARD_TEST_SURELY_UNSET_VAR".into())
            .read()
            .unwrap_err();
        assert!(e.contains("KEYWARD_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn the_audit_table_has_defaults_and_checks_its_values() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.audit, AuditConfig::default());
        let text = format!(
            "{GOOD}\n[audit]\ncheckpoint_events = 10\ncheckpoint_seconds = 5\n\
             record_uses = false\non_write_failure = \"refuse\"\nsyslog = true\n\
             syslog_socket = \"/run/log.sock\"\n"
        );
        let a = parse(&text).unwrap().audit;
        assert_eq!((a.checkpoint_events, a.checkpoint_seconds), (10, 5));
        assert!(!a.record_uses && a.syslog);
        assert_eq!(a.on_write_failure, OnWriteFailure::Refuse);
        assert_eq!(a.syslog_socket, PathBuf::from("/run/log.sock"));
        for (bad, says) in [
            ("checkpoint_events = 0", "checkpoint_events"),
            ("checkpoint_seconds = 0", "checkpoint_seconds"),
            ("on_write_failure = \"drop\"", "unknown variant"),
            ("checkpoint_every = 3", "unknown field"),
        ] {
            let msg = parse(&format!("{GOOD}\n[audit]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(says) && msg.contains("/etc/kw.toml"),
                "{bad}: {msg}"
            );
        }
    }
}
