//! OpenSSH through the module: `ssh-keygen -D` lists the token's public
//! keys, an `sshd` of the test's own accepts `ssh -I MODULE` logins with a
//! token key (EC P-256 and RSA-2048), `ssh-add -s` loads the keys into an
//! `ssh-agent` of the test's own, through which a login works too, and a
//! key the application may not sign with (or not see) logs nobody in.
//! The PIN reaches ssh and ssh-add through `SSH_ASKPASS`, never through an
//! argument.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_tests::admin::keyward_ok;
use keyward_tests::clients::{install_clients_policy, managed_key, GRANTED, HIDDEN, VERIFY_ONLY};
use keyward_tests::tools::{describe, output, require_tool, run_ok};
use keyward_tests::{keyward_test, Env};

/// An `sshd` of the test's own on 127.0.0.1, killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
    authorized: PathBuf,
    log: PathBuf,
}

impl Sshd {
    fn start(tb: &Env) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.is_file(),
            "sshd is missing: install it with `apt-get install openssh-server` (softhsm-config/setup does)"
        );
        // The privilege separation directory sshd insists on.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let host_key = tb.path("ssh_host_ed25519_key");
        run_ok(
            Command::new(require_tool("ssh-keygen", "openssh-client"))
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
        let authorized = tb.path("authorized_keys");
        std::fs::write(&authorized, "").expect("write authorized_keys");
        let port = keyward_tests::tools::free_port();
        let config = tb.path("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AuthenticationMethods publickey\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized.display(),
                tb.path("sshd.pid").display()
            ),
        )
        .expect("write sshd_config");
        run_ok(Command::new(sshd).arg("-t").arg("-f").arg(&config));
        let log = tb.path("sshd.log");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create sshd.log"))
            .spawn()
            .expect("start sshd");
        let mut me = Sshd {
            child,
            port,
            authorized,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("sshd exited with {status}:\n{}", me.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "sshd does not listen on {port}:\n{}",
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    fn authorize(&self, keys: &str) {
        std::fs::write(&self.authorized, keys).expect("write authorized_keys");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The askpass program: prints the PIN it finds in its environment, so the
/// PIN is in no argument and no file.
fn askpass(tb: &Env) -> PathBuf {
    let path = tb.path("askpass.sh");
    if !path.exists() {
        std::fs::write(
            &path,
            "#!/bin/sh\nprintf '%s\\n' \"$KEYWARD_TEST_ASKPASS_PIN\"\n",
        )
        .expect("write askpass.sh");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .expect("chmod askpass.sh");
    }
    path
}

/// `cmd` asks for the PIN through the askpass program, never a terminal.
fn with_askpass(cmd: &mut Command, tb: &Env) {
    cmd.env("SSH_ASKPASS", askpass(tb))
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env("KEYWARD_TEST_ASKPASS_PIN", &tb.pin);
}

/// The login name of this process's user.
fn user() -> String {
    run_ok(Command::new("id").arg("-un")).trim().to_owned()
}

/// `ssh ... USER@127.0.0.1 true` against `sshd`, without any key or
/// configuration of the user's own; `extra` chooses the keys.
fn ssh(tb: &Env, sshd: &Sshd, extra: &[&str]) -> Command {
    let mut c = Command::new(require_tool("ssh", "openssh-client"));
    // ssh takes the first value of an option: `extra` comes first.
    c.args(extra)
        .args(["-v", "-F", "/dev/null", "-p", &sshd.port.to_string()])
        .args(["-o", "BatchMode=no", "-o", "StrictHostKeyChecking=no"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            tb.path("known_hosts").display()
        ))
        .args([
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "ConnectTimeout=20",
        ])
        .arg(format!("{}@127.0.0.1", user()))
        .arg("true");
    with_askpass(&mut c, tb);
    c
}

/// `ssh-keygen -D MODULE`: the token's public keys in authorized_keys form.
fn token_public_keys(tb: &Env) -> Vec<String> {
    let out = run_ok(
        Command::new(require_tool("ssh-keygen", "openssh-client"))
            .arg("-D")
            .arg(&tb.module),
    );
    out.lines()
        .filter(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-"))
        .map(str::to_owned)
        .collect()
}

/// The authorized_keys line of the managed key `name`, from its public key
/// as the administrator exports it (no client involved).
fn authorized_line(tb: &Env, name: &str) -> String {
    let pem = tb.path(&format!("{name}.pub.pem"));
    if !pem.exists() {
        keyward_ok(
            tb,
            &["key", "pubkey", name, "--out", &pem.display().to_string()],
            0,
        );
    }
    let line = run_ok(
        Command::new(require_tool("ssh-keygen", "openssh-client"))
            .args(["-i", "-m", "PKCS8", "-f"])
            .arg(&pem),
    );
    line.lines()
        .find(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-"))
        .unwrap_or_else(|| panic!("ssh-keygen -i of {name}'s public key:\n{line}"))
        .to_owned()
}

/// The key type and base64 blob of an authorized_keys line (no comment).
fn blob(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn keys(tb: &Env) {
    install_clients_policy(tb);
    managed_key(tb, "ssh-ec", GRANTED, "ec:p256");
    managed_key(tb, "ssh-rsa", GRANTED, "rsa:2048");
    managed_key(tb, "ssh-verify-only", VERIFY_ONLY, "ec:p256");
    managed_key(tb, "ssh-hidden", HIDDEN, "ec:p256");
}

keyward_test!(fn ssh_keygen_lists_the_granted_public_keys(tb) {
    keys(&tb);
    let listed: Vec<String> = token_public_keys(&tb).iter().map(|l| blob(l)).collect();
    for name in ["ssh-ec", "ssh-rsa", "ssh-verify-only"] {
        let line = blob(&authorized_line(&tb, name));
        assert!(listed.contains(&line), "ssh-keygen -D lacks {name} ({line}):\n{listed:#?}");
    }
    assert!(listed.iter().any(|l| l.starts_with("ecdsa-sha2-nistp256 ")), "{listed:#?}");
    assert!(listed.iter().any(|l| l.starts_with("ssh-rsa ")), "{listed:#?}");
    let hidden = blob(&authorized_line(&tb, "ssh-hidden"));
    assert!(!listed.contains(&hidden), "a key without a grant is listed:\n{listed:#?}");
    assert_eq!(listed.len(), 3, "{listed:#?}");
});

keyward_test!(fn ssh_logs_in_with_token_keys_through_the_module(tb) {
    keys(&tb);
    let sshd = Sshd::start(&tb);
    for name in ["ssh-ec", "ssh-rsa"] {
        sshd.authorize(&format!("{}\n", authorized_line(&tb, name)));
        let mut c = ssh(&tb, &sshd, &["-I", &tb.module, "-o", "IdentityAgent=none"]);
        let out = output(&mut c);
        assert!(out.status.success(), "login with {name}: {}\n--- sshd ---\n{}", describe(&c, &out), sshd.log_text());
    }
    let log = sshd.log_text();
    assert!(log.contains("Accepted publickey") && log.contains("ECDSA"), "{log}");
    assert!(log.contains("RSA SHA256:"), "{log}");
});

keyward_test!(fn a_key_the_application_may_not_sign_with_logs_nobody_in(tb) {
    keys(&tb);
    let sshd = Sshd::start(&tb);
    // Visible (a verify grant) and authorized: sshd accepts the offer, the
    // token refuses the signature, ssh gets no session.
    sshd.authorize(&format!("{}\n", authorized_line(&tb, "ssh-verify-only")));
    let mut c = ssh(&tb, &sshd, &["-I", &tb.module, "-o", "IdentityAgent=none"]);
    let out = output(&mut c);
    assert!(!out.status.success(), "a verify-only key logged in: {}", describe(&c, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Server accepts key: ssh-verify-only"), "sshd accepted the offer: {}", describe(&c, &out));
    assert!(stderr.contains("Permission denied"), "{}", describe(&c, &out));
    assert!(!sshd.log_text().contains("Accepted publickey"), "{}", sshd.log_text());
    // Not granted at all: ssh never sees it, whatever authorized_keys says.
    sshd.authorize(&format!("{}\n", authorized_line(&tb, "ssh-hidden")));
    let mut c = ssh(&tb, &sshd, &["-I", &tb.module, "-o", "IdentityAgent=none"]);
    let out = output(&mut c);
    assert!(!out.status.success(), "a key without a grant logged in: {}", describe(&c, &out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Offering public key: ssh-hidden"), "{}", describe(&c, &out));
    assert!(!sshd.log_text().contains("Accepted publickey"), "{}", sshd.log_text());
    // The refusals are on keyward's trail of the verify-only key.
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--key", "ssh-verify-only"], 0);
    let refused = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .find(|r| r["operation"] == "sign" && r["result"].as_str().is_some_and(|rv| rv != "CKR_OK"));
    let refused = refused.unwrap_or_else(|| panic!("no refused signature on the trail:\n{trail}"));
    // CKR_KEY_FUNCTION_NOT_PERMITTED, to ssh itself (it loads the module).
    assert_eq!(refused["result"], "CKR_KEY_FUNCTION_NOT_PERMITTED", "{refused}");
    assert_eq!(refused["kind"], "refusal", "{refused}");
    assert_eq!(refused["exe"], "/usr/bin/ssh", "{refused}");
});

/// An `ssh-agent` of the test's own, killed when dropped.
struct SshAgent {
    child: Child,
    socket: PathBuf,
}

impl SshAgent {
    fn start(tb: &Env) -> SshAgent {
        let socket = tb.path("ssh-agent.sock");
        // -D: in the foreground; -P: the module is outside ssh-agent's
        // default allow-list of provider paths (/usr/lib*/*).
        let child = Command::new(require_tool("ssh-agent", "openssh-client"))
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .arg("-P")
            .arg(&tb.module)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        SshAgent { child, socket }
    }

    fn add(&self, tb: &Env, args: &[&str]) -> Command {
        let mut c = Command::new(require_tool("ssh-add", "openssh-client"));
        c.env("SSH_AUTH_SOCK", &self.socket).args(args);
        with_askpass(&mut c, tb);
        c
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

keyward_test!(fn ssh_add_loads_token_keys_into_ssh_agent_for_a_login(tb) {
    keys(&tb);
    let agent = SshAgent::start(&tb);
    let out = run_ok(&mut agent.add(&tb, &["-s", &tb.module]));
    assert!(out.contains("Card added"), "{out}");
    let listed = run_ok(&mut agent.add(&tb, &["-L"]));
    let listed: Vec<String> = listed.lines().map(blob).collect();
    for name in ["ssh-ec", "ssh-rsa"] {
        let line = blob(&authorized_line(&tb, name));
        assert!(listed.contains(&line), "ssh-add -L lacks {name}:\n{listed:#?}");
    }
    let hidden = blob(&authorized_line(&tb, "ssh-hidden"));
    assert!(!listed.contains(&hidden), "{listed:#?}");

    let sshd = Sshd::start(&tb);
    for name in ["ssh-ec", "ssh-rsa"] {
        sshd.authorize(&format!("{}\n", authorized_line(&tb, name)));
        let mut c = ssh(&tb, &sshd, &[]);
        c.env("SSH_AUTH_SOCK", &agent.socket);
        let out = output(&mut c);
        assert!(out.status.success(), "login with {name} through ssh-agent: {}\n--- sshd ---\n{}", describe(&c, &out), sshd.log_text());
    }
    // The verify-only key is in the agent too, and signs nothing.
    sshd.authorize(&format!("{}\n", authorized_line(&tb, "ssh-verify-only")));
    let mut c = ssh(&tb, &sshd, &[]);
    c.env("SSH_AUTH_SOCK", &agent.socket);
    let out = output(&mut c);
    assert!(!out.status.success(), "a verify-only key logged in through ssh-agent: {}", describe(&c, &out));
    // ssh-agent's helper holds the module: it is the process keyward
    // sees sign (what a policy's `exe =` names).
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--key", "ssh-ec"], 0);
    let signed = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .find(|r| r["operation"] == "sign" && r["result"] == "CKR_OK");
    let signed = signed.unwrap_or_else(|| panic!("no signature on the trail:\n{trail}"));
    assert_eq!(signed["exe"], "/usr/lib/openssh/ssh-pkcs11-helper", "{signed}");
});
