//! Where a request for approval (dual control) stands, and what an
//! administrator decides about one.

use crate::names::named;

/// The status of an action recorded for approval.
///
/// Text form: `pending`, `approved`, `executed`, `denied`, `expired`,
/// `cancelled`, `failed`. Only `pending` and `approved` are open; the
/// others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApprovalStatus {
    /// Waiting for approvals.
    Pending,
    /// The quorum is met; the action is being carried out (a request
    /// found so at start was interrupted by a stop of the agent).
    Approved,
    /// Approved and carried out.
    Executed,
    /// Refused by an approver.
    Denied,
    /// Not approved in time.
    Expired,
    /// Withdrawn by its requester or a security officer.
    Cancelled,
    /// Approved, but carrying it out failed (the outcome says why).
    Failed,
}

named!(ApprovalStatus, "approval status", [
    Pending => "pending",
    Approved => "approved",
    Executed => "executed",
    Denied => "denied",
    Expired => "expired",
    Cancelled => "cancelled",
    Failed => "failed",
]);

impl ApprovalStatus {
    /// Whether nothing can change the request any more.
    pub fn is_final(self) -> bool {
        !matches!(self, ApprovalStatus::Pending | ApprovalStatus::Approved)
    }
}

/// What an administrator decides about a request.
///
/// Text form: `approve`, `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    /// Counts towards the quorum.
    Approve,
    /// Refuses the request: it is denied at once.
    Deny,
}

named!(Decision, "decision", [
    Approve => "approve",
    Deny => "deny",
]);
