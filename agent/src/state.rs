//! The agent's state directory: per virtual token, the argon2 hashes (PHC
//! strings) of the user and SO PINs and the label set by `C_InitToken`.
//!
//! Files are the source of truth and are read when needed, so a PIN set
//! with `keyward-agent set-pin` while the agent runs takes effect at once.
//! Every write is atomic: a temporary file (mode 0600) is written, synced
//! and renamed over the old one.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Shortest PIN accepted (`ulMinPinLen`).
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted (`ulMaxPinLen`).
pub const MAX_PIN_LEN: usize = 255;

/// Whose PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `CKU_USER`.
    User,
    /// `CKU_SO`.
    So,
}

impl Role {
    fn file(self) -> &'static str {
        match self {
            Role::User => "user-pin",
            Role::So => "so-pin",
        }
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens `root`, creating it with mode 0700 if missing.
    pub fn open(root: &Path) -> io::Result<StateDir> {
        DirBuilder::new().recursive(true).mode(0o700).create(root)?;
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    /// The state of the virtual token labelled `label`.
    pub fn token(&self, label: &str) -> TokenState {
        TokenState {
            dir: self.root.join(token_dir_name(label)),
        }
    }
}

/// A directory name for a label: readable when the label is made of safe
/// characters, hex otherwise; the two forms cannot collide.
fn token_dir_name(label: &str) -> String {
    let safe = label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if safe && !label.is_empty() {
        format!("token-{label}")
    } else {
        format!("tokenx-{}", crate::admin::hex(label.as_bytes()))
    }
}

/// One virtual token's stored state.
#[derive(Debug, Clone)]
pub struct TokenState {
    dir: PathBuf,
}

impl TokenState {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a PIN hash is stored for `role`.
    pub fn has_pin(&self, role: Role) -> bool {
        self.path(role.file()).exists()
    }

    /// The stored hash for `role`, if any.
    pub fn pin_hash(&self, role: Role) -> io::Result<Option<String>> {
        read_optional(&self.path(role.file()))
    }

    /// Checks `pin` against the stored hash: `Ok(None)` when no PIN is set.
    pub fn verify_pin(&self, role: Role, pin: &[u8]) -> io::Result<Option<bool>> {
        Ok(self
            .pin_hash(role)?
            .map(|h| verify_pin_hash(h.trim_end(), pin)))
    }

    /// Stores a fresh hash of `pin` for `role`.
    pub fn set_pin(&self, role: Role, pin: &[u8]) -> io::Result<()> {
        let phc = hash_pin(pin)?;
        self.write_atomic(role.file(), phc.as_bytes())
    }

    /// Removes `role`'s PIN.
    pub fn clear_pin(&self, role: Role) -> io::Result<()> {
        match fs::remove_file(self.path(role.file())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Wrong user PINs since the last right one (or unlock).
    pub fn pin_failures(&self) -> u32 {
        read_optional(&self.path("user-pin-failures"))
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Counts one more wrong user PIN; returns the new count. Durable before
    /// it returns, so a crash cannot give an attacker extra tries.
    pub fn record_pin_failure(&self) -> io::Result<u32> {
        let n = self.pin_failures().saturating_add(1);
        self.write_atomic("user-pin-failures", n.to_string().as_bytes())?;
        Ok(n)
    }

    /// Resets the wrong-PIN count (a right PIN, or `keyward pin unlock`).
    pub fn reset_pin_failures(&self) -> io::Result<()> {
        match fs::remove_file(self.path("user-pin-failures")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Notes, durably, that a key with this `CKA_ID` is being generated for
    /// the inventory: if the agent dies before the inventory records it,
    /// the next start destroys its objects.
    pub fn add_pending(&self, id_hex: &str) -> io::Result<()> {
        self.write_atomic(&format!("pending-{id_hex}"), b"")
    }

    /// The generation of `id_hex` ended (recorded, or undone).
    pub fn remove_pending(&self, id_hex: &str) -> io::Result<()> {
        match fs::remove_file(self.path(&format!("pending-{id_hex}"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every `CKA_ID` (hex) noted by [`TokenState::add_pending`].
    pub fn pending(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("pending-"))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The label set by `C_InitToken`, if any.
    pub fn label(&self) -> io::Result<Option<String>> {
        read_optional(&self.path("label"))
    }

    /// Stores the label given to `C_InitToken`.
    pub fn set_label(&self, label: &str) -> io::Result<()> {
        self.write_atomic("label", label.as_bytes())
    }

    fn write_atomic(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tmp = self.path(&format!(".{name}.tmp"));
        // A leftover from a crash is ours to replace.
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.path(name))?;
        // Make the rename itself durable.
        fs::File::open(&self.dir)?.sync_all()
    }
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// An argon2id PHC string for `pin` with a random salt.
pub fn hash_pin(pin: &[u8]) -> io::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(io::Error::other)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| io::Error::other(e.to_string()))?;
    Argon2::default()
        .hash_password(pin, &salt)
        .map(|h| h.to_string())
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Whether `pin` matches the PHC string `phc`; an unreadable hash matches
/// nothing.
pub fn verify_pin_hash(phc: &str, pin: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(pin, &h).is_ok(),
        Err(_) => false,
    }
}

/// Whether a PIN's length is within `MIN_PIN_LEN..=MAX_PIN_LEN`.
pub fn pin_len_ok(pin: &[u8]) -> bool {
    (MIN_PIN_LEN..=MAX_PIN_LEN).contains(&pin.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pins_are_hashed_salted_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let state = StateDir::open(&root).unwrap();
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let t = state.token("keyward");
        assert!(!t.has_pin(Role::User));
        assert_eq!(t.verify_pin(Role::User, b"1234").unwrap(), None);

        t.set_pin(Role::User, b"1234").unwrap();
        let phc = t.pin_hash(Role::User).unwrap().unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("1234"));
        assert_eq!(t.verify_pin(Role::User, b"1234").unwrap(), Some(true));
        assert_eq!(t.verify_pin(Role::User, b"12345").unwrap(), Some(false));
        assert_eq!(t.verify_pin(Role::So, b"1234").unwrap(), None);

        let file = root.join("token-keyward").join("user-pin");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Same PIN again: a new salt, a different hash, still verifies.
        t.set_pin(Role::User, b"1234").unwrap();
        assert_ne!(t.pin_hash(Role::User).unwrap().unwrap(), phc);
        assert_eq!(t.verify_pin(Role::User, b"1234").unwrap(), Some(true));

        t.clear_pin(Role::User).unwrap();
        t.clear_pin(Role::User).unwrap();
        assert!(!t.has_pin(Role::User));
    }

    #[test]
    fn labels_and_directory_names() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let t = state.token("a/b c");
        assert_eq!(t.label().unwrap(), None);
        t.set_label("new label").unwrap();
        assert_eq!(t.label().unwrap().as_deref(), Some("new label"));
        assert!(dir.path().join("tokenx-612f622063").is_dir());
        assert_eq!(token_dir_name("kw.1_x-y"), "token-kw.1_x-y");
    }

    #[test]
    fn garbage_hash_matches_nothing() {
        assert!(!verify_pin_hash("not a phc string", b"1234"));
        assert!(pin_len_ok(b"1234"));
        assert!(!pin_len_ok(b"123"));
        assert!(!pin_len_ok(&[b'1'; 256]));
    }
}
