use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::*;

/// Every value: its text reads back as itself, in Display, FromStr, JSON
/// (the same text) and postcard.
fn round_trips<T>(all: &[T], as_str: fn(&T) -> &'static str)
where
    T: FromStr<Err = ParseError> + Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    T: std::fmt::Display,
{
    for value in all {
        let text = as_str(value);
        assert_eq!(value.to_string(), text);
        assert_eq!(text.parse::<T>().as_ref(), Ok(value));
        let json = serde_json::to_string(value).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), value);
        let wire = postcard::to_stdvec(value).unwrap();
        assert_eq!(&postcard::from_bytes::<T>(&wire).unwrap(), value);
    }
}

#[test]
fn text_forms_round_trip() {
    round_trips(&KeyState::ALL, |s| s.as_str());
    round_trips(&Purpose::ALL, |p| p.as_str());
    round_trips(&Operation::ALL, |o| o.as_str());
    round_trips(&Curve::ALL, |c| c.as_str());
    round_trips(&ApprovalStatus::ALL, |s| s.as_str());
    round_trips(&Decision::ALL, |d| d.as_str());
}

#[test]
fn the_text_forms_are_the_stored_names() {
    let states: Vec<&str> = KeyState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        states,
        [
            "pre-activation",
            "active",
            "suspended",
            "deactivated",
            "compromised",
            "destroyed"
        ]
    );
    let purposes: Vec<&str> = Purpose::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        purposes,
        ["signing", "encryption", "wrapping", "derivation", "mac"]
    );
    let statuses: Vec<&str> = ApprovalStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "pending",
            "approved",
            "executed",
            "denied",
            "expired",
            "cancelled",
            "failed"
        ]
    );
}

#[test]
fn unknown_names_are_clear_errors() {
    let e = "Active".parse::<KeyState>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown key state \"Active\": expected one of pre-activation, active, suspended, \
         deactivated, compromised, destroyed"
    );
    assert!("".parse::<KeyState>().is_err());
    assert!("sign"
        .parse::<Purpose>()
        .unwrap_err()
        .to_string()
        .contains("unknown purpose \"sign\""));
    assert!("signing"
        .parse::<Operation>()
        .unwrap_err()
        .to_string()
        .contains("unknown operation"));
    assert!("done"
        .parse::<ApprovalStatus>()
        .unwrap_err()
        .to_string()
        .contains("pending"));
    assert!("secp256k1".parse::<Curve>().is_err());
    // In JSON the error is the same message.
    let e = serde_json::from_str::<KeyState>("\"retired\"").unwrap_err();
    assert!(
        e.to_string().contains("unknown key state \"retired\""),
        "{e}"
    );
    // On the wire, a number past the last variant.
    assert!(postcard::from_bytes::<KeyState>(&[6]).is_err());
    assert!(postcard::from_bytes::<ApprovalStatus>(&[200]).is_err());
}

#[test]
fn sizes_are_minimums() {
    let p = |t: &str| Algorithm::parse(t).unwrap();
    assert!(p("rsa:3072").covers(p("rsa:4096")));
    assert!(!p("rsa:3072").covers(p("rsa:2048")));
    assert!(p("aes:128").covers(p("aes:256")));
    assert!(!p("ec:p256").covers(p("ec:p384")));
    assert!(p("ec:p256").covers(p("ec:p256")));
    assert!(!p("aes:128").covers(p("hmac:256")));
}

