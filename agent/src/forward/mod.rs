//! Forwarding: each application request, after the client tables and the
//! enforcement stage, to the backend, grouped by PKCS#11 chapter like the
//! module's entry points: [`slots`] (slots, tokens, mechanisms),
//! [`sessions`] (sessions, login, PINs), [`objects`] (objects, searches,
//! namespaces), [`crypto`] (multi-part and single-part operations),
//! [`keys`] (generation, wrapping, derivation) and [`random`].
//!
//! Locks: the client table and the session-object registry are held only
//! to look up or update; each client's tables ([`Client::lock`]) likewise.
//! No lock is held across a backend call, so two threads of one client
//! using different sessions, and different clients, reach the backend in
//! parallel.

use std::borrow::Cow;
use std::sync::Arc;

use cryptoki_sys as ck;
use keyward_protocol::message::OpInit;
use keyward_protocol::{Attribute, Secret};
use keyward_protocol::{Handler, VersionRange, VersionRefusal, APP_VERSIONS};
use keyward_protocol::{HelloReply, MechParam, Mechanism, Op, Request, Response};
use keyward_protocol::{ObjectHandle, SessionHandle, SlotId};

use crate::clients::{Client, Login, ObjectRef, Session, Slot};
use crate::error::{Error, Result};
use keyward_policy::Operation;

use crate::agent::Agent;

pub mod crypto;
pub mod keys;
pub mod objects;
pub mod random;
pub mod sessions;
pub mod slots;

#[cfg(test)]
mod tests;

/// `CKU_*` for the trail.
pub(crate) fn user_type_name(user_type: u64) -> &'static str {
    match user_type {
        ck::CKU_SO => "ck::CKU_SO",
        ck::CKU_USER => "ck::CKU_USER",
        ck::CKU_CONTEXT_SPECIFIC => "ck::CKU_CONTEXT_SPECIFIC",
        _ => "unknown user type",
    }
}

/// The policy operation of a cryptographic operation kind.
pub(crate) fn operation(op: Op) -> Operation {
    match op {
        Op::Encrypt => Operation::Encrypt,
        Op::Decrypt => Operation::Decrypt,
        Op::Digest => Operation::Digest,
        Op::Sign | Op::SignRecover => Operation::Sign,
        Op::Verify | Op::VerifyRecover => Operation::Verify,
    }
}

/// The `CK_RV` a call's result answers.
pub(crate) fn rv_of<T>(r: &Result<T>) -> u64 {
    r.as_ref().err().map_or(ck::CKR_OK, |e| e.rv())
}

/// Largest `C_GenerateRandom` served in one call.
pub const MAX_RANDOM: u64 = 1 << 20;

impl Agent {
    /// Answers one request of `client`.
    pub fn handle(&self, client: &Arc<Client>, req: Request) -> Response {
        match self.dispatch(client, req) {
            Ok(r) => r,
            Err(e) => Response::Err(e.rv()),
        }
    }

    /// The answer to `Hello` from a peer that speaks `theirs`: the highest
    /// application-protocol version both speak, or the agent's versions
    /// when there is none (see `keyward_protocol::version`).
    pub fn hello(&self, theirs: VersionRange) -> Response {
        match APP_VERSIONS.pick(theirs) {
            Ok(version) => Response::Hello(self.hello_reply(version)),
            Err(_) => Response::NoCommonVersion(VersionRefusal {
                versions: APP_VERSIONS,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        }
    }

    /// A `Hello` answer naming `version`.
    pub fn hello_reply(&self, version: u16) -> HelloReply {
        HelloReply {
            version,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance: self.instance,
        }
    }

    pub(crate) fn dispatch(&self, client: &Arc<Client>, req: Request) -> Result<Response> {
        if let Some(mechanism) = req.mechanism() {
            self.check_mechanism(client, mechanism)?;
        }
        keyward_protocol::dispatch(self, client, req)
    }

    /// The session and the client's login state on its token.
    pub(crate) fn session(
        &self,
        client: &Client,
        session: SessionHandle,
    ) -> Result<(Arc<Session>, Login)> {
        let st = client.lock();
        let s = st.session(session)?;
        let login = st.login(s.slot);
        Ok((s, login))
    }

    /// The session, the login state, and the backend handles of `objects`
    /// (each with the error an unknown handle gets), under one lock.
    pub(crate) fn session_objects(
        &self,
        client: &Client,
        session: SessionHandle,
        objects: &[(ObjectHandle, Error)],
    ) -> Result<(Arc<Session>, Login, Vec<ObjectRef>)> {
        let st = client.lock();
        let s = st.session(session)?;
        let login = st.login(s.slot);
        let objects = objects
            .iter()
            .map(|&(h, err)| st.object(s.slot, h, err))
            .collect::<Result<Vec<_>>>()?;
        Ok((s, login, objects))
    }

    /// `mechanism` with object handles inside its parameter translated to
    /// backend handles (`CKM_CONCATENATE_BASE_AND_KEY` carries one).
    pub(crate) fn mechanism<'m>(
        &self,
        client: &Client,
        slot: Slot,
        mechanism: &'m Mechanism,
    ) -> Result<Cow<'m, Mechanism>> {
        match mechanism.param {
            MechParam::Ulong(h) if mechanism.mechanism == ck::CKM_CONCATENATE_BASE_AND_KEY => {
                let o = client
                    .lock()
                    .object(slot, ObjectHandle(h), Error::KeyHandleInvalid)?;
                Ok(Cow::Owned(Mechanism {
                    mechanism: mechanism.mechanism,
                    param: MechParam::Ulong(o.backend.get()),
                }))
            }
            _ => Ok(Cow::Borrowed(mechanism)),
        }
    }
}

