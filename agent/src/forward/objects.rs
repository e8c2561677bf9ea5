//! Object management: creation, copies, destruction, attributes and
//! searches; what a search shows a client (managed versions, plants,
//! shadow keys, other applications' objects); and each application's
//! namespace of token objects in strict mode.

use std::sync::Arc;
use std::time::SystemTime;

use cryptoki_sys as ck;
use keyward_protocol::{
    AttrResult, AttrValue, Attribute, ObjectHandle, Response, SessionHandle, Value,
};

use crate::backend::BackendObject;
use crate::clients::{Client, Login, ObjectRef, Session, Slot};
use crate::error::{Error, Result};
use keyward_policy::Policy;

use crate::agent::Agent;
use crate::audit::{self};
use crate::clients::registry::{Owner, Seen};
use crate::enforce::refuse_private;
use crate::keys::ManagedRef;
use crate::template::{result_bool, template_bool};

/// Objects the backend just created for a client, for [`Agent::adopt`]:
/// whether they are token objects (when the templates say), and the managed
/// key version they are.
pub(crate) struct NewObjects<'a> {
    pub(crate) objects: &'a [BackendObject],
    pub(crate) token: Option<bool>,
    pub(crate) managed: Option<ManagedRef>,
}

/// A search result: the backend object, the client session owning it (a
/// session object), and the managed key version it is.
pub(crate) type Found = (BackendObject, Option<SessionHandle>, Option<ManagedRef>);

impl Agent {
    /// `Request::CreateObject`.
    pub(crate) fn create_object(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        refuse_private(login, &template)?;
        self.refuse_reserved(client, s.slot, &template, "object creation")?;
        // Decoding guarantees a CKA_CLASS is a CK_ULONG, with one value.
        match template
            .iter()
            .find(|a| a.attr_type == ck::CKA_CLASS)
            .and_then(Attribute::as_ulong)
        {
            Some(class @ (ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY)) => {
                let kind = if class == ck::CKO_PRIVATE_KEY {
                    "private"
                } else {
                    "secret"
                };
                self.strict_refusal(
                    client,
                    format!("importing a {kind} key: keys are generated inside the HSM"),
                )?;
            }
            Some(_) => {}
            None => self.strict_refusal(
                client,
                "creating an object without CKA_CLASS: its kind cannot be checked".into(),
            )?,
        }
        let h = s.backend.create_object(s.backend_session, &template)?;
        let hint = template_bool(&template, ck::CKA_TOKEN).or(Some(false));
        let handle = self.adopt_one(client, session, &s, login, h, hint)?;
        self.claim(client, &s, handle)?;
        Ok(Response::object(handle))
    }

