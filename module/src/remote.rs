//! A remote agent: `KEYWARD_AGENT=tls://host:port`, reached over TCP with
//! mutual TLS (rustls, the `ring` provider). `KEYWARD_TLS_CERT` and
//! `KEYWARD_TLS_KEY` are this client's certificate chain and key (PEM),
//! `KEYWARD_TLS_CA` the CA that issued the agent's certificate (PEM); the
//! name checked in the agent's certificate is the URL's host (a DNS name or
//! an IP address).
//!
//! The settings are read once, at `C_Initialize`. When they are wrong
//! (a bad URL, a missing or unreadable file, bad PEM), the module never
//! falls back to the local socket: every connection fails, the slot shows
//! no token, and the log says which variable or file and why.

use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use zeroize::Zeroizing;

/// A TLS connection to the agent.
pub(crate) type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// The remote agent and how to reach it.
#[derive(Debug)]
pub(crate) struct Remote {
    /// `KEYWARD_AGENT` as given.
    url: String,
    /// The parsed settings, or why they cannot be used.
    setup: Result<Setup, String>,
}

#[derive(Debug)]
struct Setup {
    host: String,
    port: u16,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl Remote {
    /// From the environment: `None` when `KEYWARD_AGENT` is unset or empty
    /// (the local socket is used).
    pub(crate) fn from_env() -> Option<Remote> {
        let url = std::env::var("KEYWARD_AGENT")
            .ok()
            .filter(|v| !v.trim().is_empty())?;
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} is not set (needed with KEYWARD_AGENT={url})"))
        };
        let setup = parse_url(&url).and_then(|(host, port)| {
            let (cert, key, ca) = (
                var("KEYWARD_TLS_CERT")?,
                var("KEYWARD_TLS_KEY")?,
                var("KEYWARD_TLS_CA")?,
            );
            let tls = client_config(Path::new(&cert), Path::new(&key), Path::new(&ca))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("KEYWARD_AGENT={url}: {host:?} is not a host name: {e}"))?;
            Ok(Setup {
                host,
                port,
                name,
                tls,
            })
        });
        if let Err(e) = &setup {
            log::error!("remote agent: {e}; the slot shows no token");
        }
        Some(Remote { url, setup })
    }

    /// A TCP connection with the TLS handshake done, every wait bounded by
    /// `timeout`.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<TlsStream, String> {
        let setup = self.setup.as_ref().map_err(Clone::clone)?;
        let addrs = (setup.host.as_str(), setup.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", setup.host))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut tcp = tcp.ok_or_else(|| format!("connect: {last}"))?;
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .and_then(|()| tcp.set_nodelay(true))
            .map_err(|e| format!("socket options: {e}"))?;
        let mut conn = ClientConnection::new(setup.tls.clone(), setup.name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        Ok(StreamOwned::new(conn, tcp))
    }
}

/// `tls://host:port` (`[v6 address]:port` too).
fn parse_url(url: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("KEYWARD_AGENT={url}: {why} (expected tls://HOST:PORT)");
    let rest = url
        .strip_prefix("tls://")
        .ok_or_else(|| bad("only tls:// is supported"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', '[', ']']) {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port))
}

/// The client settings: the agent's CA as the only root, this client's
/// certificate and key.
fn client_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca, "KEYWARD_TLS_CA")? {
        roots
            .add(c)
            .map_err(|e| format!("KEYWARD_TLS_CA {}: not a CA certificate: {e}", ca.display()))?;
    }
    let chain = certificates(cert, "KEYWARD_TLS_CERT")?;
    let what = |m: &dyn fmt::Display| format!("KEYWARD_TLS_KEY {}: {m}", key.display());
    let pem = Zeroizing::new(std::fs::read(key).map_err(|e| what(&e))?);
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            what(&"no PRIVATE KEY block (PKCS#8, RSA or EC) in the file")
        }
        e => what(&format!("bad PEM: {e}")),
    })?;
    let config = ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "KEYWARD_TLS_CERT {} with KEYWARD_TLS_KEY {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// rustls' `ring` provider. Deprecated since rustls 0.23.48 because ring
/// has no post-quantum key exchange; the provider that has one (aws-lc-rs)
/// needs a C toolchain keyward does not depend on.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path, var: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = |m: &dyn fmt::Display| format!("{var} {}: {m}", path.display());
    let pem = std::fs::read(path).map_err(|e| what(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(what(&"no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_url_is_tls_host_port() {
        assert_eq!(
            parse_url("tls://agent.example:7443"),
            Ok(("agent.example".into(), 7443))
        );
        assert_eq!(parse_url("tls://[::1]:7443"), Ok(("::1".into(), 7443)));
        assert_eq!(parse_url("tls://127.0.0.1:1"), Ok(("127.0.0.1".into(), 1)));
        for bad in [
            "tcp://h:1",
            "tls://h",
            "tls://h:0",
            "tls://h:x",
            "tls://:7443",
            "tls://u@h:1",
            "tls://h/p:1",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.contains("expected tls://HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn missing_or_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("kw-remote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem at all\n").unwrap();
        let missing = dir.join("missing.pem");
        let e = client_config(&junk, &junk, &missing).unwrap_err();
        assert!(e.starts_with("KEYWARD_TLS_CA"), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
        let e = client_config(&junk, &junk, &junk).unwrap_err();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
