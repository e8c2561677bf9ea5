//! The agent's state directory: per virtual token, the argon2 hashes (PHC
//! strings) of the user and SO PINs (and, on a shared token in strict mode,
//! of each application's own user PIN), their wrong-PIN counts, and the label
//! set by `C_InitToken`.
//!
//! Files are the source of truth and are read when needed, so a PIN set
//! with `keyward-agent set-pin` while the agent runs takes effect at once.
//! Every write is atomic: a temporary file (mode 0600, a name of its own per
//! write) is written, synced and renamed over the old one, and the directory
//! is synced.
//!
//! A PIN check ([`TokenState::check_pin`]) counts the attempt first, under
//! that PIN's lock and durably, and only then compares the PIN: a burst of
//! parallel attempts compares no more PINs than the lockout allows, a crash
//! cannot hand out extra tries, and an attempt that cannot be counted is
//! compared with nothing (fail closed). Attempts still being compared are
//! not taken for wrong ones: at most [`MAX_CONCURRENT_HASHES`] of one PIN
//! are counted and not yet compared, so that parallel logins with the right
//! PIN never lock it, and a crash costs at most that many tries. At most [`MAX_CONCURRENT_HASHES`]
//! argon2 computations run at once in the process (each takes 19 MiB).

use std::collections::HashMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Shortest PIN accepted (`ulMinPinLen`).
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted (`ulMaxPinLen`).
pub const MAX_PIN_LEN: usize = 255;
/// Argon2 computations (PIN checks and new hashes) that may run at once in
/// the process; more wait their turn.
pub const MAX_CONCURRENT_HASHES: usize = 2;

/// Whose PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `CKU_USER`.
    User,
    /// `CKU_SO`.
    So,
}

/// One PIN of a token: the SO PIN, the token's user PIN, or the user PIN
/// of one application on a shared token. Each has its own wrong-PIN count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRef<'a> {
    role: Role,
    app: Option<&'a str>,
}

impl From<Role> for PinRef<'static> {
    fn from(role: Role) -> PinRef<'static> {
        PinRef { role, app: None }
    }
}

impl<'a> PinRef<'a> {
    /// The user PIN of application `app` (its own, else the token's).
    pub fn app(app: &'a str) -> PinRef<'a> {
        PinRef {
            role: Role::User,
            app: Some(app),
        }
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The application, for an application's user PIN.
    pub fn application(&self) -> Option<&'a str> {
        self.app
    }

    /// The file of its hash.
    fn file(&self) -> String {
        match (self.role, self.app) {
            (Role::So, _) => "so-pin".to_owned(),
            (Role::User, None) => "user-pin".to_owned(),
            (Role::User, Some(app)) => format!("{}-user-pin", safe_name("app", app)),
        }
    }

    /// The file of its wrong-PIN count.
    fn failures_file(&self) -> String {
        format!("{}-failures", self.file())
    }
}

impl std::fmt::Display for PinRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.role, self.app) {
            (Role::So, _) => f.write_str("SO PIN"),
            (Role::User, None) => f.write_str("user PIN"),
            (Role::User, Some(app)) => write!(f, "user PIN of application {app:?}"),
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
            locks: Arc::default(),
        }
    }
}

/// A directory name for a label: readable when the label is made of safe
/// characters, hex otherwise; the two forms cannot collide.
fn token_dir_name(label: &str) -> String {
    safe_name("token", label)
}

/// `{prefix}-{name}` when `name` is made of safe characters,
/// `{prefix}x-{hex}` otherwise; the two forms cannot collide.
fn safe_name(prefix: &str, name: &str) -> String {
    let safe = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if safe && !name.is_empty() {
        format!("{prefix}-{name}")
    } else {
        format!("{prefix}x-{}", hex::encode(name.as_bytes()))
    }
}

/// The outcome of [`TokenState::check_pin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// No PIN is stored: nothing was counted or compared.
    NotSet,
    /// The count had reached the lockout: nothing was compared. The count.
    Locked(u32),
    /// Wrong: the attempt stays counted. The count.
    Wrong(u32),
    /// Right: the count is reset.
    Right,
}

