//! The use record stage: what each use of a key is recorded under (cached
//! per backend object), the end of each operation, and PIN events. Records
//! are queued to the trail's writer off the hot path.

use std::sync::Arc;

use cryptoki_sys as ck;
use keyward_protocol::{AttrResult, AttrValue, Op, Response, Value};

use crate::backend::BackendObject;
use crate::clients::{ActiveOp, Client, ObjectRef, Session, Slot, UseTarget};
use crate::error::Result;

use crate::agent::Agent;
use crate::audit::{self};
use crate::forward::{operation, rv_of};
use crate::lock;

pub mod targets;
use keyward_inventory::AuditKind;

impl Agent {
    /// What the use records of object `o` (on `s`'s token) name: cached
    /// per backend object, read from the HSM once. `None` when uses are
    /// not recorded.
    pub(crate) fn use_target(&self, s: &Session, o: &ObjectRef) -> Option<Arc<UseTarget>> {
        if !self.audit.records_uses() {
            return None;
        }
        if let Some(t) = self.use_targets.get(o.slot, o.backend) {
            return Some(t.clone());
        }
        let token = self.tokens.get(o.slot)?.config.label.clone();
        let target = match o.managed.and_then(|m| Some((m, self.keys.key(m.key_id)?))) {
            Some((m, key)) => UseTarget {
                token,
                key: key.record.name.clone(),
                version: Some(m.version),
            },
            None => {
                let attrs = s
                    .backend
                    .get_attributes(s.backend_session, o.backend, &[ck::CKA_LABEL, ck::CKA_ID])
                    .unwrap_or_default();
                let value = |i: usize| match attrs.get(i) {
                    Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(v)))) => v.as_slice(),
                    _ => &[],
                };
                let key = crate::objects::unmanaged_name(value(0), value(1))
                    .unwrap_or_else(|| format!("handle:{}", o.backend));
                UseTarget {
                    token,
                    key,
                    version: None,
                }
            }
        };
        let target = Arc::new(target);
        self.use_targets.insert(o.slot, o.backend, target.clone());
        Some(target)
    }

    /// Records the end of operation `op` on `s` with `r`'s result, and
    /// ends it there, unless `r` only asked for a bigger buffer (the
    /// operation goes on, as PKCS#11 says). A result its key's change
    /// refuses meanwhile is withheld ([`Agent::settle`]).
    pub(crate) fn end_op<T>(
        &self,
        client: &Client,
        s: &Session,
        op: Op,
        r: Result<T>,
    ) -> Result<T> {
        if rv_of(&r) == ck::CKR_BUFFER_TOO_SMALL {
            return r;
        }
        let (r, _settled) = self.settle(client, r);
        let rv = rv_of(&r);
        {
            let ended = lock(&s.active)[op.index()].take();
            if let Some(ActiveOp {
                target: Some(t),
                mechanism,
                ..
            }) = ended
            {
                self.audit
                    .record_use(client, operation(op).as_str(), Some(mechanism), &t, rv);
            }
        }
        r
    }

    /// Records a single-call use of object `o` (wrap, unwrap, derive,
    /// digest of a key) with `r`'s result.
    pub(crate) fn key_use<T>(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
        operation: &'static str,
        mechanism: Option<u64>,
        r: &Result<T>,
    ) {
        if let Some(t) = self.use_target(s, o) {
            self.audit
                .record_use(client, operation, mechanism, &t, rv_of(r));
        }
    }

    /// Records a call that checked or set a PIN (never the PIN): a login
    /// record, or a PIN lockout record when the PIN was locked. A policy
    /// refusal is recorded where it is decided.
    pub(crate) fn record_pin_event(&self, client: &Client, operation: &str, r: &Result<Response>) {
        let rv = rv_of(r);
        if rv == ck::CKR_ACTION_PROHIBITED {
            return;
        }
        let kind = if rv == ck::CKR_PIN_LOCKED {
            AuditKind::PinLockout
        } else {
            AuditKind::Login
        };
        let mut e = audit::for_client(client, kind, operation);
        e.result = rv;
        self.audit.record(e);
    }

    /// Writes the managed keys' last uses to the inventory every `every`,
    /// on a thread of its own (uses are noted in memory on the hot path).
    pub fn spawn_use_recorder(self: &Arc<Agent>, every: std::time::Duration) {
        let agent = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("last-use".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                match agent.upgrade() {
                    Some(a) => a.keys.flush_uses(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the last-use recorder: {e}");
        }
    }

    /// Records the noted uses now (at shutdown).
    pub fn flush_uses(&self) {
        self.keys.flush_uses();
    }
}

impl crate::shared::Core {
    /// Forgets what use records name the objects of `slot` for which
    /// `gone` holds (destroyed, relabelled, or their session closed).
    pub(crate) fn forget_use_targets(&self, mut gone: impl FnMut(&(Slot, BackendObject)) -> bool) {
        self.use_targets.forget(&mut gone);
    }
}
