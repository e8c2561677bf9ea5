//! Key distribution between two deployments, each a real agent on its own
//! SoftHSM2 token: `keyward key pubkey` of a wrapping key on B, `keyward
//! key export` on A (two security officers approve; the HSM's security
//! officer makes the trusted transport key), `--collect`, and `keyward
//! key import` on B. An application on B signs by the imported key's
//! label and the signature verifies with A's public key; a block
//! encrypted on A decrypts on B. Refusals: a class without backup, a
//! recipient that is not RSA, a tampered or truncated file (nothing is
//! created on B), a deployment without the recipient key, an unknown
//! request; an application cannot wrap a managed key out, even one whose
//! class allows backup, with its own extractable AES key.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use keyward_tests::admin::{
    application_toml, backend_token, find, install_policy, keyward, keyward_json, keyward_ok, uid,
    APPLICATION,
};
use keyward_tests::harness::{Env, Testbed};
use keyward_tests::json::validate;
use keyward_tests::keyward_test;
use keyward_tests::p11::{aes_key, expect_err_in, Ctx};
use keyward_tests::roster::{
    as_bob, key_file, open_admin_socket_to_bob, public_key, roster_toml, text, ALICE_PEM, BOB,
    BOB_PEM,
};

const IV: [u8; 16] = [0x5a; 16];
const PLAIN: &[u8] = b"keys travel only wrapped";

