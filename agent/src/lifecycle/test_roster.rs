//! The administrators of the lifecycle's dual-control tests: a uid and a
//! signing key each, their requests on the admin path, and decisions
//! signed as `keyward` signs them.

use ed25519_dalek::Signer as _;
use keyward_policy::Decision;
use keyward_protocol::admin::ApprovalRequest;
use keyward_protocol::approval::decision_statement;

use super::*;
use crate::agent::Agent;

/// An administrator of the test roster: their uid and signing key.
pub(crate) struct Admin {
    pub(crate) uid: u32,
    pub(crate) key: Signer,
}

pub(crate) enum Signer {
    Ed(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl Signer {
    pub(crate) fn public(&self) -> String {
        match self {
            Signer::Ed(k) => format!("ed25519:{}", hex::encode(k.verifying_key().as_bytes())),
            Signer::P256(k) => format!(
                "p256:{}",
                hex::encode(k.verifying_key().to_encoded_point(false).as_bytes())
            ),
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Signer::Ed(k) => k.sign(message).to_bytes().to_vec(),
            Signer::P256(k) => {
                let s: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(k, message);
                s.to_bytes().to_vec()
            }
        }
    }
}

/// An administrator with uid `uid` and the Ed25519 key of seed `seed`.
pub(crate) fn ed(uid: u32, seed: u8) -> Admin {
    Admin {
        uid,
        key: Signer::Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32])),
    }
}

pub(crate) fn peer(a: &Admin) -> Peer {
    let mut p = crate::agent::tests::admin_peer();
    p.uid = a.uid;
    p
}

pub(crate) fn call(a: &Agent, who: &Admin, req: KeyRequest) -> AResult<KeyResponse> {
    a.lifecycle.key_call(&peer(who), req)
}

/// `who`'s signature of `decision` on `r`, as `keyward` makes it.
pub(crate) fn signed(who: &Admin, decision: Decision, r: &ApprovalRequest) -> Vec<u8> {
    who.key
        .sign(&decision_statement(decision, &r.content().digest()))
}

pub(crate) fn decide(
    a: &Agent,
    who: &Admin,
    id: &str,
    decision: Decision,
    signature: Vec<u8>,
) -> AResult<KeyResponse> {
    call(
        a,
        who,
        KeyRequest::RequestDecide {
            id: id.into(),
            decision,
            signature: Some(signature),
        },
    )
}

pub(crate) fn approve(a: &Agent, who: &Admin, r: &ApprovalRequest) -> AResult<KeyResponse> {
    decide(
        a,
        who,
        &r.id,
        Decision::Approve,
        signed(who, Decision::Approve, r),
    )
}

pub(crate) fn refused(r: AResult<KeyResponse>, kind: AdminErrorKind, needle: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.kind, kind, "{}", e.message);
            assert!(
                e.message.contains(needle),
                "{needle:?} not in {:?}",
                e.message
            );
        }
        Ok(other) => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

/// The roster's `[[administrator]]` entry of `name` with `roles`.
pub(crate) fn entry(name: &str, a: &Admin, roles: &str) -> String {
    format!(
        "\n[[administrator]]\nname = \"{name}\"\nuids = [{}]\nroles = [{roles}]\npublic_key = \"{}\"\n",
        a.uid,
        a.key.public()
    )
}
