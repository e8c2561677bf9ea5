//! keyward-agent: owns the HSM sessions, identifies applications, and serves
//! them virtual PKCS#11 tokens over a Unix socket.
//!
//! Layout: the request path, one stage each, in the order a request
//! flows:
//! - [`listener`]: the application and admin listeners, one thread per
//!   connection, framing, the hello's version, shutdown; its
//!   [`listener::admission`] (connection caps, merged refusals),
//!   [`listener::sockets`] (the socket files) and [`listener::identity`]
//!   (who the peer is and who sent each message).
//! - [`clients`]: one client process's tables (sessions, handles, login) and
//!   the table of connected clients ([`clients::registry`]).
//! - [`enforce`]: every check between a request and the backend, at
//!   `C_*Init` and on every later request of an operation.
//! - [`forward`]: the call table's [`keyward_protocol::Handler`], one method
//!   per call, grouped by PKCS#11 chapter, forwarding to the [`backend`].
//! - [`uses`]: the use record of each operation.
//!
//! Beside it, each part with its own files:
//! - [`lifecycle`]: key management on the admin socket, one executor per
//!   kind of change, and the scheduler.
//! - [`audit`]: the trail as the agent writes it (uses and refusals batched
//!   off the hot path, lifecycle changes in their own transaction, admin
//!   requests named), the audit key and checkpoints.
//! - [`report`]: `keyward report` — keys against their class, usage and its
//!   anomalies ([`report::judge`], a pure function), revocations.
//! - [`metrics`]: request counters and latencies (counted in the
//!   [`listener`]) and the Prometheus endpoint; [`notify`]: the webhook
//!   (a watcher thread, a bounded queue, one sender thread).
//! - [`keys`]: managed keys — the inventory's in-memory view and the check
//!   every use of a managed key passes; [`fingerprint`]: what identifies a
//!   key object beyond its `CKA_ID`; [`objects`]: identities and owners of
//!   unmanaged token objects.
//! - [`tokens`]: the virtual tokens (`reopen`: backends that failed at start
//!   tried again); [`state`]: PIN hashes and labels in the
//!   state directory; [`template`]: reading templates.
//! - [`backend`]: the [`backend::Backend`] trait and its implementation over
//!   the vendor library ([`backend::ffi`], the crate's only `unsafe` code).
//! - [`agent`]: the agent and its request path's state; [`shared`]: what
//!   every part shares ([`shared::Core`]); [`config`]: the TOML configuration;
//!   [`cli`]: the command line; [`error`]: the one error enum and its
//!   `CK_RV` mapping.
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
pub mod clock;
pub mod config;
pub mod docs;
pub mod enforce;
pub mod error;
pub mod fingerprint;
pub mod forward;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod objects;
pub mod per_use;
pub(crate) mod reopen;
pub mod report;
pub mod settings;
pub mod shared;
pub mod state;
pub mod store;
pub mod template;
pub mod tls;
pub mod tokens;
pub mod uses;

/// Locks `m`. Every update under the agent's mutexes is a single insert or
/// remove, so the data is consistent even after a panic elsewhere: a
/// poisoned lock is taken as it is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
