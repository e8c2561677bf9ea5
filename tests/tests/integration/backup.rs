//! Backups with split knowledge through the `keyward` CLI, the real agent,
//! SoftHSM2 and the module: the backup key's ceremony approved by two
//! administrators who are also its custodians, a backup, a drill, forged
//! and damaged files refused, a disaster recovery onto a wiped token from
//! the custodians' shares, and a destroyed key that stays destroyed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::CertificateType;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use keyward_tests::admin::{
    application_toml, backend_token, certificate_of, find, id_of, install_policy, keyward,
    keyward_json, keyward_ok, uid, APPLICATION, CERT_SUBJECT,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{validate, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{unhex, Ctx};
use keyward_tests::roster::{
    as_bob, key_file, open_admin_socket_to_bob, public_key, text, ALICE_PEM, BOB, BOB_PEM,
};

const DIGEST: [u8; 32] = [0x42; 32];

/// Everything a test of backups needs: the two administrators' key files
/// and custodian identities, bob's own directory.
struct Admins {
    alice_key: PathBuf,
    bob_key: PathBuf,
    alice_identity: PathBuf,
    bob_identity: PathBuf,
    /// A directory bob owns (the testbed directory is root's).
    bob_dir: PathBuf,
}

/// A new custodian identity at `path`; its recipient.
fn custodian_key(tb: &Env, path: &Path) -> String {
    let out = keyward_ok(
        tb,
        &[
            "backup",
            "custodian-key",
            "new",
            "--out",
            path.to_str().unwrap(),
        ],
        0,
    );
    out.trim()
        .strip_prefix("share_recipient = \"")
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_owned()
}

/// A strict policy: `release` (EC signing) and `vault` (AES encryption)
/// allow backup, `tls` does not; alice and bob are security officers and
/// custodians.
fn setup(tb: &Env) -> Admins {
    tb.require_agent("backups");
    open_admin_socket_to_bob(tb);
    let bob_dir = tb.path("bob");
    std::fs::create_dir(&bob_dir).unwrap();
    std::os::unix::fs::chown(&bob_dir, Some(BOB), Some(BOB)).unwrap();
    std::fs::set_permissions(&bob_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let alice_key = key_file(tb, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(tb, "bob.pem", BOB_PEM, BOB);
    let alice_identity = tb.path("alice.age-key");
    let bob_identity = bob_dir.join("bob.age-key");
    let alice_recipient = custodian_key(tb, &alice_identity);
    let bob_recipient = custodian_key(tb, &bob_identity);
    std::os::unix::fs::chown(&bob_identity, Some(BOB), Some(BOB)).unwrap();
    let me = uid();
    let grant = |ops: &str| {
        format!("grants = [ {{ application = \"{APPLICATION}\", operations = [{ops}] }} ]")
    };
    let sign = grant("\"sign\", \"verify\"");
    let crypt = grant("\"encrypt\", \"decrypt\"");
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{app}\n\
         [[class]]\nname = \"release\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\nbackup = true\n{sign}\n\n\
         [[class]]\nname = \"vault\"\npurpose = \"encryption\"\nalgorithms = [\"aes:256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\nbackup = true\n{crypt}\n\n\
         [[class]]\nname = \"tls\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\n{sign}\n\n\
         [[administrator]]\nname = \"alice\"\nuids = [{me}]\n\
         roles = [\"security-officer\", \"custodian\"]\npublic_key = \"{alice}\"\n\
         share_recipient = \"{alice_recipient}\"\n\n\
         [[administrator]]\nname = \"bob\"\nuids = [{BOB}]\n\
         roles = [\"security-officer\", \"custodian\"]\npublic_key = \"{bob}\"\n\
         share_recipient = \"{bob_recipient}\"\n",
        app = application_toml(APPLICATION, me),
        alice = public_key(tb, &alice_key),
        bob = public_key(tb, &bob_key),
    );
    install_policy(tb, &policy);
    Admins {
        alice_key,
        bob_key,
        alice_identity,
        bob_identity,
        bob_dir,
    }
}

/// The id of the request a command recorded (exit 3).
fn pending(tb: &Env, args: &[&str]) -> String {
    keyward_json(tb, args, 3)
        .at("id")
        .as_str()
        .expect("a request id")
        .to_owned()
}

/// Alice and bob approve request `id`.
fn approve(tb: &Env, a: &Admins, id: &str) {
    keyward_ok(
        tb,
        &[
            "request",
            "approve",
            id,
            "--key",
            a.alice_key.to_str().unwrap(),
        ],
        0,
    );
    let out = as_bob(
        tb,
        &[
            "request",
            "approve",
            id,
            "--key",
            a.bob_key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = keyward_json(tb, &["request", "show", id], 0);
    assert_eq!(shown["status"].as_str(), Some("executed"), "{shown}");
}

/// The backup key's ceremony, approved.
fn ceremony(tb: &Env, a: &Admins) {
    let id = pending(
        tb,
        &[
            "backup",
            "init",
            "--threshold",
            "2",
            "--reason",
            "first ceremony",
        ],
    );
    approve(tb, a, &id);
}

/// Each custodian fetches their share into a file of their own.
fn fetch_shares(tb: &Env, a: &Admins) -> (PathBuf, PathBuf) {
    let alice_share = tb.path("alice.share");
    let got = keyward_json(
        tb,
        &[
            "backup",
            "share",
            "get",
            "--out",
            alice_share.to_str().unwrap(),
        ],
        0,
    );
    validate("backup-share-get.schema.json", &got);
    assert_eq!(got.str_at("custodian"), "alice", "{got}");
    let bob_share = a.bob_dir.join("bob.share");
    let out = as_bob(
        tb,
        &[
            "backup",
            "share",
            "get",
            "--out",
            bob_share.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    (alice_share, bob_share)
}

/// Signs [`DIGEST`] with key `name` through the module; the signature.
fn sign(tb: &Env, name: &str) -> Vec<u8> {
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    let private = find(&s, name, ObjectClass::PRIVATE_KEY);
    assert_eq!(private.len(), 1, "key {name}: {private:?}");
    s.sign(&Mechanism::Ecdsa, private[0], &DIGEST)
        .expect("the key signs")
}

/// Whether `signature` verifies under key `name`'s public key (module).
fn verifies(tb: &Env, name: &str, signature: &[u8]) -> bool {
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    let public = find(&s, name, ObjectClass::PUBLIC_KEY);
    assert_eq!(public.len(), 1, "key {name}: {public:?}");
    s.verify(&Mechanism::Ecdsa, public[0], &DIGEST, signature)
        .is_ok()
}

/// Key `name`'s public point, as the module shows it.
fn ec_point(tb: &Env, name: &str) -> Vec<u8> {
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    let public = find(&s, name, ObjectClass::PUBLIC_KEY)[0];
    match s
        .get_attributes(public, &[AttributeType::EcPoint])
        .expect("its attributes")
        .pop()
    {
        Some(Attribute::EcPoint(p)) => p,
        other => panic!("{other:?}"),
    }
}

/// A certificate of key `name`'s current public key, put on the backend
/// token beside it (the agent stopped meanwhile); its DER.
fn add_certificate(tb: &Env, name: &str) -> Vec<u8> {
    let (id, cert) = {
        let ctx = Ctx::new(tb);
        let s = ctx.user();
        let id = id_of(&s, find(&s, name, ObjectClass::PRIVATE_KEY)[0]);
        (
            id,
            certificate_of(&s, find(&s, name, ObjectClass::PUBLIC_KEY)[0]),
        )
    };
    tb.stop_agent();
    {
        let (_backend, b) = backend_token(tb);
        b.create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Label(name.as_bytes().to_vec()),
            Attribute::Id(id),
            Attribute::Subject(unhex(CERT_SUBJECT)),
            Attribute::Value(cert.clone()),
        ])
        .expect("the key's certificate on the backend token");
    }
    tb.start_agent();
    cert
}

/// The values of the certificates labelled `name` the application sees.
fn certificates(tb: &Env, name: &str) -> Vec<Vec<u8>> {
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    find(&s, name, ObjectClass::CERTIFICATE)
        .into_iter()
        .map(
            |c| match s.get_attributes(c, &[AttributeType::Value]).unwrap().pop() {
                Some(Attribute::Value(v)) => v,
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

/// Every key of the inventory, by name: (state, versions' CKA_IDs).
fn inventory(tb: &Env) -> Vec<(String, String, String)> {
    let doc = keyward_json(tb, &["key", "list"], 0);
    let mut keys: Vec<(String, String, String)> = doc
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
                k["versions"].to_string(),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// Wipes the SoftHSM2 token behind the agent and makes a new, empty one
/// with the same label and PINs: a lost HSM replaced by a new one.
fn replace_hsm(tb: &Env) {
    tb.stop_agent();
    let config =
        std::fs::read_to_string(tb.path("keyward-agent.toml")).expect("the agent's configuration");
    let label = config
        .lines()
        .find_map(|l| l.strip_prefix("backend_token_label = "))
        .expect("the backend token's label")
        .trim_matches('"')
        .to_owned();
    let read = |f: &str| {
        std::fs::read_to_string(tb.path(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", tb.path("softhsm2.conf"))
        .args(["--delete-token", "--token", &label])
        .output()
        .expect("softhsm2-util");
    assert!(out.status.success(), "{out:?}");
    keyward_tests::harness::softhsm_token(
        &tb.dir,
        &label,
        &read("backend.pin"),
        &read("backend.so-pin"),
    );
    tb.start_agent();
}

keyward_test!(fn a_backup_is_sealed_drilled_and_restored_onto_a_new_hsm_from_two_custodians_shares(tb) {
    let a = setup(&tb);
    for (name, class) in [("release", "release"), ("vault", "vault"), ("web", "tls"), ("old", "release")] {
        keyward_ok(&tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
    }
    keyward_ok(&tb, &["key", "rotate", "release"], 0);
    let signature = sign(&tb, "release");
    let point = ec_point(&tb, "release");
    let cert = add_certificate(&tb, "release");

    // No backup before the ceremony.
    let file = tb.path("first.kwbackup");
    let out = keyward(&tb, &["backup", "create", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(text(&out.stderr).contains("no backup key"), "{out:?}");
    ceremony(&tb, &a);
    let status = keyward_json(&tb, &["backup", "status"], 0);
    validate("backup-status.schema.json", &status);
    assert_eq!(status.at("present").as_bool(), Some(true), "{status}");
    assert_eq!(status.at("threshold").as_u64(), Some(2), "{status}");
    assert_eq!(status.at("custodians").as_array().map(Vec::len), Some(2), "{status}");
    // A second ceremony is refused.
    let out = keyward(&tb, &["backup", "init", "--threshold", "2", "--reason", "again"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");

    // The backup: release (both versions), vault and old; web's class has no backup.
    let shown = keyward_ok(&tb, &["backup", "create", file.to_str().unwrap()], 0);
    assert!(shown.contains("not in the backup: web: class \"tls\" does not allow backup"), "{shown}");
    assert!(shown.contains("release"), "{shown}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = keyward(&tb, &["backup", "create", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "never over an existing file: {out:?}");
    let bytes = std::fs::read(&file).unwrap();

    // The drill proves each version works, and changes nothing.
    let before = inventory(&tb);
    let drill = keyward_ok(&tb, &["backup", "verify", file.to_str().unwrap()], 0);
    assert!(drill.contains("drill: 4 key versions tried, 0 failed"), "{drill}");
    assert!(drill.contains("ECDSA signature"), "{drill}");
    assert!(drill.contains("AES-CBC-PAD"), "{drill}");
    assert_eq!(inventory(&tb), before);

    // Damaged, cut and forged files: refused, nothing changed.
    let write = |name: &str, b: &[u8]| {
        let p = tb.path(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let mut other_key = bytes.clone();
    other_key[10] ^= 0xff;
    for (name, damaged, code, says) in [
        ("cut.kwbackup", bytes[..bytes.len() - 7].to_vec(), 2, "truncated"),
        ("flipped.kwbackup", flipped, 5, "altered"),
        ("other.kwbackup", other_key, 5, "another backup key"),
        ("empty.kwbackup", Vec::new(), 2, "not a keyward backup file"),
    ] {
        let p = write(name, &damaged);
        for args in [
            vec!["backup", "verify", p.to_str().unwrap()],
            vec!["backup", "restore", "--yes", p.to_str().unwrap(), "--reason", "test"],
        ] {
            let out = keyward(&tb, &args);
            assert_eq!(out.status.code(), Some(code), "{name} {args:?}: {out:?}");
            assert!(text(&out.stderr).contains(says), "{name}: {out:?}");
        }
    }
    assert_eq!(inventory(&tb), before);
    assert!(keyward_json(&tb, &["request", "list"], 0).as_array().unwrap().is_empty());

    // A restore onto the token as it is: nothing to do, nothing changes.
    let id = pending(&tb, &["backup", "restore", "--yes", file.to_str().unwrap(), "--reason", "no-op"]);
    approve(&tb, &a, &id);
    assert_eq!(inventory(&tb), before);

    // The shares, each checked by its custodian.
    let (alice_share, bob_share) = fetch_shares(&tb, &a);
    let checked = keyward_ok(&tb, &["backup", "share", "check", alice_share.to_str().unwrap(),
        "--identity", a.alice_identity.to_str().unwrap()], 0);
    assert!(checked.contains("custodian:   alice"), "{checked}");
    let out = as_bob(&tb, &["backup", "share", "check", bob_share.to_str().unwrap(),
        "--identity", a.bob_identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Old is destroyed (two officers) after the backup was made.
    let id = pending(&tb, &["key", "destroy", "--yes", "old", "--reason", "retired", "--reason-code", "cessationOfOperation"]);
    approve(&tb, &a, &id);

    // The HSM is lost: a new, empty token.
    replace_hsm(&tb);
    let ctx = Ctx::new(&tb);
    assert!(find(&ctx.user(), "release", ObjectClass::PRIVATE_KEY).is_empty());
    drop(ctx);
    let out = keyward(&tb, &["backup", "restore", "--yes", file.to_str().unwrap(), "--reason", "dr"]);
    assert_eq!(out.status.code(), Some(4), "no backup key yet: {out:?}");

    // Alice's share alone: one of two; the key is not rebuilt.
    let sub = keyward_ok(&tb, &["backup", "share", "submit", alice_share.to_str().unwrap(),
        "--identity", a.alice_identity.to_str().unwrap()], 0);
    assert!(sub.contains("1 of 2 shares submitted"), "{sub}");
    // Bob's share in a dry run: it would rebuild the key, and holds nothing.
    let out = as_bob(&tb, &["--dry-run", "backup", "share", "submit", bob_share.to_str().unwrap(),
        "--identity", a.bob_identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("(2 of 2): the backup key is rebuilt"), "{out:?}");
    let out = keyward(&tb, &["backup", "restore", "--yes", file.to_str().unwrap(), "--reason", "dr"]);
    assert_eq!(out.status.code(), Some(4), "still no backup key: {out:?}");
    // Bob's share opened with alice's identity does not open.
    let stolen = tb.path("bob-copy.share");
    std::fs::copy(&bob_share, &stolen).unwrap();
    let out = keyward(&tb, &["backup", "share", "submit", stolen.to_str().unwrap(),
        "--identity", a.alice_identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Bob's own: the key is rebuilt in the new HSM.
    let out = as_bob(&tb, &["backup", "share", "submit", bob_share.to_str().unwrap(),
        "--identity", a.bob_identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("rebuilt"), "{out:?}");

    // The restore, approved by two: every key back but the destroyed one.
    let id = pending(&tb, &["backup", "restore", "--yes", file.to_str().unwrap(), "--reason", "disaster recovery"]);
    let params = keyward_json(&tb, &["request", "show", &id], 0);
    assert!(params.to_string().contains("stays_destroyed"), "{params}");
    approve(&tb, &a, &id);
    let after = inventory(&tb);
    assert_eq!(after.len(), before.len());
    assert!(after.iter().any(|(n, s, _)| n == "old" && s == "destroyed"), "{after:?}");
    let ctx = Ctx::new(&tb);
    assert!(find(&ctx.user(), "old", ObjectClass::PRIVATE_KEY).is_empty(), "old stays destroyed");
    drop(ctx);
    // The application signs again by the same label; the old signature
    // verifies; the key's certificate is back.
    assert_eq!(ec_point(&tb, "release"), point);
    assert_eq!(certificates(&tb, "release"), vec![cert]);
    assert!(verifies(&tb, "release", &signature));
    let again = sign(&tb, "release");
    assert!(verifies(&tb, "release", &again));
    let verified = keyward_ok(&tb, &["key", "verify", "vault"], 0);
    assert!(verified.contains("verified"), "{verified}");
    // After a restart the restored keys are still recognised as themselves.
    tb.stop_agent();
    tb.start_agent();
    assert!(verifies(&tb, "release", &signature));
    let verified = keyward_ok(&tb, &["key", "verify", "vault"], 0);
    assert!(verified.contains("verified"), "{verified}");
    // Web was never in the backup: its record stays, its objects are gone.
    assert!(keyward_ok(&tb, &["backup", "verify", file.to_str().unwrap()], 0)
        .contains("0 failed"));
});

keyward_test!(fn a_restore_never_overwrites_newer_inventory_state(tb) {
    let a = setup(&tb);
    keyward_ok(&tb, &["key", "create", "release", "--class", "release"], 0);
    keyward_ok(&tb, &["key", "activate", "release"], 0);
    ceremony(&tb, &a);
    let file = tb.path("b.kwbackup");
    keyward_ok(&tb, &["backup", "create", file.to_str().unwrap()], 0);
    // Newer: revoked and rotated since.
    keyward_ok(&tb, &["key", "rotate", "release"], 0);
    keyward_ok(&tb, &["key", "suspend", "release", "--reason", "audit"], 0);
    let before = inventory(&tb);
    let out = keyward(&tb, &["backup", "restore", "--yes", file.to_str().unwrap(), "--reason", "mistake"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("conflicts with the inventory"), "{err}");
    assert!(err.contains("release: the inventory says suspended, the backup active"), "{err}");
    assert_eq!(inventory(&tb), before);
    // An operator cannot ask for the ceremony; the custodian role alone
    // cannot make a backup.
    assert!(keyward_json(&tb, &["request", "list"], 0).as_array().unwrap().is_empty());
});

/// A new host: the HSM replaced and the agent's state directory (its
/// inventory, its trail, its record of the ceremony) gone; the same
/// configuration and policy file.
fn replace_host(tb: &Env) {
    tb.stop_agent();
    let state = tb.path("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    replace_hsm(tb);
    // The new host's token gets its user PIN.
    keyward_testbed::Testbed::open(&tb.dir)
        .and_then(|t| t.set_pin("user", &tb.pin))
        .expect("set the user PIN");
}

keyward_test!(fn a_new_host_with_a_new_hsm_gets_every_key_back_from_a_backup_and_two_shares(tb) {
    let a = setup(&tb);
    for (name, class) in [("release", "release"), ("vault", "vault"), ("web", "tls")] {
        keyward_ok(&tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
    }
    keyward_ok(&tb, &["key", "rotate", "release"], 0);
    keyward_ok(&tb, &["key", "suspend", "vault", "--reason", "quarterly audit"], 0);
    let signature = sign(&tb, "release");
    ceremony(&tb, &a);
    let (alice_share, bob_share) = fetch_shares(&tb, &a);
    let file = tb.path("host.kwbackup");
    keyward_ok(&tb, &["backup", "create", file.to_str().unwrap()], 0);
    let before: Vec<_> = inventory(&tb).into_iter().filter(|k| k.0 != "web").collect();

    replace_host(&tb);
    assert!(inventory(&tb).is_empty(), "a new inventory");
    let status = keyward_json(&tb, &["backup", "status"], 0);
    assert_eq!(status.at("present").as_bool(), Some(false), "{status}");
    // A custodian cannot submit another's share, even opened.
    let out = keyward(&tb, &["backup", "share", "submit", bob_share.to_str().unwrap(),
        "--identity", a.alice_identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let submitted = keyward_json(&tb, &["backup", "share", "submit", alice_share.to_str().unwrap(),
        "--identity", a.alice_identity.to_str().unwrap()], 0);
    validate("backup-share-submit.schema.json", &submitted);
    assert_eq!((submitted.i64_at("have"), submitted.i64_at("need")), (1, 2), "{submitted}");
    let out = as_bob(&tb, &["backup", "share", "submit", bob_share.to_str().unwrap(),
        "--identity", a.bob_identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status = keyward_json(&tb, &["backup", "status"], 0);
    assert_eq!(status.at("present").as_bool(), Some(true), "{status}");

    let id = pending(&tb, &["backup", "restore", "--yes", file.to_str().unwrap(), "--reason", "new host"]);
    approve(&tb, &a, &id);
    // Names, states, versions, CKA_IDs and fingerprints as they were.
    assert_eq!(inventory(&tb), before);
    assert!(verifies(&tb, "release", &signature), "an old signature verifies");
    let again = sign(&tb, "release");
    assert!(verifies(&tb, "release", &again));
    keyward_ok(&tb, &["key", "resume", "vault", "--reason", "audit done"], 3);
    tb.stop_agent();
    tb.start_agent();
    assert!(verifies(&tb, "release", &again));
    let drill = keyward_ok(&tb, &["backup", "verify", file.to_str().unwrap()], 0);
    assert!(drill.contains("0 failed"), "{drill}");
});

keyward_test!(fn applications_never_see_or_plant_the_backup_keys_objects(tb) {
    let a = setup(&tb);
    keyward_ok(&tb, &["key", "create", "release", "--class", "release"], 0);
    keyward_ok(&tb, &["key", "activate", "release"], 0);
    ceremony(&tb, &a);
    let file = tb.path("b.kwbackup");
    keyward_ok(&tb, &["backup", "create", file.to_str().unwrap()], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    // Every object the application may see: none of the backup key's.
    let all = s.find_objects(&[]).expect("a search");
    for o in all {
        let attrs = s
            .get_attributes(o, &[AttributeType::Id, AttributeType::Label])
            .unwrap_or_default();
        for at in attrs {
            if let Attribute::Id(v) | Attribute::Label(v) = at {
                assert!(!v.starts_with(b"keyward-backup"), "{:?}", String::from_utf8_lossy(&v));
            }
        }
    }
    assert!(s
        .find_objects(&[Attribute::Label(b"keyward-backup".to_vec())])
        .unwrap()
        .is_empty());
    // An application cannot plant an object with the backup key's CKA_ID or label.
    for template in [
        vec![Attribute::Class(ObjectClass::DATA), Attribute::Token(true),
             Attribute::Id(b"keyward-backup-wrap".to_vec())],
        vec![Attribute::Class(ObjectClass::DATA), Attribute::Token(true),
             Attribute::Label(b"keyward-backup".to_vec())],
    ] {
        assert!(s.create_object(&template).is_err(), "{template:?}");
    }
    drop(s);
    drop(ctx);
    // During and after a drill, its session objects are not the
    // application's either.
    keyward_ok(&tb, &["backup", "verify", file.to_str().unwrap()], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    assert!(s
        .find_objects(&[Attribute::Id(b"keyward-backup-drill".to_vec())])
        .unwrap()
        .is_empty());
    drop(a);
});

/// One admin request on the testbed's admin socket, as this process.
fn raw_admin(
    tb: &Env,
    request: keyward_protocol::admin::KeyRequest,
) -> keyward_protocol::admin::AdminResponse {
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

keyward_test!(fn a_custodian_cannot_submit_anothers_share_nor_a_forged_one(tb) {
    use keyward_protocol::admin::{AdminErrorKind, AdminResponse, BackupRequest, KeyRequest};
    let a = setup(&tb);
    keyward_ok(&tb, &["key", "create", "release", "--class", "release"], 0);
    ceremony(&tb, &a);
    let (_, bob_share) = fetch_shares(&tb, &a);
    replace_hsm(&tb);
    let submit = |share: Vec<u8>| {
        raw_admin(&tb, KeyRequest::Backup(BackupRequest::Submit { token: None, share }))
    };
    // Bob's share, opened by someone holding his identity, sent by alice.
    let armored = std::fs::read_to_string(&bob_share).unwrap();
    let identity = std::fs::read_to_string(&a.bob_identity).unwrap();
    let opened = keyward_escrow::open(&armored, &identity).expect("bob's share opens");
    match submit(opened.encode().to_vec()) {
        AdminResponse::KeyErr { kind: AdminErrorKind::Refused, message } => {
            assert!(message.contains("this share is \"bob\"'s"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Garbage, an empty share, a share cut short: refused as invalid.
    let encoded = opened.encode().to_vec();
    for forged in [b"not a share".to_vec(), Vec::new(), encoded[..encoded.len() - 1].to_vec(), vec![0xff; 1 << 16]] {
        match submit(forged) {
            AdminResponse::KeyErr { kind: AdminErrorKind::Invalid, message } => {
                assert!(message.starts_with("the share: "), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Nothing was held: no share counts towards a rebuild.
    let status = keyward_json(&tb, &["backup", "status"], 0);
    assert_eq!(status.at("submitted").as_u64(), Some(0), "{status}");
    // Restores and drills of garbage, as raw requests: invalid, nothing kept.
    for file in [Vec::new(), b"KWBACKUP".to_vec(), vec![0u8; 100_000]] {
        for req in [
            BackupRequest::Verify { token: None, file: file.clone() },
            BackupRequest::Restore { token: None, file: file.clone(), reason: "x".into() },
        ] {
            match raw_admin(&tb, KeyRequest::Backup(req)) {
                AdminResponse::KeyErr { kind: AdminErrorKind::Invalid | AdminErrorKind::NotFound, .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(keyward_json(&tb, &["request", "list"], 0).as_array().unwrap().is_empty());
});

/// Key `name` in a `keyward --json report`.
fn reported(tb: &Env, name: &str) -> keyward_tests::json::Json {
    let r = keyward_json(tb, &["report"], 0);
    r.array_at("keys")
        .iter()
        .find(|k| k.str_at("name") == name)
        .unwrap_or_else(|| panic!("no key {name} in {r}"))
        .clone()
}

/// `keyward --json backup create FILE`: the backup's id.
fn create_backup(tb: &Env, name: &str) -> String {
    let file = tb.path(name);
    let made = keyward_json(tb, &["backup", "create", file.to_str().unwrap()], 0);
    validate("backup-create.schema.json", &made);
    let id = made.str_at("id").to_owned();
    assert_eq!(id.len(), 64, "{made}");
    id
}

keyward_test!(fn the_report_flags_keys_without_backup_and_shows_the_last_backup_and_drill(tb) {
    let a = setup(&tb);
    for (name, class) in [("release", "release"), ("web", "tls")] {
        keyward_ok(&tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
    }
    ceremony(&tb, &a);
    let flagged = |k: &keyward_tests::json::Json| k.at("backup_missing").as_bool().expect("a flag");

    // No backup yet: release (its class wants one) is flagged, web never.
    let release = reported(&tb, "release");
    assert!(flagged(&release), "{release}");
    assert!(release.at("last_backup").is_null(), "{release}");
    assert!(release.at("last_drill").is_null(), "{release}");
    let web = reported(&tb, "web");
    assert!(!flagged(&web), "{web}");
    let text = keyward_ok(&tb, &["report"], 0);
    assert!(
        text.contains(&format!("need a backup of their current version: {}/release\n", tb.token)),
        "{text}"
    );

    // Backed up: no longer flagged, the backup named.
    let first = create_backup(&tb, "first.kwbackup");
    let release = reported(&tb, "release");
    assert!(!flagged(&release), "{release}");
    assert_eq!(release.at("last_backup").str_at("id"), first, "{release}");
    assert!(release.at("last_drill").is_null(), "{release}");
    let web = reported(&tb, "web");
    assert!(!flagged(&web), "{web}");
    assert!(web.at("last_backup").is_null(), "web's class has no backup: {web}");

    // Drilled: the drill is shown, ok.
    let drilled = keyward_json(&tb, &["backup", "verify", tb.path("first.kwbackup").to_str().unwrap()], 0);
    validate("backup-verify.schema.json", &drilled);
    assert!(drilled.array_at("results").iter().all(|r| r.at("ok").as_bool() == Some(true)), "{drilled}");
    let release = reported(&tb, "release");
    let drill = release.at("last_drill");
    assert_eq!(drill.str_at("id"), first, "{release}");
    assert_eq!(drill.at("ok").as_bool(), Some(true), "{release}");
    assert!(reported(&tb, "web").at("last_drill").is_null());

    // Rotated: the new current version is in no backup; a second backup
    // holds it.
    keyward_ok(&tb, &["key", "rotate", "release"], 0);
    assert!(flagged(&reported(&tb, "release")));
    let second = create_backup(&tb, "second.kwbackup");
    assert_ne!(first, second);
    let release = reported(&tb, "release");
    assert!(!flagged(&release), "{release}");
    assert_eq!(release.at("last_backup").str_at("id"), second, "{release}");
    assert_eq!(release.at("last_drill").str_at("id"), first, "{release}");
    let text = keyward_ok(&tb, &["report"], 0);
    assert!(text.contains("backups: every key that wants one has one"), "{text}");
    assert!(text.contains(&format!("last backup:      {}", &second[..16])), "{text}");
    assert!(!flagged(&reported(&tb, "web")));
});

keyward_test!(fn a_destroyed_key_names_the_backups_that_still_hold_it(tb) {
    let a = setup(&tb);
    for (name, class) in [("old", "release"), ("web", "tls")] {
        keyward_ok(&tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
    }
    ceremony(&tb, &a);
    let first = create_backup(&tb, "first.kwbackup");
    keyward_ok(&tb, &["key", "rotate", "old"], 0);
    let second = create_backup(&tb, "second.kwbackup");
    assert_ne!(first, second);
    // Not destroyed: no backups listed as holding it.
    assert!(keyward_tests::admin::key_show(&tb, "old").array_at("held_by_backups").is_empty());

    // Old is destroyed (two officers): the request's outcome names both backups.
    let id = pending(&tb, &["key", "destroy", "--yes", "old", "--reason", "retired", "--reason-code", "cessationOfOperation"]);
    approve(&tb, &a, &id);
    let request = keyward_json(&tb, &["request", "show", &id], 0);
    let outcome = request.str_at("outcome").to_owned();
    assert!(outcome.contains("held by backups: "), "{outcome}");
    assert!(outcome.contains(&first[..16]) && outcome.contains(&second[..16]), "{outcome}");

    // Key show lists them, JSON and text.
    let shown = keyward_tests::admin::key_show(&tb, "old");
    assert_eq!(shown.str_at("state"), "destroyed", "{shown}");
    let ids: Vec<&str> = shown
        .array_at("held_by_backups")
        .iter()
        .map(|b| b.str_at("id"))
        .collect();
    assert_eq!(ids, [first.as_str(), second.as_str()], "{shown}");
    let listed = keyward_json(&tb, &["key", "list"], 0);
    let old = listed.items().iter().find(|k| k.str_at("name") == "old").expect("old listed");
    assert_eq!(old.at("held_by_backups"), shown.at("held_by_backups"), "{listed}");
    let text = keyward_ok(&tb, &["key", "show", "old"], 0);
    assert!(text.contains("held by backups (retire them"), "{text}");
    assert!(text.contains(&first) && text.contains(&second), "{text}");

    // The report: old is held by both, not flagged; the backups section names them.
    let old = reported(&tb, "old");
    assert_eq!(old.at("backup_missing").as_bool(), Some(false), "{old}");
    let held: Vec<&str> = old.array_at("held_by_backups").iter().map(|b| b.str_at("id")).collect();
    assert_eq!(held, [first.as_str(), second.as_str()], "{old}");
    // (--wide: the line whole, not wrapped at 100 columns.)
    let text = keyward_ok(&tb, &["--wide", "report"], 0);
    assert!(
        text.contains(&format!("destroyed {}/old still held by backups (retire them): {first}", tb.token)),
        "{text}"
    );
    // A third backup after the destruction does not hold it.
    create_backup(&tb, "third.kwbackup");
    assert_eq!(reported(&tb, "old").array_at("held_by_backups").len(), 2);

    // A key of a class without backup: never flagged, and destroyed it is
    // held by no backup.
    assert_eq!(reported(&tb, "web").at("backup_missing").as_bool(), Some(false));
    let id = pending(&tb, &["key", "destroy", "--yes", "web", "--reason", "retired", "--reason-code", "cessationOfOperation"]);
    approve(&tb, &a, &id);
    let request = keyward_json(&tb, &["request", "show", &id], 0);
    let outcome = request.str_at("outcome").to_owned();
    assert!(outcome.ends_with("held by no backup"), "{outcome}");
    let web = reported(&tb, "web");
    assert_eq!(web.at("backup_missing").as_bool(), Some(false), "{web}");
    assert!(web.array_at("held_by_backups").is_empty(), "{web}");
    let shown = keyward_ok(&tb, &["key", "show", "web"], 0);
    assert!(shown.contains("held by backups (retire them for the destruction to be final):\n  none\n"), "{shown}");
});

keyward_test!(fn a_backup_of_another_deployment_is_refused_by_name(tb) {
    let a = setup(&tb);
    keyward_ok(&tb, &["key", "create", "release", "--class", "release"], 0);
    ceremony(&tb, &a);
    let file = tb.path("first.kwbackup");
    keyward_ok(&tb, &["backup", "create", file.to_str().unwrap()], 0);
    let first = keyward_json(&tb, &["backup", "status"], 0)

        .at("key_check")
        .as_str()
        .unwrap()
        .to_owned();
    // Another deployment: a new host and HSM with a backup key of its own.
    replace_host(&tb);
    ceremony(&tb, &a);
    let second = keyward_json(&tb, &["backup", "status"], 0)

        .at("key_check")
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first, second);
    for args in [
        vec!["backup", "verify", file.to_str().unwrap()],
        vec!["backup", "restore", "--yes", file.to_str().unwrap(), "--reason", "wrong file"],
    ] {
        let out = keyward(&tb, &args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("made with another backup key"), "{err}");
        assert!(err.contains(&first[..16]) && err.contains(&second[..16]), "{err}");
    }
    assert!(inventory(&tb).is_empty());
});

keyward_test!(fn a_restore_is_dry_run_and_confirmed_by_the_tokens_label(tb) {
    let a = setup(&tb);
    for name in ["release", "old"] {
        keyward_ok(&tb, &["key", "create", name, "--class", "release"], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
    }
    ceremony(&tb, &a);
    // A backup's dry run names what it would hold and writes no file.
    let plan = keyward_ok(&tb, &["--dry-run", "backup", "create", tb.path("dry.kwbackup").to_str().unwrap()], 0);
    assert!(plan.contains("keys [old, release]"), "{plan}");
    assert!(!tb.path("dry.kwbackup").exists(), "a dry run wrote a backup file");
    assert!(keyward_tests::admin::key_show(&tb, "old").array_at("held_by_backups").is_empty());
    let id = create_backup(&tb, "b.kwbackup");
    let file = tb.path("b.kwbackup");
    let file = file.to_str().unwrap();

    // A destroy's impact names the backup still holding the key.
    let plan = keyward_json(
        &tb,
        &["--dry-run", "key", "destroy", "old", "--reason", "retired", "--reason-code", "superseded"],
        0,
    );
    assert_eq!(plan.at("impact").at("backups")[0].str_at("id"), id, "{plan}");
    let destroy = pending(
        &tb,
        &["key", "destroy", "--yes", "old", "--reason", "retired", "--reason-code", "superseded"],
    );
    approve(&tb, &a, &destroy);

    // The dry run: checked (seal, key, conflicts), what it would restore,
    // under quorum backup-restore; no request, no change.
    let before = (inventory(&tb), keyward_json(&tb, &["request", "list", "--all"], 0));
    let plan = keyward_json(&tb, &["--dry-run", "backup", "restore", file, "--reason", "dr"], 0);
    assert_eq!(plan.at("restore").str_at("backup"), id, "{plan}");
    assert_eq!(plan.at("restore").at("stays_destroyed"), &serde_json::json!(["old"]), "{plan}");
    let approval = plan.at("outcome");
    assert_eq!(approval.str_at("kind"), "needs_approval", "{plan}");
    assert_eq!(approval.str_at("action"), "backup-restore", "{plan}");
    assert_eq!(approval["approvals"], 2, "{plan}");
    assert_eq!((inventory(&tb), keyward_json(&tb, &["request", "list", "--all"], 0)), before);
    assert_eq!(waiting_restores(&tb.dir), 0, "a dry run keeps no file for a restore");

    // A damaged file: the same refusal as the restore itself.
    let cut = tb.path("cut.kwbackup");
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let out = keyward(&tb, &["--dry-run", "backup", "restore", cut.to_str().unwrap(), "--reason", "dr"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // On a terminal: the token's label confirms, anything else sends nothing.
    let args = ["backup", "restore", file, "--reason", "dr"];
    let (code, shown) = super::safety_rails::on_a_terminal(&tb, &args, "release\n");
    assert_eq!(code, Some(2), "{shown}");
    assert!(shown.contains("Type the token's label to confirm:"), "{shown}");
    assert!(shown.contains("keys that stay destroyed: old"), "{shown}");
    assert_eq!((inventory(&tb), keyward_json(&tb, &["request", "list", "--all"], 0)), before);
    let (code, shown) = super::safety_rails::on_a_terminal(&tb, &args, &format!("{}\n", tb.token));
    assert_eq!(code, Some(3), "a restore request is recorded: {shown}");
    assert_eq!(waiting_restores(&tb.dir), 1, "the request's file waits for its approval");
});

/// How many backup files wait for a restore's approval under `dir`.
fn waiting_restores(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        waiting_restores(&path)
                    } else {
                        usize::from(e.file_name().to_string_lossy().starts_with("restore-"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
