//! Certificates without an HSM: subjects, names, the ECDSA signature's
//! encoding, strict parsing of a certificate file, and what is refused
//! before the HSM is asked to sign.

use super::*;
use crate::agent::Agent;
use der::pem::LineEnding;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::EncodePublicKey;

fn software_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap()
}

fn spki_of(k: &p256::ecdsa::SigningKey) -> Vec<u8> {
    k.verifying_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// A self-signed certificate made the agent's way, the signature by a
/// software key in place of the HSM.
fn certificate(days: u32) -> Vec<u8> {
    let k = software_key();
    let tbs = self_signed_tbs(
        parse_subject("CN=web.example.com,O=Example").unwrap(),
        &spki_of(&k),
        &["DNS:web.example.com".into(), "IP:192.0.2.1".into()],
        days,
        Signer::EcdsaSha256,
    )
    .unwrap();
    let sig: p256::ecdsa::Signature = k.sign(&tbs.to_der().unwrap());
    let sig = Signer::EcdsaSha256.encode(&sig.to_bytes()).unwrap();
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: Signer::EcdsaSha256.algorithm(),
        signature: BitString::from_bytes(&sig).unwrap(),
    }
    .to_der()
    .unwrap()
}

#[test]
fn an_hsm_ecdsa_signature_becomes_der_that_verifies() {
    let k = software_key();
    let cert = Certificate::from_der(&certificate(30)).unwrap();
    let tbs = cert.tbs_certificate.to_der().unwrap();
    let der_sig = p256::ecdsa::DerSignature::from_bytes(cert.signature.raw_bytes()).unwrap();
    k.verifying_key().verify(&tbs, &der_sig).unwrap();
    // r or s with a high bit or leading zeros: still a valid DER INTEGER.
    let mut raw = vec![0u8; 64];
    raw[0] = 0x80;
    raw[63] = 1;
    let der = Signer::EcdsaSha256.encode(&raw).unwrap();
    assert!(p256::ecdsa::Signature::from_der(&der).is_ok());
    // What the HSM cannot have made: refused, not encoded.
    assert!(Signer::EcdsaSha256.encode(&[1, 2, 3]).is_err());
    assert!(Signer::EcdsaSha384.encode(&[]).is_err());
}

#[test]
fn a_csr_carries_subject_key_and_names() {
    let k = software_key();
    let info = request_info(
        parse_subject("CN=web.example.com,O=Example").unwrap(),
        &spki_of(&k),
        &["DNS:web.example.com".into(), "email:ops@example.com".into()],
    )
    .unwrap();
    assert_eq!(info.subject.to_string(), "CN=web.example.com,O=Example");
    assert_eq!(info.public_key.to_der().unwrap(), spki_of(&k));
    assert_eq!(info.attributes.len(), 1);
    let none = request_info(parse_subject("CN=a").unwrap(), &spki_of(&k), &[]).unwrap();
    assert!(none.attributes.is_empty());
}

#[test]
fn subjects_and_names_are_checked() {
    for bad in ["", "  ", "not a name", "CN"] {
        let e = parse_subject(bad).unwrap_err();
        assert_eq!(e.kind, AdminErrorKind::Invalid, "{bad:?}");
    }
    for bad in [
        "web.example.com",
        "DNS:",
        "IP:300.1.1.1",
        "X400:a",
        "DNS:caf\u{e9}",
    ] {
        let e = san_extension(&[bad.to_owned()]).unwrap_err();
        assert_eq!(e.kind, AdminErrorKind::Invalid, "{bad:?}");
        assert!(
            e.message.contains("subject alternative name"),
            "{}",
            e.message
        );
    }
    assert!(
        san_extension(&["IP:2001:db8::1".into(), "URI:https://a/".into()])
            .unwrap()
            .is_some()
    );
    assert!(self_signed_tbs(
        parse_subject("CN=a").unwrap(),
        &spki_of(&software_key()),
        &[],
        0,
        Signer::EcdsaSha256
    )
    .is_err());
}

#[test]
fn a_certificate_file_is_one_certificate_and_nothing_else() {
    let der = certificate(30);
    let pem = der::pem::encode_string("CERTIFICATE", LineEnding::LF, &der).unwrap();
    assert_eq!(parse_certificate(&der).unwrap().1, der);
    assert_eq!(parse_certificate(pem.as_bytes()).unwrap().1, der);
    let refused = |bytes: &[u8], says: &str| {
        let e = parse_certificate(bytes).unwrap_err();
        assert_eq!(e.kind, AdminErrorKind::Invalid);
        assert!(e.message.contains(says), "{}", e.message);
    };
    refused(b"", "empty");
    refused(b"garbage", "not one well-formed");
    let mut trailing = der.clone();
    trailing.push(0);
    refused(&trailing, "not one well-formed");
    refused(&der[..der.len() - 1], "not one well-formed");
    refused(format!("{pem}{pem}").as_bytes(), "2 PEM blocks");
    refused(format!("{pem}trailing text\n").as_bytes(), "PEM");
    refused(format!("preamble\n{pem}").as_bytes(), "not one well-formed");
    refused(&pem.as_bytes()[..pem.len() - 30], "PEM");
    let key = der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &der).unwrap();
    refused(key.as_bytes(), "not a CERTIFICATE");
    refused(&vec![0x30; MAX_CERTIFICATE + 1], "more than");
}

