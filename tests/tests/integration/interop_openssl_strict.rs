//! OpenSSL 3 with the libp11 `pkcs11` engine on managed keys under a strict
//! policy: RSA PKCS#1 v1.5 and PSS and ECDSA signatures, RSA-OAEP
//! decryption, CSRs and self-signed certificates, TLS 1.2 and 1.3 servers
//! with RSA and EC token keys, client authentication with a token key from
//! `openssl s_client` and from curl. Keys are made with `keyward key
//! create`; applications reach them by label, as a deployment would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_tests::admin::{application_toml, install_policy, keyward_ok, uid, APPLICATION};
use keyward_tests::tools::{free_port, openssl, require_tool, run_ok, uri};
use keyward_tests::{keyward_test, Env};

/// A strict policy: this process (and the openssl it runs) is the
/// application `tester`, granted RSA and EC signing keys, an RSA
/// encryption key and an EC derivation key.
fn policy() -> String {
    let grant = |ops: &str| {
        format!("grants = [ {{ application = \"{APPLICATION}\", operations = [{ops}] }} ]")
    };
    let class = |name: &str, purpose: &str, alg: &str, ops: &str| {
        format!(
            "\n[[class]]\nname = \"{name}\"\npurpose = \"{purpose}\"\nalgorithms = [\"{alg}\"]\n\
             protect_period = \"30d\"\nprocess_period = \"60d\"\n{}\n",
            grant(ops)
        )
    };
    format!(
        "[settings]\nmode = \"strict\"\n{}{}{}{}",
        application_toml(APPLICATION, uid()),
        class("rsa-signing", "signing", "rsa:2048", "\"sign\", \"verify\""),
        class("ec-signing", "signing", "ec:p256", "\"sign\", \"verify\""),
        class(
            "rsa-encryption",
            "encryption",
            "rsa:2048",
            "\"encrypt\", \"decrypt\""
        ),
    )
}

/// The strict policy, and managed keys `(name, class)`, active.
fn setup(tb: &Env, keys: &[(&str, &str)]) {
    tb.require_agent("managed keys");
    install_policy(tb, &policy());
    for (name, class) in keys {
        keyward_ok(tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(tb, &["key", "activate", name], 0);
    }
}

/// Key `name`'s public key, as `keyward key pubkey` prints it (PEM).
fn pubkey(tb: &Env, name: &str) -> PathBuf {
    let pem = tb.path(&format!("{name}.pub.pem"));
    if !pem.exists() {
        keyward_ok(
            tb,
            &["key", "pubkey", name, "--out", pem.to_str().unwrap()],
            0,
        );
    }
    pem
}

fn file(tb: &Env, name: &str, content: &[u8]) -> PathBuf {
    let p = tb.path(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// `openssl dgst -sha256 -sign` with the token key `name` and `extra`
/// options, verified by plain OpenSSL with the key's public key.
fn sign_and_verify(tb: &Env, name: &str, extra: &[&str]) {
    let data = file(tb, "data.txt", b"signed through keyward by openssl\n");
    let sig = tb.path(&format!("{name}.sig"));
    run_ok(
        openssl(tb)
            .args([
                "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign",
            ])
            .arg(uri(tb, name, "private"))
            .args(extra)
            .arg("-out")
            .arg(&sig)
            .arg(&data),
    );
    let out = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(pubkey(tb, name))
            .args(extra)
            .arg("-signature")
            .arg(&sig)
            .arg(&data),
    );
    assert!(out.contains("Verified OK"), "{name} {extra:?}: {out}");
}

keyward_test!(fn openssl_signs_with_managed_rsa_pkcs1_pss_and_ecdsa_keys(tb) {
    setup(&tb, &[("web-rsa", "rsa-signing"), ("web-ec", "ec-signing")]);
    sign_and_verify(&tb, "web-rsa", &[]);
    sign_and_verify(
        &tb,
        "web-rsa",
        &["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"],
    );
    sign_and_verify(&tb, "web-ec", &[]);
});

keyward_test!(fn openssl_decrypts_rsa_oaep_with_a_managed_key(tb) {
    setup(&tb, &[("vault", "rsa-encryption")]);
    let secret = file(&tb, "secret.txt", b"a data key, wrapped for the token\n");
    let wrapped = tb.path("secret.oaep");
    run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
            .arg(pubkey(&tb, "vault"))
            .args(["-pkeyopt", "rsa_padding_mode:oaep", "-in"])
            .arg(&secret)
            .arg("-out")
            .arg(&wrapped),
    );
    let back = tb.path("secret.back");
    run_ok(
        openssl(&tb)
            .args(["pkeyutl", "-decrypt", "-engine", "pkcs11", "-keyform", "engine", "-inkey"])
            .arg(uri(&tb, "vault", "private"))
            .args(["-pkeyopt", "rsa_padding_mode:oaep", "-in"])
            .arg(&wrapped)
            .arg("-out")
            .arg(&back),
    );
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&secret).unwrap());
    // The signing key may not decrypt: its purpose is signing.
    let out = openssl(&tb)
        .args(["pkeyutl", "-decrypt", "-engine", "pkcs11", "-keyform", "engine", "-inkey"])
        .arg(uri(&tb, "vault", "private"))
        .args(["-pkeyopt", "rsa_padding_mode:pkcs1", "-in"])
        .arg(&wrapped)
        .output()
        .unwrap();
    assert!(!out.status.success(), "PKCS#1 v1.5 decryption of an OAEP block must fail");
});

