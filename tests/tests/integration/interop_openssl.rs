//! OpenSSL 3 with the libp11 `pkcs11` engine through the module, keys named
//! by RFC 7512 URIs: file signatures, a self-signed certificate and a TLS
//! handshake whose server key lives on the token.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyward_tests::tools::{free_port, openssl, require_tool, run_ok, uri};
use keyward_tests::{keyward_test, Env};

/// Generates a key pair on the token with pkcs11-tool through the module.
fn keygen(tb: &Env, key_type: &str, label: &str) {
    let mut c = Command::new(require_tool("pkcs11-tool", "opensc"));
    c.arg("--module").arg(&tb.module);
    c.args(["--token-label", &tb.token, "--login", "--pin", &tb.pin]);
    c.args([
        "--keypairgen",
        "--key-type",
        key_type,
        "--label",
        label,
        "--id",
        "10",
    ]);
    run_ok(&mut c);
}

fn sign_file(tb: &Env, key_type: &str, label: &str) {
    keygen(tb, key_type, label);
    let data = tb.path(&format!("{label}.txt"));
    std::fs::write(&data, b"signed by openssl through keyward\n").unwrap();
    let sig = tb.path(&format!("{label}.sig"));
    run_ok(
        openssl(tb)
            .args([
                "dgst",
                "-sha256",
                "-engine",
                "pkcs11",
                "-keyform",
                "engine",
                "-sign",
                &uri(tb, label, "private"),
                "-out",
            ])
            .arg(&sig)
            .arg(&data),
    );
    let pem = tb.path(&format!("{label}.pub.pem"));
    run_ok(
        openssl(tb)
            .args([
                "pkey",
                "-engine",
                "pkcs11",
                "-inform",
                "engine",
                "-pubin",
                "-in",
                &uri(tb, label, "public"),
                "-pubout",
                "-out",
            ])
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
    assert!(out.contains("Verified OK"), "{out}");
}

keyward_test!(fn engine_signs_file_rsa(tb) {
    sign_file(&tb, "rsa:2048", "ossl-rsa");
});

keyward_test!(fn engine_signs_file_ec(tb) {
    sign_file(&tb, "EC:prime256v1", "ossl-ec");
});

fn self_signed(tb: &Env, label: &str) -> std::path::PathBuf {
    let cert = tb.path(&format!("{label}.crt"));
    run_ok(
        openssl(tb)
            .args([
                "req",
                "-new",
                "-x509",
                "-days",
                "2",
                "-engine",
                "pkcs11",
                "-keyform",
                "engine",
                "-key",
                &uri(tb, label, "private"),
            ])
            .args(["-subj", "/CN=test", "-sha256", "-out"])
            .arg(&cert),
    );
    cert
}

keyward_test!(fn engine_self_signed_certificate(tb) {
    keygen(&tb, "rsa:2048", "ossl-cert");
    let cert = self_signed(&tb, "ossl-cert");
    let out = run_ok(Command::new("openssl").args(["verify", "-CAfile"]).arg(&cert).arg(&cert));
    assert!(out.contains(": OK"), "openssl verify of the self-signed certificate:\n{out}");
    let text = run_ok(Command::new("openssl").args(["x509", "-noout", "-subject", "-in"]).arg(&cert));
    assert!(text.contains("CN = test") || text.contains("CN=test"), "{text}");
});

keyward_test!(fn tls_handshake_with_token_key(tb) {
    keygen(&tb, "EC:prime256v1", "ossl-tls");
    let cert = self_signed(&tb, "ossl-tls");
    let port = free_port();
    let mut server = openssl(&tb)
        .args(["s_server", "-engine", "pkcs11", "-keyform", "engine", "-key", &uri(&tb, "ossl-tls", "private"), "-cert"])
        .arg(&cert)
        .args(["-accept", &format!("127.0.0.1:{port}"), "-naccept", "1", "-www"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_server");
    // Readiness: s_server prints ACCEPT once it listens (bounded wait; a
    // probe connection would use up its single accept).
    let stdout = server.stdout.take().expect("s_server stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains("ACCEPT") => break,
            Ok(_) => {}
            Err(_) => {
                if server.try_wait().expect("s_server status").is_some() || Instant::now() > deadline {
                    let _ = server.kill();
                    let out = server.wait_with_output().expect("output");
                    panic!(
                        "s_server did not start listening:\n{}\n{}",
                        reader.join().unwrap_or_default(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }
    let mut client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile"])
        .arg(&cert)
        .args(["-verify_return_error", "-servername", "test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_client");
    client.stdin.take().expect("stdin").write_all(b"GET / HTTP/1.0\r\n\r\n").ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client.try_wait().expect("s_client status").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = client.wait_with_output().expect("s_client output");
    let _ = server.kill();
    let srv = server.wait_with_output().expect("s_server output");
    let srv_out = reader.join().unwrap_or_default();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("Verify return code: 0 (ok)") && (text.contains("Cipher is") || text.contains("Protocol")),
        "TLS handshake did not complete:\n--- s_client ---\n{text}\n--- s_server ---\n{}{}",
        srv_out,
        String::from_utf8_lossy(&srv.stderr)
    );
});