    /// `Request::CopyObject`.
    pub(crate) fn copy_object(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login, o) =
            self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
        self.check_object_change(client, login, s.slot, &o[0], &template, "a copy")?;
        let h = s
            .backend
            .copy_object(s.backend_session, o[0].backend, &template)?;
        let hint = template_bool(&template, ck::CKA_TOKEN);
        let handle = self.adopt_one(client, session, &s, login, h, hint)?;
        self.claim(client, &s, handle)?;
        Ok(Response::object(handle))
    }

    /// `Request::DestroyObject`.
    pub(crate) fn destroy_object(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
    ) -> Result<Response> {
        let (s, login, o) =
            self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
        self.refuse_destruction(client, &s, login, &o[0])?;
        let owned = self.owned_identity(client, &s, &o[0], "destruction")?;
        s.backend.destroy_object(s.backend_session, o[0].backend)?;
        if let Some(id) = owned {
            self.release(client, s.slot, &id);
        }
        self.forget_use_targets(|k| *k == (o[0].slot, o[0].backend));
        if let Some(o) = client.lock().unmap_object(object) {
            if o.session.is_some() {
                self.clients.disown(o.slot, o.backend);
            }
        }
        Ok(Response::Unit)
    }

    /// `Request::GetObjectSize`.
    pub(crate) fn get_object_size(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
    ) -> Result<Response> {
        let (s, _, o) =
            self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
        Ok(Response::Ulong(
            s.backend.object_size(s.backend_session, o[0].backend)?,
        ))
    }

    /// `Request::GetAttributeValue`.
    pub(crate) fn get_attribute_value(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
        types: Vec<u64>,
    ) -> Result<Response> {
        let (s, _, o) =
            self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
        Ok(Response::Attributes(s.backend.get_attributes(
            s.backend_session,
            o[0].backend,
            &types,
        )?))
    }

    /// `Request::SetAttributeValue`.
    pub(crate) fn set_attribute_value(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        object: ObjectHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login, o) =
            self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
        let what = "an attribute change";
        self.check_object_change(client, login, s.slot, &o[0], &template, what)?;
        let owned = self.owned_identity(client, &s, &o[0], "an attribute change")?;
        s.backend
            .set_attributes(s.backend_session, o[0].backend, &template)?;
        self.forget_use_targets(|k| *k == (o[0].slot, o[0].backend));
        if let Some(before) = owned {
            // A new label or value is a new identity: recorded as
            // the application's before the old one is let go.
            let after =
                crate::objects::identify(s.backend.as_ref(), s.backend_session, o[0].backend)
                    .and_then(|(_, id)| id);
            if after != Some(before) {
                if let Err(e) = self.record_owner(client, &s, &o[0]) {
                    log::error!(
                        "client {}: a token object it changed is not recorded as its own \
                         ({e}); it keeps its handle",
                        client.peer
                    );
                    return Err(Error::StateStore);
                }
                self.release(client, s.slot, &before);
            }
        }
        Ok(Response::Unit)
    }

    /// [`Agent::adopt`] for one new unmanaged object, answered as its handle.
    pub(crate) fn adopt_one(
        &self,
        client: &Client,
        session: SessionHandle,
        s: &Session,
        login: Login,
        object: BackendObject,
        token: Option<bool>,
    ) -> Result<ObjectHandle> {
        let new = NewObjects {
            objects: &[object],
            token,
            managed: None,
        };
        self.adopt(client, session, s, login, new).map(|v| v[0])
    }

    /// Maps objects the backend just created. A client not logged in as
    /// user may not create private objects: they are destroyed again and
    /// the call fails with `CKR_USER_NOT_LOGGED_IN`. Session objects are
    /// registered so no other client ever finds them. `token_hint` is
    /// `ck::CKA_TOKEN` when the templates fix it.
    pub(crate) fn adopt(
        &self,
        client: &Client,
        session: SessionHandle,
        s: &Session,
        login: Login,
        new: NewObjects<'_>,
    ) -> Result<Vec<ObjectHandle>> {
        let NewObjects {
            objects: new,
            token: token_hint,
            managed,
        } = new;
        let mut on_token = vec![token_hint.unwrap_or(false); new.len()];
        if login != Login::User || token_hint.is_none() {
            let mut private = false;
            for (i, &h) in new.iter().enumerate() {
                let r = s
                    .backend
                    .get_attributes(s.backend_session, h, &[ck::CKA_TOKEN, ck::CKA_PRIVATE])
                    .unwrap_or_default();
                on_token[i] = result_bool(r.first()).or(token_hint).unwrap_or(false);
                // Unreadable ck::CKA_PRIVATE counts as private: hide rather than leak.
                private |= result_bool(r.get(1)).unwrap_or(true);
            }
            if login != Login::User && private {
                for &h in new {
                    let _ = s.backend.destroy_object(s.backend_session, h);
                }
                log::info!(
                    "client {}: private object creation refused (not logged in as user)",
                    client.peer
                );
                return Err(Error::NotLoggedIn);
            }
        }
        let owned: Vec<BackendObject> = new
            .iter()
            .zip(&on_token)
            .filter(|(_, &token)| !token)
            .map(|(&h, _)| h)
            .collect();
        if !owned.is_empty() {
            let owner = Owner {
                client: client.peer.key,
                session,
            };
            self.clients.own(s.slot, &owned, owner);
        }
        let mut st = client.lock();
        let handles = new
            .iter()
            .zip(&on_token)
            .map(|(&h, &token)| {
                let owner = (!token).then_some(session);
                st.map_object(s.slot, h, owner, managed)
            })
            .collect();
        Ok(handles)
    }

    /// Which of `found` are managed key versions (by their `ck::CKA_ID` and
    /// fingerprint, read once per client and object), without those the
    /// client's application may not see, with each key's active version
    /// first; a search that does not name a `ck::CKA_ID` (`by_id`) keeps only
    /// the active version of a key that has one (an application that signs
    /// by label gets the version that protects now, whichever match it
    /// takes).
    ///
    /// Never shown: an object with a managed `ck::CKA_ID` that is not that
    /// version (a plant, [`ManagedKeys::is_genuine`]), an object with the
    /// audit key's `ck::CKA_ID`, and in strict mode an unmanaged private or
    /// secret key on the token that this client did not make (a shadow key,
    /// quarantined until an administrator adopts it).
    pub(crate) fn classify(
        &self,
        client: &Client,
        s: &Session,
        found: Vec<(BackendObject, Option<SessionHandle>)>,
        by_id: bool,
    ) -> Result<Vec<Found>> {
        let policy = self.policy();
        let strict = policy.mode() == keyward_policy::Mode::Strict;
        if self.keys.is_empty()
            && !strict
            && !self.tokens[s.slot]
                .agent_objects
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(found.into_iter().map(|(h, o)| (h, o, None)).collect());
        }
        let now = crate::clock::now();
        // Each with whether it is a key's active version (worked out once).
        let mut out: Vec<(Found, bool)> = Vec::with_capacity(found.len());
        for (h, owner) in found {
            let known = {
                let st = client.lock();
                // Judged outside the client's namespace before: not read again.
                if strict && st.is_hidden(s.slot, h) {
                    continue;
                }
                st.mapped(s.slot, h)
                    .and_then(|ch| st.object(s.slot, ch, Error::ObjectHandleInvalid).ok())
            };
            let managed = match known {
                Some(o) => o.managed,
                None => match self.judge_unseen(client, &policy, s, h, owner, now) {
                    Some(managed) => managed,
                    None => continue,
                },
            };
            let active = match managed {
                Some(m) => match self.keys.key(m.key_id) {
                    Some(k) if crate::keys::visible_to(&policy, &k, &client.application, now) => {
                        k.version(m.version).map(|v| v.state)
                            == Some(keyward_policy::KeyState::Active)
                    }
                    _ => continue,
                },
                None => false,
            };
            out.push(((h, owner, managed), active));
        }
        if !by_id {
            // A search that does not name a ck::CKA_ID finds a key's active
            // version only, when it has one. Clients differ in which of
            // several matches they take (pkcs11-tool the first, OpenSSL's
            // libp11 enumerates every key and takes the last), and "the
            // key called X" means the version that protects now. An older
            // version is found by its ck::CKA_ID (as clients look up the public
            // key or certificate of a key they hold, or verify an old
            // signature).
            let with_active: std::collections::HashSet<i64> = out
                .iter()
                .filter(|(_, active)| *active)
                .filter_map(|((_, _, m), _)| m.map(|m| m.key_id))
                .collect();
            out.retain(|((_, _, m), active)| match m {
                Some(r) if with_active.contains(&r.key_id) => *active,
                _ => true,
            });
        }
        // Active versions first; otherwise the backend's order (stable).
        out.sort_by_key(|(_, active)| !*active);
        Ok(out.into_iter().map(|(f, _)| f).collect())
    }

    /// What a search shows of backend object `h` that the client holds no
    /// handle for: `None`, nothing (an object being generated for the
    /// inventory, the audit key, a plant, another key's certificate, and in
    /// strict mode a shadow key or an object outside the client's
    /// namespace); `Some(m)`: the object, a managed version (`m`) or not.
    pub(crate) fn judge_unseen(
        &self,
        client: &Client,
        policy: &Policy,
        s: &Session,
        h: BackendObject,
        owner: Option<SessionHandle>,
        now: SystemTime,
    ) -> Option<Option<ManagedRef>> {
        let strict = policy.mode() == keyward_policy::Mode::Strict;
        let token = &self.tokens[s.slot].config.label;
        // In strict mode the label too, for the object's identity.
        let head: &[u64] = if strict {
            &crate::objects::HEAD
        } else {
            &crate::objects::HEAD[..2]
        };
        let attrs = s
            .backend
            .get_attributes(s.backend_session, h, head)
            .unwrap_or_default();
        let id = match attrs.first() {
            Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(b)))) => Some(b),
            _ => None,
        };
        let managed = match id {
            // Being generated for the inventory: not yet a key.
            Some(id) if self.keys.is_pending(token, id) => return None,
            Some(id)
                if id == audit::AUDIT_KEY_ID || crate::lifecycle::backup::key::is_reserved(id) =>
            {
                return None
            }
            Some(id) => self.keys.lookup(token, id),
            None => None,
        };
        let class = match attrs.get(1) {
            Some(AttrResult::Value(AttrValue::Leaf(Value::Ulong(c)))) => Some(*c),
            _ => None,
        };
        Some(match managed {
            // A certificate with a managed key's ck::CKA_ID: shown
            // (as an unmanaged object) when it is that key's;
            // in strict mode to the applications that see the
            // key, or made the certificate.
            Some(m) if class == Some(ck::CKO_CERTIFICATE) => match self.keys.key(m.key_id) {
                Some(k)
                    if crate::keys::is_certificate_of(
                        s.backend.as_ref(),
                        s.backend_session,
                        h,
                        &k,
                    ) && (!strict
                        || crate::keys::visible_to(policy, &k, &client.application, now)
                        || self.owns(client, policy, s, h, &attrs)) =>
                {
                    None
                }
                _ => return None,
            },
            // A plant with a managed key's ck::CKA_ID: never shown.
            Some(m)
                if !self
                    .keys
                    .is_genuine(token, s.backend.as_ref(), s.backend_session, h, m) =>
            {
                return None
            }
            Some(m) => Some(m),
            None => {
                let key = matches!(class, Some(ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY));
                // A shadow key: quarantined in strict mode.
                if strict && key && owner.is_none() {
                    return None;
                }
                // Another application's token object, or one
                // made behind keyward's back: not in this
                // application's namespace.
                if strict && owner.is_none() && !self.owns(client, policy, s, h, &attrs) {
                    client.lock().hide(s.slot, h);
                    return None;
                }
                None
            }
        })
    }

    /// Whether the unmanaged token object `h` (its [`crate::objects::HEAD`]
    /// attributes `head`) is in the client's namespace in strict mode: its
    /// application made it, or an application that made it shares its
    /// objects with it (`share_objects_with`).
    pub(crate) fn owns(
        &self,
        client: &Client,
        policy: &Policy,
        s: &Session,
        h: BackendObject,
        head: &[AttrResult],
    ) -> bool {
        let token = &self.tokens[s.slot].config.label;
        let me = client.application.as_str();
        crate::objects::identity(s.backend.as_ref(), s.backend_session, h, head).is_some_and(|id| {
            self.keys.owners.any_owner(token, &id, |owner| {
                owner == me
                    || policy
                        .application(owner)
                        .is_some_and(|a| a.share_objects_with.iter().any(|w| w == me))
            })
        })
    }

    /// In strict mode, records the client's application as the owner of
    /// `o` (an object it made or changed) when it is an unmanaged token
    /// object with a namespace, durably. `Err` says why it could not be.
    pub(crate) fn record_owner(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
    ) -> std::result::Result<(), String> {
        if self.policy().mode() != keyward_policy::Mode::Strict
            || o.session.is_some()
            || o.managed.is_some()
        {
            return Ok(());
        }
        let token = &self.tokens[s.slot].config.label;
        match crate::objects::identify(s.backend.as_ref(), s.backend_session, o.backend) {
            Some((class, _)) if !crate::objects::is_namespaced(class) => Ok(()),
            Some((_, Some(id))) => self
                .keys
                .owners
                .add(
                    self.keys.inventory(),
                    token,
                    &id,
                    &client.application,
                    crate::keys::secs(crate::clock::now()),
                )
                .map_err(|e| e.to_string()),
            _ => Err("its class or content cannot be read".to_owned()),
        }
    }

    /// [`Agent::record_owner`] for an object the client just made (create,
    /// copy) with client handle `handle`, before the call answers. An
    /// object that cannot be recorded is destroyed again and the call fails
    /// (`CKR_DEVICE_ERROR`): in strict mode nobody could ever find it.
    pub(crate) fn claim(&self, client: &Client, s: &Session, handle: ObjectHandle) -> Result<()> {
        let o = client
            .lock()
            .object(s.slot, handle, Error::ObjectHandleInvalid)?;
        if let Err(e) = self.record_owner(client, s, &o) {
            log::error!(
                "client {}: a token object it made is not recorded as its own ({e}); destroyed",
                client.peer
            );
            client.lock().unmap_object(handle);
            let _ = s.backend.destroy_object(s.backend_session, o.backend);
            return Err(Error::StateStore);
        }
        Ok(())
    }

    /// In strict mode, the identity of `o` when it is an unmanaged token
    /// object with a namespace, after checking that the client's
    /// application owns it: changing or destroying an object another
    /// application made (a managed key's certificate an administrator put
    /// on the token) is refused (`CKR_ACTION_PROHIBITED`, recorded).
    pub(crate) fn owned_identity(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
        what: &str,
    ) -> Result<Option<crate::objects::Identity>> {
        if self.policy().mode() != keyward_policy::Mode::Strict
            || o.session.is_some()
            || o.managed.is_some()
        {
            return Ok(None);
        }
        let token = &self.tokens[s.slot].config.label;
        match crate::objects::identify(s.backend.as_ref(), s.backend_session, o.backend) {
            Some((class, _)) if !crate::objects::is_namespaced(class) => Ok(None),
            Some((_, Some(id))) if self.keys.owners.owns(token, &id, &client.application) => {
                Ok(Some(id))
            }
            _ => {
                self.note_refusal(
                    client,
                    what,
                    None,
                    None,
                    ck::CKR_ACTION_PROHIBITED,
                    "a token object this application did not make",
                );
                Err(Error::ActionProhibited)
            }
        }
    }

    /// After the client's application destroyed (or changed) an object of
    /// `identity`: one object fewer in its namespace.
    pub(crate) fn release(&self, client: &Client, slot: Slot, identity: &crate::objects::Identity) {
        let token = &self.tokens[slot].config.label;
        if let Err(e) =
            self.keys
                .owners
                .remove(self.keys.inventory(), token, identity, &client.application)
        {
            log::warn!(
                "client {}: the ownership of an object it destroyed is not removed: {e}",
                client.peer
            );
        }
    }

    pub(crate) fn find_objects(
        &self,
        client: &Client,
        session: SessionHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        let mut template = template;
        if login != Login::User {
            match template_bool(&template, ck::CKA_PRIVATE) {
                Some(true) => return Ok(Response::objects(Vec::new())),
                Some(false) => {}
                None => template.push(Attribute::bool(ck::CKA_PRIVATE, false)),
            }
        }
        let found = s.backend.find_objects(s.backend_session, &template)?;
        let audit_key = self.audit_key();
        let found: Vec<BackendObject> = found
            .into_iter()
            .filter(|&h| !audit_key.is_some_and(|k| k.is(s.slot, h)))
            .collect();
        let seen = self.clients.seen(client.peer.key, s.slot, &found);
        let visible: Vec<(BackendObject, Option<SessionHandle>)> = found
            .into_iter()
            .zip(seen)
            .filter_map(|(h, seen)| match seen {
                Seen::Shared => Some((h, None)),
                Seen::Own(session) => Some((h, Some(session))),
                Seen::Foreign => None,
            })
            .collect();
        let by_id = template.iter().any(|a| a.attr_type == ck::CKA_ID);
        let mut managed = self.classify(client, &s, visible, by_id)?;
        // A search by a managed key's name finds that key's objects only:
        // never an unmanaged object that carries the name (clients differ in
        // which match they take).
        let token = &self.tokens[s.slot].config.label;
        let labelled = template.iter().find_map(|a| match &a.value {
            AttrValue::Leaf(Value::Bytes(l))
                if a.attr_type == ck::CKA_LABEL && self.keys.is_managed_label(token, l) =>
            {
                self.keys.key_by_label(token, l)
            }
            _ => None,
        });
        if let Some(key) = labelled {
            // The key's own certificate stays beside it.
            managed.retain(|(h, _, m)| {
                m.is_some()
                    || crate::keys::is_certificate_of(
                        s.backend.as_ref(),
                        s.backend_session,
                        *h,
                        &key,
                    )
            });
        }
        let mut st = client.lock();
        Ok(Response::objects(
            managed
                .into_iter()
                .map(|(h, owner, m)| st.map_object(s.slot, h, owner, m))
                .collect(),
        ))
    }
}
