//! Who is on the other end of a connection: `SO_PEERCRED` (uid, gid, pid),
//! the process start time from `/proc/<pid>/stat` (so that a reused pid is a
//! new client) and the executable from `/proc/<pid>/exe`.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

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
        Ok(Peer {
            key: ClientKey {
                pid,
                start_time: start_time(pid).unwrap_or(0),
            },
            uid: cred.uid(),
            gid: cred.gid(),
            exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
        })
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
