//! Key integrity in strict mode: objects planted under a managed key's
//! label or `CKA_ID` (through keyward, or directly on the backend token as
//! root could) are never taken for the managed key or the audit key; keys
//! made behind keyward's back are quarantined and reported; adoption keeps
//! to the class.

use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyward_tests::admin::{
    backend_token, default_class_policy, find, id_of, install_policy, keyward_json, keyward_ok,
    sign_grant_toml, signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, hex, unhex, Ctx};

/// DER of the P-256 curve OID.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const DIGEST: [u8; 32] = [0x5a; 32];
/// An attacker's P-256 public key (`CKA_EC_POINT`, DER) and its ECDSA
/// signature (r || s) over [`DIGEST`], made outside the HSM.
const ATTACKER_POINT: &str =
    "0441 04aa1eb496692cabeac6ff8bd742d34043a99106858e900469a342a4bb7a86d2\
     61cc9e8562d27e6c0f996c51e9a0bfbd7406ea54346334eef76d977b2f79d63121";
const ATTACKER_SIGNATURE: &str = "96858cdac106f52a69b74a3f2b5792907e8d485e72d9a030c80e5aae15842a50\
     ce32a370a3a31b7a29decde5ac4798ac3735d6fcc68ed1061a16cb06e188a513";
const AUDIT_KEY_ID: &[u8] = b"keyward-audit-key";

/// Strict; application [`APPLICATION`]; class `signing` (EC P-256, sign and
/// verify granted), class `aes` (AES-256 encryption, granted), and
/// `default_class = "app"` (EC P-256 signing keys applications generate).
fn policy() -> String {
    policy_with("")
}

/// [`policy`] with `extra` (whole tables) appended.
fn policy_with(extra: &str) -> String {
    let aes = format!(
        "\n[[class]]\nname = \"aes\"\npurpose = \"encryption\"\nalgorithms = [\"aes:256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\n\
         grants = [ {{ application = \"{APPLICATION}\", operations = [\"encrypt\", \"decrypt\"] }} ]\n"
    );
    default_class_policy(&format!(
        "{}{aes}{extra}\n",
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION))
    ))
}

