//! `keyward backup ...`: the backup verbs. For now the custodians' own,
//! which run locally without the agent: `custodian-key new` (a new age
//! identity in a file only its custodian reads, and the roster's
//! `share_recipient` line) and `share check` (a share opened with its
//! custodian's identity: what it is, never its value).

use std::io::Read;
use std::path::Path;

use keyward_escrow::{short_check, ShareRecord, MAX_SHARE_FILE};

use keyward_protocol::admin::{
    AdminRequest, AdminResponse, BackupAnswer, BackupRequest, KeyRequest, KeyResponse,
};

use crate::admin::{Exit, Failure};
use crate::cli::{BackupCommand, CustodianKeyCommand, ShareCommand};
use crate::output::Output;
use crate::render;
use crate::signer;

/// Runs one `backup` command. `_socket` is the agent's admin socket, for
/// the verbs that ask the agent.
pub fn run(command: BackupCommand, socket: &Path, json: bool) -> Output {
    let done = match command {
        BackupCommand::CustodianKey {
            command: CustodianKeyCommand::New { out },
        } => custodian_key_new(&out, json),
        BackupCommand::Share {
            command: ShareCommand::Check { share, identity },
        } => share_check(&share, &identity, json),
        BackupCommand::Share {
            command:
                ShareCommand::Get {
                    out,
                    custodian,
                    token,
                },
        } => share_get(socket, &out, custodian, token.token, json),
        BackupCommand::Share {
            command:
                ShareCommand::Submit {
                    share,
                    identity,
                    token,
                },
        } => share_submit(socket, &share, &identity, token.token, json),
        BackupCommand::Init {
            threshold,
            reason,
            token,
        } => Ok(ask(
            socket,
            BackupRequest::Init {
                token: token.token,
                threshold,
                reason,
            },
            json,
        )),
        BackupCommand::Status { token } => Ok(ask(
            socket,
            BackupRequest::Status { token: token.token },
            json,
        )),
        BackupCommand::Create { file, token } => create(socket, &file, token.token, json),
        BackupCommand::Restore {
            file,
            reason,
            token,
        } => read_backup(&file).map(|file| {
            ask(
                socket,
                BackupRequest::Restore {
                    token: token.token,
                    file,
                    reason,
                },
                json,
            )
        }),
        BackupCommand::Verify { file, token } => read_backup(&file).map(|file| {
            let req = AdminRequest::Key(KeyRequest::Backup(BackupRequest::Verify {
                token: token.token,
                file,
            }));
            let resp = crate::admin::exchange(socket, &req);
            let failed = matches!(&resp, Ok(AdminResponse::Key(k)) if matches!(&**k,
                KeyResponse::Backup(b) if matches!(&**b,
                    BackupAnswer::Drill { results, .. } if results.iter().any(|r| !r.ok))));
            let mut out = crate::output::present(&req, resp, json);
            if failed {
                out.exit = Exit::Failed;
            }
            out
        }),
    };
    done.unwrap_or_else(|f| Output::failure(&f, json))
}

/// The largest backup file read (the admin protocol's frame limit).
const MAX_BACKUP_FILE: u64 = 60 << 20;

/// Sends `req` and presents the answer like any key request.
fn ask(socket: &Path, req: BackupRequest, json: bool) -> Output {
    let req = AdminRequest::Key(KeyRequest::Backup(req));
    crate::output::present(&req, crate::admin::exchange(socket, &req), json)
}

/// A backup file's bytes.
fn read_backup(file: &Path) -> Result<Vec<u8>, Failure> {
    read_limited(file, MAX_BACKUP_FILE, "a backup file")
}

