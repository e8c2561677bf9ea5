//! The connector of `[postgres]`: the server, role and password, and TLS
//! with rustls (the server's certificate checked against `ca_file`, its
//! name against the URL's host; an optional client certificate).

use std::sync::Arc;
use std::time::Duration;

use crate::tls::{read_certificates, read_private_key};
use keyward_inventory::postgres::Connector;
use postgres::config::SslMode;
use postgres::NoTls;

use super::config::{PostgresConfig, TlsMode};

/// The connector `config` describes; reads the password and the TLS files
/// once (the agent's start), naming the file and the problem on failure.
pub fn connector(config: &PostgresConfig) -> Result<Connector, String> {
    let mut settings = config.connection()?;
    if let Some(secret) = &config.password {
        let password = secret
            .read()
            .map_err(|e| format!("[postgres] password: {e}"))?;
        settings.password(&*password);
    }
    let lease = config.lease();
    settings
        .connect_timeout(Duration::from_secs(config.connect_timeout_seconds))
        // A peer that vanished (no RST) is noticed within the lease.
        .tcp_user_timeout(lease)
        .keepalives(true)
        .keepalives_idle(lease.max(Duration::from_secs(1)))
        .application_name("keyward-agent");
    match config.tls {
        TlsMode::Disable => {
            settings.ssl_mode(SslMode::Disable);
            Ok(Arc::new(move || settings.connect(NoTls)))
        }
        TlsMode::VerifyFull => {
            // Never plain text, whatever the URL says.
            settings.ssl_mode(SslMode::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(config)?);
            Ok(Arc::new(move || settings.connect(tls.clone())))
        }
    }
}

/// rustls's client configuration for `config` (ring, TLS 1.2 and 1.3).
fn client_config(config: &PostgresConfig) -> Result<rustls::ClientConfig, String> {
    let ca = config
        .ca_file
        .as_deref()
        .ok_or("[postgres] tls = \"verify-full\" needs ca_file")?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = read_certificates("[postgres] ca_file", ca)?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "[postgres] ca_file {}: no usable CA certificate",
            ca.display()
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("[postgres] TLS: {e}"))?
        .with_root_certificates(roots);
    match (&config.client_certificate, &config.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certificates("[postgres] client_certificate", cert)?;
            let key = read_private_key("[postgres] client_key", key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("[postgres] client_certificate and client_key: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
