//! Certificates of managed keys (`keyward cert ...`).
//!
//! - `cert.request`: a PKCS#10 certificate signing request (RFC 2986) of a
//!   key version: subject, public key (read from the version's public key
//!   object on the HSM) and subject alternative names (an
//!   `extensionRequest`), signed inside the HSM with the version's private
//!   key.
//! - `cert.self-sign`: a self-signed X.509 v3 certificate, likewise; with
//!   `import` it is stored too.
//! - `cert.import`: one certificate (PEM or DER, nothing else in the
//!   file) whose public key is the key version's, stored on the token as a
//!   public `CKO_CERTIFICATE` token object with the version's `CKA_ID` and
//!   `CKA_LABEL`, so that applications find it beside the key. A version
//!   that has a certificate keeps it unless the import says `replace`.
//!
//! Signing is a use of the key by the administrator: only signing keys
//! (purpose `signing`) of a supported algorithm (ECDSA P-256/P-384, RSA,
//! Ed25519) in pre-activation (a CSR before activation is the normal
//! flow) or active, the version too, sign; the admin trail names the key
//! and the version. Structures are built and parsed with RustCrypto's
//! `x509-cert` and `der`; the HSM makes every signature.

use std::str::FromStr;
use std::time::Duration;

use cryptoki_sys as ck;
use der::asn1::{BitString, Ia5String, ObjectIdentifier, OctetString, UintRef};
use der::{Decode, Encode, Sequence};
use keyward_inventory::{Actor, KeyVersion};
use keyward_policy::{Algorithm, Curve, KeyState, Purpose};
use keyward_protocol::admin::{AdminErrorKind, KeyResponse};
use keyward_protocol::certificate::{CertRequest, CertResponse, MAX_CERTIFICATE};
use keyward_protocol::{Attribute, Mechanism, Op};
use sha2::Digest;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use crate::keys::ManagedRef;

use super::distribute::pick;
use super::hsm::*;
use super::*;

/// ecdsa-with-SHA256 (RFC 5758).
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// ecdsa-with-SHA384 (RFC 5758).
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// sha256WithRSAEncryption (RFC 8017).
const RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// id-Ed25519 (RFC 8410).
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The longest validity of a self-signed certificate (about 100 years).
const MAX_DAYS: u32 = 36_500;

/// `Ecdsa-Sig-Value` (RFC 3279, 2.2.3).
#[derive(Sequence)]
struct EcdsaSig<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

fn invalid<T>(message: impl Into<String>) -> AResult<T> {
    fail(AdminErrorKind::Invalid, message)
}

fn refused<T>(message: impl Into<String>) -> AResult<T> {
    fail(AdminErrorKind::Refused, message)
}

fn failed(what: &str) -> impl Fn(der::Error) -> AdminError + '_ {
    move |e| AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("{what}: {e}"),
    }
}

/// How a key version signs: the signature algorithm named in the
/// structure, the HSM mechanism, and what is handed to the HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signer {
    /// ECDSA over the SHA-256 digest (P-256).
    EcdsaSha256,
    /// ECDSA over the SHA-384 digest (P-384).
    EcdsaSha384,
    /// RSA PKCS#1 v1.5 with SHA-256 (`CKM_SHA256_RSA_PKCS`).
    RsaSha256,
    /// Ed25519 (`CKM_EDDSA`).
    Ed25519,
}

impl Signer {
    /// The signer of `alg`; `None`: keyward does not sign certificates
    /// with it.
    pub(crate) fn of(alg: Algorithm) -> Option<Signer> {
        match alg {
            Algorithm::Ec(Curve::P256) => Some(Signer::EcdsaSha256),
            Algorithm::Ec(Curve::P384) => Some(Signer::EcdsaSha384),
            Algorithm::Rsa { .. } => Some(Signer::RsaSha256),
            Algorithm::Ed25519 => Some(Signer::Ed25519),
            _ => None,
        }
    }