/// One virtual token's stored state.
#[derive(Debug, Clone)]
pub struct TokenState {
    dir: PathBuf,
    /// One lock per wrong-PIN count (by file name): a count is read,
    /// changed and written under it.
    locks: Arc<Mutex<HashMap<String, Arc<CountLock>>>>,
}

/// The lock of one wrong-PIN count, with the attempts of this process
/// counted on disk and still being compared.
#[derive(Debug, Default)]
struct CountLock {
    in_flight: Mutex<u32>,
    /// Signalled when an attempt's comparison ends.
    settled: Condvar,
}

impl CountLock {
    fn lock(&self) -> MutexGuard<'_, u32> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An attempt counted and being compared; leaving the comparison (however
/// it ends) lets the next attempt in.
struct InFlight<'a>(Option<&'a CountLock>);

impl InFlight<'_> {
    /// Ends the attempt under `held`, the count's lock already taken (so
    /// that the count written under it and the attempts still in flight
    /// agree).
    fn end(mut self, held: &mut MutexGuard<'_, u32>) {
        if let Some(lock) = self.0.take() {
            **held = held.saturating_sub(1);
            lock.settled.notify_all();
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(lock) = self.0.take() {
            let mut n = lock.lock();
            *n = n.saturating_sub(1);
            lock.settled.notify_all();
        }
    }
}

impl TokenState {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The lock of `pin`'s wrong-PIN count.
    fn count_lock(&self, pin: PinRef<'_>) -> Arc<CountLock> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(pin.failures_file()).or_default().clone()
    }

