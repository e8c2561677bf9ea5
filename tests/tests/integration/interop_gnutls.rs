//! GnuTLS through the module, keys named by RFC 7512 URIs: `p11tool` lists
//! the token's keys and test-signs with them, `certtool` makes a
//! self-signed certificate and a certificate request with a token key, and
//! `gnutls-cli` authenticates with a token key to a server that requires a
//! client certificate. The PIN reaches GnuTLS in `GNUTLS_PIN` (never in a
//! URI or an argument).

use std::process::Command;

use keyward_tests::servers::{
    public_key_of, run_with_input, server_requiring_client_cert, text, token_public_key,
};
use keyward_tests::tools::{require_tool, run_ok};
use keyward_tests::{keyward_test, Env};

/// A key pair generated on the token by pkcs11-tool, labelled `label`,
/// with `CKA_ID` `id_hex`.
fn keygen(tb: &Env, key_type: &str, label: &str, id_hex: &str) {
    run_ok(
        Command::new(require_tool("pkcs11-tool", "opensc"))
            .arg("--module")
            .arg(&tb.module)
            .args(["--token-label", &tb.token, "--login", "--pin", &tb.pin])
            .args([
                "--keypairgen",
                "--key-type",
                key_type,
                "--label",
                label,
                "--id",
                id_hex,
            ]),
    );
}

/// The URI of object `label` of type `kind` (no PIN in it).
fn uri(tb: &Env, label: &str, kind: &str) -> String {
    format!("pkcs11:token={};object={label};type={kind}", tb.token)
}

/// A GnuTLS tool with the module as its provider and the PIN in its
/// environment.
fn gnutls(tb: &Env, tool: &str) -> Command {
    let mut c = Command::new(require_tool(tool, "gnutls-bin"));
    c.env("GNUTLS_PIN", &tb.pin)
        .arg(format!("--provider={}", tb.module));
    c
}

keyward_test!(fn p11tool_lists_the_token_keys(tb) {
    keygen(&tb, "rsa:2048", "gt-rsa", "31");
    keygen(&tb, "EC:prime256v1", "gt-ec", "32");
    let all = run_ok(gnutls(&tb, "p11tool").arg("--list-all"));
    for label in ["gt-rsa", "gt-ec"] {
        assert!(all.contains(&format!("object={label};type=public")), "p11tool --list-all lacks {label}:\n{all}");
    }
    assert!(all.contains("Public key (RSA-2048)") && all.contains("Public key (EC/ECDSA-SECP256R1)"), "{all}");
    let private = run_ok(gnutls(&tb, "p11tool").args(["--list-privkeys", "--login"]));
    for label in ["gt-rsa", "gt-ec"] {
        assert!(private.contains(&format!("object={label};type=private")), "p11tool --list-privkeys lacks {label}:\n{private}");
    }
    assert!(private.contains("CKA_SENSITIVE"), "{private}");
});

fn test_sign(tb: &Env, key_type: &str, label: &str, id: &str) {
    keygen(tb, key_type, label, id);
    let out =
        run_ok(gnutls(tb, "p11tool").args(["--test-sign", "--login", &uri(tb, label, "private")]));
    assert!(
        out.contains("Verifying against private key parameters... ok")
            && out.contains("Verifying against public key in the token... ok"),
        "p11tool --test-sign:\n{out}"
    );
}

keyward_test!(fn p11tool_test_sign_rsa(tb) {
    test_sign(&tb, "rsa:2048", "gt-rsa", "33");
});

keyward_test!(fn p11tool_test_sign_ec(tb) {
    test_sign(&tb, "EC:prime256v1", "gt-ec", "34");
});

/// A certtool template for a self-signed certificate usable by a TLS client
/// and server on 127.0.0.1.
fn template(tb: &Env, cn: &str) -> std::path::PathBuf {
    let path = tb.path(&format!("{cn}.tmpl"));
    std::fs::write(
        &path,
        format!(
            "cn = \"{cn}\"\norganization = \"keyward\"\nserial = 7\nexpiration_days = 2\nca\ntls_www_client\n\
             tls_www_server\nsigning_key\ncert_signing_key\nip_address = \"127.0.0.1\"\n"
        ),
    )
    .expect("write the certtool template");
    path
}

/// `certtool --generate-self-signed` with the token key `label`; the PEM.
fn self_signed(tb: &Env, label: &str) -> std::path::PathBuf {
    let cert = tb.path(&format!("{label}.pem"));
    run_ok(
        gnutls(tb, "certtool")
            .args([
                "--generate-self-signed",
                "--load-privkey",
                &uri(tb, label, "private"),
            ])
            .args(["--load-pubkey", &uri(tb, label, "public"), "--template"])
            .arg(template(tb, label))
            .arg("--outfile")
            .arg(&cert),
    );
    cert
}

