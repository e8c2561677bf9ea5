//! Destruction on a real SoftHSM2 token: keys recognised by their
//! fingerprints (EC private keys, which show no public value, by a
//! signature), objects really gone from the token, a plant with the key's
//! `CKA_ID` left alone, and an interrupted run finished. The agent is
//! built in-process from a testbed's configuration; no agent process runs.

use std::time::SystemTime;

use cryptoki_sys as ck;
use keyward_protocol::{Attribute, Mechanism};

use super::*;
use crate::agent::Agent;
use crate::backend::{Backend, BackendObject};

const POLICY: &str = r#"
[settings]
mode = "strict"

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
"#;

/// A testbed's SoftHSM2 token and an agent on it, in this process.
fn agent() -> (keyward_testbed::Testbed, tempfile::TempDir, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let options = keyward_testbed::Options {
        pin: None,
        so_pin: None,
        policy: keyward_testbed::Policy::Text(POLICY.into()),
        ..Default::default()
    };
    // The testbed needs an agent binary only to start it, which this test
    // never does: its Agent runs in this process.
    let exe = std::env::current_exe().unwrap();
    let bins = keyward_testbed::Bins::in_dir(exe.parent().unwrap()).with_agent(&exe);
    let bed = keyward_testbed::Testbed::create(&dir.path().join("bed"), &options, bins)
        .unwrap_or_else(|e| panic!("testbed: {e}"));
    // The library reads it when it loads, once per process: this is the
    // only test of the crate that loads SoftHSM2, and there is one.
    std::env::set_var("SOFTHSM2_CONF", bed.softhsm_conf());
    let config = crate::config::Config::load(&bed.config()).unwrap();
    let policy = keyward_policy::Policy::from_str(POLICY, "test").unwrap();
    let agent = Agent::from_config(&config).unwrap().with_policy(policy);
    (bed, dir, agent)
}

fn call(a: &Agent, req: KeyRequest) {
    a.lifecycle
        .key_call(&crate::agent::tests::admin_peer(), req)
        .unwrap();
}

/// Active key `name` with two versions.
fn key<'a>(a: &'a Agent, name: &str) -> Target<'a> {
    call(
        a,
        KeyRequest::Create {
            name: name.into(),
            class: "signing".into(),
            algorithm: None,
            token: None,
            owner: None,
        },
    );
    call(
        a,
        KeyRequest::Transition {
            name: name.into(),
            token: None,
            action: KeyAction::Activate,
            reason: None,
            code: None,
        },
    );
    call(
        a,
        KeyRequest::Rotate {
            name: name.into(),
            token: None,
        },
    );
    a.lifecycle.target(None, name).unwrap()
}

fn backend(a: &Agent) -> &dyn Backend {
    a.tokens[0].backend().unwrap().as_ref()
}

/// The token's objects with `CKA_ID` `id`, of class `cko`.
fn with_id(a: &Agent, id: &[u8], cko: u64) -> Vec<BackendObject> {
    let b = backend(a);
    b.find_objects(
        b.anchor_session(),
        &[
            Attribute::ulong(ck::CKA_CLASS, cko),
            Attribute::bytes(ck::CKA_ID, id.to_vec()),
        ],
    )
    .unwrap()
}

fn destroy(a: &Agent, t: &Target<'_>) {
    let by = crate::agent::tests::admin_peer().as_administrator();
    a.lifecycle
        .destroy_key(
            t,
            ("uid:0", &by),
            ("retired", None),
            None,
            SystemTime::now(),
        )
        .unwrap();
}

#[test]
fn on_softhsm_a_destroyed_keys_objects_are_gone_a_plant_stays_and_a_cut_off_run_finishes() {
    let (_bed, _dir, a) = agent();
    let b = backend(&a);
    let t = key(&a, "k");
    let ids: Vec<Vec<u8>> = t
        .key
        .versions
        .iter()
        .map(|v| v.backend_id.clone())
        .collect();
    for id in &ids {
        assert_eq!(with_id(&a, id, ck::CKO_PRIVATE_KEY).len(), 1);
        assert_eq!(with_id(&a, id, ck::CKO_PUBLIC_KEY).len(), 1);
    }
    // A plant: another key pair under version 1's CKA_ID, made behind
    // keyward's back.
    let p256 = keyward_policy::CurveParams::ec_params(keyward_policy::Curve::P256);
    let (plant_public, plant_private) = b
        .generate_key_pair(
            b.anchor_session(),
            &Mechanism::plain(ck::CKM_EC_KEY_PAIR_GEN),
            &[
                Attribute::bool(ck::CKA_TOKEN, true),
                Attribute::bytes(ck::CKA_ID, ids[0].clone()),
                Attribute::bytes(ck::CKA_EC_PARAMS, p256),
                Attribute::bool(ck::CKA_VERIFY, true),
            ],
            &[
                Attribute::bool(ck::CKA_TOKEN, true),
                Attribute::bool(ck::CKA_PRIVATE, true),
                Attribute::bool(ck::CKA_SENSITIVE, true),
                Attribute::bytes(ck::CKA_ID, ids[0].clone()),
                Attribute::bool(ck::CKA_SIGN, true),
            ],
        )
        .unwrap();

    destroy(&a, &t);
    assert_eq!(
        with_id(&a, &ids[0], ck::CKO_PRIVATE_KEY),
        vec![plant_private],
        "version 1's private key, or the plant"
    );
    assert_eq!(
        with_id(&a, &ids[0], ck::CKO_PUBLIC_KEY),
        vec![plant_public],
        "version 1's public key, or the plant"
    );
    for cko in [ck::CKO_PRIVATE_KEY, ck::CKO_PUBLIC_KEY] {
        assert!(with_id(&a, &ids[1], cko).is_empty(), "version 2");
    }
    let k = a.keys.key(t.key.record.id).unwrap();
    assert_eq!(k.record.state, KeyState::Destroyed);
    assert!(k.versions.iter().all(|v| v.state == KeyState::Destroyed));

    // A run cut off after it removed version 1's private key (the first
    // object it removes): the next run proves and removes the rest.
    let u = key(&a, "u");
    let ids: Vec<Vec<u8>> = u
        .key
        .versions
        .iter()
        .map(|v| v.backend_id.clone())
        .collect();
    let private = with_id(&a, &ids[0], ck::CKO_PRIVATE_KEY);
    b.destroy_object(b.anchor_session(), private[0]).unwrap();
    // As after a restart: nothing judged yet, each object proves itself
    // (version 2's private key by a signature its public key verifies).
    a.keys.forget_judged_key(u.key.record.id);
    destroy(&a, &u);
    for id in &ids {
        for cko in [ck::CKO_PRIVATE_KEY, ck::CKO_PUBLIC_KEY] {
            assert!(with_id(&a, id, cko).is_empty());
        }
    }
    assert_eq!(
        a.keys.key(u.key.record.id).unwrap().record.state,
        KeyState::Destroyed
    );
}
