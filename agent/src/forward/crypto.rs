//! Cryptographic operations: `C_*Init` (sent along with the first call of
//! an operation by the module), single-part calls, updates and finals.

use std::sync::Arc;

use keyward_protocol::message::OpInit;
use keyward_protocol::{ObjectHandle, Op, Response, SessionHandle};

use crate::clients::{ActiveOp, Client, Session};
use crate::error::{Error, Result};
use crate::per_use::PerUse;
use keyward_policy::Operation;

use crate::agent::Agent;
use crate::forward::operation;
use crate::lock;

impl Agent {
    /// `Request::OperationInit`.
    pub(crate) fn operation_init(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: OpInit,
    ) -> Result<Response> {
        let _running = self.running();
        self.op_init(client, session, op, &init)?;
        Ok(Response::Unit)
    }

    /// `Request::Single`.
    pub(crate) fn single(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        data: Vec<u8>,
    ) -> Result<Response> {
        if op == Op::Verify {
            return Err(Error::ArgumentsBad);
        }
        let running = self.running();
        let s = self.op_session(client, session, op, init.as_ref())?;
        if let Some((per_use, managed)) = self.held_for_approval(&s, op, init.is_none()) {
            // The wait holds no lock: key changes and other calls go on.
            drop(running);
            let approved = self.await_sign_approval(client, &per_use, managed, &data);
            let _running = self.running();
            let r = approved
                .and_then(|id| self.sign_approved(client, &s, op, (&per_use, managed), &id, &data));
            return Ok(Response::Data(self.end_op(client, &s, op, r)?));
        }
        let r = s.backend.single(s.backend_session, op, &data);
        Ok(Response::Data(self.end_op(client, &s, op, r)?))
    }

    /// `Request::Verify`.
    pub(crate) fn verify(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        init: Option<OpInit>,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<Response> {
        let _running = self.running();
        let s = self.op_session(client, session, Op::Verify, init.as_ref())?;
        let r = s.backend.verify(s.backend_session, &data, &signature);
        self.end_op(client, &s, Op::Verify, r)?;
        Ok(Response::Unit)
    }

    /// `Request::Update`.
    pub(crate) fn update(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        data: Vec<u8>,
    ) -> Result<Response> {
        let _running = self.running();
        let s = self.op_session(client, session, op, init.as_ref())?;
        self.refuse_multi_part(client, &s, op, init.is_none())?;
        match s.backend.update(s.backend_session, op, &data) {
            Ok(out) => match self.settle(client, Ok(out)) {
                (Ok(out), _settled) => Ok(Response::Data(out)),
                (Err(e), settled) => {
                    drop(settled);
                    self.end_op(client, &s, op, Err(e))
                }
            },
            // A failed update ends the operation.
            Err(e) => self.end_op(client, &s, op, Err(e)),
        }
    }

    /// `Request::DigestKey`.
    pub(crate) fn digest_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        key: ObjectHandle,
    ) -> Result<Response> {
        let (s, _, o) = self.session_objects(client, session, &[(key, Error::KeyHandleInvalid)])?;
        let _running = self.begin_key_use(client, &o[0], Operation::Digest)?;
        let r = s.backend.digest_key(s.backend_session, o[0].backend);
        let (r, _settled) = self.settle(client, r);
        self.key_use(client, &s, &o[0], Operation::Digest.as_str(), None, &r);
        r?;
        Ok(Response::Unit)
    }

    /// `Request::Final`.
    pub(crate) fn final_(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        data: Vec<u8>,
    ) -> Result<Response> {
        let _running = self.running();
        let s = self.op_session(client, session, op, init.as_ref())?;
        self.refuse_multi_part(client, &s, op, init.is_none())?;
        let r = last_part(&s, op, &data).and_then(|()| s.backend.final_(s.backend_session, op));
        Ok(Response::Data(self.end_op(client, &s, op, r)?))
    }

    /// `Request::VerifyFinal`.
    pub(crate) fn verify_final(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        init: Option<OpInit>,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<Response> {
        let _running = self.running();
        let s = self.op_session(client, session, Op::Verify, init.as_ref())?;
        let r = last_part(&s, Op::Verify, &data)
            .and_then(|()| s.backend.verify_final(s.backend_session, &signature));
        self.end_op(client, &s, Op::Verify, r)?;
        Ok(Response::Unit)
    }

    pub(crate) fn op_init(
        &self,
        client: &Client,
        session: SessionHandle,
        op: Op,
        init: &OpInit,
    ) -> Result<Arc<Session>> {
        let (s, key) = {
            let st = client.lock();
            let s = st.session(session)?;
            let key = match init.key {
                Some(k) => Some(st.object(s.slot, k, Error::KeyHandleInvalid)?),
                None => None,
            };
            (s, key)
        };
        let managed = key.and_then(|o| o.managed);
        self.check_operation(client, operation(op), init.mechanism.mechanism, managed)?;
        let m = self.mechanism(client, s.slot, &init.mechanism)?;
        let target = key.as_ref().and_then(|o| self.use_target(&s, o));
        // A signature under per-use approval starts on the backend once
        // approved (see `enforce::per_use`).
        let per_use = match (key, self.per_use_wait(op, managed)) {
            (Some(o), Some(wait)) => Some(PerUse {
                mechanism: m.mechanism,
                init: Some((m.clone().into_owned(), o.backend)),
                wait,
            }),
            _ => None,
        };
        let started = match per_use {
            Some(_) => Ok(()),
            None => s
                .backend
                .op_init(s.backend_session, op, &m, key.map(|o| o.backend)),
        };
        if let Err(e) = started {
            if let Some(t) = &target {
                self.audit
                    .record_use(client, operation(op).as_str(), Some(m.mechanism), t, e.rv());
            }
            return Err(e);
        }
        lock(&s.active)[op.index()] = Some(ActiveOp {
            managed,
            mechanism: m.mechanism,
            target,
            per_use,
        });
        Ok(s)
    }

    /// The session of a cryptographic call, after the deferred `C_*Init`
    /// when the module sent one along.
    pub(crate) fn op_session(
        &self,
        client: &Client,
        session: SessionHandle,
        op: Op,
        init: Option<&OpInit>,
    ) -> Result<Arc<Session>> {
        match init {
            Some(init) => self.op_init(client, session, op, init),
            None => {
                let s = self.session(client, session)?.0;
                // An operation initialised earlier passes its init's checks
                // again: what changed since (the trail, the policy, the
                // key's state) applies now. Without one, the backend
                // answers CKR_OPERATION_NOT_INITIALIZED.
                let active = lock(&s.active)[op.index()]
                    .as_ref()
                    .map(|a| (a.mechanism, a.managed));
                if let Some((mechanism, managed)) = active {
                    self.check_operation(client, operation(op), mechanism, managed)?;
                }
                Ok(s)
            }
        }
    }
}

/// The input the module held back for a final call (digests, signatures,
/// verifications), given to the backend as one last update; nothing when
/// there is none.
fn last_part(s: &Session, op: Op, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    s.backend.update(s.backend_session, op, data).map(drop)
}
