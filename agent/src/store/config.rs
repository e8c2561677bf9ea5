//! `store = "postgres"` in `[agent]` and the `[postgres]` table: how the
//! agent reaches the fleet's shared store.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::SecretRef;

/// Which store holds the inventory and the trail (`[agent] store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One SQLite file in the state directory (the default: one host).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by the fleet's agents (`[postgres]`).
    Postgres,
}

/// Whether the connection to the server is TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// TLS, the server's certificate checked against `ca_file` and its
    /// name against the host of `url` (the default).
    #[default]
    VerifyFull,
    /// No TLS: only for a server on a loopback address or a Unix socket.
    Disable,
}

/// `[postgres]`: required with `store = "postgres"`, refused without.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The server, role and database, as a `postgresql://` URL or libpq's
    /// `key=value` form, without a password.
    pub url: String,
    /// The role's password (`file:PATH` or `env:NAME`); absent: none.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// `verify-full` (the default) or `disable`.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM certificates of the CAs the server's certificate must chain to
    /// (required with `tls = "verify-full"`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM chain) for servers that require one;
    /// with `client_key`.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// Its private key (PEM; mode 0600 or 0400).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// This agent's name in the shared trail; absent: the machine's host
    /// name.
    #[serde(default)]
    pub host: Option<String>,
    /// How long what the agent caches stays in force without word from the
    /// store, in seconds (1-300). Past it, protect operations with managed
    /// keys and administrator actions are refused until the store answers
    /// again.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    /// How long a connection attempt may take, in seconds (1-60).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
}

fn default_lease() -> u64 {
    5
}

fn default_connect_timeout() -> u64 {
    3
}

use keyward_inventory::postgres::MAX_HOST_LEN;

impl PostgresConfig {
    /// The parsed `url`, or why it is refused. Never echoes the URL: it
    /// may hold a password someone put there by mistake.
    pub fn connection(&self) -> Result<postgres::Config, String> {
        let config = postgres::Config::from_str(&self.url).map_err(|e| {
            format!(
                "[postgres] url does not parse: {}",
                strip_url(&e.to_string(), &self.url)
            )
        })?;
        if config.get_password().is_some() {
            return Err(
                "[postgres] url holds a password: give it with password = \"file:PATH\" instead"
                    .into(),
            );
        }
        if config.get_hosts().is_empty() {
            return Err("[postgres] url names no host".into());
        }
        if config.get_user().is_none() {
            return Err("[postgres] url names no user".into());
        }
        Ok(config)
    }

    /// Whether every host of `config` is a loopback address or a Unix
    /// socket directory (where `tls = "disable"` is allowed).
    fn local_only(config: &postgres::Config) -> bool {
        config.get_hosts().iter().all(|h| match h {
            postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            postgres::config::Host::Unix(_) => true,
        })
    }

    /// The host name the agent writes in the trail.
    pub fn host_name(&self) -> Result<String, String> {
        let name = match &self.host {
            Some(h) => h.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| {
                    format!(
                        "[postgres] host: the machine's host name cannot be read ({e}); set host"
                    )
                })?
                .into_string()
                .map_err(|_| {
                    "[postgres] host: the machine's host name is not UTF-8; set host".to_string()
                })?,
        };
        if name.is_empty()
            || name.chars().count() > MAX_HOST_LEN
            || name.chars().any(char::is_control)
        {
            return Err(format!(
                "[postgres] host must be 1 to {MAX_HOST_LEN} characters without control characters"
            ));
        }
        Ok(name)
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }

    /// Checks the table (files are read when the agent starts).
    pub fn validate(&self) -> Result<(), String> {
        let config = self.connection()?;
        if !(1..=300).contains(&self.lease_seconds) {
            return Err(format!(
                "[postgres] lease_seconds = {}: give 1 to 300",
                self.lease_seconds
            ));
        }
        if !(1..=60).contains(&self.connect_timeout_seconds) {
            return Err(format!(
                "[postgres] connect_timeout_seconds = {}: give 1 to 60",
                self.connect_timeout_seconds
            ));
        }
        match self.tls {
            TlsMode::VerifyFull if self.ca_file.is_none() => {
                return Err("[postgres] tls = \"verify-full\" needs ca_file (the server's CA)".into())
            }
            TlsMode::Disable if !Self::local_only(&config) => {
                return Err(
                    "[postgres] tls = \"disable\" is allowed only for a server on a loopback address or a Unix socket"
                        .into(),
                )
            }
            _ => {}
        }
        if self.client_certificate.is_some() != self.client_key.is_some() {
            return Err("[postgres] give client_certificate and client_key together".into());
        }
        if self.tls == TlsMode::Disable && self.client_certificate.is_some() {
            return Err("[postgres] client_certificate needs tls = \"verify-full\"".into());
        }
        self.host_name()?;
        Ok(())
    }
}

