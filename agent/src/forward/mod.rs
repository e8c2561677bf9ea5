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
use keyward_protocol::{HelloReply, MechParam, Mechanism, Op, Request, Response};
use keyward_protocol::{VersionRange, VersionRefusal, APP_VERSIONS};

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
        match req {
            Request::Hello { versions } => Ok(self.hello(versions)),
            Request::GetSlotList { token_present } => self.get_slot_list(client, token_present),
            Request::GetSlotInfo { slot } => self.slot_info(slot),
            Request::GetTokenInfo { slot } => self.token_info(client, slot),
            Request::GetMechanismList { slot } => self.get_mechanism_list(client, slot),
            Request::GetMechanismInfo { slot, mechanism } => {
                self.get_mechanism_info(client, slot, mechanism)
            }
            Request::InitToken {
                slot,
                so_pin,
                label,
            } => self.init_token(client, slot, so_pin, label),
            Request::InitPin { session, pin } => self.init_pin(client, session, pin),
            Request::SetPin {
                session,
                old_pin,
                new_pin,
            } => self.set_pin(client, session, old_pin, new_pin),
            Request::OpenSession { slot, flags } => self.open_session(client, slot, flags),
            Request::CloseSession { session } => self.close_session(client, session),
            Request::CloseAllSessions { slot } => self.close_all_sessions(client, slot),
            Request::GetSessionInfo { session } => self.get_session_info(client, session),
            Request::Login {
                session,
                user_type,
                pin,
            } => self.login(client, session, user_type, pin),
            Request::Logout { session } => self.logout(client, session),
            Request::CreateObject { session, template } => {
                self.create_object(client, session, template)
            }
            Request::CopyObject {
                session,
                object,
                template,
            } => self.copy_object(client, session, object, template),
            Request::DestroyObject { session, object } => {
                self.destroy_object(client, session, object)
            }
            Request::GetObjectSize { session, object } => {
                self.get_object_size(client, session, object)
            }
            Request::GetAttributeValue {
                session,
                object,
                types,
            } => self.get_attribute_value(client, session, object, types),
            Request::SetAttributeValue {
                session,
                object,
                template,
            } => self.set_attribute_value(client, session, object, template),
            Request::FindObjects { session, template } => {
                self.find_objects(client, session, template)
            }
            Request::OperationInit { session, op, init } => {
                self.operation_init(client, session, op, init)
            }
            Request::Single {
                session,
                op,
                init,
                data,
            } => self.single(client, session, op, init, data),
            Request::Verify {
                session,
                init,
                data,
                signature,
            } => self.verify(client, session, init, data, signature),
            Request::Update {
                session,
                op,
                init,
                data,
            } => self.update(client, session, op, init, data),
            Request::DigestKey { session, key } => self.digest_key(client, session, key),
            Request::Final {
                session,
                op,
                init,
                data,
            } => self.final_(client, session, op, init, data),
            Request::VerifyFinal {
                session,
                init,
                data,
                signature,
            } => self.verify_final(client, session, init, data, signature),
            Request::GenerateKey {
                session,
                mechanism,
                template,
            } => self.generate_key(client, session, mechanism, template),
            Request::GenerateKeyPair {
                session,
                mechanism,
                public_template,
                private_template,
            } => self.generate_key_pair(
                client,
                session,
                mechanism,
                public_template,
                private_template,
            ),
            Request::WrapKey {
                session,
                mechanism,
                wrapping_key,
                key,
            } => self.wrap_key(client, session, mechanism, wrapping_key, key),
            Request::UnwrapKey {
                session,
                mechanism,
                unwrapping_key,
                wrapped_key,
                template,
            } => self.unwrap_key(
                client,
                session,
                mechanism,
                unwrapping_key,
                wrapped_key,
                template,
            ),
            Request::DeriveKey {
                session,
                mechanism,
                base_key,
                template,
            } => self.derive_key(client, session, mechanism, base_key, template),
            Request::SeedRandom { session, seed } => self.seed_random(client, session, seed),
            Request::GenerateRandom { session, len } => self.generate_random(client, session, len),
        }
    }

    /// The session and the client's login state on its token.
    pub(crate) fn session(&self, client: &Client, session: u64) -> Result<(Arc<Session>, Login)> {
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
        session: u64,
        objects: &[(u64, Error)],
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
                let o = client.lock().object(slot, h, Error::KeyHandleInvalid)?;
                Ok(Cow::Owned(Mechanism {
                    mechanism: mechanism.mechanism,
                    param: MechParam::Ulong(o.backend),
                }))
            }
            _ => Ok(Cow::Borrowed(mechanism)),
        }
    }
}
