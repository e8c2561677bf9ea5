//! osslsigncode (Authenticode) through OpenSSL's pkcs11 engine and the
//! module, as `docs/clients/osslsigncode.md` describes it: the signer's
//! certificate read from the token (`-pkcs11cert`), the PIN from a file
//! (`-readpass`), never an argument; a key the application may only verify
//! with signs nothing and leaves no signed file.

use std::process::Command;

use keyward_tests::admin::{certificate_of, find};
use keyward_tests::clients::{
    install_clients_policy, managed_key, put_certificate, self_signed_der, GRANTED, VERIFY_ONLY,
};
use keyward_tests::p11::Ctx;
use keyward_tests::tools::{describe, output, require_pkcs11_engine, require_tool, run_ok};
use keyward_tests::{keyward_test, Env};

/// `osslsigncode sign` of a PowerShell script with the token key `name`.
fn sign(tb: &Env, name: &str) -> (Command, std::path::PathBuf) {
    let pin = tb.path("pin.txt");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pin)
            .expect("create pin.txt, readable by its owner only");
        f.write_all(tb.pin.as_bytes()).expect("write pin.txt");
    }
    let script = tb.path(&format!("{name}.ps1"));
    std::fs::write(&script, "Write-Output 'signed through keyward'\r\n").expect("write the script");
    let signed = tb.path(&format!("{name}-signed.ps1"));
    let mut c = Command::new(require_tool("osslsigncode", "osslsigncode"));
    c.arg("sign")
        .arg("-pkcs11engine")
        .arg(require_pkcs11_engine())
        .arg("-pkcs11module")
        .arg(&tb.module)
        .arg("-pkcs11cert")
        .arg(format!("pkcs11:token={};object={name};type=cert", tb.token))
        .arg("-key")
        .arg(format!(
            "pkcs11:token={};object={name};type=private",
            tb.token
        ))
        .arg("-readpass")
        .arg(&pin)
        .args(["-h", "sha256", "-in"])
        .arg(&script)
        .arg("-out")
        .arg(&signed);
    (c, signed)
}

keyward_test!(fn osslsigncode_signs_with_the_certificate_on_the_token_and_the_pin_from_a_file(tb) {
    install_clients_policy(&tb);
    managed_key(&tb, "authenticode", GRANTED, "ec:p256");
    let der = self_signed_der(&tb, "authenticode");
    put_certificate(&tb, "authenticode", &der);
    let (mut c, signed) = sign(&tb, "authenticode");
    run_ok(&mut c);
    let text = std::fs::read_to_string(&signed).expect("the signed script");
    assert!(text.contains("# SIG # Begin signature block"), "{text}");
    let pem = tb.path("authenticode.pem");
    run_ok(Command::new("openssl").args(["x509", "-inform", "DER", "-in"]).arg(tb.path("authenticode.crt.der")).arg("-out").arg(&pem));
    let out = run_ok(
        Command::new(require_tool("osslsigncode", "osslsigncode"))
            .args(["verify", "-CAfile"])
            .arg(&pem)
            .arg("-in")
            .arg(&signed),
    );
    assert!(out.contains("Signature verification: ok"), "{out}");
});

keyward_test!(fn osslsigncode_with_a_key_the_application_may_not_sign_with_writes_nothing(tb) {
    install_clients_policy(&tb);
    managed_key(&tb, "verify-only", VERIFY_ONLY, "ec:p256");
    let der = {
        let ctx = Ctx::new(&tb);
        let s = ctx.user();
        let public = find(&s, "verify-only", cryptoki::object::ObjectClass::PUBLIC_KEY);
        assert_eq!(public.len(), 1);
        certificate_of(&s, public[0])
    };
    put_certificate(&tb, "verify-only", &der);
    let (mut c, signed) = sign(&tb, "verify-only");
    let out = output(&mut c);
    let text = describe(&c, &out);
    assert!(!out.status.success(), "{text}");
    assert!(!signed.exists(), "a signed file was left: {text}");
    // libp11 reports the token's CKR_KEY_FUNCTION_NOT_PERMITTED.
    assert!(text.contains("Key function not permitted"), "{text}");
});
