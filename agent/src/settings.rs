//! The values configuration tables share, with no table of their own: a
//! reference to a secret, a TCP address to listen on, and the check a
//! file holding a secret must pass. Every table's module imports them
//! from here, and this file imports none of them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

/// A TCP address written as `"IP:PORT"` (`"127.0.0.1:9466"`, `"[::1]:9466"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(ListenAddr).map_err(|_| {
            serde::de::Error::custom(format!(
                "listen = {s:?}: not an IP address and port like \"127.0.0.1:9466\" or \"[::1]:9466\""
            ))
        })
    }
}

/// A reference to a secret: `file:PATH` (its first line) or `env:NAME`.
/// The reference is not secret; the value it leads to is.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// The first line of a file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
            SecretRef::Env(n) => write!(f, "env:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(SecretRef::File(PathBuf::from(p)))
        } else if let Some(n) = s.strip_prefix("env:").filter(|n| !n.is_empty()) {
            Ok(SecretRef::Env(n.to_owned()))
        } else {
            // Never echo the value: someone may have put the PIN itself here.
            Err(serde::de::Error::custom(
                "a secret must be given as \"file:PATH\" or \"env:NAME\", never inline",
            ))
        }
    }
}

impl SecretRef {
    /// Reads the secret. Errors name the reference, never the value.
    pub fn read(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        match self {
            SecretRef::File(p) => {
                let all = Zeroizing::new(
                    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
                );
                let line = all.split(|&b| b == b'\n').next().unwrap_or(&[]);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    return Err(format!("{} has an empty first line", p.display()));
                }
                Ok(Zeroizing::new(line.to_vec()))
            }
            SecretRef::Env(n) => match std::env::var_os(n) {
                Some(v) if !v.is_empty() => {
                    use std::os::unix::ffi::OsStringExt;
                    Ok(Zeroizing::new(v.into_vec()))
                }
                _ => Err(format!("environment variable {n} is not set or empty")),
            },
        }
    }
}

/// A file the agent reads a secret from (a token, a private key) must be
/// a regular file owned by the agent's user and closed to others (mode
/// 0600 or 0400); checked before it is read. `what` names the setting.
pub fn check_private_file(what: &str, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    let uid = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid || mode & 0o077 != 0 {
        return Err(format!(
            "{what} {}: must be owned by the agent's user (uid {uid}) with mode 0600 or 0400; \
             it is owned by uid {} with mode {mode:04o}",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}
