//! `keyward cert request`, `cert self-sign` and `cert import`: a CSR or a
//! self-signed certificate signed in the HSM by the agent, written as PEM
//! (or DER) to standard output or to a new file (mode 0600, never over an
//! existing file); a certificate file read here and checked by the agent.

use std::path::Path;

use keyward_protocol::admin::{
    AdminRequest, AdminResponse, KeyCertificate, KeyRequest, KeyResponse,
};
use keyward_protocol::certificate::{CertRequest, CertResponse, MAX_CERTIFICATE};
use keyward_protocol::distribution::sha256_hex;
use spki::der::pem::{self, LineEnding};

use crate::admin::{exchange, Exit, Failure};
use crate::cli::{CertCommand, CertSubjectArgs, KeyArgs, RotateArgs};
use crate::output::{answer_failure, Output};
use crate::render;

/// Where the answer goes: a new file (DER or PEM), or standard output.
type Destination = (Option<std::path::PathBuf>, bool);

fn usage(message: String) -> Failure {
    Failure::local(Exit::Usage, "Usage", message)
}

/// Reads the certificate file `path` (at most [`MAX_CERTIFICATE`] bytes).
fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| usage(format!("{}: cannot read: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_CERTIFICATE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(format!("{}: cannot read: {e}", path.display())))?;
    if bytes.len() > MAX_CERTIFICATE {
        return Err(usage(format!(
            "{}: more than {MAX_CERTIFICATE} bytes: not a certificate",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The request of `command`, and where its answer goes.
pub(crate) fn request(command: CertCommand) -> Result<(AdminRequest, Destination), Failure> {
    let cert = |c| AdminRequest::Key(KeyRequest::Cert(c));
    Ok(match command {
        CertCommand::Request(CertSubjectArgs {
            key,
            subject,
            san,
            version,
            out,
            der,
        }) => (
            cert(CertRequest::Request {
                name: key.name,
                token: key.token.token,
                version,
                subject,
                sans: san,
            }),
            (out, der),
        ),
        CertCommand::SelfSign {
            args:
                CertSubjectArgs {
                    key,
                    subject,
                    san,
                    version,
                    out,
                    der,
                },
            days,
            import,
        } => (
            cert(CertRequest::SelfSign {
                name: key.name,
                token: key.token.token,
                version,
                subject,
                sans: san,
                days,
                import,
            }),
            (out, der),
        ),
        CertCommand::Import {
            key,
            file,
            version,
            replace,
        } => (
            cert(CertRequest::Import {
                name: key.name,
                token: key.token.token,
                version,
                certificate: read(&file)?,
                replace,
            }),
            (None, false),
        ),
    })
}

/// Runs `command` against the agent at `socket`.
pub(crate) fn run(command: CertCommand, socket: &Path, json: bool) -> Output {
    let is_import = matches!(command, CertCommand::Import { .. });
    let (req, (out, der)) = match request(command) {
        Ok(r) => r,
        Err(f) => return Output::failure(&f, json),
    };
    // The file's place is taken before the HSM signs: a signature is
    // never made only to be refused here.
    let target = match &out {
        Some(path) => match crate::files::create_new(path, "a certificate file") {
            Ok(f) => Some((path.clone(), f)),
            Err(f) => return Output::failure(&f, json),
        },
        None => None,
    };
    let abandon = |f: Failure| {
        if let Some(path) = &out {
            let _ = std::fs::remove_file(path);
        }
        Output::failure(&f, json)
    };
    let resp = match exchange(socket, &req) {
        Ok(AdminResponse::Key(r)) => *r,
        Ok(other) => return abandon(answer_failure(&req, other)),
        Err(f) => return abandon(f),
    };
    if let KeyResponse::Plan(_) = &resp {
        // --dry-run: nothing signed, nothing to write.
        if let Some(path) = &out {
            let _ = std::fs::remove_file(path);
        }
        return crate::output::key_answer(resp, json);
    }
    let KeyResponse::Cert(c) = resp else {
        return abandon(Failure::local(
            Exit::Error,
            "Unexpected",
            "unexpected answer from the agent to a certificate request",
        ));
    };
    let (label, bytes) = match &c {
        CertResponse::Csr { der, .. } => ("CERTIFICATE REQUEST", der),
        CertResponse::Certificate { der, .. } => ("CERTIFICATE", der),
    };
    let pem = match pem::encode_string(label, LineEnding::LF, bytes) {
        Ok(p) => p,
        Err(e) => {
            return abandon(Failure::local(
                Exit::Error,
                "Unexpected",
                format!("PEM: {e}"),
            ))
        }
    };
    if let Some((path, f)) = target {
        let written = if der {
            bytes.as_slice()
        } else {
            pem.as_bytes()
        };
        if let Err(f) = crate::files::write_all(f, &path, written) {
            return abandon(f);
        }
    }
    let stdout = if json {
        let mut v = crate::json::untag(crate::json::view(&c));
        if let Some(o) = v.as_object_mut() {
            o.remove("der");
            o.insert("pem".into(), pem.clone().into());
            o.insert("sha256".into(), sha256_hex(bytes).into());
            if let Some(path) = &out {
                o.insert("file".into(), path.display().to_string().into());
            }
        }
        render::json(&v)
    } else if let Some(path) = &out {
        format!(
            "{}; written to {}\n",
            render::certificate(&c).trim_end(),
            path.display()
        )
    } else if is_import {
        render::certificate(&c)
    } else {
        pem
    };
    Output::success(stdout)
}

/// The subject of the key's current certificate, as the inventory has it:
/// the newest version's that has one, the latest to expire.
fn current_subject(certificates: &[KeyCertificate]) -> Option<String> {
    certificates
        .iter()
        .max_by_key(|c| (c.version, c.not_after))
        .map(|c| c.subject.clone())
}

fn unexpected(what: &str) -> Failure {
    Failure::local(
        Exit::Error,
        "Unexpected",
        format!("unexpected answer from the agent to {what}"),
    )
}

/// The subject of key `name`'s current certificate, for `key rotate --csr`
/// without `--subject`; a usage error, before anything is rotated, when
/// it has none.
fn current_subject_of(
    socket: &Path,
    name: &str,
    token: &Option<String>,
) -> Result<String, Failure> {
    let show = AdminRequest::Key(KeyRequest::Show {
        name: name.to_owned(),
        token: token.clone(),
    });
    let info = match exchange(socket, &show)? {
        AdminResponse::Key(r) => match *r {
            KeyResponse::Key(info) => info,
            _ => return Err(unexpected("key show")),
        },
        other => return Err(answer_failure(&show, other)),
    };
    current_subject(&info.certificates).ok_or_else(|| {
        usage(format!(
            "key {} has no certificate whose subject the request could take: give --subject; \
             nothing rotated",
            render::clean(name)
        ))
    })
}

/// `keyward key rotate NAME --csr FILE`: the subject is settled and the
/// file's place taken before the rotation (a usage error rotates nothing);
/// then the rotation, then the CSR of the new version, signed in the HSM.
pub(crate) fn rotate_with_csr(args: RotateArgs, socket: &Path, json: bool) -> Output {
    let RotateArgs {
        key: KeyArgs { name, token },
        csr,
        subject,
        san,
    } = args;
    let token = token.token;
    let Some(out) = csr else {
        return Output::failure(&usage("--csr FILE is needed".into()), json);
    };
    let subject = match subject.map_or_else(|| current_subject_of(socket, &name, &token), Ok) {
        Ok(s) => s,
        Err(f) => return Output::failure(&f, json),
    };
    let file = match crate::files::create_new(&out, "a certificate request file") {
        Ok(f) => f,
        Err(f) => return Output::failure(&f, json),
    };
    let abandon = |f: Failure| {
        let _ = std::fs::remove_file(&out);
        Output::failure(&f, json)
    };
    let rotate = AdminRequest::Key(KeyRequest::Rotate {
        name: name.clone(),
        token: token.clone(),
    });
    let info = match exchange(socket, &rotate) {
        Ok(AdminResponse::Key(r)) => match *r {
            KeyResponse::Key(info) => info,
            // Pending approval, or anything else: no new version to certify.
            other => {
                let _ = std::fs::remove_file(&out);
                return crate::output::present(
                    &rotate,
                    Ok(AdminResponse::Key(Box::new(other))),
                    json,
                );
            }
        },
        Ok(other) => return abandon(answer_failure(&rotate, other)),
        Err(f) => return abandon(f),
    };
    let Some(version) = info.versions.iter().map(|v| v.version).max() else {
        return abandon(unexpected("key rotate"));
    };
    let request = AdminRequest::Key(KeyRequest::Cert(CertRequest::Request {
        name: name.clone(),
        token,
        version: Some(version),
        subject,
        sans: san,
    }));
    let rotated = |f: Failure| {
        let mut f = f;
        f.message = format!(
            "key {} was rotated to version {version}, but its certificate request was not \
             written: {}",
            render::clean(&name),
            f.message
        );
        abandon(f)
    };
    let der = match exchange(socket, &request) {
        Ok(AdminResponse::Key(r)) => match *r {
            KeyResponse::Cert(CertResponse::Csr { der, .. }) => der,
            _ => return rotated(unexpected("cert request")),
        },
        Ok(other) => return rotated(answer_failure(&request, other)),
        Err(f) => return rotated(f),
    };
    let pem = match pem::encode_string("CERTIFICATE REQUEST", LineEnding::LF, &der) {
        Ok(p) => p,
        Err(e) => {
            return rotated(Failure::local(
                Exit::Error,
                "Unexpected",
                format!("PEM: {e}"),
            ))
        }
    };
    if let Err(f) = crate::files::write_all(file, &out, pem.as_bytes()) {
        return rotated(f);
    }
    Output::success(if json {
        render::json(&serde_json::json!({
            "key": name,
            "version": version,
            "csr": out.display().to_string(),
            "sha256": sha256_hex(&der),
        }))
    } else {
        format!(
            "rotated {}: version {version} protects; its certificate request written to {} \
             (SHA-256 {})\n",
            render::clean(&name),
            out.display(),
            sha256_hex(&der)
        )
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<CertCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied())).map(|c| match c
            .command
        {
            Command::Cert { command } => command,
            other => panic!("{other:?}"),
        })
    }

    fn cert(args: &[&str]) -> Result<(CertRequest, Destination), Failure> {
        let (req, dest) = request(parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")))?;
        match req {
            AdminRequest::Key(KeyRequest::Cert(c)) => Ok((c, dest)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_become_requests() {
        let (c, dest) = cert(&[
            "cert",
            "request",
            "web",
            "--subject",
            "CN=web,O=Example",
            "--san",
            "DNS:a,IP:1.2.3.4,email:x@y",
            "--version",
            "2",
            "--out",
            "f",
            "--der",
        ])
        .unwrap();
        assert_eq!(
            c,
            CertRequest::Request {
                name: "web".into(),
                token: None,
                version: Some(2),
                subject: "CN=web,O=Example".into(),
                sans: vec!["DNS:a".into(), "IP:1.2.3.4".into(), "email:x@y".into()],
            }
        );
        assert_eq!(dest, (Some("f".into()), true));
        let (c, _) = cert(&[
            "cert",
            "self-sign",
            "web",
            "--subject",
            "CN=w",
            "--days",
            "1",
            "--import",
        ])
        .unwrap();
        assert_eq!(
            c,
            CertRequest::SelfSign {
                name: "web".into(),
                token: None,
                version: None,
                subject: "CN=w".into(),
                sans: Vec::new(),
                days: 1,
                import: true,
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.pem");
        std::fs::write(&f, b"bytes").unwrap();
        let (c, _) = cert(&["cert", "import", "web", f.to_str().unwrap(), "--replace"]).unwrap();
        assert_eq!(
            c,
            CertRequest::Import {
                name: "web".into(),
                token: None,
                version: None,
                certificate: b"bytes".to_vec(),
                replace: true,
            }
        );
        let missing = dir.path().join("missing");
        let e = cert(&["cert", "import", "web", missing.to_str().unwrap()]).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        std::fs::write(&f, vec![b'a'; MAX_CERTIFICATE + 1]).unwrap();
        let e = cert(&["cert", "import", "web", f.to_str().unwrap()]).unwrap_err();
        assert!(e.message.contains("not a certificate"), "{}", e.message);
    }

    #[test]
    fn rotate_takes_a_csr_and_its_subject_and_names_only_together() {
        let rotate = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied()))
                .map(|c| c.command)
        };
        let Ok(Command::Key {
            command: crate::cli::KeyCommand::Rotate(r),
        }) = rotate(&[
            "key",
            "rotate",
            "web",
            "--csr",
            "f",
            "--subject",
            "CN=a",
            "--san",
            "DNS:a,DNS:b",
        ])
        else {
            panic!("not a rotation")
        };
        assert_eq!(r.csr, Some("f".into()));
        assert_eq!(r.subject.as_deref(), Some("CN=a"));
        assert_eq!(r.san, ["DNS:a", "DNS:b"]);
        assert!(rotate(&["key", "rotate", "web", "--subject", "CN=a"]).is_err());
        assert!(rotate(&["key", "rotate", "web", "--san", "DNS:a"]).is_err());
        let info = |certs: &[(u32, i64, &str)]| -> Vec<KeyCertificate> {
            certs
                .iter()
                .map(|&(version, not_after, subject)| KeyCertificate {
                    version,
                    subject: subject.into(),
                    not_before: 0,
                    not_after,
                    sha256: String::new(),
                    imported_at: 0,
                })
                .collect()
        };
        assert_eq!(current_subject(&info(&[])), None);
        assert_eq!(
            current_subject(&info(&[
                (2, 5, "CN=new"),
                (1, 9, "CN=old"),
                (2, 3, "CN=older")
            ]))
            .as_deref(),
            Some("CN=new")
        );
    }

    #[test]
    fn incomplete_commands_are_usage_errors() {
        for args in [
            &["cert", "request", "web"][..],
            &["cert", "request", "web", "--subject", "CN=a", "--der"],
            &["cert", "self-sign", "web"],
            &["cert", "import", "web"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }
}
