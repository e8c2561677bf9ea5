//! `keyward key pubkey`, `key export` and `key import`: the commands that
//! read or write files besides talking to the agent. Public keys are
//! SubjectPublicKeyInfo (PEM by default); an export file is written with
//! mode 0600 and never over an existing file.

use std::path::Path;

use keyward_protocol::admin::{AdminRequest, AdminResponse, KeyRequest, KeyResponse};
use keyward_protocol::distribution::{sha256_hex, DistRequest, DistResponse};
use spki::der::pem::{self, LineEnding};

use crate::admin::{exchange, Exit, Failure};
use crate::cli::{KeyArgs, KeyCommand};
use crate::output::{answer_failure, Output};
use crate::render;

/// The largest file read (an export file is a few KiB).
const MAX_FILE: u64 = 1 << 20;

/// Whether `command` is one of these.
pub(crate) fn handles(command: &KeyCommand) -> bool {
    matches!(
        command,
        KeyCommand::Pubkey { .. } | KeyCommand::Export { .. } | KeyCommand::Import { .. }
    )
}

fn usage(message: String) -> Failure {
    Failure::local(Exit::Usage, "Usage", message)
}

/// Reads `path` (at most [`MAX_FILE`] bytes).
fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| usage(format!("{}: cannot read: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(format!("{}: cannot read: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(usage(format!(
            "{}: more than {MAX_FILE} bytes: not a key file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A public key file: PEM (`PUBLIC KEY`) or DER.
fn read_public_key(path: &Path) -> Result<Vec<u8>, Failure> {
    let bytes = read(path)?;
    if bytes.starts_with(b"-----BEGIN") {
        let (label, der) = pem::decode_vec(&bytes)
            .map_err(|e| usage(format!("{}: not a PEM file: {e}", path.display())))?;
        if label != "PUBLIC KEY" {
            return Err(usage(format!(
                "{}: a PEM {label:?}, not a PUBLIC KEY (SubjectPublicKeyInfo)",
                path.display()
            )));
        }
        return Ok(der);
    }
    Ok(bytes)
}

/// The request of one of these commands, without its files (the
/// recipient and the export file are read by [`run`]).
pub(crate) fn request(command: KeyCommand) -> Result<AdminRequest, Failure> {
    let dist = |d| Ok(AdminRequest::Key(KeyRequest::Distribution(d)));
    match command {
        KeyCommand::Pubkey {
            key: KeyArgs { name, token },
            version,
            ..
        } => dist(DistRequest::PublicKey {
            name,
            token: token.token,
            version,
        }),
        KeyCommand::Export {
            collect: Some(id), ..
        } => dist(DistRequest::Collect { id }),
        KeyCommand::Export {
            name,
            token,
            version,
            to,
            reason,
            ..
        } => {
            let (Some(name), Some(to), Some(reason)) = (name, to, reason) else {
                return Err(usage(
                    "keyward key export NAME --to RECIPIENT.pem --reason TEXT, or --collect ID --out FILE"
                        .into(),
                ));
            };
            dist(DistRequest::Export {
                name,
                token: token.token,
                version,
                recipient: read_public_key(&to)?,
                reason,
            })
        }
        KeyCommand::Import {
            file: path,
            class,
            name,
            token,
            reason,
            sha256,
        } => {
            if let Some(name) = &name {
                crate::run::new_key_name(name)?;
            }
            let file = read(&path)?;
            if let Some(expected) = sha256 {
                let actual = sha256_hex(&file);
                if !expected.trim().eq_ignore_ascii_case(&actual) {
                    return Err(Failure::local(
                        Exit::Usage,
                        "Invalid",
                        format!(
                            "{}: SHA-256 {actual}, not the {} expected: not the file that was \
                             exported; nothing sent",
                            path.display(),
                            expected.trim()
                        ),
                    ));
                }
            }
            dist(DistRequest::Import {
                file,
                class,
                name,
                token: token.token,
                reason,
            })
        }
        _ => Err(usage("not a distribution command".into())),
    }
}

/// Runs one of these commands against the agent at `socket`.
pub(crate) fn run(command: KeyCommand, socket: &Path, json: bool) -> Output {
    let (pubkey_out, der, collect_out) = match &command {
        KeyCommand::Pubkey { out, der, .. } => (out.clone(), *der, None),
        KeyCommand::Export { out, .. } => (None, false, out.clone()),
        _ => (None, false, None),
    };
    let req = match request(command) {
        Ok(r) => r,
        Err(f) => return Output::failure(&f, json),
    };
    // The export file's place is taken before the agent hands it out, so
    // that a file is never fetched only to be refused here.
    let mut target = None;
    if let Some(out) = &collect_out {
        match crate::files::create_new(out, "an export file") {
            Ok(f) => target = Some(f),
            Err(f) => return Output::failure(&f, json),
        }
    }
    let abandon = |f: Failure| {
        if let Some(out) = &collect_out {
            let _ = std::fs::remove_file(out);
        }
        Output::failure(&f, json)
    };
    let resp = match exchange(socket, &req) {
        Ok(AdminResponse::Key(r)) => *r,
        Ok(other) => return abandon(answer_failure(&req, other)),
        Err(f) => return abandon(f),
    };
    let done = match resp {
        KeyResponse::Distribution(DistResponse::PublicKey { key, version, spki }) => {
            public_key(&key, version, &spki, (pubkey_out.as_deref(), der), json)
        }
        KeyResponse::Distribution(DistResponse::ExportFile { id, file }) => {
            match (collect_out.as_deref(), target) {
                (Some(out), Some(f)) => crate::files::write_all(f, out, &file)
                    .and_then(|()| collected(&id, &file, out, json)),
                _ => Err(Failure::local(
                    Exit::Usage,
                    "Usage",
                    "--collect needs --out FILE",
                )),
            }
        }
        other => {
            if collect_out.is_some() {
                return abandon(Failure::local(
                    Exit::Error,
                    "Unexpected",
                    "unexpected answer from the agent to a collect",
                ));
            }
            return crate::output::present(&req, Ok(AdminResponse::Key(Box::new(other))), json);
        }
    };
    done.unwrap_or_else(abandon)
}

fn pem_of(spki: &[u8]) -> Result<String, Failure> {
    pem::encode_string("PUBLIC KEY", LineEnding::LF, spki)
        .map_err(|e| Failure::local(Exit::Error, "Unexpected", format!("PEM: {e}")))
}

/// The public key: to the file, or as PEM on standard output.
fn public_key(
    key: &str,
    version: u32,
    spki: &[u8],
    (out, der): (Option<&Path>, bool),
    json: bool,
) -> Result<Output, Failure> {
    let pem = pem_of(spki)?;
    let digest = sha256_hex(spki);
    if let Some(out) = out {
        crate::files::write_new(
            out,
            if der { spki } else { pem.as_bytes() },
            "a public key file",
        )?;
    }
    let stdout = if json {
        render::json(&serde_json::json!({
            "key": key,
            "version": version,
            "spki_sha256": digest,
            "pem": pem,
        }))
    } else if let Some(out) = out {
        format!(
            "public key of {} version {version} written to {} (SPKI SHA-256 {digest})\n",
            render::clean(key),
            out.display()
        )
    } else {
        pem
    };
    Ok(Output::success(stdout))
}

/// What is said of the export file written to `out`.
fn collected(id: &str, file: &[u8], out: &Path, json: bool) -> Result<Output, Failure> {
    let digest = sha256_hex(file);
    Ok(Output::success(if json {
        render::json(&serde_json::json!({
            "request": id,
            "file": out.display().to_string(),
            "bytes": file.len(),
            "sha256": digest,
        }))
    } else {
        format!(
            "export file of request {} written to {} ({} bytes, SHA-256 {digest})\n",
            render::clean(id),
            out.display(),
            file.len()
        )
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<KeyCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied())).map(|c| match c
            .command
        {
            Command::Key { command } => command,
            other => panic!("{other:?}"),
        })
    }

    fn dist(args: &[&str]) -> Result<DistRequest, Failure> {
        match request(parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")))? {
            AdminRequest::Key(KeyRequest::Distribution(d)) => Ok(d),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_become_requests_and_files_are_read_here() {
        let dir = tempfile::tempdir().unwrap();
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        let pem_file = dir.path().join("r.pem");
        std::fs::write(
            &pem_file,
            pem::encode_string("PUBLIC KEY", LineEnding::LF, &der).unwrap(),
        )
        .unwrap();
        let p = pem_file.to_str().unwrap();
        assert_eq!(
            dist(&[
                "key",
                "export",
                "web",
                "--to",
                p,
                "--reason",
                "r",
                "--version",
                "2"
            ]),
            Ok(DistRequest::Export {
                name: "web".into(),
                token: None,
                version: Some(2),
                recipient: der.clone(),
                reason: "r".into(),
            })
        );
        assert_eq!(
            dist(&["key", "export", "--collect", "00ff", "--out", "f"]),
            Ok(DistRequest::Collect { id: "00ff".into() })
        );
        assert_eq!(
            dist(&["key", "pubkey", "web", "--token", "t"]),
            Ok(DistRequest::PublicKey {
                name: "web".into(),
                token: Some("t".into()),
                version: None,
            })
        );
        assert_eq!(
            dist(&["key", "import", p, "--class", "c", "--reason", "r"]),
            Ok(DistRequest::Import {
                file: std::fs::read(&pem_file).unwrap(),
                class: "c".into(),
                name: None,
                token: None,
                reason: "r".into(),
            })
        );
        // The digest the exporting side printed: checked before sending.
        let digest = sha256_hex(&std::fs::read(&pem_file).unwrap());
        assert!(
            dist(&["key", "import", p, "--class", "c", "--reason", "r", "--sha256", &digest])
                .is_ok()
        );
        let e = dist(&[
            "key", "import", p, "--class", "c", "--reason", "r", "--sha256", "00",
        ])
        .unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(
            e.message.contains("not the file that was exported"),
            "{}",
            e.message
        );
        // A missing file, a PEM of another kind: usage errors (exit 2).
        let missing = dir.path().join("missing.pem");
        let e = dist(&[
            "key",
            "export",
            "web",
            "--to",
            missing.to_str().unwrap(),
            "--reason",
            "r",
        ]);
        assert_eq!(e.unwrap_err().exit, Exit::Usage);
        let cert = dir.path().join("c.pem");
        std::fs::write(
            &cert,
            pem::encode_string("CERTIFICATE", LineEnding::LF, &der).unwrap(),
        )
        .unwrap();
        let e = dist(&[
            "key",
            "export",
            "web",
            "--to",
            cert.to_str().unwrap(),
            "--reason",
            "r",
        ])
        .unwrap_err();
        assert!(e.message.contains("not a PUBLIC KEY"), "{}", e.message);
    }

    #[test]
    fn contradictory_or_incomplete_commands_are_usage_errors() {
        for args in [
            &["key", "export", "web"][..],
            &["key", "export", "web", "--to", "f"],
            &["key", "export", "--collect", "00ff"],
            &[
                "key",
                "export",
                "web",
                "--to",
                "f",
                "--reason",
                "r",
                "--collect",
                "00",
            ],
            &["key", "pubkey", "web", "--der"],
            &["key", "import", "f", "--class", "c"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }
}