/// Classes both deployments know: `sig` (EC P-256 signing, backup),
/// `data` (AES-256 encryption, backup), `plain` (EC P-256 signing, no
/// backup), `kek` (RSA-2048 wrapping, the recipient), `sig-ed`
/// (Ed25519 signing, backup), `sig-rsa` (RSA-2048 signing, backup), `mac`
/// (HMAC-SHA256, backup), each granted to this process's application.
fn classes() -> String {
    let class = |name: &str, purpose: &str, alg: &str, backup: bool, ops: &str| {
        format!(
            "\n[[class]]\nname = \"{name}\"\npurpose = \"{purpose}\"\nalgorithms = [\"{alg}\"]\n\
             protect_period = \"30d\"\nprocess_period = \"60d\"\nbackup = {backup}\n\
             grants = [ {{ application = \"{APPLICATION}\", operations = [{ops}] }} ]\n"
        )
    };
    [
        class("sig", "signing", "ec:p256", true, r#""sign", "verify""#),
        class(
            "data",
            "encryption",
            "aes:256",
            true,
            r#""encrypt", "decrypt""#,
        ),
        class("plain", "signing", "ec:p256", false, r#""sign", "verify""#),
        class("kek", "wrapping", "rsa:2048", false, r#""wrap", "unwrap""#),
        class("sig-ed", "signing", "ed25519", true, r#""sign", "verify""#),
        class(
            "sig-rsa",
            "signing",
            "rsa:2048",
            true,
            r#""sign", "verify""#,
        ),
        class("mac", "mac", "hmac:256", true, r#""sign", "verify""#),
    ]
    .concat()
}

/// The environment of a second testbed, as its test child would get it.
fn env_of(tb: &Testbed) -> Env {
    let e: &BTreeMap<String, String> = tb.exports();
    let get = |k: &str| e.get(k).cloned().unwrap_or_default();
    Env {
        module: get("KEYWARD_MODULE"),
        socket: get("KEYWARD_SOCKET"),
        admin_socket: get("KEYWARD_ADMIN_SOCKET"),
        token: get("KEYWARD_TOKEN"),
        pin: get("KEYWARD_PIN"),
        so_pin: get("KEYWARD_SO_PIN"),
        dir: tb.dir().to_path_buf(),
        direct: false,
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The module's context on `env`'s agent (the module reads
/// `KEYWARD_SOCKET` at `C_Initialize`; one context at a time).
fn ctx(env: &Env) -> Ctx {
    std::env::set_var("KEYWARD_SOCKET", &env.socket);
    Ctx::new(env)
}

/// `f` on `env`'s backend token, opened directly with SoftHSM2 and
/// finalised after (SoftHSM2 reads its configuration at `C_Initialize`,
/// so each deployment's token is opened in turn).
fn on_backend<T>(env: &Env, f: impl FnOnce(&cryptoki::session::Session) -> T) -> T {
    let (p11, s) = backend_token(env);
    let out = f(&s);
    drop(s);
    p11.finalize().expect("C_Finalize of SoftHSM2");
    out
}

/// Backend objects and inventory keys of `env` (what an import that is
/// refused must leave as they were).
fn holdings(env: &Env) -> (usize, usize) {
    let objects = on_backend(env, |s| {
        s.find_objects(&[])
            .expect("C_FindObjects on the backend")
            .len()
    });
    let keys = keyward_json(env, &["key", "list"], 0)
        .as_array()
        .map_or(0, Vec::len);
    (objects, keys)
}

/// Asks for the export of `name` to `recipient` on A (exit 3); the id.
fn ask_export(a: &Env, name: &str, recipient: &Path) -> String {
    let doc = keyward_json(
        a,
        &[
            "key",
            "export",
            name,
            "--to",
            path(recipient),
            "--reason",
            "to B",
        ],
        3,
    );
    assert_eq!(doc["action"], "key-export", "{doc}");
    doc["id"].as_str().expect("a request id").to_owned()
}

/// Both officers approve request `id` on A; it is carried out. The
/// export file's SHA-256, as the request's outcome shows it.
fn approve(a: &Env, id: &str, (alice, bob): (&Path, &Path)) -> String {
    keyward_ok(a, &["request", "approve", id, "--key", path(alice)], 0);
    // The backup-export quorum: two approvals.
    let r = &keyward_json(a, &["request", "show", id], 0);
    assert_eq!(
        (&r["status"], &r["needed"]),
        (&"pending".into(), &2.into()),
        "{r}"
    );
    let out = as_bob(a, &["request", "approve", id, "--key", path(bob)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let r = &keyward_json(a, &["request", "show", id], 0);
    assert_eq!(r["status"], "executed", "{r}");
    let outcome = r["outcome"].as_str().unwrap_or("");
    assert!(outcome.contains("export file ready"), "{r}");
    outcome
        .split("SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.get(..64))
        .unwrap_or_else(|| panic!("no SHA-256 in {outcome:?}"))
        .to_owned()
}

/// Collects request `id`'s file into `out` (mode 0600).
fn collect(a: &Env, id: &str, out: &Path) -> Vec<u8> {
    let collected = keyward_json(
        a,
        &["key", "export", "--collect", id, "--out", path(out)],
        0,
    );
    validate("key-export-collect.schema.json", &collected);
    let mode = std::fs::metadata(out)
        .expect("the export file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the export file's mode");
    std::fs::read(out).expect("read the export file")
}

/// `keyward key import` on B; its exit code and standard error.
fn import(b: &Env, file: &Path, class: &str) -> (Option<i32>, String) {
    let out = keyward(
        b,
        &[
            "key",
            "import",
            path(file),
            "--class",
            class,
            "--reason",
            "from A",
        ],
    );
    (out.status.code(), text(&out.stderr))
}

/// A (this test's testbed: strict, alice and bob security officers) and
/// B (a second testbed: lab mode, no roster, the managed RSA wrapping key
/// `transport` whose public key is the recipient).
struct Deployments {
    /// Dropped last: B's agent and directory.
    second: Testbed,
    b: Env,
    alice_key: PathBuf,
    bob_key: PathBuf,
    /// `keyward key pubkey transport` on B.
    kek: PathBuf,
}

fn deployments(a: &Env) -> Deployments {
    open_admin_socket_to_bob(a);
    let alice_key = key_file(a, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(a, "bob.pem", BOB_PEM, BOB);
    let (alice_public, bob_public) = (public_key(a, &alice_key), public_key(a, &bob_key));
    install_policy(
        a,
        &format!(
            "[settings]\nmode = \"strict\"\n{}{}{}",
            application_toml(APPLICATION, uid()),
            classes(),
            roster_toml(uid(), &alice_public, &bob_public),
        ),
    );
    let second = Testbed::up(&[]);
    let b = env_of(&second);
    install_policy(
        &b,
        &format!(
            "[settings]\nmode = \"lab\"\n{}{}",
            application_toml(APPLICATION, uid()),
            classes(),
        ),
    );
    keyward_ok(&b, &["key", "create", "transport", "--class", "kek"], 0);
    keyward_ok(&b, &["key", "activate", "transport"], 0);
    let kek = b.path("transport.pem");
    keyward_ok(&b, &["key", "pubkey", "transport", "--out", path(&kek)], 0);
    assert!(std::fs::read_to_string(&kek)
        .expect("read")
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    Deployments {
        second,
        b,
        alice_key,
        bob_key,
        kek,
    }
}

keyward_test!(fn an_ec_signing_key_and_an_aes_key_travel_from_a_to_b_under_wrap(tb) {
    tb.require_agent("key distribution");
    let a = tb;
    let Deployments { second, b, alice_key, bob_key, kek } = deployments(&a);

    for (name, class) in [("web", "sig"), ("vault", "data"), ("local", "plain")] {
        keyward_ok(&a, &["key", "create", name, "--class", class], 0);
        keyward_ok(&a, &["key", "activate", name], 0);
    }
    let web_pem = a.path("web.pem");
    keyward_ok(&a, &["key", "pubkey", "web", "--out", path(&web_pem)], 0);
    // A secret key has no public key; an EC key is no recipient; a class
    // without backup is not exportable: each refused, no request made.
    let out = keyward(&a, &["key", "pubkey", "vault"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(text(&out.stderr).contains("no public key"), "{out:?}");
    let out = keyward(&a, &["key", "export", "web", "--to", path(&web_pem), "--reason", "r"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(text(&out.stderr).contains("only for RSA keys"), "{out:?}");
    let out = keyward(&a, &["key", "export", "local", "--to", path(&kek), "--reason", "r"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(text(&out.stderr).contains("not exportable"), "{out:?}");
    assert_eq!(keyward_json(&a, &["request", "list"], 0), serde_json::json!([]));
    // An unknown request has no file.
    let out = keyward(&a, &["key", "export", "--collect", "00ff", "--out", path(&a.path("x"))]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(!a.path("x").exists());

    // Exported under two officers' approval, collected once per file.
    let web_id = ask_export(&a, "web", &kek);
    let web_file = a.path("web.kwx");
    let out = keyward(&a, &["key", "export", "--collect", &web_id, "--out", path(&web_file)]);
    assert_eq!(out.status.code(), Some(6), "collected before approval: {out:?}");
    let web_sha256 = approve(&a, &web_id, (&alice_key, &bob_key));
    let web = collect(&a, &web_id, &web_file);
    let out = keyward(&a, &["key", "export", "--collect", &web_id, "--out", path(&web_file)]);
    assert_eq!(out.status.code(), Some(6), "an existing file is not overwritten: {out:?}");
    // Asking again for the same export answers the pending request;
    // another recipient waits until it is decided.
    let vault_id = ask_export(&a, "vault", &kek);
    assert_eq!(ask_export(&a, "vault", &kek), vault_id);
    let out = keyward(&a, &["key", "export", "vault", "--to", path(&web_pem), "--reason", "r"]);
    assert_eq!(out.status.code(), Some(5), "not RSA first: {out:?}");
    let other = a.path("other.pem");
    keyward_ok(&b, &["key", "create", "transport2", "--class", "kek"], 0);
    keyward_ok(&b, &["key", "pubkey", "transport2", "--out", path(&other)], 0);
    let out = keyward(&a, &["key", "export", "vault", "--to", path(&other), "--reason", "r"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(text(&out.stderr).contains(&vault_id), "{out:?}");
    approve(&a, &vault_id, (&alice_key, &bob_key));
    let vault_file = a.path("vault.kwx");
    collect(&a, &vault_id, &vault_file);
    // No transport key stays behind on A.
    let left = on_backend(&a, |s| {
        s.find_objects(&[Attribute::Label(b"keyward transport key".to_vec())])
            .expect("C_FindObjects")
            .len()
    });
    assert_eq!(left, 0, "transport keys left on A");

    // A block encrypted on A by an application.
    let cipher = {
        let c = ctx(&a);
        let s = c.user();
        let key = find(&s, "vault", ObjectClass::SECRET_KEY)[0];
        s.encrypt(&Mechanism::AesCbcPad(IV), key, PLAIN).expect("C_Encrypt on A")
    };

    // Tampered or truncated files, and a deployment without the
    // recipient: refused, nothing created on B.
    let before = holdings(&b);
    let mut tampered = web.clone();
    let n = tampered.len();
    tampered[n - 20] ^= 0x01; // inside the wrapped key (the seal is last)
    let bad = b.path("bad.kwx");
    std::fs::write(&bad, &tampered).expect("write");
    let (code, err) = import(&b, &bad, "sig");
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("seal does not verify"), "{err}");
    let mut tampered = web.clone();
    let at = tampered.windows(3).position(|w| w == b"web").expect("the record's name");
    tampered[at] = b'W';
    std::fs::write(&bad, &tampered).expect("write");
    let (code, err) = import(&b, &bad, "sig");
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("seal does not verify"), "{err}");
    std::fs::write(&bad, &web[..web.len() - 10]).expect("write");
    let (code, err) = import(&b, &bad, "sig");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("truncated"), "{err}");
    // The wrong class for the key: refused before anything is unwrapped.
    let (code, err) = import(&b, &web_file, "data");
    assert_eq!(code, Some(5), "{err}");
    assert_eq!(holdings(&b), before, "a refused import left something on B");
    // A has no managed key with the recipient's public key.
    let out = keyward(
        &a,
        &["key", "import", path(&web_file), "--class", "sig", "--name", "copy", "--reason", "r"],
    );
    let (code, err) = (out.status.code(), text(&out.stderr));
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("no managed RSA wrapping key"), "{err}");

    // Imported on B: recorded with its provenance, pre-activation.
    // The digest A's request shows is checked before anything is sent.
    let wrong = "0".repeat(64);
    for (digest, code) in [(wrong.as_str(), 2), (web_sha256.as_str(), 0)] {
        let args = ["key", "import", path(&web_file), "--class", "sig", "--reason", "from A"];
        let out = keyward(&b, &[&args[..], &["--sha256", digest]].concat());
        assert_eq!(out.status.code(), Some(code), "{out:?}");
    }
    let (code, err) = import(&b, &vault_file, "data");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = import(&b, &vault_file, "data");
    assert_eq!(code, Some(6), "imported twice: {err}");
    let shown = keyward_json(&b, &["key", "show", "web"], 0);
    let history = shown["history"].to_string();
    assert!(history.contains(&format!("request {web_id}")), "{history}");
    assert_eq!(shown["algorithm"], "ec:p256");
    // On B's HSM, the key has what its class gives a generated key.
    let attributes = on_backend(&b, |s| {
        ["web", "vault"]
            .iter()
            .map(|label| {
                let class = if *label == "web" {
                    ObjectClass::PRIVATE_KEY
                } else {
                    ObjectClass::SECRET_KEY
                };
                let found = find(s, label, class);
                assert_eq!(found.len(), 1, "{label} on B's HSM");
                s.get_attributes(
                    found[0],
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::WrapWithTrusted,
                        AttributeType::Sign,
                        AttributeType::Decrypt,
                        AttributeType::Wrap,
                    ],
                )
                .expect("C_GetAttributeValue")
            })
            .collect::<Vec<_>>()
    });
    for (attrs, signing) in attributes.iter().zip([true, false]) {
        let flag = |t: AttributeType| {
            attrs.iter().find_map(|a| match (a, t) {
                (Attribute::Token(v), AttributeType::Token)
                | (Attribute::Private(v), AttributeType::Private)
                | (Attribute::Sensitive(v), AttributeType::Sensitive)
                | (Attribute::Extractable(v), AttributeType::Extractable)
                | (Attribute::WrapWithTrusted(v), AttributeType::WrapWithTrusted)
                | (Attribute::Sign(v), AttributeType::Sign)
                | (Attribute::Decrypt(v), AttributeType::Decrypt)
                | (Attribute::Wrap(v), AttributeType::Wrap) => Some(*v),
                _ => None,
            })
        };
        for t in [
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::WrapWithTrusted,
        ] {
            assert_eq!(flag(t), Some(true), "{t:?}: {attrs:?}");
        }
        assert_eq!(flag(AttributeType::Sign), Some(signing), "{attrs:?}");
        assert_eq!(flag(AttributeType::Decrypt), Some(!signing), "{attrs:?}");
        assert_ne!(flag(AttributeType::Wrap), Some(true), "{attrs:?}");
    }
    keyward_ok(&b, &["key", "activate", "web"], 0);
    keyward_ok(&b, &["key", "activate", "vault"], 0);
    keyward_ok(&b, &["key", "verify", "web"], 0);
    // B's public key is A's.
    let b_pem = b.path("web-b.pem");
    keyward_ok(&b, &["key", "pubkey", "web", "--out", path(&b_pem)], 0);
    assert_eq!(std::fs::read(&b_pem).expect("read"), std::fs::read(&web_pem).expect("read"));

    let c = ctx(&b);
    let s = c.user();
    // An application on B signs by the label; A's public key verifies.
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(PLAIN).into();
    let key = find(&s, "web", ObjectClass::PRIVATE_KEY)[0];
    let signature = s.sign(&Mechanism::Ecdsa, key, &digest).expect("C_Sign on B");
    verify_p256(&web_pem, &digest, &signature);
    // What A encrypted, B decrypts.
    let key = find(&s, "vault", ObjectClass::SECRET_KEY)[0];
    let plain = s.decrypt(&Mechanism::AesCbcPad(IV), key, &cipher).expect("C_Decrypt on B");
    assert_eq!(plain, PLAIN);
    // The imported key is extractable (its class backs up), yet an
    // application's own extractable AES key cannot wrap it out.
    let own = aes_key(&s, 32, true);
    expect_err_in(
        s.wrap_key(&Mechanism::AesKeyWrapPad, own, key),
        &[RvError::ActionProhibited, RvError::KeyNotWrappable],
    );
    drop(second);
});

/// Checks an ECDSA P-256 signature (`r‖s`) of `digest` with the
/// SubjectPublicKeyInfo in PEM file `pem`.
fn verify_p256(pem: &PathBuf, digest: &[u8; 32], signature: &[u8]) {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;
    let text = std::fs::read_to_string(pem).expect("read the public key");
    let key = p256::ecdsa::VerifyingKey::from_public_key_pem(&text).expect("a P-256 SPKI");
    let sig = p256::ecdsa::Signature::from_slice(signature).expect("r and s");
    key.verify_prehash(digest, &sig)
        .expect("the signature made on B verifies with A's public key");
}

keyward_test!(fn rsa_and_hmac_keys_travel_too_and_an_ed25519_key_the_hsm_cannot_wrap_fails_cleanly(tb) {
    tb.require_agent("key distribution");
    let a = tb;
    let d = deployments(&a);
    for (name, class) in [("rsa", "sig-rsa"), ("hmac", "mac")] {
        keyward_ok(&a, &["key", "create", name, "--class", class], 0);
        keyward_ok(&a, &["key", "activate", name], 0);
        let id = ask_export(&a, name, &d.kek);
        approve(&a, &id, (&d.alice_key, &d.bob_key));
        let file = a.path(&format!("{name}.kwx"));
        collect(&a, &id, &file);
        let (code, err) = import(&d.b, &file, class);
        assert_eq!(code, Some(0), "{name}: {err}");
        keyward_ok(&d.b, &["key", "activate", name], 0);
        keyward_ok(&d.b, &["key", "verify", name], 0);
    }
    let (on_a, on_b) = (a.path("rsa-a.pem"), a.path("rsa-b.pem"));
    keyward_ok(&a, &["key", "pubkey", "rsa", "--out", path(&on_a)], 0);
    keyward_ok(&d.b, &["key", "pubkey", "rsa", "--out", path(&on_b)], 0);
    assert_eq!(std::fs::read(&on_a).expect("read"), std::fs::read(&on_b).expect("read"));

    // SoftHSM2 2.6 does not wrap EdDSA private keys: the approved request
    // fails with the HSM's word, no file is made, no transport key stays.
    keyward_ok(&a, &["key", "create", "ed", "--class", "sig-ed"], 0);
    let ed_pem = a.path("ed.pem");
    keyward_ok(&a, &["key", "pubkey", "ed", "--out", path(&ed_pem)], 0);
    assert!(std::fs::read_to_string(&ed_pem).expect("read").starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let id = ask_export(&a, "ed", &d.kek);
    keyward_ok(&a, &["request", "approve", &id, "--key", path(&d.alice_key)], 0);
    let out = as_bob(&a, &["request", "approve", &id, "--key", path(&d.bob_key)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r = &keyward_json(&a, &["request", "show", &id], 0);
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["outcome"].as_str().unwrap_or("").contains("CKR_KEY_NOT_WRAPPABLE"), "{r}");
    let out = keyward(&a, &["key", "export", "--collect", &id, "--out", path(&a.path("ed.kwx"))]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(!a.path("ed.kwx").exists());
    let left = on_backend(&a, |s| {
        s.find_objects(&[Attribute::Label(b"keyward transport key".to_vec())])
            .expect("C_FindObjects")
            .len()
    });
    assert_eq!(left, 0, "transport keys left on A");

    // An export approved just before a kill is carried out at the next
    // start, once: its file can be collected, and B imports it.
    keyward_ok(&a, &["key", "create", "late", "--class", "sig"], 0);
    let id = ask_export(&a, "late", &d.kek);
    keyward_ok(&a, &["request", "approve", &id, "--key", path(&d.alice_key)], 0);
    a.kill_agent();
    {
        let db = rusqlite::Connection::open(a.path("state/inventory.sqlite")).expect("open");
        db.execute(
            "INSERT INTO decisions (request_id, administrator, decision, signature, at)
             VALUES (?1, 'bob', 'approve', NULL, strftime('%s', 'now'))",
            [&id],
        )
        .expect("the decision");
        let moved = db
            .execute("UPDATE requests SET status = 'approved' WHERE id = ?1", [&id])
            .expect("approved");
        assert_eq!(moved, 1);
    }
    a.start_agent();
    let r = &keyward_json(&a, &["request", "show", &id], 0);
    assert_eq!(r["status"], "executed", "{r}");
    let file = a.path("late.kwx");
    let bytes = collect(&a, &id, &file);
    a.stop_agent();
    a.start_agent();
    assert_eq!(keyward_json(&a, &["request", "show", &id], 0)["outcome"], r["outcome"]);
    let again = a.path("late-again.kwx");
    assert_eq!(collect(&a, &id, &again), bytes, "the file changed at a restart");
    let (code, err) = import(&d.b, &file, "sig");
    assert_eq!(code, Some(0), "{err}");

    // A kill while a transport key exists leaves its pending note (written
    // before the security officer makes it): the next start destroys it.
    a.kill_agent();
    let id = [0x7au8; 16];
    on_backend(&a, |s| {
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Value(vec![0x11; 32]),
            Attribute::Id(id.to_vec()),
            Attribute::Label(b"keyward transport key".to_vec()),
        ])
        .expect("C_CreateObject");
    });
    std::fs::write(
        a.path(&format!("state/token-{}/pending-{}", a.token, hex::encode(id))),
        b"",
    )
    .expect("the pending note");
    a.start_agent();
    let left = on_backend(&a, |s| {
        s.find_objects(&[Attribute::Label(b"keyward transport key".to_vec())])
            .expect("C_FindObjects")
            .len()
    });
    assert_eq!(left, 0, "a transport key survived the restart");
    drop(d.second);
});