/// A self-signed certificate of token key `name` (`req -x509`), and a CSR
/// of it that OpenSSL verifies.
fn certificate(tb: &Env, name: &str) -> PathBuf {
    let csr = tb.path(&format!("{name}.csr"));
    run_ok(
        openssl(tb)
            .args([
                "req", "-new", "-engine", "pkcs11", "-keyform", "engine", "-key",
            ])
            .arg(uri(tb, name, "private"))
            .args(["-subj", &format!("/CN={name}"), "-sha256", "-out"])
            .arg(&csr),
    );
    let verified = run_ok(
        Command::new("openssl")
            .args(["req", "-verify", "-noout", "-in"])
            .arg(&csr),
    );
    assert!(
        verified.contains("verify OK")
            || verified.contains("Certificate request self-signature verify OK"),
        "{verified}"
    );
    let cert = tb.path(&format!("{name}.crt"));
    run_ok(
        openssl(tb)
            .args([
                "req", "-new", "-x509", "-days", "2", "-engine", "pkcs11", "-keyform", "engine",
                "-key",
            ])
            .arg(uri(tb, name, "private"))
            .args(["-subj", &format!("/CN={name}"), "-sha256", "-out"])
            .arg(&cert),
    );
    let ok = run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&cert)
            .arg(&cert),
    );
    assert!(ok.contains(": OK"), "{ok}");
    cert
}

/// An `openssl s_server` on a free port that serves one connection (`-www`)
/// with `args`; returns it once it listens, with its port and its output.
struct Server {
    child: Child,
    port: u16,
    out: std::thread::JoinHandle<String>,
}

fn serve(tb: &Env, args: &[&str], files: &[(&str, &Path)]) -> Server {
    let port = free_port();
    let mut c = openssl(tb);
    c.arg("s_server").args(args);
    for (flag, path) in files {
        c.arg(flag).arg(path);
    }
    let mut child = c
        .args([
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-naccept",
            "1",
            "-www",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_server");
    let stdout = child.stdout.take().expect("s_server stdout");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let out = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("ACCEPT") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.recv_timeout(Duration::from_millis(100)).is_err() {
        if child.try_wait().expect("s_server status").is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let err = child.wait_with_output().expect("output");
            panic!(
                "s_server {args:?} did not listen:\n{}\n{}",
                out.join().unwrap_or_default(),
                String::from_utf8_lossy(&err.stderr)
            );
        }
    }
    Server { child, port, out }
}

impl Server {
    /// Its output after it served its one connection (or was stopped).
    fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let err = self.child.wait_with_output().expect("s_server output");
        format!(
            "{}{}",
            self.out.join().unwrap_or_default(),
            String::from_utf8_lossy(&err.stderr)
        )
    }
}

/// Runs client `c` (stdin: an HTTP request) with a deadline; its output.
fn client(mut c: Command) -> (bool, String) {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("client status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("client output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `openssl s_client` to `port`, trusting `ca`, speaking `version`.
fn s_client(port: u16, ca: &Path, version: &str) -> Command {
    let mut c = Command::new("openssl");
    c.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        version,
        "-CAfile",
    ])
    .arg(ca)
    .args([
        "-verify_return_error",
        "-servername",
        "localhost",
        "-ign_eof",
    ]);
    c
}

