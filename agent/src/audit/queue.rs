//! The queue of records waiting for the writer: uses folded by key,
//! operation, mechanism and result as they are queued, other events in
//! order.

use std::sync::Arc;

use keyward_inventory::{Actor, AuditEvent, AuditKind};

use crate::clients::UseTarget;

/// What is queued for the next batch, in the order it happened: events,
/// and uses folded by [`UseKey`] (a use's place is its first occurrence).
pub(crate) struct Queue {
    pub(crate) order: Vec<Queued>,
    pub(crate) others: Vec<AuditEvent>,
    pub(crate) uses: Vec<PendingUse>,
    pub(crate) index: std::collections::HashMap<UseKey, usize>,
    /// Events queued, uses counted one by one (what [`BATCH`] counts).
    pub(crate) events: usize,
    /// Events queued since the agent started (uses one by one, refusals).
    pub(crate) total: u64,
    /// How many `total` may reach before the run note must say more
    /// (never more than the note on disk says; `u64::MAX`: no note).
    pub(crate) reserved: u64,
}

#[derive(Clone, Copy)]
pub(crate) enum Queued {
    /// Index into [`Queue::others`].
    Event(usize),
    /// Index into [`Queue::uses`].
    Use(usize),
}

/// What makes two uses equal within a batch: the client process, the key
/// object (its cached [`UseTarget`]), the operation, mechanism and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct UseKey {
    pub(crate) client: crate::listener::identity::ClientKey,
    pub(crate) target: usize,
    pub(crate) operation: &'static str,
    pub(crate) mechanism: Option<u64>,
    pub(crate) result: u64,
}

/// The uses of one [`UseKey`] in the batch.
pub(crate) struct PendingUse {
    pub(crate) actor: Actor,
    pub(crate) target: Arc<UseTarget>,
    pub(crate) operation: &'static str,
    pub(crate) mechanism: Option<u64>,
    pub(crate) result: u64,
    /// The first use's time, as events have it.
    pub(crate) at: i64,
    pub(crate) micros: u32,
    /// The first and the last use, microseconds since the epoch.
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    pub(crate) count: u32,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            order: Vec::new(),
            others: Vec::new(),
            uses: Vec::new(),
            index: std::collections::HashMap::new(),
            events: 0,
            total: 0,
            reserved: u64::MAX,
        }
    }
}

impl Queue {
    /// Everything queued, as events in order (uses as one record each),
    /// leaving the queue empty.
    pub(crate) fn take(&mut self) -> Vec<AuditEvent> {
        let order = std::mem::take(&mut self.order);
        let mut others: Vec<Option<AuditEvent>> = std::mem::take(&mut self.others)
            .into_iter()
            .map(Some)
            .collect();
        let mut uses: Vec<Option<PendingUse>> = std::mem::take(&mut self.uses)
            .into_iter()
            .map(Some)
            .collect();
        self.index.clear();
        self.events = 0;
        order
            .into_iter()
            .filter_map(|q| match q {
                Queued::Event(i) => others.get_mut(i).and_then(Option::take),
                Queued::Use(i) => uses.get_mut(i).and_then(Option::take).map(|u| AuditEvent {
                    at: u.at,
                    micros: u.micros,
                    kind: AuditKind::Use,
                    actor: u.actor,
                    token: Some(u.target.token.clone()),
                    key: Some(u.target.key.clone()),
                    key_version: u.target.version,
                    operation: u.operation.to_owned(),
                    mechanism: u.mechanism,
                    result: u.result,
                    reason: String::new(),
                    count: u.count,
                    span_us: u32::try_from(u.last_us - u.first_us).unwrap_or(u32::MAX),
                }),
            })
            .collect()
    }
}