    /// The `AlgorithmIdentifier` of the signature.
    pub(crate) fn algorithm(self) -> AlgorithmIdentifierOwned {
        let (oid, parameters) = match self {
            Signer::EcdsaSha256 => (ECDSA_SHA256, None),
            Signer::EcdsaSha384 => (ECDSA_SHA384, None),
            // RFC 4055: the parameters are NULL.
            Signer::RsaSha256 => (RSA_SHA256, Some(der::Any::null())),
            Signer::Ed25519 => (ED25519, None),
        };
        AlgorithmIdentifierOwned { oid, parameters }
    }

    /// The mechanism and the bytes the HSM signs for `data`.
    fn input(self, data: &[u8]) -> (Mechanism, Vec<u8>) {
        match self {
            Signer::EcdsaSha256 => (
                Mechanism::plain(ck::CKM_ECDSA),
                sha2::Sha256::digest(data).to_vec(),
            ),
            Signer::EcdsaSha384 => (
                Mechanism::plain(ck::CKM_ECDSA),
                sha2::Sha384::digest(data).to_vec(),
            ),
            Signer::RsaSha256 => (Mechanism::plain(ck::CKM_SHA256_RSA_PKCS), data.to_vec()),
            Signer::Ed25519 => (Mechanism::plain(ck::CKM_EDDSA), data.to_vec()),
        }
    }

    /// The signature as the structure carries it: ECDSA's `r‖s` from the
    /// HSM as a DER `Ecdsa-Sig-Value`, the others as they are.
    pub(crate) fn encode(self, raw: &[u8]) -> AResult<Vec<u8>> {
        match self {
            Signer::EcdsaSha256 | Signer::EcdsaSha384 => {
                if raw.is_empty() || !raw.len().is_multiple_of(2) {
                    return fail(
                        AdminErrorKind::Failed,
                        format!("the HSM's ECDSA signature has {} bytes", raw.len()),
                    );
                }
                let (r, s) = raw.split_at(raw.len() / 2);
                EcdsaSig {
                    r: UintRef::new(r).map_err(failed("ECDSA r"))?,
                    s: UintRef::new(s).map_err(failed("ECDSA s"))?,
                }
                .to_der()
                .map_err(failed("Ecdsa-Sig-Value"))
            }
            Signer::RsaSha256 | Signer::Ed25519 => Ok(raw.to_vec()),
        }
    }
}

/// The subject: an RFC 4514 string, not empty.
pub(crate) fn parse_subject(subject: &str) -> AResult<Name> {
    if subject.trim().is_empty() {
        return invalid("the subject is empty: give one, e.g. \"CN=web.example.com,O=Example\"");
    }
    if let Some(key) = oversized_oid(subject) {
        return invalid(format!(
            "the subject {subject:?} is not a distinguished name: the attribute type {key:?} \
             has an arc larger than {}",
            u32::MAX
        ));
    }
    let name = Name::from_str(subject).map_err(|e| AdminError {
        kind: AdminErrorKind::Invalid,
        message: format!(
            "the subject {subject:?} is not a distinguished name (RFC 4514, e.g. \
             \"CN=web.example.com,O=Example\"): {e}"
        ),
    })?;
    if name.0.is_empty() {
        return invalid(format!("the subject {subject:?} names nothing"));
    }
    Ok(name)
}

/// The first attribute type of `subject` written as a dotted object
/// identifier with an arc beyond `u32` (`2.99999999999=x`, also before
/// a stray character: `2.99999999999x=y`), which the
/// distinguished-name parser cannot hold (it would overflow). The
/// components are split where that parser splits them: at each `,` and
/// `+` not escaped by a single `\`.
fn oversized_oid(subject: &str) -> Option<&str> {
    let b = subject.as_bytes();
    let separator = |i: usize| {
        matches!(b[i], b',' | b'+')
            && (i == 0 || b[i - 1] != b'\\' || (i >= 2 && b[i - 2] == b'\\'))
    };
    let mut start = 0;
    for end in (0..b.len()).filter(|&i| separator(i)).chain([b.len()]) {
        let part = &subject[start..end];
        start = end + 1;
        let key = part.split_once('=').map_or(part, |(key, _)| key);
        // The parser reads digits and dots up to the first other byte
        // (where it stops with an error): the arcs it reads until then.
        let read = key
            .bytes()
            .position(|c| !(c.is_ascii_digit() || c == b'.'))
            .map_or(key, |end| &key[..end]);
        if key.starts_with(|c: char| c.is_ascii_digit())
            && read
                .split('.')
                .any(|arc| !arc.is_empty() && arc.parse::<u32>().is_err())
        {
            return Some(key);
        }
    }
    None
}

