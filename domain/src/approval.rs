//! Where a request for approval (dual control) stands.

use crate::names::named;

/// The status of an action recorded for approval.
///
/// Text form: `pending`, `approved`, `executed`, `rejected`, `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApprovalStatus {
    /// Waiting for approvals.
    Pending,
    /// Approved, not yet carried out.
    Approved,
    /// Approved and carried out.
    Executed,
    /// Refused by an approver.
    Rejected,
    /// Not approved in time.
    Expired,
}

named!(ApprovalStatus, "approval status", [
    Pending => "pending",
    Approved => "approved",
    Executed => "executed",
    Rejected => "rejected",
    Expired => "expired",
]);