/// Each row of the call table (`keyward_protocol::calls`) to the method of
/// its chapter that serves it: a row without its method does not compile.
impl Handler for Agent {
    type Client = Arc<Client>;
    type Output = Result<Response>;

    fn hello(&self, _: &Arc<Client>, versions: VersionRange) -> Result<Response> {
        Ok(Agent::hello(self, versions))
    }

    fn get_slot_list(&self, client: &Arc<Client>, token_present: bool) -> Result<Response> {
        Agent::get_slot_list(self, client, token_present)
    }

    fn get_slot_info(&self, _: &Arc<Client>, slot: SlotId) -> Result<Response> {
        Agent::slot_info(self, slot)
    }

    fn get_token_info(&self, client: &Arc<Client>, slot: SlotId) -> Result<Response> {
        Agent::token_info(self, client, slot)
    }

    fn get_mechanism_list(&self, client: &Arc<Client>, slot: SlotId) -> Result<Response> {
        Agent::get_mechanism_list(self, client, slot)
    }

    fn get_mechanism_info(
        &self,
        client: &Arc<Client>,
        slot: SlotId,
        mechanism: u64,
    ) -> Result<Response> {
        Agent::get_mechanism_info(self, client, slot, mechanism)
    }

    fn init_token(
        &self,
        client: &Arc<Client>,
        slot: SlotId,
        so_pin: Secret,
        label: Vec<u8>,
    ) -> Result<Response> {
        Agent::init_token(self, client, slot, so_pin, label)
    }

    fn init_pin(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        pin: Secret,
    ) -> Result<Response> {
        Agent::init_pin(self, client, session, pin)
    }

    fn set_pin(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        old_pin: Secret,
        new_pin: Secret,
    ) -> Result<Response> {
        Agent::set_pin(self, client, session, old_pin, new_pin)
    }

    fn open_session(&self, client: &Arc<Client>, slot: SlotId, flags: u64) -> Result<Response> {
        Agent::open_session(self, client, slot, flags)
    }

    fn close_session(&self, client: &Arc<Client>, session: SessionHandle) -> Result<Response> {
        Agent::close_session(self, client, session)
    }

    fn close_all_sessions(&self, client: &Arc<Client>, slot: SlotId) -> Result<Response> {
        Agent::close_all_sessions(self, client, slot)
    }

    fn get_session_info(&self, client: &Arc<Client>, session: SessionHandle) -> Result<Response> {
        Agent::get_session_info(self, client, session)
    }

    fn login(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        user_type: u64,
        pin: Option<Secret>,
    ) -> Result<Response> {
        Agent::login(self, client, session, user_type, pin)
    }

    fn logout(&self, client: &Arc<Client>, session: SessionHandle) -> Result<Response> {
        Agent::logout(self, client, session)
    }

    fn create_object(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::create_object(self, client, session, template)
    }

    fn copy_object(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::copy_object(self, client, session, object, template)
    }

    fn destroy_object(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
    ) -> Result<Response> {
        Agent::destroy_object(self, client, session, object)
    }

    fn get_object_size(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
    ) -> Result<Response> {
        Agent::get_object_size(self, client, session, object)
    }

    fn get_attribute_value(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
        types: Vec<u64>,
    ) -> Result<Response> {
        Agent::get_attribute_value(self, client, session, object, types)
    }

    fn set_attribute_value(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::set_attribute_value(self, client, session, object, template)
    }

    fn find_objects(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::find_objects(self, client, session, template)
    }

    fn operation_init(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: OpInit,
    ) -> Result<Response> {
        Agent::operation_init(self, client, session, op, init)
    }

    fn single(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        data: Vec<u8>,
    ) -> Result<Response> {
        Agent::single(self, client, session, op, init, data)
    }

    fn verify(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        init: Option<OpInit>,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<Response> {
        Agent::verify(self, client, session, init, data, signature)
    }

    fn update(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        data: Vec<u8>,
    ) -> Result<Response> {
        Agent::update(self, client, session, op, init, data)
    }

    fn digest_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        key: ObjectHandle,
    ) -> Result<Response> {
        Agent::digest_key(self, client, session, key)
    }

    fn final_(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        data: Vec<u8>,
    ) -> Result<Response> {
        Agent::final_(self, client, session, op, init, data)
    }

    fn verify_final(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        init: Option<OpInit>,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<Response> {
        Agent::verify_final(self, client, session, init, data, signature)
    }

    fn generate_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::generate_key(self, client, session, mechanism, template)
    }

    fn generate_key_pair(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        public_template: Vec<Attribute>,
        private_template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::generate_key_pair(
            self,
            client,
            session,
            mechanism,
            public_template,
            private_template,
        )
    }

    fn wrap_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Response> {
        Agent::wrap_key(self, client, session, mechanism, wrapping_key, key)
    }

    fn unwrap_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped_key: Vec<u8>,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::unwrap_key(
            self,
            client,
            session,
            mechanism,
            unwrapping_key,
            wrapped_key,
            template,
        )
    }

    fn derive_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        base_key: ObjectHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        Agent::derive_key(self, client, session, mechanism, base_key, template)
    }

    fn seed_random(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        seed: Vec<u8>,
    ) -> Result<Response> {
        Agent::seed_random(self, client, session, seed)
    }

    fn generate_random(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        len: u64,
    ) -> Result<Response> {
        Agent::generate_random(self, client, session, len)
    }
}