/// One subject alternative name: `DNS:`, `IP:`, `email:` or `URI:`.
fn parse_san(san: &str) -> AResult<GeneralName> {
    let bad = |why: String| AdminError {
        kind: AdminErrorKind::Invalid,
        message: format!("subject alternative name {san:?}: {why}"),
    };
    let ia5 = |v: &str| {
        if v.is_empty() {
            return Err(bad("empty".into()));
        }
        Ia5String::new(v).map_err(|e| bad(format!("not ASCII text: {e}")))
    };
    let Some((kind, value)) = san.split_once(':') else {
        return Err(bad(
            "not TYPE:VALUE (DNS:name, IP:address, email:address, URI:uri)".into(),
        ));
    };
    match kind.to_ascii_lowercase().as_str() {
        "dns" => Ok(GeneralName::DnsName(ia5(value)?)),
        "email" => Ok(GeneralName::Rfc822Name(ia5(value)?)),
        "uri" => Ok(GeneralName::UniformResourceIdentifier(ia5(value)?)),
        "ip" => {
            let ip = std::net::IpAddr::from_str(value)
                .map_err(|_| bad(format!("{value:?} is not an IPv4 or IPv6 address")))?;
            let bytes = match ip {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            Ok(GeneralName::IpAddress(
                OctetString::new(bytes).map_err(|e| bad(e.to_string()))?,
            ))
        }
        other => Err(bad(format!(
            "unknown type {other:?} (DNS, IP, email or URI)"
        ))),
    }
}

/// The subjectAltName extension of `sans`; `None` for none.
pub(crate) fn san_extension(sans: &[String]) -> AResult<Option<Extension>> {
    if sans.is_empty() {
        return Ok(None);
    }
    let names = sans
        .iter()
        .map(|s| parse_san(s.trim()))
        .collect::<AResult<Vec<_>>>()?;
    extension(&SubjectAltName(names), false).map(Some)
}

fn extension<T: Encode + const_oid::AssociatedOid>(
    value: &T,
    critical: bool,
) -> AResult<Extension> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(failed("extension"))?)
            .map_err(failed("extension"))?,
    })
}

/// The unsigned request of `spki` for `subject` and `sans`.
pub(crate) fn request_info(subject: Name, spki: &[u8], sans: &[String]) -> AResult<CertReqInfo> {
    let mut attributes = x509_cert::attr::Attributes::new();
    if let Some(ext) = san_extension(sans)? {
        let attribute = x509_cert::attr::Attribute::try_from(ExtensionReq(vec![ext]))
            .map_err(failed("extensionRequest"))?;
        attributes
            .insert(attribute)
            .map_err(failed("extensionRequest"))?;
    }
    Ok(CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject,
        public_key: SubjectPublicKeyInfoOwned::from_der(spki).map_err(failed("the public key"))?,
        attributes,
    })
}

/// The unsigned self-signed certificate of `spki`.
pub(crate) fn self_signed_tbs(
    subject: Name,
    spki: &[u8],
    sans: &[String],
    days: u32,
    signer: Signer,
) -> AResult<TbsCertificate> {
    if days == 0 || days > MAX_DAYS {
        return invalid(format!(
            "{days} days: a self-signed certificate lasts 1 to {MAX_DAYS} days"
        ));
    }
    let mut serial = random(16)?;
    // Positive, 16 bytes (RFC 5280, 4.1.2.2: at most 20 octets).
    if let Some(first) = serial.first_mut() {
        *first = (*first & 0x7f) | 0x40;
    }
    let mut extensions = vec![extension(
        &BasicConstraints {
            ca: false,
            path_len_constraint: None,
        },
        true,
    )?];
    extensions.extend(san_extension(sans)?);
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(failed("serial number"))?,
        signature: signer.algorithm(),
        issuer: subject.clone(),
        validity: Validity::from_now(Duration::from_secs(u64::from(days) * 86_400))
            .map_err(failed("validity"))?,
        subject,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki)
            .map_err(failed("the public key"))?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

