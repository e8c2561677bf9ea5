//! Who is on the other end of a connection: `SO_PEERCRED` (uid, gid, pid),
//! the process start time from `/proc/<pid>/stat` (so that a reused pid is a
//! new client), the executable from `/proc/<pid>/exe` (its path, and the
//! device and inode of the file it runs) and whether the process lives in
//! the agent's own mount namespace.
//!
//! The peer is identified once, at `accept`; [`CredStream`] then checks the
//! sender of every byte that arrives (`SCM_CREDENTIALS`, with `SO_PASSCRED`
//! on the listener), so a connection handed to another process — a forked
//! child, a descriptor passed over a socket — stops being served at its
//! first message from the newcomer.

use std::fmt;
use std::io::{self, IoSliceMut, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    getsockopt, recvmsg, setsockopt, sockopt::PassCred, sockopt::PeerCredentials,
    ControlMessageOwned, MsgFlags, UnixAddr,
};

/// The key of a client's state: one process, for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The process id.
    pub pid: i32,
    /// Its start time in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`); 0 when it could not be read.
    pub start_time: u64,
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The process.
    pub key: ClientKey,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// Its executable, when readable.
    pub exe: Option<PathBuf>,
    /// The device and inode of the file the process runs (`stat` of
    /// `/proc/<pid>/exe`), when readable: a path can be bind-mounted over
    /// in another mount namespace, the file it names cannot be faked.
    pub exe_id: Option<FileId>,
    /// Whether the process is in another mount namespace than the agent
    /// (`false` when that cannot be read).
    pub foreign_mounts: bool,
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path` (symbolic links followed).
    pub fn of(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} uid {} gid {} exe {}",
            self.key.pid,
            self.uid,
            self.gid,
            self.exe
                .as_deref()
                .map_or_else(|| "?".into(), |p| p.display().to_string())
        )
    }
}

impl Peer {
    /// The peer of `stream`, from the kernel's credentials.
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)?;
        let pid = cred.pid();
        let exe_link = format!("/proc/{pid}/exe");
        Ok(Peer {
            key: ClientKey {
                pid,
                start_time: start_time(pid).unwrap_or(0),
            },
            uid: cred.uid(),
            gid: cred.gid(),
            exe: std::fs::read_link(&exe_link).ok(),
            exe_id: FileId::of(Path::new(&exe_link)),
            foreign_mounts: foreign_mounts(pid),
        })
    }

    /// Whether the peer runs the very file at `path` (same device and
    /// inode), not merely a file that its mount namespace shows there.
    pub fn runs(&self, path: &Path) -> bool {
        self.exe_id.is_some() && self.exe_id == FileId::of(path)
    }
}

/// Whether process `pid` is in another mount namespace than this one; `false`
/// when either cannot be read.
fn foreign_mounts(pid: i32) -> bool {
    let ns = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (ns("/proc/self/ns/mnt"), ns(&format!("/proc/{pid}/ns/mnt"))) {
        (Some(own), Some(theirs)) => own != theirs,
        _ => false,
    }
}

/// The supplementary groups of process `pid` (`Groups:` of its status).
pub fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Asks the kernel to attach the sender's credentials to every message on
/// the connections `listener` accepts (they inherit `SO_PASSCRED`), also to
/// messages sent before the connection was accepted.
pub fn pass_credentials(listener: &std::os::unix::net::UnixListener) -> io::Result<()> {
    setsockopt(listener, PassCred, &true).map_err(io::Error::from)
}

/// A connection's reading side that checks who sent each chunk it reads.
///
/// The kernel never returns bytes of two senders in one read of a socket
/// with `SO_PASSCRED`, and attaches each sender's pid (which an unprivileged
/// sender cannot forge). A chunk from another process than the one that
/// connected, or without credentials, marks the stream [`CredStream::intruder`]:
/// the server stops serving the connection before it decodes the frame.
#[derive(Debug)]
pub struct CredStream<'a> {
    stream: &'a UnixStream,
    pid: i32,
    cmsg: Vec<u8>,
    intruder: Option<i32>,
}

impl<'a> CredStream<'a> {
    /// Reads `stream`, whose peer process is `pid`.
    pub fn new(stream: &'a UnixStream, pid: i32) -> Self {
        CredStream {
            stream,
            pid,
            cmsg: nix::cmsg_space!(nix::sys::socket::UnixCredentials),
            intruder: None,
        }
    }

    /// The pid of the first other sender seen (`Some(0)`: a chunk without
    /// credentials), if any.
    pub fn intruder(&self) -> Option<i32> {
        self.intruder
    }
}

impl Read for CredStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<UnixAddr>(
            self.stream.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let n = msg.bytes;
        if n > 0 {
            let sender = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
                    _ => None,
                })
            });
            if sender != Some(self.pid) && self.intruder.is_none() {
                self.intruder = Some(sender.unwrap_or(0));
            }
        }
        Ok(n)
    }
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted after the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); field 22 is the 20th after it.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Peer {
    /// Who this peer is in the audit trail as a client process, named as
    /// the policy matched it.
    pub fn as_application(&self, application: &str) -> keyward_inventory::Actor {
        keyward_inventory::Actor::Application {
            name: application.to_owned(),
            uid: self.uid,
            gid: self.gid,
            pid: self.key.pid.unsigned_abs(),
            exe: self.exe_name(),
        }
    }

    /// Who this peer is in the audit trail as an administrator on the
    /// admin socket.
    pub fn as_administrator(&self) -> keyward_inventory::Actor {
        keyward_inventory::Actor::Administrator {
            uid: self.uid,
            pid: self.key.pid.unsigned_abs(),
            exe: self.exe_name(),
        }
    }

    fn exe_name(&self) -> String {
        self.exe
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    12345678 100 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_process_is_identified() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.key.pid, std::process::id() as i32);
        assert_ne!(peer.key.start_time, 0);
        assert_eq!(peer.key.start_time, start_time(peer.key.pid).unwrap());
        assert!(peer.exe.is_some());
    }
}
