//! Managed keys enforced at the PKCS#11 boundary, cell by cell: the state
//! table for every purpose, operations initialised before a change (in this
//! process and in another), the cryptoperiod on the wall clock, purpose and
//! size rules at creation, just-in-time grants that expire, and the store
//! after the agent is SIGKILLed in the middle of rotations.
//!
//! Keys are moved with the `keyward` CLI and used through the module, as an
//! administrator and an unmodified application would.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki_sys::*;
use keyward_tests::admin::{
    find, id_of, install_policy, key_show, keyward, keyward_json, keyward_ok, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{hex, unhex, Ctx};
use keyward_tests::probe::Probe;
use keyward_tests::raw::{rv_name, Mech, Out, Param, Raw};

/// The policy of this file: one class per purpose with long periods, one
/// with periods of seconds, one without grants, one RSA-only class.
fn policy() -> String {
    let uid = uid();
    let grant = |ops: &str| {
        format!(r#"grants = [ {{ application = "{APPLICATION}", operations = [{ops}] }} ]"#)
    };
    let sign_verify = grant(r#""sign", "verify""#);
    let encrypt_decrypt = grant(r#""encrypt", "decrypt""#);
    format!(
        r#"
[settings]
mode = "strict"

[[application]]
name = "{APPLICATION}"
uid = {uid}

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"
{sign_verify}

[[class]]
name = "encryption"
purpose = "encryption"
algorithms = ["aes:256"]
protect_period = "30d"
process_period = "60d"
{encrypt_decrypt}

[[class]]
name = "mac"
purpose = "mac"
algorithms = ["hmac:256"]
protect_period = "30d"
process_period = "60d"
{sign_verify}

# The parser accepts seconds (policy/src/duration.rs): a cryptoperiod that
# ends while the test watches.
[[class]]
name = "short"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "2s"
process_period = "4s"
{sign_verify}

[[class]]
name = "ungranted"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"

[[class]]
name = "aes-128-or-more"
purpose = "encryption"
algorithms = ["aes:128"]
protect_period = "30d"
process_period = "60d"
{encrypt_decrypt}

[[class]]
name = "rsa-3072"
purpose = "signing"
algorithms = ["rsa:3072"]
protect_period = "30d"
process_period = "60d"
{sign_verify}
"#
    )
}

const DIGEST: [u8; 32] = [0x5a; 32];
const PLAINTEXT: &[u8] = b"managed keys at the PKCS#11 boundary";
const IV: [u8; 16] = [0x11; 16];
const OK: CK_RV = CKR_OK;
const REFUSED: CK_RV = CKR_KEY_FUNCTION_NOT_PERMITTED;

// ---------------------------------------------------------------------------
// Operations by purpose, through the raw function list (so every outcome is
// a CK_RV, and an init can be left pending).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Class `signing`: ECDSA with the private key, verify with the public.
    Signing,
    /// Class `encryption`: AES-256-CBC-PAD encrypt / decrypt.
    Encryption,
    /// Class `mac`: HMAC-SHA256 sign / verify with the secret key.
    Mac,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Signing, Kind::Encryption, Kind::Mac];

    fn class(self) -> &'static str {
        match self {
            Kind::Signing => "signing",
            Kind::Encryption => "encryption",
            Kind::Mac => "mac",
        }
    }

    /// The protect and the process operation of the purpose.
    fn ops(self) -> [&'static str; 2] {
        match self {
            Kind::Signing | Kind::Mac => ["sign", "verify"],
            Kind::Encryption => ["encrypt", "decrypt"],
        }
    }

    fn mech(self) -> Mech {
        match self {
            Kind::Signing => Mech::plain(CKM_ECDSA),
            Kind::Encryption => Mech {
                type_: CKM_AES_CBC_PAD,
                param: Param::Bytes(IV.to_vec()),
            },
            Kind::Mac => Mech::plain(CKM_SHA256_HMAC),
        }
    }

    /// What the protect operation takes.
    fn input(self) -> &'static [u8] {
        match self {
            Kind::Signing => &DIGEST,
            Kind::Encryption | Kind::Mac => PLAINTEXT,
        }
    }

    /// A stand-in for material the key never produced (a pre-activation
    /// key cannot sign or encrypt): were the use permitted, it would fail
    /// with a code other than the refusal.
    fn dummy_material(self) -> Vec<u8> {
        match self {
            Kind::Signing => vec![0x42; 64],
            Kind::Encryption => vec![0x42; 48],
            Kind::Mac => vec![0x42; 32],
        }
    }

    /// The key's handles: (protect, process).
    fn handles(self, s: &Session, label: &str) -> (ObjectHandle, ObjectHandle) {
        let one = |class| {
            let found = find(s, label, class);
            assert_eq!(
                found.len(),
                1,
                "{label}: {class:?} objects by label: {found:?}"
            );
            found[0]
        };
        match self {
            Kind::Signing => (one(ObjectClass::PRIVATE_KEY), one(ObjectClass::PUBLIC_KEY)),
            Kind::Encryption | Kind::Mac => {
                let k = one(ObjectClass::SECRET_KEY);
                (k, k)
            }
        }
    }

    fn protect_init(self, raw: &Raw, s: CK_SESSION_HANDLE, key: ObjectHandle) -> CK_RV {
        match self {
            Kind::Signing | Kind::Mac => raw.sign_init(s, &self.mech(), key.handle()),
            Kind::Encryption => raw.encrypt_init(s, &self.mech(), key.handle()),
        }
    }

    /// Finishes an initialised protect operation: its code and output.
    fn protect_finish(self, raw: &Raw, s: CK_SESSION_HANDLE) -> (CK_RV, Vec<u8>) {
        let out = match self {
            Kind::Signing | Kind::Mac => raw.sign(s, self.input(), Out::Cap(512)),
            Kind::Encryption => raw.encrypt(s, self.input(), Out::Cap(512)),
        };
        (out.rv, out.data)
    }

    /// Init and finish: the first code that is not CKR_OK, and the output.
    fn protect(self, raw: &Raw, s: CK_SESSION_HANDLE, key: ObjectHandle) -> (CK_RV, Vec<u8>) {
        match self.protect_init(raw, s, key) {
            OK => self.protect_finish(raw, s),
            rv => (rv, Vec::new()),
        }
    }

    fn process_init(self, raw: &Raw, s: CK_SESSION_HANDLE, key: ObjectHandle) -> CK_RV {
        match self {
            Kind::Signing | Kind::Mac => raw.verify_init(s, &self.mech(), key.handle()),
            Kind::Encryption => raw.decrypt_init(s, &self.mech(), key.handle()),
        }
    }

    /// Finishes an initialised process operation on `material` (a
    /// signature, MAC or ciphertext of [`Kind::input`]). A decryption that
    /// succeeds must give the plaintext back.
    fn process_finish(self, raw: &Raw, s: CK_SESSION_HANDLE, material: &[u8]) -> CK_RV {
        match self {
            Kind::Signing | Kind::Mac => raw.verify(s, self.input(), material),
            Kind::Encryption => {
                let out = raw.decrypt(s, material, Out::Cap(512));
                if out.rv == OK {
                    assert_eq!(
                        out.data, PLAINTEXT,
                        "a permitted decryption returns the plaintext"
                    );
                }
                out.rv
            }
        }
    }

    fn process(self, raw: &Raw, s: CK_SESSION_HANDLE, key: ObjectHandle, material: &[u8]) -> CK_RV {
        match self.process_init(raw, s, key) {
            OK => self.process_finish(raw, s, material),
            rv => rv,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class())
    }
}

