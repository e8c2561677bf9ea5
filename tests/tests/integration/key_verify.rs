//! `keyward key verify` proves a key of every purpose works inside the HSM:
//! each purpose and algorithm the policy allows is created, activated and
//! verified, and the verification leaves no object behind on the token.

use cryptoki::object::{Attribute, ObjectHandle};
use keyward_tests::admin::{
    application_toml, backend_token, install_policy, keyward, uid, APPLICATION,
};
use keyward_tests::keyward_test;

/// One class per purpose, each allowing every algorithm the case list uses.
fn every_purpose_policy() -> String {
    let class = |name: &str, purpose: &str, algorithms: &str| {
        format!(
            "\n[[class]]\nname = \"{name}\"\npurpose = \"{purpose}\"\nalgorithms = [{algorithms}]\n\
             protect_period = \"30d\"\nprocess_period = \"60d\"\n"
        )
    };
    format!(
        "[settings]\nmode = \"strict\"\n{}{}{}{}{}{}",
        application_toml(APPLICATION, uid()),
        class("sig", "signing", "\"ec:p256\", \"rsa:2048\""),
        class("enc", "encryption", "\"aes:256\", \"rsa:2048\""),
        class("wrap", "wrapping", "\"aes:256\", \"rsa:2048\""),
        class("mac", "mac", "\"hmac:256\", \"aes:256\""),
        class("kdf", "derivation", "\"ec:p256\", \"ec:p384\""),
    )
}

/// Every object on the backend token (token objects: what a verification
/// must not add to).
fn token_objects(s: &cryptoki::session::Session) -> Vec<ObjectHandle> {
    let mut all = s
        .find_objects(&[Attribute::Token(true)])
        .expect("C_FindObjects on the backend");
    all.sort_by_key(|h| h.handle());
    all
}

keyward_test!(fn keys_of_every_purpose_verify_inside_the_hsm(tb) {
    install_policy(&tb, &every_purpose_policy());
    let cases = [
        ("sig", "ec:p256", "ECDSA"),
        ("sig", "rsa:2048", "SHA256-RSA-PKCS"),
        ("enc", "aes:256", "AES-CBC-PAD"),
        ("enc", "rsa:2048", "RSA-OAEP"),
        ("wrap", "aes:256", "AES-KWP"),
        ("wrap", "rsa:2048", "RSA-OAEP"),
        ("mac", "hmac:256", "HMAC-SHA256"),
        ("mac", "aes:256", "AES-CMAC"),
        ("kdf", "ec:p256", "ECDH"),
        ("kdf", "ec:p384", "ECDH"),
    ];
    let mut failures = Vec::new();
    for (class, algorithm, what) in cases {
        let name = format!("{class}-{}", algorithm.replace(':', "-"));
        for args in [
            vec!["key", "create", name.as_str(), "--class", class, "--algorithm", algorithm],
            vec!["key", "activate", name.as_str()],
        ] {
            let out = keyward(&tb, &args);
            assert!(
                out.status.success(),
                "keyward {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let before = {
            let (_p11, s) = backend_token(&tb);
            token_objects(&s)
        };
        let out = keyward(&tb, &["key", "verify", &name]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !text.contains(what) {
            failures.push(format!("{name} ({what}): {text}"));
            continue;
        }
        let (_p11, s) = backend_token(&tb);
        assert_eq!(token_objects(&s), before, "{name}: verification left an object on the token");
    }
    assert!(failures.is_empty(), "keys that do not verify:\n{}", failures.join("\n"));
});