/// A public key object with the attacker's point.
fn attacker_public(token: bool, label: &[u8], id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(token),
        Attribute::EcParams(P256.to_vec()),
        Attribute::EcPoint(unhex(ATTACKER_POINT)),
        Attribute::Verify(true),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

fn ec_point(s: &Session, h: ObjectHandle) -> Vec<u8> {
    match s
        .get_attributes(h, &[AttributeType::EcPoint])
        .expect("CKA_EC_POINT")
        .pop()
    {
        Some(Attribute::EcPoint(p)) => p,
        other => panic!("no CKA_EC_POINT: {other:?}"),
    }
}

/// A managed signing key `name`, created and activated.
fn signing_key(tb: &Env, name: &str) {
    keyward_ok(tb, &["key", "create", name, "--class", "signing"], 0);
    keyward_ok(tb, &["key", "activate", name], 0);
}

/// The records `keyward --json audit query` prints.
fn trail(tb: &Env) -> Vec<Json> {
    keyward_tests::admin::audit_query(tb, &[])
}

/// The findings of `keyward --json discover`.
fn discover(tb: &Env) -> Vec<Json> {
    keyward_json(tb, &["discover"], 0).items().to_vec()
}

// Finding 10: through keyward, no application can give an object a managed
// key's label or CKA_ID (or the audit key's), by any call that makes or
// renames objects; and a client that takes the last match of a search by
// label (OpenSSL's libp11) still gets the managed key.
keyward_test!(fn an_application_cannot_plant_an_object_under_a_managed_keys_name_or_cka_id(tb) {
    tb.require_agent("managed keys");
    install_policy(&tb, &policy());
    signing_key(&tb, "web");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let private = find(&s, "web", ObjectClass::PRIVATE_KEY);
    assert_eq!(private.len(), 1);
    let id = id_of(&s, private[0]);
    let prohibited = cryptoki::error::RvError::ActionProhibited;

    // C_CreateObject: the managed key's label, its CKA_ID, the audit key's.
    expect_err(s.create_object(&attacker_public(true, b"web", b"attacker")), prohibited);
    expect_err(s.create_object(&attacker_public(false, b"web", b"attacker")), prohibited);
    expect_err(s.create_object(&attacker_public(true, b"other", &id)), prohibited);
    expect_err(s.create_object(&attacker_public(true, b"other", AUDIT_KEY_ID)), prohibited);
    expect_err(s.create_object(&attacker_public(true, b"keyward-audit", b"x")), prohibited);
    // C_SetAttributeValue and C_CopyObject renaming an innocent object.
    let innocent = s
        .create_object(&attacker_public(true, b"innocent", b"innocent"))
        .expect("a public key under a name of its own");
    expect_err(s.update_attributes(innocent, &[Attribute::Label(b"web".to_vec())]), prohibited);
    expect_err(s.update_attributes(innocent, &[Attribute::Id(id.clone())]), prohibited);
    expect_err(s.copy_object(innocent, &[Attribute::Label(b"web".to_vec())]), prohibited);
    expect_err(s.copy_object(innocent, &[Attribute::Id(id.clone())]), prohibited);
    // Generation (under the default class), derivation: the same names.
    let gen_public = |label: &[u8], id: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Verify(true),
            Attribute::Label(label.to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let gen_private = |label: &[u8], id: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::Label(label.to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    expect_err(
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &gen_public(b"web", b"new"), &gen_private(b"web", b"new")),
        prohibited,
    );
    expect_err(
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &gen_public(b"new", &id), &gen_private(b"new", &id)),
        prohibited,
    );
    // The default class still makes managed keys under names of their own.
    let (_, made) = s
        .generate_key_pair(&Mechanism::EccKeyPairGen, &gen_public(b"app-key", b"app-key"), &gen_private(b"app-key", b"app-key"))
        .expect("a key of the default class");
    s.sign(&Mechanism::Ecdsa, made, &DIGEST).expect("the application's key signs");
    keyward_ok(&tb, &["key", "show", "app-key"], 0);

    // The refusals are in the trail.
    let refusals = trail(&tb)
        .into_iter()
        .filter(|r| r.str_at("kind") == "refusal" && r.str_at("reason").contains("managed key"))
        .count();
    assert!(refusals >= 11, "{refusals} refusals recorded");

    // OpenSSL's libp11 enumerates the public keys by label and takes the
    // last match: it is the managed key, which does not accept the
    // attacker's signature and does accept the key's own.
    let publics = find(&s, "web", ObjectClass::PUBLIC_KEY);
    assert_eq!(publics.len(), 1, "a search by the managed name finds the managed key only");
    let last = *publics.last().expect("a public key");
    assert!(
        s.verify(&Mechanism::Ecdsa, last, &DIGEST, &unhex(ATTACKER_SIGNATURE)).is_err(),
        "the last match by label accepted the attacker's signature"
    );
    let sig = s.sign(&Mechanism::Ecdsa, private[0], &DIGEST).expect("sign with the managed key");
    s.verify(&Mechanism::Ecdsa, last, &DIGEST, &sig).expect("the managed key verifies its own signature");
});

// Finding 10 across applications: another admitted application (the
// probe, its own application by executable) cannot plant a public key under
// the managed key's name or CKA_ID, so this application's OpenSSL-style
// last match by label stays the managed key.
keyward_test!(fn another_application_cannot_plant_a_key_for_this_ones_last_match(tb) {
    tb.require_agent("two applications");
    let probe = env!("CARGO_BIN_EXE_plant_probe");
    install_policy(
        &tb,
        &policy_with(&format!("[[application]]\nname = \"attacker\"\nuid = {}\nexe = \"{probe}\"\n", uid())),
    );
    signing_key(&tb, "web");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let id = id_of(&s, find(&s, "web", ObjectClass::PRIVATE_KEY)[0]);
    let out = keyward_tests::tools::run_ok(
        std::process::Command::new(probe)
            .args(["web", &hex(&id), &hex(&unhex(ATTACKER_POINT))])
            .env("KEYWARD_MODULE", &tb.module)
            .env("KEYWARD_TOKEN", &tb.token)
            .env("KEYWARD_PIN", &tb.pin),
    );
    assert!(out.contains("label: CKR_ACTION_PROHIBITED"), "{out}");
    assert!(out.contains("id: CKR_ACTION_PROHIBITED"), "{out}");
    let publics = find(&s, "web", ObjectClass::PUBLIC_KEY);
    assert_eq!(publics.len(), 1, "{publics:?}");
    assert!(
        s.verify(&Mechanism::Ecdsa, *publics.last().expect("one"), &DIGEST, &unhex(ATTACKER_SIGNATURE)).is_err(),
        "the last match by label accepted the attacker's signature"
    );
    let by_attacker = trail(&tb)
        .into_iter()
        .filter(|r| r.str_at("kind") == "refusal" && r.str_at("exe") == probe)
        .count();
    assert_eq!(by_attacker, 2, "the attacker's two refusals are recorded with its executable");
});

// Finding 10: objects planted directly on the backend token (as root could)
// with the CKA_ID and label of a managed key, and with the audit key's
// CKA_ID: keyward neither shows nor uses them, `keyward discover` reports
// them as plants, and `keyward audit verify` still proves the genuine trail.
keyward_test!(fn a_plant_on_the_backend_is_never_taken_for_the_managed_key_or_the_audit_key(tb) {
    tb.require_agent("the backend token");
    install_policy(&tb, &policy());
    signing_key(&tb, "web");
    let (id, genuine_point) = {
        let ctx = Ctx::new(&tb);
        let s = ctx.user();
        let private = find(&s, "web", ObjectClass::PRIVATE_KEY)[0];
        let public = find(&s, "web", ObjectClass::PUBLIC_KEY)[0];
        (id_of(&s, private), ec_point(&s, public))
    };
    // The trail is sealed with a checkpoint at the stop.
    tb.stop_agent();
    let (_backend, b) = backend_token(&tb);
    // A whole key pair with the managed key's CKA_ID and label, whose
    // private key the attacker holds (it signs with it right here).
    let (_, planted_private) = b
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Verify(true),
                Attribute::Label(b"web".to_vec()),
                Attribute::Id(id.clone()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Label(b"web".to_vec()),
                Attribute::Id(id.clone()),
            ],
        )
        .expect("a planted key pair on the backend");
    let forged = b.sign(&Mechanism::Ecdsa, planted_private, &DIGEST).expect("the attacker signs");
    // A public key with the managed CKA_ID, and one with the audit key's.
    b.create_object(&attacker_public(true, b"web", &id)).expect("a planted public key");
    b.create_object(&attacker_public(true, b"keyward-audit", AUDIT_KEY_ID))
        .expect("a planted audit public key");
    tb.start_agent();

    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    for (what, template) in [
        ("by label", vec![Attribute::Label(b"web".to_vec())]),
        ("by CKA_ID", vec![Attribute::Id(id.clone())]),
        ("by label and CKA_ID", vec![Attribute::Label(b"web".to_vec()), Attribute::Id(id.clone())]),
    ] {
        for (class, n) in [(ObjectClass::PRIVATE_KEY, 1), (ObjectClass::PUBLIC_KEY, 1)] {
            let mut t = template.clone();
            t.push(Attribute::Class(class));
            let found = s.find_objects(&t).expect("C_FindObjects");
            assert_eq!(found.len(), n, "{what}, {class}: {found:?}");
        }
    }
    let all_private = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).expect("find");
    assert_eq!(all_private.len(), 1, "an enumeration shows the managed key only: {all_private:?}");
    assert!(
        s.find_objects(&[Attribute::Id(AUDIT_KEY_ID.to_vec())]).expect("find").is_empty(),
        "an object with the audit key's CKA_ID is visible"
    );
    let public = find(&s, "web", ObjectClass::PUBLIC_KEY)[0];
    assert_eq!(ec_point(&s, public), genuine_point, "the public key found is not the managed one");
    assert!(
        s.verify(&Mechanism::Ecdsa, public, &DIGEST, &forged).is_err(),
        "the managed key accepted the planted private key's signature"
    );
    let private = find(&s, "web", ObjectClass::PRIVATE_KEY)[0];
    let sig = s.sign(&Mechanism::Ecdsa, private, &DIGEST).expect("sign with the managed key");
    s.verify(&Mechanism::Ecdsa, public, &DIGEST, &sig)
        .expect("the private key found is the managed key's (its signature verifies)");

    // The administrator's checks use the version's own objects too.
    let verified = keyward_ok(&tb, &["key", "verify", "web"], 0);
    assert!(verified.contains("verified"), "{verified}");
    let report = keyward_json(&tb, &["report"], 0);
    let web = report
        .array_at("keys")
        .iter()
        .find(|k| k.str_at("name") == "web")
        .unwrap_or_else(|| panic!("web is not in the report: {report}"));
    assert!(web.array_at("drift").is_empty(), "a plant counted as the key's drift: {web}");

    let findings = discover(&tb);
    let plants: Vec<&Json> = findings.iter().filter(|f| f.str_at("finding").starts_with("plant")).collect();
    let with_id = |want: &[u8]| plants.iter().filter(|f| f.str_at("backend_id") == hex(want)).count();
    assert_eq!(with_id(&id), 3, "discover reports the planted pair and public key: {findings:?}");
    assert_eq!(with_id(AUDIT_KEY_ID), 1, "discover reports the planted audit key: {findings:?}");

    // The genuine trail still verifies (its checkpoints were signed by the
    // genuine audit key), and new checkpoints are signed by it too.
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    tb.stop_agent();
    tb.start_agent();
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
});