/// Where a key of test 1 is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    PreActivation,
    Active,
    Suspended,
    Deactivated,
    Compromised,
    /// `key destroy` on an active key: needs approval, so nothing changes.
    DestroyRequested,
}

impl Target {
    const ALL: [Target; 6] = [
        Target::PreActivation,
        Target::Active,
        Target::Suspended,
        Target::Deactivated,
        Target::Compromised,
        Target::DestroyRequested,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::PreActivation => "pre-activation",
            Target::Active => "active",
            Target::Suspended => "suspended",
            Target::Deactivated => "deactivated",
            Target::Compromised => "compromised",
            Target::DestroyRequested => "destroy-requested",
        }
    }

    /// The state `key show` must report afterwards.
    fn shown_state(self) -> &'static str {
        match self {
            Target::DestroyRequested => "active",
            other => other.name(),
        }
    }

    /// The brief's table: (protect, process) codes.
    fn expected(self) -> (CK_RV, CK_RV) {
        match self {
            Target::PreActivation | Target::Suspended | Target::Compromised => (REFUSED, REFUSED),
            Target::Active | Target::DestroyRequested => (OK, OK),
            Target::Deactivated => (REFUSED, OK),
        }
    }

    /// The CLI move from active, and its exit code.
    fn command(self) -> Option<(&'static str, i32)> {
        match self {
            Target::PreActivation | Target::Active => None,
            Target::Suspended => Some(("suspend", 0)),
            Target::Deactivated => Some(("deactivate", 0)),
            Target::Compromised => Some(("revoke", 0)),
            Target::DestroyRequested => Some(("destroy", 3)),
        }
    }
}