/// One certificate from a file's bytes: PEM (one `CERTIFICATE` block and
/// nothing else) or DER (one certificate, no trailing bytes).
pub(crate) fn parse_certificate(bytes: &[u8]) -> AResult<(Certificate, Vec<u8>)> {
    if bytes.len() > MAX_CERTIFICATE {
        return invalid(format!(
            "the certificate has {} bytes: more than {MAX_CERTIFICATE}",
            bytes.len()
        ));
    }
    if bytes.is_empty() {
        return invalid("the certificate is empty");
    }
    let text_start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(bytes, |i| &bytes[i..]);
    let der = if text_start.starts_with(b"-----BEGIN") {
        let begins = bytes.windows(10).filter(|w| w == b"-----BEGIN").count();
        if begins != 1 {
            return invalid(format!(
                "the file holds {begins} PEM blocks: give one certificate per file"
            ));
        }
        let (label, der) = der::pem::decode_vec(text_start).map_err(|e| AdminError {
            kind: AdminErrorKind::Invalid,
            message: format!("the certificate is not a well-formed PEM file: {e}"),
        })?;
        if label != "CERTIFICATE" {
            return invalid(format!("the PEM block is a {label:?}, not a CERTIFICATE"));
        }
        der
    } else {
        bytes.to_vec()
    };
    let cert = Certificate::from_der(&der).map_err(|e| AdminError {
        kind: AdminErrorKind::Invalid,
        message: format!("not one well-formed X.509 certificate (DER): {e}"),
    })?;
    Ok((cert, der))
}

/// The checks `keyward cert import` makes of a certificate file before it
/// compares its public key with the key version's: the file's bytes
/// parsed ([`parse_certificate`]), then every part of the certificate the
/// import reads and stores (public key, subject, issuer, serial number,
/// expiry, fingerprint). On success, the certificate encoded again (DER),
/// so that parsing it again can be compared. An entry point for the fuzz
/// targets, not an API.
#[doc(hidden)]
pub fn judge_certificate_file(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (cert, der) = parse_certificate(bytes).map_err(|e| e.message)?;
    let tbs = &cert.tbs_certificate;
    let judged = (|| -> AResult<()> {
        tbs.subject_public_key_info
            .to_der()
            .map_err(failed("the certificate's public key"))?;
        tbs.subject.to_der().map_err(failed("subject"))?;
        tbs.issuer.to_der().map_err(failed("issuer"))?;
        tbs.serial_number
            .to_der()
            .map_err(failed("serial number"))?;
        Ok(())
    })();
    judged.map_err(|e| e.message)?;
    let _ = (tbs.subject.to_string(), unix(tbs.validity.not_after));
    let _ = crate::fingerprint::certificate_fingerprint(&der);
    cert.to_der().map_err(|e| e.to_string())
}

/// What `keyward cert request` and `cert self-sign` judge of their text
/// arguments: the subject ([`parse_subject`]) and the subject alternative
/// names ([`san_extension`]); and the subject the log shows of a DER CSR.
/// An entry point for the fuzz targets, not an API.
#[doc(hidden)]
pub fn judge_request_arguments(subject: &str, sans: &[String], csr: &[u8]) -> Result<(), String> {
    let _ = csr_subject(csr);
    parse_subject(subject).map_err(|e| e.message)?;
    san_extension(sans).map_err(|e| e.message)?;
    Ok(())
}

/// Unix seconds of `t`.
fn unix(t: x509_cert::time::Time) -> u64 {
    t.to_unix_duration().as_secs()
}