// A store from before fingerprints (no audit key recorded) with a planted
// public key and a planted key pair under the audit key's CKA_ID: the agent
// takes the pair that signed the last checkpoint, records it, and the trail
// still verifies.
keyward_test!(fn an_audit_key_from_before_fingerprints_is_told_from_plants_by_its_checkpoints(tb) {
    tb.require_agent("the backend token");
    install_policy(&tb, &policy());
    signing_key(&tb, "web");
    tb.stop_agent();
    {
        let db = rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open the inventory");
        let n = db.execute("DELETE FROM agent_keys", []).expect("forget the audit key's record");
        assert_eq!(n, 1, "the audit key was recorded at the first start");
    }
    let (_backend, b) = backend_token(&tb);
    b.create_object(&attacker_public(true, b"keyward-audit", AUDIT_KEY_ID)).expect("a planted public key");
    b.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Verify(true),
            Attribute::Id(AUDIT_KEY_ID.to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::Id(AUDIT_KEY_ID.to_vec()),
        ],
    )
    .expect("a planted key pair");
    tb.start_agent();
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    keyward_ok(&tb, &["key", "rotate", "web"], 0);
    tb.stop_agent();
    tb.start_agent();
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "new checkpoints are signed by the genuine key: {verified}");
    let db = rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open the inventory");
    let n: i64 = db.query_row("SELECT count(*) FROM agent_keys", [], |r| r.get(0)).expect("count");
    assert_eq!(n, 1, "the audit key is recorded again");
});

