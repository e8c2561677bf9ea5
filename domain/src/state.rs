//! A key's (or a key version's) lifecycle state.

use crate::names::named;

/// The state of a managed key or key version (NIST SP 800-57 Part 1, 5.3).
///
/// Text form: `pre-activation`, `active`, `suspended`, `deactivated`,
/// `compromised`, `destroyed` (the inventory stores it, the CLI prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyState {
    /// Generated, not yet usable.
    PreActivation,
    /// Protects and processes.
    Active,
    /// Temporarily unusable (an investigation, a holiday).
    Suspended,
    /// Past its protect period: processes (verify, decrypt, unwrap) until
    /// the process period ends.
    Deactivated,
    /// Known or suspected compromised: unusable.
    Compromised,
    /// Gone from the backend; the inventory keeps its metadata. Invisible
    /// to applications.
    Destroyed,
}

named!(KeyState, "key state", [
    PreActivation => "pre-activation",
    Active => "active",
    Suspended => "suspended",
    Deactivated => "deactivated",
    Compromised => "compromised",
    Destroyed => "destroyed",
]);

impl KeyState {
    /// Whether applications see the key at all (every state but destroyed).
    pub fn is_visible(self) -> bool {
        self != KeyState::Destroyed
    }
}
