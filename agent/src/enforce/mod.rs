//! The enforcement stage: every check between a request and the backend.
//! The mechanism allow-list, the audit gate (`on_write_failure = refuse`),
//! the use of a managed key (state, purpose, grant, cryptoperiod), and the
//! refusals of templates and management actions (private objects before
//! login, reserved names and IDs, weakening changes, managed keys, imports
//! in strict mode). An operation's checks run at its `C_*Init` and again on
//! every later request of it (`Agent::check_operation`).
//!
//! Every refusal is logged with its reason and recorded in the trail.

use std::sync::Arc;

use cryptoki_sys as ck;
use keyward_protocol::{AttrValue, Attribute, Value};

use crate::clients::{Client, Login, ObjectRef, Slot};
use crate::error::{Error, Result};
use keyward_policy::Operation;

use crate::agent::Agent;
use crate::audit::{self};
use crate::keys::ManagedRef;
use crate::template::template_bool;
use keyward_inventory::AuditKind;

pub(crate) mod gate;
mod generation;
pub mod per_use;

impl Agent {
    /// Held by one cryptographic request from before its checks until its
    /// result is settled (see [`gate`]).
    pub(crate) fn running(&self) -> gate::Running<'_> {
        self.gates.running()
    }

    /// The end of this request's use of a managed key, before its result
    /// is handed out and its use recorded (hold the returned guard until
    /// then): when a change of the key came while the backend ran, the use
    /// is checked again against the view now, and one the view no longer
    /// allows is withheld (`CKR_KEY_FUNCTION_NOT_PERMITTED`, recorded with
    /// the reason). A failed call hands out nothing and stays as it is.
    pub(crate) fn settle<T>(
        &self,
        client: &Client,
        r: Result<T>,
    ) -> (Result<T>, gate::Settled<'_>) {
        let Some((changed, held)) = self.gates.settle() else {
            return (r, None);
        };
        let (Some(e), Ok(_)) = (changed, &r) else {
            return (r, Some(held));
        };
        let key = self.keys.key(e.managed.key_id);
        let now = crate::clock::now();
        let refusal = match &key {
            None => Some("the key is gone".to_owned()),
            Some(k) => {
                crate::keys::check_use(&self.policy(), k, e.managed, &client.application, e.op, now)
                    .err()
                    .map(|refusal| refusal.to_string())
            }
        };
        let Some(why) = refusal else {
            return (r, Some(held));
        };
        let rv = ck::CKR_KEY_FUNCTION_NOT_PERMITTED;
        let reason = format!(
            "use withheld: the key changed while the backend ran ({why}); its result was discarded"
        );
        let key = key.as_deref().map(|k| (k, e.managed.version));
        self.note_refusal(client, e.op.as_str(), key, None, rv, &reason);
        (Err(Error::Refused(rv)), Some(held))
    }

    /// Refuses applications' operations while the trail cannot be written
    /// and `[audit] on_write_failure = "refuse"`.
    pub(crate) fn audit_gate(&self, client: &Client, operation: &str) -> Result<()> {
        if self.audit.refusing() {
            self.note_refusal(
                client,
                operation,
                None,
                None,
                ck::CKR_FUNCTION_FAILED,
                "the audit trail cannot be written (on_write_failure = refuse)",
            );
            return Err(Error::Refused(ck::CKR_FUNCTION_FAILED));
        }
        Ok(())
    }

    /// Refuses a mechanism outside the policy's allow-list
    /// (`CKR_MECHANISM_INVALID`), saying why in the log.
    pub(crate) fn check_mechanism(&self, client: &Client, mechanism: u64) -> Result<()> {
        self.policy().check_mechanism(mechanism).map_err(|refusal| {
            let rv = refusal.ckr();
            let reason = refusal.to_string();
            self.note_refusal(client, "mechanism use", None, Some(mechanism), rv, &reason);
            Error::Refused(rv)
        })
    }

    /// Checks a use of object `o` for operation `op`: nothing for unmanaged
    /// objects; for a managed key version, [`crate::keys::check_use`]. A refusal
    /// is logged with its reason and answered with its code.
    pub(crate) fn check_key_use(
        &self,
        client: &Client,
        managed: Option<ManagedRef>,
        op: Operation,
    ) -> Result<()> {
        let Some(m) = managed else { return Ok(()) };
        // Read before the view: a change after this is seen when the use
        // settles.
        let epoch = self.gates.epoch(m.key_id);
        let Some(key) = self.keys.key(m.key_id) else {
            return Err(Error::KeyHandleInvalid);
        };
        // A view the shared store has not confirmed within the lease may
        // miss a revocation made elsewhere: no new protection with it.
        if op.is_protect() {
            if let Some(why) = self.keys.stale() {
                let reason = format!("{why}: protect operations with managed keys are refused");
                let key = Some((&*key, m.version));
                self.note_refusal(
                    client,
                    op.as_str(),
                    key,
                    None,
                    ck::CKR_FUNCTION_FAILED,
                    &reason,
                );
                return Err(Error::Refused(ck::CKR_FUNCTION_FAILED));
            }
        }
        let now = crate::clock::now();
        match crate::keys::check_use(&self.policy(), &key, m, &client.application, op, now) {
            Ok(()) => {
                self.gates.enter(m, op, epoch);
                self.keys.note_use(m.key_id, crate::keys::secs(now));
                Ok(())
            }
            Err(refusal) => {
                let rv = refusal.ckr();
                let reason = refusal.to_string();
                let key = Some((&*key, m.version));
                self.note_refusal(client, op.as_str(), key, None, rv, &reason);
                Err(Error::Refused(rv))
            }
        }
    }

    /// The checks every request of a cryptographic operation passes, at its
    /// `C_*Init` and again on each later call of it (update, final, or the
    /// single call): the audit gate, the mechanism allow-list, and the use
    /// of its key (`managed`: the managed key version, if any). A trail
    /// that failed, a policy reloaded without the mechanism, or a key
    /// suspended after the init stops an operation already under way.
    pub(crate) fn check_operation(
        &self,
        client: &Client,
        op: Operation,
        mechanism: u64,
        managed: Option<ManagedRef>,
    ) -> Result<()> {
        self.audit_gate(client, op.as_str())?;
        self.check_mechanism(client, mechanism)?;
        self.check_key_use(client, managed, op)
    }

    /// The checks of a single-call use of key `o` for `op` (wrap, unwrap,
    /// derive, digest of a key): the audit gate and the key's rights, under
    /// [`Agent::running`] (held until the call's use is recorded).
    pub(crate) fn begin_key_use(
        &self,
        client: &Client,
        o: &ObjectRef,
        op: Operation,
    ) -> Result<gate::Running<'_>> {
        let running = self.running();
        self.audit_gate(client, op.as_str())?;
        self.check_key_use(client, o.managed, op)?;
        Ok(running)
    }

    /// Says why a call was refused, in the log and in the trail; `key` is
    /// the managed key version it concerned, if any.
    pub(crate) fn note_refusal(
        &self,
        client: &Client,
        operation: &str,
        key: Option<(&crate::keys::KeyView, u32)>,
        mechanism: Option<u64>,
        rv: u64,
        reason: &str,
    ) {
        log::warn!(
            "{} (application {}): {operation}{} refused: {reason}",
            client.peer,
            client.application,
            key.map(|(k, v)| format!(" of key {:?} v{v}", k.record.name))
                .unwrap_or_default()
        );
        let mut e = audit::for_client(client, AuditKind::Refusal, operation);
        if let Some((k, v)) = key {
            e.token = Some(k.record.token.clone());
            e.key = Some(k.record.name.clone());
            e.key_version = Some(v);
        }
        e.mechanism = mechanism;
        e.result = rv;
        e.reason = reason.to_owned();
        self.audit.record(e);
    }

    /// A policy refusal of `operation`: noted, and answered with its code.
    pub(crate) fn refuse(
        &self,
        client: &Client,
        operation: &str,
        refusal: keyward_policy::Refusal,
    ) -> Error {
        self.note_refusal(
            client,
            operation,
            None,
            None,
            refusal.ckr(),
            &refusal.to_string(),
        );
        Error::Refused(refusal.ckr())
    }

    /// In strict mode, refuses `what` (`CKR_ACTION_PROHIBITED`) and logs
    /// why; in lab mode, allows it.
    pub(crate) fn strict_refusal(&self, client: &Client, what: String) -> Result<()> {
        if self.policy().mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        let refusal = keyward_policy::Refusal::GenerationNotPermitted { reason: what };
        Err(self.refuse(client, "import", refusal))
    }

    /// In strict mode, refuses attribute values that weaken an object
    /// (sensitive off, extractable on, usage widened, ...:
    /// `keyward_policy::is_weakening`), with `CKR_ATTRIBUTE_READ_ONLY`.
    pub(crate) fn refuse_weakening(&self, client: &Client, template: &[Attribute]) -> Result<()> {
        if self.policy().mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        let none = keyward_policy::Template {
            bools: &[],
            ulongs: &[],
            bytes: &[],
        };
        for a in template {
            let value = match &a.value {
                AttrValue::Leaf(Value::Bool(b)) => keyward_policy::AttrValue::Bool(*b),
                AttrValue::Leaf(Value::Ulong(u)) => keyward_policy::AttrValue::Ulong(*u),
                AttrValue::Leaf(Value::Bytes(b)) => keyward_policy::AttrValue::Bytes(b),
                _ => continue,
            };
            if keyward_policy::is_weakening(None, &none, a.attr_type, value) {
                let refusal = keyward_policy::Refusal::Weakening {
                    reason: format!("attribute {:#x} would weaken the object", a.attr_type),
                };
                return Err(self.refuse(client, "an attribute change", refusal));
            }
        }
        Ok(())
    }

    /// The checks of a change to an existing object (`what`: a copy, an
    /// attribute change) by `template`: no private object before login,
    /// not a managed key, no reserved name or ID, nothing weakened.
    pub(crate) fn check_object_change(
        &self,
        client: &Client,
        login: Login,
        slot: Slot,
        o: &ObjectRef,
        template: &[Attribute],
        what: &str,
    ) -> Result<()> {
        refuse_private(login, template)?;
        self.refuse_managed(client, o, what)?;
        self.refuse_reserved(client, slot, template, what)?;
        self.refuse_weakening(client, template)
    }

    /// Refuses what would take a managed key out of management: changing
    /// its attributes, copying it, destroying it, or wrapping it out. Those
    /// are administrator actions (some need approval).
    pub(crate) fn refuse_managed(&self, client: &Client, o: &ObjectRef, what: &str) -> Result<()> {
        match o
            .managed
            .and_then(|m| Some((self.keys.key(m.key_id)?, m.version)))
        {
            Some((key, version)) => {
                self.note_refusal(
                    client,
                    what,
                    Some((&key, version)),
                    None,
                    ck::CKR_ACTION_PROHIBITED,
                    "a managed key: an administrator action",
                );
                Err(Error::ActionProhibited)
            }
            None => Ok(()),
        }
    }

    /// An application's `C_DestroyObject` of `o` (in session `s`): refused
    /// (`CKR_ACTION_PROHIBITED`, recorded) when `o` is a managed key, as
    /// every change of one. When the application may see the key (a grant,
    /// the key not destroyed) and is logged in as user, the refusal opens a
    /// pending destroy request for administrators to approve (one per key:
    /// asking again answers the one pending); any other caller gets the
    /// bare refusal and no request.
    pub(crate) fn refuse_destruction(
        &self,
        client: &Client,
        s: &crate::clients::Session,
        login: Login,
        o: &ObjectRef,
    ) -> Result<()> {
        let what = "destruction";
        let Some((m, key)) = o.managed.and_then(|m| Some((m, self.keys.key(m.key_id)?))) else {
            return self.refuse_managed(client, o, what);
        };
        let now = crate::clock::now();
        let may_ask = login == Login::User
            && crate::keys::visible_to(&self.policy(), &key, &client.application, now)
            && keyward_policy::needs_approval(key.record.state, keyward_policy::Action::Destroy);
        if !may_ask {
            return self.refuse_managed(client, o, what);
        }
        let target = crate::lifecycle::Target {
            token: &self.tokens[s.slot],
            key: key.clone(),
        };
        let who = format!("application {}", client.application);
        let why = format!("C_DestroyObject by application {}", client.application);
        let action = keyward_policy::Action::Destroy.name();
        let parameters = serde_json::json!({ "from": key.record.state.as_str() });
        let reason =
            match self
                .lifecycle
                .record_request(&target, action, parameters, (&who, &why), now)
            {
                Ok(keyward_protocol::admin::KeyResponse::Pending(r)) => format!(
                    "a managed key: an administrator action; destroy request {} pending approval",
                    r.id
                ),
                Ok(_) => "a managed key: an administrator action".to_owned(),
                Err(e) => format!(
                    "a managed key: an administrator action; the destroy request could not be \
                 recorded: {}",
                    e.message
                ),
            };
        self.note_refusal(
            client,
            what,
            Some((&key, m.version)),
            None,
            ck::CKR_ACTION_PROHIBITED,
            &reason,
        );
        Err(Error::ActionProhibited)
    }

    /// Refuses (`CKR_ACTION_PROHIBITED`, recorded) a template that would
    /// give an object on `slot`'s token a managed key's name or backend
    /// label, the `ck::CKA_ID` of a managed key version (or one being
    /// generated), or the audit key's `ck::CKA_ID` or label: an application
    /// cannot plant an object that other applications, or the agent, would
    /// take for a managed key. A key generated under the default class gets
    /// a name and `ck::CKA_ID` of its own, so that path is not concerned.
    pub(crate) fn refuse_reserved(
        &self,
        client: &Client,
        slot: Slot,
        template: &[Attribute],
        what: &str,
    ) -> Result<()> {
        let token = &self.tokens[slot].config.label;
        // A certificate of a managed key's own public key is that key's
        // certificate: it may carry the key's name and ck::CKA_ID.
        let certificate = template
            .iter()
            .any(|a| a.attr_type == ck::CKA_CLASS && a.as_ulong() == Some(ck::CKO_CERTIFICATE))
            .then(|| {
                template.iter().find_map(|a| match &a.value {
                    AttrValue::Leaf(Value::Bytes(v)) if a.attr_type == ck::CKA_VALUE => {
                        crate::keys::certificate_fingerprint(v)
                    }
                    _ => None,
                })
            })
            .flatten();
        let its_own = |key: Option<Arc<crate::keys::KeyView>>| {
            certificate.is_some_and(|fp| {
                key.is_some_and(|k| {
                    k.versions
                        .iter()
                        .any(|v| v.fingerprint.as_deref() == Some(&fp[..]))
                })
            })
        };
        for a in template {
            let AttrValue::Leaf(Value::Bytes(b)) = &a.value else {
                continue;
            };
            let why = match a.attr_type {
                ck::CKA_LABEL
                    if b.as_slice() == audit::AUDIT_KEY_LABEL
                        || b.as_slice() == crate::lifecycle::backup::key::LABEL
                        || (self.keys.is_managed_label(token, b)
                            && !its_own(self.keys.key_by_label(token, b))) =>
                {
                    format!(
                        "ck::CKA_LABEL {:?} names a managed key",
                        String::from_utf8_lossy(&b[..b.len().min(256)])
                    )
                }
                ck::CKA_ID
                    if b.as_slice() == audit::AUDIT_KEY_ID
                        || crate::lifecycle::backup::key::is_reserved(b)
                        || self.keys.is_pending(token, b)
                        || self
                            .keys
                            .lookup(token, b)
                            .is_some_and(|m| !its_own(self.keys.key(m.key_id))) =>
                {
                    format!(
                        "ck::CKA_ID {} belongs to a managed key",
                        hex::encode(&b[..b.len().min(128)])
                    )
                }
                _ => continue,
            };
            self.note_refusal(client, what, None, None, ck::CKR_ACTION_PROHIBITED, &why);
            return Err(Error::ActionProhibited);
        }
        Ok(())
    }

    /// In strict mode, PINs are set by the administrator (`keyward-agent
    /// set-pin`), not by the token's SO: refuses `what` with
    /// `CKR_ACTION_PROHIBITED` and records the refusal.
    pub(crate) fn refuse_so_pin_management(&self, client: &Client, what: &str) -> Result<()> {
        self.policy()
            .check_pin_management_by_so()
            .map_err(|refusal| self.refuse(client, what, refusal))
    }
}

/// A client not logged in as user may not ask for a private object.
pub(crate) fn refuse_private(login: Login, template: &[Attribute]) -> Result<()> {
    if login != Login::User && template_bool(template, ck::CKA_PRIVATE) == Some(true) {
        Err(Error::NotLoggedIn)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod per_use_tests;
