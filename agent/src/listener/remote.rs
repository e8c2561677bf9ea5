//! Remote application clients: the module on another host reaches the agent
//! over TCP with mutual TLS (`[remote]` in the agent configuration).
//!
//! - The agent's certificate chain and key, and the CA whose client
//!   certificates are admitted, are read at start; a client certificate is
//!   required (`WebPkiClientVerifier`): no certificate, one from another
//!   CA, an expired one: the handshake fails and nothing is served.
//! - The verified client certificate stands in for the peer credentials of
//!   the Unix socket: only policy entries that name a certificate
//!   (`certificate_subject`, `certificate_sha256`) match a remote peer, and
//!   there is no lab fallback. A remote peer is one client per connection.
//! - The accept loop never does TLS: each accepted connection takes a place
//!   under the application caps (all remote peers count as one uid,
//!   [`REMOTE_UID`]) and a thread of its own, whose handshake must end
//!   within [`HANDSHAKE_TIME`].
//! - The frames are those of the Unix socket, inside the TLS stream.

use std::io::{self, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::tls::{read_certificates, read_private_key};
use keyward_protocol::frame::{read_message_within, write_message, FrameError};
use keyward_protocol::{Request, Response, APP_VERSIONS};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::identity::{ClientKey, Peer};
use super::{lock, report, Server, FRAME_BOUNDS, HELLO_BOUNDS, READ_TIMEOUT, WRITE_TIMEOUT};
use crate::settings::ListenAddr;

/// The uid a remote peer has in the agent's tables and the audit trail:
/// `(uid_t)-1`, which no process can run as. Its gid is the same, its pid
/// is 0 (no process of this host).
pub const REMOTE_UID: u32 = u32::MAX;

/// How long a remote peer has, from its connection, to finish the TLS
/// handshake.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(5);

/// The `[remote]` table: remote clients over TCP with mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The address and port to listen on (`"0.0.0.0:7443"`).
    pub listen: ListenAddr,
    /// The agent's certificate chain, PEM, its own certificate first.
    pub certificate: PathBuf,
    /// The agent's private key, PEM (PKCS#8, PKCS#1 or SEC1); the file
    /// must be owned by the agent's user and readable by nobody else.
    pub key: PathBuf,
    /// The CA certificates, PEM, whose client certificates are admitted.
    pub client_ca: PathBuf,
}

/// The remote listener, bound, with its TLS settings.
#[derive(Debug)]
pub struct RemoteListener {
    /// The bound socket.
    pub listener: TcpListener,
    /// The TLS server settings.
    pub tls: Arc<ServerConfig>,
}

impl RemoteConfig {
    /// Reads the certificates and key and binds the address. Every problem
    /// names the file (or the address) and what is wrong with it, never
    /// the key's content.
    pub fn open(&self) -> Result<RemoteListener, String> {
        let tls = self.server_config()?;
        let listener = TcpListener::bind(self.listen.0)
            .map_err(|e| format!("[remote] listen = \"{}\": {e}", self.listen.0))?;
        Ok(RemoteListener { listener, tls })
    }

    /// The TLS server settings: TLS 1.2 and 1.3 with the `ring` provider,
    /// client certificates required and verified against `client_ca`.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let chain = read_certificates("[remote] certificate", &self.certificate)?;
        let key = read_private_key("[remote] key", &self.key)?;
        let mut roots = RootCertStore::empty();
        for ca in read_certificates("[remote] client_ca", &self.client_ca)? {
            roots.add(ca).map_err(|e| {
                format!(
                    "[remote] client_ca {}: not a usable CA certificate: {e}",
                    self.client_ca.display()
                )
            })?;
        }
        let provider = crate::tls::provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("[remote] client_ca {}: {e}", self.client_ca.display()))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("[remote]: TLS settings: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!(
                    "[remote] certificate {} and key {}: {e}",
                    self.certificate.display(),
                    self.key.display()
                )
            })?;
        Ok(Arc::new(config))
    }
}

/// A remote peer's identity from its verified certificate: the subject in
/// RFC 4514 form and the SHA-256 digest of the DER, lowercase hex.
pub fn certificate_identity(cert: &CertificateDer<'_>) -> (String, String) {
    use x509_cert::der::Decode;
    let sha256 = hex::encode(Sha256::digest(cert.as_ref()));
    let subject = x509_cert::Certificate::from_der(cert.as_ref())
        .map(|c| c.tbs_certificate.subject.to_string())
        .unwrap_or_default();
    (subject, sha256)
}