/// One key of the state table test and what happened to it.
struct Cell {
    kind: Kind,
    target: Target,
    label: String,
    protect_key: ObjectHandle,
    process_key: ObjectHandle,
    /// A signature, MAC or ciphertext the key made while active (or a
    /// stand-in for a key that never was).
    material: Vec<u8>,
    /// Sessions with a protect / process operation initialised while the
    /// key was active (none for pre-activation keys).
    pending: Option<(Session, Session)>,
}

/// Collects mismatches so that one run reports the whole table.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
    mismatches: Vec<String>,
}

impl Table {
    fn check(&mut self, what: String, got: CK_RV, want: CK_RV) {
        let mark = if got == want { "ok  " } else { "FAIL" };
        let row = format!(
            "{mark} {what}: got {}, expected {}",
            rv_name(got),
            rv_name(want)
        );
        if got != want {
            self.mismatches.push(row.clone());
        }
        self.rows.push(row);
    }

    #[track_caller]
    fn assert_clean(&self, title: &str) {
        println!("{title}:\n{}", self.rows.join("\n"));
        assert!(
            self.mismatches.is_empty(),
            "{title}: {} of {} cells wrong:\n{}",
            self.mismatches.len(),
            self.rows.len(),
            self.mismatches.join("\n")
        );
    }
}

