//! pkcs11-tool (OpenSC) through the module: listing, key generation,
//! signing verified with OpenSSL, and its own `--test` suite compared with
//! SoftHSM2 direct.

use std::process::Command;

use keyward_tests::harness::{softhsm_lib, softhsm_token};
use keyward_tests::tools::{output, require_tool, run_ok};
use keyward_tests::{keyward_test, Env};

fn tool(tb: &Env) -> Command {
    let mut c = Command::new(require_tool("pkcs11-tool", "opensc"));
    c.arg("--module").arg(&tb.module);
    c
}

fn login(c: &mut Command, tb: &Env) {
    c.args(["--token-label", &tb.token, "--login", "--pin", &tb.pin]);
}

keyward_test!(fn lists_slots_and_mechanisms(tb) {
    let out = run_ok(tool(&tb).arg("-L"));
    assert!(out.contains(&tb.token), "pkcs11-tool -L does not show the token {}:\n{out}", tb.token);
    let out = run_ok(tool(&tb).args(["-M", "--token-label", &tb.token]));
    for m in ["RSA-PKCS-KEY-PAIR-GEN", "SHA256-RSA-PKCS", "ECDSA", "AES-GCM"] {
        assert!(out.contains(m), "pkcs11-tool -M lacks {m}:\n{out}");
    }
    let out = run_ok(tool(&tb).args(["-I"]));
    assert!(out.contains("Cryptoki version"), "{out}");
});

fn keygen_sign_verify(tb: &Env, key_type: &str, label: &str, mech: &str, prehash: bool) {
    require_tool("openssl", "openssl");
    let mut c = tool(tb);
    login(&mut c, tb);
    c.args([
        "--keypairgen",
        "--key-type",
        key_type,
        "--label",
        label,
        "--id",
        "01",
    ]);
    run_ok(&mut c);
    let data = tb.path(&format!("{label}.txt"));
    std::fs::write(&data, b"signed by pkcs11-tool through keyward\n").unwrap();
    let input = if prehash {
        let h = tb.path(&format!("{label}.sha256"));
        run_ok(
            Command::new("openssl")
                .args(["dgst", "-sha256", "-binary", "-out"])
                .arg(&h)
                .arg(&data),
        );
        h
    } else {
        data.clone()
    };
    let sig = tb.path(&format!("{label}.sig"));
    let mut c = tool(tb);
    login(&mut c, tb);
    c.args(["-s", "-m", mech, "--label", label, "--input-file"])
        .arg(&input)
        .arg("--output-file")
        .arg(&sig);
    if prehash {
        c.args(["--signature-format", "openssl"]);
    }
    run_ok(&mut c);
    // Verify with pkcs11-tool through the module ...
    let mut c = tool(tb);
    login(&mut c, tb);
    c.args(["--verify", "-m", mech, "--label", label, "--input-file"])
        .arg(&input)
        .arg("--signature-file")
        .arg(&sig);
    if prehash {
        c.args(["--signature-format", "openssl"]);
    }
    let out = run_ok(&mut c);
    assert!(
        out.contains("Signature is valid"),
        "pkcs11-tool --verify:\n{out}"
    );
    // ... and with OpenSSL and the exported public key.
    let der = tb.path(&format!("{label}.pub.der"));
    let mut c = tool(tb);
    login(&mut c, tb);
    c.args([
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        label,
        "--output-file",
    ])
    .arg(&der);
    run_ok(&mut c);
    let pem = tb.path(&format!("{label}.pub.pem"));
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubin", "-inform", "DER", "-in"])
            .arg(&der)
            .arg("-out")
            .arg(&pem),
    );
    let out = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pem)
            .arg("-signature")
            .arg(&sig)
            .arg(&data),
    );
    assert!(out.contains("Verified OK"), "openssl dgst -verify:\n{out}");
}

keyward_test!(fn rsa_keygen_sign_verify(tb) {
    keygen_sign_verify(&tb, "rsa:2048", "p11tool-rsa", "SHA256-RSA-PKCS", false);
});

keyward_test!(fn ec_keygen_sign_verify(tb) {
    // SoftHSM2 2.6 has no CKM_ECDSA_SHA256: hash with OpenSSL, sign with
    // CKM_ECDSA, verify the DER signature with OpenSSL over the data.
    keygen_sign_verify(&tb, "EC:prime256v1", "p11tool-ec", "ECDSA", true);
});

/// Runs `pkcs11-tool --test` (with login) and returns (exit code, errors
/// counted from its output).
fn self_test(mut c: Command, tb_token: &str, pin: &str) -> (i32, usize, String) {
    c.args(["--token-label", tb_token, "--login", "--pin", pin, "--test"]);
    let out = output(&mut c);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Its summary line ("N errors") when it gets that far, else the error
    // lines it printed before giving up.
    let errors = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix("errors")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or_else(|| {
            text.lines()
                .filter(|l| l.to_lowercase().contains("error") || l.contains("failed"))
                .count()
        });
    (out.status.code().unwrap_or(-1), errors, text)
}

keyward_test!(fn self_test_no_worse_than_softhsm(tb) {
    let p11tool = require_tool("pkcs11-tool", "opensc");
    // Same keys on both sides: an RSA key pair for the signature tests.
    let mut c = tool(&tb);
    login(&mut c, &tb);
    run_ok(c.args(["--keypairgen", "--key-type", "rsa:2048", "--label", "t-rsa", "--id", "02"]));
    let dir = tb.path("reference-p11tool");
    let conf = softhsm_token(&dir, &tb.token, &tb.pin, &tb.so_pin);
    let mut r = Command::new(&p11tool);
    r.env("SOFTHSM2_CONF", &conf).arg("--module").arg(softhsm_lib());
    let mut rk = Command::new(&p11tool);
    rk.env("SOFTHSM2_CONF", &conf).arg("--module").arg(softhsm_lib());
    rk.args(["--token-label", &tb.token, "--login", "--pin", &tb.pin]);
    run_ok(rk.args(["--keypairgen", "--key-type", "rsa:2048", "--label", "t-rsa", "--id", "02"]));
    let (their_code, theirs, their_text) = self_test(r, &tb.token, &tb.pin);
    let (our_code, ours, our_text) = self_test(tool(&tb), &tb.token, &tb.pin);
    println!("SoftHSM2 direct: exit {their_code}, {theirs} errors; module: exit {our_code}, {ours} errors");
    assert!(
        ours <= theirs && (their_code != 0 || our_code == 0),
        "pkcs11-tool --test: the module has {ours} errors, SoftHSM2 direct {theirs}.\n--- module ---\n{our_text}\n--- \
         SoftHSM2 direct ---\n{their_text}"
    );
});