#[test]
fn algorithms_round_trip() {
    for text in [
        "rsa:2048",
        "rsa:3072",
        "ec:p256",
        "ec:p384",
        "ec:p521",
        "ed25519",
        "ed448",
        "x25519",
        "x448",
        "aes:128",
        "aes:256",
        "generic:256",
        "hmac:256",
    ] {
        let alg: Algorithm = text.parse().unwrap();
        assert_eq!(alg.to_string(), text);
        let json = serde_json::to_string(&alg).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), alg);
        let wire = postcard::to_stdvec(&alg).unwrap();
        assert_eq!(postcard::from_bytes::<Algorithm>(&wire).unwrap(), alg);
    }
    for bad in [
        "rsa",
        "rsa:",
        "rsa:512",
        "rsa:3071",
        "rsa:x",
        "aes:64",
        "aes:100",
        "ec:secp256k1",
        "ec",
        "ed25520",
        "des3:168",
        "generic:0",
        "RSA:2048",
    ] {
        assert!(Algorithm::parse(bad).is_err(), "{bad} accepted");
        assert!(serde_json::from_str::<Algorithm>(&format!("\"{bad}\"")).is_err());
    }
    assert_eq!(
        "des3:168".parse::<Algorithm>().unwrap_err().to_string(),
        format!("\"des3:168\" is not an algorithm: expected one of {ALGORITHM_FORMS}")
    );
}

#[test]
fn algorithms_fit_purposes() {
    let fits = |a: &str, p| Algorithm::parse(a).unwrap().fits(p);
    assert!(fits("ec:p256", Purpose::Signing));
    assert!(fits("ed25519", Purpose::Signing));
    assert!(!fits("aes:128", Purpose::Signing));
    assert!(fits("rsa:2048", Purpose::Encryption));
    assert!(!fits("ec:p256", Purpose::Encryption));
    assert!(fits("aes:256", Purpose::Wrapping));
    assert!(!fits("hmac:256", Purpose::Wrapping));
    assert!(fits("ec:p384", Purpose::Derivation));
    assert!(fits("x25519", Purpose::Derivation));
    assert!(!fits("rsa:2048", Purpose::Derivation));
    assert!(fits("hmac:256", Purpose::Mac));
    assert!(fits("aes:128", Purpose::Mac));
    assert!(!fits("ed25519", Purpose::Mac));
}

#[test]
fn purposes_and_operations() {
    use Operation::*;
    assert!(Purpose::Signing.allows(Sign) && Purpose::Signing.allows(Verify));
    assert!(!Purpose::Signing.allows(Decrypt));
    assert!(Purpose::Mac.allows(Sign) && Purpose::Mac.allows(Digest));
    assert!(!Purpose::Wrapping.allows(Encrypt));
    assert_eq!(Purpose::Derivation.operations(), &[Derive]);
    for state in KeyState::ALL {
        assert_eq!(state.is_visible(), state != KeyState::Destroyed);
    }
}

#[test]
fn key_names_follow_the_rule() {
    for good in [
        "a",
        "Z",
        "7",
        "app-signing",
        "db_key.v2",
        "A1-b_2.c",
        &"k".repeat(64),
    ] {
        assert_eq!(check_key_name(good), Ok(()), "{good:?}");
    }
    let mut refused = vec![
        String::new(),
        "k".repeat(65),
        "-lead".to_owned(),
        "_lead".to_owned(),
        ".lead".to_owned(),
        "a/b;object=x".to_owned(),
        "é".to_owned(),
        "aé".to_owned(),
    ];
    for c in [
        ' ', '/', ';', '?', '%', '=', '&', '#', ':', ',', '"', '\'', '\\', '*', '{', '}', '\n',
        '\t', '\0', '+', '@', '!',
    ] {
        refused.push(format!("a{c}b"));
    }
    for bad in refused.iter().map(String::as_str) {
        let err = check_key_name(bad).expect_err(bad);
        assert_eq!(
            err.message(),
            format!(
                "key name {bad:?}: use letters, digits, '-', '_' and '.', 1-64 characters, \
                 starting with a letter or digit"
            )
        );
    }
    assert_eq!(
        check_key_name("a/b;x").map_err(|e| e.to_string()),
        Err(
            "key name \"a/b;x\": use letters, digits, '-', '_' and '.', 1-64 characters, \
             starting with a letter or digit"
                .to_owned()
        )
    );
}
