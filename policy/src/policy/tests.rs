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
fn error_unknown_field() {
    assert_error(
        &mutate("purpose = \"signing\"", "purpose = \"signing\"\npurposes = 1"),
        "policy.toml:12:1: class \"tls\", purposes: unknown field `purposes`, expected one of `name`, `description`, `purpose`, `algorithms`, `protect_period`, `process_period`, `rotation_interval`, `backup`, `scope`, `grants`",
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
    assert_eq!(p.applications.len(), 4);
    assert_eq!(p.classes.len(), 6);
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