fn signed(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl Lifecycle {
    /// The certificate requests.
    pub(crate) fn cert_call(
        &self,
        (who, by): (&str, &Actor),
        req: CertRequest,
    ) -> AResult<KeyResponse> {
        match req {
            CertRequest::Request {
                name,
                token,
                version,
                subject,
                sans,
            } => {
                let t = self.target(token.as_deref(), &name)?;
                let v = pick(&t, version)?.clone();
                let signer = Self::may_sign(&t, &v)?;
                let subject = parse_subject(&subject)?;
                let spki = self.spki_of(&t, &v)?;
                let info = request_info(subject, &spki, &sans)?;
                let tbs = info.to_der().map_err(failed("CertificationRequestInfo"))?;
                let signature = self.sign_in_hsm(&t, &v, signer, &tbs, who)?;
                let csr = CertReq {
                    info,
                    algorithm: signer.algorithm(),
                    signature: BitString::from_bytes(&signature).map_err(failed("signature"))?,
                }
                .to_der()
                .map_err(failed("CertificationRequest"))?;
                log::info!(
                    "certificate request of {} version {} signed in the HSM for {} ({by:?})",
                    t.label(),
                    v.version,
                    csr_subject(&csr)
                );
                Ok(KeyResponse::Cert(CertResponse::Csr {
                    key: name,
                    version: v.version,
                    der: csr,
                }))
            }
            CertRequest::SelfSign {
                name,
                token,
                version,
                subject,
                sans,
                days,
                import,
            } => {
                let t = self.target(token.as_deref(), &name)?;
                let v = pick(&t, version)?.clone();
                let signer = Self::may_sign(&t, &v)?;
                let subject = parse_subject(&subject)?;
                let spki = self.spki_of(&t, &v)?;
                let tbs = self_signed_tbs(subject, &spki, &sans, days, signer)?;
                let tbs_der = tbs.to_der().map_err(failed("TBSCertificate"))?;
                let signature = self.sign_in_hsm(&t, &v, signer, &tbs_der, who)?;
                let cert = Certificate {
                    tbs_certificate: tbs,
                    signature_algorithm: signer.algorithm(),
                    signature: BitString::from_bytes(&signature).map_err(failed("signature"))?,
                };
                let der = cert.to_der().map_err(failed("Certificate"))?;
                let replaced = match import {
                    true => Some(self.store_certificate(&t, &v, &cert, &der, false)?),
                    false => None,
                };
                Ok(KeyResponse::Cert(CertResponse::Certificate {
                    key: name,
                    version: v.version,
                    subject: cert.tbs_certificate.subject.to_string(),
                    not_after: unix(cert.tbs_certificate.validity.not_after),
                    der,
                    stored: replaced.is_some(),
                    replaced: replaced.unwrap_or(0),
                }))
            }
            CertRequest::Import {
                name,
                token,
                version,
                certificate,
                replace,
            } => self.cert_import((name, token), version, &certificate, replace),
        }
    }

    /// `keyward cert import`: one certificate of the version's own public
    /// key, stored on the token and recorded.
    fn cert_import(
        &self,
        (name, token): (String, Option<String>),
        version: Option<u32>,
        certificate: &[u8],
        replace: bool,
    ) -> AResult<KeyResponse> {
        let t = self.target(token.as_deref(), &name)?;
        let v = pick(&t, version)?.clone();
        if v.state == KeyState::Destroyed {
            return refused(format!(
                "key {} version {} is destroyed: no certificate is stored for it",
                t.label(),
                v.version
            ));
        }
        let (cert, der) = parse_certificate(certificate)?;
        let spki = self.spki_of(&t, &v)?;
        let theirs = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(failed("the certificate's public key"))?;
        if theirs != spki {
            return refused(format!(
                "the certificate's public key (SPKI SHA-256 {}) is not the public key of \
                 {} version {} (SPKI SHA-256 {}): nothing stored",
                keyward_protocol::distribution::sha256_hex(&theirs),
                t.label(),
                v.version,
                keyward_protocol::distribution::sha256_hex(&spki)
            ));
        }
        let replaced = self.store_certificate(&t, &v, &cert, &der, replace)?;
        Ok(KeyResponse::Cert(CertResponse::Certificate {
            key: name,
            version: v.version,
            subject: cert.tbs_certificate.subject.to_string(),
            not_after: unix(cert.tbs_certificate.validity.not_after),
            der,
            stored: true,
            replaced,
        }))
    }

    /// The signer of version `v` of `t`; refused for a key that is not a
    /// signing key, an algorithm keyward does not sign certificates with,
    /// or a key or version that may not sign now.
    pub(crate) fn may_sign(t: &Target<'_>, v: &KeyVersion) -> AResult<Signer> {
        let r = &t.key.record;
        if r.purpose != Purpose::Signing {
            return refused(format!(
                "key {} is a {} key: only signing keys sign certificate requests and \
                 certificates",
                t.label(),
                r.purpose
            ));
        }
        let Some(signer) = Signer::of(r.algorithm) else {
            return refused(format!(
                "key {} is an {} key: certificates are signed with ECDSA P-256 or P-384, RSA or \
                 Ed25519 keys",
                t.label(),
                r.algorithm
            ));
        };
        for (what, state) in [("key", r.state), ("version", v.state)] {
            if !matches!(state, KeyState::PreActivation | KeyState::Active) {
                return refused(format!(
                    "key {} version {}: the {what} is {state}: only a pre-activation or active \
                     key signs",
                    t.label(),
                    v.version
                ));
            }
        }
        Ok(signer)
    }

    /// The DER `SubjectPublicKeyInfo` of version `v`, from the HSM.
    fn spki_of(&self, t: &Target<'_>, v: &KeyVersion) -> AResult<Vec<u8>> {
        self.public_key_of(t, v)?.to_spki().map_err(|m| AdminError {
            kind: AdminErrorKind::Failed,
            message: m,
        })
    }

    /// `data` signed in the HSM with version `v`'s private key, as the
    /// structure carries the signature.
    fn sign_in_hsm(
        &self,
        t: &Target<'_>,
        v: &KeyVersion,
        signer: Signer,
        data: &[u8],
        who: &str,
    ) -> AResult<Vec<u8>> {
        super::dry_run::commit_point(
            || {
                format!(
                    "key {} version {} signs the {} bytes of the request or certificate in the HSM",
                    t.label(),
                    v.version,
                    data.len()
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let backend = self.backend(t.token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let m = ManagedRef {
            key_id: t.key.record.id,
            version: v.version,
        };
        let Some(&private) = s
            .genuine(
                &self.keys,
                &t.key.record.token,
                &v.backend_id,
                ck::CKO_PRIVATE_KEY,
                m,
            )?
            .first()
        else {
            return fail(
                AdminErrorKind::Failed,
                format!(
                    "key {} version {} (CKA_ID {}): no private key on the HSM",
                    t.label(),
                    v.version,
                    hex::encode(&v.backend_id)
                ),
            );
        };
        let (mech, input) = signer.input(data);
        let raw = s.run(Op::Sign, &mech, private, &input)?;
        log::warn!(
            "key {} version {} signed a certificate structure for administrator {who}",
            t.label(),
            v.version
        );
        signer.encode(&raw)
    }

    /// Stores `cert` (`der`) as the certificate of version `v` of `t`: a
    /// public token object with the version's `CKA_ID` and `CKA_LABEL`.
    /// A certificate of the version already there: a conflict, unless
    /// `replace` (then the new one is stored first, the old ones removed
    /// after). The same certificate again: a conflict too. Answers how
    /// many were replaced.
    fn store_certificate(
        &self,
        t: &Target<'_>,
        v: &KeyVersion,
        cert: &Certificate,
        der: &[u8],
        replace: bool,
    ) -> AResult<u32> {
        let tbs = &cert.tbs_certificate;
        let subject = tbs.subject.to_der().map_err(failed("subject"))?;
        let issuer = tbs.issuer.to_der().map_err(failed("issuer"))?;
        let serial = tbs
            .serial_number
            .to_der()
            .map_err(failed("serial number"))?;
        let backend = self.backend(t.token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let older = older_certificates(&s, t, v, der, replace)?;
        super::dry_run::commit_point(
            || {
                format!(
                    "the certificate {} is stored beside key {} version {} ({} replaced)",
                    tbs.subject,
                    t.label(),
                    v.version,
                    older.len()
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let template = vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
            Attribute::ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_PRIVATE, false),
            Attribute::bool(ck::CKA_MODIFIABLE, true),
            Attribute::bytes(ck::CKA_ID, v.backend_id.clone()),
            Attribute::bytes(ck::CKA_LABEL, v.backend_label.as_bytes().to_vec()),
            Attribute::bytes(ck::CKA_SUBJECT, subject),
            Attribute::bytes(ck::CKA_ISSUER, issuer),
            Attribute::bytes(ck::CKA_SERIAL_NUMBER, serial),
            Attribute::bytes(ck::CKA_VALUE, der.to_vec()),
        ];
        let created = backend
            .create_object(s.handle, &template)
            .map_err(|e| hsm_err("C_CreateObject (the certificate)", e))?;
        let record = keyward_inventory::CertificateRecord {
            key_id: t.key.record.id,
            version: v.version,
            subject: tbs.subject.to_string(),
            not_before: signed(unix(tbs.validity.not_before)),
            not_after: signed(unix(tbs.validity.not_after)),
            sha256: sha2::Sha256::digest(der).to_vec(),
            imported_at: crate::keys::secs(crate::clock::now()),
        };
        // The inventory keeps what the token holds: a certificate it
        // cannot record is taken off the token again.
        if let Err(e) = self.keys.inventory().record_certificate(&record, replace) {
            if let Err(d) = backend.destroy_object(s.handle, created) {
                log::error!(
                    "the certificate of {} version {} (backend object {created}) could not be \
                     removed after the inventory refused it: {d}",
                    t.label(),
                    v.version
                );
            }
            return Err(inv_err(e));
        }
        let mut replaced = 0;
        for o in older {
            match backend.destroy_object(s.handle, o) {
                Ok(()) => replaced += 1,
                Err(e) => {
                    return fail(
                        AdminErrorKind::Failed,
                        format!(
                            "the new certificate of {} version {} is stored, but an older one \
                             (backend object {o}) could not be removed: {e}",
                            t.label(),
                            v.version
                        ),
                    )
                }
            }
        }
        log::warn!(
            "certificate of {} version {} stored on the token ({} bytes, SHA-256 {}, {replaced} \
             replaced)",
            t.label(),
            v.version,
            der.len(),
            keyward_protocol::distribution::sha256_hex(der)
        );
        Ok(replaced)
    }
}

/// The certificates of key version `v`'s own public key on the token,
/// which `der` replaces; refused unless `replace` when there is one, and
/// always when `der` is there already.
fn older_certificates(
    s: &HsmSession<'_>,
    t: &Target<'_>,
    v: &KeyVersion,
    der: &[u8],
    replace: bool,
) -> AResult<Vec<crate::backend::BackendObject>> {
    let theirs = crate::fingerprint::certificate_fingerprint(der);
    let mut older = Vec::new();
    for o in s.by_id(&v.backend_id, ck::CKO_CERTIFICATE)? {
        let value = s.bytes(o, ck::CKA_VALUE)?;
        let same_key = value
            .as_deref()
            .and_then(crate::fingerprint::certificate_fingerprint)
            .is_some_and(|fp| Some(fp) == theirs);
        if !same_key {
            continue;
        }
        if value.as_deref() == Some(der) && !replace {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "key {} version {} has this certificate already",
                    t.label(),
                    v.version
                ),
            );
        }
        older.push(o);
    }
    if !older.is_empty() && !replace {
        return fail(
            AdminErrorKind::Conflict,
            format!(
                "key {} version {} has a certificate: give --replace to replace it; \
                 nothing stored",
                t.label(),
                v.version
            ),
        );
    }
    Ok(older)
}

/// The subject of a DER CSR, for the log.
fn csr_subject(der: &[u8]) -> String {
    CertReq::from_der(der).map_or_else(|_| "?".to_owned(), |r| r.info.subject.to_string())
}

#[cfg(test)]
mod tests;

/// The outcome the admin trail keeps of a certificate request: the
/// version that signed or is certified, and the structure's digest.
pub(crate) fn outcome(c: &CertResponse) -> String {
    use keyward_protocol::distribution::sha256_hex;
    match c {
        CertResponse::Csr { version, der, .. } => format!(
            "done: certificate request signed with version {version} (SHA-256 {})",
            sha256_hex(der)
        ),
        CertResponse::Certificate {
            version,
            der,
            stored,
            replaced,
            ..
        } => format!(
            "done: certificate of version {version} (SHA-256 {}){}",
            sha256_hex(der),
            match (stored, replaced) {
                (false, _) => String::new(),
                (true, 0) => ", stored".to_owned(),
                (true, n) => format!(", stored, {n} replaced"),
            }
        ),
    }
}
