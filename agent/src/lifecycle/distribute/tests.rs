//! Distribution's refusals with the in-memory backend: what is refused
//! before any request is recorded or anything is unwrapped.

use super::*;
use crate::agent::Agent;
use keyward_policy::Role;

/// [`crate::agent::tests::STRICT_SIGNING`] and `backed` (EC P-256
/// signing, backup).
fn agent() -> (tempfile::TempDir, Agent) {
    let policy = format!(
        "{}\n[[class]]\nname = \"backed\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"365d\"\nprocess_period = \"730d\"\nbackup = true\n",
        crate::agent::tests::STRICT_SIGNING
    );
    crate::agent::tests::mock_agent(&policy)
}

fn call(a: &Agent, req: DistRequest) -> AResult<KeyResponse> {
    a.lifecycle.key_call(
        &crate::agent::tests::admin_peer(),
        KeyRequest::Distribution(req),
    )
}

fn create(a: &Agent, name: &str, class: &str) {
    a.lifecycle
        .key_call(
            &crate::agent::tests::admin_peer(),
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

fn rsa(bytes: usize) -> Vec<u8> {
    let mut modulus = vec![0xc5u8; bytes];
    modulus[bytes - 1] |= 1;
    PublicParts::Rsa {
        modulus,
        exponent: vec![1, 0, 1],
    }
    .to_spki()
    .unwrap()
}

fn export(name: &str, recipient: Vec<u8>) -> DistRequest {
    DistRequest::Export {
        name: name.into(),
        token: None,
        version: None,
        recipient,
        reason: "r".into(),
    }
}

fn requests(a: &Agent) -> usize {
    a.lifecycle.keys.inventory().requests(None).unwrap().len()
}

#[test]
fn exports_are_refused_before_any_request_unless_backed_up_live_and_for_rsa_2048() {
    let (_d, a) = agent();
    create(&a, "plain", "signing");
    create(&a, "backed", "backed");
    let kind = |r: AResult<KeyResponse>| r.map(|_| ()).map_err(|e| e.kind);
    assert_eq!(
        kind(call(&a, export("nope", rsa(256)))),
        Err(AdminErrorKind::NotFound)
    );
    let e = call(&a, export("plain", rsa(256))).unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::Refused);
    assert!(e.message.contains("not exportable"), "{}", e.message);
    let e = call(&a, export("backed", rsa(128))).unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::Refused);
    assert!(e.message.contains("1024 bits"), "{}", e.message);
    assert_eq!(
        kind(call(&a, export("backed", b"not a key".to_vec()))),
        Err(AdminErrorKind::Invalid)
    );
    let missing_version = DistRequest::Export {
        name: "backed".into(),
        token: None,
        version: Some(7),
        recipient: rsa(256),
        reason: "r".into(),
    };
    assert_eq!(
        kind(call(&a, missing_version)),
        Err(AdminErrorKind::NotFound)
    );
    assert_eq!(requests(&a), 0, "a refused export recorded a request");
    let Ok(KeyResponse::Pending(p)) = call(&a, export("backed", rsa(256))) else {
        panic!("no request");
    };
    assert_eq!((p.action.as_str(), p.needed), (KEY_EXPORT, 0));
    assert!(
        p.parameters.contains(&sha256_hex(&rsa(256))),
        "{}",
        p.parameters
    );
}

/// A file as [`file::write`] makes it, with a seal nobody checks here.
fn export_file(edit: impl FnOnce(&mut file::Body)) -> Vec<u8> {
    let mut body = file::Body {
        record: file::Record {
            name: "web".into(),
            class: "backed".into(),
            algorithm: "ec:p256".parse().unwrap(),
            purpose: keyward_policy::Purpose::Signing,
            version: 1,
            backend_id: vec![7; 16],
            public_key: None,
            created_at: 1,
            activated_at: None,
            state: KeyState::Active,
            version_state: KeyState::Active,
        },
        source: file::Source {
            token: "a".into(),
            host: "h".into(),
            request_id: "00ff".into(),
            requester: "alice".into(),
            approvers: vec!["bob".into()],
            exported_at: 2,
        },
        recipient_sha256: vec![0; 32],
        oaep_hash: ck::CKM_SHA256,
        wrapped_transport: vec![1; 256],
        wrapped_key: vec![2; 100],
    };
    edit(&mut body);
    file::write(file::body_bytes(&body).unwrap(), vec![3; 16]).unwrap()
}

fn import(file: Vec<u8>, class: &str) -> DistRequest {
    DistRequest::Import {
        file,
        class: class.into(),
        name: None,
        token: None,
        reason: "r".into(),
    }
}

#[test]
fn imports_are_refused_before_anything_is_unwrapped() {
    let (_d, a) = agent();
    let keys = || a.lifecycle.keys.all().len();
    let refused = |req, kind, text: &str| {
        let e = call(&a, req).unwrap_err();
        assert_eq!(e.kind, kind, "{}", e.message);
        assert!(e.message.contains(text), "{}", e.message);
    };
    let good = export_file(|_| {});
    refused(
        import(good[..good.len() - 3].to_vec(), "backed"),
        AdminErrorKind::Invalid,
        "truncated",
    );
    refused(
        import(export_file(|b| b.record.backend_id.clear()), "backed"),
        AdminErrorKind::Invalid,
        "CKA_ID of 0 bytes",
    );
    refused(
        import(good.clone(), "none"),
        AdminErrorKind::NotFound,
        "no key class",
    );
    refused(
        import(
            export_file(|b| b.record.algorithm = "aes:256".parse().unwrap()),
            "backed",
        ),
        AdminErrorKind::Refused,
        "is for signing",
    );
    // A key pair whose record carries no public key.
    refused(
        import(good.clone(), "backed"),
        AdminErrorKind::Invalid,
        "without its public key",
    );
    // No managed RSA wrapping key has the recipient's public key.
    let with_public = export_file(|b| {
        b.record.public_key = Some(
            PublicParts::Ec {
                curve: keyward_policy::Curve::P256,
                point: {
                    let mut p = vec![4u8];
                    p.extend([1u8; 64]);
                    p
                },
            }
            .to_spki()
            .unwrap(),
        )
    });
    refused(
        import(with_public, "backed"),
        AdminErrorKind::NotFound,
        "no managed RSA wrapping key",
    );
    assert_eq!(keys(), 0, "a refused import recorded a key");
}

/// Exporting, collecting and importing are for the administrators who
/// may create keys (security officers and key owners); showing a
/// public key too (it reads the HSM).
#[test]
fn distribution_is_for_those_who_create_keys() {
    for role in Role::ALL {
        for name in ["key.export", "key.collect", "key.import", "key.pubkey"] {
            assert_eq!(
                role.may_request(name),
                role.may_request("key.create"),
                "{role} {name}"
            );
        }
    }
}