/// The fingerprint the inventory holds for version 1 of key `name`.
fn stored_fingerprint(tb: &Env, name: &str) -> Option<Vec<u8>> {
    let db =
        rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open the inventory");
    db.query_row(
        "SELECT v.fingerprint FROM key_versions v JOIN keys k ON k.id = v.key_id
          WHERE k.name = ?1 AND v.version = 1",
        [name],
        |r| r.get(0),
    )
    .expect("the version's row")
}

fn clear_fingerprint(tb: &Env, name: &str) {
    let db =
        rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open the inventory");
    db.execute(
        "UPDATE key_versions SET fingerprint = NULL
          WHERE key_id = (SELECT id FROM keys WHERE name = ?1)",
        [name],
    )
    .expect("clear the fingerprint");
}

// A version recorded before fingerprints gets one at the agent's next start
// from the one object with its CKA_ID; with a plant beside it, none is
// recorded and the start says so in the trail.
keyward_test!(fn a_version_without_a_fingerprint_gets_one_at_the_next_start_unless_ambiguous(tb) {
    tb.require_agent("the inventory");
    install_policy(&tb, &policy());
    signing_key(&tb, "web");
    let recorded = stored_fingerprint(&tb, "web").expect("a fingerprint recorded at creation");
    assert_eq!(recorded.len(), 32);
    tb.stop_agent();
    clear_fingerprint(&tb, "web");
    tb.start_agent();
    assert_eq!(stored_fingerprint(&tb, "web"), Some(recorded.clone()), "recorded again at start");

    let id = {
        let ctx = Ctx::new(&tb);
        let s = ctx.user();
        id_of(&s, find(&s, "web", ObjectClass::PRIVATE_KEY)[0])
    };
    tb.stop_agent();
    clear_fingerprint(&tb, "web");
    let (_backend, b) = backend_token(&tb);
    b.create_object(&attacker_public(true, b"web", &id)).expect("a planted public key");
    tb.start_agent();
    assert_eq!(stored_fingerprint(&tb, "web"), None, "a fingerprint was chosen between two keys");
    let reported = trail(&tb).into_iter().any(|r| {
        r.str_at("kind") == "discovery"
            && r.str_at("operation") == "fingerprint"
            && r.at("key").as_str() == Some("web")
    });
    assert!(reported, "the ambiguous version is not reported in the trail");
});

