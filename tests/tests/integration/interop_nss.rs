//! NSS (the library of Firefox and Chromium) with the module added to a
//! fresh NSS database by `modutil`, as an administrator adds it: the token is
//! listed, `certutil` generates keys on it, signs certificate requests and a
//! self-signed certificate that it stores on the token and matches to its
//! key, `selfserv` serves TLS with an RSA and with an EC token key, and
//! `tstclnt` authenticates to a server that requires a client certificate
//! with a token key. The PIN reaches the tools in a file (`-f`, `-W`).

use std::path::PathBuf;
use std::process::Command;

use keyward_tests::servers::{
    pin_file, public_key_of, run_with_input, server_requiring_client_cert, text, token_public_key,
    Server,
};
use keyward_tests::tools::{free_port, require_tool, run_ok};
use keyward_tests::{keyward_test, Env};

/// A fresh NSS database in the testbed with the keyward module added.
pub struct Nss {
    /// `sql:DIR`.
    pub db: String,
    pub dir: PathBuf,
    pub pin_file: PathBuf,
    pub token: String,
    noise: PathBuf,
}

impl Nss {
    pub fn new(tb: &Env, name: &str) -> Nss {
        let dir = tb.path(name);
        std::fs::create_dir_all(&dir).expect("create the NSS database directory");
        let db = format!("sql:{}", dir.display());
        run_ok(
            Command::new(require_tool("certutil", "libnss3-tools")).args([
                "-N",
                "-d",
                &db,
                "--empty-password",
            ]),
        );
        let out = run_ok(
            Command::new(require_tool("modutil", "libnss3-tools")).args([
                "-dbdir", &db, "-add", "keyward", "-libfile", &tb.module, "-force",
            ]),
        );
        assert!(out.contains("added to database"), "modutil -add:\n{out}");
        let noise = tb.path(&format!("{name}-noise"));
        std::fs::write(&noise, [0x5a_u8; 64]).expect("write the noise file");
        Nss {
            db,
            dir,
            pin_file: pin_file(tb),
            token: tb.token.clone(),
            noise,
        }
    }

    /// `certutil -d DB -f PINFILE ...`.
    pub fn certutil(&self) -> Command {
        let mut c = Command::new(require_tool("certutil", "libnss3-tools"));
        c.args(["-d", &self.db, "-f"]).arg(&self.pin_file);
        c
    }

    /// The ids (hex `CKA_ID`) and kinds (`rsa`, `ec`) of the token's private
    /// keys, with the nickname `certutil -K` shows for each.
    pub fn keys(&self) -> Vec<(String, String, String)> {
        let mut c = self.certutil();
        c.args(["-K", "-h", &self.token]);
        let out = keyward_tests::tools::output(&mut c);
        let all = text(&out);
        if all.contains("no keys found") {
            return Vec::new();
        }
        assert!(out.status.success(), "certutil -K:\n{all}");
        all.lines()
            .filter_map(|l| {
                let rest = l.trim_start().strip_prefix('<')?;
                let (_, rest) = rest.split_once('>')?;
                let mut f = rest.split_whitespace();
                let kind = f.next()?.to_string();
                let id = f.next()?.to_string();
                let nick = f.collect::<Vec<_>>().join(" ");
                Some((id, kind, nick))
            })
            .collect()
    }

    /// Generates a key pair on the token with `certutil -G` (`-k rsa -g
    /// 2048` or `-k ec -q nistp256`); its hex id.
    pub fn generate(&self, args: &[&str]) -> String {
        let before = self.keys();
        run_ok(
            self.certutil()
                .args(["-G", "-h", &self.token])
                .args(args)
                .arg("-z")
                .arg(&self.noise),
        );
        let after = self.keys();
        let new: Vec<_> = after.iter().filter(|k| !before.contains(k)).collect();
        assert_eq!(
            new.len(),
            1,
            "certutil -K after -G {args:?}: {after:?} (before: {before:?})"
        );
        new[0].0.clone()
    }

    /// A self-signed certificate for 127.0.0.1 made by `certutil -S -x` with
    /// the token key `id`, stored on the token as `nick`; its PEM export.
    pub fn self_signed(&self, id: &str, nick: &str) -> PathBuf {
        run_ok(
            self.certutil()
                .args(["-S", "-x", "-h", &self.token, "-k", id, "-n", nick])
                .args([
                    "-s",
                    &format!("CN=127.0.0.1,O=keyward {nick}"),
                    "-t",
                    "CTu,Cu,Cu",
                    "-v",
                    "2",
                ])
                .args([
                    "--extSAN",
                    "ip:127.0.0.1",
                    "--keyUsage",
                    "digitalSignature,certSigning",
                ])
                .arg("-z")
                .arg(&self.noise),
        );
        let pem = self.dir.join(format!("{nick}.pem"));
        let out = run_ok(self.certutil().args([
            "-L",
            "-h",
            &self.token,
            "-a",
            "-n",
            &self.nickname(nick),
        ]));
        let begin = out
            .find("-----BEGIN CERTIFICATE-----")
            .unwrap_or_else(|| panic!("certutil -L -a:\n{out}"));
        std::fs::write(&pem, &out[begin..]).expect("write the certificate");
        pem
    }

