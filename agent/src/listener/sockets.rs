//! The agent's socket files: bound with their final mode and group before
//! anyone can reach them, in a directory whose mode does not depend on the
//! umask, and bound again when someone removes or replaces them.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::listener::identity::{pass_credentials, FileId};

/// How a socket file is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// Where.
    pub path: PathBuf,
    /// Its file mode.
    pub mode: u32,
    /// Its group, when not the agent's own.
    pub gid: Option<u32>,
}

/// A bound socket and the file it is reachable by.
#[derive(Debug)]
pub struct Bound {
    /// The listener (with `SO_PASSCRED`: every message carries its sender).
    pub listener: UnixListener,
    /// The socket file's identity when it was bound.
    pub file: Option<FileId>,
}

/// The mode of a socket directory the agent creates: everyone may reach
/// the sockets inside (their own modes decide who may connect), only the
/// agent may add or remove files.
const SOCKET_DIR_MODE: u32 = 0o755;

/// Binds `spec`: creates the parent directory (mode 0755, whatever the
/// umask), replaces a stale socket file and a squatter's socket (one that
/// answers with another uid than the agent's and root), and refuses to
/// replace a socket another agent of ours answers on or a file that is
/// not a socket.
///
/// The socket is bound inside a fresh directory of mode 0700, given its
/// mode and group there, and only then renamed into place: nobody can
/// connect while it still has the umask's mode.
pub fn bind(spec: &SocketSpec) -> io::Result<Bound> {
    let path = &spec.path;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(parent)
            .map_err(named)?;
        fs::set_permissions(parent, fs::Permissions::from_mode(SOCKET_DIR_MODE)).map_err(named)?;
    } else if let Ok(m) = fs::metadata(parent) {
        let mode = m.mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            log::warn!(
                "{}: the socket directory is writable by everyone: another user can remove the socket (the agent binds it again) or put a socket of their own there",
                parent.display()
            );
        }
    }
    clear_path(path)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| named(io::Error::other("not a file path")))?;
    let staging = staging_dir(parent).map_err(named)?;
    let result = (|| {
        let tmp = staging.join(file_name);
        let listener = UnixListener::bind(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(spec.mode))?;
        if let Some(gid) = spec.gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        pass_credentials(&listener)?;
        fs::rename(&tmp, path)?;
        Ok(Bound {
            listener,
            file: FileId::of(path),
        })
    })()
    .map_err(named);
    let _ = fs::remove_dir_all(&staging);
    result
}

/// A fresh directory of mode 0700 beside the socket (same file system, so
/// the socket can be renamed out of it).
fn staging_dir(parent: &Path) -> io::Result<PathBuf> {
    for _ in 0..16 {
        let mut n = [0u8; 8];
        getrandom::getrandom(&mut n).map_err(io::Error::other)?;
        let dir = parent.join(format!(".keyward-bind-{}", u64::from_le_bytes(n)));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "cannot create a private directory to bind in",
    ))
}

/// Makes `path` free for a new socket: nothing there, a stale socket, or a
/// socket that answers with a uid that is neither the agent's nor root's
/// (a squatter, logged and removed). Another live agent of ours, or a file
/// that is not a socket, is an error.
fn clear_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if let Ok(s) = UnixStream::connect(path) {
                let theirs = getsockopt(&s, PeerCredentials).map(|c| c.uid()).ok();
                let ours = nix::unistd::geteuid().as_raw();
                if theirs == Some(ours) || theirs == Some(0) {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{}: another process answers on this socket", path.display()),
                    ));
                }
                log::warn!(
                    "{}: a process of uid {} answers on the agent's socket path; replacing its socket",
                    path.display(),
                    theirs.map_or_else(|| "?".to_owned(), |u| u.to_string())
                );
            }
            fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{}: exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the file at `path` is still the socket bound as `file`.
pub fn still_bound(path: &Path, file: Option<FileId>) -> bool {
    file.is_some() && FileId::of(path) == file
}

/// Replaces whatever is at `path` (a removed socket, a squatter's socket or
/// file) by a socket bound again from `spec`: the path is the agent's by
/// configuration.
pub fn rebind(spec: &SocketSpec) -> io::Result<Bound> {
    match fs::symlink_metadata(&spec.path) {
        Ok(m) if m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{}: a directory took the socket's place",
                    spec.path.display()
                ),
            ))
        }
        Ok(_) => fs::remove_file(&spec.path)?,
        Err(_) => {}
    }
    bind(spec)
}

/// Resolves a group given by name or number.
pub fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {group:?}")),
        Err(e) => Err(format!("group {group:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_bound_with_its_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SocketSpec {
            path: dir.path().join("run/sub/agent.sock"),
            mode: 0o600,
            gid: None,
        };
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o000));
        let b = bind(&spec);
        nix::sys::stat::umask(old);
        let b = b.unwrap();
        let m = fs::metadata(&spec.path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert!(m.file_type().is_socket());
        let parent = fs::metadata(dir.path().join("run/sub")).unwrap();
        assert_eq!(parent.mode() & 0o777, SOCKET_DIR_MODE);
        // No staging directory is left behind.
        let left: Vec<_> = fs::read_dir(dir.path().join("run/sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(still_bound(&spec.path, b.file));
        fs::remove_file(&spec.path).unwrap();
        assert!(!still_bound(&spec.path, b.file));
        let again = rebind(&spec).unwrap();
        assert!(still_bound(&spec.path, again.file));
        UnixStream::connect(&spec.path).expect("the rebound socket answers");
    }

    #[test]
    fn a_live_socket_of_ours_is_not_replaced_and_a_plain_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SocketSpec {
            path: dir.path().join("a.sock"),
            mode: 0o666,
            gid: None,
        };
        let _live = bind(&spec).unwrap();
        let e = bind(&spec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        let file = dir.path().join("f.sock");
        fs::write(&file, b"x").unwrap();
        let e = bind(&SocketSpec {
            path: file.clone(),
            mode: 0o666,
            gid: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(fs::read(&file).unwrap(), b"x", "the file is untouched");
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(group_id("0"), Ok(0));
        assert_eq!(group_id("root"), Ok(0));
        assert!(group_id("no-such-group-keyward").is_err());
    }
}