/// An attribute type in dotted form with an arc beyond 32 bits made the
/// distinguished-name parser overflow (a panic, or a wrong type in a
/// build without overflow checks); it is refused with a message.
#[test]
fn a_subject_with_an_oversized_object_identifier_arc_is_refused() {
    for subject in [
        "2.99999999999=x",
        "CN=web,2.5.4.99999999999999999999=x",
        "CN=a+4294967296=b",
        "2.5.4.3=ok,1.2.840.113549.1.9.1.44444444444=x",
        "22222222222U\u{4}4=x",
        "2.5.99999999999.x=y",
    ] {
        let e = parse_subject(subject).unwrap_err();
        assert_eq!(e.kind, AdminErrorKind::Invalid);
        assert!(
            e.message.contains("has an arc larger than"),
            "{subject}: {}",
            e.message
        );
    }
    // The largest arc that fits, an escaped separator and a value that
    // only looks like a type are still read as before.
    assert!(parse_subject("2.5.4.3=web,2.5.4294967295=x").is_ok());
    assert!(parse_subject("CN=a\\,99999999999=b").is_ok());
    assert!(parse_subject("CN=99999999999").is_ok());
}

#[test]
fn the_fuzz_entries_judge_what_import_and_request_judge() {
    let der = certificate(30);
    let pem = der::pem::encode_string("CERTIFICATE", LineEnding::LF, &der).unwrap();
    assert_eq!(judge_certificate_file(pem.as_bytes()).unwrap(), der);
    assert_eq!(judge_certificate_file(&der).unwrap(), der);
    let e = judge_certificate_file(b"garbage").unwrap_err();
    assert!(e.contains("not one well-formed"), "{e}");
    let sans = ["DNS:web.example.com".to_owned(), "IP:192.0.2.1".to_owned()];
    judge_request_arguments("CN=web.example.com", &sans, &der).unwrap();
    let e = judge_request_arguments(" ", &sans, &[]).unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let e = judge_request_arguments("CN=a", &["FTP:x".to_owned()], &[]).unwrap_err();
    assert!(e.contains("unknown type"), "{e}");
}

fn agent() -> (tempfile::TempDir, Agent) {
    let policy = format!(
        "{}\n[[class]]\nname = \"sealing\"\npurpose = \"encryption\"\nalgorithms = [\"aes:256\"]\n\
         protect_period = \"365d\"\nprocess_period = \"730d\"\n",
        crate::agent::tests::STRICT_SIGNING
    );
    crate::agent::tests::mock_agent(&policy)
}

fn call(a: &Agent, req: KeyRequest) -> AResult<KeyResponse> {
    a.lifecycle
        .key_call(&crate::agent::tests::admin_peer(), req)
}

fn create(a: &Agent, name: &str, class: &str) {
    call(
        a,
        KeyRequest::Create {
            name: name.into(),
            class: class.into(),
            algorithm: None,
            token: None,
            owner: None,
        },
    )
    .unwrap();
}

fn csr(name: &str) -> KeyRequest {
    KeyRequest::Cert(CertRequest::Request {
        name: name.into(),
        token: None,
        version: None,
        subject: "CN=a".into(),
        sans: Vec::new(),
    })
}

#[test]
fn keys_that_may_not_sign_are_refused_before_the_hsm_signs() {
    let (_d, a) = agent();
    create(&a, "sealer", "sealing");
    let e = call(&a, csr("sealer")).unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::Refused);
    assert!(e.message.contains("encryption key"), "{}", e.message);
    create(&a, "signer", "signing");
    for action in [
        keyward_protocol::admin::KeyAction::Activate,
        keyward_protocol::admin::KeyAction::Suspend,
    ] {
        call(
            &a,
            KeyRequest::Transition {
                name: "signer".into(),
                token: None,
                action,
                reason: Some("test".into()),
                code: None,
            },
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
    }
    let e = call(&a, csr("signer")).unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::Refused);
    assert!(e.message.contains("suspended"), "{}", e.message);
    let e = call(
        &a,
        KeyRequest::Cert(CertRequest::Request {
            name: "signer".into(),
            token: None,
            version: Some(9),
            subject: "CN=a".into(),
            sans: Vec::new(),
        }),
    )
    .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::NotFound);
}
