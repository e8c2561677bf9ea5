//! Backends that could not be opened at start, tried again until they open.
//!
//! A token whose backend fails at start (the library does not initialise,
//! the backend token is absent, the login fails) shows an empty slot. One
//! thread tries each such backend again, after 1 s, then twice as long
//! each time up to [`LONGEST`], for as long as the agent runs; when a
//! backend opens, the token gets it (one write of a set-once cell, so
//! requests read it with one atomic load and take no lock for this), the
//! audit key and backup objects are looked for on it, and the thread ends
//! once every token has its backend. The outage was logged once at start;
//! the return is logged once.
//!
//! A library no token holds any more is loaded and initialised afresh on
//! each try (so a library that reads its tokens at `C_Initialize`, as
//! SoftHSM2 does, sees a token created or restored meanwhile); a library
//! another token holds open is reused, never initialised a second time or
//! finalised under that token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::backend::ffi::{Library, Token};
use crate::backend::Backend;
use crate::config::TokenConfig;
use crate::lifecycle::Lifecycle;

/// The first wait before a backend is tried again.
pub(crate) const FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
pub(crate) const LONGEST: Duration = Duration::from_secs(30);

/// What start-up leaves to try again: the tokens without a backend and the
/// libraries loaded then.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Slot index and configuration of each token without a backend.
    tokens: Vec<(usize, TokenConfig)>,
    /// Each library loaded at start, while some token holds it.
    libraries: HashMap<PathBuf, Weak<Library>>,
}

impl Pending {
    /// Notes the library loaded at start for `path`.
    pub(crate) fn library(&mut self, path: PathBuf, lib: &Arc<Library>) {
        self.libraries.insert(path, Arc::downgrade(lib));
    }

    /// Notes that slot `index` (configured as `config`) has no backend.
    pub(crate) fn token(&mut self, index: usize, config: TokenConfig) {
        self.tokens.push((index, config));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// One try of every pending token; keeps those still without a backend.
    /// Returns the slots that got theirs.
    fn try_once(&mut self, agent: &Lifecycle) -> Vec<usize> {
        let mut opened = Vec::new();
        let libraries = &mut self.libraries;
        self.tokens.retain(|(index, config)| {
            let Some(token) = agent.tokens.get(*index) else {
                return false;
            };
            match open(libraries, config) {
                Ok(backend) => {
                    token.arrive(backend);
                    opened.push(*index);
                    false
                }
                Err(why) => {
                    log::debug!("token {:?}: backend still unavailable: {why}", config.label);
                    token.still_unavailable(why);
                    true
                }
            }
        });
        opened
    }
}

/// Opens `config`'s backend token, on the library some token already holds
/// or on one loaded now.
fn open(
    libraries: &mut HashMap<PathBuf, Weak<Library>>,
    config: &TokenConfig,
) -> Result<Arc<dyn Backend>, String> {
    let lib = match libraries.get(&config.library).and_then(Weak::upgrade) {
        Some(lib) => lib,
        None => {
            let lib = Library::load(&config.library)?;
            libraries.insert(config.library.clone(), Arc::downgrade(&lib));
            lib
        }
    };
    let pin = config
        .backend_pin
        .read()
        .map_err(|e| format!("backend_pin: {e}"))?;
    Token::open(lib, &config.selector(), pin).map(|t| Arc::new(t) as Arc<dyn Backend>)
}

/// Starts the thread that tries `pending`'s backends again (nothing when
/// every token has its backend). It ends when they all have, or when the
/// agent is gone.
pub(crate) fn spawn(pending: Pending, agent: Weak<Lifecycle>) -> std::io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("backend-reopen".into())
        .spawn(move || run(pending, &agent))
        .map(|_| ())
}

fn run(mut pending: Pending, agent: &Weak<Lifecycle>) {
    let since = Instant::now();
    let mut wait = FIRST;
    let mut tries = 0u32;
    while !pending.is_empty() {
        std::thread::sleep(wait);
        wait = (wait * 2).min(LONGEST);
        tries += 1;
        let Some(agent) = agent.upgrade() else {
            return;
        };
        let opened = pending.try_once(&agent);
        if opened.is_empty() {
            continue;
        }
        for &index in &opened {
            if let Some(t) = agent.tokens.get(index) {
                log::info!(
                    "token {:?}: backend {} ready after {} s ({tries} tries): the token is present again",
                    t.config.label,
                    t.config.library.display(),
                    since.elapsed().as_secs()
                );
            }
        }
        // What start-up does for each backend it opens.
        agent.setup_audit_key();
        agent.note_backup_keys();
    }
}