/// The [`Peer`] a remote client is in the agent's tables and the audit
/// trail: pid 0, uid and gid [`REMOTE_UID`], `serial` its connection's
/// number (as the client key's start time: one client per connection), and
/// as executable `tls://IP subject sha256:HEX`.
pub fn remote_peer(ip: IpAddr, subject: &str, sha256: &str, serial: u64) -> Peer {
    let who = if subject.is_empty() {
        String::new()
    } else {
        format!(" {subject}")
    };
    Peer {
        key: ClientKey {
            pid: 0,
            start_time: serial,
        },
        uid: REMOTE_UID,
        gid: REMOTE_UID,
        exe: Some(PathBuf::from(format!("tls://{ip}{who} sha256:{sha256}"))),
        exe_id: None,
        foreign_mounts: false,
    }
}

/// The peer a failed handshake is recorded as (merged per address).
fn unverified_peer(ip: IpAddr) -> Peer {
    Peer {
        key: ClientKey {
            pid: 0,
            start_time: 0,
        },
        uid: REMOTE_UID,
        gid: REMOTE_UID,
        exe: Some(PathBuf::from(format!(
            "tls://{ip} (no verified certificate)"
        ))),
        exe_id: None,
        foreign_mounts: false,
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

impl Server {
    /// Starts the accept loop of the remote listener, if one was given.
    pub(super) fn spawn_remote(self: &Arc<Server>) -> Option<thread::JoinHandle<()>> {
        let remote = lock(&self.remote).take()?;
        match remote.listener.try_clone() {
            Ok(c) => lock(&self.listeners).push(c.into()),
            Err(e) => log::warn!("cannot keep the remote listener for shutdown: {e}"),
        }
        let me = self.clone();
        thread::Builder::new()
            .name("remote-accept".into())
            .spawn(move || me.accept_remote(remote))
            .map_err(|e| log::error!("cannot start the remote accept thread: {e}"))
            .ok()
    }

    fn accept_remote(self: &Arc<Server>, remote: RemoteListener) {
        let mut failures = super::AcceptFailures::default();
        for stream in remote.listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let Some(stream) = failures.take(stream, "remote ") else {
                continue;
            };
            let Ok(addr) = stream.peer_addr() else {
                continue;
            };
            // Before any byte is read: a place under the caps (every remote
            // peer counts as one uid) and a thread of its own.
            let ticket = match self.app_admission.enter(REMOTE_UID) {
                Ok(t) => t,
                Err(full) => {
                    self.over_limit(&unverified_peer(addr.ip()), full);
                    continue;
                }
            };
            let Some(id) = self.conns.add(&stream) else {
                continue;
            };
            let me = self.clone();
            let tls = remote.tls.clone();
            let spawned = thread::Builder::new()
                .name(format!("remote-{id}"))
                .spawn(move || {
                    me.take_remote(stream, addr, tls, id);
                    me.conns.remove(id);
                    drop(ticket);
                });
            if let Err(e) = spawned {
                log::warn!("cannot start a remote connection thread: {e}");
                self.conns.remove(id);
            }
        }
    }

    /// A remote connection's thread: the handshake (bounded in time), the
    /// peer's application from its certificate, then the frames.
    fn take_remote(&self, tcp: TcpStream, addr: SocketAddr, tls: Arc<ServerConfig>, id: u64) {
        let mut stream = match handshake(tcp, tls) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("tls://{addr}: handshake failed: {e}");
                self.metrics.peer_refused();
                if let Some(r) = self
                    .refusals
                    .note(&unverified_peer(addr.ip()), "TLS handshake failed")
                {
                    log::warn!(
                        "tls://{addr}: refused: TLS handshake failed: {e} ({} refusals since the last report)",
                        r.count
                    );
                    self.agent.audit_refused_peer(&r);
                }
                return;
            }
        };
        let Some(cert) = stream.conn.peer_certificates().and_then(|c| c.first()) else {
            // The verifier requires one; never served without.
            return;
        };
        let (subject, sha256) = certificate_identity(cert);
        let peer = remote_peer(addr.ip(), &subject, &sha256, id + 1);
        let application = self
            .agent
            .policy()
            .application_for_certificate(&subject, &sha256)
            .map(|a| a.name.clone());
        let Some(application) = application else {
            let why = "no application of the policy names this client certificate";
            self.metrics.peer_refused();
            if let Some(r) = self.refusals.note(&peer, why) {
                log::warn!(
                    "tls://{addr} {subject} sha256:{sha256}: refused: {why} ({} refusals since the last report)",
                    r.count
                );
                self.agent.audit_refused_peer(&r);
            }
            // Its `Hello` gets no token, as a refused local peer's does.
            let mut buf = Vec::new();
            if let Ok(Request::Hello { .. }) =
                read_message_within(&mut stream, &mut buf, HELLO_BOUNDS)
            {
                let refusal = Response::Err(cryptoki_sys::CKR_TOKEN_NOT_PRESENT);
                let _ = write_message(&mut stream, &refusal, &mut buf);
            }
            return;
        };
        log::debug!("tls://{addr}: {subject} sha256:{sha256} is application {application:?}");
        self.serve_remote(stream, &peer, id, application);
    }

    /// Serves a remote peer's frames: its `Hello`, then one request and
    /// one answer at a time, as on the Unix socket.
    fn serve_remote(&self, stream: Tls, peer: &Peer, conn: u64, application: String) {
        let mut reader = BufReader::with_capacity(16 << 10, stream);
        let (mut rbuf, mut wbuf) = (Vec::new(), Vec::new());
        match read_message_within::<_, Request>(&mut reader, &mut rbuf, HELLO_BOUNDS) {
            Ok(Request::Hello { versions }) => {
                let answer = self.agent.hello(versions);
                if write_message(reader.get_mut(), &answer, &mut wbuf).is_err() {
                    return;
                }
                if APP_VERSIONS.pick(versions).is_err() {
                    log::warn!("{peer}: no common application protocol version; closing");
                    return;
                }
            }
            Ok(_) => {
                log::warn!("{peer}: first message was not Hello, closing");
                return;
            }
            Err(e) => {
                report(peer, &e);
                return;
            }
        }
        let _counted = self.metrics.connection();
        let client = self.agent.connect(peer.clone(), application);
        loop {
            let req = match read_message_within::<_, Request>(&mut reader, &mut rbuf, FRAME_BOUNDS)
            {
                Ok(r) => r,
                Err(FrameError::Idle) => continue,
                Err(e) => {
                    report(peer, &e);
                    break;
                }
            };
            let started = Instant::now();
            let call = req.call();
            let resp = self.agent.handle(&client, req);
            self.metrics.record(conn, call, &resp, started.elapsed());
            if let Err(e) = write_message(reader.get_mut(), &resp, &mut wbuf) {
                report(peer, &e);
                break;
            }
            if rbuf.capacity() > 1 << 20 {
                rbuf = Vec::new();
            }
            if wbuf.capacity() > 1 << 20 {
                wbuf = Vec::new();
            }
        }
        self.agent.disconnect(&client);
    }
}

