//! Remote clients over mutual TLS: the real module, on `KEYWARD_AGENT=
//! tls://127.0.0.1:PORT`, reaches the testbed's agent over TCP with a
//! client certificate, and the certificate stands in for the peer
//! credentials of the Unix socket.
//!
//! The certificates are made with the `openssl` command in the testbed
//! directory: a CA, the agent's certificate for 127.0.0.1 and localhost,
//! client certificates for two remote applications, one for a name that
//! only a uid entry carries, an expired one, and one from another CA.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_tests::admin::{
    agent_start_on, application_toml, find, install_policy, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::keyward_test;
use keyward_tests::p11::{load, os_threads, Ctx};
use keyward_tests::tools::{free_port, require_tool, run_ok};

/// The certificates of one test, in `<testbed>/pki`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `openssl` in the PKI directory; panics with its output on failure.
    fn openssl(&self, args: &[&str]) {
        run_ok(Command::new("openssl").args(args).current_dir(&self.dir));
    }

    /// A self-signed CA `name` (`name.pem`, `name.key`).
    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "30",
        ]);
    }

    /// A certificate `name` (`name.pem`, `name.key` mode 0600) with subject
    /// `CN=cn`, issued by CA `ca`, valid for `days` (-1: expired
    /// yesterday), with the extensions `ext`.
    fn issue(&self, name: &str, cn: &str, ca: &str, days: &str, ext: &str) {
        let ext_file = format!("{name}.ext");
        std::fs::write(self.path(&ext_file), ext).expect("write the extensions");
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            &ext_file,
            "-out",
            &format!("{name}.pem"),
        ]);
        std::fs::set_permissions(
            self.path(&format!("{name}.key")),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod the key");
    }

    /// A client certificate.
    fn client(&self, name: &str, cn: &str, ca: &str, days: &str) {
        self.issue(
            name,
            cn,
            ca,
            days,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        );
    }

    /// The SHA-256 fingerprint of `name.pem` (as openssl prints it, with
    /// colons).
    fn sha256(&self, name: &str) -> String {
        let out = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
                .arg(self.path(&format!("{name}.pem"))),
        );
        out.trim()
            .split_once('=')
            .map(|(_, f)| f.to_owned())
            .expect("a fingerprint line")
    }
}

