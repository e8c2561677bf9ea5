//! Files `keyward` writes: always new (an existing file or link is never
//! written over), readable and writable by their owner only, removed again
//! when they cannot be written whole. Backups, shares, custodian
//! identities, exports, public keys and certificates all go through here.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::admin::{Exit, Failure};
use crate::render;

/// Creates the new file `path` (mode 0600), `what` (for messages: "a
/// backup file"): an
/// existing one is a conflict (exit 6), any other failure a usage error.
pub(crate) fn create_new(path: &Path, what: &str) -> Result<File, Failure> {
    let shown = render::clean(&path.display().to_string());
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => Failure::local(
                Exit::Conflict,
                "Conflict",
                format!(
                    "{shown}: exists already: a {what} is never overwritten (choose another name)"
                ),
            ),
            _ => Failure::local(Exit::Usage, "Usage", format!("{shown}: cannot create: {e}")),
        })
}

/// Writes `bytes` to `file`, the new file at `path`, and syncs it; a file
/// that cannot be written whole is removed.
pub(crate) fn write_all(mut file: File, path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Failure::local(
            Exit::Error,
            "Io",
            format!(
                "{}: cannot write: {e}",
                render::clean(&path.display().to_string())
            ),
        ));
    }
    Ok(())
}

/// [`create_new`] then [`write_all`].
pub(crate) fn write_new(path: &Path, bytes: &[u8], what: &str) -> Result<(), Failure> {
    write_all(create_new(path, what)?, path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_never_written_over_and_only_its_owner_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x");
        write_new(&out, b"one", "a test file").unwrap();
        let e = write_new(&out, b"two", "a test file").unwrap_err();
        assert_eq!(e.exit, Exit::Conflict);
        assert!(e.message.contains("exists already"), "{}", e.message);
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A dangling link is not followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        assert_eq!(
            write_new(&link, b"x", "a test file").unwrap_err().exit,
            Exit::Conflict
        );
        assert!(!dir.path().join("nowhere").exists());
    }
}
