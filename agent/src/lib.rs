//! keyward-agent: owns the HSM sessions, identifies applications, and serves
//! them virtual PKCS#11 tokens over a Unix socket.
//!
//! Layout, in the order a request flows:
//! - [`server`]: the application and admin listeners, one thread per
//!   connection, framing, shutdown.
//! - [`sockets`]: the socket files (bound with their mode before anyone can
//!   connect, bound again when removed).
//! - [`admission`]: connection caps per socket and uid, refusals merged
//!   per peer.
//! - [`identity`]: who the peer is (`SO_PEERCRED`, process start time, exe
//!   and its inode, mount namespace), and who sent each message.
//! - [`agent`]: request handling — virtual tokens, client sessions and
//!   handles, virtual login, private-object hiding, forwarding.
//! - [`client`]: one client process's tables (sessions, handles, login).
//! - [`admin`]: key management on the admin socket (create, transitions,
//!   rotation, verify, grants, discovery, approval requests) and the
//!   scheduler that rotates and deactivates keys when their dates pass.
//! - [`audit`]: the audit trail as the agent writes it (uses and refusals
//!   batched off the hot path, admin and lifecycle events durable).
//! - [`fingerprint`]: what identifies a key object beyond its `CKA_ID`.
//! - [`keys`]: managed keys — the inventory, its in-memory view, and the
//!   check every use of a managed key passes (state, purpose, grant,
//!   cryptoperiod).
//! - [`objects`]: in strict mode, each application's namespace of
//!   unmanaged token objects (owners recorded in the inventory).
//! - [`report`]: `keyward report` — keys against their class, usage and
//!   its anomalies ([`report::judge`], a pure function), revocations.
//! - [`state`]: PIN hashes and token labels in the state directory.
//! - [`backend`]: the [`backend::Backend`] trait and its implementation over
//!   the vendor library ([`backend::ffi`], the crate's only `unsafe` code).
//! - [`metrics`]: request counters and latencies (counted in [`server`]),
//!   and the Prometheus text-format endpoint that shows them with every
//!   managed key's state.
//! - [`config`]: the TOML configuration; [`cli`]: the command line.
//! - [`error`]: the one error enum and its `CK_RV` mapping.
#![deny(unsafe_code)]

// `CK_ULONG` is C's `unsigned long`. The agent supports LP64 targets only,
// where it is exactly the wire's `u64`: values pass between the backend and
// the protocol without conversion (and without lossy casts).
const _: () = assert!(std::mem::size_of::<cryptoki_sys::CK_ULONG>() == 8);

#[cfg(test)]
mod admin_trail_tests;
pub mod agent;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod clients;
pub mod config;
pub mod enforce;
pub mod error;
pub mod fingerprint;
pub mod forward;
pub mod keys;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod objects;
pub mod report;
pub mod state;
pub mod template;
pub mod tokens;
pub mod uses;

/// Locks `m`. Every update under the agent's mutexes is a single insert or
/// remove, so the data is consistent even after a panic elsewhere: a
/// poisoned lock is taken as it is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
