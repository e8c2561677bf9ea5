//! What the NSS, GnuTLS and Chromium client tests share: TLS servers run as
//! child processes on 127.0.0.1, clients run with a bounded wait, a PIN file
//! only the test's user reads, and the public key of a token key, a
//! certificate or a request, to show that a signature came from the token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::Env;
use crate::tools::{describe, free_port, require_tool, run_ok};

/// How long a server may take to listen, and a client to finish.
pub const WAIT: Duration = Duration::from_secs(60);

/// A server child process; killed (by its pid) when stopped or dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    what: String,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(from: impl Read + Send + 'static, log: &Arc<Mutex<String>>) -> JoinHandle<()> {
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            l.push_str(&line);
            l.push('\n');
        }
    })
}

impl Server {
    /// Starts `cmd` and waits until 127.0.0.1:`port` accepts a connection
    /// (a bare probe connection, which the servers used here shrug off).
    /// Panics with the server's output when it exits first or does not
    /// listen within [`WAIT`].
    pub fn start(cmd: &mut Command, port: u16) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("server stdout"), &log),
            collect(child.stderr.take().expect("server stderr"), &log),
        ];
        let mut server = Server {
            child: Some(child),
            what,
            log,
            readers,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(child) = server.child.as_mut() {
                if let Some(status) = child.try_wait().expect("server status") {
                    let log = server.stop();
                    panic!(
                        "{} exited with {status} before listening:\n{log}",
                        server.what
                    );
                }
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Let the server finish with the probe connection.
                std::thread::sleep(Duration::from_millis(300));
                return server;
            }
            if Instant::now() > deadline {
                let log = server.stop();
                panic!("{} did not listen on port {port}:\n{log}", server.what);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills the server and returns all it printed.
    pub fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` with `input` on its standard input; kills it after [`WAIT`].
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("client status") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("client status");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The output of a client run as text (stdout then stderr).
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A file in the testbed holding the token's PIN, mode 0600 (clients read
/// their PIN from a file: never from their arguments).
pub fn pin_file(tb: &Env) -> PathBuf {
    let path = tb.path("user-pin.txt");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("create the PIN file");
    writeln!(f, "{}", tb.pin).expect("write the PIN file");
    path
}

/// The DER SubjectPublicKeyInfo of the public key whose `CKA_ID` is
/// `id_hex`, read from the token through the module by pkcs11-tool.
pub fn token_public_key(tb: &Env, id_hex: &str) -> Vec<u8> {
    let out = tb.path(&format!("pub-{id_hex}.der"));
    run_ok(
        Command::new(require_tool("pkcs11-tool", "opensc"))
            .arg("--module")
            .arg(&tb.module)
            .args([
                "--token-label",
                &tb.token,
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                id_hex,
                "-o",
            ])
            .arg(&out),
    );
    spki_der(&std::fs::read(&out).expect("read the public key"), "DER")
}

/// The public key of a PEM certificate (`kind` "x509") or certificate
/// request ("req"), as DER SubjectPublicKeyInfo.
pub fn public_key_of(kind: &str, pem: &Path) -> Vec<u8> {
    let mut c = Command::new(require_tool("openssl", "openssl"));
    c.args([kind, "-noout", "-pubkey", "-in"]).arg(pem);
    let out = crate::tools::output(&mut c);
    assert!(out.status.success(), "{}", describe(&c, &out));
    spki_der(&out.stdout, "PEM")
}

/// A public key (PEM or DER) in canonical DER form.
fn spki_der(key: &[u8], form: &str) -> Vec<u8> {
    let mut c = Command::new("openssl");
    c.args(["pkey", "-pubin", "-inform", form, "-outform", "DER"]);
    let out = run_with_input(&mut c, key);
    assert!(out.status.success(), "{}", describe(&c, &out));
    out.stdout
}

/// A software key and self-signed certificate for a test server on
/// 127.0.0.1 (the server's key is not the point of these tests).
pub fn server_identity(tb: &Env) -> (PathBuf, PathBuf) {
    let key = tb.path("server.key");
    let cert = tb.path("server.pem");
    run_ok(
        Command::new(require_tool("openssl", "openssl"))
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-days",
                "2",
            ]),
    );
    (key, cert)
}

/// `openssl s_server` requiring a client certificate issued by (here: equal
/// to) `client_ca`; `-www` answers with a page naming the client's
/// certificate.
pub fn server_requiring_client_cert(tb: &Env, client_ca: &Path) -> (Server, u16, PathBuf) {
    let (key, cert) = server_identity(tb);
    let port = free_port();
    let server = Server::start(
        Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-key"])
            .arg(&key)
            .arg("-cert")
            .arg(&cert)
            .args(["-Verify", "1", "-verify_return_error", "-CAfile"])
            .arg(client_ca)
            .arg("-www"),
        port,
    );
    (server, port, cert)
}