    /// Whether a PIN hash is stored for `pin` (for an application: its own
    /// or the token's user PIN).
    pub fn has_pin<'a>(&self, pin: impl Into<PinRef<'a>>) -> bool {
        matches!(self.pin_hash(pin), Ok(Some(_)))
    }

    /// Whether application `app` has a user PIN of its own.
    pub fn has_own_app_pin(&self, app: &str) -> bool {
        self.path(&PinRef::app(app).file()).exists()
    }

    /// The stored hash for `pin`, if any. An application without a PIN of
    /// its own has the token's user PIN.
    pub fn pin_hash<'a>(&self, pin: impl Into<PinRef<'a>>) -> io::Result<Option<String>> {
        let pin = pin.into();
        match read_optional(&self.path(&pin.file()))? {
            None if pin.app.is_some() => {
                read_optional(&self.path(&PinRef::from(Role::User).file()))
            }
            found => Ok(found),
        }
    }

    /// Checks `pin` against the stored hash without counting: `Ok(None)`
    /// when no PIN is set. The agent uses [`TokenState::check_pin`].
    #[cfg(test)]
    pub fn verify_pin<'a>(
        &self,
        pin: impl Into<PinRef<'a>>,
        candidate: &[u8],
    ) -> io::Result<Option<bool>> {
        Ok(self
            .pin_hash(pin)?
            .map(|h| verify_pin_hash(h.trim_end(), candidate)))
    }

    /// Checks `candidate` against `pin`, counting the attempt first.
    ///
    /// Under `pin`'s lock: the count is read; when `locked(count)` says the
    /// PIN is locked, nothing is compared ([`PinCheck::Locked`]); otherwise
    /// the count plus one is written durably, the lock released, and only
    /// then is the PIN compared (at most [`MAX_CONCURRENT_HASHES`] at once).
    /// A right PIN resets the count. Any error reading or writing the count
    /// is returned before anything is compared.
    ///
    /// Attempts counted and still being compared are not failures yet: the
    /// lockout is decided on the count without them, and an attempt that
    /// could reach the lockout only if they all turned out wrong waits for
    /// them. At most [`MAX_CONCURRENT_HASHES`] attempts of one PIN are
    /// counted and not yet compared at any moment, so that a crash (which
    /// leaves them counted) costs at most that many tries: parallel logins
    /// with the right PIN (many threads, or processes after an agent
    /// restart) never lock an application out, and never more PINs are
    /// compared than the lockout allows.
    pub fn check_pin<'a>(
        &self,
        pin: impl Into<PinRef<'a>>,
        candidate: &[u8],
        mut locked: impl FnMut(u32) -> bool,
    ) -> io::Result<PinCheck> {
        let pin = pin.into();
        let Some(hash) = self.pin_hash(pin)? else {
            return Ok(PinCheck::NotSet);
        };
        let lock = self.count_lock(pin);
        let (count, attempt) = {
            let mut in_flight = lock.lock();
            loop {
                let n = self.failures(pin)?;
                let failed = n.saturating_sub(*in_flight);
                if locked(failed) {
                    return Ok(PinCheck::Locked(failed));
                }
                let room = (*in_flight as usize) < MAX_CONCURRENT_HASHES && !locked(n);
                if *in_flight == 0 || room {
                    let n = n.saturating_add(1);
                    self.write_atomic(&pin.failures_file(), n.to_string().as_bytes())?;
                    *in_flight += 1;
                    break (n, InFlight(Some(&lock)));
                }
                in_flight = lock
                    .settled
                    .wait(in_flight)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        if verify_pin_hash(hash.trim_end(), candidate) {
            // Not synced: a reset a crash loses leaves the count higher,
            // which errs on the safe side. Attempts of others still being
            // compared stay counted.
            let mut held = lock.lock();
            attempt.end(&mut held);
            let others = *held;
            if others == 0 {
                match fs::remove_file(self.path(&pin.failures_file())) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            } else {
                self.write_atomic(&pin.failures_file(), others.to_string().as_bytes())?;
            }
            drop(held);
            Ok(PinCheck::Right)
        } else {
            // The attempt stays counted: a failure now.
            drop(attempt);
            Ok(PinCheck::Wrong(count))
        }
    }

    /// Stores a fresh hash of `new` for `pin` and resets its count.
    pub fn set_pin<'a>(&self, pin: impl Into<PinRef<'a>>, new: &[u8]) -> io::Result<()> {
        let pin = pin.into();
        let phc = hash_pin(new)?;
        self.write_atomic(&pin.file(), phc.as_bytes())?;
        self.reset_failures(pin)
    }

    /// Removes `pin`'s own hash (an application then has the token's).
    pub fn clear_pin<'a>(&self, pin: impl Into<PinRef<'a>>) -> io::Result<()> {
        self.remove(&pin.into().file())
    }

    /// Removes the token's user PIN and every application's, with their
    /// counts (`C_InitToken`).
    pub fn clear_user_pins(&self) -> io::Result<()> {
        self.remove(&PinRef::from(Role::User).file())?;
        for name in self.names()? {
            if (name.starts_with("app-") || name.starts_with("appx-"))
                && name.ends_with("-user-pin")
            {
                self.remove(&name)?;
            }
        }
        self.reset_all_failures().map(|_| ())
    }

    /// Wrong PINs of `pin` since the last right one (or unlock). An
    /// unreadable count is an error, never zero.
    pub fn failures<'a>(&self, pin: impl Into<PinRef<'a>>) -> io::Result<u32> {
        match read_optional(&self.path(&pin.into().failures_file()))? {
            None => Ok(0),
            Some(s) => s.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the wrong-PIN count is not a number",
                )
            }),
        }
    }

    /// Resets `pin`'s wrong-PIN count (a right PIN, a new PIN, or `keyward
    /// pin unlock`), durably.
    pub fn reset_failures<'a>(&self, pin: impl Into<PinRef<'a>>) -> io::Result<()> {
        let pin = pin.into();
        let lock = self.count_lock(pin);
        let _held = lock.lock();
        self.remove(&pin.failures_file())
    }

    /// Resets every wrong-PIN count of the token (user, SO, every
    /// application's); returns how many counts were not zero.
    pub fn reset_all_failures(&self) -> io::Result<usize> {
        let mut reset = 0;
        for name in self.names()? {
            if name.ends_with("-pin-failures") && !name.starts_with('.') {
                let lock = {
                    let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
                    locks.entry(name.clone()).or_default().clone()
                };
                let _held = lock.lock();
                self.remove(&name)?;
                reset += 1;
            }
        }
        Ok(reset)
    }

    /// The names in the token's directory (none when it does not exist).
    fn names(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for e in entries {
            if let Some(n) = e?.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        Ok(names)
    }

    /// Removes file `name` durably; a missing file is fine.
    fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path(name)) {
            Ok(()) => fs::File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes temporary files a crash left behind (at the agent's start).
    pub fn remove_stale_temporaries(&self) {
        for name in self.names().unwrap_or_default() {
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(self.path(&name));
            }
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

    /// Keeps the export file of approval request `id` (hex), mode 0600.
    pub(crate) fn write_export(&self, id: &str, file: &[u8]) -> io::Result<()> {
        self.write_atomic(&export_name(id)?, file)
    }

    /// The export file of approval request `id`, if kept.
    pub(crate) fn read_export(&self, id: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(&export_name(id)?)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The label set by `C_InitToken`, if any.
    pub fn label(&self) -> io::Result<Option<String>> {
        read_optional(&self.path("label"))
    }

    /// Stores the label given to `C_InitToken`.
    pub fn set_label(&self, label: &str) -> io::Result<()> {
        self.write_atomic("label", label.as_bytes())
    }

    /// A file of the token's state (`backup-ceremony`, `restore-ID`):
    /// `None` when absent.
    pub fn read_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a file of the token's state atomically, mode 0600.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        self.write_atomic(name, contents)
    }

    /// Removes a file of the token's state (absent is fine).
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn write_atomic(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // A name of its own per write: concurrent writers never share a
        // temporary file.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.path(&format!(".{name}.{}.{seq}.tmp", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let written = f.write_all(contents).and_then(|()| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, self.path(name))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Make the rename itself durable.
        fs::File::open(&self.dir)?.sync_all()
    }
}

/// The file name of request `id`'s export: ids are hex, nothing else
/// names a file.
fn export_name(id: &str) -> io::Result<String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a request id is hex",
        ));
    }
    Ok(format!("export-{id}"))
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The argon2 computations running at once, and the memory they use: at
/// most [`MAX_CONCURRENT_HASHES`] buffers, each lent to one computation at
/// a time and kept for the next, so that the memory PIN checks take is
/// bounded whatever the number of threads (a fresh buffer per check would
/// be kept by the allocator per thread arena).
struct Gate {
    pool: Mutex<Pool>,
    freed: Condvar,
}

