//! `keyward cert`: CSRs and self-signed certificates signed inside the
//! HSM by the real agent, checked by `openssl`; certificates imported
//! beside their key version, found by an application through the module;
//! certificate files that are not exactly one certificate of the key
//! version refused with nothing stored, also as raw admin requests.

use std::path::Path;
use std::process::Command;

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use keyward_protocol::admin::{AdminErrorKind, AdminResponse, KeyRequest};
use keyward_protocol::certificate::{CertRequest, MAX_CERTIFICATE};
use keyward_tests::admin::{
    application_toml, backend_token, find, id_of, install_policy, keyward, keyward_ok, uid,
    APPLICATION, CERT,
};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{unhex, Ctx};

/// Signing classes of every algorithm certificates are signed with, and
/// an RSA encryption class, each granted to this process's application.
fn policy() -> String {
    let class = |name: &str, purpose: &str, alg: &str, ops: &str| {
        format!(
            "\n[[class]]\nname = \"{name}\"\npurpose = \"{purpose}\"\nalgorithms = [\"{alg}\"]\n\
             protect_period = \"30d\"\nprocess_period = \"60d\"\n\
             grants = [ {{ application = \"{APPLICATION}\", operations = [{ops}] }} ]\n"
        )
    };
    format!(
        "[settings]\nmode = \"strict\"\n{}{}{}{}{}{}",
        application_toml(APPLICATION, uid()),
        class("ec256", "signing", "ec:p256", r#""sign", "verify""#),
        class("ec384", "signing", "ec:p384", r#""sign", "verify""#),
        class("rsa", "signing", "rsa:2048", r#""sign", "verify""#),
        class("ed", "signing", "ed25519", r#""sign", "verify""#),
        class(
            "sealing",
            "encryption",
            "rsa:2048",
            r#""encrypt", "decrypt""#
        ),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Runs `openssl ARGS`; its standard output, or a panic with what it said.
#[track_caller]
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

/// `keyward ARGS`: exit `code`, and standard error saying `says`.
#[track_caller]
fn refused(tb: &Env, args: &[&str], code: i32, says: &str) {
    let out = keyward(tb, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "keyward {args:?}: {text}");
    assert!(text.contains(says), "keyward {args:?}: {text}");
}

/// Certificates on the backend token (what a refused import must leave).
fn certificates_on_backend(tb: &Env) -> usize {
    let (p11, s) = backend_token(tb);
    let n = s
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .expect("C_FindObjects on the backend")
        .len();
    drop(s);
    p11.finalize().expect("C_Finalize of SoftHSM2");
    n
}

fn raw_admin(tb: &Env, request: KeyRequest) -> AdminResponse {
    use keyward_protocol::admin::{hello, AdminRequest};
    use keyward_protocol::frame::{read_message, write_message};
    let mut s = std::os::unix::net::UnixStream::connect(&tb.admin_socket).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    hello(&mut s, &mut buf).expect("admin hello");
    write_message(&mut s, &AdminRequest::Key(request), &mut buf).expect("send");
    read_message(&mut s, &mut buf).expect("the agent's answer")
}

keyward_test!(fn csrs_signed_in_the_hsm_verify_with_the_keys_public_key(tb) {
    install_policy(&tb, &policy());
    for (name, class) in [("web-ec", "ec256"), ("web-ec384", "ec384"), ("web-rsa", "rsa"), ("web-ed", "ed")] {
        keyward_ok(&tb, &["key", "create", name, "--class", class], 0);
        // Pre-activation: the request comes before the certificate and
        // the activation.
        let csr = tb.path(&format!("{name}.csr"));
        let subject = format!("CN={name}.example.com,O=Example");
        keyward_ok(&tb, &[
            "cert", "request", name, "--subject", &subject,
            "--san", &format!("DNS:{name}.example.com,IP:192.0.2.7,email:ops@example.com"),
            "--out", path(&csr),
        ], 0);
        let public = tb.path(&format!("{name}.pub"));
        keyward_ok(&tb, &["key", "pubkey", name, "--out", path(&public)], 0);
        // The CSR's signature verifies, and its key is the key's.
        openssl(&["req", "-verify", "-noout", "-in", path(&csr)]);
        let theirs = openssl(&["req", "-noout", "-pubkey", "-in", path(&csr)]);
        let ours = std::fs::read_to_string(&public).unwrap();
        assert_eq!(theirs.trim(), ours.trim(), "{name}: the CSR's public key");
        let text = openssl(&["req", "-noout", "-text", "-in", path(&csr)]);
        for needle in [
            format!("CN = {name}.example.com"),
            "O = Example".into(),
            format!("DNS:{name}.example.com"),
            "IP Address:192.0.2.7".into(),
            "email:ops@example.com".into(),
        ] {
            assert!(text.contains(&needle), "{name}: no {needle:?} in\n{text}");
        }
        // DER on request.
        let der = tb.path(&format!("{name}.csr.der"));
        keyward_ok(&tb, &["cert", "request", name, "--subject", &subject, "--out", path(&der), "--der"], 0);
        openssl(&["req", "-verify", "-noout", "-inform", "DER", "-in", path(&der)]);
    }
    // --json: the PEM and its digest, not the DER bytes.
    let doc = keyward_tests::admin::keyward_json(&tb, &["cert", "request", "web-rsa", "--subject", "CN=a"], 0);
    let csr = &doc;
    assert!(csr.str_at("pem").starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{doc}");
    assert_eq!(csr.str_at("sha256").len(), 64, "{doc}");
    assert_eq!(csr.i64_at("version"), 1, "{doc}");
    assert!(csr.get("der").is_none(), "{doc}");
    // An active key signs too; a suspended one does not.
    keyward_ok(&tb, &["key", "activate", "web-ec"], 0);
    let pem = keyward_ok(&tb, &["cert", "request", "web-ec", "--subject", "CN=a"], 0);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{pem}");
    keyward_ok(&tb, &["key", "suspend", "web-ec", "--reason", "test"], 0);
    refused(&tb, &["cert", "request", "web-ec", "--subject", "CN=a"], 5, "suspended");
    // An encryption key signs nothing: refused, naming its purpose.
    keyward_ok(&tb, &["key", "create", "sealer", "--class", "sealing"], 0);
    refused(&tb, &["cert", "request", "sealer", "--subject", "CN=a"], 5, "encryption key");
    // Bad subjects and names: usage errors, no file left behind.
    let out = tb.path("bad.csr");
    refused(&tb, &["cert", "request", "web-rsa", "--subject", "not a name", "--out", path(&out)], 2, "subject");
    refused(&tb, &["cert", "request", "web-rsa", "--subject", "CN=a", "--san", "IP:999.1.1.1"], 2, "IPv4");
    assert!(!out.exists(), "a refused request left its file behind");
    // The trail names the key and the version that signed.
    let trail = keyward_ok(&tb, &["--wide", "audit", "tail", "-n", "50"], 0);
    assert!(trail.contains("cert.request") && trail.contains("signed with version 1"), "{trail}");
});

keyward_test!(fn a_self_signed_certificate_verifies_and_applications_find_it_beside_the_key(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "web", "--class", "ec256"], 0);
    keyward_ok(&tb, &["key", "activate", "web"], 0);
    let cert = tb.path("web.pem");
    keyward_ok(&tb, &[
        "cert", "self-sign", "web", "--subject", "CN=web.example.com,O=Example",
        "--san", "DNS:web.example.com", "--days", "30", "--import", "--out", path(&cert),
    ], 0);
    openssl(&["verify", "-CAfile", path(&cert), path(&cert)]);
    let text = openssl(&["x509", "-noout", "-text", "-in", path(&cert)]);
    assert!(text.contains("DNS:web.example.com"), "{text}");
    let der = openssl_der(&cert);

    // An application finds it by the key's label, with the key's CKA_ID.
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let key = find(&s, "web", ObjectClass::PRIVATE_KEY);
    assert_eq!(key.len(), 1);
    let certs = find(&s, "web", ObjectClass::CERTIFICATE);
    assert_eq!(certs.len(), 1, "the certificate beside the key");
    assert_eq!(id_of(&s, certs[0]), id_of(&s, key[0]));
    let value = match s.get_attributes(certs[0], &[AttributeType::Value]).unwrap().pop() {
        Some(Attribute::Value(v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(value, der);
    drop(s);
    drop(ctx);

    // A second one replaces it only when told to.
    let again = tb.path("again.pem");
    keyward_ok(&tb, &["cert", "self-sign", "web", "--subject", "CN=web2", "--out", path(&again)], 0);
    refused(&tb, &["cert", "import", "web", path(&again)], 6, "--replace");
    refused(&tb, &["cert", "import", "web", path(&cert)], 6, "already");
    keyward_ok(&tb, &["cert", "import", "web", path(&again), "--replace"], 0);
    assert_eq!(certificates_on_backend(&tb), 1, "the replaced certificate is gone");
});

/// The DER of a PEM certificate file.
fn openssl_der(pem: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in", path(pem)])
        .output()
        .expect("run openssl");
    assert!(out.status.success());
    out.stdout
}

keyward_test!(fn certificates_that_are_not_exactly_one_of_the_key_are_refused_with_nothing_stored(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "web", "--class", "ec256"], 0);
    let own = tb.path("own.pem");
    keyward_ok(&tb, &["cert", "self-sign", "web", "--subject", "CN=web", "--out", path(&own)], 0);
    let pem = std::fs::read_to_string(&own).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = tb.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Another key's certificate.
    let foreign = write("foreign.der", &unhex(CERT));
    refused(&tb, &["cert", "import", "web", path(&foreign)], 5, "is not the public key of");
    // Garbage, a truncated PEM, trailing bytes, two certificates.
    let garbage = write("garbage.pem", b"this is not a certificate\n");
    refused(&tb, &["cert", "import", "web", path(&garbage)], 2, "not one well-formed");
    let truncated = write("truncated.pem", &pem.as_bytes()[..pem.len() / 2]);
    refused(&tb, &["cert", "import", "web", path(&truncated)], 2, "PEM");
    let mut trailing = openssl_der(&own);
    trailing.extend_from_slice(b"\x00\x00");
    let trailing = write("trailing.der", &trailing);
    refused(&tb, &["cert", "import", "web", path(&trailing)], 2, "not one well-formed");
    let two = write("two.pem", format!("{pem}{pem}").as_bytes());
    refused(&tb, &["cert", "import", "web", path(&two)], 2, "2 PEM blocks");
    assert_eq!(certificates_on_backend(&tb), 0, "a refused import stored something");

    // The same as raw admin requests: huge, empty or garbage DER, a
    // subject that is not a name: invalid, the agent still answers.
    for certificate in [vec![0x30; MAX_CERTIFICATE + 1], vec![0x30; 8 << 20], vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff], Vec::new(), vec![0xff; 4096]] {
        match raw_admin(&tb, KeyRequest::Cert(CertRequest::Import {
            name: "web".into(), token: None, version: None, certificate, replace: true,
        })) {
            AdminResponse::KeyErr { kind: AdminErrorKind::Invalid, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    for subject in ["", "=,=,=", &"CN=a,".repeat(10_000)] {
        match raw_admin(&tb, KeyRequest::Cert(CertRequest::Request {
            name: "web".into(), token: None, version: None, subject: subject.into(),
            sans: vec!["DNS:\u{e9}".into()],
        })) {
            AdminResponse::KeyErr { kind: AdminErrorKind::Invalid, .. } => {}
            other => panic!("{subject:.20}: {other:?}"),
        }
    }
    assert_eq!(certificates_on_backend(&tb), 0);
    keyward_ok(&tb, &["key", "show", "web"], 0);
});

/// `GET /metrics` of the agent's metrics endpoint: the exposition.
fn scrape(tb: &Env) -> String {
    use std::io::{Read, Write};
    let addr = std::fs::read_to_string(tb.path("state/metrics.addr")).expect("metrics.addr");
    let addr = addr.trim();
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("the exposition");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

keyward_test!(fn certificates_show_with_their_key_and_the_report_and_metrics_warn_ahead_of_expiry(tb) {
    tb.require_agent("the metrics endpoint");
    let path_ = tb.path("keyward-agent.toml");
    let mut config = std::fs::read_to_string(&path_).unwrap();
    config.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path_, config).unwrap();
    let policy = policy().replace(
        "name = \"ec256\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\nprotect_period = \"30d\"\n",
        "name = \"ec256\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\nprotect_period = \"30d\"\ncertificate_warning = \"30d\"\n",
    );
    assert!(policy.contains("certificate_warning"), "{policy}");
    install_policy(&tb, &policy); // restarts the agent, with metrics
    for (name, days) in [("soon", "1"), ("later", "90")] {
        keyward_ok(&tb, &["key", "create", name, "--class", "ec256"], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
        keyward_ok(&tb, &[
            "cert", "self-sign", name, "--subject", &format!("CN={name}.example.com"),
            "--days", days, "--import",
        ], 0);
    }
    // keyward key show: subject and expiry, from the inventory.
    let shown = keyward_tests::admin::key_show(&tb, "soon");
    let certs = shown.array_at("certificates");
    assert_eq!(certs.len(), 1, "{shown}");
    assert_eq!(certs[0].str_at("subject"), "CN=soon.example.com");
    assert_eq!(certs[0].i64_at("version"), 1);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let soon_after = certs[0].time_at("not_after");
    assert!((now..now + 86_400 + 5).contains(&soon_after), "{shown}");
    let text = keyward_ok(&tb, &["key", "show", "soon"], 0);
    assert!(text.contains("certificates:") && text.contains("CN=soon.example.com"), "{text}");

    // The report flags the one expiring within the class's 30 days.
    let report = keyward_tests::admin::keyward_json(&tb, &["report"], 0);
    let key = |name: &str| {
        report.array_at("keys").iter().find(|k| k.str_at("name") == name)
            .unwrap_or_else(|| panic!("no key {name} in {report}")).clone()
    };
    assert_eq!(key("soon").at("certificate").at("expiring"), &serde_json::Value::Bool(true), "{report}");
    assert_eq!(key("later").at("certificate").at("expiring"), &serde_json::Value::Bool(false), "{report}");
    let text = keyward_ok(&tb, &["report"], 0);
    assert!(text.contains("EXPIRING"), "{text}");

    // The metrics: seconds until expiry per key version.
    let metrics = scrape(&tb);
    let line = |name: &str| {
        metrics.lines()
            .find(|l| l.starts_with("keyward_certificate_expiry_seconds{")
                && l.contains(&format!("key=\"{name}\"")) && l.contains("version=\"1\""))
            .unwrap_or_else(|| panic!("no expiry of {name} in\n{metrics}"))
            .rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
    };
    assert!((0.0..=86_400.0).contains(&line("soon")), "{metrics}");
    assert!(line("later") > 80.0 * 86_400.0, "{metrics}");
});

keyward_test!(fn rotate_with_csr_writes_a_request_of_the_new_versions_key(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "web", "--class", "rsa"], 0);
    keyward_ok(&tb, &["key", "activate", "web"], 0);
    // No --subject and no certificate to take it from: a usage error,
    // nothing rotated, no file.
    let csr = tb.path("v2.csr");
    refused(&tb, &["key", "rotate", "web", "--csr", path(&csr)], 2, "--subject");
    assert!(!csr.exists());
    let show = keyward_tests::admin::key_show(&tb, "web");
    assert_eq!(show.array_at("versions").len(), 1, "rotated anyway: {show}");
    // With the current certificate's subject.
    keyward_ok(&tb, &[
        "cert", "self-sign", "web", "--subject", "CN=web.example.com,O=Example", "--import",
    ], 0);
    keyward_ok(&tb, &["key", "rotate", "web", "--csr", path(&csr)], 0);
    let show = keyward_tests::admin::key_show(&tb, "web");
    assert_eq!(show.array_at("versions").len(), 2, "{show}");
    openssl(&["req", "-verify", "-noout", "-in", path(&csr)]);
    let public = tb.path("v2.pub");
    keyward_ok(&tb, &["key", "pubkey", "web", "--version", "2", "--out", path(&public)], 0);
    let theirs = openssl(&["req", "-noout", "-pubkey", "-in", path(&csr)]);
    assert_eq!(theirs.trim(), std::fs::read_to_string(&public).unwrap().trim(), "the CSR is not of version 2's key");
    let old = tb.path("v1.pub");
    keyward_ok(&tb, &["key", "pubkey", "web", "--version", "1", "--out", path(&old)], 0);
    assert_ne!(theirs.trim(), std::fs::read_to_string(&old).unwrap().trim());
    let text = openssl(&["req", "-noout", "-subject", "-in", path(&csr)]);
    assert!(text.contains("CN = web.example.com"), "{text}");
    // With --subject given.
    let csr3 = tb.path("v3.csr");
    let rotated = keyward_tests::admin::keyward_json(&tb, &["key", "rotate", "web", "--csr", path(&csr3), "--subject", "CN=v3"], 0);
    keyward_tests::json::validate("key-rotate-csr.schema.json", &rotated);
    let text = openssl(&["req", "-noout", "-subject", "-in", path(&csr3)]);
    assert!(text.contains("CN = v3"), "{text}");
});