keyward_test!(fn tls_1_2_and_1_3_servers_with_managed_rsa_and_ec_keys(tb) {
    setup(&tb, &[("srv-rsa", "rsa-signing"), ("srv-ec", "ec-signing")]);
    for (name, version) in [
        ("srv-rsa", "-tls1_2"),
        ("srv-rsa", "-tls1_3"),
        ("srv-ec", "-tls1_2"),
        ("srv-ec", "-tls1_3"),
    ] {
        let cert = certificate(&tb, name);
        let key = uri(&tb, name, "private");
        let server = serve(
            &tb,
            &["-engine", "pkcs11", "-keyform", "engine", "-key", &key, version],
            &[("-cert", &cert)],
        );
        let (_, text) = client(s_client(server.port, &cert, version));
        let srv = server.finish();
        let protocol = if version == "-tls1_3" { "TLSv1.3" } else { "TLSv1.2" };
        assert!(
            text.contains("Verify return code: 0 (ok)") && text.contains(protocol),
            "{name} {version}: the handshake did not complete:\n--- s_client ---\n{text}\n--- s_server ---\n{srv}"
        );
    }
});

keyward_test!(fn a_token_key_authenticates_the_client_to_openssl_and_to_curl(tb) {
    setup(&tb, &[("server", "ec-signing"), ("client", "ec-signing")]);
    let server_cert = certificate(&tb, "server");
    let client_cert = certificate(&tb, "client");
    let server_key = uri(&tb, "server", "private");
    let client_key = uri(&tb, "client", "private");
    // openssl s_client with the token key; the server requires a
    // certificate issued by (here: equal to) the client's.
    let server = serve(
        &tb,
        &["-engine", "pkcs11", "-keyform", "engine", "-key", &server_key, "-Verify", "1", "-verify_return_error"],
        &[("-cert", &server_cert), ("-CAfile", &client_cert)],
    );
    let mut c = openssl(&tb);
    c.args(["s_client", "-connect", &format!("127.0.0.1:{}", server.port), "-CAfile"])
        .arg(&server_cert)
        .args(["-verify_return_error", "-ign_eof", "-engine", "pkcs11", "-keyform", "engine", "-key", &client_key, "-cert"])
        .arg(&client_cert);
    let (_, text) = client(c);
    let srv = server.finish();
    assert!(
        text.contains("Verify return code: 0 (ok)")
            && (srv.contains("CN=client") || srv.contains("CN = client")),
        "client authentication with the token key failed:\n--- s_client ---\n{text}\n--- s_server ---\n{srv}"
    );
    // Without the client's key the server refuses the handshake.
    let server = serve(
        &tb,
        &["-engine", "pkcs11", "-keyform", "engine", "-key", &server_key, "-Verify", "1", "-verify_return_error"],
        &[("-cert", &server_cert), ("-CAfile", &client_cert)],
    );
    let (_, text) = client(s_client(server.port, &server_cert, "-tls1_2"));
    let srv = server.finish();
    assert!(!srv.contains("CN=client") && !srv.contains("CN = client"), "{text}\n{srv}");

    // curl (built with OpenSSL) with the token key through the engine.
    let curl = require_tool("curl", "curl");
    let server = serve(
        &tb,
        &["-engine", "pkcs11", "-keyform", "engine", "-key", &server_key, "-Verify", "1", "-verify_return_error"],
        &[("-cert", &server_cert), ("-CAfile", &client_cert)],
    );
    let mut c = Command::new(curl);
    c.env("OPENSSL_CONF", tb.path("openssl.cnf"))
        .args(["--silent", "--show-error", "--max-time", "30", "--engine", "pkcs11", "--key-type", "ENG", "--key", &client_key, "--cert"])
        .arg(&client_cert)
        .arg("--cacert")
        .arg(&server_cert)
        .args(["--resolve", &format!("server:{}:127.0.0.1", server.port)])
        .arg(format!("https://server:{}/", server.port));
    let (ok, text) = client(c);
    let srv = server.finish();
    assert!(
        ok && text.contains("s_server"),
        "curl with the token key failed:\n--- curl ---\n{text}\n--- s_server ---\n{srv}"
    );
});