// 1. Every state × operation cell of the lifecycle table, for a signing, an
// encryption and a MAC key, with fresh calls and with operations
// initialised while the key was still active.
keyward_test!(fn every_state_and_operation_of_every_purpose(tb) {
    install_policy(&tb, &policy());
    // Keys: one per purpose and target state; all but the pre-activation
    // ones activated.
    for kind in Kind::ALL {
        for target in Target::ALL {
            let label = format!("{kind}-{}", target.name());
            keyward_ok(&tb, &["key", "create", &label, "--class", kind.class()], 0);
            if target != Target::PreActivation {
                keyward_ok(&tb, &["key", "activate", &label], 0);
            }
        }
    }
    let ctx = Ctx::new(&tb);
    let raw = &ctx.raw;
    let s = ctx.user();
    let mut table = Table::default();

    // While active, each key makes the material its process operation will
    // be given later.
    let mut cells = Vec::new();
    for kind in Kind::ALL {
        for target in Target::ALL {
            let label = format!("{kind}-{}", target.name());
            let (protect_key, process_key) = kind.handles(&s, &label);
            let material = if target == Target::PreActivation {
                kind.dummy_material()
            } else {
                let (rv, out) = kind.protect(raw, s.handle(), protect_key);
                table.check(format!("{label}: {} while active", kind.ops()[0]), rv, OK);
                out
            };
            cells.push(Cell { kind, target, label, protect_key, process_key, material, pending: None });
        }
    }
    // The module defers a C_*Init of a (key, mechanism) it has seen
    // succeed; a new login forgets them all, so that the inits below each
    // reach the agent while the key is still active.
    // Handles of private objects do not survive a logout (PKCS#11 C_Logout):
    // find the keys again.
    s.logout().expect("C_Logout");
    s.login(UserType::User, Some(&ctx.pin())).expect("C_Login");
    for c in cells.iter_mut() {
        (c.protect_key, c.process_key) = c.kind.handles(&s, &c.label);
    }
    for c in cells.iter_mut().filter(|c| c.target != Target::PreActivation) {
        let (sp, sq) = (ctx.rw(), ctx.rw());
        let [protect, process] = c.kind.ops();
        table.check(
            format!("{}: C_*Init of {protect} while active", c.label),
            c.kind.protect_init(raw, sp.handle(), c.protect_key),
            OK,
        );
        table.check(
            format!("{}: C_*Init of {process} while active", c.label),
            c.kind.process_init(raw, sq.handle(), c.process_key),
            OK,
        );
        c.pending = Some((sp, sq));
    }

    // The moves.
    for c in &cells {
        if let Some((cmd, code)) = c.target.command() {
            let mut args = vec!["key", cmd, "--yes", &c.label, "--reason", "state table test"];
            if matches!(cmd, "revoke" | "destroy") {
                args.extend(["--reason-code", "superseded"]);
            }
            keyward_ok(&tb, &args, code);
        }
        let shown = key_show(&tb, &c.label);
        assert_eq!(shown.str_at("state"), c.target.shown_state(), "{}: {shown}", c.label);
    }

    // Operations initialised before the move, then fresh calls.
    for c in &cells {
        let (want_protect, want_process) = c.target.expected();
        let [protect, process] = c.kind.ops();
        if let Some((sp, sq)) = &c.pending {
            table.check(
                format!("{}: {protect} initialised before the move", c.label),
                c.kind.protect_finish(raw, sp.handle()).0,
                want_protect,
            );
            table.check(
                format!("{}: {process} initialised before the move", c.label),
                c.kind.process_finish(raw, sq.handle(), &c.material),
                want_process,
            );
        }
        table.check(
            format!("{}: {protect}", c.label),
            c.kind.protect(raw, s.handle(), c.protect_key).0,
            want_protect,
        );
        table.check(
            format!("{}: {process}", c.label),
            c.kind.process(raw, s.handle(), c.process_key, &c.material),
            want_process,
        );
    }
    table.assert_clean("state × operation");
});

/// A running `pending_op_probe`.
struct PendingOps(Probe);

impl PendingOps {
    fn start(tb: &Env, label: &str, signature: &[u8]) -> PendingOps {
        let exe = std::path::Path::new(env!("CARGO_BIN_EXE_pending_op_probe"));
        PendingOps(Probe::start(tb, exe, &[label, &hex(signature)]))
    }

    /// The value of the probe's next `name: value` line called `name`.
    fn value(&mut self, name: &str) -> String {
        self.0.value(name, Duration::from_secs(30))
    }

    /// Lets the probe go on to C_Sign and C_Verify; returns their codes.
    fn go(mut self) -> (String, String) {
        self.0.say("go");
        self.0.close_stdin();
        let sign = self.value("sign");
        let verify = self.value("verify");
        self.0.wait_success(Duration::from_secs(30));
        (sign, verify)
    }
}

// 2. A revocation reaches operations another process initialised before
// it: that process's C_Sign and C_Verify are refused.
keyward_test!(fn revocation_reaches_another_process_initialised_operations(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "shared", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "shared"], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let private = find(&s, "shared", ObjectClass::PRIVATE_KEY)[0];
    let signature = s.sign(&Mechanism::Ecdsa, private, &DIGEST).expect("an active key signs");

    // Control: with nothing in between, the probe's operations complete.
    let mut control = PendingOps::start(&tb, "shared", &signature);
    assert_eq!(control.value("init sign"), "CKR_OK");
    assert_eq!(control.value("init verify"), "CKR_OK");
    control.value("ready");
    assert_eq!(control.go(), ("CKR_OK".to_string(), "CKR_OK".to_string()), "control run");

    // The same, with a revocation between the inits and the operations.
    let mut probe = PendingOps::start(&tb, "shared", &signature);
    assert_eq!(probe.value("init sign"), "CKR_OK");
    assert_eq!(probe.value("init verify"), "CKR_OK");
    probe.value("ready");
    keyward_ok(&tb, &["key", "revoke", "--yes", "shared", "--reason", "compromise while in use", "--reason-code", "keyCompromise"], 0);
    let (sign, verify) = probe.go();
    assert_eq!(
        (sign.as_str(), verify.as_str()),
        ("CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_KEY_FUNCTION_NOT_PERMITTED"),
        "C_Sign / C_Verify initialised in another process before the revocation"
    );
});