/// The server side of the handshake, within [`HANDSHAKE_TIME`] of its
/// start; then the connection's usual timeouts.
fn handshake(mut tcp: TcpStream, tls: Arc<ServerConfig>) -> io::Result<Tls> {
    let deadline = Instant::now() + HANDSHAKE_TIME;
    let mut conn = ServerConnection::new(tls).map_err(io::Error::other)?;
    tcp.set_nodelay(true)?;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the handshake took too long",
            ));
        }
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        conn.complete_io(&mut tcp)?;
    }
    tcp.set_read_timeout(Some(READ_TIMEOUT))?;
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(StreamOwned::new(conn, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    #[test]
    fn a_remote_peer_cannot_be_mistaken_for_a_local_one() {
        let p = remote_peer("192.0.2.7".parse().unwrap(), "CN=web-1", "ab", 3);
        assert_eq!((p.key.pid, p.uid, p.gid), (0, u32::MAX, u32::MAX));
        assert_eq!(p.key.start_time, 3);
        assert_eq!(
            p.exe.as_deref(),
            Some(Path::new("tls://192.0.2.7 CN=web-1 sha256:ab"))
        );
        assert!(p.exe_id.is_none());
        assert!(!p.runs(Path::new("/proc/self/exe")));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        std::fs::write(
            &key,
            "-----BEGIN CERTIFICATE-----\nc2VjcmV0\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_private_key("[remote] key", &key).unwrap_err();
        assert!(e.contains("agent.key") && e.contains("mode 0640"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Readable now; its content is not a key, and is not echoed.
        let e = read_private_key("[remote] key", &key).unwrap_err();
        assert!(e.contains("no PRIVATE KEY block"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let missing =
            read_certificates("[remote] client_ca", &dir.path().join("none.pem")).unwrap_err();
        assert!(missing.starts_with("[remote] client_ca "), "{missing}");
    }

    #[test]
    fn the_reference_remote_table_parses_when_uncommented() {
        let text = include_str!("../../keyward-agent.toml");
        let start = text.find("# [remote]").unwrap();
        // The table's lines run to the next blank line.
        let end = text[start..].find("\n\n").map_or(text.len(), |i| start + i);
        let mut t = text[..start].to_owned();
        for line in text[start..end].lines() {
            t.push_str(line.strip_prefix("# ").unwrap_or(line));
            t.push('\n');
        }
        let c: crate::config::Config = toml::from_str(&t).unwrap();
        let r = c.remote.unwrap();
        assert_eq!(r.listen.0, "0.0.0.0:7443".parse().unwrap());
        assert_eq!(r.client_ca, Path::new("/etc/keyward/tls/clients-ca.pem"));
    }
}
