//! An administrator's private key, for signing decisions on approval
//! requests (`keyward request approve|deny --key`) and for printing its
//! public half for the roster (`keyward admin-key show`).
//!
//! The key is a PKCS#8 PEM file (Ed25519, or ECDSA P-256; a SEC1
//! `EC PRIVATE KEY` file is read too), or a key on the administrator's own
//! PKCS#11 token named by a `pkcs11:` URI ([`crate::uri`]), used through
//! `cryptoki`: `CKM_EDDSA` over the statement, or `CKM_ECDSA` over its
//! SHA-256 (the token answers `r‖s`, the form the agent checks).
//!
//! A key file readable or writable by anyone but its owner is refused (as
//! ssh does); what is read from it is zeroized after use, and no error
//! repeats key bytes. A token's PIN comes from the URI's `pin-source=`
//! file, else `KEYWARD_ADMIN_PIN`, else a prompt on the terminal — never
//! from the command line. Every signature is checked against the public
//! key before it is sent, so a token whose public object does not belong
//! to its private key is caught here.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_policy::AdministratorKey;
use zeroize::Zeroizing;

use crate::admin::{Exit, Failure};
use crate::uri::Pkcs11Uri;

/// The environment variable a script gives a token's PIN in.
pub const PIN_ENV: &str = "KEYWARD_ADMIN_PIN";

/// A key file or PIN file is never larger than this.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS`
/// holds it.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Where the administrator's private key is (`--key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM file.
    File(PathBuf),
    /// A key on a PKCS#11 token.
    Pkcs11(Box<Pkcs11Uri>),
}

impl KeySource {
    /// `--key`'s value: a `pkcs11:` URI, else a file's path.
    pub fn parse(text: &str) -> Result<KeySource, String> {
        if text
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("pkcs11:"))
        {
            Pkcs11Uri::parse(text).map(|u| KeySource::Pkcs11(Box::new(u)))
        } else if text.is_empty() {
            Err("give a key file or a pkcs11: URI".to_owned())
        } else {
            Ok(KeySource::File(PathBuf::from(text)))
        }
    }
}

/// A key and, for a token, the PKCS#11 library when the URI names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The key.
    pub source: KeySource,
    /// `--module`.
    pub module: Option<PathBuf>,
}

/// A signature and the public key it verifies with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Ed25519: 64 bytes; P-256: 64 bytes `r‖s`.
    pub signature: Vec<u8>,
    /// The signer's public key, as the roster writes it.
    pub public_key: AdministratorKey,
}

/// Signs `message` with the key; the signature is checked against the
/// public key before it is returned.
pub fn sign(spec: &KeySpec, message: &[u8]) -> Result<Signed, Failure> {
    let signed = match &spec.source {
        KeySource::File(path) => read_key_file(path)?.sign(message),
        KeySource::Pkcs11(uri) => Token::open(uri, spec.module.as_deref())?.sign(uri, message)?,
    };
    signed
        .public_key
        .verify(message, &signed.signature)
        .map_err(|e| {
            Failure::local(
                Exit::Failed,
                "Key",
                format!(
                    "the signature made does not verify with the key's public half ({e}); \
                     on a token: does the public key object belong to the private key?"
                ),
            )
        })?;
    Ok(signed)
}

/// The key's public half. A token's public key object is read without
/// logging in (no PIN).
pub fn public_key(spec: &KeySpec) -> Result<AdministratorKey, Failure> {
    match &spec.source {
        KeySource::File(path) => Ok(read_key_file(path)?.public_key()),
        KeySource::Pkcs11(uri) => Token::open(uri, spec.module.as_deref())?.public_key(uri),
    }
}

fn key_error(message: String) -> Failure {
    Failure::local(Exit::Usage, "Key", message)
}

fn token_error(message: String) -> Failure {
    Failure::local(Exit::Failed, "Token", message)
}

/// A private key read from a file. Both kinds zeroize themselves when
/// dropped.
enum FileKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl FileKey {
    fn public_key(&self) -> AdministratorKey {
        match self {
            FileKey::Ed25519(k) => AdministratorKey::Ed25519(k.verifying_key().to_bytes()),
            FileKey::P256(k) => AdministratorKey::P256(
                k.verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            ),
        }
    }

    fn sign(&self, message: &[u8]) -> Signed {
        let signature = match self {
            FileKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(message).to_bytes().to_vec()
            }
            FileKey::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_bytes().to_vec()
            }
        };
        Signed {
            signature,
            public_key: self.public_key(),
        }
    }
}