keyward_test!(fn ecdh_with_a_token_key_matches_the_peers_side(tb) {
    // The lab policy: libp11 derives the shared secret into a session key
    // and reads its value, which a strict policy refuses (a derived key
    // stays sensitive and unextractable: see docs/clients/openssl.md).
    tb.require_agent("a token key");
    let mut c = Command::new(require_tool("pkcs11-tool", "opensc"));
    c.arg("--module").arg(&tb.module);
    c.args(["--token-label", &tb.token, "--login", "--pin", &tb.pin]);
    c.args(["--keypairgen", "--key-type", "EC:prime256v1", "--label", "ecdh", "--id", "20"]);
    c.args(["--usage-derive"]);
    run_ok(&mut c);
    let token_pub = tb.path("ecdh.pub.pem");
    run_ok(
        openssl(&tb)
            .args(["pkey", "-engine", "pkcs11", "-inform", "engine", "-pubin", "-in"])
            .arg(uri(&tb, "ecdh", "public"))
            .arg("-pubout")
            .arg("-out")
            .arg(&token_pub),
    );
    let peer = tb.path("peer.pem");
    run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
            .arg(&peer),
    );
    let peer_pub = tb.path("peer.pub.pem");
    run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&peer).arg("-out").arg(&peer_pub));
    let ours = tb.path("ours.bin");
    run_ok(
        openssl(&tb)
            .args(["pkeyutl", "-derive", "-engine", "pkcs11", "-keyform", "engine", "-inkey"])
            .arg(uri(&tb, "ecdh", "private"))
            .arg("-peerkey")
            .arg(&peer_pub)
            .arg("-out")
            .arg(&ours),
    );
    let theirs = tb.path("theirs.bin");
    run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-derive", "-inkey"])
            .arg(&peer)
            .arg("-peerkey")
            .arg(&token_pub)
            .arg("-out")
            .arg(&theirs),
    );
    let (a, b) = (std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
    assert_eq!(a.len(), 32);
    assert_eq!(a, b, "both sides derive the same secret");
});

keyward_test!(fn in_strict_mode_ecdh_through_the_engine_keeps_the_secret_in_the_hsm(tb) {
    tb.require_agent("managed keys");
    let policy = format!(
        "{}\n[[class]]\nname = \"agreement\"\npurpose = \"derivation\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\n\
         grants = [ {{ application = \"{APPLICATION}\", operations = [\"derive\"] }} ]\n",
        policy()
    );
    install_policy(&tb, &policy);
    keyward_ok(&tb, &["key", "create", "agree", "--class", "agreement"], 0);
    keyward_ok(&tb, &["key", "activate", "agree"], 0);
    let peer = tb.path("peer.pem");
    run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
            .arg(&peer),
    );
    let peer_pub = tb.path("peer.pub.pem");
    run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&peer).arg("-out").arg(&peer_pub));
    let ours = tb.path("ours.bin");
    let out = openssl(&tb)
        .args(["pkeyutl", "-derive", "-engine", "pkcs11", "-keyform", "engine", "-inkey"])
        .arg(uri(&tb, "agree", "private"))
        .arg("-peerkey")
        .arg(&peer_pub)
        .arg("-out")
        .arg(&ours)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the shared secret left the HSM:\n{text}");
    assert!(std::fs::read(&ours).map(|b| b.is_empty()).unwrap_or(true), "{text}");
});

keyward_test!(fn nginx_serves_tls_with_a_managed_key_from_its_workers(tb) {
    // nginx loads the key in its master process through the engine, then
    // forks its workers, which sign each handshake through the module: the
    // module's fork handling and libp11 meet here.
    let nginx = require_tool_at("/usr/sbin/nginx", "nginx-light");
    setup(&tb, &[("web", "ec-signing")]);
    let cert = certificate(&tb, "web");
    let port = free_port();
    let dir = tb.path("nginx");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {dir}/nginx.pid;\n\
             error_log {dir}/logs/error.log info;\nevents {{ worker_connections 32; }}\n\
             ssl_engine pkcs11;\n\
             http {{\n  access_log {dir}/logs/access.log;\n  client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n\
               scgi_temp_path {dir}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key \"engine:pkcs11:{key}\";\n\
                 location / {{ return 200 \"served with a token key\\n\"; }}\n  }}\n}}\n",
            dir = dir.display(),
            cert = cert.display(),
            key = uri(&tb, "web", "private"),
        ),
    )
    .unwrap();
    let mut server = Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .env("OPENSSL_CONF", tb.path("openssl.cnf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nginx");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if server.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
            let out = server.wait_with_output().unwrap();
            panic!(
                "nginx did not listen:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several handshakes, so that more than one worker signs.
    let mut answers = Vec::new();
    for version in ["-tls1_2", "-tls1_3", "-tls1_2", "-tls1_3"] {
        let (_, text) = client(s_client(port, &cert, version));
        answers.push(text);
    }
    // SIGTERM: the master stops its workers too.
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let out = server.wait_with_output().unwrap();
    let log = std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default();
    for text in &answers {
        assert!(
            text.contains("Verify return code: 0 (ok)") && text.contains("served with a token key"),
            "nginx did not serve over TLS with the token key:\n{text}\n--- nginx ---\n{}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
});

/// A program at a fixed path (sbin is not always on PATH); panics naming
/// its package when missing.
fn require_tool_at(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing: install it with `apt-get install {package}` (softhsm-config/setup does)"
    );
    p
}
