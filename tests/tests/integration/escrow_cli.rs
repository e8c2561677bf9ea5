//! The custodians' side of the backup key's split knowledge, through the
//! real `keyward` binary: `backup custodian-key new` (an identity file of
//! mode 0600, never written over an existing file, and the roster line the
//! agent loads) and `backup share check` on shares sealed by
//! keyward-escrow (its custodian's identity opens it and sees what it is,
//! never the value; another identity, a truncated or tampered file, an
//! identity file open to others are refused as invalid input). Both verbs
//! run without the agent: they are given an admin socket that does not
//! exist.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyward_escrow::{Custodian, SealedShare};
use keyward_tests::admin::{
    application_toml, install_policy, keyward_bin, keyward_json, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::validate;
use keyward_tests::keyward_test;
use keyward_tests::roster::{key_file, public_key, text, ALICE_PEM, BOB, BOB_PEM};

/// Runs `keyward ARGS` with an admin socket nobody listens on.
fn offline(tb: &Env, args: &[&str]) -> Output {
    Command::new(keyward_bin(tb))
        .arg("--admin-socket")
        .arg(tb.path("no-agent-here.sock"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run keyward")
}

#[track_caller]
fn expect(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `backup custodian-key new --out DIR/name`: the identity file and the
/// recipient the printed roster line names.
fn new_custodian_key(tb: &Env, name: &str) -> (PathBuf, String) {
    let path = tb.path(name);
    let out = offline(
        tb,
        &[
            "backup",
            "custodian-key",
            "new",
            "--out",
            path.to_str().unwrap(),
        ],
    );
    expect(&out, 0);
    let line = text(&out.stdout);
    let recipient = line
        .strip_prefix("share_recipient = \"")
        .and_then(|r| r.strip_suffix("\"\n"))
        .unwrap_or_else(|| panic!("not a share_recipient line: {line:?}"))
        .to_owned();
    (path, recipient)
}

keyward_test!(fn custodian_key_new_writes_a_private_identity_once_and_its_line_goes_into_the_roster(tb) {
    tb.require_agent("the keyward CLI");
    let (path, recipient) = new_custodian_key(&tb, "bob.age");
    assert!(recipient.starts_with("age1"), "{recipient}");
    assert_eq!(keyward_escrow::parse_recipient(&recipient).unwrap(), recipient);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let identity = std::fs::read_to_string(&path).unwrap();
    assert!(identity.contains(&format!("# public key: {recipient}\n")), "{identity}");
    let secret = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("the identity line");

    // Never over an existing file: exit 6, the file as it was.
    let out = offline(&tb, &["backup", "custodian-key", "new", "--out", path.to_str().unwrap()]);
    expect(&out, 6);
    assert!(text(&out.stderr).contains("exists already"), "{out:?}");
    assert!(!text(&out.stdout).contains("AGE-SECRET-KEY"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), identity);
    // Nor through a link to a file that does not exist yet.
    let link = tb.path("link.age");
    let target = tb.path("target.age");
    symlink(&target, &link).unwrap();
    let out = offline(&tb, &["backup", "custodian-key", "new", "--out", link.to_str().unwrap()]);
    expect(&out, 6);
    assert!(!target.exists());
    // --json: the recipient and the file.
    let json_path = tb.path("json.age");
    let out = offline(
        &tb,
        &["--json", "backup", "custodian-key", "new", "--out", json_path.to_str().unwrap()],
    );
    expect(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    validate("backup-custodian-key-new.schema.json", &doc);
    assert!(doc["share_recipient"].as_str().unwrap().starts_with("age1"), "{doc}");
    assert_eq!(doc["identity_file"], json_path.to_str().unwrap());
    assert!(!text(&out.stdout).contains(secret) && !text(&out.stderr).contains(secret));

    // The printed line in the roster: bob, a custodian, holds a share;
    // the agent starts on the policy.
    let alice_key = key_file(&tb, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(&tb, "bob.pem", BOB_PEM, uid());
    let keys = (public_key(&tb, &alice_key), public_key(&tb, &bob_key));
    let policy = |alice_recipient: Option<&str>| {
        let (alice_roles, alice_line) = match alice_recipient {
            Some(r) => ("\"security-officer\", \"custodian\"", format!("share_recipient = \"{r}\"\n")),
            None => ("\"security-officer\"", String::new()),
        };
        format!(
            "[settings]\nmode = \"strict\"\n{}{}\n\
             [[administrator]]\nname = \"alice\"\nuids = [{}]\nroles = [{alice_roles}]\npublic_key = \"{}\"\n{alice_line}\n\
             [[administrator]]\nname = \"bob\"\nuids = [{BOB}]\nroles = [\"security-officer\", \"custodian\"]\npublic_key = \"{}\"\n\
             share_recipient = \"{recipient}\"\n",
            application_toml(APPLICATION, uid()),
            signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
            uid(),
            keys.0,
            keys.1,
        )
    };
    install_policy(&tb, &policy(None));
    keyward_json(&tb, &["status"], 0);
    // The same recipient for alice too (in capitals: the same key): refused
    // at bob's, with its line and column.
    let file = tb.path("twice.toml");
    std::fs::write(&file, policy(Some(&recipient.to_uppercase()))).unwrap();
    let out = offline(&tb, &["policy", "check", file.to_str().unwrap()]);
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains(
            "administrator \"bob\", share_recipient: administrator \"alice\" has this recipient already"
        ),
        "{out:?}"
    );
});

/// A 2-of-3 split of `secret` to alice, bob (identities made by the CLI)
/// and carol: the sealed shares, written to files, and the identity files.
fn ceremony(tb: &Env, secret: &[u8]) -> (Vec<SealedShare>, Vec<PathBuf>, Vec<PathBuf>) {
    let (alice, alice_r) = new_custodian_key(tb, "alice.age");
    let (bob, bob_r) = new_custodian_key(tb, "bob.age");
    let (_, carol_r) = keyward_escrow::new_identity();
    let custodians =
        [("alice", alice_r), ("bob", bob_r), ("carol", carol_r)].map(|(name, recipient)| {
            Custodian {
                name: name.to_owned(),
                recipient,
            }
        });
    let sealed = keyward_escrow::split(secret, "testbed", 2, &custodians).unwrap();
    let files = sealed
        .iter()
        .map(|s| {
            let path = tb.path(&format!("{}.share", s.custodian));
            std::fs::write(&path, &s.armored).unwrap();
            path
        })
        .collect();
    (sealed, files, vec![alice, bob])
}

fn share_check(tb: &Env, share: &Path, identity: &Path, json: bool) -> Output {
    let mut args = vec![];
    if json {
        args.push("--json");
    }
    args.extend([
        "backup",
        "share",
        "check",
        share.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
    ]);
    offline(tb, &args)
}

keyward_test!(fn share_check_opens_only_its_custodians_intact_share_and_never_shows_its_value(tb) {
    tb.require_agent("the keyward CLI");
    let secret: Vec<u8> = (0..64u8).map(|i| i ^ 0xa5).collect();
    let (sealed, shares, identities) = ceremony(&tb, &secret);
    let check = keyward_escrow::short_check(&keyward_escrow::key_check(&secret));
    let value = {
        let identity = std::fs::read_to_string(&identities[1]).unwrap();
        hex::encode(keyward_escrow::open(&sealed[1].armored, &identity).unwrap().share())
    };

    // Bob's share with bob's identity: what it is.
    let out = share_check(&tb, &shares[1], &identities[1], false);
    expect(&out, 0);
    let shown = text(&out.stdout);
    assert_eq!(
        shown,
        format!(
            "custodian:   bob\n\
             share:       2 of 3\n\
             threshold:   2 of 3 shares rebuild the backup key\n\
             deployment:  testbed\n\
             backup key:  {check}\n\
             digest:      {}\n",
            hex::encode(sealed[1].digest)
        )
    );
    let out_json = share_check(&tb, &shares[1], &identities[1], true);
    expect(&out_json, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out_json.stdout).unwrap();
    validate("backup-share-check.schema.json", &doc);
    assert_eq!(doc["custodian"], "bob");
    assert_eq!((doc["index"].as_u64(), doc["threshold"].as_u64(), doc["count"].as_u64()), (Some(2), Some(2), Some(3)));
    assert_eq!(doc["backup_key"], check.as_str());
    assert_eq!(doc["digest"], hex::encode(sealed[1].digest).as_str());
    // Never the share value, nor the secret.
    for printed in [&out.stdout, &out.stderr, &out_json.stdout, &out_json.stderr] {
        let printed = text(printed);
        assert!(!printed.contains(&value) && !printed.contains(&hex::encode(&secret)), "{printed}");
    }

    // Another custodian's share: not sealed to this identity (exit 2).
    let out = share_check(&tb, &shares[2], &identities[1], false);
    expect(&out, 2);
    assert!(text(&out.stderr).contains("not sealed to this identity"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = share_check(&tb, &shares[0], &identities[1], true);
    expect(&out, 2);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    validate("error.schema.json", &doc);
    assert_eq!(doc["error"]["exit_code"], 2, "{doc}");
    assert!(doc["error"]["message"].as_str().unwrap().contains("not sealed to this identity"), "{doc}");

    // A truncated and a tampered share file: damaged (exit 2).
    let armored = &sealed[1].armored;
    let truncated = tb.path("truncated.share");
    std::fs::write(&truncated, &armored[..armored.len() * 2 / 3]).unwrap();
    let out = share_check(&tb, &truncated, &identities[1], false);
    expect(&out, 2);
    assert!(text(&out.stderr).contains("damaged, truncated or not an armored age file"), "{out:?}");
    let mut bytes = armored.clone().into_bytes();
    let at = armored.find('\n').unwrap() + 70;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = tb.path("tampered.share");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = share_check(&tb, &tampered, &identities[1], false);
    expect(&out, 2);
    assert!(text(&out.stderr).contains("damaged"), "{out:?}");
    // No such file.
    let out = share_check(&tb, &tb.path("none.share"), &identities[1], false);
    expect(&out, 2);
    assert!(text(&out.stderr).contains("cannot read"), "{out:?}");

    // An identity file others may read is not used.
    std::fs::set_permissions(&identities[0], std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = share_check(&tb, &shares[0], &identities[0], false);
    expect(&out, 2);
    assert!(text(&out.stderr).contains("chmod 600"), "{out:?}");
    std::fs::set_permissions(&identities[0], std::fs::Permissions::from_mode(0o600)).unwrap();
    expect(&share_check(&tb, &shares[0], &identities[0], false), 0);
});