/// Reads a file that holds a secret: a regular file, at most
/// [`MAX_SECRET_FILE`] bytes, that only its owner may read or write.
pub(crate) fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>, Failure> {
    let shown = path.display();
    // Not a regular file (a FIFO would block the open): refused before
    // opening, and checked again on what was opened.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(key_error(format!("the {what} {shown} is not a file")));
    }
    let file =
        File::open(path).map_err(|e| key_error(format!("cannot open the {what} {shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| key_error(format!("cannot read the {what} {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(key_error(format!("the {what} {shown} is not a file")));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_error(format!(
            "the {what} {shown} is open to group or others (mode {mode:03o}): \
             it is not used; chmod 600 it"
        )));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(key_error(format!(
            "the {what} {shown} is larger than {MAX_SECRET_FILE} bytes"
        )));
    }
    // Room for all of it up front: no reallocation leaves a copy behind.
    let mut text = Zeroizing::new(String::with_capacity(meta.len() as usize + 1));
    file.take(MAX_SECRET_FILE)
        .read_to_string(&mut text)
        .map_err(|e| key_error(format!("cannot read the {what} {shown}: {e}")))?;
    Ok(text)
}

fn read_key_file(path: &Path) -> Result<FileKey, Failure> {
    let text = read_secret_file(path, "key file")?;
    parse_pem(&text).map_err(|e| key_error(format!("the key file {}: {e}", path.display())))
}

/// An Ed25519 or P-256 private key from PEM: PKCS#8 (`PRIVATE KEY`, as
/// `openssl genpkey` writes) or SEC1 (`EC PRIVATE KEY`).
fn parse_pem(text: &str) -> Result<FileKey, String> {
    use p256::pkcs8::der::Decode;
    use p256::pkcs8::{DecodePrivateKey, ObjectIdentifier, PrivateKeyInfo, SecretDocument};
    const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
    const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(
            "an encrypted key file is not supported: keep the key on a token \
                    (pkcs11:...) or in a file only you can read"
                .to_owned(),
        );
    }
    if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return p256::SecretKey::from_sec1_pem(text)
            .map(|k| FileKey::P256(k.into()))
            .map_err(|_| "not a readable P-256 \"EC PRIVATE KEY\" (SEC1) PEM".to_owned());
    }
    if !text.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(
            "not a PEM private key (expected \"-----BEGIN PRIVATE KEY-----\", \
                    as `openssl genpkey` writes)"
                .to_owned(),
        );
    }
    let (label, doc) =
        SecretDocument::from_pem(text).map_err(|_| "malformed PEM (bad base64 or framing)")?;
    if label != "PRIVATE KEY" {
        return Err(format!("a PEM {label:?} is not a private key"));
    }
    let info = PrivateKeyInfo::from_der(doc.as_bytes())
        .map_err(|_| "malformed PKCS#8 private key".to_owned())?;
    match info.algorithm.oid {
        ED25519 => ed25519_dalek::SigningKey::from_pkcs8_der(doc.as_bytes())
            .map(FileKey::Ed25519)
            .map_err(|_| "malformed Ed25519 private key".to_owned()),
        EC_PUBLIC_KEY => match info.algorithm.parameters_oid() {
            Ok(P256) => p256::SecretKey::from_pkcs8_der(doc.as_bytes())
                .map(|k| FileKey::P256(k.into()))
                .map_err(|_| "malformed P-256 private key".to_owned()),
            Ok(curve) => Err(format!(
                "an EC key on curve {curve}: keyward signs with Ed25519 or P-256 (prime256v1)"
            )),
            Err(_) => Err("an EC key without a named curve".to_owned()),
        },
        oid => Err(format!(
            "a key of algorithm {oid}: keyward signs with Ed25519 or P-256"
        )),
    }
}

/// What kind of key a token object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKeyKind {
    Ed25519,
    P256,
}

/// A session on the one token the URI names.
struct Token {
    session: Session,
    label: String,
    protected_path: bool,
}