/// The PKI of a test: CA `ca`, the agent's certificate `agent`, clients
/// `a` (CN=app-a), `b` (CN=app-b), `uidonly` (CN=uid-only), `expired`
/// (CN=app-a, expired), and `stranger` (CN=app-a from CA `other-ca`).
fn pki(tb: &Env) -> Pki {
    require_tool("openssl", "openssl");
    let dir = tb.path("pki");
    std::fs::create_dir_all(&dir).expect("the PKI directory");
    let pki = Pki { dir };
    pki.ca("ca");
    pki.ca("other-ca");
    pki.issue(
        "agent",
        "keyward-agent",
        "ca",
        "30",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    pki.client("a", "app-a", "ca", "30");
    pki.client("b", "app-b", "ca", "30");
    pki.client("uidonly", "uid-only", "ca", "30");
    pki.client("expired", "app-a", "ca", "-1");
    pki.client("stranger", "app-a", "other-ca", "30");
    pki
}

/// The policy: this process's user locally; `remote-a` by subject,
/// `remote-b` by fingerprint; `uid-only` names a uid only. Class `key-a`
/// is granted to `remote-a`, `key-b` to `remote-b`, `local` to the local
/// application.
fn policy(pki: &Pki) -> String {
    format!(
        "[settings]\nmode = \"strict\"\n{}{}\n[[application]]\nname = \"remote-a\"\n\
         certificate_subject = \"CN=app-a\"\n\n[[application]]\nname = \"remote-b\"\n\
         certificate_sha256 = \"{}\"\n{}{}{}",
        application_toml(APPLICATION, uid()),
        application_toml("uid-only", 4_242_424),
        pki.sha256("b"),
        signing_class_toml("key-a", "30d", "60d", &sign_grant_toml("remote-a")),
        signing_class_toml("key-b", "30d", "60d", &sign_grant_toml("remote-b")),
        signing_class_toml("local", "30d", "60d", &sign_grant_toml(APPLICATION)),
    )
}

/// Certificates, policy, `[remote]` on a free port, and keys `key-a`,
/// `key-b` and `local` (active) in their classes. Returns the PKI and the
/// agent's `tls://` URL.
fn remote_testbed(tb: &Env) -> (Pki, String) {
    let pki = pki(tb);
    install_policy(tb, &policy(&pki));
    let port = free_port();
    tb.configure_agent(&format!(
        "\n[remote]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        pki.path("agent.pem").display(),
        pki.path("agent.key").display(),
        pki.path("ca.pem").display(),
    ));
    for key in ["key-a", "key-b", "local"] {
        keyward_ok(tb, &["key", "create", key, "--class", key], 0);
        keyward_ok(tb, &["key", "activate", key], 0);
    }
    (pki, format!("tls://127.0.0.1:{port}"))
}

/// The module's environment for client certificate `who`, read at the
/// next `C_Initialize`.
fn use_certificate(pki: &Pki, url: &str, who: &str) {
    std::env::set_var("KEYWARD_AGENT", url);
    std::env::set_var("KEYWARD_TLS_CERT", pki.path(&format!("{who}.pem")));
    std::env::set_var("KEYWARD_TLS_KEY", pki.path(&format!("{who}.key")));
    std::env::set_var("KEYWARD_TLS_CA", pki.path("ca.pem"));
}

/// The module's environment for the local socket again.
fn use_socket() {
    for v in [
        "KEYWARD_AGENT",
        "KEYWARD_TLS_CERT",
        "KEYWARD_TLS_KEY",
        "KEYWARD_TLS_CA",
    ] {
        std::env::remove_var(v);
    }
}

/// Runs `f` with the module initialised (and finalised after).
fn with_module<T>(tb: &Env, f: impl FnOnce(&Pkcs11) -> T) -> T {
    let (p11, _raw) = load(tb);
    p11.initialize(os_threads()).expect("C_Initialize");
    let out = f(&p11);
    p11.finalize().expect("C_Finalize");
    out
}

/// The tokens the module shows.
fn token_labels(p11: &Pkcs11) -> Vec<String> {
    p11.get_slots_with_token()
        .expect("C_GetSlotList(tokenPresent)")
        .into_iter()
        .map(|s| {
            p11.get_token_info(s)
                .expect("C_GetTokenInfo")
                .label()
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// Logs in and signs with the key labelled `label`: `Ok(())` when it
/// signed, `Err` with why not (not visible, or the signature's error).
fn sign_with(tb: &Env, p11: &Pkcs11, label: &str) -> Result<(), String> {
    let slot = p11
        .get_slots_with_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|&s| {
            p11.get_token_info(s)
                .is_ok_and(|i| i.label().trim_end() == tb.token)
        })
        .ok_or_else(|| "no token".to_owned())?;
    let s = p11.open_rw_session(slot).expect("C_OpenSession");
    match s.login(UserType::User, Some(&AuthPin::new(tb.pin.clone().into()))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    let keys = find(&s, label, ObjectClass::PRIVATE_KEY);
    let Some(&key) = keys.first() else {
        return Err(format!("{label} is not visible"));
    };
    s.sign(&Mechanism::Ecdsa, key, &[7u8; 32])
        .map(|sig| assert_eq!(sig.len(), 64, "a P-256 signature"))
        .map_err(|e| e.to_string())
}

/// A local client signs with the local key (the Unix socket is served).
fn local_signs(tb: &Env) {
    use_socket();
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    let key = find(&s, "local", ObjectClass::PRIVATE_KEY)[0];
    s.sign(&Mechanism::Ecdsa, key, &[1u8; 32])
        .expect("a local client signs");
    drop(s);
    let Ctx { p11, .. } = ctx;
    p11.finalize().expect("C_Finalize");
}

keyward_test!(fn a_remote_module_signs_with_the_key_granted_to_its_certificate(tb) {
    let (pki, url) = remote_testbed(&tb);

    // remote-a (by subject) signs with key-a, and not with key-b.
    use_certificate(&pki, &url, "a");
    with_module(&tb, |p11| {
        assert_eq!(token_labels(p11), vec![tb.token.clone()]);
        sign_with(&tb, p11, "key-a").expect("remote-a signs with key-a");
        let b = sign_with(&tb, p11, "key-b");
        assert!(b.is_err(), "remote-a used remote-b's key");
        let local = sign_with(&tb, p11, "local");
        assert!(local.is_err(), "remote-a used the local application's key");
    });
    // remote-b (by fingerprint) signs with key-b, and not with key-a.
    use_certificate(&pki, &url, "b");
    with_module(&tb, |p11| {
        sign_with(&tb, p11, "key-b").expect("remote-b signs with key-b");
        assert!(sign_with(&tb, p11, "key-a").is_err(), "remote-b used key-a");
    });

    // pkcs11-tool over TLS lists the slot and its token.
    let tool = require_tool("pkcs11-tool", "opensc");
    let listed = run_ok(
        Command::new(tool)
            .args(["--module", &tb.module, "--list-slots"])
            .env("KEYWARD_AGENT", &url)
            .env("KEYWARD_TLS_CERT", pki.path("a.pem"))
            .env("KEYWARD_TLS_KEY", pki.path("a.key"))
            .env("KEYWARD_TLS_CA", pki.path("ca.pem"))
            .env_remove("KEYWARD_SOCKET"),
    );
    assert!(listed.contains(&tb.token), "{listed}");

    // The trail names the remote peer: its address, subject and
    // fingerprint as its executable, uid and gid (uid_t)-1, pid 0.
    let records = keyward_ok(&tb, &["--json", "audit", "query", "--app", "remote-a"], 0);
    assert!(
        records.contains("tls://127.0.0.1 CN=app-a sha256:"),
        "{records}"
    );
    assert!(records.contains("4294967295"), "{records}");
    let b = keyward_ok(&tb, &["--json", "audit", "query", "--app", "remote-b"], 0);
    let fp = pki.sha256("b").replace(':', "").to_lowercase();
    assert!(b.contains(&format!("CN=app-b sha256:{fp}")), "{b}");

    // Local clients are served as before.
    local_signs(&tb);
});

keyward_test!(fn remote_peers_without_a_matching_certificate_get_no_token(tb) {
    let (pki, url) = remote_testbed(&tb);
    // Expired, from another CA, and a subject only a uid entry carries.
    for who in ["expired", "stranger", "uidonly"] {
        use_certificate(&pki, &url, who);
        let tokens = with_module(&tb, token_labels);
        assert!(tokens.is_empty(), "{who}: the module shows {tokens:?}");
    }
    // Settings the module cannot use: no token, never the local socket,
    // never a crash.
    use_certificate(&pki, &url, "a");
    std::env::set_var("KEYWARD_TLS_KEY", pki.path("nosuch.key"));
    assert!(with_module(&tb, token_labels).is_empty(), "a missing key file");
    std::env::set_var("KEYWARD_TLS_KEY", pki.path("a.pem"));
    assert!(with_module(&tb, token_labels).is_empty(), "a certificate as key");
    std::env::set_var("KEYWARD_TLS_KEY", pki.path("a.key"));
    std::env::set_var("KEYWARD_AGENT", "tcp://127.0.0.1:1");
    assert!(with_module(&tb, token_labels).is_empty(), "a bad URL");
    // An agent whose certificate another CA issued is not trusted.
    std::env::set_var("KEYWARD_AGENT", &url);
    std::env::set_var("KEYWARD_TLS_CA", pki.path("other-ca.pem"));
    assert!(with_module(&tb, token_labels).is_empty(), "an untrusted agent");
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(
        log.contains("TLS handshake failed: invalid peer certificate: Expired"),
        "{log}"
    );
    assert!(
        log.contains("no application of the policy names this client certificate"),
        "{log}"
    );
    // No client certificate at all: the handshake fails (TLS 1.3: the
    // agent's alert reaches the client at its first read).
    let port = url.rsplit_once(':').map(|(_, p)| p.to_owned()).expect("a port");
    let mut s_client = Command::new("openssl");
    s_client
        .args([
            "s_client",
            "-ign_eof",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(pki.path("ca.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = s_client.spawn().expect("openssl s_client");
    {
        let mut input = child.stdin.take().expect("stdin");
        // A Hello frame's worth of bytes inside the session, then EOF.
        let _ = input.write_all(b"KW\x01\x00\x04\x00\x00\x00ping");
    }
    let out = child.wait_with_output().expect("s_client ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("alert certificate required"),
        "s_client without a certificate: {text}"
    );
    // A refused remote peer does not stop local clients.
    local_signs(&tb);
});

keyward_test!(fn plain_tcp_and_silent_peers_do_not_stop_the_agent(tb) {
    let (pki, url) = remote_testbed(&tb);
    let addr = url.trim_start_matches("tls://").to_owned();
    // Silent peers: connected, sending nothing.
    let silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // Others are served at once meanwhile, locally and remotely.
    let started = Instant::now();
    local_signs(&tb);
    use_certificate(&pki, &url, "a");
    with_module(&tb, |p11| {
        sign_with(&tb, p11, "key-a").expect("remote-a signs beside silent peers")
    });
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "served in {:?} beside silent peers",
        started.elapsed()
    );
    // A raw keyward frame and garbage over plain TCP: no keyward answer,
    // the connection is closed.
    let mut hello = Vec::new();
    keyward_protocol::frame::encode(
        &keyward_protocol::Request::Hello {
            versions: keyward_protocol::APP_VERSIONS,
        },
        &mut hello,
    )
    .expect("encode a Hello");
    for bytes in [hello.as_slice(), b"GET / HTTP/1.1\r\n\r\n".as_slice(), &[0u8; 4096]] {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"KW"),
            "a plain-TCP peer got a keyward frame: {answer:?}"
        );
        // At most a TLS alert record (content type 21).
        assert!(
            answer.is_empty() || answer[0] == 21,
            "a plain-TCP peer got {answer:?}"
        );
    }
    // The silent peers are dropped after the handshake time.
    std::thread::sleep(Duration::from_secs(6));
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf);
        assert!(
            matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a silent peer is still connected after the handshake time"
        );
    }
    local_signs(&tb);
    // The agent stops with a remote client connected, and serves remote
    // clients again after a start.
    let held = TcpStream::connect(&addr).expect("connect");
    tb.stop_agent();
    drop(held);
    tb.start_agent();
    use_certificate(&pki, &url, "a");
    with_module(&tb, |p11| {
        sign_with(&tb, p11, "key-a").expect("remote-a signs after a restart")
    });
});

keyward_test!(fn bad_remote_settings_are_refused_with_the_file_named(tb) {
    let pki = pki(&tb);
    let config = std::fs::read_to_string(tb.path("keyward-agent.toml")).expect("the config");
    let port = free_port();
    let try_remote = |name: &str, extra: &str| -> String {
        let path = tb.path(&format!("{name}.toml"));
        // Another agent on the same sockets would clash: its own.
        let own = config
            .replace("keyward.sock", &format!("{name}.sock"))
            .replace("admin.sock", &format!("{name}-admin.sock"));
        std::fs::write(&path, format!("{own}\n[remote]\nlisten = \"127.0.0.1:{port}\"\n{extra}"))
            .expect("write the config");
        let (status, stderr) = agent_start_on(&tb, &path);
        assert!(!status.success(), "{name}: the agent started: {stderr}");
        stderr
    };
    let mut messages = Vec::new();
    let mut try_remote = |name: &str, extra: &str| -> String {
        let e = try_remote(name, extra);
        messages.push(e.clone());
        e
    };
    let files = |cert: &Path, key: &Path, ca: &Path| {
        format!(
            "certificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    };
    let (cert, key, ca) = (pki.path("agent.pem"), pki.path("agent.key"), pki.path("ca.pem"));
    // The key readable by others.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = try_remote("open-key", &files(&cert, &key, &ca));
    assert!(e.contains("agent.key") && e.contains("mode 0600 or 0400"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A missing CA file, bad PEM, an unknown field.
    let e = try_remote("no-ca", &files(&cert, &key, &pki.path("nosuch.pem")));
    assert!(e.contains("client_ca") && e.contains("nosuch.pem"), "{e}");
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        .unwrap();
    let e = try_remote("bad-pem", &files(&junk, &key, &ca));
    assert!(e.contains("certificate") && e.contains("junk.pem"), "{e}");
    let e = try_remote("unknown", &format!("{}client_ca_extra = 1\n", files(&cert, &key, &ca)));
    assert!(e.contains("client_ca_extra"), "{e}");
    // No key material in any message.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let body = key_text.lines().nth(1).expect("a key line");
    for m in &messages {
        assert!(!m.contains(body), "key material in {m}");
    }
});

keyward_test!(fn the_lab_policy_admits_no_remote_peer(tb) {
    // The testbed's lab policy serves this process's user locally; a
    // remote peer with a valid certificate still gets no token.
    let pki = pki(&tb);
    let port = free_port();
    let url = format!("tls://127.0.0.1:{port}");
    tb.configure_agent(&format!(
        "\n[remote]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        pki.path("agent.pem").display(),
        pki.path("agent.key").display(),
        pki.path("ca.pem").display(),
    ));
    use_certificate(&pki, &url, "a");
    let tokens = with_module(&tb, token_labels);
    assert!(tokens.is_empty(), "lab mode served a remote peer: {tokens:?}");
    use_socket();
    let tokens = with_module(&tb, token_labels);
    assert_eq!(tokens, vec![tb.token.clone()], "lab mode serves this user locally");
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(
        log.contains("CN=app-a sha256:") && log.contains("no application of the policy"),
        "{log}"
    );
});