/// Sleeps until `secs` (unix seconds) plus a margin has passed.
fn sleep_past(secs: i64) {
    let target = UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_millis(300);
    if let Ok(left) = target.duration_since(SystemTime::now()) {
        // Bounded: the periods of this file are seconds.
        assert!(left < Duration::from_secs(10), "asked to sleep {left:?}");
        std::thread::sleep(left);
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// 3. The cryptoperiod on the wall clock: a key of class `short` (protect
// 2 s, process 4 s) signs, then only verifies, then does nothing, whether
// the scheduler has run or not; operations initialised earlier included.
keyward_test!(fn cryptoperiod_ends_protection_then_processing(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "brief", "--class", "short"], 0);
    let ctx = Ctx::new(&tb);
    let raw = &ctx.raw;
    let s = ctx.user();
    let (private, public) = Kind::Signing.handles(&s, "brief");
    keyward_ok(&tb, &["key", "activate", "brief"], 0);
    let shown = key_show(&tb, "brief");
    let activated = shown.time_at("activated_at");
    let protect_until = shown.time_at("protect_until");
    let process_until = shown.time_at("process_until");
    assert_eq!((protect_until - activated, process_until - activated), (2, 4), "{shown}");

    // Initialised while the key protects (each its own round trip: nothing
    // was done with the key in this process yet).
    let pending_sign = ctx.rw();
    let pending_verify_early = ctx.rw();
    let pending_verify_late = ctx.rw();
    let mech = Kind::Signing.mech();
    assert_eq!(rv_name(raw.sign_init(pending_sign.handle(), &mech, private.handle())), "CKR_OK");
    assert_eq!(rv_name(raw.verify_init(pending_verify_early.handle(), &mech, public.handle())), "CKR_OK");
    assert_eq!(rv_name(raw.verify_init(pending_verify_late.handle(), &mech, public.handle())), "CKR_OK");
    let signature = s.sign(&Mechanism::Ecdsa, private, &DIGEST).expect("signs within the protect period");
    s.verify(&Mechanism::Ecdsa, public, &DIGEST, &signature).expect("verifies within the protect period");
    assert!(now_secs() < protect_until, "the checks above took longer than the protect period");

    let mut table = Table::default();
    sleep_past(protect_until);
    table.check(
        "past the protect period: C_Sign".into(),
        Kind::Signing.protect(raw, s.handle(), private).0,
        REFUSED,
    );
    table.check(
        "past the protect period: C_Sign initialised before it".into(),
        Kind::Signing.protect_finish(raw, pending_sign.handle()).0,
        REFUSED,
    );
    table.check(
        "past the protect period: C_Verify".into(),
        Kind::Signing.process(raw, s.handle(), public, &signature),
        OK,
    );
    table.check(
        "past the protect period: C_Verify initialised before it".into(),
        Kind::Signing.process_finish(raw, pending_verify_early.handle(), &signature),
        OK,
    );
    assert!(now_secs() < process_until, "the checks above took longer than the process window");

    sleep_past(process_until);
    table.check(
        "past the process period: C_Verify".into(),
        Kind::Signing.process(raw, s.handle(), public, &signature),
        REFUSED,
    );
    table.check(
        "past the process period: C_Verify initialised before it".into(),
        Kind::Signing.process_finish(raw, pending_verify_late.handle(), &signature),
        REFUSED,
    );
    table.check(
        "past the process period: C_Sign".into(),
        Kind::Signing.protect(raw, s.handle(), private).0,
        REFUSED,
    );
    table.assert_clean("cryptoperiod");
});