impl Token {
    fn open(uri: &Pkcs11Uri, module: Option<&Path>) -> Result<Token, Failure> {
        let module = match (&uri.module_path, module) {
            (Some(a), Some(b)) if a != b => {
                return Err(key_error(
                    "the URI's module-path and --module name different libraries: give one"
                        .to_owned(),
                ))
            }
            (Some(m), _) => m.clone(),
            (None, Some(m)) => m.to_path_buf(),
            (None, None) => return Err(key_error(
                "which PKCS#11 library? give module-path=... in the URI's query or --module PATH"
                    .to_owned(),
            )),
        };
        let p11 = Pkcs11::new(&module).map_err(|e| {
            key_error(format!(
                "cannot load the PKCS#11 library {}: {e}",
                module.display()
            ))
        })?;
        match p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(token_error(format!("C_Initialize: {e}"))),
        }
        let slots = p11
            .get_slots_with_token()
            .map_err(|e| token_error(format!("listing the tokens: {e}")))?;
        let mut found: Vec<(Slot, String, bool)> = Vec::new();
        for slot in slots {
            let Ok(info) = p11.get_token_info(slot) else {
                continue;
            };
            let field = |want: &Option<String>, have: &str| {
                want.as_deref().is_none_or(|w| w == have.trim_end())
            };
            if field(&uri.token, info.label())
                && field(&uri.manufacturer, info.manufacturer_id())
                && field(&uri.serial, info.serial_number())
                && field(&uri.model, info.model())
                && uri.slot_id.is_none_or(|id| id == slot.id())
            {
                found.push((
                    slot,
                    info.label().trim_end().to_owned(),
                    info.protected_authentication_path(),
                ));
            }
        }
        let (slot, label, protected_path) = match found.len() {
            1 => found.remove(0),
            0 => {
                return Err(key_error(format!(
                    "no token of {} matches the URI",
                    module.display()
                )))
            }
            n => {
                return Err(key_error(format!(
                    "{n} tokens match the URI: name one with token=, serial= or slot-id="
                )))
            }
        };
        let session = p11
            .open_ro_session(slot)
            .map_err(|e| token_error(format!("opening a session on token {label}: {e}")))?;
        Ok(Token {
            session,
            label,
            protected_path,
        })
    }

    /// The one object of `class` that the URI's `object=` and `id=` match.
    fn find_one(
        &self,
        uri: &Pkcs11Uri,
        class: ObjectClass,
        what: &str,
    ) -> Result<ObjectHandle, Failure> {
        let mut template = vec![Attribute::Class(class)];
        if let Some(label) = &uri.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let mut found = self
            .session
            .find_objects(&template)
            .map_err(|e| token_error(format!("searching token {} for the key: {e}", self.label)))?;
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(key_error(format!(
                "no {what} on token {} matches the URI",
                self.label
            ))),
            n => Err(key_error(format!(
                "{n} {what}s on token {} match the URI: name one with object= or id=",
                self.label
            ))),
        }
    }

    fn key_kind(&self, key: ObjectHandle) -> Result<TokenKeyKind, Failure> {
        let attrs = self
            .session
            .get_attributes(key, &[AttributeType::KeyType])
            .map_err(|e| token_error(format!("reading the key's type: {e}")))?;
        match attrs.first() {
            Some(Attribute::KeyType(t)) if *t == KeyType::EC_EDWARDS => Ok(TokenKeyKind::Ed25519),
            Some(Attribute::KeyType(t)) if *t == KeyType::EC => Ok(TokenKeyKind::P256),
            Some(Attribute::KeyType(t)) => Err(key_error(format!(
                "the key is of type {t}: keyward signs with Ed25519 or P-256"
            ))),
            _ => Err(token_error(
                "the token does not say the key's type".to_owned(),
            )),
        }
    }

    /// The public key object's key, checked: Ed25519 of 32 bytes, or a
    /// P-256 point on the curve.
    fn read_public(&self, key: ObjectHandle) -> Result<AdministratorKey, Failure> {
        let kind = self.key_kind(key)?;
        let attrs = self
            .session
            .get_attributes(key, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(|e| token_error(format!("reading the public key: {e}")))?;
        let (mut params, mut point) = (None, None);
        for a in attrs {
            match a {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let point =
            point.ok_or_else(|| token_error("the public key has no CKA_EC_POINT".into()))?;
        let text = match kind {
            TokenKeyKind::Ed25519 => {
                let raw = unwrap_octets(&point, 32)
                    .ok_or_else(|| key_error("the EdDSA key is not Ed25519 (32 bytes)".into()))?;
                format!("ed25519:{}", hex::encode(raw))
            }
            TokenKeyKind::P256 => {
                if params.as_deref() != Some(P256_PARAMS) {
                    return Err(key_error(
                        "the EC key is not on P-256 (prime256v1): keyward signs with Ed25519 or P-256"
                            .into(),
                    ));
                }
                format!("p256:{}", hex::encode(p256_point(&point)?))
            }
        };
        AdministratorKey::parse(&text).map_err(key_error)
    }

    /// The public key object the URI names (no login).
    fn public_key(&self, uri: &Pkcs11Uri) -> Result<AdministratorKey, Failure> {
        let key = self.find_one(uri, ObjectClass::PUBLIC_KEY, "public key")?;
        self.read_public(key)
    }

    /// Logs in, finds the private key, its public key object (same
    /// `CKA_ID`, else same label), and signs.
    fn sign(&self, uri: &Pkcs11Uri, message: &[u8]) -> Result<Signed, Failure> {
        self.login(uri)?;
        let private = self.find_one(uri, ObjectClass::PRIVATE_KEY, "private key")?;
        let kind = self.key_kind(private)?;
        let attrs = self
            .session
            .get_attributes(private, &[AttributeType::Id, AttributeType::Label])
            .map_err(|e| token_error(format!("reading the key's id: {e}")))?;
        let mut pair = Pkcs11Uri::default();
        for a in attrs {
            match a {
                Attribute::Id(id) if !id.is_empty() => pair.id = Some(id),
                Attribute::Label(l) if !l.is_empty() => {
                    pair.object = Some(String::from_utf8_lossy(&l).into_owned())
                }
                _ => {}
            }
        }
        if pair.id.is_some() {
            pair.object = None;
        }
        let public_key = self.public_key(&pair)?;
        let signature = match kind {
            TokenKeyKind::Ed25519 => self.session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                private,
                message,
            ),
            TokenKeyKind::P256 => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(message);
                self.session.sign(&Mechanism::Ecdsa, private, &digest)
            }
        }
        .map_err(|e| token_error(format!("signing on token {}: {e}", self.label)))?;
        Ok(Signed {
            signature,
            public_key,
        })
    }

    fn login(&self, uri: &Pkcs11Uri) -> Result<(), Failure> {
        let result = if self.protected_path {
            // A PIN pad on the reader: the token asks for the PIN itself.
            self.session.login(UserType::User, None)
        } else {
            let pin = self.pin(uri)?;
            self.session
                .login(UserType::User, Some(&AuthPin::new(pin.as_str().into())))
        };
        match result {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(P11Error::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinLocked), _)) => Err(
                key_error(format!("token {} refused the PIN: {rv}", self.label)),
            ),
            Err(e) => Err(token_error(format!(
                "logging in to token {}: {e}",
                self.label
            ))),
        }
    }

    /// The PIN: the URI's `pin-source` file, else [`PIN_ENV`], else asked
    /// on the terminal.
    fn pin(&self, uri: &Pkcs11Uri) -> Result<Zeroizing<String>, Failure> {
        let mut pin = if let Some(path) = &uri.pin_source {
            read_secret_file(path, "PIN file")?
        } else if let Some(pin) = std::env::var_os(PIN_ENV) {
            Zeroizing::new(
                pin.into_string()
                    .map_err(|_| key_error(format!("{PIN_ENV} is not UTF-8")))?,
            )
        } else {
            Zeroizing::new(
                rpassword::prompt_password(format!("PIN for token {}: ", self.label)).map_err(
                    |e| {
                        key_error(format!(
                            "no PIN for token {}: cannot ask on a terminal ({e}); give \
                             pin-source=file:PATH in the URI's query or set {PIN_ENV}",
                            self.label
                        ))
                    },
                )?,
            )
        };
        while pin.ends_with(['\n', '\r']) {
            pin.pop();
        }
        if pin.is_empty() {
            return Err(key_error(format!(
                "the PIN for token {} is empty",
                self.label
            )));
        }
        Ok(pin)
    }
}

