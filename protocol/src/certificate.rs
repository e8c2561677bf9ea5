//! Certificates of managed keys on the admin socket: a PKCS#10 request
//! (`cert.request`) or a self-signed X.509 certificate (`cert.self-sign`)
//! signed inside the HSM with a key version, and the import of a
//! certificate beside the key version it certifies (`cert.import`).
//!
//! No request or answer carries key material: a CSR and a certificate
//! hold only the public key.

use serde::{Deserialize, Serialize};

/// The largest certificate `cert.import` accepts (DER or PEM), in bytes.
pub const MAX_CERTIFICATE: usize = 64 * 1024;

/// A certificate request ([`crate::admin::KeyRequest::Cert`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CertRequest {
    /// A PKCS#10 certificate signing request of a key version, signed in
    /// the HSM.
    Request {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
        /// The version; `None`: the one that protects now.
        version: Option<u32>,
        /// The subject, an RFC 4514 string (`CN=web,O=Example`).
        subject: String,
        /// Subject alternative names: `DNS:name`, `IP:address`,
        /// `email:address`, `URI:uri`.
        sans: Vec<String>,
    },
    /// A self-signed X.509 v3 certificate of a key version, signed in the
    /// HSM; with `import`, also stored beside the key version.
    SelfSign {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
        /// The version; `None`: the one that protects now.
        version: Option<u32>,
        /// The subject (and issuer), an RFC 4514 string.
        subject: String,
        /// Subject alternative names, as for [`CertRequest::Request`].
        sans: Vec<String>,
        /// Days of validity from now.
        days: u32,
        /// Store it on the token too (as `cert.import` would).
        import: bool,
    },
    /// Store a certificate (one, PEM or DER) of a key version's public key
    /// on the token, beside the key version.
    Import {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
        /// The version; `None`: the one that protects now.
        version: Option<u32>,
        /// The certificate file's bytes.
        certificate: Vec<u8>,
        /// Replace a certificate the version already has.
        replace: bool,
    },
}

/// What a certificate request answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CertResponse {
    /// Answer to [`CertRequest::Request`]: the DER CSR.
    Csr {
        /// Key name.
        key: String,
        /// The version that signed it.
        version: u32,
        /// DER `CertificationRequest`.
        der: Vec<u8>,
    },
    /// Answer to [`CertRequest::SelfSign`] and [`CertRequest::Import`].
    Certificate {
        /// Key name.
        key: String,
        /// The version it certifies.
        version: u32,
        /// DER certificate.
        der: Vec<u8>,
        /// Its subject, as text.
        subject: String,
        /// Its end of validity (unix seconds).
        not_after: u64,
        /// It is stored on the token beside the key version.
        stored: bool,
        /// Certificates of the version it replaced on the token.
        replaced: u32,
    },
}

impl CertRequest {
    /// The request's stable name (see [`crate::names`]).
    pub fn name(&self) -> &'static str {
        match self {
            CertRequest::Request { .. } => "cert.request",
            CertRequest::SelfSign { .. } => "cert.self-sign",
            CertRequest::Import { .. } => "cert.import",
        }
    }

    /// The token and key it names, for the trail.
    pub fn target(&self) -> (Option<String>, Option<String>) {
        match self {
            CertRequest::Request { name, token, .. }
            | CertRequest::SelfSign { name, token, .. }
            | CertRequest::Import { name, token, .. } => (token.clone(), Some(name.clone())),
        }
    }

    /// The version it names, if any.
    pub fn version(&self) -> Option<u32> {
        match self {
            CertRequest::Request { version, .. }
            | CertRequest::SelfSign { version, .. }
            | CertRequest::Import { version, .. } => *version,
        }
    }
}