/// `backup create FILE`: the agent makes the backup; it is written to a
/// new file only its owner reads.
fn create(
    socket: &Path,
    file: &Path,
    token: Option<String>,
    json: bool,
) -> Result<Output, Failure> {
    let shown = render::clean(&file.display().to_string());
    if file.exists() {
        return Err(Failure::local(
            Exit::Conflict,
            "Conflict",
            format!("{shown}: exists already: a backup file is never overwritten"),
        ));
    }
    let req = AdminRequest::Key(KeyRequest::Backup(BackupRequest::Create { token }));
    let resp = crate::admin::exchange(socket, &req)?;
    let AdminResponse::Key(answer) = resp else {
        return Ok(crate::output::present(&req, Ok(resp), json));
    };
    let KeyResponse::Backup(b) = *answer else {
        return Ok(crate::output::present(
            &req,
            Ok(AdminResponse::Key(answer)),
            json,
        ));
    };
    let BackupAnswer::File { bytes, contents } = *b else {
        return Err(invalid(
            "the agent answered a backup with something else".into(),
        ));
    };
    crate::files::write_new(file, &bytes, "a backup file")?;
    Ok(Output::success(if json {
        render::json(&contents)
    } else {
        format!(
            "{}written to {shown} ({} bytes)\n",
            render::backup(&BackupAnswer::File {
                bytes: Vec::new(),
                contents
            }),
            bytes.len()
        )
    }))
}

/// `backup share get --out FILE`.
fn share_get(
    socket: &Path,
    out: &Path,
    custodian: Option<String>,
    token: Option<String>,
    json: bool,
) -> Result<Output, Failure> {
    let req = AdminRequest::Key(KeyRequest::Backup(BackupRequest::Share {
        token,
        custodian,
    }));
    let resp = crate::admin::exchange(socket, &req)?;
    let AdminResponse::Key(answer) = resp else {
        return Ok(crate::output::present(&req, Ok(resp), json));
    };
    let KeyResponse::Backup(b) = *answer else {
        return Ok(crate::output::present(
            &req,
            Ok(AdminResponse::Key(answer)),
            json,
        ));
    };
    let BackupAnswer::Share {
        custodian,
        armored,
        digest,
    } = *b
    else {
        return Err(invalid(
            "the agent answered with something else than a share".into(),
        ));
    };
    crate::files::write_new(out, armored.as_bytes(), "a share file")?;
    Ok(Output::success(if json {
        render::json(
            &serde_json::json!({"custodian": custodian, "digest": digest,
            "file": out.display().to_string()}),
        )
    } else {
        format!(
            "the share of {} (digest {}) is in {}: `keyward backup share check` opens it\n",
            render::clean(&custodian),
            render::clean(&digest),
            render::clean(&out.display().to_string())
        )
    }))
}

/// `backup share submit SHARE --identity FILE`: opened here, sent to the
/// agent.
fn share_submit(
    socket: &Path,
    share: &Path,
    identity: &Path,
    token: Option<String>,
    json: bool,
) -> Result<Output, Failure> {
    let encoded = open_share(share, identity)?.encode();
    Ok(ask(
        socket,
        BackupRequest::Submit {
            token,
            share: encoded.to_vec(),
        },
        json,
    ))
}

/// `backup custodian-key new --out FILE`.
fn custodian_key_new(path: &Path, json: bool) -> Result<Output, Failure> {
    let (identity, recipient) = keyward_escrow::new_identity();
    crate::files::write_new(path, identity.as_bytes(), "a custodian identity file")?;
    let stdout = if json {
        render::json(&serde_json::json!({
            "share_recipient": recipient,
            "identity_file": path.display().to_string(),
        }))
    } else {
        format!("share_recipient = \"{recipient}\"\n")
    };
    Ok(Output {
        stdout,
        stderr: format!(
            "keyward: the identity is in {} (mode 0600): keep it secret and safe, it alone opens your share; \
             put the share_recipient line in your [[administrator]] entry of the roster\n",
            render::clean(&path.display().to_string())
        ),
        exit: Exit::Success,
    })
}