/// `keyward --json ...` that must fail with `code`: the error document
/// names the same code.
#[track_caller]
fn refused(tb: &Env, args: &[&str], code: i64) -> Json {
    let doc = keyward_json(tb, args, code as i32);
    let err = doc.at("error");
    assert_eq!(err.i64_at("exit_code"), code, "{doc}");
    doc
}

// 4. Purpose and size rules when an administrator creates keys or grants.
keyward_test!(fn creation_and_grants_keep_to_the_class(tb) {
    install_policy(&tb, &policy());
    // An algorithm outside the class (RSA for an EC-only class).
    refused(&tb, &["key", "create", "rsa-in-ec", "--class", "signing", "--algorithm", "rsa:1024"], 5);
    keyward_ok(&tb, &["key", "show", "rsa-in-ec"], 4);
    // A modulus below the class's minimum.
    refused(&tb, &["key", "create", "small-rsa", "--class", "rsa-3072", "--algorithm", "rsa:2048"], 5);
    keyward_ok(&tb, &["key", "show", "small-rsa"], 4);
    // An algorithm that does not fit the purpose.
    refused(&tb, &["key", "create", "ec-for-encryption", "--class", "encryption", "--algorithm", "ec:p256"], 5);
    keyward_ok(&tb, &["key", "show", "ec-for-encryption"], 4);
    // An AES key below the class's 256 bits.
    refused(&tb, &["key", "create", "aes-128", "--class", "encryption", "--algorithm", "aes:128"], 5);
    keyward_ok(&tb, &["key", "show", "aes-128"], 4);
    // Not an algorithm at all: a usage error.
    refused(&tb, &["key", "create", "nonsense", "--class", "signing", "--algorithm", "rsa:lots"], 2);

    // The class's own algorithm is accepted (the refusals above are about
    // the algorithm, not the class).
    keyward_ok(&tb, &["key", "create", "fine", "--class", "signing", "--algorithm", "ec:p256"], 0);
    // Grants must fit the key's purpose too.
    refused(&tb, &["grant", "add", "fine", APPLICATION, "--ops", "encrypt"], 5);
    refused(&tb, &["grant", "add", "fine", APPLICATION, "--ops", "sign,decrypt"], 5);
    let grants = keyward_json(&tb, &["grant", "list", "fine"], 0);
    assert!(
        grants.items().iter().all(|g| g.str_at("source") == "class"),
        "a refused grant left something: {grants}"
    );
});

// 4b. Sizes in a class are minimums (docs/policy.md: "sizes are minimums";
// policy/example-policy.toml: "aes:N  AES of at least N bits"), as they are
// for keys applications generate: a class of "aes:128" takes an AES-256 key.
keyward_test!(fn a_size_above_the_class_minimum_is_accepted(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "aes-big", "--class", "aes-128-or-more", "--algorithm", "aes:256"], 0);
    let key = key_show(&tb, "aes-big");
    assert_eq!(key.str_at("algorithm"), "aes:256", "{key}");
    // Below the minimum stays refused.
    refused(&tb, &["key", "create", "aes-small", "--class", "encryption", "--algorithm", "aes:128"], 5);
});