/// A P-256 `CKA_EC_POINT` (raw or DER-wrapped, compressed or not) as the
/// uncompressed SEC1 point the roster writes, checked to be on the curve.
fn p256_point(ec_point: &[u8]) -> Result<Vec<u8>, Failure> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let raw = unwrap_octets(ec_point, 65)
        .or_else(|| unwrap_octets(ec_point, 33))
        .ok_or_else(|| key_error("the P-256 public key is not a SEC1 point".into()))?;
    let key = p256::PublicKey::from_sec1_bytes(raw)
        .map_err(|_| key_error("the P-256 point is not on the curve".into()))?;
    Ok(key.to_encoded_point(false).as_bytes().to_vec())
}

/// A `CKA_EC_POINT` value: the raw point of `len` bytes, or a DER OCTET
/// STRING wrapping it (PKCS#11 says the latter; some tokens give the
/// former).
fn unwrap_octets(value: &[u8], len: usize) -> Option<&[u8]> {
    if value.len() == len {
        return Some(value);
    }
    match value {
        [0x04, l, rest @ ..] if usize::from(*l) == len && rest.len() == len && len < 0x80 => {
            Some(rest)
        }
        [0x04, 0x81, l, rest @ ..] if usize::from(*l) == len && rest.len() == len => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    use keyward_domain::Decision;
    use keyward_protocol::approval::decision_statement;

    /// `openssl genpkey -algorithm ed25519` (a test key, used nowhere else).
    pub const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPOGCGsfRU2HCAldnKdEt5V23mfsXNOIRSHUCtrKub/3
-----END PRIVATE KEY-----
";

    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    pub const P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQJiguAxcXLSB/uWH
Ky3mdDuPhW6zNxKugQZ+CcME+1ahRANCAARAJEsLb5pArv2cNuQPIqlxG5IIEetY
n069l2roYogmfYT4+diPUBO5AO8uwQqJ+5hatv8VuimI3LhtY53aD6c2
-----END PRIVATE KEY-----
";

    pub fn key_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        // The umask may have taken bits away: set exactly `mode`.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn file_spec(path: PathBuf) -> KeySpec {
        KeySpec {
            source: KeySource::File(path),
            module: None,
        }
    }

    #[test]
    fn a_file_key_signs_what_the_roster_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let statement = decision_statement(Decision::Approve, &[7; 32]);
        for (name, pem, prefix) in [
            ("ed.pem", ED25519_PEM, "ed25519:"),
            ("p256.pem", P256_PEM, "p256:04"),
        ] {
            let spec = file_spec(key_file(dir.path(), name, pem, 0o600));
            let signed = sign(&spec, &statement).unwrap();
            assert_eq!(signed.signature.len(), 64, "{name}");
            // The roster's own parser and verifier accept it.
            let roster = AdministratorKey::parse(&signed.public_key.to_text()).unwrap();
            assert!(roster.to_text().starts_with(prefix), "{name}");
            roster.verify(&statement, &signed.signature).unwrap();
            // Over that statement only: not a denial, not another request.
            let deny = decision_statement(Decision::Deny, &[7; 32]);
            assert!(roster.verify(&deny, &signed.signature).is_err(), "{name}");
            assert_eq!(public_key(&spec).unwrap(), roster, "{name}");
        }
    }

    #[test]
    fn a_sec1_p256_file_is_read_too() {
        let sec1 = {
            use p256::pkcs8::DecodePrivateKey;
            let k = p256::SecretKey::from_pkcs8_pem(P256_PEM).unwrap();
            k.to_sec1_pem(p256::pkcs8::LineEnding::LF).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let spec = file_spec(key_file(dir.path(), "k.pem", &sec1, 0o400));
        let p8 = file_spec(key_file(dir.path(), "p8.pem", P256_PEM, 0o600));
        assert_eq!(public_key(&spec).unwrap(), public_key(&p8).unwrap());
    }

    #[test]
    fn a_key_file_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (i, mode) in [0o640, 0o604, 0o644, 0o660, 0o602, 0o610]
            .into_iter()
            .enumerate()
        {
            let spec = file_spec(key_file(dir.path(), &format!("k{i}"), ED25519_PEM, mode));
            let e = sign(&spec, b"x").unwrap_err();
            assert_eq!((e.exit, e.kind.as_str()), (Exit::Usage, "Key"));
            assert!(
                e.message.contains("open to group or others")
                    && e.message.contains(&format!("{mode:03o}")),
                "{mode:o}: {e:?}"
            );
            assert!(public_key(&spec).is_err());
        }
    }

    #[test]
    fn malformed_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let body = ED25519_PEM.lines().nth(1).unwrap();
        let cases = [
            ("", "not a PEM private key"),
            ("hello\n", "not a PEM private key"),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
                "malformed PEM",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "malformed PEM",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
                "malformed PKCS#8",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                "EC PRIVATE KEY",
            ),
            // Another algorithm (X25519), another curve (P-384): named.
            (
                "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VuBCIEINA9dIuBa5cLlASZypQ3Avb6QAmwHl/7b1NkjYqWnOBb\n-----END PRIVATE KEY-----\n",
                "algorithm 1.3.101.110",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n\
                 MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBidwui514o0QVNoJNn\n\
                 ImPwcuqazs7Tiy9i9/7fqA72n3n1W6yw1dke2zaHeM78X0ehZANiAARoZpG50/84\n\
                 60ZYhkVUnQZPHjCi+oaC5qLe05A9FlB6sYoPqU0T1nR2+eXkpBQqV4ekhb2VFSpF\n\
                 KBLekP+Tl+TyoS4s57vSdsXwhpNNRok3bEL5J0OJUD/+rpR1+eHhDUg=\n\
                 -----END PRIVATE KEY-----\n",
                "curve 1.3.132.0.34",
            ),
        ];
        for (i, (text, want)) in cases.into_iter().enumerate() {
            let spec = file_spec(key_file(dir.path(), &format!("k{i}"), text, 0o600));
            let e = sign(&spec, b"x").unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{text:?}");
            assert!(e.message.contains(want), "{text:?}: {}", e.message);
            assert!(!e.message.contains(body));
        }
        let e = sign(&file_spec(dir.path().join("missing.pem")), b"x").unwrap_err();
        assert!(e.message.contains("cannot open the key file"), "{e:?}");
        let e = sign(&file_spec(dir.path().to_path_buf()), b"x").unwrap_err();
        assert!(e.message.contains("not a file"), "{e:?}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = sign(&file_spec(fifo), b"x").unwrap_err();
        assert!(e.message.contains("not a file"), "{e:?}");
    }

    #[test]
    fn key_sources() {
        assert_eq!(
            KeySource::parse("/home/bob/admin.pem"),
            Ok(KeySource::File("/home/bob/admin.pem".into()))
        );
        assert_eq!(
            KeySource::parse("admin.pem"),
            Ok(KeySource::File("admin.pem".into()))
        );
        let KeySource::Pkcs11(uri) = KeySource::parse("pkcs11:token=bob;id=%01").unwrap() else {
            panic!()
        };
        assert_eq!(
            (uri.token.as_deref(), uri.id.as_deref()),
            (Some("bob"), Some(&[1u8][..]))
        );
        assert!(KeySource::parse("pkcs11:token=a;token=b").is_err());
        assert!(KeySource::parse("").is_err());
    }

    #[test]
    fn a_token_needs_a_library() {
        let spec = KeySpec {
            source: KeySource::parse("pkcs11:token=bob").unwrap(),
            module: None,
        };
        let e = public_key(&spec).unwrap_err();
        assert!(e.message.contains("--module"), "{e:?}");
        let spec = KeySpec {
            source: KeySource::parse("pkcs11:token=bob?module-path=/a.so").unwrap(),
            module: Some("/b.so".into()),
        };
        let e = sign(&spec, b"x").unwrap_err();
        assert!(e.message.contains("different libraries"), "{e:?}");
        let spec = KeySpec {
            source: KeySource::parse("pkcs11:token=bob").unwrap(),
            module: Some("/nonexistent/libnothing.so".into()),
        };
        let e = sign(&spec, b"x").unwrap_err();
        assert!(
            e.message.contains("cannot load the PKCS#11 library"),
            "{e:?}"
        );
    }

    #[test]
    fn p256_points_from_a_token_are_written_uncompressed() {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::DecodePrivateKey;
        let public = p256::SecretKey::from_pkcs8_pem(P256_PEM)
            .unwrap()
            .public_key();
        let full = public.to_encoded_point(false).as_bytes().to_vec();
        let short = public.to_encoded_point(true).as_bytes().to_vec();
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&full);
        let mut der_short = vec![0x04, 33];
        der_short.extend_from_slice(&short);
        for point in [&full, &short, &der, &der_short] {
            assert_eq!(p256_point(point).unwrap(), full);
        }
        let mut off_curve = full.clone();
        off_curve[64] ^= 1;
        assert!(p256_point(&off_curve)
            .unwrap_err()
            .message
            .contains("not on the curve"));
        assert!(p256_point(&full[..40]).is_err());
    }

    #[test]
    fn ec_points_with_and_without_der() {
        let raw = [0x04; 65];
        assert_eq!(unwrap_octets(&raw, 65), Some(&raw[..]));
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&raw);
        assert_eq!(unwrap_octets(&der, 65), Some(&raw[..]));
        let mut ed = vec![0x04, 32];
        ed.extend_from_slice(&[9; 32]);
        assert_eq!(unwrap_octets(&ed, 32), Some(&[9u8; 32][..]));
        assert_eq!(unwrap_octets(&ed[..33], 32), None);
        assert_eq!(unwrap_octets(&[0x04, 57, 0], 32), None);
    }
}