    /// The full nickname of a certificate on the token.
    pub fn nickname(&self, nick: &str) -> String {
        format!("{}:{nick}", self.token)
    }
}

// The token in modutil's list, and its keys as NSS sees them.
keyward_test!(fn modutil_adds_the_module_and_certutil_lists_keys(tb) {
    let nss = Nss::new(&tb, "nssdb");
    let list = run_ok(Command::new("modutil").args(["-dbdir", &nss.db, "-list"]));
    assert!(list.contains(&format!("library name: {}", tb.module)), "modutil -list:\n{list}");
    assert!(list.contains(&format!("token: {}", tb.token)), "modutil -list:\n{list}");
    assert!(list.contains("library-manufacturer=keyward"), "modutil -list:\n{list}");
    // certutil -U lists the token among the database's tokens, by its URI.
    let tokens = run_ok(nss.certutil().arg("-U"));
    assert!(tokens.contains(&format!("token={}", tb.token)), "certutil -U:\n{tokens}");
    assert!(nss.keys().is_empty(), "a fresh token has no keys: {:?}", nss.keys());
    let rsa = nss.generate(&["-k", "rsa", "-g", "2048"]);
    let ec = nss.generate(&["-k", "ec", "-q", "nistp256"]);
    let keys = nss.keys();
    assert!(keys.iter().any(|(id, kind, _)| *id == rsa && kind == "rsa"), "{keys:?}");
    assert!(keys.iter().any(|(id, kind, _)| *id == ec && kind == "ec"), "{keys:?}");
    // The same keys, seen by another client through the module.
    assert!(!token_public_key(&tb, &rsa).is_empty());
    assert!(!token_public_key(&tb, &ec).is_empty());
});

fn request_signed_by_token_key(tb: &Env, args: &[&str]) {
    let nss = Nss::new(tb, "nssdb");
    let id = nss.generate(args);
    let csr = nss.dir.join("request.pem");
    run_ok(
        nss.certutil()
            .args([
                "-R",
                "-h",
                &nss.token,
                "-k",
                &id,
                "-s",
                "CN=nss request,O=keyward",
                "-a",
                "-o",
            ])
            .arg(&csr)
            .arg("-z")
            .arg(&nss.noise),
    );
    let out = run_ok(
        Command::new("openssl")
            .args(["req", "-verify", "-noout", "-subject", "-in"])
            .arg(&csr),
    );
    assert!(out.contains("verify OK"), "openssl req -verify:\n{out}");
    assert!(out.contains("CN = nss request"), "{out}");
    assert_eq!(
        public_key_of("req", &csr),
        token_public_key(tb, &id),
        "the request is not for the token key"
    );
}

keyward_test!(fn certutil_request_signed_by_rsa_token_key(tb) {
    request_signed_by_token_key(&tb, &["-k", "rsa", "-g", "2048"]);
});

keyward_test!(fn certutil_request_signed_by_ec_token_key(tb) {
    request_signed_by_token_key(&tb, &["-k", "ec", "-q", "nistp256"]);
});

keyward_test!(fn certutil_self_signed_certificate_on_the_token(tb) {
    let nss = Nss::new(&tb, "nssdb");
    let id = nss.generate(&["-k", "rsa", "-g", "2048"]);
    let pem = nss.self_signed(&id, "nss-web");
    // On the token, and matched to its key by NSS.
    let list = run_ok(nss.certutil().args(["-L", "-h", &nss.token]));
    assert!(list.contains(&nss.nickname("nss-web")), "certutil -L -h:\n{list}");
    let keys = nss.keys();
    assert!(
        keys.iter().any(|(kid, _, nick)| *kid == id && *nick == nss.nickname("nss-web")),
        "certutil -K does not match the certificate to its key: {keys:?}"
    );
    let out = run_ok(Command::new("openssl").args(["verify", "-CAfile"]).arg(&pem).arg(&pem));
    assert!(out.contains(": OK"), "openssl verify:\n{out}");
    assert_eq!(public_key_of("x509", &pem), token_public_key(&tb, &id));
    // Another client finds the certificate on the token under its label.
    let objects = run_ok(
        Command::new(require_tool("pkcs11-tool", "opensc"))
            .arg("--module")
            .arg(&tb.module)
            .args(["--token-label", &tb.token, "--list-objects", "--type", "cert"]),
    );
    assert!(objects.contains("nss-web"), "pkcs11-tool -O --type cert:\n{objects}");
});