// Finding 11: a key made directly on the backend token is invisible and
// unusable through keyward in strict mode, reported by discovery (and by
// the scheduler's, once), and adoption refuses a key that does not keep to
// the class, changing nothing.
keyward_test!(fn a_key_made_behind_keywards_back_is_quarantined_and_adopted_only_if_compliant(tb) {
    tb.require_agent("the backend token");
    install_policy(&tb, &policy());
    let path = tb.path("keyward-agent.toml");
    let mut config = std::fs::read_to_string(&path).expect("read the agent configuration");
    config.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, config).expect("write the agent configuration");
    tb.stop_agent();
    let (_backend, b) = backend_token(&tb);
    b.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Verify(true),
            Attribute::Label(b"shadow".to_vec()),
            Attribute::Id(b"shadow".to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(b"shadow".to_vec()),
            Attribute::Id(b"shadow".to_vec()),
        ],
    )
    .expect("a shadow key pair on the backend");
    let aes = |label: &[u8], readable: bool| {
        b.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                // SoftHSM2 turns the other uses on unless told: one purpose.
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Sensitive(!readable),
                Attribute::Extractable(readable),
                Attribute::Label(label.to_vec()),
                Attribute::Id(label.to_vec()),
            ],
        )
        .expect("an AES key on the backend")
    };
    aes(b"loose-aes", true);
    aes(b"tight-aes", false);
    tb.start_agent();

    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    for label in ["shadow", "loose-aes", "tight-aes"] {
        let found = s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]).expect("find");
        let keys: Vec<_> = found
            .into_iter()
            .filter(|&h| {
                !matches!(
                    s.get_attributes(h, &[AttributeType::Class]).ok().and_then(|mut v| v.pop()),
                    Some(Attribute::Class(ObjectClass::PUBLIC_KEY))
                )
            })
            .collect();
        assert!(keys.is_empty(), "the shadow key {label} is visible through keyward: {keys:?}");
    }
    assert!(s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).expect("find").is_empty());
    assert!(s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)]).expect("find").is_empty());

    // The scheduler's first pass (a second after the start) recorded each
    // once (a discovery by an administrator records them too, as theirs).
    let deadline = Instant::now() + Duration::from_secs(20);
    let by_scheduler = |label: &str| {
        trail(&tb)
            .into_iter()
            .filter(|r| {
                r.str_at("kind") == "discovery"
                    && r.str_at("actor") == "scheduler"
                    && r.at("key").as_str() == Some(label)
            })
            .count()
    };
    while by_scheduler("loose-aes") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(by_scheduler("loose-aes"), 1);
    assert_eq!(by_scheduler("shadow"), 1, "one record for the pair (its public half is not a second key)");
    let findings = discover(&tb);
    for label in ["shadow", "loose-aes", "tight-aes"] {
        assert!(
            findings.iter().any(|f| f.str_at("label") == label && f.str_at("finding") == "unmanaged"),
            "{label} is not reported: {findings:?}"
        );
    }

    let addr = std::fs::read_to_string(tb.path("state/metrics.addr")).expect("metrics.addr");
    let scrape = http_get(addr.trim());
    assert!(
        scrape.lines().any(|l| l.starts_with("keyward_shadow_keys{") && l.ends_with(" 3")),
        "no shadow key gauge of 3:\n{}",
        scrape.lines().filter(|l| l.contains("shadow")).collect::<Vec<_>>().join("\n")
    );

    // Adoption of the readable, extractable AES key: refused, nothing changed.
    let out = keyward_ok(
        &tb,
        &["discover", "--adopt", &hex(b"loose-aes"), "--name", "loose", "--class", "aes"],
        5,
    );
    let _ = out;
    let refused = keyward_json(&tb, &["key", "list"], 0);
    assert!(
        refused.items().iter().all(|k| k.str_at("name") != "loose"),
        "the non-compliant key entered the inventory: {refused}"
    );
    assert!(discover(&tb).iter().any(|f| f.str_at("label") == "loose-aes"), "still a shadow key");
    let err = keyward_tests::admin::keyward(
        &tb,
        &["discover", "--adopt", &hex(b"loose-aes"), "--name", "loose", "--class", "aes"],
    );
    let said = String::from_utf8_lossy(&err.stderr).into_owned() + &String::from_utf8_lossy(&err.stdout);
    assert!(
        said.contains("CKA_SENSITIVE") && said.contains("CKA_EXTRACTABLE"),
        "the refusal does not say why: {said}"
    );
    assert!(s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)]).expect("find").is_empty());

    // The compliant one is adopted, and once active and granted it is usable.
    keyward_ok(&tb, &["discover", "--adopt", &hex(b"tight-aes"), "--name", "tight", "--class", "aes"], 0);
    keyward_ok(&tb, &["key", "activate", "tight"], 0);
    let tight = s.find_objects(&[Attribute::Label(b"tight-aes".to_vec())]).expect("find");
    assert_eq!(tight.len(), 1, "the adopted key is visible");
    let iv = [0x11u8; 16];
    s.encrypt(&Mechanism::AesCbcPad(iv), tight[0], b"adopted").expect("the adopted key encrypts");
});

/// `GET /metrics` on `addr`: the body.
fn http_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    c.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
