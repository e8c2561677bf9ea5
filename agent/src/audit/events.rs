//! Building records: an event with its actor and time, and the reason of
//! a lifecycle record.

use std::time::UNIX_EPOCH;

use keyward_inventory::{Actor, AuditEvent, AuditKind};

/// An event at the current time.
pub fn event(kind: AuditKind, actor: Actor, operation: &str) -> AuditEvent {
    let now = crate::clock::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    AuditEvent {
        at: now.as_secs() as i64,
        micros: now.subsec_micros(),
        kind,
        actor,
        token: None,
        key: None,
        key_version: None,
        operation: operation.to_owned(),
        mechanism: None,
        result: 0,
        reason: String::new(),
        count: 1,
        span_us: 0,
    }
}

/// The reason of a `lifecycle` record: `from <state> to <state>: <why>`
/// (at most 4096 characters), for people: what the agent reads back of a
/// change is the inventory's typed history.
pub fn lifecycle_reason(from: &str, to: &str, why: &str) -> String {
    format!("from {from} to {to}: {why}")
        .chars()
        .take(4096)
        .collect()
}

/// An event of client process `client` (actor: its application).
pub fn for_client(client: &crate::clients::Client, kind: AuditKind, operation: &str) -> AuditEvent {
    event(kind, client.actor.clone(), operation)
}
