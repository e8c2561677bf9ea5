//! A throw-away certificate authority for the tests (the `openssl`
//! command): a CA, and certificates it issues for servers (with their
//! names as subjectAltName) and clients, EC P-256, private keys mode 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::{require_tool, run_ok};

/// A CA in a directory: `NAME.pem` and `NAME.key`.
#[derive(Debug, Clone)]
pub struct TestCa {
    dir: PathBuf,
    /// The CA's certificate (PEM).
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl() -> Command {
    Command::new(require_tool("openssl", "openssl"))
}

fn private(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl TestCa {
    /// A new CA called `name` (its subject `CN=name`) in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        run_ok(
            openssl()
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args(["-subj", &format!("/CN={name}"), "-days", "2"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        );
        private(&key);
        TestCa {
            dir: dir.to_owned(),
            cert,
            key,
        }
    }

    /// A certificate for `name` issued by the CA: `(certificate, key)`,
    /// valid from now for `days` days. `sans` are
    /// its subjectAltNames (`DNS:localhost`, `IP:127.0.0.1`); `client`
    /// makes it a client certificate, else a server's.
    pub fn issue(&self, name: &str, sans: &[&str], client: bool, days: i64) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.pem"));
        let ext = self.dir.join(format!("{name}.ext"));
        run_ok(
            openssl()
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&csr)
                .args(["-subj", &format!("/CN={name}")]),
        );
        private(&key);
        let mut text = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={}\n",
            if client { "clientAuth" } else { "serverAuth" }
        );
        if !sans.is_empty() {
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, text).expect("write the extensions");
        run_ok(
            openssl()
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&self.cert)
                .arg("-CAkey")
                .arg(&self.key)
                .args(["-CAcreateserial", "-out"])
                .arg(&cert)
                .args(["-days", &days.to_string(), "-extfile"])
                .arg(&ext),
        );
        (cert, key)
    }
}