/// selfserv serves TLS with the token key; openssl s_client checks the
/// chain against the certificate and gets selfserv's HTTP answer.
fn selfserv_with_token_key(tb: &Env, keygen: &[&str], cert_flag: &str) {
    let nss = Nss::new(tb, "nssdb");
    let id = nss.generate(keygen);
    let pem = nss.self_signed(&id, "nss-tls");
    let port = free_port();
    let mut server = Server::start(
        Command::new(require_tool("selfserv", "libnss3-tools"))
            .args(["-d", &nss.db, "-f"])
            .arg(&nss.pin_file)
            .args([
                "-p",
                &port.to_string(),
                cert_flag,
                &nss.nickname("nss-tls"),
                "-V",
                "tls1.2:tls1.3",
            ]),
        port,
    );
    let mut c = Command::new("openssl");
    c.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-CAfile",
    ])
    .arg(&pem)
    .args([
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
        "-ign_eof",
    ]);
    let out = run_with_input(&mut c, b"GET / HTTP/1.0\r\n\r\n");
    let log = server.stop();
    let t = text(&out);
    assert!(
        t.contains("Verify return code: 0 (ok)") && t.contains("HTTP/1.0 200 OK"),
        "TLS with the token key failed:\n--- s_client ---\n{t}\n--- selfserv ---\n{log}"
    );
    let served = public_key_of("x509", &pem);
    assert_eq!(served, token_public_key(tb, &id));
}

keyward_test!(fn selfserv_serves_tls_with_rsa_token_key(tb) {
    selfserv_with_token_key(&tb, &["-k", "rsa", "-g", "2048"], "-n");
});

keyward_test!(fn selfserv_serves_tls_with_ec_token_key(tb) {
    selfserv_with_token_key(&tb, &["-k", "ec", "-q", "nistp256"], "-e");
});

fn tstclnt_client_auth(tb: &Env, keygen: &[&str]) {
    let nss = Nss::new(tb, "nssdb");
    let id = nss.generate(keygen);
    let client_cert = nss.self_signed(&id, "nss-client");
    let (mut server, port, server_cert) = server_requiring_client_cert(tb, &client_cert);
    run_ok(
        nss.certutil()
            .args(["-A", "-n", "test-server", "-t", "P,,", "-i"])
            .arg(&server_cert),
    );
    // The request comes from a file (-A): tstclnt then exits when the
    // server has answered.
    let request = tb.path("request.txt");
    std::fs::write(&request, b"GET / HTTP/1.0\r\n\r\n").expect("write the request");
    let mut c = Command::new(require_tool("tstclnt", "libnss3-tools"));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-d",
        &nss.db,
        "-n",
        &nss.nickname("nss-client"),
        "-W",
    ])
    .arg(&nss.pin_file)
    .args(["-V", "tls1.2:tls1.3", "-A"])
    .arg(&request);
    let out = run_with_input(&mut c, b"");
    let log = server.stop();
    let t = text(&out);
    // s_server's page shows the client certificate it verified.
    assert!(
        t.contains("Client certificate") && t.contains("keyward nss-client") && t.contains("Verify return code: 0 (ok)"),
        "client authentication with the token key failed:\n--- tstclnt ---\n{t}\n--- s_server ---\n{log}"
    );
}

keyward_test!(fn tstclnt_authenticates_with_rsa_token_key(tb) {
    tstclnt_client_auth(&tb, &["-k", "rsa", "-g", "2048"]);
});

keyward_test!(fn tstclnt_authenticates_with_ec_token_key(tb) {
    tstclnt_client_auth(&tb, &["-k", "ec", "-q", "nistp256"]);
});

