//! The audit trail as the agent writes it: [`writer`] (the [`Auditor`] and
//! its thread), [`events`] (building records), [`queue`] (records waiting), [`run`] (the run note and
//! crash gaps), [`relay`] (the copy to syslog), [`requests`] (records of
//! the agent's and administrators' requests, and `keyward audit`),
//! [`key`] (the audit key) and [`checkpoints`] (signed heads).
//!
//! - Uses and refusals (the hot path) are queued in memory and appended in
//!   batches by a writer thread, at most [`BATCH`] events or [`LINGER`]
//!   apart: a use costs a lock and a push, never a disk write.
//! - Lifecycle, admin, login and agent events are durable before the call
//!   returns: [`Auditor::durable`] first appends what is queued (so the
//!   trail keeps the order events happened in), then the event, with
//!   `synchronous=FULL`. When that fails the caller fails closed. The
//!   records of a lifecycle change are written by the inventory in the
//!   change's own transaction, through [`Auditor::commit`].
//! - A trail that cannot be written is said loudly at error level once at
//!   the start of a failure streak, as a reminder every
//!   [`FAILURE_REMINDER`] while it lasts, and once at its end.
//! - Uses acknowledged but not yet stored are lost if the agent dies
//!   (SIGKILL, a crash): a *run note* in the state directory
//!   ([`RUN_NOTE`]), which the writer keeps ahead of the queue, bounds
//!   them without a write per use, and the next start records a
//!   `crash-gap` record with that bound (see [`Auditor::begin_run`]).
//!
//! No PIN and no key material ever goes into an event: callers pass names,
//! operations, codes and reasons.

pub mod checkpoints;
pub mod events;
pub mod key;
pub mod queue;
pub mod relay;
pub mod requests;
pub mod run;
#[cfg(test)]
mod tests;
pub mod writer;

pub use events::{event, for_client, lifecycle_reason};
pub use key::{AuditKey, CheckpointEvery, AUDIT_KEY_ID, AUDIT_KEY_LABEL, AUDIT_KEY_NAME};
pub use run::{crash_gap_of, crash_gap_reason, format_us, CRASH_GAP, RUN_NOTE};
pub use writer::{
    cause_of, AuditStats, Auditor, CommitError, BATCH, FAILURE_REMINDER, LINGER, MAX_PENDING,
};