// 5. A just-in-time grant on a key whose class grants this application
// nothing: invisible before, signs during, refused and invisible after.
keyward_test!(fn an_expired_grant_hides_and_refuses_the_key(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "jit", "--class", "ungranted"], 0);
    keyward_ok(&tb, &["key", "activate", "jit"], 0);
    let ctx = Ctx::new(&tb);
    let raw = &ctx.raw;
    let s = ctx.user();
    assert!(find(&s, "jit", ObjectClass::PRIVATE_KEY).is_empty(), "a key without a grant is invisible");
    assert!(find(&s, "jit", ObjectClass::PUBLIC_KEY).is_empty(), "its public key too");

    let granted = keyward_json(&tb, &["grant", "add", "jit", APPLICATION, "--ops", "sign", "--for", "2s"], 0);
    let grant = granted
        .items()
        .iter()
        .find(|g| g.str_at("application") == APPLICATION)
        .unwrap_or_else(|| panic!("no grant for {APPLICATION}: {granted}"))
        .clone();
    let expires = grant.time_at("expires_at");
    assert!((1..=3).contains(&(expires - now_secs())), "a 2 s grant expires at {expires}: {granted}");

    let (private, public) = Kind::Signing.handles(&s, "jit");
    let pending = ctx.rw();
    let mech = Kind::Signing.mech();
    assert_eq!(rv_name(raw.sign_init(pending.handle(), &mech, private.handle())), "CKR_OK");
    let signature = s.sign(&Mechanism::Ecdsa, private, &DIGEST).expect("the grant lets it sign");
    let mut table = Table::default();
    table.check(
        "granted sign only: C_Verify".into(),
        Kind::Signing.process(raw, s.handle(), public, &signature),
        REFUSED,
    );
    assert!(now_secs() < expires, "the checks above took longer than the grant");

    sleep_past(expires);
    table.check(
        "grant expired: C_Sign on the handle found before".into(),
        Kind::Signing.protect(raw, s.handle(), private).0,
        REFUSED,
    );
    table.check(
        "grant expired: C_Sign initialised before the expiry".into(),
        Kind::Signing.protect_finish(raw, pending.handle()).0,
        REFUSED,
    );
    table.assert_clean("just-in-time grant");
    assert!(find(&s, "jit", ObjectClass::PRIVATE_KEY).is_empty(), "after the expiry a new search finds nothing");
    assert!(find(&s, "jit", ObjectClass::PUBLIC_KEY).is_empty(), "not even the public key");
});

// 6. SIGKILL of the agent while keys rotate.

/// Creates and activates four keys of class `signing`, then kills the agent
/// (SIGKILL) while a thread rotates them, and starts it again, several
/// times. Returns the keys' names.
fn rotate_under_kills(tb: &Env) -> Vec<String> {
    install_policy(tb, &policy());
    let names: Vec<String> = (0..4).map(|i| format!("rotating-{i}")).collect();
    for n in &names {
        keyward_ok(tb, &["key", "create", n, "--class", "signing"], 0);
        keyward_ok(tb, &["key", "activate", n], 0);
    }
    let mut rotations = 0;
    // Where a kill lands inside a rotation is chance: several rounds, each
    // killing a little later after a completed rotation, so that kills
    // inside the HSM generation and before the inventory write are likely.
    const ROUNDS: u64 = 6;
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel::<i32>();
        let worker = {
            let (tb, names, stop) = (tb.clone(), names.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = &names[i % names.len()];
                    let out = keyward(&tb, &["key", "rotate", name]);
                    let code = out.status.code().unwrap_or(-1);
                    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    codes.push((name.clone(), code, stderr));
                    let _ = done_tx.send(code);
                    i += 1;
                }
                codes
            })
        };
        // Let two rotations through, then kill the agent under the next.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ok = 0;
        while ok < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match done.recv_timeout(left) {
                Ok(0) => ok += 1,
                Ok(_) => {}
                Err(e) => panic!("round {round}: rotations do not complete ({e})"),
            }
        }
        std::thread::sleep(Duration::from_millis(round * 4));
        tb.kill_agent();
        stop.store(true, Ordering::SeqCst);
        let codes = worker.join().expect("the rotation thread");
        for (name, code, stderr) in &codes {
            // 0: done before the kill; 1: the agent went away.
            assert!(
                matches!(code, 0 | 1),
                "round {round}: keyward key rotate {name} exited {code}: {stderr}"
            );
        }
        rotations += codes.iter().filter(|(_, c, _)| *c == 0).count();
        tb.start_agent();
    }
    println!("{rotations} rotations completed around {ROUNDS} SIGKILLs");
    names
}