// A strict policy (application `tester`, `default_class` of EC P-256
// signing keys granted sign and verify): NSS's own key generation asks for
// two purposes (CKA_SIGN and CKA_DERIVE) and is refused, so the key is
// generated for signing only (pkcs11-tool --usage-sign). NSS finds a token
// certificate's key by CKA_ID, and certutil stores the certificates it makes
// under its own id (a hash of the public key), so the certificate is put on
// the token under the key's id, as a client can. selfserv then serves TLS
// with the managed key (NSS's copy of the key is refused and not needed).
keyward_test!(fn selfserv_with_strict_policy_and_managed_key(tb) {
    use keyward_tests::admin::{default_class_policy, install_policy};
    install_policy(&tb, &default_class_policy(""));
    let nss = Nss::new(&tb, "nssdb");
    let mut g = nss.certutil();
    g.args(["-G", "-h", &nss.token, "-k", "ec", "-q", "nistp256", "-z"]).arg(&nss.noise);
    let refused = keyward_tests::tools::output(&mut g);
    assert!(!refused.status.success(), "strict mode let NSS generate a key of two purposes:\n{}", text(&refused));
    let p11 = |args: &[&str]| {
        run_ok(
            Command::new(require_tool("pkcs11-tool", "opensc"))
                .arg("--module")
                .arg(&tb.module)
                .args(["--token-label", &tb.token, "--login", "--pin", &tb.pin])
                .args(args),
        )
    };
    p11(&["--keypairgen", "--key-type", "EC:prime256v1", "--usage-sign", "--label", "nss-strict", "--id", "41"]);
    // A request signed with the managed key.
    let csr = nss.dir.join("strict.csr");
    run_ok(
        nss.certutil()
            .args(["-R", "-h", &nss.token, "-k", "41", "-s", "CN=nss strict", "-a", "-o"])
            .arg(&csr)
            .arg("-z")
            .arg(&nss.noise),
    );
    let out = run_ok(Command::new("openssl").args(["req", "-verify", "-noout", "-in"]).arg(&csr));
    assert!(out.contains("verify OK"), "{out}");
    assert_eq!(public_key_of("req", &csr), token_public_key(&tb, "41"));
    // The self-signed certificate, put on the token under the key's id.
    let pem = nss.self_signed("41", "nss-strict");
    run_ok(nss.certutil().args(["-D", "-h", &nss.token, "-n", &nss.nickname("nss-strict")]));
    let der = nss.dir.join("nss-strict.der");
    run_ok(Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&pem).arg("-out").arg(&der));
    let der = der.display().to_string();
    p11(&["--write-object", &der, "--type", "cert", "--label", "nss-strict", "--id", "41"]);
    let port = free_port();
    let mut server = Server::start(
        Command::new(require_tool("selfserv", "libnss3-tools"))
            .args(["-d", &nss.db, "-f"])
            .arg(&nss.pin_file)
            .args(["-p", &port.to_string(), "-e", &nss.nickname("nss-strict"), "-V", "tls1.2:tls1.3"]),
        port,
    );
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile"])
        .arg(&pem)
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1", "-ign_eof"]);
    let out = run_with_input(&mut c, b"GET / HTTP/1.0\r\n\r\n");
    let log = server.stop();
    let t = text(&out);
    assert!(
        t.contains("Verify return code: 0 (ok)") && t.contains("HTTP/1.0 200 OK"),
        "TLS with the managed key failed:\n--- s_client ---\n{t}\n--- selfserv ---\n{log}"
    );
});

// Headless Chromium with the module in the NSS database of its user
// ($HOME/.pki/nssdb, added with modutil) loads the module and searches the
// token for client certificates when a server asks for one. The browser's
// own module trace (KEYWARD_LOG=trace: call names and return values, no
// arguments) shows it. Presenting the token's certificate needs a login to
// the token, which a headless browser without a password prompt does not
// make: see docs/clients/nss.md.
keyward_test!(fn chromium_loads_the_module_from_its_nss_database(tb) {
    let chromium = require_tool("chromium", "chromium");
    let home = tb.path("home");
    let nss = Nss::new(&tb, "home/.pki/nssdb");
    let id = nss.generate(&["-k", "ec", "-q", "nistp256"]);
    let client_cert = nss.self_signed(&id, "browser");
    let (mut server, port, _) = server_requiring_client_cert(&tb, &client_cert);
    let profile = tb.path("chromium-profile");
    let mut c = Command::new(&chromium);
    c.env("HOME", &home)
        .env("KEYWARD_LOG", "trace")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--timeout=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &format!("https://127.0.0.1:{port}/")]);
    let out = run_with_input(&mut c, b"");
    let log = server.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    let calls: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("TRACE keyward_pkcs11]"))
        .collect();
    for call in ["C_Initialize -> 0x0", "C_GetTokenInfo -> 0x0", "C_OpenSession -> 0x0", "C_FindObjectsInit -> 0x0"] {
        assert!(
            calls.iter().any(|l| l.ends_with(call)),
            "Chromium did not make {call} through the module:\n{}\n--- server ---\n{log}",
            calls.join("\n")
        );
    }
    assert!(!err.contains(&tb.pin), "the PIN shows in Chromium's output");
});
