//! Java's SunPKCS11 provider through the module: `keytool -list` shows the
//! token's keys that have a certificate (put on the token with the key's
//! `CKA_ID`, as a client would), `jarsigner` signs a jar with a token key
//! (EC P-256 and RSA-2048) and `jarsigner -verify` accepts it; a key the
//! application may only verify with signs no jar. The PIN reaches keytool
//! and jarsigner through an environment variable (`-storepass:env`), never
//! an argument.

use std::path::{Path, PathBuf};
use std::process::Command;

use keyward_tests::admin::{certificate_of, find, keyward_ok};
use keyward_tests::clients::{
    install_clients_policy, managed_key, put_certificate, self_signed_der, GRANTED, VERIFY_ONLY,
};
use keyward_tests::p11::Ctx;
use keyward_tests::tools::{describe, output, require_tool, run_ok};
use keyward_tests::{keyward_test, Env};

/// The SunPKCS11 configuration of the module.
fn provider_config(tb: &Env) -> PathBuf {
    let path = tb.path("keyward-pkcs11.cfg");
    std::fs::write(
        &path,
        format!(
            "name = keyward\nlibrary = {}\nslotListIndex = 0\n",
            tb.module
        ),
    )
    .expect("write the provider configuration");
    path
}

/// `tool` (keytool, jarsigner) on the PKCS#11 key store of the module.
fn java_tool(tb: &Env, tool: &str, config: &Path) -> Command {
    let mut c = Command::new(require_tool(tool, "openjdk-17-jdk-headless"));
    c.env("KEYWARD_TEST_STOREPASS", &tb.pin)
        .args([
            "-storetype",
            "PKCS11",
            "-providerClass",
            "sun.security.pkcs11.SunPKCS11",
        ])
        .arg("-providerArg")
        .arg(config)
        .args(["-storepass:env", "KEYWARD_TEST_STOREPASS"]);
    c
}

/// A jar of one small file.
fn jar(tb: &Env, name: &str) -> PathBuf {
    let dir = tb.path(&format!("{name}-content"));
    std::fs::create_dir_all(&dir).expect("create the jar's content");
    std::fs::write(
        dir.join("hello.txt"),
        b"signed by jarsigner through keyward\n",
    )
    .expect("write hello.txt");
    let jar = tb.path(&format!("{name}.jar"));
    run_ok(
        Command::new(require_tool("jar", "openjdk-17-jdk-headless"))
            .arg("cf")
            .arg(&jar)
            .arg("-C")
            .arg(&dir)
            .arg("hello.txt"),
    );
    jar
}

fn keys_with_certificates(tb: &Env) {
    install_clients_policy(tb);
    for (name, algorithm) in [("java-ec", "ec:p256"), ("java-rsa", "rsa:2048")] {
        managed_key(tb, name, GRANTED, algorithm);
        let der = self_signed_der(tb, name);
        put_certificate(tb, name, &der);
    }
}

keyward_test!(fn keytool_lists_the_token_keys_with_their_certificates(tb) {
    keys_with_certificates(&tb);
    let config = provider_config(&tb);
    let out = run_ok(java_tool(&tb, "keytool", &config).arg("-list"));
    for name in ["java-ec", "java-rsa"] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{name}, PrivateKeyEntry"))),
            "keytool -list lacks the key entry {name}:\n{out}"
        );
    }
    assert!(out.contains("contains 2 entries"), "{out}");
});

keyward_test!(fn jarsigner_signs_a_jar_with_token_keys(tb) {
    keys_with_certificates(&tb);
    let config = provider_config(&tb);
    for name in ["java-ec", "java-rsa"] {
        let jar = jar(&tb, name);
        let out = run_ok(java_tool(&tb, "jarsigner", &config).args(["-keystore", "NONE"]).arg(&jar).arg(name));
        assert!(out.contains("jar signed"), "{out}");
        let out = run_ok(
            Command::new(require_tool("jarsigner", "openjdk-17-jdk-headless"))
                .args(["-verify", "-verbose", "-certs"])
                .arg(&jar),
        );
        assert!(out.contains("jar verified."), "jarsigner -verify of {name}:\n{out}");
        assert!(out.contains(&format!("CN={name}")), "the signer is {name}:\n{out}");
    }
});

keyward_test!(fn jarsigner_with_a_key_the_application_may_not_sign_with_fails_cleanly(tb) {
    install_clients_policy(&tb);
    managed_key(&tb, "java-verify-only", VERIFY_ONLY, "ec:p256");
    // A certificate of the key's public key (its signature cannot come from
    // the token, which signs nothing with this key for this application).
    let der = {
        let ctx = Ctx::new(&tb);
        let s = ctx.user();
        let public = find(&s, "java-verify-only", cryptoki::object::ObjectClass::PUBLIC_KEY);
        assert_eq!(public.len(), 1);
        certificate_of(&s, public[0])
    };
    put_certificate(&tb, "java-verify-only", &der);
    let config = provider_config(&tb);
    let out = run_ok(java_tool(&tb, "keytool", &config).arg("-list"));
    assert!(out.contains("java-verify-only, PrivateKeyEntry"), "{out}");
    let jar = jar(&tb, "refused");
    let mut c = java_tool(&tb, "jarsigner", &config);
    // -debug: jarsigner prints the exception's causes, where the CKR is.
    c.args(["-debug", "-keystore", "NONE"]).arg(&jar).arg("java-verify-only");
    let out = output(&mut c);
    let text = describe(&c, &out);
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("jar signed"), "{text}");
    assert!(text.contains("CKR_KEY_FUNCTION_NOT_PERMITTED"), "jarsigner names the token's refusal: {text}");
    assert!(!text.contains("SIGSEGV") && !text.contains("hs_err"), "{text}");
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--key", "java-verify-only"], 0);
    let refused = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .find(|r| r["operation"] == "sign" && r["kind"] == "refusal");
    let refused = refused.unwrap_or_else(|| panic!("no refused signature on the trail:\n{trail}"));
    let exe = refused["exe"].as_str().unwrap_or_default();
    // The JDK launcher that runs the JVM is the process keyward sees.
    assert!(exe.ends_with("/bin/jarsigner"), "jarsigner is the client: {refused}");
});
