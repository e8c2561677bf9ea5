use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;

const BASE: &str = r#"[settings]
mode = "strict"
default_class = "tls"

[[application]]
name = "web"
uid = 33

[[class]]
name = "tls"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "90d"
process_period = "180d"
grants = [{ application = "web", operations = ["sign"] }]
"#;

/// Parses `text` named `policy.toml` and returns the error as displayed.
fn error(text: &str) -> String {
    match Policy::from_str(text, "policy.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// `BASE` with `from` replaced by `to` (which must occur once).
fn mutate(from: &str, to: &str) -> String {
    assert_eq!(BASE.matches(from).count(), 1, "{from}");
    BASE.replace(from, to)
}

fn assert_error(text: &str, expected: &str) {
    let got = error(text);
    assert_eq!(got, expected, "for:\n{text}");
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn base_is_valid() {
    let p = Policy::from_str(BASE, "policy.toml").unwrap();
    assert_eq!(p.settings.mode, Mode::Strict);
    assert_eq!(p.settings.pin_max_attempts, 10);
    assert_eq!(p.classes[0].grants[0].operations, [Operation::Sign]);
}

#[test]
fn a_class_warns_ahead_of_certificate_expiry_when_it_says_so() {
    let p = Policy::from_str(BASE, "policy.toml").unwrap();
    assert_eq!(p.classes[0].certificate_warning, None);
    let text = mutate(
        "process_period = \"180d\"\n",
        "process_period = \"180d\"\ncertificate_warning = \"30d\"\n",
    );
    let p = Policy::from_str(&text, "policy.toml").unwrap();
    assert_eq!(
        p.classes[0].certificate_warning,
        Some(Duration::from_secs(30 * 86_400))
    );
    let text = mutate(
        "process_period = \"180d\"\n",
        "process_period = \"180d\"\ncertificate_warning = \"soon\"\n",
    );
    assert!(
        error(&text).contains("class \"tls\", certificate_warning: \"soon\" is not a duration"),
        "{}",
        error(&text)
    );
}

#[test]
fn a_class_is_sensitive_and_bounds_its_recovery_windows_when_it_says_so() {
    let p = Policy::from_str(BASE, "policy.toml").unwrap();
    assert!(!p.classes[0].sensitive);
    assert_eq!(
        p.classes[0].max_recovery_window,
        DEFAULT_MAX_RECOVERY_WINDOW
    );
    let text = mutate(
        "process_period = \"180d\"\n",
        "process_period = \"180d\"\nsensitive = true\nmax_recovery_window = \"7d\"\n",
    );
    let p = Policy::from_str(&text, "policy.toml").unwrap();
    assert!(p.classes[0].sensitive);
    assert_eq!(
        p.classes[0].max_recovery_window,
        Duration::from_secs(7 * 86_400)
    );
    let text = mutate(
        "process_period = \"180d\"\n",
        "process_period = \"180d\"\nmax_recovery_window = \"a week\"\n",
    );
    assert!(
        error(&text).starts_with(
            "policy.toml:15:23: class \"tls\", max_recovery_window: \"a week\" is not a duration"
        ),
        "{}",
        error(&text)
    );
}

#[test]
fn error_unknown_field() {
    assert_error(
        &mutate("purpose = \"signing\"", "purpose = \"signing\"\npurposes = 1"),
        "policy.toml:12:1: class \"tls\", purposes: unknown field `purposes`, expected one of `name`, `description`, `purpose`, `algorithms`, `protect_period`, `process_period`, `rotation_interval`, `backup`, `scope`, `grants`, `approve_each_use`, `approval_wait`, `sensitive`, `max_recovery_window`, `certificate_warning`, `legacy`",
    );
}

#[test]
fn error_unknown_field_in_settings() {
    assert_error(
        &mutate("mode = \"strict\"", "mode = \"strict\"\npin_attempts = 3"),
        "policy.toml:3:1: settings, pin_attempts: unknown field `pin_attempts`, expected one of `mode`, `default_class`, `pin_max_attempts`, `mechanisms`",
    );
}

#[test]
fn error_bad_purpose() {
    assert_error(
        &mutate("purpose = \"signing\"", "purpose = \"sining\""),
        "policy.toml:11:11: class \"tls\", purpose: \"sining\" is not one of signing, encryption, wrapping, derivation, mac",
    );
}

#[test]
fn error_bad_duration() {
    assert_error(
        &mutate("protect_period = \"90d\"", "protect_period = \"90 days\""),
        "policy.toml:13:18: class \"tls\", protect_period: \"90 days\" is not a duration: expected a number and a unit s, m, h, d or w, like \"90d\" or \"12h\"",
    );
}

#[test]
fn error_unknown_application_in_grant() {
    assert_error(
        &mutate("application = \"web\"", "application = \"wbe\""),
        "policy.toml:15:27: class \"tls\", grants, application: there is no application \"wbe\"",
    );
}

#[test]
fn error_process_shorter_than_protect() {
    assert_error(
        &mutate("process_period = \"180d\"", "process_period = \"30d\""),
        "policy.toml:14:18: class \"tls\", process_period: 30d is shorter than the protect period 90d: a key must process what it protected",
    );
}

#[test]
fn error_rotation_longer_than_protect() {
    assert_error(
        &mutate("process_period = \"180d\"", "process_period = \"180d\"\nrotation_interval = \"91d\""),
        "policy.toml:15:21: class \"tls\", rotation_interval: 91d is longer than the protect period 90d: the key would stop protecting before it is rotated",
    );
}

#[test]
fn error_operation_not_fitting_purpose() {
    assert_error(
        &mutate("operations = [\"sign\"]", "operations = [\"sign\", \"decrypt\"]"),
        "policy.toml:15:56: class \"tls\", grant to \"web\", operations: decrypt does not fit purpose signing (which allows sign, verify)",
    );
}

#[test]
fn error_unknown_operation() {
    assert_error(
        &mutate("operations = [\"sign\"]", "operations = [\"sgn\"]"),
        "policy.toml:15:48: class \"tls\", grant to \"web\", operations: \"sgn\" is not one of sign, verify, encrypt, decrypt, wrap, unwrap, derive, digest",
    );
}

#[test]
fn error_unknown_mechanism() {
    assert_error(
        &mutate("mode = \"strict\"", "mode = \"strict\"\nmechanisms = [\"CKM_ECDSA\", \"CKM_ECDSB\"]"),
        "policy.toml:3:28: settings, mechanisms: \"CKM_ECDSB\" is not a known mechanism: write a CKM_ name or a hex value like 0x80000001",
    );
    assert_error(
        &mutate("mode = \"strict\"", "mode = \"strict\"\nmechanisms = []"),
        "policy.toml:3:14: settings, mechanisms: an empty list allows no mechanism: leave `mechanisms` out to allow all",
    );
}

#[test]
fn error_duplicate_class() {
    let text = format!("{BASE}\n[[class]]\nname = \"tls\"\npurpose = \"mac\"\nalgorithms = [\"hmac:256\"]\nprotect_period = \"1d\"\nprocess_period = \"1d\"\n");
    assert_error(
        &text,
        "policy.toml:18:8: class \"tls\", name: a second class is named \"tls\"",
    );
}

#[test]
fn error_duplicate_application() {
    let text = mutate(
        "uid = 33\n",
        "uid = 33\n\n[[application]]\nname = \"web\"\ngid = 1\n",
    );
    assert_error(
        &text,
        "policy.toml:10:8: application \"web\", name: a second application is named \"web\"",
    );
    let text = mutate(
        "uid = 33\n",
        "uid = 33\n\n[[application]]\nname = \"web2\"\nuid = 33\n",
    );
    assert_error(
        &text,
        "policy.toml:9:1: application \"web2\", uid: same uid, gid and exe as application \"web\": a peer could not tell them apart",
    );
}

#[test]
fn error_missing_uid_and_gid() {
    assert_error(
        &mutate("uid = 33\n", "exe = \"/usr/sbin/nginx\"\n"),
        "policy.toml:5:1: application \"web\", uid: an application needs a uid, a gid or both",
    );
}

#[test]
fn error_relative_exe() {
    assert_error(
        &mutate("uid = 33\n", "uid = 33\nexe = \"sbin/nginx\"\n"),
        "policy.toml:8:7: application \"web\", exe: \"sbin/nginx\" must be an absolute path without \".\" or \"..\" (as /proc/<pid>/exe shows it)",
    );
    assert!(error(&mutate(
        "uid = 33\n",
        "uid = 33\nexe = \"/usr/../sbin/nginx\"\n"
    ))
    .starts_with("policy.toml:8:7: application \"web\", exe:"));
}

#[test]
fn error_unknown_default_class() {
    assert_error(
        &mutate("default_class = \"tls\"", "default_class = \"tsl\""),
        "policy.toml:3:17: settings, default_class: there is no class \"tsl\"",
    );
}

#[test]
fn error_bad_mode() {
    assert_error(
        &mutate("mode = \"strict\"", "mode = \"strickt\""),
        "policy.toml:2:8: settings, mode: \"strickt\" is not one of strict, lab",
    );
}

#[test]
fn error_algorithm_not_fitting_purpose_or_unknown() {
    assert_error(
        &mutate("[\"ec:p256\"]", "[\"ec:p256\", \"aes:256\"]"),
        "policy.toml:12:26: class \"tls\", algorithms: aes:256 keys cannot serve signing",
    );
    assert_error(
        &mutate("[\"ec:p256\"]", "[\"ec:secp256k1\"]"),
        "policy.toml:12:15: class \"tls\", algorithms: \"ec:secp256k1\": EC curves are p256, p384 and p521",
    );
    assert_error(
        &mutate("[\"ec:p256\"]", "[]"),
        "policy.toml:12:14: class \"tls\", algorithms: a class needs at least one algorithm",
    );
}

#[test]
fn error_grant_until_without_time_zone() {
    assert_error(
        &mutate("operations = [\"sign\"] }", "operations = [\"sign\"], until = 2026-01-01T00:00:00 }"),
        "policy.toml:15:65: class \"tls\", grant to \"web\", until: 2026-01-01T00:00:00 lacks a date, a time or a time zone: write it like 2026-01-31T18:00:00Z",
    );
}

#[test]
fn error_wrong_type_and_syntax() {
    let got = error(&mutate("uid = 33", "uid = \"33\""));
    assert!(
        got.starts_with("policy.toml:7:7: application \"web\", uid: invalid type"),
        "{got}"
    );
    let got = error(&mutate("uid = 33", "uid = -1"));
    assert!(
        got.starts_with("policy.toml:7:7: application \"web\", uid:"),
        "{got}"
    );
    let got = error(&mutate("name = \"tls\"", "name = \"tls"));
    assert!(got.starts_with("policy.toml:10:"), "{got}");
    let got = error("");
    assert!(
        got.starts_with("policy.toml:1:1: policy: missing field `settings`"),
        "{got}"
    );
    let got = error(&mutate("name = \"web\"", "name = \"web server\""));
    assert!(
        got.starts_with("policy.toml:6:8: application, name: \"web server\" is not a name"),
        "{got}"
    );
}

#[test]
fn from_file_names_the_file() {
    let err = Policy::from_file("/nonexistent/keyward-policy.toml").unwrap_err();
    assert!(err
        .to_string()
        .starts_with("/nonexistent/keyward-policy.toml: cannot read the policy:"));
}

#[test]
fn example_policy_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-policy.toml");
    let p = Policy::from_file(&path).unwrap();
    assert_eq!(p.origin, path.display().to_string());
    assert_eq!(p.mode(), Mode::Strict);
    assert_eq!(p.settings.pin_max_attempts, 5);
    assert_eq!(p.settings.default_class.as_deref(), Some("app-signing"));
    assert_eq!(p.applications.len(), 5);
    assert_eq!(p.classes.len(), 6);
    let remote = p.application("web-remote").unwrap();
    assert!(remote.is_remote());
    assert_eq!(
        p.application_for_certificate("CN=web-1.example.org", &"0".repeat(64))
            .map(|a| a.name.as_str()),
        Some("web-remote")
    );
    // The reference example keeps to the standards' recommendations.
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    assert!(p.mechanism_allowed(pkcs11_sys::CKM_ECDSA));
    assert!(p.mechanism_allowed(0x8000_0001));
    assert!(!p.mechanism_allowed(pkcs11_sys::CKM_DES3_CBC));
    let tls = p.class("tls-signing").unwrap();
    assert_eq!(tls.purpose, Purpose::Signing);
    assert_eq!(tls.protect_period, Duration::from_secs(365 * 86_400));
    assert_eq!(
        tls.rotation_interval,
        Some(Duration::from_secs(90 * 86_400))
    );
    assert_eq!(tls.scope, ["pci-dss"]);
    assert!(tls.grants[1].until.is_some());
    assert!(p.class("data-encryption").unwrap().backup);
    assert_eq!(
        p.class_for_generation().unwrap().unwrap().name,
        "app-signing"
    );
}

#[test]
fn lab_policy_file_equals_built_in() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab-policy.toml");
    let mut p = Policy::from_file(&path).unwrap();
    p.origin = Policy::lab().origin;
    assert_eq!(p, Policy::lab());
}

#[test]
fn lab_mode_admits_own_uid_and_root_only() {
    let lab = Policy::lab();
    assert_eq!(lab.admit(1000, 1000, None, 1000), Some(Peer::Lab));
    assert_eq!(lab.admit(0, 0, None, 1000), Some(Peer::Lab));
    assert_eq!(lab.admit(1001, 1000, None, 1000), None);
    assert!(lab.mechanism_allowed(pkcs11_sys::CKM_DES3_CBC));
    assert_eq!(lab.class_for_generation(), Ok(None));
    assert_eq!(lab.check_pin_failures(1_000), Ok(()));

    // A strict policy admits listed applications only, root included.
    let strict = Policy::from_str(BASE, "p").unwrap();
    assert_eq!(strict.admit(0, 0, None, 0), None);
    assert_eq!(strict.admit(1000, 1000, None, 1000), None);
    assert!(
        matches!(strict.admit(33, 5, None, 1000), Some(Peer::Application(a)) if a.name == "web")
    );
    // A lab policy with applications serves them as themselves.
    let lab_apps = Policy::from_str(&mutate("\"strict\"", "\"lab\""), "p").unwrap();
    assert!(matches!(
        lab_apps.admit(33, 5, None, 33),
        Some(Peer::Application(_))
    ));
    assert_eq!(lab_apps.admit(34, 5, None, 34), Some(Peer::Lab));
}

#[test]
fn most_specific_application_wins() {
    let text = r#"
[settings]
mode = "strict"
[[application]]
name = "group"
gid = 33
[[application]]
name = "user"
uid = 33
[[application]]
name = "user-group"
uid = 33
gid = 33
[[application]]
name = "nginx"
uid = 33
exe = "/usr/sbin/nginx"
[[application]]
name = "any-nginx"
gid = 7
exe = "/usr/sbin/nginx"
"#;
    let p = Policy::from_str(text, "p").unwrap();
    let who = |uid, gid, exe: Option<&str>| {
        p.application_for(uid, gid, exe.map(Path::new))
            .map(|a| a.name.as_str())
    };
    let nginx = Some("/usr/sbin/nginx");
    assert_eq!(who(33, 33, nginx), Some("nginx"));
    assert_eq!(who(33, 33, Some("/usr/bin/curl")), Some("user-group"));
    assert_eq!(who(33, 33, None), Some("user-group"));
    assert_eq!(who(33, 1, None), Some("user"));
    assert_eq!(who(1, 33, None), Some("group"));
    assert_eq!(who(1, 7, nginx), Some("any-nginx"));
    assert_eq!(who(1, 7, None), None);
    assert_eq!(who(1, 1, nginx), None);
}

#[test]
fn mechanisms_by_name_and_hex() {
    let p = Policy::from_str(
        &mutate(
            "mode = \"strict\"",
            "mode = \"strict\"\nmechanisms = [\"CKM_ECDSA\", \"0x80000001\", \"0X1\", \"CKM_ECDSA\"]",
        ),
        "p",
    )
    .unwrap();
    assert_eq!(
        p.settings.mechanisms,
        Some(vec![
            pkcs11_sys::CKM_RSA_PKCS,
            pkcs11_sys::CKM_ECDSA,
            0x8000_0001
        ])
    );
    assert!(p.mechanism_allowed(pkcs11_sys::CKM_ECDSA));
    assert!(!p.mechanism_allowed(pkcs11_sys::CKM_ECDSA_SHA256));
    let refusal = p.check_mechanism(pkcs11_sys::CKM_ECDSA_SHA256).unwrap_err();
    assert_eq!(refusal.ckr(), pkcs11_sys::CKR_MECHANISM_INVALID);
    assert_eq!(
        refusal.to_string(),
        "mechanism CKM_ECDSA_SHA256 is not allowed by the policy"
    );
}

#[test]
fn strict_without_default_class_refuses_generation() {
    let p = Policy::from_str(&mutate("default_class = \"tls\"\n", ""), "p").unwrap();
    let refusal = p.class_for_generation().unwrap_err();
    assert_eq!(refusal.ckr(), pkcs11_sys::CKR_ACTION_PROHIBITED);
}

#[test]
fn pin_lockout() {
    let p = Policy::from_str(
        &mutate(
            "mode = \"strict\"",
            "mode = \"strict\"\npin_max_attempts = 3",
        ),
        "p",
    )
    .unwrap();
    assert_eq!(p.check_pin_failures(2), Ok(()));
    let refusal = p.check_pin_failures(3).unwrap_err();
    assert_eq!(refusal.ckr(), pkcs11_sys::CKR_PIN_LOCKED);
    // Strict mode: PINs are the administrator's, not the token SO's.
    let refusal = p.check_pin_management_by_so().unwrap_err();
    assert_eq!(refusal.ckr(), pkcs11_sys::CKR_ACTION_PROHIBITED);
    assert!(refusal.to_string().contains("administrator"), "{refusal}");
    assert_eq!(Policy::lab().check_pin_management_by_so(), Ok(()));
    assert_eq!(Policy::lab().check_pin_failures(u32::MAX), Ok(()));
}

#[test]
fn grants_purpose_expiry_and_state() {
    let text = mutate(
        "grants = [{ application = \"web\", operations = [\"sign\"] }]",
        "grants = [\n  { application = \"web\", operations = [\"sign\"] },\n  { application = \"web\", operations = [\"verify\"], until = 1970-01-01T00:16:40Z },\n]",
    );
    let p = Policy::from_str(&text, "p").unwrap();
    let tls = p.class("tls").unwrap();
    let now = t(500);
    assert_eq!(tls.check_grant("web", Operation::Sign, now), Ok(()));
    assert_eq!(tls.check_grant("web", Operation::Verify, now), Ok(()));
    assert_eq!(
        tls.granted_operations("web", now),
        [Operation::Sign, Operation::Verify]
    );
    // The verify grant ends at t(1000).
    let later = t(1_000);
    let refusal = tls
        .check_grant("web", Operation::Verify, later)
        .unwrap_err();
    assert!(
        matches!(refusal, Refusal::GrantExpired { .. }),
        "{refusal:?}"
    );
    assert_eq!(refusal.ckr(), pkcs11_sys::CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_eq!(tls.granted_operations("web", later), [Operation::Sign]);
    // No grant at all, and an operation outside the purpose.
    assert!(matches!(
        tls.check_grant("other", Operation::Sign, now),
        Err(Refusal::NotGranted { .. })
    ));
    assert!(tls.granted_operations("other", now).is_empty());
    assert_eq!(
        tls.check_grant("web", Operation::Decrypt, now),
        Err(Refusal::PurposeMismatch {
            purpose: Purpose::Signing,
            operation: Operation::Decrypt
        })
    );
    // check_use adds the state table on the effective state.
    let period = tls.cryptoperiod(t(0));
    assert_eq!(
        tls.check_use("web", Operation::Sign, KeyState::Active, now, Some(&period)),
        Ok(())
    );
    let past_protect = t(90 * 86_400);
    assert!(matches!(
        tls.check_use(
            "web",
            Operation::Sign,
            KeyState::Active,
            past_protect,
            Some(&period)
        ),
        Err(Refusal::KeyState {
            state: KeyState::Deactivated,
            ..
        })
    ));
    assert_eq!(
        tls.check_use(
            "web",
            Operation::Sign,
            KeyState::Suspended,
            now,
            Some(&period)
        ),
        Err(Refusal::KeyState {
            state: KeyState::Suspended,
            operation: Operation::Sign
        })
    );
}

/// Every prefix of the example, and the example with each line dropped,
/// parses or fails with a located error; nothing panics. (A cheap stand-in
/// for fuzzing the parser until the fuzz target exists.)
#[test]
fn mangled_policies_never_panic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-policy.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let check = |t: &str| {
        if let Err(e) = Policy::from_str(t, "p.toml") {
            assert!(e.to_string().starts_with("p.toml:"), "{e}");
        }
    };
    for (i, _) in text.char_indices().step_by(7) {
        check(&text[..i]);
    }
    let lines: Vec<&str> = text.lines().collect();
    for skip in 0..lines.len() {
        let mut t = String::new();
        for (i, l) in lines.iter().enumerate() {
            if i != skip {
                t.push_str(l);
                t.push('\n');
            }
        }
        check(&t);
    }
}

#[test]
fn objects_are_shared_with_named_applications_only() {
    let shared = mutate(
        "uid = 33\n",
        "uid = 33\nshare_objects_with = [\"mail\"]\n\n[[application]]\nname = \"mail\"\nuid = 34\n",
    );
    let p = Policy::from_str(&shared, "policy.toml").unwrap();
    assert_eq!(p.application("web").unwrap().share_objects_with, ["mail"]);
    assert!(p.application("mail").unwrap().share_objects_with.is_empty());
    assert_error(
        &mutate("uid = 33\n", "uid = 33\nshare_objects_with = [\"mial\"]\n"),
        "policy.toml:8:23: application \"web\", share_objects_with: there is no application \"mial\"",
    );
    assert_error(
        &mutate("uid = 33\n", "uid = 33\nshare_objects_with = [\"web\"]\n"),
        "policy.toml:8:23: application \"web\", share_objects_with: an application sees its own objects already",
    );
}

// ---------------------------------------------------------------------------
// The administrators' roster and the quorums.

const ED: &str = "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const P256_UNCOMPRESSED: &str = "p256:046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
const P256_COMPRESSED: &str =
    "p256:03eaff074022c70a698306aad02678f2f35575b0fdd3145aafe4b560e4f1dc29e6";

/// `BASE` with a roster that meets every default quorum: two security
/// officers, a key owner, a custodian and an auditor.
fn roster() -> String {
    format!(
        r#"{BASE}
[[administrator]]
name = "alice"
uids = [1001, 1011]
roles = ["security-officer"]
public_key = "{ED}"

[[administrator]]
name = "bob"
uids = [1002]
roles = ["security-officer", "custodian"]
public_key = "{P256_UNCOMPRESSED}"

[[administrator]]
name = "carol"
uids = [1003]
roles = ["key-owner"]
public_key = "{P256_COMPRESSED}"

[[administrator]]
name = "dave"
uids = [1004]
roles = ["auditor"]
public_key = "ed25519:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
"#
    )
}

/// `roster()` with `from` replaced by `to` (which must occur once).
fn mutate_roster(from: &str, to: &str) -> String {
    let text = roster();
    assert_eq!(text.matches(from).count(), 1, "{from}");
    text.replace(from, to)
}

#[test]
fn roster_is_valid_and_typed() {
    let p = Policy::from_str(&roster(), "policy.toml").unwrap();
    assert!(p.dual_control());
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let names: Vec<_> = p.administrators.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol", "dave"]);
    let alice = p.administrator("alice").unwrap();
    assert_eq!(alice.uids, [1001, 1011]);
    assert_eq!(alice.roles, [Role::SecurityOfficer]);
    match &alice.public_key {
        AdministratorKey::Ed25519(k) => {
            assert_eq!(k[0], 0xd7);
            assert_eq!(k[31], 0x1a);
        }
        other => panic!("{other:?}"),
    }
    let bob = p.administrator("bob").unwrap();
    assert_eq!(bob.roles, [Role::SecurityOfficer, Role::Custodian]);
    assert!(matches!(&bob.public_key, AdministratorKey::P256(k) if k.len() == 65 && k[0] == 4));
    let carol = p.administrator("carol").unwrap();
    assert!(matches!(&carol.public_key, AdministratorKey::P256(k) if k.len() == 33 && k[0] == 3));
    let dave = p.administrator("dave").unwrap();
    assert_eq!(
        dave.public_key.to_text(),
        "ed25519:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
    );
    assert!(p.administrator("eve").is_none());
}

#[test]
fn administrator_for_uid() {
    let p = Policy::from_str(&roster(), "policy.toml").unwrap();
    assert_eq!(p.administrator_for_uid(1001).unwrap().name, "alice");
    assert_eq!(p.administrator_for_uid(1011).unwrap().name, "alice");
    assert_eq!(p.administrator_for_uid(1003).unwrap().name, "carol");
    assert!(p.administrator_for_uid(33).is_none());
    assert!(p.administrator_for_uid(0).is_none());
}

#[test]
fn roles_and_actions_by_name() {
    for role in Role::ALL {
        assert_eq!(Role::parse(role.as_str()), Some(role));
        assert_eq!(role.may_change(), role != Role::Auditor);
    }
    assert_eq!(Role::parse("admin"), None);
    for action in Approvable::ALL {
        assert_eq!(Approvable::parse(action.as_str()), Some(action));
        assert_eq!(action.to_string(), action.as_str());
    }
    assert_eq!(
        Approvable::parse("deactivate-suspended"),
        Some(Approvable::DeactivateSuspended)
    );
    assert_eq!(Approvable::parse("deactivate_suspended"), None);
}

#[test]
fn default_quorums() {
    let p = Policy::from_str(&roster(), "policy.toml").unwrap();
    assert!(p.quorums.is_empty());
    let day = Duration::from_secs(86_400);
    for action in [
        Approvable::Destroy,
        Approvable::PolicyApply,
        Approvable::TokenInit,
    ] {
        let q = p.quorum(action);
        assert_eq!(
            q,
            Quorum {
                approvals: 2,
                roles: vec![Role::SecurityOfficer],
                requester_counts: true,
                lifetime: day,
            },
            "{action}"
        );
        assert_eq!(q.holders_needed(), 2);
    }
    for action in [Approvable::BackupExport, Approvable::BackupRestore] {
        let q = p.quorum(action);
        assert_eq!(q.approvals, 2, "{action}");
        assert_eq!(q.roles, [Role::SecurityOfficer, Role::Custodian]);
        assert!(q.requester_counts);
    }
    for action in [
        Approvable::Resume,
        Approvable::DeactivateSuspended,
        Approvable::LeaveCompromised,
        Approvable::RecoveryWindow,
        Approvable::SensitiveGrant,
    ] {
        let q = p.quorum(action);
        assert_eq!(
            q,
            Quorum {
                approvals: 1,
                roles: vec![Role::SecurityOfficer, Role::KeyOwner],
                requester_counts: false,
                lifetime: day,
            },
            "{action}"
        );
        assert_eq!(q.holders_needed(), 2);
    }
    // Every action has a default, and no default lets an auditor approve.
    for action in Approvable::ALL {
        let q = action.default_quorum();
        assert!(q.approvals >= 1);
        assert!(q.roles.iter().all(|r| r.may_change()));
    }
}

#[test]
fn explicit_quorum_overrides_default() {
    let text = format!(
        "{}\n[quorum.destroy]\napprovals = 1\nroles = [\"key-owner\", \"security-officer\"]\nlifetime = \"2h\"\n\n[quorum.token-init]\napprovals = 3\nroles = [\"security-officer\", \"key-owner\"]\nrequester_counts = true\n",
        roster()
    );
    let p = Policy::from_str(&text, "policy.toml").unwrap();
    assert_eq!(
        p.quorum(Approvable::Destroy),
        Quorum {
            approvals: 1,
            roles: vec![Role::KeyOwner, Role::SecurityOfficer],
            requester_counts: false,
            lifetime: Duration::from_secs(7200),
        }
    );
    let init = p.quorum(Approvable::TokenInit);
    assert_eq!(init.approvals, 3);
    assert!(init.requester_counts);
    assert_eq!(init.lifetime, Duration::from_secs(86_400));
    // The others keep their defaults.
    assert_eq!(
        p.quorum(Approvable::Resume),
        Approvable::Resume.default_quorum()
    );
}

#[test]
fn no_roster_no_dual_control() {
    let p = Policy::from_str(BASE, "policy.toml").unwrap();
    assert!(!p.dual_control());
    assert!(p.administrators.is_empty());
    assert!(p.notes.is_empty());
    assert!(p.administrator_for_uid(33).is_none());
    assert!(!Policy::lab().dual_control());
}

#[test]
fn error_duplicate_administrator() {
    assert_error(
        &mutate_roster("name = \"bob\"", "name = \"alice\""),
        "policy.toml:24:8: administrator \"alice\", name: a second administrator is named \"alice\"",
    );
}

#[test]
fn error_bad_administrator_name() {
    assert_error(
        &mutate_roster("name = \"bob\"", "name = \"bob smith\""),
        "policy.toml:24:8: administrator, name: \"bob smith\" is not a name: use letters, digits, '-', '_' and '.'",
    );
}

#[test]
fn error_uid_in_two_administrators() {
    assert_error(
        &mutate_roster("uids = [1003]", "uids = [1003, 1011]"),
        "policy.toml:31:15: administrator \"carol\", uids: uid 1011 is already administrator \"alice\"'s: a uid belongs to one administrator",
    );
    assert_error(
        &mutate_roster("uids = [1003]", "uids = [1003, 1003]"),
        "policy.toml:31:15: administrator \"carol\", uids: uid 1003 is listed twice",
    );
}

#[test]
fn error_no_uid_or_role() {
    assert_error(
        &mutate_roster("uids = [1003]", "uids = []"),
        "policy.toml:31:8: administrator \"carol\", uids: an administrator needs at least one uid",
    );
    assert_error(
        &mutate_roster("roles = [\"key-owner\"]", "roles = []"),
        "policy.toml:32:9: administrator \"carol\", roles: an administrator needs at least one role",
    );
}

#[test]
fn error_unknown_role() {
    assert_error(
        &mutate_roster("roles = [\"key-owner\"]", "roles = [\"keyowner\"]"),
        "policy.toml:32:10: administrator \"carol\", roles: \"keyowner\" is not one of security-officer, key-owner, operator, auditor, custodian",
    );
}

#[test]
fn error_auditor_with_another_role() {
    assert_error(
        &mutate_roster("roles = [\"auditor\"]", "roles = [\"auditor\", \"operator\"]"),
        "policy.toml:38:9: administrator \"dave\", roles: an auditor is read-only and holds no other role",
    );
}

#[test]
fn error_bad_public_keys() {
    let cases = [
        (
            "ed25519:d75a98",
            "an ed25519 public key is 32 bytes (64 hex digits), not 3",
        ),
        (
            "ed25519:zz5a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "the ed25519 key is not hex (an even number of 0-9, a-f)",
        ),
        (
            "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511",
            "the ed25519 key is not hex (an even number of 0-9, a-f)",
        ),
        (
            "p256:056b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
            "a compressed p256 point (33 bytes) starts with 02 or 03",
        ),
        (
            "p256:046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
            "a compressed p256 point (33 bytes) starts with 02 or 03",
        ),
        (
            "p256:036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
            "an uncompressed p256 point (65 bytes) starts with 04",
        ),
        (
            "p256:04",
            "a p256 public key is a SEC1 point of 65 bytes (uncompressed) or 33 (compressed), not 1",
        ),
        (
            "p256:xyz",
            "the p256 key is not hex (an even number of 0-9, a-f)",
        ),
        (
            "pkcs11:token=dave;object=approval",
            "the roster holds the public key: for a key on a token write its \"p256:...\" or \"ed25519:...\" form (`keyward admin-key show pkcs11:...` prints it); the token's URI is given when signing",
        ),
        (
            "rsa:0102",
            "unknown key kind: expected \"ed25519:<64 hex digits>\" or \"p256:<hex SEC1 point>\"",
        ),
        (
            "",
            "unknown key kind: expected \"ed25519:<64 hex digits>\" or \"p256:<hex SEC1 point>\"",
        ),
    ];
    for (key, message) in cases {
        let text = roster().replace(ED, key);
        assert_error(
            &text,
            &format!("policy.toml:21:14: administrator \"alice\", public_key: {message}"),
        );
    }
    assert_error(
        &roster().replace(P256_COMPRESSED, "ed25519:00"),
        "policy.toml:33:14: administrator \"carol\", public_key: an ed25519 public key is 32 bytes (64 hex digits), not 1",
    );
}

/// `roster()` with a `share_recipient` line after the roles line `roles`.
fn with_recipient(text: &str, roles: &str, recipient: &str) -> String {
    assert_eq!(text.matches(roles).count(), 1, "{roles}");
    text.replace(
        roles,
        &format!("{roles}\nshare_recipient = \"{recipient}\""),
    )
}

#[test]
fn custodians_have_share_recipients() {
    let (_, bob_r) = keyward_escrow::new_identity();
    let (_, carol_r) = keyward_escrow::new_identity();
    let bob_roles = r#"roles = ["security-officer", "custodian"]"#;
    let text = with_recipient(&roster(), bob_roles, &bob_r.to_uppercase());
    let p = Policy::from_str(&text, "policy.toml").unwrap();
    // Stored in canonical (lower-case) form.
    assert_eq!(
        p.administrator("bob").unwrap().share_recipient.as_deref(),
        Some(bob_r.as_str())
    );
    assert_eq!(p.administrator("alice").unwrap().share_recipient, None);
    let names = |p: &Policy| -> Vec<(String, String)> {
        p.custodians()
            .into_iter()
            .map(|c| (c.name, c.recipient))
            .collect()
    };
    assert_eq!(names(&p), [("bob".to_owned(), bob_r.clone())]);
    // A custodian without a recipient holds no share; custodians come in
    // roster order.
    let carol_custodian = text.replace(
        r#"roles = ["key-owner"]"#,
        r#"roles = ["key-owner", "custodian"]"#,
    );
    let p = Policy::from_str(&carol_custodian, "policy.toml").unwrap();
    assert_eq!(names(&p), [("bob".to_owned(), bob_r.clone())]);
    let both = with_recipient(
        &carol_custodian,
        r#"roles = ["key-owner", "custodian"]"#,
        &carol_r,
    );
    let p = Policy::from_str(&both, "policy.toml").unwrap();
    assert_eq!(
        names(&p),
        [("bob".to_owned(), bob_r), ("carol".to_owned(), carol_r)]
    );
    // Without any recipient there are no custodians to seal shares to.
    let p = Policy::from_str(&roster(), "policy.toml").unwrap();
    assert!(p.custodians().is_empty());
}

#[test]
fn error_bad_share_recipients() {
    let (identity, recipient) = keyward_escrow::new_identity();
    let bob_roles = r#"roles = ["security-officer", "custodian"]"#;
    let at_bob = "policy.toml:27:19: administrator \"bob\", share_recipient";
    assert_error(
        &with_recipient(&roster(), bob_roles, "age1notarecipient"),
        &format!("{at_bob}: \"age1notareci...\" is not a valid age X25519 recipient (invalid Bech32 encoding)"),
    );
    assert_error(
        &with_recipient(&roster(), bob_roles, "ssh-ed25519 AAAAC3"),
        &format!("{at_bob}: a share recipient is an age X25519 recipient starting with \"age1\""),
    );
    // A custodian's identity put where the recipient belongs: refused, and
    // the secret is not repeated.
    let secret = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let got = error(&with_recipient(&roster(), bob_roles, secret));
    assert!(
        got.starts_with(&format!("{at_bob}: this is an age identity")),
        "{got}"
    );
    assert!(!got.contains(&secret[15..]), "{got}");
    // Only a custodian has one.
    assert_error(
        &with_recipient(&roster(), r#"roles = ["security-officer"]"#, &recipient),
        "policy.toml:21:19: administrator \"alice\", share_recipient: only a custodian holds a share of the backup key: add the role \"custodian\" or remove share_recipient",
    );
    // Two custodians with one recipient (however it is written).
    let text = with_recipient(&roster(), bob_roles, &recipient).replace(
        r#"roles = ["key-owner"]"#,
        &format!(
            "roles = [\"key-owner\", \"custodian\"]\nshare_recipient = \"{}\"",
            recipient.to_uppercase()
        ),
    );
    assert_error(
        &text,
        "policy.toml:34:19: administrator \"carol\", share_recipient: administrator \"bob\" has this recipient already: each custodian opens their share with an identity of their own",
    );
}

#[test]
fn error_missing_or_unknown_administrator_field() {
    assert_error(
        &mutate_roster("roles = [\"key-owner\"]\n", ""),
        "policy.toml:29:1: administrator \"carol\": missing field `roles`",
    );
    assert_error(
        &mutate_roster("roles = [\"key-owner\"]", "roles = [\"key-owner\"]\nuid = 1"),
        "policy.toml:33:1: administrator \"carol\", uid: unknown field `uid`, expected one of `name`, `uids`, `roles`, `public_key`, `share_recipient`",
    );
}

#[test]
fn error_unknown_quorum_action() {
    assert_error(
        &format!("{}\n[quorum.destory]\napprovals = 2\nroles = [\"security-officer\"]\n", roster()),
        "policy.toml:41:9: quorum.destory: \"destory\" is not an action under dual control: one of destroy, resume, deactivate-suspended, leave-compromised, recovery-window, sensitive-grant, policy-apply, backup-export, backup-init, backup-restore, token-init, sign-once",
    );
}

#[test]
fn error_zero_approvals() {
    assert_error(
        &format!("{}\n[quorum.resume]\napprovals = 0\nroles = [\"key-owner\"]\n", roster()),
        "policy.toml:42:13: quorum.resume, approvals: at least one approval: leave the table out for the default",
    );
}

#[test]
fn error_bad_quorum_roles_and_lifetime() {
    assert_error(
        &format!("{}\n[quorum.resume]\napprovals = 1\nroles = [\"owner\"]\n", roster()),
        "policy.toml:43:10: quorum.resume, roles: \"owner\" is not one of security-officer, key-owner, operator, auditor, custodian",
    );
    assert_error(
        &format!("{}\n[quorum.resume]\napprovals = 1\nroles = []\n", roster()),
        "policy.toml:43:9: quorum.resume, roles: a quorum needs at least one role that approves",
    );
    assert_error(
        &format!(
            "{}\n[quorum.resume]\napprovals = 1\nroles = [\"key-owner\", \"auditor\"]\n",
            roster()
        ),
        "policy.toml:43:9: quorum.resume, roles: an auditor is read-only and approves nothing",
    );
    assert_error(
        &format!(
            "{}\n[quorum.resume]\napprovals = 1\nroles = [\"key-owner\"]\nlifetime = \"1y\"\n",
            roster()
        ),
        "policy.toml:44:12: quorum.resume, lifetime: \"1y\" is not a duration: expected a number and a unit s, m, h, d or w, like \"90d\" or \"12h\"",
    );
    assert_error(
        &format!(
            "{}\n[quorum.resume]\napprovals = 1\nroles = [\"key-owner\"]\nrequester = true\n",
            roster()
        ),
        "policy.toml:44:1: quorum.resume, requester: unknown field `requester`, expected one of `approvals`, `roles`, `requester_counts`, `lifetime`",
    );
}

#[test]
fn error_quorum_the_roster_cannot_meet_in_strict_mode() {
    // Three approvals from two security officers.
    assert_error(
        &format!(
            "{}\n[quorum.destroy]\napprovals = 3\nroles = [\"security-officer\"]\nrequester_counts = true\n",
            roster()
        ),
        "policy.toml:41:1: quorum.destroy: 3 approval(s) from security-officer need 3 administrator(s) with those roles; the roster has 2",
    );
    // Two approvals other than the requester's from two officers: if one
    // asks, one is left.
    assert_error(
        &format!(
            "{}\n[quorum.destroy]\napprovals = 2\nroles = [\"security-officer\"]\n",
            roster()
        ),
        "policy.toml:41:1: quorum.destroy: 2 approval(s) from security-officer other than the requester need 3 administrator(s) with those roles; the roster has 2",
    );
    // The default: one security officer only cannot meet destroy's two.
    assert_error(
        &mutate_roster(
            "roles = [\"security-officer\", \"custodian\"]",
            "roles = [\"custodian\"]",
        ),
        "policy.toml:17:1: quorum.destroy: the default: 2 approval(s) from security-officer need 2 administrator(s) with those roles; the roster has 1",
    );
    // The requester's approval does not count and carol is the only key
    // owner: a key-owner-only quorum cannot be met.
    assert_error(
        &format!(
            "{}\n[quorum.sensitive-grant]\napprovals = 1\nroles = [\"key-owner\"]\n",
            roster()
        ),
        "policy.toml:41:1: quorum.sensitive-grant: 1 approval(s) from key-owner other than the requester need 2 administrator(s) with those roles; the roster has 1",
    );
    // With the requester counting, carol alone meets it.
    let p = Policy::from_str(
        &format!(
            "{}\n[quorum.sensitive-grant]\napprovals = 1\nroles = [\"key-owner\"]\nrequester_counts = true\n",
            roster()
        ),
        "policy.toml",
    )
    .unwrap();
    assert_eq!(p.quorum(Approvable::SensitiveGrant).holders_needed(), 1);
}

#[test]
fn lab_mode_notes_what_strict_refuses() {
    let short = mutate_roster(
        "roles = [\"security-officer\", \"custodian\"]",
        "roles = [\"custodian\"]",
    );
    let lab = short.replace("mode = \"strict\"", "mode = \"lab\"");
    let p = Policy::from_str(&lab, "policy.toml").unwrap();
    assert!(p.dual_control());
    assert_eq!(
        p.notes,
        [
            "quorum.destroy: the default: 2 approval(s) from security-officer need 2 administrator(s) with those roles; the roster has 1",
            "quorum.policy-apply: the default: 2 approval(s) from security-officer need 2 administrator(s) with those roles; the roster has 1",
            "quorum.token-init: the default: 2 approval(s) from security-officer need 2 administrator(s) with those roles; the roster has 1",
        ]
    );
    // Lab mode without a roster: dual control off, quorum tables noted.
    let quorum_only = BASE.replace("mode = \"strict\"", "mode = \"lab\"")
        + "\n[quorum.destroy]\napprovals = 2\nroles = [\"security-officer\"]\n";
    let p = Policy::from_str(&quorum_only, "policy.toml").unwrap();
    assert!(!p.dual_control());
    assert_eq!(
        p.notes,
        ["quorum.destroy: there is no [[administrator]]: without a roster dual control is off"]
    );
}

#[test]
fn error_quorum_without_roster_in_strict_mode() {
    assert_error(
        &format!("{BASE}\n[quorum.destroy]\napprovals = 2\nroles = [\"security-officer\"]\n"),
        "policy.toml:17:1: quorum.destroy: there is no [[administrator]]: without a roster dual control is off",
    );
}

#[test]
fn reference_roster_example_parses() {
    let doc = include_str!("../../../docs/policy.md");
    let section = doc
        .split("## `[quorum.<action>]`")
        .nth(1)
        .expect("quorum section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("toml example");
    let p = Policy::from_str(&format!("{BASE}\n{example}"), "policy.md").unwrap();
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    assert_eq!(p.administrators.len(), 4);
    assert_eq!(p.administrator_for_uid(1005).unwrap().name, "dave");
    let custodians: Vec<_> = p.custodians().into_iter().map(|c| c.name).collect();
    assert_eq!(custodians, ["bob"]);
    let destroy = p.quorum(Approvable::Destroy);
    assert_eq!(destroy.holders_needed(), 3);
    assert_eq!(destroy.lifetime, Duration::from_secs(4 * 3600));
}

/// With a roster, an admin request is an administrator's, and only a role
/// that allows it may change something; reads are every role's; a uid
/// outside the roster gets nothing. Without a roster, everyone.
#[test]
fn admin_requests_follow_the_roster_and_its_roles() {
    let p = Policy::from_str(&roster(), "policy.toml").unwrap();
    let admit = |uid, name, read_only| p.admit_admin_request(uid, name, read_only);
    // alice: security officer, anything.
    assert_eq!(
        admit(1011, "key.destroy", false).unwrap().unwrap().name,
        "alice"
    );
    assert!(admit(1001, "pin.unlock", false).is_ok());
    // carol: key owner: key and grant requests, not PINs.
    assert!(admit(1003, "key.create", false).is_ok());
    assert!(admit(1003, "grant.add", false).is_ok());
    let e = admit(1003, "pin.unlock", false).unwrap_err();
    assert_eq!(e, "administrator \"carol\" (key-owner) may not pin.unlock");
    // dave: auditor: reads only.
    assert!(admit(1004, "audit.verify", true).is_ok());
    assert!(admit(1004, "key.list", true).is_ok());
    assert!(admit(1004, "key.suspend", false).is_err());
    assert!(admit(1004, "grant.add", false).is_err());
    // bob: security officer and custodian.
    assert!(admit(1002, "key.rotate", false).is_ok());
    // Not in the roster: not even a read.
    let e = admit(0, "agent.status", true).unwrap_err();
    assert_eq!(e, "uid 0 is no administrator of the policy's roster");
    // Without a roster, everyone the admin socket admits, as before.
    let open = Policy::from_str(BASE, "policy.toml").unwrap();
    assert_eq!(open.admit_admin_request(0, "key.destroy", false), Ok(None));
}

#[test]
fn roles_may_request_what_the_reference_says() {
    assert!(Role::Operator.may_request("key.rotate"));
    assert!(Role::Operator.may_request("key.suspend"));
    assert!(!Role::Operator.may_request("key.destroy"));
    assert!(!Role::Operator.may_request("grant.add"));
    assert!(Role::KeyOwner.may_request("key.revoke"));
    assert!(!Role::KeyOwner.may_request("pin.unlock"));
    assert!(!Role::Custodian.may_request("key.create"));
    assert!(!Role::Auditor.may_request("key.create"));
    assert!(Role::SecurityOfficer.may_request("pin.unlock"));
    // Certificates: the key owner's and the security officer's.
    for name in ["cert.request", "cert.self-sign", "cert.import"] {
        assert!(Role::KeyOwner.may_request(name), "{name}");
        assert!(Role::SecurityOfficer.may_request(name), "{name}");
        assert!(!Role::Operator.may_request(name), "{name}");
        assert!(!Role::Custodian.may_request(name), "{name}");
        assert!(!Role::Auditor.may_request(name), "{name}");
    }
    // Backups: operators make and drill them; custodians handle their
    // share only; the ceremony and restores are the security officer's.
    for (role, allowed) in [
        (Role::Operator, &["backup.create", "backup.verify"][..]),
        (Role::Custodian, &["backup.share", "backup.submit"][..]),
        (Role::Auditor, &[][..]),
        (
            Role::SecurityOfficer,
            &[
                "backup.init",
                "backup.create",
                "backup.restore",
                "backup.verify",
                "backup.share",
                "backup.submit",
            ][..],
        ),
    ] {
        for name in [
            "backup.init",
            "backup.create",
            "backup.restore",
            "backup.verify",
            "backup.share",
            "backup.submit",
        ] {
            assert_eq!(
                role.may_request(name),
                allowed.contains(&name),
                "{role} {name}"
            );
        }
    }
    // Deciding on requests: every role but the auditor's.
    for name in ["request.approve", "request.deny", "request.cancel"] {
        for role in Role::ALL {
            assert_eq!(
                role.may_request(name),
                role != Role::Auditor,
                "{role} {name}"
            );
        }
    }
}

#[test]
fn only_a_security_officer_may_ask_for_a_token_initialisation() {
    for role in Role::ALL {
        assert_eq!(
            role.may_request("token.init"),
            role == Role::SecurityOfficer,
            "{role}"
        );
    }
}

#[test]
fn administrator_signatures_verify_and_forgeries_do_not() {
    use ed25519_dalek::Signer as _;
    let message = b"keyward decision\0 approve";
    // Ed25519.
    let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let ed_key = AdministratorKey::parse(&format!(
        "ed25519:{}",
        hex::encode(ed.verifying_key().as_bytes())
    ))
    .unwrap();
    let sig = ed.sign(message).to_bytes();
    assert_eq!(ed_key.verify(message, &sig), Ok(()));
    assert_eq!(
        ed_key.verify(b"keyward decision\0 deny", &sig),
        Err("the ed25519 signature does not verify".to_owned())
    );
    let mut forged = sig;
    forged[5] ^= 1;
    assert!(ed_key.verify(message, &forged).is_err());
    assert_eq!(
        ed_key.verify(message, &sig[..63]),
        Err("an ed25519 signature is 64 bytes, not 63".to_owned())
    );
    // ECDSA P-256 over SHA-256, r||s.
    let p = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let point = p.verifying_key().to_encoded_point(false);
    let p_key =
        AdministratorKey::parse(&format!("p256:{}", hex::encode(point.as_bytes()))).unwrap();
    let compressed = p.verifying_key().to_encoded_point(true);
    let p_key_c =
        AdministratorKey::parse(&format!("p256:{}", hex::encode(compressed.as_bytes()))).unwrap();
    let sig: p256::ecdsa::Signature = p.sign(message);
    let sig = sig.to_bytes();
    assert_eq!(p_key.verify(message, &sig), Ok(()));
    assert_eq!(p_key_c.verify(message, &sig), Ok(()));
    assert!(p_key.verify(b"other", &sig).is_err());
    // Each key checks only its own signatures.
    assert!(ed_key.verify(message, &sig).is_err());
    let ed_sig = ed.sign(message).to_bytes();
    assert!(p_key.verify(message, &ed_sig).is_err());
    assert!(p_key.verify(message, &[0; 64]).is_err());
    assert!(p_key.verify(message, &[]).is_err());
    // A point that is not on the curve is found out when it is used.
    let mut off = point.as_bytes().to_vec();
    off[64] ^= 1;
    let off_key = AdministratorKey::parse(&format!("p256:{}", hex::encode(&off))).unwrap();
    assert_eq!(
        off_key.verify(message, &sig),
        Err("the roster's p256 key is not a point on the curve".to_owned())
    );
}

#[test]
fn error_two_administrators_with_one_key() {
    let text = roster().replace(
        "ed25519:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        ED,
    );
    let e = Policy::from_str(&text, "policy.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("administrator \"dave\", public_key: administrator \"alice\" has this key already: each administrator signs with a key of their own"),
        "{e}"
    );
    // The same P-256 point, once compressed and once not, is one key.
    let p = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let long = p.verifying_key().to_encoded_point(false);
    let short = p.verifying_key().to_encoded_point(true);
    let text = roster()
        .replace(
            P256_UNCOMPRESSED,
            &format!("p256:{}", hex::encode(long.as_bytes())),
        )
        .replace(
            P256_COMPRESSED,
            &format!("p256:{}", hex::encode(short.as_bytes())),
        );
    let e = Policy::from_str(&text, "policy.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("administrator \"bob\" has this key already"),
        "{e}"
    );
}

/// `roster()` with class "tls" asking approval of each use, `extra` added
/// to the class.
fn per_use(extra: &str) -> String {
    mutate_roster(
        "grants = [{ application = \"web\", operations = [\"sign\"] }]",
        &format!(
            "grants = [{{ application = \"web\", operations = [\"sign\"] }}]\napprove_each_use = true{extra}"
        ),
    )
}

#[test]
fn per_use_approval_of_a_class() {
    let p = Policy::from_str(&per_use(""), "policy.toml").unwrap();
    assert_eq!(p.classes[0].per_use_approval, Some(DEFAULT_APPROVAL_WAIT));
    let p = Policy::from_str(&per_use("\napproval_wait = \"2m\""), "policy.toml").unwrap();
    assert_eq!(
        p.classes[0].per_use_approval,
        Some(Duration::from_secs(120))
    );
    let p = Policy::from_str(&per_use("\napproval_wait = \"10m\""), "policy.toml").unwrap();
    assert_eq!(p.classes[0].per_use_approval, Some(MAX_APPROVAL_WAIT));
    // Off unless asked.
    let p = Policy::from_str(&roster(), "policy.toml").unwrap();
    assert_eq!(p.classes[0].per_use_approval, None);
    let off = mutate_roster(
        "grants = [{ application = \"web\", operations = [\"sign\"] }]",
        "grants = [{ application = \"web\", operations = [\"sign\"] }]\napprove_each_use = false",
    );
    let p = Policy::from_str(&off, "policy.toml").unwrap();
    assert_eq!(p.classes[0].per_use_approval, None);
    // The default quorum: one security officer or key owner; the
    // requester is an application, so every holder counts.
    let q = p.quorum(Approvable::SignOnce);
    assert_eq!(q.approvals, 1);
    assert_eq!(q.roles, [Role::SecurityOfficer, Role::KeyOwner]);
    assert!(q.requester_counts);
    assert_eq!(q.holders_needed(), 1);
    assert_eq!(Approvable::parse("sign-once"), Some(Approvable::SignOnce));
}

#[test]
fn error_per_use_approval_wait() {
    assert_error(
        &per_use("\napproval_wait = \"11m\""),
        "policy.toml:17:17: class \"tls\", approval_wait: \"11m\" is longer than 10 minutes: a signing call is not held that long",
    );
    assert_error(
        &per_use("\napproval_wait = \"0s\""),
        "policy.toml:17:17: class \"tls\", approval_wait: \"0s\" is zero: a period must be positive",
    );
    assert_error(
        &mutate_roster(
            "grants = [{ application = \"web\", operations = [\"sign\"] }]",
            "grants = [{ application = \"web\", operations = [\"sign\"] }]\napproval_wait = \"1m\"",
        ),
        "policy.toml:16:17: class \"tls\", approval_wait: approval_wait needs approve_each_use = true",
    );
}

#[test]
fn error_per_use_approval_without_signing() {
    let text = per_use("")
        .replace("purpose = \"signing\"", "purpose = \"encryption\"")
        .replace("algorithms = [\"ec:p256\"]", "algorithms = [\"aes:256\"]")
        .replace("operations = [\"sign\"]", "operations = [\"encrypt\"]");
    assert_error(
        &text,
        "policy.toml:16:20: class \"tls\", approve_each_use: the approval is of a signature: purpose encryption does not sign",
    );
}

#[test]
fn error_per_use_approval_without_roster_in_strict_mode() {
    let text = mutate(
        "grants = [{ application = \"web\", operations = [\"sign\"] }]",
        "grants = [{ application = \"web\", operations = [\"sign\"] }]\napprove_each_use = true",
    );
    assert_error(
        &text,
        "policy.toml:16:20: class \"tls\", approve_each_use: there is no [[administrator]]: nobody could approve a use",
    );
    // Lab mode: noted, and the class keeps it.
    let lab = text.replace("mode = \"strict\"", "mode = \"lab\"");
    let p = Policy::from_str(&lab, "policy.toml").unwrap();
    assert_eq!(p.classes[0].per_use_approval, Some(DEFAULT_APPROVAL_WAIT));
    assert_eq!(
        p.notes,
        ["class \"tls\", approve_each_use: without a roster one approval by any admin socket user lets a use through"]
    );
}

#[test]
fn sign_once_quorum() {
    // Carol, the only key owner, meets a key-owner-only quorum: no
    // administrator is the requester.
    let p = Policy::from_str(
        &format!(
            "{}\n[quorum.sign-once]\napprovals = 1\nroles = [\"key-owner\"]\n",
            per_use("")
        ),
        "policy.toml",
    )
    .unwrap();
    let q = p.quorum(Approvable::SignOnce);
    assert_eq!(q.roles, [Role::KeyOwner]);
    assert!(q.requester_counts);
    assert_error(
        &format!(
            "{}\n[quorum.sign-once]\napprovals = 2\nroles = [\"key-owner\"]\n",
            per_use("")
        ),
        "policy.toml:42:1: quorum.sign-once: 2 approval(s) from key-owner need 2 administrator(s) with those roles; the roster has 1",
    );
    assert_error(
        &format!(
            "{}\n[quorum.sign-once]\napprovals = 1\nroles = [\"key-owner\"]\nrequester_counts = false\n",
            per_use("")
        ),
        "policy.toml:45:20: quorum.sign-once, requester_counts: the requester of a single use is an application, not an administrator: requester_counts does not apply",
    );
    assert_error(
        &format!(
            "{}\n[quorum.sign-once]\napprovals = 1\nroles = [\"key-owner\"]\nlifetime = \"1h\"\n",
            per_use("")
        ),
        "policy.toml:45:12: quorum.sign-once, lifetime: a single use waits as long as its class's approval_wait says",
    );
}

// ---------------------------------------------------------------------------
// The standards: NIST SP 800-131A (strength) and SP 800-57 (cryptoperiods).

#[test]
fn rsa_1024_is_refused_below_112_bit_security() {
    let text = mutate(
        r#"algorithms = ["ec:p256"]"#,
        r#"algorithms = ["ec:p256", "rsa:1024"]"#,
    );
    assert_error(
        &text,
        "policy.toml:12:26: class \"tls\", algorithms: rsa:1024 is below 112-bit security (NIST SP 800-131A); mark the class legacy = true to keep it",
    );
}

#[test]
fn short_mac_keys_are_refused_and_112_bits_are_not() {
    let class = |alg: &str| {
        format!(
            "{BASE}\n[[class]]\nname = \"mac\"\npurpose = \"mac\"\nalgorithms = [\"{alg}\"]\nprotect_period = \"30d\"\nprocess_period = \"60d\"\n"
        )
    };
    for weak in ["hmac:104", "generic:64", "hmac:8"] {
        let got = error(&class(weak));
        assert!(
            got.contains(&format!(
                "class \"mac\", algorithms: {weak} is below 112-bit security"
            )),
            "{got}"
        );
    }
    for fine in ["hmac:112", "hmac:256", "generic:128", "aes:128"] {
        let policy = Policy::from_str(&class(fine), "policy.toml").unwrap();
        assert!(policy.notes.is_empty(), "{fine}: {:?}", policy.notes);
    }
}

#[test]
fn p192_and_other_weak_curves_cannot_be_written() {
    // The algorithm syntax names no curve under 256 bits, no DSA and no
    // 3DES: such a class is refused as an unknown algorithm.
    for weak in ["ec:p192", "ec:p224", "dsa:1024", "des3"] {
        let text = mutate(
            r#"algorithms = ["ec:p256"]"#,
            &format!(r#"algorithms = ["{weak}"]"#),
        );
        let got = error(&text);
        assert!(
            got.starts_with("policy.toml:12:15: class \"tls\", algorithms: "),
            "{got}"
        );
    }
}

#[test]
fn a_legacy_class_keeps_a_weak_algorithm_with_a_note() {
    let text = mutate(
        r#"algorithms = ["ec:p256"]"#,
        "algorithms = [\"rsa:1024\"]\nlegacy = true",
    );
    let policy = Policy::from_str(&text, "policy.toml").unwrap();
    assert_eq!(
        policy.notes,
        ["class \"tls\", algorithms: rsa:1024 is below 112-bit security (NIST SP 800-131A); kept because the class is marked legacy"]
    );
    assert!(policy.period_warnings.is_empty());
    // legacy = false is the default: refused.
    let text = mutate(
        r#"algorithms = ["ec:p256"]"#,
        "algorithms = [\"rsa:1024\"]\nlegacy = false",
    );
    assert!(error(&text).contains("mark the class legacy = true to keep it"));
}

#[test]
fn a_hundred_year_cryptoperiod_is_warned() {
    let text = mutate(
        "protect_period = \"90d\"\nprocess_period = \"180d\"",
        "protect_period = \"36500d\"\nprocess_period = \"36500d\"",
    );
    let policy = Policy::from_str(&text, "policy.toml").unwrap();
    assert_eq!(
        policy.period_warnings,
        ["class \"tls\", protect_period: 36500d is longer than the recommended 1095d for signing keys (NIST SP 800-57 Part 1 Rev. 5, Table 1: private signature key: 1-3 years)"]
    );
    assert_eq!(policy.notes, policy.period_warnings);
}

#[test]
fn cryptoperiods_by_purpose() {
    let class = |purpose: &str, alg: &str, protect: &str, process: &str| {
        let text = format!(
            "[settings]\nmode = \"lab\"\n\n[[class]]\nname = \"c\"\npurpose = \"{purpose}\"\nalgorithms = [\"{alg}\"]\nprotect_period = \"{protect}\"\nprocess_period = \"{process}\"\n"
        );
        Policy::from_str(&text, "policy.toml")
            .unwrap()
            .period_warnings
    };
    // At the recommendation: quiet.
    assert!(class("signing", "ec:p256", "1095d", "3650d").is_empty());
    assert!(class("encryption", "aes:256", "730d", "1825d").is_empty());
    assert!(class("wrapping", "aes:256", "730d", "1825d").is_empty());
    assert!(class("mac", "hmac:256", "730d", "1825d").is_empty());
    assert!(class("derivation", "x25519", "730d", "730d").is_empty());
    assert!(class("encryption", "rsa:3072", "730d", "730d").is_empty());
    // A day over: warned, citing the table.
    let w = class("signing", "ec:p256", "1096d", "1096d");
    assert_eq!(w.len(), 1, "{w:?}");
    let w = class("encryption", "aes:256", "731d", "731d");
    assert!(w[0].contains("protect_period: 731d is longer than the recommended 730d for encryption keys (NIST SP 800-57 Part 1 Rev. 5, Table 1: symmetric data-encryption key"), "{w:?}");
    let w = class("encryption", "aes:256", "730d", "1826d");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("process_period: 1826d is longer than the recommended 1825d"),
        "{w:?}"
    );
    let w = class("wrapping", "aes:256", "731d", "731d");
    assert!(w[0].contains("symmetric key-wrapping key"), "{w:?}");
    let w = class("mac", "hmac:256", "731d", "731d");
    assert!(w[0].contains("symmetric authentication key"), "{w:?}");
    let w = class("derivation", "ec:p256", "365d", "731d");
    assert!(
        w[0].contains(
            "process_period: 731d is longer than the recommended 730d for derivation keys"
        ),
        "{w:?}"
    );
    assert!(
        w[0].contains("private static key-agreement key: 1-2 years"),
        "{w:?}"
    );
    let w = class("wrapping", "rsa:4096", "365d", "3650d");
    assert!(w[0].contains("private key-transport key"), "{w:?}");
}

#[test]
fn a_reasonable_class_is_quiet() {
    let policy = Policy::from_str(BASE, "policy.toml").unwrap();
    assert!(policy.notes.is_empty(), "{:?}", policy.notes);
    assert!(policy.period_warnings.is_empty());
}

/// `judge_key`'s kinds and whether each refuses, for a key of class `tls`
/// under `text`.
fn judged(text: &str, purpose: Purpose, alg: &str) -> Vec<(KeyFindingKind, bool)> {
    let policy = Policy::from_str(text, "policy.toml").unwrap();
    judge_key(
        "tls",
        policy.class("tls"),
        purpose,
        Algorithm::parse(alg).unwrap(),
    )
    .into_iter()
    .map(|f| (f.kind, f.refused))
    .collect()
}

#[test]
fn a_key_its_class_still_allows_is_quiet() {
    assert!(judged(BASE, Purpose::Signing, "ec:p256").is_empty());
}

#[test]
fn a_weak_key_is_refused_once_its_class_is_no_longer_legacy() {
    let legacy = mutate(
        r#"algorithms = ["ec:p256"]"#,
        "algorithms = [\"rsa:1024\"]\nlegacy = true",
    );
    assert!(judged(&legacy, Purpose::Signing, "rsa:1024").is_empty());
    // The class moved on to rsa:2048 without legacy: the old key is
    // both weak and no longer in the class's list.
    let moved = mutate(
        r#"algorithms = ["ec:p256"]"#,
        r#"algorithms = ["rsa:2048"]"#,
    );
    assert_eq!(
        judged(&moved, Purpose::Signing, "rsa:1024"),
        [
            (KeyFindingKind::WeakAlgorithm, true),
            (KeyFindingKind::AlgorithmNotAllowed, true)
        ]
    );
    let policy = Policy::from_str(&moved, "policy.toml").unwrap();
    let f = judge_key(
        "tls",
        policy.class("tls"),
        Purpose::Signing,
        Algorithm::Rsa { min_bits: 1024 },
    );
    assert_eq!(
        f[0].detail,
        "rsa:1024 is below 112-bit security (NIST SP 800-131A) and class \"tls\" is not marked legacy"
    );
    assert_eq!(
        f[1].detail,
        "class \"tls\" no longer allows rsa:1024 (it lists rsa:2048)"
    );
}

#[test]
fn a_key_whose_class_is_gone_or_changed_purpose_is_refused() {
    let policy = Policy::from_str(BASE, "policy.toml").unwrap();
    let f = judge_key(
        "gone",
        policy.class("gone"),
        Purpose::Signing,
        Algorithm::Rsa { min_bits: 1024 },
    );
    let kinds: Vec<_> = f.iter().map(|f| (f.kind, f.refused)).collect();
    assert_eq!(
        kinds,
        [
            (KeyFindingKind::ClassMissing, true),
            (KeyFindingKind::WeakAlgorithm, true)
        ]
    );
    assert_eq!(f[0].detail, "class \"gone\" is no longer in the policy");
    // The key was made for encryption; the class now signs.
    assert_eq!(
        judged(BASE, Purpose::Encryption, "ec:p256"),
        [(KeyFindingKind::PurposeNotAllowed, true)]
    );
}

#[test]
fn a_key_of_a_class_with_a_long_cryptoperiod_is_warned_not_refused() {
    let text = mutate(
        "protect_period = \"90d\"\nprocess_period = \"180d\"",
        "protect_period = \"36500d\"\nprocess_period = \"36500d\"",
    );
    let policy = Policy::from_str(&text, "policy.toml").unwrap();
    let f = judge_key(
        "tls",
        policy.class("tls"),
        Purpose::Signing,
        Algorithm::Ec(keyward_domain::Curve::P256),
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].kind, KeyFindingKind::LongCryptoperiod);
    assert!(!f[0].refused);
    // The same words as the policy check's warning.
    assert!(
        policy.period_warnings[0].ends_with(f[0].detail.trim_start_matches("class \"tls\", ")),
        "{f:?} {:?}",
        policy.period_warnings
    );
}