/// The share in file `share`, opened with the custodian's identity file
/// (like an administrator's key file: a regular file only its owner may
/// read or write, read into memory that is wiped).
fn open_share(share: &Path, identity: &Path) -> Result<ShareRecord, Failure> {
    let shown = || render::clean(&share.display().to_string());
    let armored = read_limited(share, MAX_SHARE_FILE as u64, "a share file")?;
    let armored = String::from_utf8(armored)
        .map_err(|_| invalid(format!("{}: not an armored age file (not text)", shown())))?;
    let identity_text = signer::read_secret_file(identity, "identity file")?;
    keyward_escrow::open(&armored, &identity_text).map_err(|e| invalid(format!("{}: {e}", shown())))
}

/// `backup share check SHARE --identity FILE`.
fn share_check(share: &Path, identity: &Path, json: bool) -> Result<Output, Failure> {
    let record = open_share(share, identity)?;
    let stdout = if json {
        render::json(&share_json(&record))
    } else {
        share_text(&record)
    };
    Ok(Output::success(stdout))
}

/// What `share check` prints about a share: never its value.
fn share_text(r: &ShareRecord) -> String {
    format!(
        "custodian:   {}\n\
         share:       {} of {}\n\
         threshold:   {} of {} rebuild the backup key\n\
         deployment:  {}\n\
         backup key:  {}\n\
         digest:      {}\n",
        render::clean(r.custodian()),
        r.index(),
        r.count(),
        r.threshold(),
        crate::style::plural(r.count(), "share"),
        render::clean(r.deployment()),
        short_check(r.key_check()),
        hex::encode(r.digest()),
    )
}

/// `share check --json`.
fn share_json(r: &ShareRecord) -> serde_json::Value {
    serde_json::json!({
        "custodian": r.custodian(),
        "index": r.index(),
        "count": r.count(),
        "threshold": r.threshold(),
        "deployment": r.deployment(),
        "backup_key": short_check(r.key_check()),
        "key_check": hex::encode(r.key_check()),
        "digest": hex::encode(r.digest()),
    })
}

/// A regular file's bytes, at most `limit` of them (more is refused).
fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, Failure> {
    let shown = render::clean(&path.display().to_string());
    // Not a regular file (a FIFO would block the open): refused first.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(invalid(format!("{shown}: not a file")));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::local(Exit::Usage, "Usage", format!("{shown}: cannot read: {e}")))?;
    let mut bytes = Vec::with_capacity(4096);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::local(Exit::Usage, "Usage", format!("{shown}: cannot read: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(invalid(format!(
            "{shown}: over {limit} bytes: not a {what}"
        )));
    }
    Ok(bytes)
}

fn invalid(message: String) -> Failure {
    Failure::local(Exit::Usage, "Invalid", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(
        deployment: &str,
    ) -> (
        keyward_escrow::Zeroizing<String>,
        keyward_escrow::SealedShare,
    ) {
        let (a, ra) = keyward_escrow::new_identity();
        let (_, rb) = keyward_escrow::new_identity();
        let custodians = [
            keyward_escrow::Custodian {
                name: "alice".into(),
                recipient: ra,
            },
            keyward_escrow::Custodian {
                name: "bob".into(),
                recipient: rb,
            },
        ];
        let mut shares =
            keyward_escrow::split(&[9u8; 64], deployment, 2, &custodians).expect("split");
        (a, shares.remove(0))
    }

    #[test]
    fn share_check_shows_what_the_share_is_but_not_its_value() {
        let (identity, share) = sealed("prod-eu");
        let record = keyward_escrow::open(&share.armored, &identity).expect("open");
        let text = share_text(&record);
        assert_eq!(
            text,
            format!(
                "custodian:   alice\n\
                 share:       1 of 2\n\
                 threshold:   2 of 2 shares rebuild the backup key\n\
                 deployment:  prod-eu\n\
                 backup key:  {}\n\
                 digest:      {}\n",
                short_check(&keyward_escrow::key_check(&[9u8; 64])),
                hex::encode(share.digest)
            )
        );
        let json = share_json(&record).to_string();
        for shown in [text, json] {
            assert!(!shown.contains(&hex::encode(record.share())), "{shown}");
        }
    }
}