/// The CKA_ID (hex) of the one active version `key show` lists for `name`,
/// after checking the key and its versions; problems are collected.
fn active_version(tb: &Env, name: &str, problems: &mut Vec<String>) -> Option<String> {
    let key = key_show(tb, name);
    if key.str_at("state") != "active" {
        problems.push(format!(
            "{name}: state {} after the restarts",
            key.str_at("state")
        ));
    }
    let versions = key.array_at("versions");
    let numbers: Vec<i64> = versions.iter().map(|v| v.i64_at("version")).collect();
    if numbers != (1..=numbers.len() as i64).collect::<Vec<_>>() {
        problems.push(format!("{name}: version numbers {numbers:?}"));
    }
    let active: Vec<&Json> = versions
        .iter()
        .filter(|v| v.str_at("state") == "active")
        .collect();
    if active.len() != 1 {
        problems.push(format!(
            "{name}: {} active versions: {}",
            active.len(),
            key.at("versions")
        ));
        return None;
    }
    let newest = numbers.iter().copied().max().unwrap_or(0);
    if active[0].i64_at("version") != newest {
        problems.push(format!(
            "{name}: the active version is not the newest: {}",
            key.at("versions")
        ));
    }
    for v in versions.iter().filter(|v| v.i64_at("version") != newest) {
        if v.str_at("state") != "deactivated" {
            problems.push(format!("{name}: an older version is not deactivated: {v}"));
        }
    }
    Some(active[0].str_at("backend_id").to_string())
}

// 6a. After the kills every key is shown, has exactly one active version
// (the newest; older ones deactivated), and an application signs with it
// by label.
keyward_test!(fn agent_killed_during_rotations_keeps_one_active_version(tb) {
    let names = rotate_under_kills(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let mut problems = Vec::new();
    for n in &names {
        let Some(active_id) = active_version(&tb, n, &mut problems) else { continue };
        let private = find(&s, n, ObjectClass::PRIVATE_KEY);
        let ids: Vec<String> = private.iter().map(|&h| hex(&id_of(&s, h))).collect();
        if ids != [active_id.clone()] {
            problems.push(format!("{n}: private keys by label have CKA_IDs {ids:?}, the active version is {active_id}"));
            continue;
        }
        let public = s
            .find_objects(&[
                Attribute::Label(n.as_bytes().to_vec()),
                Attribute::Id(unhex(&active_id)),
                Attribute::Class(ObjectClass::PUBLIC_KEY),
            ])
            .expect("C_FindObjects by label and CKA_ID");
        match s.sign(&Mechanism::Ecdsa, private[0], &DIGEST) {
            Ok(sig) => match public.first() {
                Some(&p) => {
                    if let Err(e) = s.verify(&Mechanism::Ecdsa, p, &DIGEST, &sig) {
                        problems.push(format!("{n}: C_Verify with the active version: {e}"));
                    }
                }
                None => problems.push(format!("{n}: no public key with the active version's CKA_ID")),
            },
            Err(e) => problems.push(format!("{n}: C_Sign by label: {e}")),
        }
    }
    assert!(problems.is_empty(), "after SIGKILLs during rotations:\n{}", problems.join("\n"));
});

// 6b. After the kills no HSM object of an interrupted rotation is left
// under a managed key's name: an application searching by the name finds
// the active version only (public keys included), and `keyward discover`
// lists no backend key named like a managed key.
keyward_test!(fn agent_killed_during_rotations_leaves_no_stray_objects_under_key_names(tb) {
    let names = rotate_under_kills(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let mut problems = Vec::new();
    for n in &names {
        let Some(active_id) = active_version(&tb, n, &mut problems) else { continue };
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let ids: Vec<String> = find(&s, n, class).iter().map(|&h| hex(&id_of(&s, h))).collect();
            if ids != [active_id.clone()] {
                problems.push(format!(
                    "{n}: {class} objects by label have CKA_IDs {ids:?}, the active version is {active_id}"
                ));
            }
        }
    }
    // Backend keys the inventory does not know. Those named like a managed
    // key are what an application finds by that name; the rest (SoftHSM
    // objects killed half-written, without label or CKA_ID) are shown only.
    let shadows = keyward_json(&tb, &["discover"], 0);
    println!("shadow keys after the kills: {shadows}");
    for shadow in shadows.items() {
        if names.iter().any(|n| n == shadow.str_at("label")) {
            problems.push(format!("a backend key named like a managed key is unknown to the inventory: {shadow}"));
        }
    }
    assert!(problems.is_empty(), "after SIGKILLs during rotations:\n{}", problems.join("\n"));
});