struct Pool {
    busy: usize,
    buffers: Vec<Vec<Block>>,
}

/// The process's argon2 gate.
static HASHES: Gate = Gate {
    pool: Mutex::new(Pool {
        busy: 0,
        buffers: Vec::new(),
    }),
    freed: Condvar::new(),
};

/// A turn at the gate with its memory, given back (wiped) when dropped,
/// even by a panic.
struct Turn {
    blocks: Vec<Block>,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Pool> {
        // A count and spare buffers: consistent even after a panic.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a turn; its buffer holds `blocks` blocks.
    fn enter(&'static self, blocks: usize) -> Turn {
        let mut pool = self.lock();
        while pool.busy >= MAX_CONCURRENT_HASHES {
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
        pool.busy += 1;
        let mut buffer = pool.buffers.pop().unwrap_or_default();
        drop(pool);
        if buffer.len() != blocks {
            buffer = vec![Block::default(); blocks];
        }
        Turn { blocks: buffer }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The memory held values derived from a PIN.
        let mut blocks = std::mem::take(&mut self.blocks);
        blocks.fill(Block::default());
        let mut pool = HASHES.lock();
        pool.busy -= 1;
        pool.buffers.push(blocks);
        drop(pool);
        HASHES.freed.notify_one();
    }
}

/// The most memory (1 KiB blocks) a stored hash may ask a check for: 64
/// MiB, three times the default's. A hash asking for more matches nothing.
const MAX_HASH_BLOCKS: usize = 64 * 1024;

/// Runs `argon2` over `pin` and `salt` into `out`, with the gate's memory.
fn argon2_into(argon2: &Argon2<'_>, pin: &[u8], salt: &[u8], out: &mut [u8]) -> argon2::Result<()> {
    let blocks = argon2.params().block_count();
    if blocks > MAX_HASH_BLOCKS {
        return Err(argon2::Error::MemoryTooMuch);
    }
    let mut turn = HASHES.enter(blocks);
    argon2.hash_password_into_with_memory(pin, salt, out, &mut turn.blocks[..])
}

/// The argon2 of new PIN hashes: the crate's defaults.
#[cfg(not(all(fuzzing, feature = "fuzzing")))]
fn new_pin_hasher() -> Argon2<'static> {
    Argon2::default()
}

/// Only in a fuzz target's build (cargo-fuzz's `--cfg fuzzing` and the
/// crate's `fuzzing` feature, never a build of the agent): the smallest
/// parameters, so that an input that sets a PIN costs microseconds. A
/// check reads the parameters from the stored hash either way.
#[cfg(all(fuzzing, feature = "fuzzing"))]
fn new_pin_hasher() -> Argon2<'static> {
    let params = Params::new(Params::MIN_M_COST, 1, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// An argon2id PHC string for `pin` with a random salt (the crate's default
/// parameters).
pub fn hash_pin(pin: &[u8]) -> io::Result<String> {
    let err = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(io::Error::other)?;
    let salt_b64 = SaltString::encode_b64(&salt).map_err(|e| err(&e))?;
    let argon2 = new_pin_hasher();
    let mut out = zeroize::Zeroizing::new([0u8; Params::DEFAULT_OUTPUT_LEN]);
    argon2_into(&argon2, pin, &salt, &mut out[..]).map_err(|e| err(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(argon2.params()).map_err(|e| err(&e))?,
        salt: Some(salt_b64.as_salt()),
        hash: Some(Output::new(&out[..]).map_err(|e| err(&e))?),
    };
    Ok(hash.to_string())
}

/// Whether `pin` matches the PHC string `phc` (what `verify_password`
/// does, with the gate's memory); an unreadable hash matches nothing.
pub fn verify_pin_hash(phc: &str, pin: &[u8]) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(h.algorithm) else {
        return false;
    };
    let Ok(version) = h.version.map_or(Ok(Version::default()), Version::try_from) else {
        return false;
    };
    let Ok(params) = Params::try_from(&h) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = zeroize::Zeroizing::new(vec![0u8; expected.len()]);
    if argon2_into(&argon2, pin, salt, &mut out).is_err() {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|o| o == expected)
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

    /// A token with user PIN 1234 and SO PIN 5678 in a fresh directory.
    fn token_with_pins() -> (tempfile::TempDir, TokenState) {
        let dir = tempfile::tempdir().unwrap();
        let t = StateDir::open(dir.path()).unwrap().token("kw");
        t.set_pin(Role::User, b"1234").unwrap();
        t.set_pin(Role::So, b"5678").unwrap();
        (dir, t)
    }

    #[test]
    fn parallel_attempts_compare_at_most_the_limit() {
        let (_dir, t) = token_with_pins();
        let results: Vec<PinCheck> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..24)
                .map(|_| scope.spawn(|| t.check_pin(Role::User, b"0000", |n| n >= 3).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wrong = results
            .iter()
            .filter(|r| matches!(r, PinCheck::Wrong(_)))
            .count();
        let locked = results
            .iter()
            .filter(|r| matches!(r, PinCheck::Locked(3)))
            .count();
        assert_eq!((wrong, locked), (3, 21), "{results:?}");
        assert_eq!(t.failures(Role::User).unwrap(), 3);
        // Locked: even the right PIN is not compared.
        assert_eq!(
            t.check_pin(Role::User, b"1234", |n| n >= 3).unwrap(),
            PinCheck::Locked(3)
        );
        // The SO PIN has a count of its own.
        assert_eq!(t.failures(Role::So).unwrap(), 0);
        assert_eq!(
            t.check_pin(Role::So, b"5678", |n| n >= 3).unwrap(),
            PinCheck::Right
        );
        assert_eq!(t.reset_all_failures().unwrap(), 1);
        assert_eq!(
            t.check_pin(Role::User, b"1234", |n| n >= 3).unwrap(),
            PinCheck::Right
        );
    }

    #[test]
    fn parallel_right_pins_are_never_locked_out() {
        // Twelve threads of one application log in at once (as after an
        // agent restart): every right PIN is a success, none is taken
        // for a wrong one because others were still being compared.
        let (_dir, t) = token_with_pins();
        let results: Vec<PinCheck> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..12)
                .map(|_| scope.spawn(|| t.check_pin(Role::User, b"1234", |n| n >= 3).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| *r == PinCheck::Right), "{results:?}");
        assert_eq!(t.failures(Role::User).unwrap(), 0);
    }

    #[test]
    fn a_crash_during_a_burst_of_right_pins_leaves_at_most_the_attempts_being_compared() {
        // What a SIGKILL would leave on disk at any moment of a burst of
        // right PINs: the attempts counted and not yet compared. Never
        // more than the comparisons that can run at once, so a crash
        // never locks an application out that gave only right PINs.
        let (dir, t) = token_with_pins();
        let count_file = dir.path().join("token-kw").join("user-pin-failures");
        let done = std::sync::atomic::AtomicBool::new(false);
        let highest = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut highest = 0u32;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(s) = fs::read_to_string(&count_file) {
                        highest = highest.max(s.trim().parse().unwrap_or(0));
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                highest
            });
            let handles: Vec<_> = (0..12)
                .map(|_| scope.spawn(|| t.check_pin(Role::User, b"1234", |n| n >= 10).unwrap()))
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), PinCheck::Right);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            watcher.join().unwrap()
        });
        assert!(
            highest as usize <= MAX_CONCURRENT_HASHES,
            "{highest} attempts counted at once, more than the {MAX_CONCURRENT_HASHES} compared at once"
        );
    }

    #[test]
    fn an_attempt_is_counted_before_the_check_and_a_right_pin_resets() {
        let (dir, t) = token_with_pins();
        let count_file = dir.path().join("token-kw").join("user-pin-failures");
        assert_eq!(
            t.check_pin(Role::User, b"0000", |_| false).unwrap(),
            PinCheck::Wrong(1)
        );
        assert_eq!(fs::read_to_string(&count_file).unwrap(), "1");
        assert_eq!(
            fs::metadata(&count_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The decision sees the count before this attempt.
        let mut seen = None;
        t.check_pin(Role::User, b"0000", |n| {
            seen = Some(n);
            false
        })
        .unwrap();
        assert_eq!(seen, Some(1));
        assert_eq!(
            t.check_pin(Role::User, b"1234", |_| false).unwrap(),
            PinCheck::Right
        );
        assert!(!count_file.exists());
        // No PIN: nothing counted.
        t.clear_pin(Role::User).unwrap();
        assert_eq!(
            t.check_pin(Role::User, b"1234", |_| false).unwrap(),
            PinCheck::NotSet
        );
        assert_eq!(t.failures(Role::User).unwrap(), 0);
        // No temporary file is left behind.
        let names = t.names().unwrap();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn an_attempt_that_cannot_be_counted_is_not_checked() {
        let (dir, t) = token_with_pins();
        // Root ignores file modes: a directory where the count belongs
        // makes its write fail for anyone.
        let count_file = dir.path().join("token-kw").join("user-pin-failures");
        fs::create_dir(&count_file).unwrap();
        fs::write(count_file.join("keep"), b"").unwrap();
        for pin in [&b"1234"[..], b"0000"] {
            let mut asked = false;
            let r = t.check_pin(Role::User, pin, |_| {
                asked = true;
                false
            });
            assert!(r.is_err(), "{r:?}");
            assert!(!asked, "nothing is decided on an unreadable count");
        }
        // A count that is not a number is no count either.
        fs::write(
            dir.path().join("token-kw").join("so-pin-failures"),
            b"garbage",
        )
        .unwrap();
        assert!(t.check_pin(Role::So, b"5678", |_| false).is_err());
        assert!(t.failures(Role::So).is_err());
    }

    #[test]
    fn applications_have_their_own_pins_and_counts() {
        let (dir, t) = token_with_pins();
        let (a, b) = (PinRef::app("app-a"), PinRef::app("b c/d"));
        // Without a PIN of its own, an application has the token's.
        assert!(t.has_pin(a) && !t.has_own_app_pin("app-a"));
        assert_eq!(t.check_pin(a, b"1234", |_| false).unwrap(), PinCheck::Right);
        t.set_pin(b, b"9999").unwrap();
        assert!(t.has_own_app_pin("b c/d"));
        assert!(dir
            .path()
            .join("token-kw")
            .join("appx-6220632f64-user-pin")
            .is_file());
        assert_eq!(
            t.check_pin(b, b"1234", |_| false).unwrap(),
            PinCheck::Wrong(1)
        );
        assert_eq!(t.check_pin(b, b"9999", |_| false).unwrap(), PinCheck::Right);
        // Counts are separate.
        for _ in 0..3 {
            t.check_pin(a, b"0000", |n| n >= 3).unwrap();
        }
        assert_eq!(
            t.check_pin(a, b"1234", |n| n >= 3).unwrap(),
            PinCheck::Locked(3)
        );
        assert_eq!(
            t.check_pin(b, b"9999", |n| n >= 3).unwrap(),
            PinCheck::Right
        );
        assert_eq!(
            t.check_pin(Role::User, b"1234", |n| n >= 3).unwrap(),
            PinCheck::Right
        );
        t.reset_failures(a).unwrap();
        assert_eq!(t.failures(a).unwrap(), 0);
        // C_InitToken: every user PIN goes, the SO PIN stays.
        t.clear_user_pins().unwrap();
        assert!(!t.has_pin(a) && !t.has_pin(b) && !t.has_pin(Role::User));
        assert!(t.has_pin(Role::So));
    }

    #[test]
    fn concurrent_writes_do_not_collide() {
        let (_dir, t) = token_with_pins();
        std::thread::scope(|scope| {
            for i in 0..8 {
                let t = &t;
                scope.spawn(move || {
                    for _ in 0..20 {
                        t.set_label(&format!("label {i}")).unwrap();
                    }
                });
            }
        });
        assert!(t.label().unwrap().unwrap().starts_with("label "));
    }

    #[test]
    fn hashes_are_the_argon2_crate_s_phc_strings() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Made by the crate, checked here (hashes stored before).
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"1234", &salt)
            .unwrap()
            .to_string();
        assert!(verify_pin_hash(&theirs, b"1234"));
        assert!(!verify_pin_hash(&theirs, b"1235"));
        // Made here, checked by the crate.
        let ours = hash_pin(b"1234").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"1234", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"4321", &parsed).is_err());
        assert_eq!(parsed.params, PasswordHash::new(&theirs).unwrap().params);
    }

    #[test]
    fn garbage_hash_matches_nothing() {
        assert!(!verify_pin_hash("not a phc string", b"1234"));
        // A hash asking for 4 GiB is not computed.
        let greedy = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4 * 1024 * 1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(0x13),
            params: ParamsString::try_from(greedy.params()).unwrap(),
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&[7u8; 32]).unwrap()),
        }
        .to_string();
        assert!(!verify_pin_hash(&phc, b"1234"));
        assert!(pin_len_ok(b"1234"));
        assert!(!pin_len_ok(b"123"));
        assert!(!pin_len_ok(&[b'1'; 256]));
    }
}
