//! What the tests of real clients (OpenSSH, Java, Python) share: a policy
//! with granted, verify-only and hidden signing keys, managed keys made by
//! the administrator, and a key's certificate put on the token as a client
//! would put it there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cryptoki::object::{Attribute, CertificateType, ObjectClass};

use crate::admin::{application_toml, find, id_of, install_policy, keyward_ok, uid, APPLICATION};
use crate::harness::Env;
use crate::p11::Ctx;
use crate::tools::{openssl, run_ok, uri};

/// The class whose keys the application may sign and verify with.
pub const GRANTED: &str = "login";
/// The class whose keys the application may only verify with: it sees
/// them, and every signature is refused.
pub const VERIFY_ONLY: &str = "verify-only";
/// The class without grants: the application does not see its keys.
pub const HIDDEN: &str = "hidden";

fn class(name: &str, operations: &str) -> String {
    let grants = if operations.is_empty() {
        String::new()
    } else {
        format!("grants = [ {{ application = \"{APPLICATION}\", operations = [{operations}] }} ]")
    };
    format!(
        "\n[[class]]\nname = \"{name}\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\", \"rsa:2048\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\n{grants}\n"
    )
}

/// Installs the strict policy of the client tests: classes [`GRANTED`],
/// [`VERIFY_ONLY`] and [`HIDDEN`] (EC P-256 and RSA-2048 signing keys) for
/// this process's user, the application [`APPLICATION`].
pub fn install_clients_policy(tb: &Env) {
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{}{}{}{}",
        application_toml(APPLICATION, uid()),
        class(GRANTED, r#""sign", "verify""#),
        class(VERIFY_ONLY, r#""verify""#),
        class(HIDDEN, ""),
    );
    install_policy(tb, &policy);
}

/// Creates and activates the managed key `name` of `class` with
/// `algorithm` (`ec:p256`, `rsa:2048`), as an administrator would.
pub fn managed_key(tb: &Env, name: &str, class: &str, algorithm: &str) {
    keyward_ok(
        tb,
        &[
            "key",
            "create",
            name,
            "--class",
            class,
            "--algorithm",
            algorithm,
        ],
        0,
    );
    keyward_ok(tb, &["key", "activate", name], 0);
}

/// A self-signed certificate (DER) of the token key `name`, signed on the
/// token through OpenSSL's pkcs11 engine.
pub fn self_signed_der(tb: &Env, name: &str) -> Vec<u8> {
    let der = tb.path(&format!("{name}.crt.der"));
    run_ok(
        openssl(tb)
            .args(["req", "-new", "-x509", "-days", "30", "-engine", "pkcs11"])
            .args(["-keyform", "engine", "-key", &uri(tb, name, "private")])
            .args([
                "-subj",
                &format!("/CN={name}"),
                "-sha256",
                "-outform",
                "DER",
            ])
            .arg("-out")
            .arg(&der),
    );
    std::fs::read(&der).expect("read the certificate")
}

/// Puts `der`, a certificate of the token key `name`, on the token through
/// the module as a client would: a token `CKO_CERTIFICATE` labelled `name`
/// with the key's `CKA_ID`, which is how clients pair a certificate with
/// its private key.
pub fn put_certificate(tb: &Env, name: &str, der: &[u8]) {
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    let private = find(&s, name, ObjectClass::PRIVATE_KEY);
    assert_eq!(private.len(), 1, "{name}: one private key");
    let id = id_of(&s, private[0]);
    s.create_object(&[
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Label(name.as_bytes().to_vec()),
        Attribute::Id(id),
        Attribute::Subject(subject_of(der)),
        Attribute::Value(der.to_vec()),
    ])
    .unwrap_or_else(|e| panic!("C_CreateObject of {name}'s certificate: {e}"));
}

/// The subject name (DER) of a certificate, for `CKA_SUBJECT`.
fn subject_of(der: &[u8]) -> Vec<u8> {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der).expect("a DER certificate");
    cert.tbs_certificate
        .subject
        .to_der()
        .expect("the subject's DER")
}

/// The system's python3 when it can import `module`, or a panic naming the
/// Debian package that provides it (Debian installs it for /usr/bin/python3).
pub fn system_python(module: &str, package: &str) -> PathBuf {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", &format!("import {module}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|p| Path::new(p).to_path_buf())
        .unwrap_or_else(|| {
            panic!(
                "python3 with the {module} module is missing: install it with \
                 `apt-get install {package}` (softhsm-config/setup does)"
            )
        })
}