fn certtool_with_token_key(tb: &Env, key_type: &str, label: &str, id: &str) {
    keygen(tb, key_type, label, id);
    let cert = self_signed(tb, label);
    let out = run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&cert)
            .arg(&cert),
    );
    assert!(out.contains(": OK"), "openssl verify:\n{out}");
    assert_eq!(
        public_key_of("x509", &cert),
        token_public_key(tb, id),
        "the certificate is not for the token key"
    );
    let csr = tb.path(&format!("{label}.csr"));
    run_ok(
        gnutls(tb, "certtool")
            .args([
                "--generate-request",
                "--load-privkey",
                &uri(tb, label, "private"),
                "--template",
            ])
            .arg(template(tb, label))
            .arg("--outfile")
            .arg(&csr),
    );
    let out = run_ok(
        Command::new("openssl")
            .args(["req", "-verify", "-noout", "-subject", "-in"])
            .arg(&csr),
    );
    assert!(
        out.contains("verify OK") && out.contains(label),
        "openssl req -verify:\n{out}"
    );
    assert_eq!(
        public_key_of("req", &csr),
        token_public_key(tb, id),
        "the request is not for the token key"
    );
}

keyward_test!(fn certtool_self_signed_and_request_rsa(tb) {
    certtool_with_token_key(&tb, "rsa:2048", "gt-rsa", "35");
});

keyward_test!(fn certtool_self_signed_and_request_ec(tb) {
    certtool_with_token_key(&tb, "EC:prime256v1", "gt-ec", "36");
});

fn gnutls_cli_client_auth(tb: &Env, key_type: &str, label: &str, id: &str) {
    keygen(tb, key_type, label, id);
    client_auth_with(tb, label);
}

/// gnutls-cli presents the self-signed certificate of the token key
/// `label` to `openssl s_server -Verify 1`, whose page names it.
fn client_auth_with(tb: &Env, label: &str) {
    let client_cert = self_signed(tb, label);
    let (mut server, port, server_cert) = server_requiring_client_cert(tb, &client_cert);
    let mut c = gnutls(tb, "gnutls-cli");
    c.arg("--x509cafile")
        .arg(&server_cert)
        .args([
            "--x509keyfile",
            &uri(tb, label, "private"),
            "--x509certfile",
        ])
        .arg(&client_cert)
        .args(["-p", &port.to_string(), "127.0.0.1"]);
    let out = run_with_input(&mut c, b"GET / HTTP/1.0\r\n\r\n");
    let log = server.stop();
    let t = text(&out);
    assert!(
        t.contains("Handshake was completed")
            && t.contains("Client certificate")
            && t.contains(&format!("CN={label}"))
            && t.contains("Verify return code: 0 (ok)"),
        "client authentication with the token key failed:\n--- gnutls-cli ---\n{t}\n--- s_server ---\n{log}"
    );
}

keyward_test!(fn gnutls_cli_authenticates_with_rsa_token_key(tb) {
    gnutls_cli_client_auth(&tb, "rsa:2048", "gt-rsa", "37");
});

keyward_test!(fn gnutls_cli_authenticates_with_ec_token_key(tb) {
    gnutls_cli_client_auth(&tb, "EC:prime256v1", "gt-ec", "38");
});

// A strict policy (application `tester`, `default_class` of EC P-256
// signing keys granted sign and verify): the key is generated for signing
// only, and certtool and gnutls-cli use the managed key.
keyward_test!(fn gnutls_with_strict_policy_and_managed_key(tb) {
    use keyward_tests::admin::{default_class_policy, install_policy};
    install_policy(&tb, &default_class_policy(""));
    run_ok(
        Command::new(require_tool("pkcs11-tool", "opensc"))
            .arg("--module")
            .arg(&tb.module)
            .args(["--token-label", &tb.token, "--login", "--pin", &tb.pin])
            .args(["--keypairgen", "--key-type", "EC:prime256v1", "--usage-sign", "--label", "gt-strict", "--id", "39"]),
    );
    let out = run_ok(gnutls(&tb, "p11tool").args(["--test-sign", "--login", &uri(&tb, "gt-strict", "private")]));
    assert!(out.contains("Verifying against public key in the token... ok"), "p11tool --test-sign:\n{out}");
    client_auth_with(&tb, "gt-strict");
});