#[test]
fn certificate_entries_match_remote_peers_only() {
    let fp = "AB:".repeat(31) + "AB";
    let text = format!(
        r#"
[settings]
mode = "lab"
[[application]]
name = "local"
uid = 1000
[[application]]
name = "remote-cn"
certificate_subject = "CN=web-1"
[[application]]
name = "remote-pinned"
certificate_subject = "CN=web-1"
certificate_sha256 = "{fp}"
[[application]]
name = "remote-fp"
certificate_sha256 = "{}"
"#,
        "cd".repeat(32)
    );
    let p = Policy::from_str(&text, "p").unwrap();
    let ab = "ab".repeat(32);
    let cd = "cd".repeat(32);
    let ee = "ee".repeat(32);
    let who = |subject: &str, fp: &str| {
        p.application_for_certificate(subject, fp)
            .map(|a| a.name.as_str())
    };
    // The fingerprint, normalised, is the more specific criterion.
    assert_eq!(who("CN=web-1", &ab), Some("remote-pinned"));
    assert_eq!(who("CN=web-1", &ee), Some("remote-cn"));
    assert_eq!(who("CN=other", &cd), Some("remote-fp"));
    assert_eq!(who("CN=other", &ee), None);
    // An entry that names only a uid never matches a remote peer.
    assert_eq!(who("CN=local", &ee), None);
    // Entries naming a certificate never match a local peer, whatever its
    // credentials (lab mode falls back to Lab for the agent's own user).
    assert_eq!(
        p.application_for(1000, 1000, None).map(|a| a.name.as_str()),
        Some("local")
    );
    assert_eq!(p.application_for(1001, 1001, None), None);
    assert_eq!(p.admit(1001, 1001, None, 1001), Some(Peer::Lab));
}

#[test]
fn certificate_criteria_are_checked() {
    let one = |body: &str| {
        Policy::from_str(
            &format!("[settings]\nmode = \"strict\"\n[[application]]\nname = \"a\"\n{body}\n"),
            "p",
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let mixed = one("uid = 7\ncertificate_subject = \"CN=a\"").unwrap_err();
    assert!(mixed.contains("not both"), "{mixed}");
    let bad_fp = one("certificate_sha256 = \"abc\"").unwrap_err();
    assert!(bad_fp.contains("64 hex digits"), "{bad_fp}");
    let bad_subject = one("certificate_subject = \"web-1\"").unwrap_err();
    assert!(bad_subject.contains("not a subject"), "{bad_subject}");
    assert_eq!(one("certificate_subject = \"CN=a\""), Ok(()));
    let twins = Policy::from_str(
        "[settings]\nmode = \"strict\"\n[[application]]\nname = \"a\"\ncertificate_subject = \"CN=a\"\n\
         [[application]]\nname = \"b\"\ncertificate_subject = \"CN=a\"\n",
        "p",
    )
    .unwrap_err()
    .to_string();
    assert!(twins.contains("could not tell them apart"), "{twins}");
}
