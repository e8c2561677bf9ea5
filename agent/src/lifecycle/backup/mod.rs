//! Backups with split knowledge.
//!
//! - The backup key (`key`): a 64-byte secret drawn from the HSM's RNG
//!   at `keyward backup init` (under quorum `backup-init`), installed as
//!   three objects: its wrapping half as a public AES-256 object with
//!   `CKA_TRUSTED` (made by the backend's SO: only it may wrap the keys
//!   whose class allows backup, which are `CKA_WRAP_WITH_TRUSTED`), the
//!   same value as a private unwrap-only object, and the other 32 bytes as
//!   the HMAC key that seals backup files. The secret is split at once into
//!   shares for the roster's custodians (`ceremony`), each encrypted to
//!   one custodian, and zeroised: it is never written whole.
//! - `keyward backup create` (`create`): every backup-eligible key
//!   version wrapped by the backup key, with its inventory record, sealed
//!   in the HSM (`file`).
//! - `keyward backup restore` (under quorum `backup-restore`) and
//!   `keyward backup verify`, the drill (`restore`).
//! - What the trail's backup and drill records say of a key (`marks`):
//!   `keyward report`'s last backup, last drill and missing-backup flag,
//!   and the backups a destruction names as still holding the key.
//! - On a token without the backup key (a new HSM), custodians submit
//!   their opened shares; with enough of them the key is rebuilt inside
//!   the HSM (`ceremony`).

pub(crate) mod ceremony;
pub(crate) mod create;
pub(crate) mod file;
pub(crate) mod key;
pub(crate) mod marks;
pub(crate) mod restore;

use keyward_inventory::Actor;
use keyward_protocol::admin::{BackupRequest, KeyResponse};

use crate::listener::identity::Peer;

use super::*;

/// The backup file's parser as `keyward backup restore` and `verify` run
/// it, up to the seal check (which needs the HSM): the file split into its
/// parts, then its body decoded. On success, the file encoded again from
/// what was decoded (same key check, same seal), so that decoding it again
/// can be compared. An entry point for the fuzz targets, not an API.
#[doc(hidden)]
pub fn decode_backup_file(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let parsed = file::parse(bytes)?;
    let body = file::body(&parsed)?;
    let mut again = file::unsealed(&parsed.key_check, &body)?;
    again.extend_from_slice(parsed.seal);
    Ok(again)
}

/// The action of a backup key ceremony request.
pub const BACKUP_INIT: &str = "backup-init";
/// The action of a restore request.
pub const BACKUP_RESTORE: &str = "backup-restore";

impl Lifecycle {
    /// Notes, per token, whether it holds the backup key (at start).
    pub fn note_backup_keys(&self) {
        for t in &self.tokens {
            let Ok(backend) = t.backend() else { continue };
            let Ok(s) = hsm::HsmSession::open(backend.as_ref()) else {
                continue;
            };
            let found = !matches!(key::find(&s), Ok(None));
            t.agent_objects
                .store(found, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// `keyward backup ...`.
    pub(crate) fn backup_call(
        &self,
        admin: &Peer,
        (who, by): (&str, &Actor),
        req: BackupRequest,
    ) -> AResult<KeyResponse> {
        let now = crate::clock::now();
        match req {
            BackupRequest::Init {
                token,
                threshold,
                reason,
            } => self.request_backup_init(token.as_deref(), threshold, (who, &reason), now),
            BackupRequest::Status { token } => self.backup_status(token.as_deref()),
            BackupRequest::Share { token, custodian } => {
                self.backup_share(token.as_deref(), custodian.as_deref(), who)
            }
            BackupRequest::Create { token } => self.backup_create(token.as_deref(), (who, by), now),
            BackupRequest::Restore {
                token,
                file,
                reason,
            } => self.request_restore(token.as_deref(), file, (who, &reason), now),
            BackupRequest::Verify { token, file } => {
                self.backup_drill(token.as_deref(), &file, (who, by), now)
            }
            BackupRequest::Submit { token, share } => {
                self.submit_share(admin, token.as_deref(), share, (who, by), now)
            }
        }
    }
}