/// `message` with `url` cut out, should the parser have quoted it.
fn strip_url(message: &str, url: &str) -> String {
    if url.is_empty() {
        message.to_owned()
    } else {
        message.replace(url, "(the url)")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const AGENT: &str = r#"
[agent]
socket = "/tmp/kw/keyward.sock"
socket_mode = "0666"
admin_socket = "/tmp/kw/admin.sock"
admin_socket_mode = "0660"
state_dir = "/tmp/kw/state"
STORE

[[token]]
label = "keyward"
library = "/usr/lib/softhsm/libsofthsm2.so"
backend_token_label = "kw-backend"
backend_pin = "file:/etc/keyward/backend.pin"
"#;

    fn parse(store: &str, table: &str) -> Result<Config, String> {
        let text = format!("{}{table}", AGENT.replace("STORE", store));
        Config::parse(&text, Path::new("/etc/keyward/keyward-agent.toml"))
            .map_err(|e| e.to_string())
    }

    const PG: &str = "\n[postgres]\nurl = \"host=db.example user=keyward dbname=keyward\"\n\
                      password = \"file:/etc/keyward/store.password\"\nca_file = \"/etc/keyward/ca.pem\"\n\
                      host = \"web-01\"\n";

    #[test]
    fn sqlite_is_the_default_and_postgres_needs_its_table() {
        let c = parse("", "").unwrap();
        assert_eq!(c.agent.store, super::StoreKind::Sqlite);
        let c = parse("store = \"postgres\"", PG).unwrap();
        assert_eq!(c.agent.store, super::StoreKind::Postgres);
        let pg = c.postgres.unwrap();
        assert_eq!(pg.tls, super::TlsMode::VerifyFull);
        assert_eq!(pg.lease_seconds, 5);
        assert_eq!(pg.host_name().unwrap(), "web-01");
        let e = parse("store = \"postgres\"", "").unwrap_err();
        assert!(e.contains("needs a [postgres] table"), "{e}");
        let e = parse("", PG).unwrap_err();
        assert!(e.contains("store is \"sqlite\""), "{e}");
        let e = parse("store = \"mysql\"", PG).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn a_bad_postgres_table_is_refused_saying_why_and_never_echoing_a_password() {
        let with = |from: &str, to: &str| {
            parse("store = \"postgres\"", &PG.replace(from, to)).unwrap_err()
        };
        let e = with("user=keyward", "user=keyward password=s3cret");
        assert!(
            e.contains("holds a password") && !e.contains("s3cret"),
            "{e}"
        );
        let e = with(
            "host=db.example user=keyward",
            "postgresql://keyward:s3cret@db.example/keyward?x=1",
        );
        assert!(!e.contains("s3cret"), "{e}");
        let e = with("ca_file = \"/etc/keyward/ca.pem\"\n", "");
        assert!(e.contains("needs ca_file"), "{e}");
        let e = with("ca_file = \"/etc/keyward/ca.pem\"\n", "tls = \"disable\"\n");
        assert!(e.contains("only for a server on a loopback"), "{e}");
        let e = with(
            "host = \"web-01\"\n",
            "host = \"web-01\"\nlease_seconds = 0\n",
        );
        assert!(e.contains("lease_seconds = 0"), "{e}");
        let e = with(
            "host = \"web-01\"\n",
            "host = \"web-01\"\nclient_key = \"/k\"\n",
        );
        assert!(e.contains("together"), "{e}");
        let e = with(
            "host = \"web-01\"\n",
            &format!("host = \"{}\"\n", "h".repeat(300)),
        );
        assert!(e.contains("1 to 255"), "{e}");
        let e = with("host = \"web-01\"\n", "host = \"web-01\"\nretries = 3\n");
        assert!(e.contains("unknown field"), "{e}");
        let e = with("dbname=keyward", "dbname=keyward bogus=1");
        assert!(e.contains("url does not parse"), "{e}");
        // Loopback and Unix sockets may go without TLS.
        for url in [
            "host=127.0.0.1 user=k",
            "host=/run/postgresql user=k",
            "host=localhost user=k",
        ] {
            let table = PG
                .replace("host=db.example user=keyward dbname=keyward", url)
                .replace("ca_file = \"/etc/keyward/ca.pem\"\n", "tls = \"disable\"\n");
            parse("store = \"postgres\"", &table).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }
}
