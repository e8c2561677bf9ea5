//! What the agent's two TLS ends share (the shared store's client,
//! `store::connect`, and the remote clients' server,
//! `listener::remote`): rustls's provider, and PEM certificates and
//! private keys read from files with errors that name the setting and the
//! file, never the key.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// rustls' `ring` provider, the one the whole build uses (the webhook's
/// client too). Deprecated since rustls 0.23.48 because ring has no
/// post-quantum key exchange; the provider that has one (aws-lc-rs) needs
/// a C toolchain keyward does not depend on.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of the PEM file `path` given as `setting` (e.g.
/// `[remote] client_ca`): at least one, every block well formed.
pub fn read_certificates(
    setting: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = |m: &dyn std::fmt::Display| format!("{setting} {}: {m}", path.display());
    let pem = std::fs::read(path).map_err(|e| what(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(what(&"no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The private key of the PEM file `path` given as `setting`: the file
/// must be owned by the agent's user and readable by nobody else (mode
/// 0600 or 0400), else it is refused before it is read.
pub fn read_private_key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let what = |m: &dyn std::fmt::Display| format!("{setting} {}: {m}", path.display());
    crate::settings::check_private_file(setting, path)?;
    let pem = Zeroizing::new(std::fs::read(path).map_err(|e| what(&e))?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            what(&"no PRIVATE KEY block (PKCS#8, RSA or EC) in the file")
        }
        e => what(&format!("bad PEM: {e}")),
    })
}
